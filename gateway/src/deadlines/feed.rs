//! The alert feed: every replica's `WatchDeadlines` streams see every alert once, whichever
//! replica raised it.
//!
//! A replica broadcasts the alerts its own sweep raises as it commits them. Alerts another
//! replica raised reach it through the ledger: each alert's DEADLINE_ALERT messages are appended
//! in the transaction that raises it, and ledger sequence numbers become visible in commit order
//! (every append holds the head row), so a cursor over the ledger, read from the replica's start
//! on every poll, finds each alert once. The alert is rebuilt from `deadline_alerts` and the
//! deadline's row, addressed as the raising sweep addressed it, and broadcast unless this replica
//! raised it itself ([`LocalAlerts`]). An alert with no message (every addressee gone from the
//! directory) is seen only on the replica that raised it.

use std::{
    collections::{HashSet, VecDeque},
    sync::{Arc, Mutex},
};

use referral_core::time;
use referral_proto::v1::{DeadlineAlert, FormKind};
use sqlx::Row as _;
use tokio_util::sync::CancellationToken;

use super::{
    EngineError, POLL_INTERVAL, RETRY_AFTER,
    model::{self, DeadlineRow},
    sweep,
};
use crate::{Shared, ledger::LedgerEvent};

/// How many ledger entries one read of the feed takes.
const BATCH: i64 = 512;
/// How many alert ids of its own a replica remembers (far more than its feed ever lags behind).
const REMEMBERED: usize = 65_536;

/// The alerts this replica raised and broadcast itself, noted before their commit.
#[derive(Debug, Default)]
pub(crate) struct LocalAlerts(Mutex<(HashSet<String>, VecDeque<String>)>);

impl LocalAlerts {
    pub(crate) fn note(&self, alert_id: &str) {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (ids, order) = &mut *guard;
        if ids.insert(alert_id.to_owned()) {
            order.push_back(alert_id.to_owned());
            if order.len() > REMEMBERED
                && let Some(oldest) = order.pop_front()
            {
                ids.remove(&oldest);
            }
        }
    }

    fn contains(&self, alert_id: &str) -> bool {
        let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        guard.0.contains(alert_id)
    }

    /// Forgets every alert (tests: this replica's alerts then look like another replica's).
    #[cfg(test)]
    pub(crate) fn forget_all(&self) {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *guard = Default::default();
    }
}

/// Where a replica's feed stands in the ledger.
#[derive(Debug, Default)]
pub(super) struct Cursor {
    pub(super) seq: i64,
    /// The alert of the last message read: an alert's messages are consecutive entries.
    last_alert: String,
}

