//! Replies this agency sends to what it received: the answer to an information request (one per
//! request) and progress reports on an action assignment (many, until one says completed).
//!
//! A reply is claimed in one transaction with the pending `sent_messages` row that carries it:
//! the received message's status moves first (`UPDATE … WHERE` the status still allows the
//! reply), which also serialises two staff members replying at once (a row lock on PostgreSQL,
//! the write lock on SQLite). If the gateway refuses the reply, both are undone together.

use referral_core::{ServiceResult, db::Row as _, time};
use referral_proto::v1::{ActionProgressState, Envelope, FormKind, ReferralStatus, payload::Form};
use sqlx::AnyConnection;

use super::{
    Store, decode,
    sent::{self, NewSent, SentRow},
};
use crate::forms::{form, progress_status};

/// What a reply looks like to the store: the received message it answers, its kind, and the
/// status rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplyKind {
    /// An information response: the request must still be unanswered.
    Answer,
    /// A progress report: the assignment must not be completed yet.
    Progress(ActionProgressState),
}

impl ReplyKind {
    /// The kind of the received message replied to.
    fn replied_kind(self) -> FormKind {
        match self {
            Self::Answer => FormKind::InformationRequest,
            Self::Progress(_) => FormKind::ActionAssignment,
        }
    }

    /// The kind of the reply.
    fn reply_kind(self) -> FormKind {
        match self {
            Self::Answer => FormKind::InformationResponse,
            Self::Progress(_) => FormKind::ActionProgress,
        }
    }

    /// The status the received message takes.
    fn status(self) -> ReferralStatus {
        match self {
            Self::Answer => ReferralStatus::Completed,
            Self::Progress(state) => progress_status(state),
        }
    }
}

/// The outcome of [`Store::claim_reply`].
#[derive(Debug)]
pub(crate) enum Claim {
    /// Claimed now: the pending row to hand to the gateway.
    New(Box<SentRow>),
    /// This key was used for a reply to this message before: that row (the caller compares its
    /// `request_sha256` to tell a retry from other content).
    Existing(Box<SentRow>),
    /// This key was used for something else.
    KeyUsedElsewhere,
    /// The message does not accept another reply (answered, or the action completed).
    Closed,
    /// No received message of the right kind has this id.
    NotFound,
}

/// The row under `key`, as a [`Claim`] for a reply of `kind` to `message_id`.
async fn by_key(
    conn: &mut AnyConnection,
    key: &str,
    message_id: &str,
    kind: ReplyKind,
) -> ServiceResult<Option<Claim>> {
    let Some(row) = sent::by_key(conn, key).await? else {
        return Ok(None);
    };
    Ok(Some(
        if row.envelope.in_reply_to == message_id && row.form_kind == kind.reply_kind() {
            Claim::Existing(Box::new(row))
        } else {
            Claim::KeyUsedElsewhere
        },
    ))
}

impl Store {
    /// Claims `message_id` for a reply and queues the reply (`new`), in one transaction.
    pub(crate) async fn claim_reply(
        &self,
        message_id: &str,
        kind: ReplyKind,
        new: &NewSent<'_>,
    ) -> ServiceResult<Claim> {
        let mut conn = self.db.pool().acquire().await?;
        if let Some(claim) = by_key(&mut conn, new.idempotency_key, message_id, kind).await? {
            return Ok(claim);
        }
        drop(conn);

        let mut tx = self.db.begin().await?;
        let completed = ReferralStatus::Completed.as_str_name();
        // An answer needs an unanswered request; a report needs an action not completed yet.
        let open_status = match kind {
            ReplyKind::Answer => ReferralStatus::Received.as_str_name(),
            ReplyKind::Progress(_) => "",
        };
        let claimed = sqlx::query(
            "UPDATE received_messages SET referral_status = $1, updated_at = $2 \
             WHERE message_id = $3 AND form_kind = $4 AND referral_status <> $5 \
             AND ($6 = '' OR referral_status = $6)",
        )
        .bind(kind.status().as_str_name())
        .bind(time::to_micros(new.now))
        .bind(message_id)
        .bind(kind.replied_kind().as_str_name())
        .bind(completed)
        .bind(open_status)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed == 1
            && let Some(row) = sent::insert_pending(&mut tx, new).await?
        {
            tx.commit().await?;
            return Ok(Claim::New(Box::new(row)));
        }
        tx.rollback().await?;

        // Not claimed: a concurrent call with the same key, a closed message, or none at all.
        let mut conn = self.db.pool().acquire().await?;
        if let Some(claim) = by_key(&mut conn, new.idempotency_key, message_id, kind).await? {
            return Ok(claim);
        }
        let exists = sqlx::query(
            "SELECT COUNT(*) FROM received_messages WHERE message_id = $1 AND form_kind = $2",
        )
        .bind(message_id)
        .bind(kind.replied_kind().as_str_name())
        .fetch_one(&mut *conn)
        .await?
        .try_get::<i64, _>(0)?;
        Ok(if exists == 0 {
            Claim::NotFound
        } else {
            Claim::Closed
        })
    }

