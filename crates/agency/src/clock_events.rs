//! The agency's outbox of clock events: what happened to one of its clocked matters (an
//! incident's investigation, a safeguarding concern, an allegation, a service it delivers),
//! reported to the gateway's deadline engine with `Gateway.RecordAgencyClockEvent`.
//!
//! An event is queued with [`AgencyHost::queue_clock_event`](crate::AgencyHost::queue_clock_event)
//! *inside* the transaction of the change that causes it, so a committed change never loses its
//! event; [`AgencyHost::push_clock_events`](crate::AgencyHost::push_clock_events) hands the
//! pending events to the gateway after the commit (best effort), and the service's own retry loop
//! ([`run`]) pushes whatever an unreachable gateway left behind, for every kind of agency.
//!
//! Events go out in the order they were queued, one round at a time (a lock), so an incident's
//! start never overtakes its report. The order is a counter row (`clock_event_order`) each
//! queuing transaction increments and holds until it ends, so positions are unique and follow
//! the commits on PostgreSQL as on SQLite. A round ends at the first event the gateway does not take
//! now (unreachable): it stays pending, with its attempts counted. An event the gateway refuses
//! for good is marked `refused` with the code and logged (ids only), never retried. The
//! idempotency key is the gateway's too, so an event pushed twice is recorded once.

use std::time::Duration;

use jiff::Timestamp;
use prost::Message as _;
use referral_core::{
    ServiceError, ServiceResult,
    db::{AnyPool, Row as _},
    time,
};
use referral_proto::v1::{
    ActingUser, AgencyClockEvent, AgencyClockEventKind, RecordAgencyClockEventRequest,
};
use sqlx::AnyConnection;
use tokio_util::sync::CancellationToken;

use crate::{gateway_link::GatewayFailure, service::Context, store::fingerprint};

/// How often the retry loop pushes what is left.
pub const RETRY_TICK: Duration = Duration::from_secs(5);

/// How many events one query of a round reads.
const BATCH: i64 = 100;

const PENDING: &str = "pending";
const RECORDED: &str = "recorded";
const REFUSED: &str = "refused";

/// Queues `event` under `idempotency_key` inside the caller's transaction. The same key with the
/// same event again queues nothing; with another event it is `ALREADY_EXISTS`.
pub(crate) async fn queue(
    conn: &mut AnyConnection,
    idempotency_key: &str,
    acting: &ActingUser,
    event: &AgencyClockEvent,
    now: Timestamp,
) -> ServiceResult<()> {
    check(idempotency_key, event)?;
    let acting_bytes = acting.encode_to_vec();
    let event_bytes = event.encode_to_vec();
    let mut digest_input = event_bytes.clone();
    digest_input.extend_from_slice(acting.user_id.as_bytes());
    let sha = fingerprint(&digest_input);
    let kind = AgencyClockEventKind::try_from(event.kind)
        .unwrap_or(AgencyClockEventKind::Unspecified)
        .as_str_name();
    // The next position, from the counter row: the update holds the row until the caller's
    // transaction ends, so concurrent writers (PostgreSQL's too) take positions one after the
    // other, in the order they commit. A replay under a known key wastes a number, no more.
    let position: i64 = sqlx::query_scalar(
        "UPDATE clock_event_order SET last_position = last_position + 1 WHERE id = 1 \
         RETURNING last_position",
    )
    .fetch_one(&mut *conn)
    .await?;
    let inserted = sqlx::query(
        "INSERT INTO clock_events (idempotency_key, position, subject_reference, event_kind, \
         request_sha256, acting_user, event, state, queued_at, attempts) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0) ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(idempotency_key)
    .bind(position)
    .bind(event.subject_reference.as_str())
    .bind(kind)
    .bind(sha.as_str())
    .bind(acting_bytes)
    .bind(event_bytes)
    .bind(PENDING)
    .bind(time::to_micros(now))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(());
    }
    let stored: Option<String> =
        sqlx::query_scalar("SELECT request_sha256 FROM clock_events WHERE idempotency_key = $1")
            .bind(idempotency_key)
            .fetch_optional(&mut *conn)
            .await?;
    match stored {
        Some(stored) if stored == sha => Ok(()),
        _ => Err(ServiceError::AlreadyExists(
            "a different clock event was queued under this idempotency key".into(),
        )),
    }
}

