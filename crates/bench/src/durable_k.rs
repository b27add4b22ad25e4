//! `durable-k`: acknowledged-and-delivered K submissions per second, and their acknowledgement
//! latency, with 1, 16 and 128 concurrent clients, against the all-in-one process on SQLite and
//! on PostgreSQL; on PostgreSQL beside pgbench's single-row INSERT commit rate on the same
//! cluster with the same client count, run right after each of the hub's runs.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::{
    Options,
    cpu::{CpuPerUnit, CpuSample},
    hub::HubSetup,
    load::{Entry, Load, LoadRun, NoopRun, noop_calls},
    pg::{Cluster, PgBench},
    stats::{ms, ratio, show_ratio},
};

/// The client counts the issue asks for.
pub const CLIENTS: [usize; 3] = [1, 16, 128];

/// The rate of the paced run: the throughput target, at which its latency target is
/// judged (see [`Load::run`] and BENCHMARKS.md).
pub const PACED_RATE: u32 = 1_000;

/// One backend's rows.
struct Row {
    entry: Entry,
    /// `None`: closed loop (saturation); `Some(rate)`: paced at that aggregate rate.
    pace: Option<u32>,
    run: LoadRun,
    /// CPU per acknowledged K, window and drain.
    cpu: CpuPerUnit,
    pgbench: Option<PgBench>,
    /// CPU per pgbench transaction.
    pgbench_cpu: Option<CpuPerUnit>,
}

/// One back end's runs.
struct BackendRuns {
    rows: Vec<Row>,
    /// The no-op call load at the largest client count, with its CPU per call.
    noop: Option<(NoopRun, CpuPerUnit)>,
}

pub async fn run(options: &Options) -> anyhow::Result<(serde_json::Value, String)> {
    let mut json = serde_json::Map::new();
    let mut table = String::from(
        "durable-k: acknowledged-and-delivered K per second (entry gateway: school 1's certificate \
         -> gateway Send -> commission; entry staff-api: school 1's staff API -> school service -> \
         gateway -> commission)\n",
    );
    table.push_str(&format!(
        "{:<9} {:<9} {:>7} {:>9} {:>9} {:>9} {:>8} {:>8} {:>7} {:>10} {:>8}\n",
        "BACKEND",
        "ENTRY",
        "CLIENTS",
        "LOAD",
        "DELIV/S",
        "ACK/S",
        "P50 ms",
        "P99 ms",
        "ERRORS",
        "PGBENCH/S",
        "RATIO"
    ));
    for backend in options.backends.iter().map(String::as_str) {
        if !matches!(backend, "sqlite" | "postgres") {
            anyhow::bail!("unknown back end {backend:?}: sqlite or postgres");
        }
        let cluster = if backend == "postgres" {
            Some(Cluster::start()?)
        } else {
            None
        };
        let url = match &cluster {
            Some(c) => Some(c.fresh_database("hub").await?),
            None => None,
        };
        let BackendRuns { rows, noop } = backend_rows(options, url, cluster.as_ref()).await?;
        let mut list = Vec::new();
        for row in &rows {
            let s = row.run.latency.summary();
            let errors: u64 = row.run.errors.values().sum();
            let delivered = row.run.delivered_per_second();
            let vs_pgbench = row.pgbench.and_then(|p| ratio(delivered, p.tps));
            table.push_str(&format!(
                "{:<9} {:<9} {:>7} {:>9} {:>9.0} {:>9.0} {:>8} {:>8} {:>7} {:>10} {:>8}\n",
                backend,
                row.entry.name(),
                row.run.clients,
                load_name(row.pace),
                delivered,
                row.run.acknowledged_per_second(),
                ms(s.p50_us),
                ms(s.p99_us),
                errors,
                row.pgbench
                    .map(|p| format!("{:.0}", p.tps))
                    .unwrap_or_else(|| "-".into()),
                show_ratio(vs_pgbench),
            ));
            list.push(json!({
                "entry": row.entry.name(),
                "clients": row.run.clients,
                "paced_rate": row.pace,
                "acknowledged": row.run.acknowledged,
                "delivered_per_s": delivered,
                "acknowledged_per_s": row.run.acknowledged_per_second(),
                "submit_seconds": row.run.submit_elapsed.as_secs_f64(),
                "delivered_seconds": row.run.delivered_elapsed.as_secs_f64(),
                "latency": s.to_json(),
                "errors": row.run.errors,
                "pgbench_tps": row.pgbench.map(|p| p.tps),
                "pgbench_latency_avg_ms": row.pgbench.map(|p| p.latency_avg_ms),
                "ratio_to_pgbench": vs_pgbench,
                "cpu_per_k": row.cpu.to_json(),
                "pgbench_cpu_per_transaction": row.pgbench_cpu.map(CpuPerUnit::to_json),
            }));
        }
        table.push_str(&cpu_table(backend, &rows, noop.as_ref()));
        if let Some((noop, cpu)) = &noop {
            json.insert(
                format!("{backend}_noop_call"),
                json!({
                    "clients": noop.clients,
                    "calls": noop.calls,
                    "errors": noop.errors,
                    "calls_per_s": noop.calls_per_second(),
                    "latency": noop.latency.clone().summary().to_json(),
                    "cpu_per_call": cpu.to_json(),
                }),
            );
        }
        if let Some(cluster) = &cluster {
            json.insert("postgres_version".into(), json!(cluster.version));
        }
        json.insert(backend.into(), json!(list));
        if backend == "postgres" {
            let mut verdicts = serde_json::Map::new();
            for top in rows
                .iter()
                .filter(|r| r.run.clients == 128 && r.pace.is_none())
            {
                let s = top.run.latency.summary();
                let rate = top.run.delivered_per_second();
                let half = top.pgbench.map(|p| rate >= p.tps / 2.0);
                // The latency target at the throughput target: the paced run of this entry.
                let paced = rows.iter().find(|r| {
                    r.run.clients == 128 && r.entry == top.entry && r.pace == Some(PACED_RATE)
                });
                let paced_p99 = paced.map(|r| r.run.latency.summary().p99_us);
                let paced_kept_up = paced.map(|r| kept_up(r, PACED_RATE));
                let paced_ok = paced_p99
                    .zip(paced_kept_up)
                    .map(|(p99, kept)| kept && p99 <= 50_000);
                verdicts.insert(
                    top.entry.name().into(),
                    json!({
                        "at_least_1000_per_s": rate >= 1000.0,
                        "p99_at_most_50_ms_saturated": s.p99_us <= 50_000,
                        "p99_at_most_50_ms_at_1000_per_s": paced_ok,
                        "at_least_half_of_pgbench": half,
                    }),
                );
                table.push_str(&format!(
                    "targets (PostgreSQL, 128 clients, entry {}): >= 1000/s {}, p99 <= 50 ms at 1000/s {}, p99 <= 50 ms saturated {}, >= half of pgbench {}\n",
                    top.entry.name(),
                    met(rate >= 1000.0),
                    paced_ok.map(met).unwrap_or("-"),
                    met(s.p99_us <= 50_000),
                    half.map(met).unwrap_or("-"),
                ));
            }
            json.insert("targets".into(), verdicts.into());
        }
    }
    Ok((serde_json::Value::Object(json), table))
}