/// The background task: relays other replicas' alerts to this replica's watchers until
/// `shutdown` is cancelled, looking every poll interval.
pub(crate) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut cursor = None;
    loop {
        if cursor.is_none() {
            // From now on: a watcher of this replica cannot have been watching before it started.
            match sqlx::query_scalar::<_, i64>("SELECT COALESCE(MAX(seq), 0) FROM ledger")
                .fetch_one(shared.db.pool())
                .await
            {
                Ok(seq) => {
                    cursor = Some(Cursor {
                        seq,
                        last_alert: String::new(),
                    })
                }
                Err(e) => tracing::warn!(error = %e, "the alert feed cannot read the ledger"),
            }
        }
        if let Some(cursor) = cursor.as_mut() {
            match relay(&shared, cursor).await {
                Ok(()) => {
                    // Watchers wake only when the position moved.
                    shared
                        .feed_position
                        .send_if_modified(|at| std::mem::replace(at, cursor.seq) != cursor.seq);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the alert feed cannot read the ledger; retrying")
                }
            }
        }
        let wait = if cursor.is_some() {
            POLL_INTERVAL
        } else {
            RETRY_AFTER
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Broadcasts every alert another replica committed after the cursor, and advances it.
///
/// An alert whose stored rows do not decode is skipped with an error in the log: its messages
/// are delivered as every message is, only this replica's watchers miss it. Retrying it would
/// hold the cursor there and keep every later alert from them. A store that cannot be reached
/// stops the relay where it is, to be retried.
pub(super) async fn relay(shared: &Shared, cursor: &mut Cursor) -> Result<(), EngineError> {
    let accepted = LedgerEvent::Accepted.as_str();
    let alert_kind = FormKind::DeadlineAlert.as_str_name();
    loop {
        let entries = sqlx::query(
            "SELECT seq, event, form_kind, message_id FROM ledger WHERE seq > $1 \
             ORDER BY seq LIMIT $2",
        )
        .bind(cursor.seq)
        .bind(BATCH)
        .fetch_all(shared.db.pool())
        .await?;
        for entry in &entries {
            let seq: i64 = entry.try_get("seq")?;
            let event: String = entry.try_get("event")?;
            let form_kind: String = entry.try_get("form_kind")?;
            if event == accepted && form_kind == alert_kind {
                let message_id: String = entry.try_get("message_id")?;
                match relay_alert(shared, cursor, &message_id).await {
                    Ok(()) => {}
                    Err(e) if is_unreadable(&e) => tracing::error!(
                        seq,
                        message_id = %message_id,
                        error = %e,
                        "an alert cannot be rebuilt from the store; this replica's watchers miss it"
                    ),
                    Err(e) => return Err(e),
                }
            }
            cursor.seq = seq;
        }
        if i64::try_from(entries.len()).unwrap_or(i64::MAX) < BATCH {
            return Ok(());
        }
    }
}

/// Broadcasts the alert of one DEADLINE_ALERT message, unless this replica raised it or it was
/// the alert of the message before (an alert's messages are consecutive entries).
async fn relay_alert(
    shared: &Shared,
    cursor: &mut Cursor,
    message_id: &str,
) -> Result<(), EngineError> {
    if let Some(alert_id) = alert_of_message(shared, message_id).await?
        && alert_id != cursor.last_alert
    {
        if !shared.local_alerts.contains(&alert_id)
            && let Some(alert) = rebuild(shared, &alert_id).await?
        {
            let _ = shared.alerts.send(alert);
        }
        cursor.last_alert = alert_id;
    }
    Ok(())
}

/// Whether an error is about what is stored (it will fail again however often it is retried),
/// not about reaching the store.
fn is_unreadable(error: &EngineError) -> bool {
    match error {
        EngineError::Corrupt(_) => true,
        EngineError::Store(e) => matches!(
            e,
            sqlx::Error::ColumnDecode { .. }
                | sqlx::Error::Decode(_)
                | sqlx::Error::ColumnNotFound(_)
                | sqlx::Error::TypeNotFound { .. }
        ),
        EngineError::PayloadKey(_) => false,
    }
}

/// The alert a DEADLINE_ALERT message carries, from its idempotency key
/// (`deadline-alert:{alert_id}:{n}`).
async fn alert_of_message(
    shared: &Shared,
    message_id: &str,
) -> Result<Option<String>, EngineError> {
    let key: Option<String> =
        sqlx::query_scalar("SELECT idempotency_key FROM messages WHERE message_id = $1")
            .bind(message_id)
            .fetch_optional(shared.db.pool())
            .await?;
    Ok(key.and_then(|key| {
        let (alert_id, _n) = key.strip_prefix("deadline-alert:")?.rsplit_once(':')?;
        Some(alert_id.to_owned())
    }))
}

/// The alert as the raising replica broadcast it: its deadline in the state entered, addressed
/// to the first of its addressees.
async fn rebuild(shared: &Shared, alert_id: &str) -> Result<Option<DeadlineAlert>, EngineError> {
    let Some(row) = sqlx::query(
        "SELECT deadline_id, state, raised_at FROM deadline_alerts WHERE alert_id = $1",
    )
    .bind(alert_id)
    .fetch_optional(shared.db.pool())
    .await?
    else {
        return Ok(None);
    };
    let deadline_id: String = row.try_get("deadline_id")?;
    let state = model::parse_state(&row.try_get::<String, _>("state")?);
    let raised_at = time::from_micros(row.try_get("raised_at")?);
    let Some(deadline) = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM deadlines WHERE deadline_id = $1",
        model::COLUMNS
    )))
    .bind(&deadline_id)
    .fetch_optional(shared.db.pool())
    .await?
    else {
        return Ok(None);
    };
    let mut deadline = DeadlineRow::from_row(&deadline)?;
    deadline.state = state;
    let (role, user) = sweep::addressees(&shared.directory(), &deadline, state)
        .into_iter()
        .next()
        .map(|(_, role, user)| (role, user))
        .unwrap_or_default();
    Ok(Some(DeadlineAlert {
        deadline: Some(deadline.to_proto()),
        state: state as i32,
        raised_at: Some(time::to_proto(raised_at)),
        addressed_to_role: role as i32,
        addressed_to_user_id: user,
        alert_id: alert_id.to_owned(),
    }))
}
