//! `sent_messages`: what this agency sent through the gateway, where it is, and the answer.
//!
//! A row is `pending` from before the gateway is called until the gateway acknowledges it with a
//! message id (`sent`); a refused message's pending row is removed. The idempotency key is the
//! primary key, so submitting again with the same key finds the same row and never adds one.

use jiff::Timestamp;
use referral_core::{ServiceError, ServiceResult, db::Row as _, time};
use referral_proto::v1::{
    DeliveryState, DeliveryStatus, Envelope, FormKind, ReferralStatus, SendResponse,
};
use sqlx::{Any, AnyConnection, Transaction};

#[cfg(test)]
use super::BatchFailure;
use super::{
    BatchWrite, Cursor, Hook, Page, Store, Waiting, decode, delivery_state, encode, form_kind,
    kind_filter, referral_status,
};
use crate::forms::{delivery_rank, is_answer, sent_status};

const PENDING: &str = "pending";
const SENT: &str = "sent";

/// The columns [`SentRow::from_row`] reads, in its order.
macro_rules! sent_columns {
    () => {
        "idempotency_key, message_id, recipient_agency_id, form_kind, request_sha256, envelope, \
         created_at, sent_at, delivery_state, referral_status, answer_envelope, trace_context"
    };
}

/// One message this agency sent (or is sending).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SentRow {
    pub(crate) idempotency_key: String,
    /// The gateway's id; `None` while pending.
    pub(crate) message_id: Option<String>,
    pub(crate) recipient_agency_id: String,
    pub(crate) form_kind: FormKind,
    pub(crate) request_sha256: String,
    pub(crate) envelope: Envelope,
    pub(crate) created_at: Timestamp,
    pub(crate) sent_at: Option<Timestamp>,
    pub(crate) delivery_state: DeliveryState,
    pub(crate) referral_status: ReferralStatus,
    pub(crate) answer: Option<Envelope>,
    /// The `traceparent` of the call that queued the message (see `referral_core::trace_context`).
    pub(crate) trace_context: Option<String>,
}

impl SentRow {
    fn from_row(row: &sqlx::any::AnyRow) -> ServiceResult<Self> {
        let answer: Option<Vec<u8>> = row.try_get(10)?;
        Ok(Self {
            idempotency_key: row.try_get(0)?,
            message_id: row.try_get(1)?,
            recipient_agency_id: row.try_get(2)?,
            form_kind: form_kind(&row.try_get::<String, _>(3)?),
            request_sha256: row.try_get(4)?,
            envelope: decode(&row.try_get::<Vec<u8>, _>(5)?)?,
            created_at: time::from_micros(row.try_get(6)?),
            sent_at: row.try_get::<Option<i64>, _>(7)?.map(time::from_micros),
            delivery_state: delivery_state(&row.try_get::<String, _>(8)?),
            referral_status: referral_status(&row.try_get::<String, _>(9)?),
            answer: answer.as_deref().map(decode).transpose()?,
            trace_context: row.try_get(11)?,
        })
    }

    fn cursor(&self) -> Cursor {
        Cursor::after(
            self.sent_at.map_or(0, time::to_micros),
            self.message_id.as_deref().unwrap_or_default(),
        )
    }
}

/// A message about to be handed to the gateway.
#[derive(Debug, Clone)]
pub(crate) struct NewSent<'a> {
    pub(crate) idempotency_key: &'a str,
    pub(crate) request_sha256: &'a str,
    pub(crate) acting_user_id: &'a str,
    /// The envelope to send; its recipient, kind and reply-to fill the queryable columns.
    pub(crate) envelope: &'a Envelope,
    pub(crate) now: Timestamp,
}

/// A message to store as pending, owned by the request that waits for the writer of pending
/// rows, with the `traceparent` of the call that queues it (the writer runs outside its span).
#[derive(Debug, Clone)]
pub(crate) struct PendingRequest {
    pub(crate) idempotency_key: String,
    pub(crate) request_sha256: String,
    pub(crate) acting_user_id: String,
    pub(crate) envelope: Envelope,
    pub(crate) now: Timestamp,
    pub(crate) trace_context: Option<String>,
}

impl PendingRequest {
    fn as_new(&self) -> NewSent<'_> {
        NewSent {
            idempotency_key: &self.idempotency_key,
            request_sha256: &self.request_sha256,
            acting_user_id: &self.acting_user_id,
            envelope: &self.envelope,
            now: self.now,
        }
    }
}