    /// Undoes a reply the gateway refused: removes its pending row and gives the received
    /// message back the status the remaining replies give it, in one transaction.
    pub(crate) async fn unclaim_reply(
        &self,
        message_id: &str,
        kind: ReplyKind,
        key: &str,
    ) -> ServiceResult<()> {
        let mut tx = self.db.begin().await?;
        let removed = sqlx::query(
            "DELETE FROM sent_messages WHERE idempotency_key = $1 AND message_id IS NULL",
        )
        .bind(key)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if removed == 0 {
            // Sent meanwhile (a retry got through): the claim stands.
            tx.rollback().await?;
            return Ok(());
        }
        let latest = sqlx::query(
            "SELECT envelope FROM sent_messages WHERE in_reply_to = $1 AND form_kind = $2 \
             ORDER BY created_at DESC, idempotency_key DESC LIMIT 1",
        )
        .bind(message_id)
        .bind(kind.reply_kind().as_str_name())
        .fetch_optional(&mut *tx)
        .await?;
        let status = match latest {
            None => ReferralStatus::Received,
            Some(row) => {
                let envelope: Envelope = decode(&row.try_get::<Vec<u8>, _>(0)?)?;
                match form(&envelope) {
                    Some(Form::ActionProgress(p)) => progress_status(
                        ActionProgressState::try_from(p.state)
                            .unwrap_or(ActionProgressState::Unspecified),
                    ),
                    _ => kind.status(),
                }
            }
        };
        sqlx::query(
            "UPDATE received_messages SET referral_status = $1 WHERE message_id = $2 \
             AND form_kind = $3",
        )
        .bind(status.as_str_name())
        .bind(message_id)
        .bind(kind.replied_kind().as_str_name())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use referral_proto::v1::{
        ActionAssignment, ActionProgress, InformationRequest, InformationResponse, Payload,
    };

    use super::*;
    use crate::store::{fingerprint, testing};

    fn now() -> Timestamp {
        "2026-03-02T05:00:00Z".parse().unwrap()
    }

    fn received(id: &str, form: Form) -> Envelope {
        Envelope {
            message_id: id.into(),
            sender_agency_id: "commission".into(),
            recipient_agency_id: "ngo-1".into(),
            form_kind: crate::forms::form_kind_of(&form) as i32,
            payload: Some(Payload { form: Some(form) }),
            ..Default::default()
        }
    }

    fn reply(key: &str, in_reply_to: &str, form: Form) -> Envelope {
        Envelope {
            idempotency_key: key.into(),
            sender_agency_id: "ngo-1".into(),
            recipient_agency_id: "commission".into(),
            in_reply_to: in_reply_to.into(),
            form_kind: crate::forms::form_kind_of(&form) as i32,
            payload: Some(Payload { form: Some(form) }),
            ..Default::default()
        }
    }

    fn progress(state: ActionProgressState) -> Form {
        Form::ActionProgress(ActionProgress {
            state: state as i32,
            ..Default::default()
        })
    }

    async fn claim(store: &Store, id: &str, kind: ReplyKind, envelope: &Envelope) -> Claim {
        let sha = fingerprint(&prost::Message::encode_to_vec(envelope));
        store
            .claim_reply(
                id,
                kind,
                &NewSent {
                    idempotency_key: &envelope.idempotency_key,
                    request_sha256: &sha,
                    acting_user_id: "nurse",
                    envelope,
                    now: now(),
                },
            )
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn an_information_request_is_answered_once() {
        let (store, _dir) = testing::store().await;
        store
            .receive(
                &received(
                    "r-1",
                    Form::InformationRequest(InformationRequest::default()),
                ),
                now(),
                None,
            )
            .await
            .unwrap();
        let answer = |key: &str| {
            reply(
                key,
                "r-1",
                Form::InformationResponse(InformationResponse::default()),
            )
        };
        let first = answer("answer-key-1");
        assert!(matches!(
            claim(&store, "r-1", ReplyKind::Answer, &first).await,
            Claim::New(_)
        ));
        assert_eq!(
            store
                .received("r-1")
                .await
                .unwrap()
                .unwrap()
                .referral_status,
            ReferralStatus::Completed
        );
        // The same key finds the same reply; another key finds the request answered.
        assert!(matches!(
            claim(&store, "r-1", ReplyKind::Answer, &first).await,
            Claim::Existing(_)
        ));
        assert!(matches!(
            claim(&store, "r-1", ReplyKind::Answer, &answer("answer-key-2")).await,
            Claim::Closed
        ));
        assert!(matches!(
            claim(&store, "r-9", ReplyKind::Answer, &answer("answer-key-3")).await,
            Claim::NotFound
        ));
        // A refused answer is undone: the request can be answered again.
        store
            .unclaim_reply("r-1", ReplyKind::Answer, "answer-key-1")
            .await
            .unwrap();
        assert_eq!(
            store
                .received("r-1")
                .await
                .unwrap()
                .unwrap()
                .referral_status,
            ReferralStatus::Received
        );
        assert!(matches!(
            claim(&store, "r-1", ReplyKind::Answer, &answer("answer-key-2")).await,
            Claim::New(_)
        ));
    }

    #[tokio::test]
    async fn progress_is_reported_until_completed() {
        let (store, _dir) = testing::store().await;
        store
            .receive(
                &received("a-1", Form::ActionAssignment(ActionAssignment::default())),
                now(),
                None,
            )
            .await
            .unwrap();
        let report = |key: &str, state| reply(key, "a-1", progress(state));
        let working = ReplyKind::Progress(ActionProgressState::InProgress);
        let done = ReplyKind::Progress(ActionProgressState::Completed);
        let first = report("progress-key-1", ActionProgressState::InProgress);
        assert!(matches!(
            claim(&store, "a-1", working, &first).await,
            Claim::New(_)
        ));
        assert_eq!(
            store
                .received("a-1")
                .await
                .unwrap()
                .unwrap()
                .referral_status,
            ReferralStatus::InProgress
        );
        let completed = report("progress-key-2", ActionProgressState::Completed);
        assert!(matches!(
            claim(&store, "a-1", done, &completed).await,
            Claim::New(_)
        ));
        assert!(matches!(
            claim(
                &store,
                "a-1",
                working,
                &report("progress-key-3", ActionProgressState::InProgress)
            )
            .await,
            Claim::Closed
        ));
        // A key used for another message is refused.
        assert!(matches!(
            claim(&store, "a-2", working, &first).await,
            Claim::KeyUsedElsewhere
        ));
        // The completion refused by the gateway: back to in progress.
        store
            .unclaim_reply("a-1", done, "progress-key-2")
            .await
            .unwrap();
        assert_eq!(
            store
                .received("a-1")
                .await
                .unwrap()
                .unwrap()
                .referral_status,
            ReferralStatus::InProgress
        );
    }
}
