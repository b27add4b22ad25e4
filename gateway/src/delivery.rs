//! The delivery worker: drains the outbox by pushing each message to its recipient's inbox over
//! mTLS with the gateway's own certificate, retrying with exponential back-off and jitter while
//! the recipient is down. Delivery is at least once; recipients de-duplicate by message id, so
//! every acknowledged message takes effect exactly once.
//!
//! The worker also removes delivered payloads: once a message has been delivered, its retention
//! (`payload_retention`, by the injected clock) has passed and the deadline engine has applied
//! its `message.accepted` ledger entry, the sealed payload is dropped and only the metadata stays.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use prost::Message as _;
use referral_core::{time, trace_context};
use referral_proto::v1::{
    DeliverRequest, Envelope, agency_inbox_client::AgencyInboxClient, payload,
};
use sqlx::Row as _;
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::Instrument as _;

use crate::{
    Shared,
    ledger::{self, EntryFields, LedgerEvent},
    store::{self, STATE_DELIVERED, STATE_QUEUED},
};

/// What happened to one delivery attempt; tests and operators can subscribe to these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryEvent {
    Delivered { message_id: String },
    AttemptFailed { message_id: String, attempts: i64 },
}

/// How many messages one worker pushes at once.
const PARALLEL_DELIVERIES: usize = 96;
/// How many due messages one claim leases.
const CLAIM_BATCH: usize = 96;
/// How many pushes must be free before the worker leases more while others are under way.
const CLAIM_WHEN_FREE: usize = 16;
/// How often the worker looks for work it was not told about (rows another replica wrote).
const POLL_INTERVAL: SignedDuration = SignedDuration::from_secs(2);
/// How long the worker lets work gather after it is woken (a message accepted, a push finished)
/// before its next round. Without it, at a steady rate below saturation each message had a claim
/// of its own, an empty claim after its push and a transaction recording its delivery alone:
/// measured at 1,000 Ks a second on PostgreSQL, twice the CPU per K of the same hub saturated,
/// so the worker fell behind a rate it sustains under a heavier load. Real time, not the
/// injected clock: it paces the store's work and decides nothing.
const GATHER: std::time::Duration = std::time::Duration::from_millis(5);

/// How many payloads one purge statement removes.
const PURGE_BATCH: i64 = 256;

#[derive(Clone)]
struct Due {
    message_id: String,
    recipient: String,
    payload_sha256: String,
    attempts: i64,
    form_kind: String,
    /// The `traceparent` of the Send call that accepted the message.
    trace_context: Option<String>,
    /// The message's row as the claim read it (its sealed payload included), so that a push
    /// reads nothing more.
    stored: store::MessageRow,
}

/// The span of one delivery attempt: a client span in the trace of the Send call that accepted
/// the message (its stored `traceparent`), so that the recipient's server span is its child and
/// the worker's log lines about the message carry its trace id.
fn delivery_span(due: &Due) -> tracing::Span {
    let span = tracing::info_span!(
        "delivery",
        otel.kind = "client",
        rpc.method = "/referral.v1.AgencyInbox/Deliver",
        message_id = %due.message_id,
        form_kind = %due.form_kind,
        recipient = %due.recipient,
        attempt = due.attempts + 1,
        trace_id = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    let parent = due
        .trace_context
        .as_deref()
        .map(trace_context::stored_context)
        .unwrap_or_default();
    trace_context::continue_trace(&span, parent);
    span
}

/// Runs until `shutdown` is cancelled.
///
/// Each round leases only as many due rows as it has free pushes, and reads the outbox's next
/// due time and the payloads to purge only when it must: under load a round runs after every
/// finished push (a delivered message may release the next one of its case), and a round that
/// ran every query each time cost more of the store than the deliveries themselves.
pub(crate) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(PARALLEL_DELIVERIES));
    let mut tasks = tokio::task::JoinSet::new();
    // When to look for payloads to remove next.
    let mut purge_at = shared.clock.now();
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let now = shared.clock.now();
        let room = permits.available_permits().min(CLAIM_BATCH);
        let mut took_all = false;
        // While many pushes are under way, wait for several to finish and lease for them at
        // once: a claim per finished push cost more of the store than the pushes.
        if room > 0 && (room >= CLAIM_WHEN_FREE || tasks.is_empty()) {
            match claim_due(&shared, now, room).await {
                Ok(batch) => {
                    took_all = batch.len() == room;
                    for due in batch {
                        let channel = match shared.agency_channel(&due.recipient) {
                            Some(c) => c,
                            None => {
                                tracing::error!(message_id = %due.message_id, recipient = %due.recipient, "recipient has no usable endpoint");
                                let _ = record_failure(&shared, &due, "NO_ENDPOINT").await;
                                continue;
                            }
                        };
                        let Ok(permit) = permits.clone().acquire_owned().await else {
                            break;
                        };
                        let shared = shared.clone();
                        let span = delivery_span(&due);
                        tasks.spawn(
                            async move {
                                deliver(&shared, channel, due).await;
                                drop(permit);
                            }
                            .instrument(span),
                        );
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot read the outbox"),
            }
        }
        // Reap finished attempts so the set does not grow.
        while tasks.try_join_next().is_some() {}
        if now >= purge_at {
            if let Err(e) = purge_payloads(&shared).await {
                tracing::error!(error = %e, "cannot remove delivered payloads");
            }
            // Wake when the next held payload's retention ends (one the deadline engine has not
            // read yet waits for the poll).
            purge_at = match next_purge(&shared).await {
                Ok(Some(t)) if t > now => t.min(now + POLL_INTERVAL),
                _ => now + POLL_INTERVAL,
            };
        }
        if took_all && permits.available_permits() >= CLAIM_WHEN_FREE {
            // More may be due, and there is room to push it.
            continue;
        }
        let next = if tasks.is_empty() {
            match next_due(&shared).await {
                Ok(Some(t)) if t <= shared.clock.now() => continue,
                Ok(Some(t)) => t.min(shared.clock.now() + POLL_INTERVAL),
                _ => shared.clock.now() + POLL_INTERVAL,
            }
        } else {
            // A finished push wakes the next round.
            shared.clock.now() + POLL_INTERVAL
        };
        let next = next.min(purge_at);
        let woken = tokio::select! {
            _ = shared.wake.notified() => true,
            _ = shared.clock.sleep_until(next) => false,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => true,
            _ = shutdown.cancelled() => break,
        };
        if woken {
            // Let the messages accepted and the pushes finished in the next moment join this
            // round (the pushes under way go on meanwhile).
            tokio::select! {
                _ = tokio::time::sleep(GATHER) => {}
                _ = shutdown.cancelled() => break,
            }
        }
    }
    // Graceful shutdown: the pushes under way finish (each bounded by the attempt timeout) and
    // record their outcome, so that no row is left leased by a worker that is gone.
    while tasks.join_next().await.is_some() {}
}