/// A message waiting for the writer of pending rows: answered with the row stored under its key
/// (the new one, or the earlier one) once its batch committed.
pub(crate) type QueuedSend = Waiting<PendingRequest, SentRow>;

/// An acknowledgement waiting for the writer of acknowledgements (the pending row's key, the
/// gateway's answer, when it came): answered with the row as stored once its batch committed.
pub(crate) type PendingAck = Waiting<(String, SendResponse, Timestamp), SentRow>;

/// Inserts a pending row unless one with this key exists; the row when inserted (read back in
/// the same statement), `None` when the key was taken.
pub(crate) async fn insert_pending(
    conn: &mut AnyConnection,
    new: &NewSent<'_>,
) -> ServiceResult<Option<SentRow>> {
    let trace_context = referral_core::trace_context::current_traceparent();
    insert_pending_traced(conn, new, trace_context.as_deref()).await
}

/// [`insert_pending`] with the `traceparent` of the call that queues the message given, for a
/// writer that runs outside that call's span.
async fn insert_pending_traced(
    conn: &mut AnyConnection,
    new: &NewSent<'_>,
    trace_context: Option<&str>,
) -> ServiceResult<Option<SentRow>> {
    let now = time::to_micros(new.now);
    let kind = FormKind::try_from(new.envelope.form_kind).unwrap_or(FormKind::Unspecified);
    let in_reply_to = Some(new.envelope.in_reply_to.as_str()).filter(|s| !s.is_empty());
    sqlx::query(concat!(
        "INSERT INTO sent_messages (idempotency_key, message_id, status, recipient_agency_id, \
         form_kind, in_reply_to, acting_user_id, request_sha256, envelope, created_at, sent_at, \
         delivery_state, referral_status, answer_message_id, answer_envelope, updated_at, \
         trace_context) \
         VALUES ($1, NULL, $2, $3, $4, $5, $6, $7, $8, $9, NULL, $10, $11, NULL, NULL, $9, $12) \
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING ",
        sent_columns!()
    ))
    .bind(new.idempotency_key)
    .bind(PENDING)
    .bind(new.envelope.recipient_agency_id.as_str())
    .bind(kind.as_str_name())
    .bind(in_reply_to)
    .bind(new.acting_user_id)
    .bind(new.request_sha256)
    .bind(encode(new.envelope))
    .bind(now)
    .bind(DeliveryState::Unspecified.as_str_name())
    .bind(ReferralStatus::Requested.as_str_name())
    .bind(trace_context)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(SentRow::from_row)
    .transpose()
}

pub(super) async fn by_key(conn: &mut AnyConnection, key: &str) -> ServiceResult<Option<SentRow>> {
    sqlx::query(concat!(
        "SELECT ",
        sent_columns!(),
        " FROM sent_messages WHERE idempotency_key = $1"
    ))
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(SentRow::from_row)
    .transpose()
}

/// A message to store as pending: answered with the row stored under its key.
impl BatchWrite for PendingRequest {
    type Written = SentRow;

    fn write<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Any>,
        _hook: Hook<'a>,
    ) -> impl Future<Output = ServiceResult<SentRow>> + Send + 'a {
        begin_send_in(tx, self)
    }
}

/// An acknowledgement (the pending row's key, the gateway's answer, when it came): answered with
/// the row as now stored.
impl BatchWrite for (String, SendResponse, Timestamp) {
    type Written = SentRow;

    fn write<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Any>,
        _hook: Hook<'a>,
    ) -> impl Future<Output = ServiceResult<SentRow>> + Send + 'a {
        mark_sent_in(tx, &self.0, &self.1, self.2)
    }
}

/// A pending row for the message unless its key is known, inside a batch's transaction; the row
/// stored under the key.
async fn begin_send_in(
    tx: &mut Transaction<'static, Any>,
    request: &PendingRequest,
) -> ServiceResult<SentRow> {
    let new = request.as_new();
    if let Some(row) = insert_pending_traced(tx, &new, request.trace_context.as_deref()).await? {
        return Ok(row);
    }
    by_key(tx, &request.idempotency_key)
        .await?
        .ok_or_else(|| ServiceError::internal(anyhow::anyhow!("sent row vanished")))
}