/// The agency's own checks of what it queues (the gateway checks everything again): a bug here
/// should fail the caller's change, not be refused later where nobody sees it.
fn check(idempotency_key: &str, event: &AgencyClockEvent) -> ServiceResult<()> {
    let mut violations = referral_core::FieldViolations::new();
    referral_core::validate::idempotency_key(idempotency_key, "idempotency_key", &mut violations);
    if !matches!(
        AgencyClockEventKind::try_from(event.kind),
        Ok(kind) if kind != AgencyClockEventKind::Unspecified
    ) {
        violations.add("event.kind", "must be a clock event kind");
    }
    let subject = &event.subject_reference;
    if subject.is_empty() || subject.len() > 128 || !subject.bytes().all(|b| b.is_ascii_graphic()) {
        violations.add(
            "event.subject_reference",
            "must be 1 to 128 printable ASCII characters",
        );
    }
    if event.occurred_at.is_none() {
        violations.add("event.occurred_at", "is required");
    }
    violations.into_result()
}

fn decode<M: prost::Message + Default>(bytes: &[u8]) -> ServiceResult<M> {
    M::decode(bytes).map_err(ServiceError::internal)
}

/// One pending event.
struct Pending {
    key: String,
    acting: ActingUser,
    event: AgencyClockEvent,
}

async fn pending(pool: &AnyPool) -> ServiceResult<Vec<Pending>> {
    let rows = sqlx::query(
        "SELECT idempotency_key, acting_user, event FROM clock_events \
         WHERE state = $1 ORDER BY position, idempotency_key LIMIT $2",
    )
    .bind(PENDING)
    .bind(BATCH)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Pending {
                key: row.try_get(0)?,
                acting: decode(&row.try_get::<Vec<u8>, _>(1)?)?,
                event: decode(&row.try_get::<Vec<u8>, _>(2)?)?,
            })
        })
        .collect()
}

/// Pushes every pending event it can, in order, and returns how many the gateway recorded.
/// Failures are logged (ids and codes only), never returned: the events stay for the next round.
pub(crate) async fn push(context: &Context) -> usize {
    let _round = context.clock_events_round.lock().await;
    match round(context).await {
        Ok(pushed) => pushed,
        Err(error) => {
            tracing::error!(%error, "cannot push the clock events");
            0
        }
    }
}

