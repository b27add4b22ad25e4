//! The gateway's own Prometheus families, beside the request counters every server records
//! (`referral_core::metrics`):
//! - `referral_outbox_depth` and `referral_outbox_oldest_age_seconds`: messages waiting for
//!   delivery, read from the store at each scrape (so every replica reports the shared outbox);
//! - `referral_deliveries_total{recipient, outcome}`: delivery attempts this process made,
//!   `delivered` or `failed_attempt`; `referral_delivery_retries_total{recipient}`: attempts at
//!   a message that had failed before;
//! - `referral_deadlines{kind, state}`: deadlines by kind and state, read from the store at each
//!   scrape; `referral_deadline_alerts_total{kind, state}`: alerts this process raised;
//! - `referral_policy_denials_total{action, form_kind}`: refusals recorded in the ledger.
//!
//! Labels are agency ids, kinds and states: never a case reference or anything of a child.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, atomic::AtomicU64},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};
use referral_core::{Clock, db::Database, metrics::Metrics, time};
use referral_proto::v1::{DeadlineKind, DeadlineState};
use sqlx::Row as _;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    recipient: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RecipientLabels {
    recipient: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeadlineLabels {
    kind: String,
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DenialLabels {
    action: &'static str,
    form_kind: String,
}

/// The gateway's families. Cheap to clone; clones record into the same registry.
#[derive(Clone, Debug)]
pub(crate) struct GatewayMetrics {
    outbox_depth: Gauge,
    outbox_oldest_age: Gauge<f64, AtomicU64>,
    deliveries: Family<DeliveryLabels, Counter>,
    retries: Family<RecipientLabels, Counter>,
    deadlines: Family<DeadlineLabels, Gauge>,
    /// The label sets of `deadlines` the last refresh set, so that one gone from the store is
    /// removed rather than left at its old count.
    deadline_labels: Arc<Mutex<HashSet<DeadlineLabels>>>,
    alerts: Family<DeadlineLabels, Counter>,
    denials: Family<DenialLabels, Counter>,
}

/// `DEADLINE_KIND_HELP_REQUEST_DECISION` as a label: `help_request_decision`.
fn label(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

fn deadline_labels(kind: DeadlineKind, state: DeadlineState) -> DeadlineLabels {
    DeadlineLabels {
        kind: label(kind.as_str_name(), "DEADLINE_KIND_"),
        state: label(state.as_str_name(), "DEADLINE_STATE_"),
    }
}

impl GatewayMetrics {
    /// Registers the gateway's families on `metrics`, with a refresher that reads the outbox
    /// and the deadlines from `db` (ages by `clock`) before each scrape.
    pub(crate) fn register(metrics: &Metrics, db: Database, clock: Clock) -> Self {
        let this = Self {
            outbox_depth: Gauge::default(),
            outbox_oldest_age: Gauge::default(),
            deliveries: Family::default(),
            retries: Family::default(),
            deadlines: Family::default(),
            deadline_labels: Arc::default(),
            alerts: Family::default(),
            denials: Family::default(),
        };
        metrics.register(
            "outbox_depth",
            "Messages accepted and not yet delivered",
            this.outbox_depth.clone(),
        );
        metrics.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest message not yet delivered (0 when none waits)",
            this.outbox_oldest_age.clone(),
        );
        metrics.register(
            "deliveries",
            "Delivery attempts by recipient agency and outcome (delivered, failed_attempt)",
            this.deliveries.clone(),
        );
        metrics.register(
            "delivery_retries",
            "Delivery attempts at a message whose earlier attempt failed, by recipient agency",
            this.retries.clone(),
        );
        metrics.register(
            "deadlines",
            "Deadlines by kind and state",
            this.deadlines.clone(),
        );
        metrics.register(
            "deadline_alerts",
            "Deadline alerts raised, by deadline kind and the state entered",
            this.alerts.clone(),
        );
        metrics.register(
            "policy_denials",
            "Refusals by the routing rules or the need-to-know policy, by action and form kind",
            this.denials.clone(),
        );
        let refreshed = this.clone();
        metrics.add_refresher(move || {
            let (this, db, clock) = (refreshed.clone(), db.clone(), clock.clone());
            async move {
                if let Err(e) = this.refresh(&db, &clock).await {
                    tracing::warn!(error = %e, "cannot read the gateway's gauges from the store");
                }
            }
        });
        this
    }

    /// Reads the outbox and the deadlines into the gauges.
    async fn refresh(&self, db: &Database, clock: &Clock) -> Result<(), sqlx::Error> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS depth, MIN(m.created_at) AS oldest \
             FROM outbox o JOIN messages m ON m.message_id = o.message_id",
        )
        .fetch_one(db.pool())
        .await?;
        let depth: i64 = row.try_get("depth")?;
        let oldest: Option<i64> = row.try_get("oldest")?;
        let now = time::to_micros(clock.now());
        let age = oldest.map_or(0.0, |oldest| (now - oldest).max(0) as f64 / 1e6);
        self.outbox_depth.set(depth);
        self.outbox_oldest_age.set(age);

        let rows =
            sqlx::query("SELECT kind, state, COUNT(*) AS n FROM deadlines GROUP BY kind, state")
                .fetch_all(db.pool())
                .await?;
        let mut seen = HashSet::new();
        for row in rows {
            // Stored as their protobuf names (`DEADLINE_KIND_ACTION`, `DEADLINE_STATE_DUE`).
            let labels = DeadlineLabels {
                kind: label(&row.try_get::<String, _>("kind")?, "DEADLINE_KIND_"),
                state: label(&row.try_get::<String, _>("state")?, "DEADLINE_STATE_"),
            };
            self.deadlines.get_or_create(&labels).set(row.try_get("n")?);
            seen.insert(labels);
        }
        let mut last = self
            .deadline_labels
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for gone in last.difference(&seen) {
            self.deadlines.remove(gone);
        }
        *last = seen;
        Ok(())
    }

    /// A delivery was recorded (committed) by this process.
    pub(crate) fn delivered(&self, recipient: &str) {
        self.delivery(recipient, "delivered");
    }

    /// A delivery attempt failed and was scheduled again.
    pub(crate) fn failed_attempt(&self, recipient: &str) {
        self.delivery(recipient, "failed_attempt");
    }

    fn delivery(&self, recipient: &str, outcome: &'static str) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                recipient: recipient.to_owned(),
                outcome,
            })
            .inc();
    }

    /// An attempt starts at a message that failed `attempts` times before (a retry when > 0).
    pub(crate) fn attempting(&self, recipient: &str, attempts: i64) {
        if attempts > 0 {
            self.retries
                .get_or_create(&RecipientLabels {
                    recipient: recipient.to_owned(),
                })
                .inc();
        }
    }

    /// A deadline alert was raised (committed) for `kind` entering `state`.
    pub(crate) fn alert_raised(&self, kind: DeadlineKind, state: DeadlineState) {
        self.alerts
            .get_or_create(&deadline_labels(kind, state))
            .inc();
    }

    /// A refusal was recorded in the ledger. `form_kind` is what the audit entry names: a form
    /// kind's protobuf name for a send, `CASE_FILE` for a read, `CASE_EVENT` for a case event.
    pub(crate) fn policy_denied(&self, form_kind: &str) {
        let action = match form_kind {
            "CASE_FILE" => "read",
            "CASE_EVENT" => "case_event",
            _ => "send",
        };
        self.denials
            .get_or_create(&DenialLabels {
                action,
                form_kind: label(form_kind, "FORM_KIND_"),
            })
            .inc();
    }
}
