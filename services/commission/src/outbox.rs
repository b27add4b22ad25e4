//! Pushing the case outbox to the gateway: case events (`Gateway.RecordCaseEvent`, for the
//! deadline engine) and messages to other agencies (`Gateway.Send`: information requests,
//! action assignments, review minutes).
//!
//! Entries are written in the transaction of the change that causes them ([`crate::case`]), so a
//! committed change never loses its event or messages. They are pushed in the order they were
//! written:
//! * right after each change's commit, so a change's call returns once the gateway has them when
//!   it is reachable;
//! * after the shared flows commit (a decision handed to the gateway releases its case's
//!   `CASE_OPENED`);
//! * on a background tick, and once at start, for whatever an unreachable gateway left behind.
//!
//! One push at a time ([`Outbox::flush`] holds a lock), in order. Events and messages are two
//! sequences: the first entry of a sequence the gateway does not take now (unreachable, or not yet
//! supporting the call) ends that sequence's round, so a later event of a case never overtakes an
//! earlier one; an unreachable gateway ends the whole round. Keys are stable, so a repeated push
//! is de-duplicated by the gateway. An entry the gateway refuses for good is marked `refused` with
//! the code and logged (ids only): it is never retried, and the next entries go on. Nothing of a
//! case is pushed before the decision that opened it has reached the gateway.

use std::time::Duration;

use jiff::Timestamp;
use referral_agency::{AgencyHost, GatewayFailure, PushOutcome};
use referral_core::{
    ServiceResult,
    db::{AnyPool, Row as _},
    time,
};
use referral_proto::v1::{Envelope, FormKind, RecordCaseEventRequest};
use sqlx::AnyConnection;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::filing;

/// How often the background task pushes what is left.
pub const TICK: Duration = Duration::from_secs(10);

/// How many entries one query of a round reads.
const BATCH: i64 = 100;

/// The outbox of one commission service.
#[derive(Debug, Default)]
pub struct Outbox {
    /// One round at a time, so entries go out in order.
    lock: Mutex<()>,
}

/// One pending entry.
#[derive(Debug)]
struct Entry {
    key: String,
    case_reference: String,
    event: Option<Vec<u8>>,
}

/// The two kinds of entries (`case_outbox.item_kind`).
const EVENT: &str = "event";
const MESSAGE: &str = "message";

/// What became of one entry.
enum Pushed {
    Done,
    Refused(String),
    NotNow(String),
}

impl Outbox {
    /// Pushes every pending entry it can, in order, and returns how many went out. Failures are
    /// logged (ids and codes only), never returned: the entries stay for the next round.
    pub async fn flush(&self, host: &AgencyHost) -> usize {
        let _round = self.lock.lock().await;
        match self.round(host).await {
            Ok(pushed) => pushed,
            Err(err) => {
                tracing::error!(error = %err, "cannot push the case outbox");
                0
            }
        }
    }

    /// Events and messages are two sequences: each goes out in order, and one the gateway does
    /// not take now holds back only its own sequence.
    async fn round(&self, host: &AgencyHost) -> ServiceResult<usize> {
        let mut pushed = 0;
        for kind in [EVENT, MESSAGE] {
            let (done, unreachable) = sequence(host, kind).await?;
            pushed += done;
            if unreachable {
                // The gateway is not there: the other sequence would only wait for it too.
                break;
            }
        }
        Ok(pushed)
    }

    /// Pushes once at start, then on every tick, until `shutdown`.
    pub async fn run(&self, host: AgencyHost, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = self.flush(&host) => {}
            }
        }
    }
}

/// Pushes the pending entries of one kind, in order, until none is left or one is not taken;
/// how many went out, and whether the gateway was unreachable.
async fn sequence(host: &AgencyHost, kind: &str) -> ServiceResult<(usize, bool)> {
    let mut pushed = 0;
    loop {
        let entries = pending(host.pool(), kind).await?;
        if entries.is_empty() {
            return Ok((pushed, false));
        }
        for entry in entries {
            let outcome = if kind == EVENT {
                push_event(host, &entry).await
            } else {
                push_message(host, &entry).await?
            };
            match outcome {
                // A message's entry is marked done with the replies that came early.
                Pushed::Done if kind == MESSAGE => pushed += 1,
                Pushed::Done => {
                    pushed += 1;
                    mark(host.pool(), &entry.key, "done", None, host.clock().now()).await?;
                }
                Pushed::Refused(code) => {
                    tracing::error!(
                        outbox_key = %entry.key,
                        case_reference = %entry.case_reference,
                        code,
                        "the gateway refused a case outbox entry; it will not be retried"
                    );
                    mark(
                        host.pool(),
                        &entry.key,
                        "refused",
                        Some(&code),
                        host.clock().now(),
                    )
                    .await?;
                }
                Pushed::NotNow(code) => {
                    tracing::warn!(
                        outbox_key = %entry.key,
                        case_reference = %entry.case_reference,
                        code,
                        "the gateway did not take a case outbox entry; retrying later"
                    );
                    sqlx::query(
                        "UPDATE case_outbox SET attempts = attempts + 1, last_code = $1 \
                         WHERE outbox_key = $2",
                    )
                    .bind(code.as_str())
                    .bind(entry.key.as_str())
                    .execute(host.pool())
                    .await?;
                    let unreachable = matches!(code.as_str(), "Unavailable" | "DeadlineExceeded");
                    return Ok((pushed, unreachable));
                }
            }
        }
    }
}