/// The failures (as `last_error` records them) that say the recipient refused the message itself
/// (its gRPC code), or that the gateway cannot open its stored payload: such a row does not hold
/// back the later messages of its case (see [`claim_due`]).
macro_rules! refused_on_content {
    () => {
        "'InvalidArgument', 'FailedPrecondition', 'PermissionDenied', 'NotFound', \
         'AlreadyExists', 'OutOfRange', 'Unimplemented', 'MISSING', 'UNREADABLE'"
    };
}

/// Leases the messages that are due. A lease is taken with a conditional update, so two workers
/// (two replicas) never push the same row at the same time.
///
/// A case's messages reach each recipient in the order they were accepted: a row is not leased
/// while an earlier row of the same recipient and case is still in the outbox (waiting for its
/// retry or being pushed); it becomes due when that one is delivered. Never other cases or
/// recipients are held back.
///
/// Only a row that failed for want of the recipient (down, slow, overloaded: what a later
/// message would meet too) holds back the rest of its case. A row the recipient refused on its
/// content (`refused_on_content!`), or whose stored payload the gateway cannot open, is still
/// retried with back-off, but the messages after it go on: one bad message from one agency
/// must not stall what other agencies send about the same child.
async fn claim_due(shared: &Shared, now: Timestamp, limit: usize) -> Result<Vec<Due>, sqlx::Error> {
    let now_us = time::to_micros(now);
    let lease_until = time::to_micros(now + shared.lease_length());
    // One statement takes the lease of every due row it finds; the condition on the lease is
    // checked again on each row it updates, so a row another worker took meanwhile is skipped.
    let leased: Vec<String> = sqlx::query_scalar(concat!(
        "UPDATE outbox SET lease_owner = $1, lease_until = $2 WHERE message_id IN (\
         SELECT o.message_id FROM outbox o \
         WHERE o.next_attempt_at <= $3 AND (o.lease_until IS NULL OR o.lease_until <= $3) \
         AND NOT EXISTS (SELECT 1 FROM outbox e WHERE e.recipient_agency_id = o.recipient_agency_id \
         AND e.case_reference = o.case_reference AND e.accepted_seq < o.accepted_seq \
         AND (e.last_error IS NULL OR e.last_error NOT IN (",
        refused_on_content!(),
        "))) ORDER BY o.next_attempt_at LIMIT $4) \
         AND (lease_until IS NULL OR lease_until <= $3) RETURNING message_id",
    ))
    .bind(&shared.worker_id)
    .bind(lease_until)
    .bind(now_us)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(shared.db.pool())
    .await?;
    if leased.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {}, trace_context, accepted_seq FROM messages WHERE message_id IN ({})",
        store::MESSAGE_COLUMNS,
        store::placeholders(1, leased.len())
    );
    let mut select = sqlx::query(sqlx::AssertSqlSafe(sql));
    for id in &leased {
        select = select.bind(id.clone());
    }
    let mut rows = select.fetch_all(shared.db.pool()).await?;
    // In the order the gateway accepted them, as they were leased.
    rows.sort_by_key(|row| row.try_get::<i64, _>("accepted_seq").unwrap_or(i64::MAX));
    rows.into_iter()
        .map(|row| {
            let stored = store::message_row(&row)?;
            Ok(Due {
                message_id: stored.message_id.clone(),
                recipient: stored.recipient_agency_id.clone(),
                payload_sha256: stored.payload_sha256.clone(),
                attempts: stored.delivery_attempts,
                form_kind: stored.form_kind.clone(),
                trace_context: row.try_get("trace_context")?,
                stored,
            })
        })
        .collect()
}

/// The earliest instant at which some outbox row can be attempted (a row held back behind an
/// earlier message of its case is not: it becomes due when that one is delivered, which wakes
/// the worker).
async fn next_due(shared: &Shared) -> Result<Option<Timestamp>, sqlx::Error> {
    let row = sqlx::query(concat!(
        "SELECT MIN(CASE WHEN o.lease_until IS NOT NULL AND o.lease_until > o.next_attempt_at \
         THEN o.lease_until ELSE o.next_attempt_at END) AS next FROM outbox o \
         WHERE NOT EXISTS (SELECT 1 FROM outbox e WHERE e.recipient_agency_id = o.recipient_agency_id \
         AND e.case_reference = o.case_reference AND e.accepted_seq < o.accepted_seq \
         AND (e.last_error IS NULL OR e.last_error NOT IN (",
        refused_on_content!(),
        ")))",
    ))
    .fetch_one(shared.db.pool())
    .await?;
    let next: Option<i64> = row.try_get("next")?;
    Ok(next.map(time::from_micros))
}

/// The message's envelope with its payload opened. A payload that cannot be opened counts as a
/// failed attempt (retried with back-off: a missing key can be added back); the cause is logged
/// with the message id and key id only.
fn due_envelope(shared: &Shared, due: &Due) -> Result<Envelope, &'static str> {
    store::open_envelope(&shared.sealer, &due.stored).map_err(|e| {
        if e.is_missing_key() {
            "PAYLOAD_KEY_MISSING"
        } else {
            "UNREADABLE"
        }
    })
}