/// Records the gateway's acknowledgement of the pending message `key`, inside a batch's
/// transaction, with what depends on it: an answer that arrived before the acknowledgement was
/// stored, and the state of the decision the message carries. Returns the row as now stored.
async fn mark_sent_in(
    tx: &mut Transaction<'static, Any>,
    key: &str,
    ack: &SendResponse,
    now: Timestamp,
) -> ServiceResult<SentRow> {
    let row = by_key(&mut *tx, key).await?.ok_or_else(|| {
        ServiceError::internal(anyhow::anyhow!("no pending row for an acknowledged send"))
    })?;
    let sent_at = ack
        .created_at
        .as_ref()
        .and_then(time::from_proto)
        .unwrap_or(now);
    let mut envelope = row.envelope;
    envelope.message_id.clone_from(&ack.message_id);
    envelope.created_at = Some(time::to_proto(sent_at));
    let acked = DeliveryState::try_from(ack.state).unwrap_or(DeliveryState::Queued);
    let state = if delivery_rank(row.delivery_state) > delivery_rank(acked) {
        row.delivery_state
    } else {
        acked
    };
    let updated = sqlx::query(concat!(
        "UPDATE sent_messages SET message_id = $1, status = $2, envelope = $3, sent_at = $4, \
         delivery_state = $5, referral_status = $6, updated_at = $7 \
         WHERE idempotency_key = $8 RETURNING ",
        sent_columns!()
    ))
    .bind(ack.message_id.as_str())
    .bind(SENT)
    .bind(encode(&envelope))
    .bind(time::to_micros(sent_at))
    .bind(state.as_str_name())
    .bind(sent_status(state, row.answer.as_ref()).as_str_name())
    .bind(time::to_micros(now))
    .bind(key)
    .fetch_one(&mut **tx)
    .await?;
    let mut row = SentRow::from_row(&updated)?;
    // An answer can only arrive after the gateway acknowledged the message, but it may
    // arrive before this acknowledgement was stored.
    let early_answer = sqlx::query(
        "SELECT envelope FROM received_messages \
         WHERE in_reply_to = $1 AND sender_agency_id = $2 AND form_kind IN ($3, $4)",
    )
    .bind(ack.message_id.as_str())
    .bind(row.recipient_agency_id.as_str())
    .bind(FormKind::HelpRequestDecision.as_str_name())
    .bind(FormKind::InformationResponse.as_str_name())
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(answer) = early_answer {
        let answer: Envelope = decode(&answer.try_get::<Vec<u8>, _>(0)?)?;
        apply_answer(&mut *tx, &answer, now).await?;
        // The answer changed the row just written: read it again.
        row = by_key(&mut *tx, key)
            .await?
            .ok_or_else(|| ServiceError::internal(anyhow::anyhow!("sent row vanished")))?;
    }
    super::decisions::mark_decision_sent(&mut *tx, key, &ack.message_id).await?;
    Ok(row)
}

