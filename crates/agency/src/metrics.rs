//! An agency service's own Prometheus families, beside the request counters every server
//! records (`referral_core::metrics`), read from its store at each scrape:
//! - `referral_agency_outbox_depth{queue}` and `referral_agency_outbox_oldest_age_seconds{queue}`
//!   for its two outboxes: `messages` (forms written as pending and not yet acknowledged by the
//!   gateway) and `clock_events` (clock events not yet recorded by the gateway).
//!
//! Labels are queue names only.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
};
use referral_core::{Clock, db::Database, metrics::Metrics, time};
use sqlx::Row as _;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: &'static str,
}

/// The two outboxes: (label, SQL giving its depth and oldest instant).
const QUEUES: [(&str, &str); 2] = [
    (
        "messages",
        "SELECT COUNT(*) AS depth, MIN(created_at) AS oldest FROM sent_messages \
         WHERE status = 'pending'",
    ),
    (
        "clock_events",
        "SELECT COUNT(*) AS depth, MIN(queued_at) AS oldest FROM clock_events \
         WHERE state = 'pending'",
    ),
];

/// Registers the agency's families on `metrics`, refreshed from `db` (ages by `clock`) before
/// each scrape.
pub(crate) fn register(metrics: &Metrics, db: Database, clock: Clock) {
    let depth = Family::<QueueLabels, Gauge>::default();
    let age = Family::<QueueLabels, Gauge<f64, AtomicU64>>::default();
    metrics.register(
        "agency_outbox_depth",
        "Outgoing items not yet taken by the gateway, by queue (messages, clock_events)",
        depth.clone(),
    );
    metrics.register(
        "agency_outbox_oldest_age_seconds",
        "Age of the oldest outgoing item not yet taken by the gateway (0 when none waits)",
        age.clone(),
    );
    metrics.add_refresher(move || {
        let (depth, age, db, clock) = (depth.clone(), age.clone(), db.clone(), clock.clone());
        async move {
            let now = time::to_micros(clock.now());
            for (queue, sql) in QUEUES {
                let row = match sqlx::query(sql).fetch_one(db.pool()).await {
                    Ok(row) => row,
                    Err(e) => {
                        tracing::warn!(queue, error = %e, "cannot read an outbox's depth");
                        continue;
                    }
                };
                let (Ok(n), Ok(oldest)) = (
                    row.try_get::<i64, _>("depth"),
                    row.try_get::<Option<i64>, _>("oldest"),
                ) else {
                    continue;
                };
                let labels = QueueLabels { queue };
                depth.get_or_create(&labels).set(n);
                age.get_or_create(&labels)
                    .set(oldest.map_or(0.0, |o| (now - o).max(0) as f64 / 1e6));
            }
        }
    });
}