/// "closed" (saturation) or the paced rate.
fn load_name(pace: Option<u32>) -> String {
    match pace {
        None => "closed".into(),
        Some(rate) => format!("{rate}/s"),
    }
}

/// A paced run kept up when the hub delivered at least 95 % of the offered rate: otherwise its
/// latency says only that the queue grew.
fn kept_up(row: &Row, rate: u32) -> bool {
    row.run.delivered_per_second() >= 0.95 * f64::from(rate)
}

pub fn met(ok: bool) -> &'static str {
    if ok { "MET" } else { "MISSED" }
}

async fn backend_rows(
    options: &Options,
    database_url: Option<String>,
    cluster: Option<&Cluster>,
) -> anyhow::Result<BackendRuns> {
    let setup = HubSetup::new(database_url)?;
    let mut hub = setup.spawn()?;
    setup.wait_ready(&mut hub, Duration::from_secs(60)).await?;
    let pg_data = cluster.map(Cluster::data_dir);
    let cpu_now = || CpuSample::now(Some(hub.pid()), pg_data.as_deref());
    let window = Duration::from_secs(options.seconds);
    let drain = Duration::from_secs(300);
    // Warm-up: connections, statement caches, the first pages of every table.
    let warm = Load::prepare(&setup, 16, Entry::StaffApi).await?;
    warm.run(Duration::from_secs(options.warmup), drain, None)
        .await?;
    let mut rows = Vec::new();
    let mut noop = None;
    let most = options.clients.iter().copied().max();
    for &clients in &options.clients {
        let mut runs = Vec::new();
        for entry in [Entry::GatewaySend, Entry::StaffApi] {
            eprintln!("durable-k: {clients} clients, entry {}...", entry.name());
            let load = Load::prepare(&setup, clients, entry).await?;
            load.idle(Instant::now() + drain).await?;
            let before = cpu_now();
            let run = load.run(window, drain, None).await?;
            let cpu = cpu_now().since(&before).per_unit_ms(run.acknowledged);
            runs.push((entry, None, run, cpu));
            if Some(clients) == most && options.paced_rate > 0 {
                let rate = options.paced_rate;
                eprintln!(
                    "durable-k: {clients} clients paced at {rate}/s, entry {}...",
                    entry.name()
                );
                load.idle(Instant::now() + drain).await?;
                let before = cpu_now();
                let paced = load.run(window, drain, Some(f64::from(rate))).await?;
                let cpu = cpu_now().since(&before).per_unit_ms(paced.acknowledged);
                runs.push((entry, Some(rate), paced, cpu));
            }
        }
        if Some(clients) == most {
            eprintln!("durable-k: {clients} clients, no-op calls...");
            let before = cpu_now();
            let run = noop_calls(&setup, clients, window).await?;
            let cpu = cpu_now().since(&before).per_unit_ms(run.calls);
            noop = Some((run, cpu));
        }
        let pgbench = match cluster {
            Some(cluster) => {
                eprintln!("durable-k: pgbench with {clients} clients...");
                let before = cpu_now();
                let pgbench = cluster
                    .pgbench_insert(clients as u32, options.seconds as u32)
                    .await?;
                let cpu = cpu_now().since(&before).per_unit_ms(pgbench.transactions);
                Some((pgbench, cpu))
            }
            None => None,
        };
        for (entry, pace, run, cpu) in runs {
            rows.push(Row {
                entry,
                pace,
                run,
                cpu,
                pgbench: pgbench.map(|p| p.0),
                pgbench_cpu: pgbench.map(|p| p.1),
            });
        }
    }
    hub.stop()?;
    Ok(BackendRuns { rows, noop })
}