async fn round(context: &Context) -> ServiceResult<usize> {
    let pool = context.store.pool();
    let mut pushed = 0;
    loop {
        let batch = pending(pool).await?;
        if batch.is_empty() {
            return Ok(pushed);
        }
        for entry in batch {
            let request = RecordAgencyClockEventRequest {
                idempotency_key: entry.key.clone(),
                acting_user: Some(entry.acting),
                event: Some(entry.event),
            };
            let now = time::to_micros(context.clock.now());
            match context.gateway.record_agency_clock_event(request).await {
                Ok(response) => {
                    sqlx::query(
                        "UPDATE clock_events SET state = $1, event_id = $2, done_at = $3 \
                         WHERE idempotency_key = $4",
                    )
                    .bind(RECORDED)
                    .bind(response.event_id.as_str())
                    .bind(now)
                    .bind(entry.key.as_str())
                    .execute(pool)
                    .await?;
                    tracing::info!(
                        idempotency_key = %entry.key,
                        event_id = %response.event_id,
                        duplicate = response.duplicate,
                        "clock event recorded by the gateway"
                    );
                    pushed += 1;
                }
                Err(GatewayFailure::Refused(status)) => {
                    let code = format!("{:?}", status.code());
                    tracing::error!(
                        idempotency_key = %entry.key,
                        code,
                        "the gateway refused a clock event; it will not be retried"
                    );
                    sqlx::query(
                        "UPDATE clock_events SET state = $1, last_code = $2, done_at = $3 \
                         WHERE idempotency_key = $4",
                    )
                    .bind(REFUSED)
                    .bind(code.as_str())
                    .bind(now)
                    .bind(entry.key.as_str())
                    .execute(pool)
                    .await?;
                }
                Err(failure) => {
                    let code = format!("{:?}", failure.code());
                    tracing::warn!(
                        idempotency_key = %entry.key,
                        code,
                        "the gateway did not take a clock event; retrying later"
                    );
                    sqlx::query(
                        "UPDATE clock_events SET attempts = attempts + 1, last_code = $1 \
                         WHERE idempotency_key = $2",
                    )
                    .bind(code.as_str())
                    .bind(entry.key.as_str())
                    .execute(pool)
                    .await?;
                    return Ok(pushed);
                }
            }
        }
    }
}

