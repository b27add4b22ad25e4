//! The delivery worker: drains the outbox by pushing each message to its recipient's inbox over
//! mTLS with the gateway's own certificate, retrying with exponential back-off and jitter while
//! the recipient is down. Delivery is at least once; recipients de-duplicate by message id, so
//! every acknowledged message takes effect exactly once.

use std::{collections::HashMap, sync::Arc, time::Duration};

use jiff::{SignedDuration, Timestamp};
use prost::Message as _;
use referral_core::{pki::ComponentIdentity, time, tls};
use referral_proto::v1::{DeliverRequest, Envelope, agency_inbox_client::AgencyInboxClient};
use sqlx::Row as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::{
    Shared,
    ledger::{self, EntryFields, LedgerEvent},
    store::{STATE_DELIVERED, STATE_QUEUED},
};

/// What happened to one delivery attempt; tests and operators can subscribe to these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryEvent {
    Delivered { message_id: String },
    AttemptFailed { message_id: String, attempts: i64 },
}

/// How many messages one worker pushes at once.
const PARALLEL_DELIVERIES: usize = 16;
/// How often the worker looks for work it was not told about (rows another replica wrote).
const POLL_INTERVAL: SignedDuration = SignedDuration::from_secs(2);

struct Due {
    message_id: String,
    recipient: String,
    envelope: Vec<u8>,
    attempts: i64,
}

/// Runs until `shutdown` is cancelled.
pub(crate) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut channels: HashMap<String, Channel> = HashMap::new();
    let permits = Arc::new(Semaphore::new(PARALLEL_DELIVERIES));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let now = shared.clock.now();
        match claim_due(&shared, now).await {
            Ok(batch) => {
                for due in batch {
                    let channel = match channel_for(&shared, &mut channels, &due.recipient) {
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
                    tasks.spawn(async move {
                        deliver(&shared, channel, due).await;
                        drop(permit);
                    });
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the outbox"),
        }
        // Reap finished attempts so the set does not grow.
        while tasks.try_join_next().is_some() {}
        let next = match next_due(&shared).await {
            Ok(Some(t)) if t <= shared.clock.now() && tasks.is_empty() => continue,
            Ok(Some(t)) => t.min(shared.clock.now() + POLL_INTERVAL),
            _ => shared.clock.now() + POLL_INTERVAL,
        };
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = shared.clock.sleep_until(next) => {}
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = shutdown.cancelled() => break,
        }
    }
    tasks.shutdown().await;
}

/// Leases the messages that are due. A lease is taken with a conditional update, so two workers
/// (two replicas) never push the same row at the same time.
async fn claim_due(shared: &Shared, now: Timestamp) -> Result<Vec<Due>, sqlx::Error> {
    let now_us = time::to_micros(now);
    let rows = sqlx::query(
        "SELECT o.message_id, m.recipient_agency_id, m.envelope, m.delivery_attempts \
         FROM outbox o JOIN messages m ON m.message_id = o.message_id \
         WHERE o.next_attempt_at <= $1 AND (o.lease_until IS NULL OR o.lease_until <= $1) \
         ORDER BY o.next_attempt_at LIMIT 32",
    )
    .bind(now_us)
    .fetch_all(shared.db.pool())
    .await?;
    let lease_until = time::to_micros(now + shared.lease_length());
    let mut claimed = Vec::with_capacity(rows.len());
    for row in rows {
        let message_id: String = row.try_get("message_id")?;
        let taken = sqlx::query(
            "UPDATE outbox SET lease_owner = $1, lease_until = $2 \
             WHERE message_id = $3 AND (lease_until IS NULL OR lease_until <= $4)",
        )
        .bind(&shared.worker_id)
        .bind(lease_until)
        .bind(&message_id)
        .bind(now_us)
        .execute(shared.db.pool())
        .await?
        .rows_affected();
        if taken == 1 {
            claimed.push(Due {
                message_id,
                recipient: row.try_get("recipient_agency_id")?,
                envelope: row.try_get("envelope")?,
                attempts: row.try_get("delivery_attempts")?,
            });
        }
    }
    Ok(claimed)
}