/// Records the answer to a message this agency sent (a decision on its help request, the
/// response to an information request), if the answer comes from the message's recipient. Used when the answer arrives in the inbox, and when
/// a send is acknowledged after its answer already arrived.
pub(super) async fn apply_answer(
    conn: &mut AnyConnection,
    answer: &Envelope,
    now: Timestamp,
) -> ServiceResult<()> {
    if answer.in_reply_to.is_empty() || !is_answer(answer) {
        return Ok(());
    }
    let status = sent_status(DeliveryState::Answered, Some(answer));
    sqlx::query(
        "UPDATE sent_messages SET delivery_state = $1, referral_status = $2, \
         answer_message_id = $3, answer_envelope = $4, updated_at = $5 \
         WHERE message_id = $6 AND recipient_agency_id = $7",
    )
    .bind(DeliveryState::Answered.as_str_name())
    .bind(status.as_str_name())
    .bind(answer.message_id.as_str())
    .bind(encode(answer))
    .bind(time::to_micros(now))
    .bind(answer.in_reply_to.as_str())
    .bind(answer.sender_agency_id.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Store {
    /// Writes a pending row for a message unless its idempotency key is known, and returns the
    /// row stored under the key (the new one, or the earlier one: the caller compares
    /// `request_sha256` to tell a retry from a reused key). A batch of one; the service writes
    /// them in batches: [`Store::write_waiting`].
    #[cfg(test)]
    pub(crate) async fn begin_send(&self, new: &NewSent<'_>) -> ServiceResult<SentRow> {
        let request = PendingRequest {
            idempotency_key: new.idempotency_key.to_owned(),
            request_sha256: new.request_sha256.to_owned(),
            acting_user_id: new.acting_user_id.to_owned(),
            envelope: new.envelope.clone(),
            now: new.now,
            trace_context: None,
        };
        self.write_one(&request, None).await
    }

    pub(crate) async fn sent_by_key(&self, key: &str) -> ServiceResult<Option<SentRow>> {
        let mut conn = self.db.pool().acquire().await?;
        by_key(&mut conn, key).await
    }

    /// A message this agency sent and the gateway acknowledged.
    pub(crate) async fn sent_by_message_id(
        &self,
        message_id: &str,
    ) -> ServiceResult<Option<SentRow>> {
        sqlx::query(concat!(
            "SELECT ",
            sent_columns!(),
            " FROM sent_messages WHERE message_id = $1"
        ))
        .bind(message_id)
        .fetch_optional(self.db.pool())
        .await?
        .as_ref()
        .map(SentRow::from_row)
        .transpose()
    }

    /// Records the gateway's acknowledgement of the pending message `key` (a batch of one; the
    /// service records them in batches: [`Store::write_waiting`]).
    #[cfg(test)]
    pub(crate) async fn mark_sent(
        &self,
        key: &str,
        ack: &SendResponse,
        now: Timestamp,
    ) -> ServiceResult<SentRow> {
        let request = (key.to_owned(), ack.clone(), now);
        self.write_one(&request, None).await
    }

    /// Removes the row of a message the gateway refused, if it is still pending.
    pub(crate) async fn forget_pending(&self, key: &str) -> ServiceResult<()> {
        sqlx::query("DELETE FROM sent_messages WHERE idempotency_key = $1 AND status = $2")
            .bind(key)
            .bind(PENDING)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Stores the live state the gateway reported for a sent message, never moving it back, and
    /// returns the row as now stored.
    pub(crate) async fn record_live_state(
        &self,
        message_id: &str,
        live: &DeliveryStatus,
        now: Timestamp,
    ) -> ServiceResult<Option<SentRow>> {
        let mut tx = self.db.begin().await?;
        let Some(row) = sqlx::query(concat!(
            "SELECT ",
            sent_columns!(),
            " FROM sent_messages WHERE message_id = $1"
        ))
        .bind(message_id)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(SentRow::from_row)
        .transpose()?
        else {
            return Ok(None);
        };
        let reported = DeliveryState::try_from(live.state).unwrap_or(DeliveryState::Unspecified);
        let state = if delivery_rank(reported) >= delivery_rank(row.delivery_state) {
            reported
        } else {
            row.delivery_state
        };
        // Only an answer from the recipient, answering this message, is taken.
        let answer = live
            .answer
            .as_ref()
            .filter(|a| {
                a.in_reply_to == message_id && a.sender_agency_id == row.recipient_agency_id
            })
            .or(row.answer.as_ref());
        sqlx::query(
            "UPDATE sent_messages SET delivery_state = $1, referral_status = $2, \
             answer_message_id = $3, answer_envelope = $4, updated_at = $5 WHERE message_id = $6",
        )
        .bind(state.as_str_name())
        .bind(sent_status(state, answer).as_str_name())
        .bind(answer.map(|a| a.message_id.clone()))
        .bind(answer.map(encode))
        .bind(time::to_micros(now))
        .bind(message_id)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            sent_columns!(),
            " FROM sent_messages WHERE message_id = $1"
        ))
        .bind(message_id)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(SentRow::from_row)
        .transpose()?;
        tx.commit().await?;
        Ok(row)
    }

    /// Sent (acknowledged) messages, newest first; pending ones are not listed.
    pub(crate) async fn list_sent(
        &self,
        kind: FormKind,
        page: &Page,
    ) -> ServiceResult<(Vec<SentRow>, Option<Cursor>)> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            sent_columns!(),
            " FROM sent_messages WHERE status = $1 AND ($2 = '' OR form_kind = $2) \
             AND (sent_at < $3 OR (sent_at = $3 AND message_id < $4)) \
             ORDER BY sent_at DESC, message_id DESC LIMIT $5"
        ))
        .bind(SENT)
        .bind(kind_filter(kind))
        .bind(page.after.at)
        .bind(page.after.id.as_str())
        .bind(page.limit())
        .fetch_all(self.db.pool())
        .await?;
        let mut rows = rows
            .iter()
            .map(SentRow::from_row)
            .collect::<ServiceResult<Vec<_>>>()?;
        let next = page.finish(&mut rows, SentRow::cursor);
        Ok((rows, next))
    }
}

