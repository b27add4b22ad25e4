//! Benchmark of the deadline engine (issue 3): listing one district's overdue deadlines and an
//! alert sweep, with 10 thousand, 100 thousand and 1 million open deadlines spread over 20
//! districts, on SQLite and on PostgreSQL.
//!
//! Run it with
//!
//! ```text
//! cargo bench -p referral-tests --bench deadlines
//! DEADLINE_BENCH_SIZES=10000,100000 cargo bench -p referral-tests --bench deadlines
//! DEADLINE_BENCH_BACKENDS=sqlite cargo bench -p referral-tests --bench deadlines
//! ```
//!
//! For each back end and size, a gateway store is built (the real `Gateway::build`, migrations
//! and directory; no background tasks) and the deadlines are bulk-inserted straight into its
//! `deadlines` table, 100,000 rows per transaction: 30% overdue, 10% escalated, 60% pending in
//! the future, plus exactly 100 pending deadlines whose warning instant has just passed. Then:
//!
//! - **list**: `ListOverdue` of one district's commission, first page of 50 (the engine's own
//!   query, in process, without the network): median of 200 runs;
//! - **sweep**: `GatewayHandle::settle` at the clock's instant, in which exactly those 100
//!   deadlines change state (each raising its alert, its message, outbox row and ledger entry):
//!   median of 20 runs, the 100 deadlines reset between runs;
//! - **pk**: the reference, measured in the same run on the same table: a primary-key lookup of
//!   one deadline, median of 200 runs.
//!
//! Each figure is printed with its ratio to the reference, so machines of different speed give
//! comparable numbers. Targets: list ≤ 5 ms at 1 million; sweep cost flat in the number stored.
//! The PostgreSQL cluster is the test suite's throwaway one (fsync off); without PostgreSQL
//! server binaries that back end is skipped.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use jiff::Timestamp;
use referral_core::{
    Clock,
    config::DeliverySettings,
    db::StorageConfig,
    directory::{AgencyEntry, Directory, District},
    pki::{CertificateAuthority, ComponentIdentity, TlsMaterial},
};
use referral_gateway::{Gateway, GatewayConfig, GatewayHandle};
use referral_proto::v1::ListOverdueRequest;

const DISTRICTS: i64 = 20;
/// Rows per bulk-insert transaction.
const CHUNK: i64 = 100_000;
/// Deadlines that change state in each measured sweep.
const SWEPT: i64 = 100;
const LIST_RUNS: usize = 200;
const PK_RUNS: usize = 200;
const SWEEP_RUNS: usize = 20;

const SECOND: i64 = 1_000_000;
const DAY: i64 = 86_400 * SECOND;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "SQLite",
            Self::Postgres => "PostgreSQL",
        }
    }
}

struct Figures {
    backend: Backend,
    size: i64,
    insert: Duration,
    list: Duration,
    sweep: Duration,
    pk: Duration,
}

