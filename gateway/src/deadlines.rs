//! The deadline engine. It lives in the gateway because the gateway sees every agency's
//! messages, and it is fed by the ledger: help requests delivered and decided, action progress
//! reported, the case events commissions record (`RecordCaseEvent`), and the clock events
//! schools, institutions and NGOs record for their own matters (`RecordAgencyClockEvent`,
//! [`agency_clocks`]).
//!
//! - [`ingest`] applies each ledger entry exactly once (a durable cursor, locked first and
//!   advanced in the transaction that applies the entry) and creates, meets and cancels
//!   deadlines. All date rules come from `referral-deadlines`, in the district's time zone.
//! - [`sweep`] moves open deadlines through warned, due, overdue and escalated as their
//!   instants come, raising one alert per deadline and state: a DEADLINE_ALERT message through
//!   the outbox (delivered by the delivery worker) and an event for `WatchDeadlines`.
//! - [`service`] answers the `Deadlines` queries.
//!
//! The background task [`run`] wakes after ledger appends, at the next transition instant of
//! the injected clock, and on a poll interval (for entries other replicas appended); tests can
//! run the same steps in their own task with [`settle`].
//!
//! [`feed`] relays to each replica's `WatchDeadlines` streams the alerts other replicas raised.

mod agency_clocks;
mod events;
pub(crate) mod feed;
mod ingest;
mod model;
mod service;
pub(crate) mod sweep;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use service::DeadlinesApi;
pub(crate) use service::{list_deadlines, list_overdue, overview};

use crate::Shared;

/// How often the engine looks for work it was not told about (entries another replica wrote).
const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);
/// How long the engine waits for rows another replica is moving.
const BUSY_RETRY: std::time::Duration = std::time::Duration::from_millis(100);
/// How long the engine waits after a failure before it tries again.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);
/// How long the engine lets ledger appends gather after it is woken by one, before it settles.
/// Every accepted message and every recorded delivery wakes it: without the pause, at a steady
/// rate it settled a few entries at a time (a transaction, a sweep and a next-transition query
/// each time, over 200 rounds a second at 1,000 Ks a second). Deadlines run in days; 10 ms
/// changes none of them. Real time, not the injected clock: it paces the store's work and
/// decides nothing.
const GATHER: std::time::Duration = std::time::Duration::from_millis(10);

/// Why the engine could not make progress.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the deadline store failed: {0}")]
    Store(#[from] sqlx::Error),
    /// A stored row the engine reads does not decode; the entry is skipped, never retried.
    #[error("a stored record cannot be read: {0}")]
    Corrupt(&'static str),
    /// A payload is sealed with a key the keyring lacks: retried once the key is added back.
    #[error("{0}")]
    PayloadKey(crate::store::PayloadError),
}

/// What one [`settle`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SettleReport {
    /// Ledger entries applied.
    pub ledger_entries: u64,
    pub deadlines_created: u64,
    pub deadlines_met: u64,
    pub deadlines_cancelled: u64,
    /// Deadlines moved to a later state by the sweep.
    pub deadlines_advanced: u64,
    /// States entered: one alert each.
    pub alerts: u64,
    /// Alert messages queued for delivery.
    pub alert_messages: u64,
}

/// Applies every ledger entry not yet applied, then sweeps for the clock's current instant, and
/// again while the sweep appended alert messages (their entries are applied too, changing
/// nothing), until both are done.
pub(crate) async fn settle(shared: &Shared) -> Result<SettleReport, EngineError> {
    let mut report = SettleReport::default();
    loop {
        loop {
            let applied = ingest::ingest_batch(shared).await?;
            if applied.entries == 0 {
                break;
            }
            report.ledger_entries += applied.entries;
            report.deadlines_created += applied.created;
            report.deadlines_met += applied.met;
            report.deadlines_cancelled += applied.cancelled;
        }
        let swept = sweep::sweep(shared, shared.clock.now()).await?;
        report.deadlines_advanced += swept.deadlines;
        report.alerts += swept.alerts;
        report.alert_messages += swept.messages;
        if swept.messages == 0 {
            return Ok(report);
        }
    }
}

/// The background task: runs until `shutdown` is cancelled.
pub(crate) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let next = match settle(&shared).await {
            Ok(report) => {
                if report.ledger_entries > 0 || report.alerts > 0 {
                    tracing::debug!(?report, "deadline engine settled");
                }
                sweep::next_transition_at(&shared).await
            }
            Err(e) => Err(e),
        };
        let next = match next {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "the deadline engine cannot make progress; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_AFTER) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        // Sleep until the next transition's instant (by the injected clock, so tests moving a
        // manual clock wake the engine), a ledger append, or the poll interval (real time). A
        // transition already due was left to another replica that holds it: look again soon.
        let clock = shared.clock.clone();
        let at_next_transition = async move {
            match next {
                Some(at) if at <= clock.now() => tokio::time::sleep(BUSY_RETRY).await,
                Some(at) => clock.sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let appended = tokio::select! {
            _ = shared.engine_wake.notified() => true,
            _ = at_next_transition => false,
            _ = tokio::time::sleep(POLL_INTERVAL) => false,
            _ = shutdown.cancelled() => break,
        };
        if appended {
            tokio::select! {
                _ = tokio::time::sleep(GATHER) => {}
                _ = shutdown.cancelled() => break,
            }
        }
    }
}

#[cfg(test)]
mod tests;
