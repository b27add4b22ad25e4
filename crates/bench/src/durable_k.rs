//! `durable-k`: acknowledged-and-delivered K submissions per second, and their acknowledgement
//! latency, with 1, 16 and 128 concurrent clients, against the all-in-one process on SQLite and
//! on PostgreSQL; on PostgreSQL beside pgbench's single-row INSERT commit rate on the same
//! cluster with the same client count, run right after each of the hub's runs.

use std::time::Duration;

use serde_json::json;

use crate::{
    Options,
    hub::HubSetup,
    load::{Entry, Load, LoadRun},
    pg::{Cluster, PgBench},
    stats::{ms, ratio, show_ratio},
};

/// The client counts the issue asks for.
pub const CLIENTS: [usize; 3] = [1, 16, 128];

/// One backend's rows.
struct Row {
    entry: Entry,
    run: LoadRun,
    pgbench: Option<PgBench>,
}

pub async fn run(options: &Options) -> anyhow::Result<(serde_json::Value, String)> {
    let mut json = serde_json::Map::new();
    let mut table = String::from(
        "durable-k: acknowledged-and-delivered K per second (entry gateway: school 1's certificate \
         -> gateway Send -> commission; entry staff-api: school 1's staff API -> school service -> \
         gateway -> commission)\n",
    );
    table.push_str(&format!(
        "{:<9} {:<9} {:>7} {:>9} {:>9} {:>8} {:>8} {:>7} {:>10} {:>8}\n",
        "BACKEND",
        "ENTRY",
        "CLIENTS",
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
        let rows = backend_rows(options, url, cluster.as_ref()).await?;
        let mut list = Vec::new();
        for row in &rows {
            let s = row.run.latency.summary();
            let errors: u64 = row.run.errors.values().sum();
            let delivered = row.run.delivered_per_second();
            let vs_pgbench = row.pgbench.and_then(|p| ratio(delivered, p.tps));
            table.push_str(&format!(
                "{:<9} {:<9} {:>7} {:>9.0} {:>9.0} {:>8} {:>8} {:>7} {:>10} {:>8}\n",
                backend,
                row.entry.name(),
                row.run.clients,
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
            }));
        }
        if let Some(cluster) = &cluster {
            json.insert("postgres_version".into(), json!(cluster.version));
        }
        json.insert(backend.into(), json!(list));
        if backend == "postgres" {
            let mut verdicts = serde_json::Map::new();
            for top in rows.iter().filter(|r| r.run.clients == 128) {
                let s = top.run.latency.summary();
                let rate = top.run.delivered_per_second();
                let half = top.pgbench.map(|p| rate >= p.tps / 2.0);
                verdicts.insert(
                    top.entry.name().into(),
                    json!({
                        "at_least_1000_per_s": rate >= 1000.0,
                        "p99_at_most_50_ms": s.p99_us <= 50_000,
                        "at_least_half_of_pgbench": half,
                    }),
                );
                table.push_str(&format!(
                    "targets (PostgreSQL, 128 clients, entry {}): >= 1000/s {}, p99 <= 50 ms {}, >= half of pgbench {}\n",
                    top.entry.name(),
                    met(rate >= 1000.0),
                    met(s.p99_us <= 50_000),
                    half.map(met).unwrap_or("-"),
                ));
            }
            json.insert("targets".into(), verdicts.into());
        }
    }
    Ok((serde_json::Value::Object(json), table))
}

pub fn met(ok: bool) -> &'static str {
    if ok { "MET" } else { "MISSED" }
}

async fn backend_rows(
    options: &Options,
    database_url: Option<String>,
    cluster: Option<&Cluster>,
) -> anyhow::Result<Vec<Row>> {
    let setup = HubSetup::new(database_url)?;
    let mut hub = setup.spawn()?;
    setup.wait_ready(&mut hub, Duration::from_secs(60)).await?;
    let window = Duration::from_secs(options.seconds);
    let drain = Duration::from_secs(300);
    // Warm-up: connections, statement caches, the first pages of every table.
    let warm = Load::prepare(&setup, 16, Entry::StaffApi).await?;
    warm.run(Duration::from_secs(options.warmup), drain).await?;
    let mut rows = Vec::new();
    for &clients in &options.clients {
        let mut runs = Vec::new();
        for entry in [Entry::GatewaySend, Entry::StaffApi] {
            eprintln!("durable-k: {clients} clients, entry {}...", entry.name());
            let load = Load::prepare(&setup, clients, entry).await?;
            runs.push((entry, load.run(window, drain).await?));
        }
        let pgbench = match cluster {
            Some(cluster) => {
                eprintln!("durable-k: pgbench with {clients} clients...");
                Some(
                    cluster
                        .pgbench_insert(clients as u32, options.seconds as u32)
                        .await?,
                )
            }
            None => None,
        };
        for (entry, run) in runs {
            rows.push(Row {
                entry,
                run,
                pgbench,
            });
        }
    }
    hub.stop()?;
    Ok(rows)
}