/// Where each K's CPU goes, against what a K may cost for the hub to reach half of pgbench's
/// rate on this machine's cores, and the no-op call's price.
fn cpu_table(backend: &str, rows: &[Row], noop: Option<&(NoopRun, CpuPerUnit)>) -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut table = format!(
        "durable-k, {backend}: CPU ms per acknowledged K (window and drain; this machine has {cores} cores)\n\
         {:<9} {:>7} {:>9} {:>8} {:>8} {:>9} {:>8} {:>22}\n",
        "ENTRY", "CLIENTS", "LOAD", "CLIENT", "HUB", "POSTGRES", "TOTAL", "BUDGET AT HALF PGBENCH"
    );
    for row in rows {
        // At half of pgbench's rate, the cores give each K `cores / (tps / 2)` seconds.
        let budget = row
            .pgbench
            .map(|p| format!("{:.3}", cores * 1000.0 / (p.tps / 2.0)))
            .unwrap_or_else(|| "-".into());
        table.push_str(&format!(
            "{:<9} {:>7} {:>9} {:>8.3} {:>8.3} {:>9.3} {:>8.3} {:>22}\n",
            row.entry.name(),
            row.run.clients,
            load_name(row.pace),
            row.cpu.client,
            row.cpu.hub,
            row.cpu.postgres,
            row.cpu.total(),
            budget,
        ));
    }
    let mut pgbench_rows: Vec<(usize, PgBench, CpuPerUnit)> = rows
        .iter()
        .filter_map(|r| Some((r.run.clients, r.pgbench?, r.pgbench_cpu?)))
        .collect();
    pgbench_rows.dedup_by_key(|(clients, ..)| *clients);
    for (clients, pgbench, cpu) in pgbench_rows {
        table.push_str(&format!(
            "pgbench, {clients} clients: CPU ms per transaction: pgbench {:.3}, PostgreSQL {:.3}, total {:.3} ({:.0} transactions)\n",
            cpu.waited_children,
            cpu.postgres,
            cpu.waited_children + cpu.postgres,
            pgbench.transactions,
        ));
    }
    if let Some((run, cpu)) = noop {
        let s = run.latency.summary();
        table.push_str(&format!(
            "no-op call (grpc.health.v1 Check on the gateway over mTLS, {} clients, closed): {:.0} calls/s, p50 {} ms, p99 {} ms, {} errors; CPU ms per call: client {:.3}, hub {:.3}, total {:.3}; a K crosses at least two such hops: >= {:.3} ms\n",
            run.clients,
            run.calls_per_second(),
            ms(s.p50_us),
            ms(s.p99_us),
            run.errors,
            cpu.client,
            cpu.hub,
            cpu.client + cpu.hub,
            2.0 * (cpu.client + cpu.hub),
        ));
    }
    table
}