#[cfg(test)]
mod tests {
    use referral_proto::v1::{
        ActingUser, CaseOpened, HelpRequest, HelpRequestDecision, Payload,
        help_request_decision::Outcome, payload::Form,
    };

    use super::*;
    use crate::store::testing;

    fn now() -> Timestamp {
        "2026-03-02T05:00:00Z".parse().unwrap()
    }

    fn k_envelope(key: &str) -> Envelope {
        Envelope {
            idempotency_key: key.into(),
            sender_agency_id: "school-1".into(),
            recipient_agency_id: "commission".into(),
            acting_user: Some(ActingUser {
                user_id: "director".into(),
                ..Default::default()
            }),
            form_kind: FormKind::HelpRequest as i32,
            payload: Some(Payload {
                form: Some(Form::HelpRequest(HelpRequest::default())),
            }),
            ..Default::default()
        }
    }

    fn new_sent<'a>(envelope: &'a Envelope, sha: &'a str) -> NewSent<'a> {
        NewSent {
            idempotency_key: &envelope.idempotency_key,
            request_sha256: sha,
            acting_user_id: "director",
            envelope,
            now: now(),
        }
    }

    fn ack(id: &str) -> SendResponse {
        SendResponse {
            message_id: id.into(),
            state: DeliveryState::Queued as i32,
            duplicate: false,
            created_at: Some(time::to_proto(now())),
        }
    }