/// The pending entries of one kind, of cases whose opening decision reached the gateway, oldest
/// first.
async fn pending(pool: &AnyPool, kind: &str) -> ServiceResult<Vec<Entry>> {
    let rows = sqlx::query(
        "SELECT o.outbox_key, o.case_reference, o.event FROM case_outbox o \
         JOIN decisions d ON d.case_reference = o.case_reference \
         WHERE o.state = 'pending' AND o.item_kind = $1 AND d.state = 'decision_sent' \
         ORDER BY o.created_at, o.case_reference, o.case_version, o.position LIMIT $2",
    )
    .bind(kind)
    .bind(BATCH)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Entry {
                key: row.try_get(0)?,
                case_reference: row.try_get(1)?,
                event: row.try_get(2)?,
            })
        })
        .collect()
}

async fn mark(
    pool: &AnyPool,
    key: &str,
    state: &str,
    code: Option<&str>,
    now: Timestamp,
) -> ServiceResult<()> {
    sqlx::query(
        "UPDATE case_outbox SET state = $1, last_code = COALESCE($2, last_code), done_at = $3 \
         WHERE outbox_key = $4",
    )
    .bind(state)
    .bind(code)
    .bind(time::to_micros(now))
    .bind(key)
    .execute(pool)
    .await?;
    Ok(())
}

fn code_of(failure: &GatewayFailure) -> String {
    format!("{:?}", failure.code())
}

async fn push_event(host: &AgencyHost, entry: &Entry) -> Pushed {
    let request = match entry
        .event
        .as_deref()
        .map(<RecordCaseEventRequest as prost::Message>::decode)
    {
        Some(Ok(request)) => request,
        _ => return Pushed::Refused("undecodable".into()),
    };
    match host.record_case_event(request).await {
        Ok(answer) => {
            tracing::info!(
                outbox_key = %entry.key,
                case_reference = %entry.case_reference,
                event_id = %answer.event_id,
                duplicate = answer.duplicate,
                "case event recorded by the gateway"
            );
            Pushed::Done
        }
        Err(failure @ GatewayFailure::Refused(_)) => Pushed::Refused(code_of(&failure)),
        Err(failure) => Pushed::NotNow(code_of(&failure)),
    }
}

async fn push_message(host: &AgencyHost, entry: &Entry) -> ServiceResult<Pushed> {
    let outcome = match host.push_message(&entry.key).await {
        Ok(outcome) => outcome,
        Err(err) => {
            tracing::error!(outbox_key = %entry.key, error = %err, "cannot push a case message");
            return Ok(Pushed::NotNow("Internal".into()));
        }
    };
    Ok(match outcome {
        PushOutcome::Sent(message_id) => {
            finish_message(host, &entry.key, &message_id, host.clock().now()).await?;
            Pushed::Done
        }
        PushOutcome::NotNow(failure) => Pushed::NotNow(code_of(&failure)),
        PushOutcome::Refused(failure) => Pushed::Refused(code_of(&failure)),
        PushOutcome::Unknown => Pushed::Refused("NotFound".into()),
    })
}

/// Marks a message's entry done and files the replies that arrived before this service stored
/// the gateway's acknowledgement, in one transaction.
async fn finish_message(
    host: &AgencyHost,
    key: &str,
    message_id: &str,
    now: Timestamp,
) -> ServiceResult<()> {
    let mut tx = host.begin().await?;
    sqlx::query("UPDATE case_outbox SET state = 'done', done_at = $1 WHERE outbox_key = $2")
        .bind(time::to_micros(now))
        .bind(key)
        .execute(&mut *tx)
        .await?;
    file_early_replies(&mut tx, message_id).await?;
    tx.commit().await?;
    Ok(())
}

/// Files the answers and progress reports to `message_id` already in the inbox, oldest first.
/// Filing is idempotent, so replies filed before are unchanged.
async fn file_early_replies(conn: &mut AnyConnection, message_id: &str) -> ServiceResult<()> {
    let rows = sqlx::query(
        "SELECT envelope, received_at FROM received_messages \
         WHERE in_reply_to = $1 AND form_kind IN ($2, $3) ORDER BY received_at, message_id",
    )
    .bind(message_id)
    .bind(FormKind::InformationResponse.as_str_name())
    .bind(FormKind::ActionProgress.as_str_name())
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        let envelope: Envelope = prost::Message::decode(row.try_get::<Vec<u8>, _>(0)?.as_slice())
            .map_err(referral_core::ServiceError::internal)?;
        let received_at = time::from_micros(row.try_get(1)?);
        filing::file(conn, &envelope, received_at).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, CASE};

    #[tokio::test]
    async fn nothing_of_a_case_goes_out_before_its_opening_decision() {
        let (db, _dir) = testing::store().await;
        testing::open_case(&db, false).await;
        assert!(pending(db.pool(), EVENT).await.unwrap().is_empty());

        sqlx::query("UPDATE decisions SET state = 'decision_sent'")
            .execute(db.pool())
            .await
            .unwrap();
        let events = pending(db.pool(), EVENT).await.unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].key, "case-event-KTIZhK-2026-000001-v1");
        assert_eq!(events[0].case_reference, CASE);
        assert!(pending(db.pool(), MESSAGE).await.unwrap().is_empty());

        mark(db.pool(), &events[0].key, "done", None, testing::now())
            .await
            .unwrap();
        assert!(pending(db.pool(), EVENT).await.unwrap().is_empty());
    }
}