async fn deliver(shared: &Shared, channel: Channel, due: Due) {
    shared
        .gateway_metrics
        .attempting(&due.recipient, due.attempts);
    let envelope = match due_envelope(shared, &due) {
        Ok(e) => e,
        Err(code) => {
            tracing::Span::current().record("outcome", code);
            let _ = record_failure(shared, &due, code).await;
            return;
        }
    };
    let mut client = AgencyInboxClient::new(trace_context::traced(channel));
    let attempt = tokio::time::timeout(
        shared.attempt_timeout(),
        client.deliver(DeliverRequest {
            envelope: Some(envelope.clone()),
        }),
    )
    .await;
    let span = tracing::Span::current();
    match &attempt {
        Ok(Ok(_)) => span.record("outcome", "delivered"),
        Ok(Err(status)) => span.record("outcome", tracing::field::debug(status.code())),
        Err(_) => span.record("outcome", "TIMEOUT"),
    };
    let outcome = match attempt {
        Ok(Ok(_)) => record_delivery(shared, &due, &envelope).await,
        Ok(Err(status)) => {
            tracing::warn!(message_id = %due.message_id, recipient = %due.recipient, code = ?status.code(), "delivery attempt failed");
            record_failure(shared, &due, &format!("{:?}", status.code())).await
        }
        Err(_) => {
            tracing::warn!(message_id = %due.message_id, recipient = %due.recipient, "delivery attempt timed out");
            record_failure(shared, &due, "TIMEOUT").await
        }
    };
    if let Err(e) = outcome {
        tracing::error!(message_id = %due.message_id, error = %e, "cannot record a delivery attempt");
    }
}

/// A delivery the recipient's inbox accepted, waiting for the ledger's writer
/// (`api::write_ledger_batch`).
pub(crate) struct Accepted {
    due: Due,
    entry: EntryFields,
    /// Answered once the batch's transaction committed: `true` when this batch recorded it,
    /// `false` when another worker had.
    reply: oneshot::Sender<Result<bool, ()>>,
}

/// Records that the recipient's inbox accepted the message: the outbox row removed, the message
/// marked delivered and the ledger entry appended, together; with the other deliveries that
/// finished meanwhile and the sends waiting, in one transaction (`group_commit`).
async fn record_delivery(
    shared: &Shared,
    due: &Due,
    envelope: &Envelope,
) -> Result<(), sqlx::Error> {
    let recorded_here = recorded_delivery(shared, due, envelope).await?;
    if recorded_here {
        shared.gateway_metrics.delivered(&due.recipient);
        tracing::info!(message_id = %due.message_id, recipient = %due.recipient, "message delivered");
        let _ = shared.events.send(DeliveryEvent::Delivered {
            message_id: due.message_id.clone(),
        });
    }
    Ok(())
}

/// Hands the delivery to the recorder and waits for its batch to commit.
async fn recorded_delivery(
    shared: &Shared,
    due: &Due,
    envelope: &Envelope,
) -> Result<bool, sqlx::Error> {
    let (reply, recorded) = oneshot::channel();
    let accepted = Accepted {
        due: due.clone(),
        entry: EntryFields::for_envelope(LedgerEvent::Delivered, envelope, &due.payload_sha256),
        reply,
    };
    if shared
        .ledger_writer
        .submit(crate::api::LedgerWrite::Delivery(Box::new(accepted)))
        .is_err()
    {
        return Err(sqlx::Error::PoolClosed);
    }
    match recorded.await {
        Ok(Ok(here)) => Ok(here),
        // The recorder logged the cause; the row's lease runs out and it is pushed again (the
        // recipient's inbox de-duplicates).
        _ => Err(sqlx::Error::Protocol(
            "the delivery was not recorded".into(),
        )),
    }
}

/// Answers the deliveries of a batch once it committed (`Ok`: the message ids it recorded) or
/// failed.
pub(crate) fn answer_recorded(
    batch: Vec<Accepted>,
    recorded: Result<std::collections::HashSet<String>, ()>,
) {
    match recorded {
        Ok(mut removed) => {
            for accepted in batch {
                // A message pushed twice (its lease ran out during the first push) is recorded
                // once: the first of its pushes in the batch is the one that recorded it.
                let here = removed.remove(&accepted.due.message_id);
                let _ = accepted.reply.send(Ok(here));
            }
        }
        Err(()) => {
            for accepted in batch {
                let _ = accepted.reply.send(Err(()));
            }
        }
    }
}

/// Records deliveries inside the transaction holding the ledger's lock: removes their outbox
/// rows, marks the messages delivered and appends their entries. Returns the ids this call
/// recorded (a row another worker recorded already is left as it is).
pub(crate) async fn record_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    head: &mut ledger::LockedHead,
    now_us: i64,
    items: &[Accepted],
) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    if items.is_empty() {
        return Ok(std::collections::HashSet::new());
    }
    let sql = format!(
        "DELETE FROM outbox WHERE message_id IN ({}) RETURNING message_id",
        store::placeholders(1, items.len())
    );
    let mut delete = sqlx::query_scalar(sqlx::AssertSqlSafe(sql));
    for item in items {
        delete = delete.bind(item.due.message_id.clone());
    }
    let removed: std::collections::HashSet<String> =
        delete.fetch_all(&mut **tx).await?.into_iter().collect();
    // Each removed row once, even when the batch holds two pushes of the same message.
    let mut unrecorded = removed.clone();
    let recorded: Vec<&Accepted> = items
        .iter()
        .filter(|item| unrecorded.remove(&item.due.message_id))
        .collect();
    if recorded.is_empty() {
        // Another worker recorded these deliveries already.
        return Ok(removed);
    }
    let sql = format!(
        "UPDATE messages SET \
         state = CASE WHEN state = $1 THEN $2 ELSE state END, \
         delivered_at = COALESCE(delivered_at, $3), \
         delivery_attempts = delivery_attempts + 1 \
         WHERE message_id IN ({})",
        store::placeholders(4, recorded.len())
    );
    let mut update = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(STATE_QUEUED)
        .bind(STATE_DELIVERED)
        .bind(now_us);
    for item in &recorded {
        update = update.bind(item.due.message_id.clone());
    }
    update.execute(&mut **tx).await?;
    // The digest of the plaintext payload, as computed when each message was accepted.
    let chained = recorded
        .iter()
        .map(|item| head.chain(now_us, item.entry.clone()))
        .collect();
    ledger::insert_chained(tx, chained).await?;
    Ok(removed)
}