fn main() -> anyhow::Result<()> {
    let sizes: Vec<i64> = match std::env::var("DEADLINE_BENCH_SIZES") {
        Ok(v) => v
            .split(',')
            .map(|s| s.trim().replace('_', "").parse::<i64>())
            .collect::<Result<_, _>>()
            .context("DEADLINE_BENCH_SIZES: a comma-separated list of numbers")?,
        Err(_) => vec![10_000, 100_000, 1_000_000],
    };
    let backends: Vec<Backend> = match std::env::var("DEADLINE_BENCH_BACKENDS") {
        Ok(v) => v
            .split(',')
            .map(|s| match s.trim() {
                "sqlite" => Ok(Backend::Sqlite),
                "postgres" => Ok(Backend::Postgres),
                other => bail!("DEADLINE_BENCH_BACKENDS: unknown back end {other:?}"),
            })
            .collect::<Result<_, _>>()?,
        Err(_) => vec![Backend::Sqlite, Backend::Postgres],
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut all = Vec::new();
    for backend in backends {
        if backend == Backend::Postgres && !referral_tests::postgres::available() {
            continue;
        }
        for &size in &sizes {
            eprintln!("{}: {size} open deadlines…", backend.name());
            let figures = runtime.block_on(bench(backend, size))?;
            print_row(&figures);
            all.push(figures);
        }
    }
    println!();
    println!(
        "| back end | open deadlines | insert | list overdue (p50) | pk lookup (p50) | list / pk | sweep of 100 (p50) | sweep / pk |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for f in &all {
        println!(
            "| {} | {} | {:.1} s | {:.3} ms | {:.3} ms | {:.1} | {:.1} ms | {:.0} |",
            f.backend.name(),
            f.size,
            f.insert.as_secs_f64(),
            ms(f.list),
            ms(f.pk),
            ratio(f.list, f.pk),
            ms(f.sweep),
            ratio(f.sweep, f.pk),
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

fn print_row(f: &Figures) {
    eprintln!(
        "  insert {:.1} s; list {:.3} ms ({:.1}× pk); sweep of {SWEPT} {:.1} ms ({:.0}× pk); pk {:.3} ms",
        f.insert.as_secs_f64(),
        ms(f.list),
        ratio(f.list, f.pk),
        ms(f.sweep),
        ratio(f.sweep, f.pk),
        ms(f.pk),
    );
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Twenty districts, each with its commission and one school.
fn directory() -> Directory {
    let mut directory = Directory::default();
    for d in 0..DISTRICTS {
        directory.districts.push(District {
            id: format!("district-{d}"),
            name_kk: format!("Аудан {d}"),
            name_ru: format!("Район {d}"),
            time_zone: "Asia/Almaty".into(),
        });
        for kind in ["commission", "school"] {
            directory.agencies.push(AgencyEntry {
                id: format!("{kind}-{d}"),
                kind: kind.into(),
                district: format!("district-{d}"),
                name_kk: format!("{kind} {d}"),
                name_ru: format!("{kind} {d}"),
                endpoint: "https://127.0.0.1:9".into(),
            });
        }
    }
    directory
}

async fn bench(backend: Backend, size: i64) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let database_url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(referral_tests::postgres::fresh_database().await?.into()),
    };
    let now: Timestamp = "2026-06-01T06:00:00Z".parse()?;
    let clock = Clock::manual(now);
    let ca = CertificateAuthority::generate("bench CA")?;
    let config = GatewayConfig {
        run_deadline_engine: false,
        run_delivery_worker: false,
        ..GatewayConfig::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            TlsMaterial::new(&ca, &ComponentIdentity::Gateway)?,
            StorageConfig {
                data_dir: dir.path().to_owned(),
                database_url,
            },
            directory(),
            DeliverySettings::default(),
            clock.clone(),
        )
    };
    let gateway = Gateway::build(config).await?;
    let handle = gateway.handle();
    let t0 = now.as_microsecond();

    let started = Instant::now();
    insert_open(&handle, size, t0).await?;
    insert_sweepable(&handle, t0).await?;
    sqlx::query("ANALYZE")
        .execute(handle.database().pool())
        .await?;
    let insert = started.elapsed();

    // The reference: one deadline by primary key.
    let mut pk = Vec::with_capacity(PK_RUNS);
    for i in 0..PK_RUNS {
        let id = format!("bench-{}", (i as i64 * 7919) % size);
        let started = Instant::now();
        let row = sqlx::query("SELECT * FROM deadlines WHERE deadline_id = $1")
            .bind(&id)
            .fetch_optional(handle.database().pool())
            .await?;
        pk.push(started.elapsed());
        ensure!(row.is_some(), "deadline {id} exists");
    }

    // One district's overdue list, first page.
    let mut list = Vec::with_capacity(LIST_RUNS);
    for _ in 0..LIST_RUNS {
        let started = Instant::now();
        let page = handle
            .list_overdue_as(
                "commission-7",
                ListOverdueRequest {
                    page_size: 50,
                    page_token: String::new(),
                },
            )
            .await?;
        list.push(started.elapsed());
        ensure!(
            page.deadlines.len() == 50 || size < 2_000,
            "a full first page"
        );
    }

    // The sweep in which exactly SWEPT deadlines change state.
    let mut sweep = Vec::with_capacity(SWEEP_RUNS);
    for run in 0..=SWEEP_RUNS {
        reset_sweepable(&handle).await?;
        let started = Instant::now();
        let report = handle.settle().await?;
        let elapsed = started.elapsed();
        ensure!(
            report.deadlines_advanced == SWEPT as u64 && report.alerts == SWEPT as u64,
            "exactly {SWEPT} deadlines change state: {report:?}"
        );
        // The first run warms caches up and is not counted.
        if run > 0 {
            sweep.push(elapsed);
        }
    }

    handle.database().close().await;
    drop(gateway);
    Ok(Figures {
        backend,
        size,
        insert,
        list: median(list),
        sweep: median(sweep),
        pk: median(pk),
    })
}

/// `size` open deadlines, in transactions of [`CHUNK`] rows, generated by the database itself.
/// Row n: district n mod 20; by (n div 20) mod 10: 0-2 overdue (due within the last day or so),
/// 3 escalated (due 10 days ago or more), 4-9 pending (due from 5 days on).
async fn insert_open(handle: &GatewayHandle, size: i64, t0: i64) -> anyhow::Result<()> {
    let spread = format!("(n % 100000) * {SECOND}");
    let due = format!(
        "CASE WHEN (n / {DISTRICTS}) % 10 < 3 THEN {t0} - {SECOND} - {spread} \
         WHEN (n / {DISTRICTS}) % 10 = 3 THEN {t0} - {} - {spread} \
         ELSE {t0} + {} + {spread} END",
        10 * DAY,
        5 * DAY
    );
    let sql = format!(
        "WITH RECURSIVE g(n) AS (SELECT $1 UNION ALL SELECT n + 1 FROM g WHERE n < $2) \
         INSERT INTO deadlines (deadline_id, key, kind, case_reference, cycle, district_id, \
         responsible_agency_id, responsible_user_id, responsible_role, action_number, \
         help_request_message_id, warn_at, due_day_starts_at, due_at, escalate_at, due_on, state, \
         next_transition_at, met_at, created_at) \
         SELECT 'bench-' || n, 'bench-key-' || n, 'DEADLINE_KIND_ACTION', 'BENCH-' || (n / 4), 1, \
         'district-' || (n % {DISTRICTS}), 'school-' || (n % {DISTRICTS}), '', \
         'safeguarding_lead', n % 4 + 1, NULL, due - {warn}, due - {DAY}, due, due + {esc}, \
         '2026-06-01', \
         CASE WHEN c < 3 THEN 'DEADLINE_STATE_OVERDUE' \
         WHEN c = 3 THEN 'DEADLINE_STATE_ESCALATED' ELSE 'DEADLINE_STATE_PENDING' END, \
         CASE WHEN c < 3 THEN due + {esc} WHEN c = 3 THEN NULL ELSE due - {warn} END, \
         NULL, {t0} \
         FROM (SELECT n, (n / {DISTRICTS}) % 10 AS c, {due} AS due FROM g) AS s",
        warn = 4 * DAY,
        esc = 5 * DAY,
    );
    let mut from = 0;
    while from < size {
        let to = (from + CHUNK).min(size) - 1;
        let mut tx = handle.database().begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        from = to + 1;
    }
    Ok(())
}

/// The deadlines the sweep moves: pending, their warning instant a second ago.
async fn insert_sweepable(handle: &GatewayHandle, t0: i64) -> anyhow::Result<()> {
    let mut tx = handle.database().begin().await?;
    for i in 0..SWEPT {
        let warn = t0 - SECOND;
        sqlx::query(
            "INSERT INTO deadlines (deadline_id, key, kind, case_reference, cycle, district_id, \
             responsible_agency_id, responsible_user_id, responsible_role, action_number, \
             help_request_message_id, warn_at, due_day_starts_at, due_at, escalate_at, due_on, \
             state, next_transition_at, met_at, created_at) \
             VALUES ($1, $2, 'DEADLINE_KIND_ACTION', $3, 1, $4, $5, '', 'safeguarding_lead', 1, \
             NULL, $6, $7, $8, $9, '2026-06-04', 'DEADLINE_STATE_PENDING', $6, NULL, $10)",
        )
        .bind(format!("sweep-{i}"))
        .bind(format!("bench-sweep-{i}"))
        .bind(format!("SWEEP-{i}"))
        .bind(format!("district-{}", i % DISTRICTS))
        .bind(format!("school-{}", i % DISTRICTS))
        .bind(warn)
        .bind(t0 + 2 * DAY)
        .bind(t0 + 3 * DAY)
        .bind(t0 + 8 * DAY)
        .bind(t0)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Puts the swept deadlines back to pending and forgets their alerts.
async fn reset_sweepable(handle: &GatewayHandle) -> anyhow::Result<()> {
    let mut tx = handle.database().begin().await?;
    sqlx::query("DELETE FROM deadline_alerts")
        .execute(&mut *tx)
        .await?;
    let reset = sqlx::query(
        "UPDATE deadlines SET state = 'DEADLINE_STATE_PENDING', next_transition_at = warn_at \
         WHERE deadline_id >= 'sweep-' AND deadline_id < 'sweep.'",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    ensure!(reset == SWEPT as u64, "the swept deadlines are reset");
    tx.commit().await?;
    Ok(())
}