    fn decision(in_reply_to: &str) -> Envelope {
        Envelope {
            message_id: "decision-1".into(),
            sender_agency_id: "commission".into(),
            recipient_agency_id: "school-1".into(),
            in_reply_to: in_reply_to.into(),
            form_kind: FormKind::HelpRequestDecision as i32,
            payload: Some(Payload {
                form: Some(Form::HelpRequestDecision(HelpRequestDecision {
                    help_request_message_id: in_reply_to.into(),
                    outcome: Some(Outcome::CaseOpened(CaseOpened::default())),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn the_same_key_finds_the_same_row() {
        let (store, _dir) = testing::store().await;
        let envelope = k_envelope("key-00000001");
        let first = store.begin_send(&new_sent(&envelope, "aaa")).await.unwrap();
        let again = store.begin_send(&new_sent(&envelope, "bbb")).await.unwrap();
        assert_eq!(first, again);
        assert_eq!(again.request_sha256, "aaa");
        assert!(first.message_id.is_none());

        let sent = store
            .mark_sent("key-00000001", &ack("m-1"), now())
            .await
            .unwrap();
        assert_eq!(sent.message_id.as_deref(), Some("m-1"));
        assert_eq!(sent.envelope.message_id, "m-1");
        assert_eq!(sent.delivery_state, DeliveryState::Queued);
        assert_eq!(sent.referral_status, ReferralStatus::Requested);
        // Acknowledged rows are not forgotten.
        store.forget_pending("key-00000001").await.unwrap();
        assert!(store.sent_by_message_id("m-1").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn acknowledgements_waiting_together_are_recorded_together_and_a_failing_one_alone() {
        let (store, _dir) = testing::store().await;
        for key in ["key-00000011", "key-00000012"] {
            store
                .begin_send(&new_sent(&k_envelope(key), "aaa"))
                .await
                .unwrap();
        }
        // The batch is one transaction: the acknowledgement of a key with no pending row fails
        // it, names its place, and leaves nothing recorded.
        let requests = [
            ("key-00000011".to_owned(), ack("m-11"), now()),
            ("key-without-row".to_owned(), ack("m-lost"), now()),
            ("key-00000012".to_owned(), ack("m-12"), now()),
        ];
        let failure = store
            .write_batch(&requests.iter().collect::<Vec<_>>(), None)
            .await
            .unwrap_err();
        assert!(
            matches!(failure, BatchFailure::Item(1, ServiceError::Internal(_))),
            "{failure:?}"
        );
        assert!(store.sent_by_message_id("m-11").await.unwrap().is_none());
        // The writer answers the failed one with its error and records the others.
        let mut answers = Vec::new();
        let mut batch = Vec::new();
        for request in requests {
            let (reply, answer) = tokio::sync::oneshot::channel();
            batch.push(Waiting { request, reply });
            answers.push(answer);
        }
        store.write_waiting(batch, "acknowledgements", None).await;
        let mut outcomes = Vec::new();
        for answer in answers {
            outcomes.push(answer.await.unwrap());
        }
        assert_eq!(
            outcomes[0].as_ref().unwrap().message_id.as_deref(),
            Some("m-11")
        );
        assert!(outcomes[1].is_err());
        assert_eq!(
            outcomes[2].as_ref().unwrap().message_id.as_deref(),
            Some("m-12")
        );
        for (key, id) in [("key-00000011", "m-11"), ("key-00000012", "m-12")] {
            let row = store.sent_by_key(key).await.unwrap().unwrap();
            assert_eq!(row.message_id.as_deref(), Some(id));
            assert_eq!(row.envelope.message_id, id);
        }
    }

    #[tokio::test]
    async fn a_refused_pending_row_is_forgotten() {
        let (store, _dir) = testing::store().await;
        let envelope = k_envelope("key-00000002");
        store.begin_send(&new_sent(&envelope, "aaa")).await.unwrap();
        store.forget_pending("key-00000002").await.unwrap();
        assert!(store.sent_by_key("key-00000002").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_decision_in_the_inbox_answers_the_help_request() {
        let (store, _dir) = testing::store().await;
        let envelope = k_envelope("key-00000003");
        store.begin_send(&new_sent(&envelope, "aaa")).await.unwrap();
        store
            .mark_sent("key-00000003", &ack("m-3"), now())
            .await
            .unwrap();
        assert!(!store.receive(&decision("m-3"), now(), None).await.unwrap());
        let row = store.sent_by_message_id("m-3").await.unwrap().unwrap();
        assert_eq!(row.delivery_state, DeliveryState::Answered);
        assert_eq!(row.referral_status, ReferralStatus::Accepted);
        assert_eq!(row.answer.unwrap().message_id, "decision-1");

        // A stale live state does not move it back.
        let live = DeliveryStatus {
            message_id: "m-3".into(),
            state: DeliveryState::Delivered as i32,
            ..Default::default()
        };
        let row = store
            .record_live_state("m-3", &live, now())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.delivery_state, DeliveryState::Answered);
        assert_eq!(row.referral_status, ReferralStatus::Accepted);
    }

    #[tokio::test]
    async fn an_answer_stored_before_the_acknowledgement_is_applied() {
        let (store, _dir) = testing::store().await;
        let envelope = k_envelope("key-00000004");
        store.begin_send(&new_sent(&envelope, "aaa")).await.unwrap();
        store.receive(&decision("m-4"), now(), None).await.unwrap();
        let row = store
            .mark_sent("key-00000004", &ack("m-4"), now())
            .await
            .unwrap();
        assert_eq!(row.delivery_state, DeliveryState::Answered);
        assert_eq!(row.referral_status, ReferralStatus::Accepted);
    }

    #[tokio::test]
    async fn sent_messages_page_newest_first() {
        let (store, _dir) = testing::store().await;
        for i in 0..5 {
            let envelope = k_envelope(&format!("key-0000010{i}"));
            let at = now() + jiff::SignedDuration::from_mins(i);
            store
                .begin_send(&NewSent {
                    now: at,
                    ..new_sent(&envelope, "aaa")
                })
                .await
                .unwrap();
            let mut ack = ack(&format!("m-10{i}"));
            ack.created_at = Some(time::to_proto(at));
            store
                .mark_sent(&envelope.idempotency_key, &ack, at)
                .await
                .unwrap();
        }
        // A pending one is not listed.
        let pending = k_envelope("key-00000199");
        store.begin_send(&new_sent(&pending, "aaa")).await.unwrap();

        let page = Page::from_request(2, "").unwrap();
        let (rows, next) = store.list_sent(FormKind::Unspecified, &page).await.unwrap();
        let ids: Vec<_> = rows.iter().map(|r| r.message_id.clone().unwrap()).collect();
        assert_eq!(ids, ["m-104", "m-103"]);
        let page = Page::from_request(2, &next.unwrap().token()).unwrap();
        let (rows, next) = store.list_sent(FormKind::HelpRequest, &page).await.unwrap();
        let ids: Vec<_> = rows.iter().map(|r| r.message_id.clone().unwrap()).collect();
        assert_eq!(ids, ["m-102", "m-101"]);
        let page = Page::from_request(2, &next.unwrap().token()).unwrap();
        let (rows, next) = store.list_sent(FormKind::Unspecified, &page).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert!(next.is_none());
        let (rows, _) = store
            .list_sent(
                FormKind::HelpRequestDecision,
                &Page::from_request(0, "").unwrap(),
            )
            .await
            .unwrap();
        assert!(rows.is_empty());
    }
}