/// The earliest instant at which some outbox row can be attempted.
async fn next_due(shared: &Shared) -> Result<Option<Timestamp>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT MIN(CASE WHEN lease_until IS NOT NULL AND lease_until > next_attempt_at \
         THEN lease_until ELSE next_attempt_at END) AS next FROM outbox",
    )
    .fetch_one(shared.db.pool())
    .await?;
    let next: Option<i64> = row.try_get("next")?;
    Ok(next.map(time::from_micros))
}

fn channel_for(
    shared: &Shared,
    channels: &mut HashMap<String, Channel>,
    agency_id: &str,
) -> Option<Channel> {
    if let Some(c) = channels.get(agency_id) {
        return Some(c.clone());
    }
    let endpoint = shared.directory().agency(agency_id)?.endpoint.clone();
    let identity = ComponentIdentity::Agency(agency_id.to_owned());
    let channel = Endpoint::from_shared(endpoint)
        .ok()?
        .tls_config(tls::client_tls(&shared.tls, &identity))
        .ok()?
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    channels.insert(agency_id.to_owned(), channel.clone());
    Some(channel)
}

async fn deliver(shared: &Shared, channel: Channel, due: Due) {
    let envelope = match Envelope::decode(due.envelope.as_slice()) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(message_id = %due.message_id, error = %e, "stored envelope does not decode");
            let _ = record_failure(shared, &due, "UNDECODABLE").await;
            return;
        }
    };
    let mut client = AgencyInboxClient::new(channel);
    let attempt = tokio::time::timeout(
        shared.attempt_timeout(),
        client.deliver(DeliverRequest {
            envelope: Some(envelope.clone()),
        }),
    )
    .await;
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

/// Removes the outbox row, marks the message delivered and appends the ledger entry, together.
async fn record_delivery(
    shared: &Shared,
    due: &Due,
    envelope: &Envelope,
) -> Result<(), sqlx::Error> {
    let now_us = time::to_micros(shared.clock.now());
    let mut tx = shared.db.begin().await?;
    let removed = sqlx::query("DELETE FROM outbox WHERE message_id = $1")
        .bind(&due.message_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if removed == 0 {
        // Another worker recorded this delivery already.
        return tx.rollback().await;
    }
    sqlx::query(
        "UPDATE messages SET \
         state = CASE WHEN state = $1 THEN $2 ELSE state END, \
         delivered_at = COALESCE(delivered_at, $3), \
         delivery_attempts = delivery_attempts + 1 \
         WHERE message_id = $4",
    )
    .bind(STATE_QUEUED)
    .bind(STATE_DELIVERED)
    .bind(now_us)
    .bind(&due.message_id)
    .execute(&mut *tx)
    .await?;
    let payload_hash = envelope
        .payload
        .as_ref()
        .map(|p| ledger::payload_sha256(&p.encode_to_vec()))
        .unwrap_or_default();
    ledger::append(
        &mut tx,
        now_us,
        &EntryFields::for_envelope(LedgerEvent::Delivered, envelope, &payload_hash),
    )
    .await?;
    tx.commit().await?;
    // A delivery starts clocks (a help request's decision runs from its receipt).
    shared.engine_wake.notify_one();
    tracing::info!(message_id = %due.message_id, recipient = %due.recipient, "message delivered");
    let _ = shared.events.send(DeliveryEvent::Delivered {
        message_id: due.message_id.clone(),
    });
    Ok(())
}

/// Records the delivery of a queued message as the worker does after the recipient's inbox
/// accepted it (unit tests, which run no agency services).
#[cfg(test)]
pub(crate) async fn record_delivery_for_test(
    shared: &Shared,
    message_id: &str,
) -> Result<(), sqlx::Error> {
    let row = crate::store::message_by_id(shared.db.pool(), message_id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    let envelope =
        Envelope::decode(row.envelope.as_slice()).map_err(|e| sqlx::Error::Decode(e.into()))?;
    let due = Due {
        message_id: row.message_id,
        recipient: row.recipient_agency_id,
        envelope: row.envelope,
        attempts: row.delivery_attempts,
    };
    record_delivery(shared, &due, &envelope).await
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
    use super::backoff;

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
