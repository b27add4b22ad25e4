//! `footprint`: the all-in-one process (`referral-hub up`, SQLite) from spawn to ready, on a
//! fresh data directory (development credentials generated) and on a restart over the same one;
//! its resident memory idle and under the durable-k load (128 clients), from
//! `/proc/<pid>/status`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde_json::json;

use crate::{Options, durable_k::met, hub::HubSetup, load::Load, stats::ms};

pub async fn run(options: &Options) -> anyhow::Result<(serde_json::Value, String)> {
    let setup = HubSetup::new(None)?;
    // First start: generates the development PKI, issuer keys and payload key, creates stores.
    let mut hub = setup.spawn()?;
    let first = setup.wait_ready(&mut hub, Duration::from_secs(60)).await?;
    hub.stop()?;
    // Restarts over the same data directory: the usual start of a deployed process.
    let mut restarts = Vec::new();
    for _ in 0..3 {
        let mut again = setup.spawn()?;
        restarts.push(
            setup
                .wait_ready(&mut again, Duration::from_secs(60))
                .await?,
        );
        again.stop()?;
    }
    let mut hub = setup.spawn()?;
    let ready = setup.wait_ready(&mut hub, Duration::from_secs(60)).await?;
    restarts.push(ready);
    // Idle: settled for two seconds after ready, nothing calling.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle_rss, _) = hub.memory_kib()?;

    // Under load: 128 clients for the durable-k window, resident memory sampled every 100 ms.
    let load = Load::prepare(&setup, 128, crate::load::Entry::StaffApi).await?;
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done, pid) = (peak.clone(), done.clone(), hub.pid());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if let Ok((rss, _)) = crate::hub::memory_kib(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let run = load
        .run(
            Duration::from_secs(options.seconds),
            Duration::from_secs(300),
            None,
        )
        .await?;
    done.store(true, Ordering::Relaxed);
    sampler.await?;
    let (after_rss, hwm) = hub.memory_kib()?;
    drop(load);
    hub.stop()?;

    let mib = |kib: u64| kib as f64 / 1024.0;
    let restart_ms: Vec<u64> = restarts
        .iter()
        .map(|r| r.after.as_millis() as u64)
        .collect();
    let worst_restart = restarts.iter().map(|r| r.after).max().unwrap_or_default();
    let by_admin = restarts.iter().all(|r| r.by_admin_port) && first.by_admin_port;
    let idle_ok = mib(idle_rss) <= 150.0;
    let ready_ok = worst_restart <= Duration::from_secs(2) && first.after <= Duration::from_secs(2);
    let mut table = String::from("footprint: referral-hub up (every component, SQLite)\n");
    table.push_str(&format!(
        "ready after spawn ({}): first start {} ms, restarts {:?} ms\n",
        if by_admin {
            "every admin /readyz 200"
        } else {
            "every gRPC health check SERVING"
        },
        first.after.as_millis(),
        restart_ms
    ));
    table.push_str(&format!(
        "resident memory: idle {:.1} MiB; under load (128 clients, {} s, {} K acknowledged, \
         p99 {} ms) peak sampled {:.1} MiB, VmHWM {:.1} MiB, after {:.1} MiB\n",
        mib(idle_rss),
        options.seconds,
        run.acknowledged,
        ms(run.latency.summary().p99_us),
        mib(peak.load(Ordering::Relaxed)),
        mib(hwm),
        mib(after_rss)
    ));
    table.push_str(&format!(
        "targets: idle <= 150 MB {}, ready <= 2 s {}\n",
        met(idle_ok),
        met(ready_ok)
    ));
    let json = json!({
        "ready_by": if by_admin { "admin_readyz" } else { "grpc_health" },
        "first_start_ready_ms": first.after.as_millis() as u64,
        "restart_ready_ms": restart_ms,
        "idle_rss_mib": mib(idle_rss),
        "load": {
            "clients": 128,
            "seconds": options.seconds,
            "acknowledged": run.acknowledged,
            "delivered_per_s": run.delivered_per_second(),
            "peak_sampled_rss_mib": mib(peak.load(Ordering::Relaxed)),
            "vm_hwm_mib": mib(hwm),
            "rss_after_mib": mib(after_rss),
        },
        "targets": {"idle_at_most_150_mb": idle_ok, "ready_within_2_s": ready_ok},
    });
    Ok((json, table))
}