/// The retry loop every agency service runs: pushes once at start, then on every tick, until
/// `shutdown`.
pub(crate) async fn run(context: std::sync::Arc<Context>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(RETRY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = push(&context) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing;

    fn event(subject: &str) -> AgencyClockEvent {
        AgencyClockEvent {
            kind: AgencyClockEventKind::IncidentRecorded as i32,
            subject_reference: subject.into(),
            occurred_at: Some(time::to_proto(Timestamp::UNIX_EPOCH)),
            urgent: true,
            ..AgencyClockEvent::default()
        }
    }

    fn acting() -> ActingUser {
        ActingUser {
            user_id: "director".into(),
            agency_id: "school-1".into(),
            ..ActingUser::default()
        }
    }

    #[tokio::test]
    async fn the_same_key_queues_once_and_another_event_under_it_is_refused() {
        let (store, _dir) = testing::store().await;
        let mut tx = store.begin().await.unwrap();
        let now = Timestamp::UNIX_EPOCH;
        queue(&mut tx, "key-0001", &acting(), &event("inc-1"), now)
            .await
            .unwrap();
        queue(&mut tx, "key-0001", &acting(), &event("inc-1"), now)
            .await
            .unwrap();
        queue(&mut tx, "key-0002", &acting(), &event("inc-2"), now)
            .await
            .unwrap();
        let err = queue(&mut tx, "key-0001", &acting(), &event("inc-3"), now)
            .await
            .unwrap_err();
        assert!(matches!(err, ServiceError::AlreadyExists(_)), "{err:?}");
        tx.commit().await.unwrap();
        let rows = pending(store.pool()).await.unwrap();
        let keys: Vec<&str> = rows.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["key-0001", "key-0002"], "in the order queued");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_transactions_take_distinct_positions_in_commit_order() {
        let (store, _dir) = testing::store().await;
        // As many as the smallest pool (SQLite's) holds: each keeps its connection until it commits.
        const WRITERS: usize = 4;
        // On PostgreSQL every transaction is open before any queues. SQLite's transactions begin
        // IMMEDIATE (`Database::begin`): a second one waits at BEGIN for the first to commit, so
        // there the writers are serialised already and a barrier after BEGIN would deadlock.
        let parties = match store.database().backend() {
            referral_core::db::Backend::Postgres => WRITERS,
            referral_core::db::Backend::Sqlite => 1,
        };
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(parties));
        let mut writers = tokio::task::JoinSet::new();
        for n in 0..WRITERS {
            let (store, start) = (store.clone(), start.clone());
            writers.spawn(async move {
                let mut tx = store.begin().await.unwrap();
                // Every transaction open before any queues.
                start.wait().await;
                let key = format!("key-{n:04}");
                queue(
                    &mut tx,
                    &key,
                    &acting(),
                    &event(&format!("inc-{n}")),
                    Timestamp::UNIX_EPOCH,
                )
                .await
                .unwrap();
                tx.commit().await.unwrap();
            });
        }
        while let Some(done) = writers.join_next().await {
            done.unwrap();
        }
        let positions: Vec<i64> =
            sqlx::query_scalar("SELECT position FROM clock_events ORDER BY position")
                .fetch_all(store.pool())
                .await
                .unwrap();
        let expected: Vec<i64> = (1..=i64::try_from(WRITERS).unwrap()).collect();
        assert_eq!(positions, expected, "one position each, none shared");
        // A later event follows them all.
        let mut tx = store.begin().await.unwrap();
        queue(
            &mut tx,
            "key-later",
            &acting(),
            &event("inc-later"),
            Timestamp::UNIX_EPOCH,
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let rows = pending(store.pool()).await.unwrap();
        assert_eq!(rows.last().map(|p| p.key.as_str()), Some("key-later"));
    }

    #[tokio::test]
    async fn the_counter_starts_after_the_events_queued_before_it_renumbered_in_order() {
        use crate::store::{MIGRATIONS, Store};
        let (storage, agency_id, _dir) = testing::storage();
        // A store as it was before the counter, with positions the race shared.
        let before = Store::open_with(&storage, &agency_id, &MIGRATIONS[..4])
            .await
            .unwrap();
        for (key, position) in [("key-c", 2), ("key-a", 1), ("key-b", 1), ("key-d", 7)] {
            sqlx::query(
                "INSERT INTO clock_events (idempotency_key, position, subject_reference, \
                 event_kind, request_sha256, acting_user, event, state, queued_at) \
                 VALUES ($1, $2, 's', 'k', 'h', $3, $4, $5, 0)",
            )
            .bind(key)
            .bind(position)
            .bind(acting().encode_to_vec())
            .bind(event("inc-1").encode_to_vec())
            .bind(PENDING)
            .execute(before.pool())
            .await
            .unwrap();
        }
        before.close().await;
        let store = Store::open_with(&storage, &agency_id, MIGRATIONS)
            .await
            .unwrap();
        let mut tx = store.begin().await.unwrap();
        queue(
            &mut tx,
            "key-0000",
            &acting(),
            &event("inc-2"),
            Timestamp::UNIX_EPOCH,
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT idempotency_key, position FROM clock_events ORDER BY position")
                .fetch_all(store.pool())
                .await
                .unwrap();
        let rows: Vec<(&str, i64)> = rows.iter().map(|(k, p)| (k.as_str(), *p)).collect();
        assert_eq!(
            rows,
            [
                ("key-a", 1),
                ("key-b", 2),
                ("key-c", 3),
                ("key-d", 4),
                ("key-0000", 5)
            ]
        );
        store.close().await;
    }

    #[tokio::test]
    async fn bad_events_are_refused_naming_the_field() {
        let (store, _dir) = testing::store().await;
        let mut tx = store.begin().await.unwrap();
        let now = Timestamp::UNIX_EPOCH;
        let mut no_kind = event("inc-1");
        no_kind.kind = 0;
        for (key, bad, field) in [
            ("key-0001", event("with space"), "event.subject_reference"),
            ("key-0001", event(""), "event.subject_reference"),
            ("key-0001", no_kind, "event.kind"),
            ("short", event("inc-1"), "idempotency_key"),
            ("", event("inc-1"), "idempotency_key"),
        ] {
            let err = queue(&mut tx, key, &acting(), &bad, now).await.unwrap_err();
            assert!(
                matches!(&err, ServiceError::InvalidArgument(v) if v.contains(field)),
                "{field}: {err:?}"
            );
        }
        tx.commit().await.unwrap();
        assert!(pending(store.pool()).await.unwrap().is_empty());
    }
}