/// Records the delivery of a queued message as the worker does after the recipient's inbox
/// accepted it (unit tests, which run no agency services).
#[cfg(test)]
pub(crate) async fn record_delivery_for_test(
    shared: &Shared,
    message_id: &str,
) -> Result<(), sqlx::Error> {
    let row = store::message_by_id(shared.db.pool(), message_id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    let envelope =
        store::open_envelope(&shared.sealer, &row).map_err(|e| sqlx::Error::Decode(e.into()))?;
    let due = Due {
        message_id: row.message_id.clone(),
        recipient: row.recipient_agency_id.clone(),
        payload_sha256: row.payload_sha256.clone(),
        attempts: row.delivery_attempts,
        form_kind: row.form_kind.clone(),
        trace_context: None,
        stored: row,
    };
    let entry = EntryFields::for_envelope(LedgerEvent::Delivered, &envelope, &due.payload_sha256);
    // Nobody waits for this answer.
    let (reply, _) = oneshot::channel();
    let accepted = Accepted { due, entry, reply };
    let mut tx = shared.writer_db.begin().await?;
    let mut head = ledger::lock_head(&mut tx).await?;
    let now_us = time::to_micros(shared.clock.now());
    record_in(&mut tx, &mut head, now_us, std::slice::from_ref(&accepted)).await?;
    head.store(&mut tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Removes the payloads of delivered messages whose retention has passed (by the injected
/// clock) and whose `message.accepted` entry the deadline engine has applied, keeping the
/// metadata. Safe beside other replicas: a payload is removed once. Returns how many were.
pub(crate) async fn purge_payloads(shared: &Shared) -> Result<u64, sqlx::Error> {
    let now = shared.clock.now();
    let now_us = time::to_micros(now);
    let cutoff_us = time::to_micros(now - shared.payload_retention);
    let pool = shared.db.pool();
    let mut purged = 0;
    // Sealed payloads: dropped, in batches.
    loop {
        let removed = sqlx::query(
            "UPDATE messages SET sealed_payload = NULL, payload_purged_at = $1 \
             WHERE message_id IN (SELECT message_id FROM messages \
             WHERE payload_purged_at IS NULL AND delivered_at <= $2 \
             AND payload_key_id IS NOT NULL \
             AND accepted_seq <= (SELECT last_seq FROM deadline_cursor WHERE id = 1) \
             ORDER BY delivered_at LIMIT $3) \
             AND payload_purged_at IS NULL",
        )
        .bind(now_us)
        .bind(cutoff_us)
        .bind(PURGE_BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        purged += removed;
        if removed < u64::try_from(PURGE_BATCH).unwrap_or(u64::MAX) {
            break;
        }
    }
    // Rows written before payloads were sealed hold the payload inside the envelope: the
    // envelope is rewritten without it (keeping an assigned row's number for later replies).
    let legacy = sqlx::query(
        "SELECT message_id, envelope FROM messages \
         WHERE payload_purged_at IS NULL AND delivered_at <= $1 AND payload_key_id IS NULL \
         AND accepted_seq <= (SELECT last_seq FROM deadline_cursor WHERE id = 1) \
         ORDER BY delivered_at LIMIT $2",
    )
    .bind(cutoff_us)
    .bind(PURGE_BATCH)
    .fetch_all(pool)
    .await?;
    for row in legacy {
        let message_id: String = row.try_get("message_id")?;
        let bytes: Vec<u8> = row.try_get("envelope")?;
        let (metadata, action_number) = match Envelope::decode(bytes.as_slice()) {
            Ok(mut env) => {
                let number = match env.payload.take().and_then(|p| p.form) {
                    Some(payload::Form::ActionAssignment(a)) => {
                        a.action.map(|a| i64::from(a.number))
                    }
                    _ => None,
                };
                (env.encode_to_vec(), number)
            }
            Err(_) => {
                // Unreadable, and possibly holding a payload: nothing of it is kept.
                tracing::error!(message_id = %message_id, "an old stored envelope does not decode; its bytes are removed");
                (Vec::new(), None)
            }
        };
        purged += sqlx::query(
            "UPDATE messages SET envelope = $1, action_number = COALESCE(action_number, $2), \
             payload_purged_at = $3 WHERE message_id = $4 AND payload_purged_at IS NULL",
        )
        .bind(metadata)
        .bind(action_number)
        .bind(now_us)
        .bind(&message_id)
        .execute(pool)
        .await?
        .rows_affected();
    }
    if purged > 0 {
        tracing::info!(payloads = purged, "delivered payloads removed");
    }
    Ok(purged)
}

/// When the retention of the oldest payload still held after delivery ends.
async fn next_purge(shared: &Shared) -> Result<Option<Timestamp>, sqlx::Error> {
    let oldest: Option<i64> = sqlx::query_scalar(
        "SELECT MIN(delivered_at) FROM messages \
         WHERE payload_purged_at IS NULL AND delivered_at IS NOT NULL",
    )
    .fetch_one(shared.db.pool())
    .await?;
    Ok(oldest.map(|t| time::from_micros(t) + shared.payload_retention))
}

/// Schedules the next attempt: the delay doubles with each failure up to the maximum, and is
/// spread ("equal jitter": half fixed, half random) so that recipients coming back up are not
/// hit by every gateway replica at the same instant.
async fn record_failure(shared: &Shared, due: &Due, code: &str) -> Result<(), sqlx::Error> {
    let attempts = due.attempts + 1;
    let delay = shared.backoff(attempts);
    let next = time::to_micros(shared.clock.now() + delay);
    let mut tx = shared.db.begin().await?;
    sqlx::query(
        "UPDATE outbox SET next_attempt_at = $1, lease_owner = NULL, lease_until = NULL, last_error = $2 \
         WHERE message_id = $3 AND lease_owner = $4",
    )
    .bind(next)
    .bind(code)
    .bind(&due.message_id)
    .bind(&shared.worker_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE messages SET delivery_attempts = delivery_attempts + 1 WHERE message_id = $1",
    )
    .bind(&due.message_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    shared.gateway_metrics.failed_attempt(&due.recipient);
    let _ = shared.events.send(DeliveryEvent::AttemptFailed {
        message_id: due.message_id.clone(),
        attempts,
    });
    Ok(())
}

/// The back-off before attempt `attempts + 1`.
pub(crate) fn backoff(initial_ms: u64, max_ms: u64, attempts: i64) -> SignedDuration {
    let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
    let full = initial_ms.saturating_mul(1_u64 << exp).min(max_ms).max(1);
    let half = full / 2;
    let jittered = half + fastrand::u64(0..=full - half);
    SignedDuration::from_millis(i64::try_from(jittered).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;
    use prost::Message as _;
    use referral_core::{
        Clock,
        config::DeliverySettings,
        db::StorageConfig,
        directory::Directory,
        pki::{CertificateAuthority, ComponentIdentity, TlsMaterial},
        time,
    };
    use referral_proto::v1::{
        ActingUser, ActionAssignment, ConfidentialityLabel, Envelope, FormKind, Payload,
        PlanAction, PurposeOfUse, Role, payload,
    };

    use super::{
        backoff, claim_due, next_due, purge_payloads, record_delivery_for_test, record_failure,
    };
    use crate::{
        Gateway, GatewayConfig, PayloadSealer,
        ledger::{self, EntryFields, LedgerEvent},
        store::{self, STATE_DELIVERED},
    };

    const RETENTION: SignedDuration = SignedDuration::from_hours(24);

    struct Hub {
        _dir: tempfile::TempDir,
        gateway: Gateway,
        clock: Clock,
        config: GatewayConfig,
    }

    async fn hub() -> Hub {
        hub_with(PayloadSealer::ephemeral()).await
    }

    async fn hub_with(sealer: PayloadSealer) -> Hub {
        let dir = tempfile::tempdir().unwrap();
        let directory = Directory::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/demo-district.toml"),
        )
        .unwrap();
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let clock = Clock::manual("2026-11-20T04:30:00Z".parse().unwrap());
        let mut config = GatewayConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            TlsMaterial::new(&ca, &ComponentIdentity::Gateway).unwrap(),
            StorageConfig {
                data_dir: dir.path().to_owned(),
                database_url: None,
            },
            directory,
            DeliverySettings::default(),
            clock.clone(),
        );
        config.run_delivery_worker = false;
        config.run_deadline_engine = false;
        config.payload_retention = RETENTION;
        config.payload_sealer = sealer;
        let gateway = Gateway::build(config.clone()).await.unwrap();
        Hub {
            _dir: dir,
            gateway,
            clock,
            config,
        }
    }

    fn envelope(form: payload::Form, kind: FormKind, from: &str, to: &str) -> Envelope {
        Envelope {
            message_id: uuid::Uuid::now_v7().to_string(),
            idempotency_key: uuid::Uuid::new_v4().to_string(),
            sender_agency_id: from.into(),
            recipient_agency_id: to.into(),
            acting_user: Some(ActingUser {
                user_id: "someone".into(),
                agency_id: from.into(),
                role: Role::SchoolDirector as i32,
                display_name: String::new(),
            }),
            purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
            case_reference: "KZ-2026-1".into(),
            form_kind: kind as i32,
            confidentiality: ConfidentialityLabel::Restricted as i32,
            payload: Some(Payload { form: Some(form) }),
            ..Default::default()
        }
    }

    fn help_request() -> Envelope {
        let k = referral_core::validate::sample_help_request(jiff::civil::date(2026, 11, 20));
        envelope(
            payload::Form::HelpRequest(k),
            FormKind::HelpRequest,
            "school-1",
            "commission",
        )
    }

    impl Hub {
        fn shared(&self) -> &crate::Shared {
            &self.gateway.shared
        }

        async fn enqueue(&self, env: &Envelope) {
            let hash = ledger::payload_sha256(&env.payload.as_ref().unwrap().encode_to_vec());
            let mut tx = self.shared().db.begin().await.unwrap();
            let now_us = time::to_micros(self.clock.now());
            let mut head = ledger::lock_head(&mut tx).await.unwrap();
            store::enqueue_message(
                &mut tx,
                &mut head,
                &self.shared().sealer,
                env,
                &hash,
                now_us,
            )
            .await
            .unwrap();
            head.store(&mut tx).await.unwrap();
            tx.commit().await.unwrap();
        }

        async fn row(&self, id: &str) -> store::MessageRow {
            store::message_by_id(self.shared().db.pool(), id)
                .await
                .unwrap()
                .unwrap()
        }

        async fn purge(&self) -> u64 {
            purge_payloads(self.shared()).await.unwrap()
        }

        async fn settle(&self) {
            crate::deadlines::settle(self.shared()).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_batch_of_sends_is_one_transaction_and_a_refused_send_leaves_the_others_whole() {
        let hub = hub().await;
        let shared = hub.gateway.shared.clone();
        let caller = shared.directory().agency("school-1").cloned().unwrap();
        // A help request as a school sends it: no case yet.
        let help_request = || {
            let mut env = help_request();
            env.case_reference.clear();
            env
        };
        let first = help_request();
        // The same key with other content: refused inside the transaction, after `first` wrote
        // itself there, so the batch is rolled back and written again without it.
        let mut clash = envelope(
            payload::Form::HelpRequest(referral_core::validate::sample_help_request(
                jiff::civil::date(2026, 11, 19),
            )),
            FormKind::HelpRequest,
            "school-1",
            "commission",
        );
        clash.idempotency_key = first.idempotency_key.clone();
        clash.case_reference.clear();
        // The same key and content: the same message, answered as a duplicate.
        let again = first.clone();
        let last = help_request();
        let mut batch = Vec::new();
        let mut answers = Vec::new();
        for env in [first, clash, again, last] {
            let (pending, answer) = shared.prepare_send(&caller, env).unwrap();
            batch.push(pending);
            answers.push(answer);
        }
        crate::api::write_ledger_batch(
            shared.clone(),
            batch
                .into_iter()
                .map(|send| crate::api::LedgerWrite::Send(Box::new(send)))
                .collect(),
        )
        .await;
        let mut answered = Vec::new();
        for answer in answers {
            answered.push(answer.await.expect("every send is answered"));
        }
        let mut answers = answered.into_iter();
        let first = answers.next().unwrap().expect("the first is stored");
        assert!(
            matches!(
                answers.next().unwrap(),
                Err(referral_core::ServiceError::AlreadyExists(_))
            ),
            "a key reused for other content is refused"
        );
        let again = answers.next().unwrap().expect("a retry is answered");
        let last = answers.next().unwrap().expect("the last is stored");
        assert!(!first.duplicate && !last.duplicate && again.duplicate);
        assert_eq!(again.message_id, first.message_id);
        let pool = shared.db.pool();
        let stored: Vec<String> =
            sqlx::query_scalar("SELECT message_id FROM messages ORDER BY accepted_seq")
                .fetch_all(pool)
                .await
                .unwrap();
        assert_eq!(stored, vec![first.message_id, last.message_id]);
        let outbox: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(outbox, 2, "one outbox row per stored message");
        let verified = ledger::verify(pool).await.unwrap();
        assert_eq!(verified.entries, 2, "one accepted entry per stored message");
        shared.db.close().await;
    }

    #[tokio::test]
    async fn a_send_whose_caller_gave_up_before_its_batch_is_not_stored() {
        let hub = hub().await;
        let shared = hub.gateway.shared.clone();
        let caller = shared.directory().agency("school-1").cloned().unwrap();
        let mut sends = Vec::new();
        for _ in 0..2 {
            let mut env = help_request();
            env.case_reference.clear();
            sends.push(shared.prepare_send(&caller, env).unwrap());
        }
        let (gone, gone_answer) = sends.remove(0);
        let (kept, kept_answer) = sends.remove(0);
        // The first caller's deadline passed while the batch waited for the ledger's lock.
        drop(gone_answer);
        crate::api::write_ledger_batch(
            shared.clone(),
            vec![
                crate::api::LedgerWrite::Send(Box::new(gone)),
                crate::api::LedgerWrite::Send(Box::new(kept)),
            ],
        )
        .await;
        let kept = kept_answer
            .await
            .unwrap()
            .expect("the other send is stored");
        let stored: Vec<String> = sqlx::query_scalar("SELECT message_id FROM messages")
            .fetch_all(shared.db.pool())
            .await
            .unwrap();
        assert_eq!(
            stored,
            vec![kept.message_id],
            "nothing of the abandoned send"
        );
        assert_eq!(ledger::verify(shared.db.pool()).await.unwrap().entries, 1);
        shared.db.close().await;
    }

    #[tokio::test]
    async fn a_held_ledger_head_chains_appends_in_memory_and_writes_the_head_once() {
        let hub = hub().await;
        let shared = hub.gateway.shared.clone();
        let entry = |id: &str| ledger::EntryFields {
            event: "test.entry".into(),
            message_id: id.into(),
            sender_agency_id: "school-1".into(),
            recipient_agency_id: "commission".into(),
            acting_user_id: String::new(),
            acting_role: String::new(),
            purpose_of_use: String::new(),
            form_kind: String::new(),
            case_reference: String::new(),
            confidentiality: String::new(),
            payload_sha256: String::new(),
            sections: String::new(),
            outcome: String::new(),
        };
        let head_row = async || -> (i64, String) {
            sqlx::query_as("SELECT last_seq, last_hash FROM ledger_head WHERE id = 1")
                .fetch_one(shared.db.pool())
                .await
                .unwrap()
        };
        let mut tx = shared.db.begin().await.unwrap();
        let mut head = ledger::lock_head(&mut tx).await.unwrap();
        assert_eq!(head.append(&mut tx, 1, &entry("a")).await.unwrap(), 1);
        assert_eq!(
            head.append_many(&mut tx, 1, &[entry("b"), entry("c")])
                .await
                .unwrap(),
            2
        );
        head.store(&mut tx).await.unwrap();
        tx.commit().await.unwrap();
        let (last_seq, last_hash) = head_row().await;
        assert_eq!(last_seq, 3);
        let newest: String = sqlx::query_scalar("SELECT entry_hash FROM ledger WHERE seq = 3")
            .fetch_one(shared.db.pool())
            .await
            .unwrap();
        assert_eq!(last_hash, newest, "the head names the newest entry");
        // A transaction without the lock appends after them, and the chain is whole.
        let mut tx = shared.db.begin().await.unwrap();
        assert_eq!(ledger::append(&mut tx, 2, &entry("d")).await.unwrap(), 4);
        tx.commit().await.unwrap();
        assert_eq!(ledger::verify(shared.db.pool()).await.unwrap().entries, 4);
        // A rolled-back batch leaves the head as it was.
        let mut tx = shared.db.begin().await.unwrap();
        let mut head = ledger::lock_head(&mut tx).await.unwrap();
        head.append(&mut tx, 3, &entry("e")).await.unwrap();
        drop(head);
        tx.rollback().await.unwrap();
        assert_eq!(head_row().await.0, 4);
        // A head dropped unwritten in a committed transaction (a bug) is caught at the next
        // append by the ledger's primary key: the chain does not fork.
        let mut tx = shared.db.begin().await.unwrap();
        let mut head = ledger::lock_head(&mut tx).await.unwrap();
        head.append(&mut tx, 3, &entry("f")).await.unwrap();
        drop(head);
        tx.commit().await.unwrap();
        let mut tx = shared.db.begin().await.unwrap();
        assert!(ledger::append(&mut tx, 4, &entry("g")).await.is_err());
        tx.rollback().await.unwrap();
        shared.db.close().await;
    }

    #[tokio::test]
    async fn deliveries_and_sends_written_in_one_batch_chain_in_the_ledger_and_a_double_push_counts_once()
     {
        let hub = hub().await;
        let shared = hub.gateway.shared.clone();
        // Two cases, so that neither waits behind the other.
        let (one, mut two) = (help_request(), help_request());
        two.case_reference = "KZ-2026-2".into();
        hub.enqueue(&one).await;
        hub.enqueue(&two).await;
        let due = claim_due(&shared, hub.clock.now(), super::CLAIM_BATCH)
            .await
            .unwrap();
        assert_eq!(due.len(), 2);
        let mut batch = Vec::new();
        let mut answers = Vec::new();
        // The first message twice (its lease ran out during a push, and it was pushed again).
        for (due, env) in [(&due[0], &one), (&due[1], &two), (&due[0], &one)] {
            let (reply, answer) = tokio::sync::oneshot::channel();
            batch.push(super::Accepted {
                due: due.clone(),
                entry: EntryFields::for_envelope(LedgerEvent::Delivered, env, &due.payload_sha256),
                reply,
            });
            answers.push(answer);
        }
        // And a send waiting at the same moment: the same transaction.
        let caller = shared.directory().agency("school-1").cloned().unwrap();
        let mut third = help_request();
        third.case_reference.clear();
        let (send, sent) = shared.prepare_send(&caller, third).unwrap();
        let mut writes: Vec<crate::api::LedgerWrite> = batch
            .into_iter()
            .map(|accepted| crate::api::LedgerWrite::Delivery(Box::new(accepted)))
            .collect();
        writes.insert(1, crate::api::LedgerWrite::Send(Box::new(send)));
        crate::api::write_ledger_batch(shared.clone(), writes).await;
        let mut here = Vec::new();
        for answer in answers {
            here.push(answer.await.unwrap().unwrap());
        }
        assert_eq!(
            here,
            vec![true, true, false],
            "the second push of one is not recorded"
        );
        let sent = sent.await.unwrap().expect("the send is stored");
        assert_eq!(hub.row(&sent.message_id).await.state, super::STATE_QUEUED);
        let pool = shared.db.pool();
        let events: Vec<String> = sqlx::query_scalar("SELECT event FROM ledger ORDER BY seq")
            .fetch_all(pool)
            .await
            .unwrap();
        assert_eq!(
            events,
            [
                "message.accepted",
                "message.accepted",
                "message.accepted",
                "message.delivered",
                "message.delivered"
            ],
            "the send's entry, then the deliveries', one chain"
        );
        assert_eq!(ledger::verify(pool).await.unwrap().entries, 5);
        for env in [&one, &two] {
            assert_eq!(hub.row(&env.message_id).await.state, STATE_DELIVERED);
        }
        let outbox: Vec<String> = sqlx::query_scalar("SELECT message_id FROM outbox")
            .fetch_all(pool)
            .await
            .unwrap();
        assert_eq!(outbox, [sent.message_id], "only the new send is queued");
        shared.db.close().await;
    }

    #[tokio::test]
    async fn a_payload_is_removed_only_after_delivery_retention_and_the_engine() {
        let hub = hub().await;
        let env = help_request();
        hub.enqueue(&env).await;
        let row = hub.row(&env.message_id).await;
        assert_eq!(
            row.payload_key_id.as_deref(),
            Some(hub.shared().sealer.active_key_id())
        );
        assert_eq!(
            store::open_envelope(&hub.shared().sealer, &row).unwrap(),
            env,
            "stored sealed, read back whole"
        );
        let metadata = store::metadata_envelope(&row).unwrap();
        assert!(
            metadata.payload.is_none(),
            "the envelope is stored without payload"
        );
        assert_eq!(metadata.case_reference, "KZ-2026-1");

        // Not while it waits for delivery, however long.
        hub.settle().await;
        hub.clock.advance(RETENTION * 3);
        assert_eq!(hub.purge().await, 0);
        record_delivery_for_test(hub.shared(), &env.message_id)
            .await
            .unwrap();
        // Not before the retention after delivery.
        hub.settle().await;
        hub.clock.advance(RETENTION - SignedDuration::from_secs(1));
        assert_eq!(hub.purge().await, 0);
        hub.clock.advance(SignedDuration::from_secs(1));

        // A second message, delivered at the same time, that the engine has not read yet.
        let unread = help_request();
        hub.enqueue(&unread).await;
        record_delivery_for_test(hub.shared(), &unread.message_id)
            .await
            .unwrap();
        hub.clock.advance(RETENTION);
        assert_eq!(hub.purge().await, 1, "only the message the engine has read");
        assert!(
            hub.row(&unread.message_id)
                .await
                .payload_purged_at
                .is_none()
        );
        hub.settle().await;
        assert_eq!(hub.purge().await, 1);
        assert_eq!(hub.purge().await, 0, "a payload is removed once");

        for id in [&env.message_id, &unread.message_id] {
            let row = hub.row(id).await;
            assert_eq!(
                row.payload_purged_at,
                Some(time::to_micros(hub.clock.now()))
            );
            let kept = store::open_envelope(&hub.shared().sealer, &row).unwrap();
            assert!(kept.payload.is_none(), "the payload is gone");
            assert_eq!(kept.message_id, *id, "the metadata stays");
        }
        let sealed: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT sealed_payload FROM messages WHERE message_id = $1")
                .bind(&env.message_id)
                .fetch_one(hub.shared().db.pool())
                .await
                .unwrap();
        assert_eq!(sealed, None);
        hub.shared().db.close().await;
    }

    #[tokio::test]
    async fn a_row_stored_before_sealing_is_read_then_stripped_keeping_its_row_number() {
        let hub = hub().await;
        let assignment = envelope(
            payload::Form::ActionAssignment(ActionAssignment {
                case_reference: "KZ-2026-1".into(),
                action: Some(PlanAction {
                    number: 3,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            FormKind::ActionAssignment,
            "commission",
            "ngo-1",
        );
        // As the gateway stored it before payloads were sealed: the whole envelope, no key id.
        let now_us = time::to_micros(hub.clock.now());
        let pool = hub.shared().db.pool();
        let seq: i64 = sqlx::query_scalar("SELECT last_seq FROM ledger_head WHERE id = 1")
            .fetch_one(pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO messages (message_id, sender_agency_id, idempotency_key,              recipient_agency_id, form_kind, envelope, payload_sha256, created_at, state,              delivered_at, accepted_seq)              VALUES ($1, 'commission', 'k', 'ngo-1', 'FORM_KIND_ACTION_ASSIGNMENT', $2, 'x', $3,              'delivered', $3, $4)",
        )
        .bind(&assignment.message_id)
        .bind(assignment.encode_to_vec())
        .bind(now_us)
        .bind(seq)
        .execute(pool)
        .await
        .unwrap();
        let row = hub.row(&assignment.message_id).await;
        assert_eq!(row.payload_key_id, None);
        assert_eq!(
            store::open_envelope(&hub.shared().sealer, &row).unwrap(),
            assignment,
            "an old row stays readable"
        );
        hub.clock.advance(RETENTION);
        assert_eq!(hub.purge().await, 1);
        let row = hub.row(&assignment.message_id).await;
        assert_eq!(row.action_number, Some(3), "kept for the replies");
        let kept = store::open_envelope(&hub.shared().sealer, &row).unwrap();
        assert!(kept.payload.is_none(), "its payload is stripped");
        assert_eq!(kept.case_reference, "KZ-2026-1");
        hub.shared().db.close().await;
    }

    #[tokio::test]
    async fn a_gateway_needs_the_keys_of_its_stored_payloads_and_rotates_to_a_new_one() {
        let old = ("2026-old".to_owned(), [1_u8; 32]);
        let new = ("2026-new".to_owned(), [2_u8; 32]);
        let hub = hub_with(PayloadSealer::from_keys([old.clone()], None).unwrap()).await;
        let env = help_request();
        hub.enqueue(&env).await;
        hub.shared().db.close().await;

        // Only the new key: the stored payload could not be read, so it does not start.
        let mut config = hub.config.clone();
        config.payload_sealer = PayloadSealer::from_keys([new.clone()], None).unwrap();
        let refused = format!("{:#}", Gateway::build(config.clone()).await.err().unwrap());
        assert!(refused.contains("payload key 2026-old"), "{refused}");

        // The old key kept beside the new active one: old payloads open, new ones use the new key.
        config.payload_sealer = PayloadSealer::from_keys([old, new], Some("2026-new")).unwrap();
        let rotated = Hub {
            gateway: Gateway::build(config.clone()).await.unwrap(),
            ..hub
        };
        let handle = rotated.gateway.handle();
        assert_eq!(
            handle.stored_envelope(&env.message_id).await.unwrap(),
            Some(env.clone())
        );
        let later = help_request();
        rotated.enqueue(&later).await;
        assert_eq!(
            rotated
                .row(&later.message_id)
                .await
                .payload_key_id
                .as_deref(),
            Some("2026-new")
        );
        assert_eq!(
            rotated.row(&env.message_id).await.payload_key_id.as_deref(),
            Some("2026-old")
        );
        assert_eq!(
            handle.stored_envelope(&later.message_id).await.unwrap(),
            Some(later)
        );
        rotated.shared().db.close().await;
    }

    /// A help request envelope to `to` filed under `case` (empty: no case).
    fn case_message(case: &str, to: &str) -> Envelope {
        let mut env = help_request();
        env.recipient_agency_id = to.into();
        env.case_reference = case.into();
        env
    }

    async fn claimed_ids(hub: &Hub) -> Vec<String> {
        let mut ids: Vec<String> = claim_due(hub.shared(), hub.clock.now(), super::CLAIM_BATCH)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.message_id)
            .collect();
        ids.sort();
        ids
    }

    #[tokio::test]
    async fn a_later_message_of_a_case_waits_until_the_earlier_one_is_delivered() {
        let hub = hub().await;
        // Accepted in this order: two of case 1 to the commission, one of case 1 to the police,
        // one of case 2 and one without case to the commission.
        let first = case_message("KZ-2026-1", "commission");
        let second = case_message("KZ-2026-1", "commission");
        let police = case_message("KZ-2026-1", "police");
        let other_case = case_message("KZ-2026-2", "commission");
        let no_case = case_message("", "commission");
        let no_case_later = case_message("", "commission");
        for env in [
            &first,
            &second,
            &police,
            &other_case,
            &no_case,
            &no_case_later,
        ] {
            hub.enqueue(env).await;
        }
        let mut expected = vec![
            first.message_id.clone(),
            police.message_id.clone(),
            other_case.message_id.clone(),
            no_case.message_id.clone(),
            no_case_later.message_id.clone(),
        ];
        expected.sort();
        assert_eq!(
            claimed_ids(&hub).await,
            expected,
            "everything but the second message of case 1 to the commission"
        );

        // The first fails and waits for its retry: the second still waits behind it, and the
        // worker's next wake-up is the first's retry, not the second's (past) due time.
        let due = claim_due(
            hub.shared(),
            hub.clock.now() + SignedDuration::from_hours(1),
            super::CLAIM_BATCH,
        )
        .await
        .unwrap();
        let first_due = due
            .into_iter()
            .find(|d| d.message_id == first.message_id)
            .expect("the first is leased again once its lease ends");
        record_failure(hub.shared(), &first_due, "UNAVAILABLE")
            .await
            .unwrap();
        assert!(claimed_ids(&hub).await.is_empty());
        let retry = next_due(hub.shared())
            .await
            .unwrap()
            .expect("a row is due later");
        assert!(retry > hub.clock.now(), "the held-back row is not due now");
        hub.clock.advance(SignedDuration::from_mins(10));
        assert_eq!(
            claimed_ids(&hub).await,
            vec![first.message_id.clone()],
            "only the first, however late the second is"
        );

        // Delivered: now the second is due.
        record_delivery_for_test(hub.shared(), &first.message_id)
            .await
            .unwrap();
        assert_eq!(claimed_ids(&hub).await, vec![second.message_id.clone()]);
        hub.shared().db.close().await;
    }

    #[tokio::test]
    async fn a_message_refused_on_its_content_does_not_hold_back_its_case() {
        let hub = hub().await;
        let refused = case_message("KZ-2026-3", "commission");
        let next = case_message("KZ-2026-3", "commission");
        let last = case_message("KZ-2026-3", "commission");
        for env in [&refused, &next, &last] {
            hub.enqueue(env).await;
        }
        let due = claim_due(hub.shared(), hub.clock.now(), super::CLAIM_BATCH)
            .await
            .unwrap();
        assert_eq!(due.len(), 1, "only the first of the case is due");
        // The recipient refuses it on its content: retried later, but the next one goes now.
        record_failure(hub.shared(), &due[0], "FailedPrecondition")
            .await
            .unwrap();
        assert_eq!(claimed_ids(&hub).await, vec![next.message_id.clone()]);
        // The next one meets the recipient down: it holds back the last one, as before.
        let due = claim_due(
            hub.shared(),
            hub.clock.now() + SignedDuration::from_hours(1),
            super::CLAIM_BATCH,
        )
        .await
        .unwrap();
        let next_due = due
            .into_iter()
            .find(|d| d.message_id == next.message_id)
            .expect("the next one is leased again once its lease ends");
        record_failure(hub.shared(), &next_due, "Unavailable")
            .await
            .unwrap();
        hub.clock.advance(SignedDuration::from_hours(2));
        let mut expected = vec![refused.message_id.clone(), next.message_id.clone()];
        expected.sort();
        assert_eq!(
            claimed_ids(&hub).await,
            expected,
            "the refused one is retried, the last still waits behind the unreachable one"
        );
        hub.shared().db.close().await;
    }

    #[test]
    fn backoff_doubles_within_jitter_and_stops_at_the_maximum() {
        for attempts in 1..=12 {
            let full = (500_u64 << (attempts - 1)).min(60_000);
            let d = backoff(500, 60_000, attempts).as_millis() as u64;
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempts}: {d}ms not in [{}, {full}]",
                full / 2
            );
        }
    }
}
