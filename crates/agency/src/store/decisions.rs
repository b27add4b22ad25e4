//! `decisions`, `cases` and `case_counters`: the commission's decision on a help request, the case
//! file it opens, and the per-year case numbers.
//!
//! A decision is written in one transaction with everything it implies: the help request's new
//! status, the case file (its number allocated from the year's counter), and the pending
//! `sent_messages` row that carries the decision back to the sender. Until the gateway
//! acknowledges that message the decision is `decision_pending_send`; if the gateway refuses it,
//! all of it is removed again in one transaction ([`Store::undo_decision`]).

use jiff::Timestamp;
use referral_core::{ServiceError, ServiceResult, db::Row as _, time};
use referral_proto::v1::{ActingUser, Envelope, FormKind, HelpRequestDecision, ReferralStatus};
use sqlx::AnyConnection;

use super::{
    Store, decode, encode, fingerprint,
    sent::{self, NewSent, SentRow},
};
use crate::{
    extension::{AgencyExtension, AgencyHost, OpenedCase},
    forms::decision_of,
};

const PENDING_SEND: &str = "decision_pending_send";
const SENT: &str = "decision_sent";
const CASE_OPENED: &str = "case_opened";
const NO_FURTHER_ACTION: &str = "no_further_action";

/// The prefix of the commission's case references: КТІЖК, transliterated.
pub(crate) const CASE_REFERENCE_PREFIX: &str = "KTIZhK";

/// The reference of case `number` of `year`: `KTIZhK-2026-000001`.
pub(crate) fn case_reference(year: i64, number: i64) -> String {
    format!("{CASE_REFERENCE_PREFIX}-{year}-{number:06}")
}

/// Whether the decision has reached the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecisionState {
    /// Recorded, but the gateway was not reachable: sent on the next call with the same key.
    PendingSend,
    /// Acknowledged by the gateway.
    Sent,
}

/// A decision as stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DecisionRow {
    pub(crate) help_request_message_id: String,
    /// The secretary's idempotency key.
    pub(crate) idempotency_key: String,
    /// The key of the `sent_messages` row carrying the decision.
    pub(crate) outgoing_key: String,
    pub(crate) decision: HelpRequestDecision,
    pub(crate) state: DecisionState,
    pub(crate) decision_message_id: Option<String>,
    pub(crate) case_reference: Option<String>,
}

impl DecisionRow {
    fn from_row(row: &sqlx::any::AnyRow) -> ServiceResult<Self> {
        Ok(Self {
            help_request_message_id: row.try_get(0)?,
            idempotency_key: row.try_get(1)?,
            outgoing_key: row.try_get(2)?,
            decision: decode(&row.try_get::<Vec<u8>, _>(3)?)?,
            state: if row.try_get::<String, _>(4)? == SENT {
                DecisionState::Sent
            } else {
                DecisionState::PendingSend
            },
            decision_message_id: row.try_get(5)?,
            case_reference: row.try_get(6)?,
        })
    }
}

/// A case file to open with the decision.
#[derive(Debug, Clone)]
pub(crate) struct NewCase<'a> {
    /// The year the case is opened in, in the district's time zone: it numbers the case.
    pub(crate) year: i64,
    pub(crate) curator_user_id: &'a str,
}

/// A decision to record.
#[derive(Debug, Clone)]
pub(crate) struct NewDecision<'a> {
    pub(crate) help_request_message_id: &'a str,
    pub(crate) idempotency_key: &'a str,
    pub(crate) outgoing_key: &'a str,
    pub(crate) decided_by: &'a str,
    pub(crate) decided_at: Timestamp,
    /// `Some` to open a case, `None` for no further action.
    pub(crate) case: Option<NewCase<'a>>,
}

/// What [`Store::record_decision`] did.
#[derive(Debug)]
pub(crate) enum Recorded {
    /// Recorded; `outgoing` is the pending message to hand to the gateway.
    New {
        decision: Box<DecisionRow>,
        outgoing: Box<SentRow>,
    },
    /// The help request is not (or no longer) undecided: someone decided first.
    AlreadyDecided,
}

/// Marks the decision carried by sent message `outgoing_key` as sent (nothing if there is none).
pub(super) async fn mark_decision_sent(
    conn: &mut AnyConnection,
    outgoing_key: &str,
    message_id: &str,
) -> ServiceResult<()> {
    sqlx::query(
        "UPDATE decisions SET state = $1, decision_message_id = $2 WHERE outgoing_key = $3",
    )
    .bind(SENT)
    .bind(message_id)
    .bind(outgoing_key)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn decision_for(
    conn: &mut AnyConnection,
    help_request_message_id: &str,
) -> ServiceResult<Option<DecisionRow>> {
    sqlx::query(
        "SELECT help_request_message_id, idempotency_key, outgoing_key, decision, state, \
         decision_message_id, case_reference FROM decisions WHERE help_request_message_id = $1",
    )
    .bind(help_request_message_id)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(DecisionRow::from_row)
    .transpose()
}

impl Store {
    /// The decision on help request `help_request_message_id`, if there is one.
    pub(crate) async fn decision_for(
        &self,
        help_request_message_id: &str,
    ) -> ServiceResult<Option<DecisionRow>> {
        let mut conn = self.db.pool().acquire().await?;
        decision_for(&mut conn, help_request_message_id).await
    }

    /// Records a decision on an undecided help request, in one transaction: the request's status,
    /// the case file with the next number of its year (when a case is opened), the pending
    /// message carrying the decision, and the decision itself. `envelope_for` builds that message
    /// from the case reference; its payload must be the decision.
    ///
    /// When a case is opened, `hook` (the service's extension, its host and the deciding user)
    /// is told inside the transaction, so what the extension keeps about the case commits with it.
    pub(crate) async fn record_decision(
        &self,
        new: &NewDecision<'_>,
        envelope_for: impl FnOnce(Option<&str>) -> Envelope,
        hook: Option<(&dyn AgencyExtension, &AgencyHost, &ActingUser)>,
    ) -> ServiceResult<Recorded> {
        let decided_at = time::to_micros(new.decided_at);
        let status = if new.case.is_some() {
            ReferralStatus::Accepted
        } else {
            ReferralStatus::Rejected
        };
        let mut tx = self.db.begin().await?;
        // First a write that only an undecided help request passes: it also serialises deciders
        // of the same request (a row lock on PostgreSQL, the write lock on SQLite).
        let claimed = sqlx::query(
            "UPDATE received_messages SET referral_status = $1, updated_at = $2 \
             WHERE message_id = $3 AND form_kind = $4 AND referral_status = $5",
        )
        .bind(status.as_str_name())
        .bind(decided_at)
        .bind(new.help_request_message_id)
        .bind(FormKind::HelpRequest.as_str_name())
        .bind(ReferralStatus::Received.as_str_name())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed == 0 {
            tx.rollback().await?;
            return Ok(Recorded::AlreadyDecided);
        }

        let case_ref = match &new.case {
            None => None,
            Some(case) => {
                let number: i64 = sqlx::query(
                    "INSERT INTO case_counters (case_year, last_number) VALUES ($1, 1) \
                     ON CONFLICT (case_year) \
                     DO UPDATE SET last_number = case_counters.last_number + 1 \
                     RETURNING last_number",
                )
                .bind(case.year)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
                let reference = case_reference(case.year, number);
                sqlx::query(
                    "INSERT INTO cases (case_reference, case_year, case_number, \
                     help_request_message_id, curator_user_id, opened_by, opened_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(reference.as_str())
                .bind(case.year)
                .bind(number)
                .bind(new.help_request_message_id)
                .bind(case.curator_user_id)
                .bind(new.decided_by)
                .bind(decided_at)
                .execute(&mut *tx)
                .await?;
                if let Some((extension, host, user)) = hook {
                    let opened = OpenedCase {
                        case_reference: &reference,
                        help_request_message_id: new.help_request_message_id,
                        curator_user_id: case.curator_user_id,
                        decided_by: user,
                        opened_at: new.decided_at,
                    };
                    extension.on_case_opened(host, &mut tx, &opened).await?;
                }
                Some(reference)
            }
        };

        let envelope = envelope_for(case_ref.as_deref());
        let decision = decision_of(&envelope).cloned().ok_or_else(|| {
            ServiceError::internal(anyhow::anyhow!("a decision envelope without a decision"))
        })?;
        let inserted = sent::insert_pending(
            &mut tx,
            &NewSent {
                idempotency_key: new.outgoing_key,
                request_sha256: &fingerprint(&encode(&envelope)),
                acting_user_id: new.decided_by,
                envelope: &envelope,
                now: new.decided_at,
            },
        )
        .await?
        .is_some();
        if !inserted {
            // The key is derived from the help request and the secretary's key, and both rows
            // are removed together: a leftover row means the store was edited by hand.
            return Err(ServiceError::internal(anyhow::anyhow!(
                "the decision's outgoing key is already in use"
            )));
        }
        sqlx::query(
            "INSERT INTO decisions (help_request_message_id, idempotency_key, outcome, \
             case_reference, decided_by, decided_at, decision, outgoing_key, state, \
             decision_message_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL)",
        )
        .bind(new.help_request_message_id)
        .bind(new.idempotency_key)
        .bind(if new.case.is_some() {
            CASE_OPENED
        } else {
            NO_FURTHER_ACTION
        })
        .bind(case_ref.as_deref())
        .bind(new.decided_by)
        .bind(decided_at)
        .bind(encode(&decision))
        .bind(new.outgoing_key)
        .bind(PENDING_SEND)
        .execute(&mut *tx)
        .await?;

        let decision = decision_for(&mut tx, new.help_request_message_id).await?;
        let outgoing = sent::by_key(&mut tx, new.outgoing_key).await?;
        tx.commit().await?;
        match (decision, outgoing) {
            (Some(decision), Some(outgoing)) => Ok(Recorded::New {
                decision: Box::new(decision),
                outgoing: Box::new(outgoing),
            }),
            _ => Err(ServiceError::internal(anyhow::anyhow!(
                "a recorded decision vanished"
            ))),
        }
    }

    /// Removes a decision the gateway refused to carry, with its case file and pending message,
    /// and makes the help request undecided again, in one transaction. A decision already sent
    /// is kept. The extension in `hook` removes what it keeps about the case first.
    pub(crate) async fn undo_decision(
        &self,
        help_request_message_id: &str,
        hook: Option<(&dyn AgencyExtension, &AgencyHost)>,
    ) -> ServiceResult<()> {
        let mut tx = self.db.begin().await?;
        let Some(decision) = decision_for(&mut tx, help_request_message_id).await? else {
            return Ok(());
        };
        if decision.state == DecisionState::Sent {
            return Ok(());
        }
        if let (Some((extension, host)), Some(reference)) = (hook, &decision.case_reference) {
            extension
                .on_case_withdrawn(host, &mut tx, reference)
                .await?;
        }
        sqlx::query("DELETE FROM decisions WHERE help_request_message_id = $1")
            .bind(help_request_message_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM cases WHERE help_request_message_id = $1")
            .bind(help_request_message_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM sent_messages WHERE idempotency_key = $1 AND message_id IS NULL")
            .bind(decision.outgoing_key.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE received_messages SET referral_status = $1 WHERE message_id = $2")
            .bind(ReferralStatus::Received.as_str_name())
            .bind(help_request_message_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The number of case files opened (for tests and reports).
    #[cfg(test)]
    pub(crate) async fn case_count(&self) -> ServiceResult<i64> {
        Ok(sqlx::query("SELECT COUNT(*) FROM cases")
            .fetch_one(self.db.pool())
            .await?
            .try_get(0)?)
    }
}

#[cfg(test)]
mod tests {
    use referral_proto::v1::{
        CaseOpened, DeliveryState, HelpRequest, NoFurtherAction, Payload, SendResponse,
        help_request_decision::Outcome, payload::Form,
    };

    use super::*;
    use crate::store::testing;

    fn now() -> Timestamp {
        "2026-12-31T20:00:00Z".parse().unwrap()
    }

    async fn receive_k(store: &Store, id: &str) {
        let k = Envelope {
            message_id: id.into(),
            sender_agency_id: "school-1".into(),
            recipient_agency_id: "commission".into(),
            form_kind: FormKind::HelpRequest as i32,
            payload: Some(Payload {
                form: Some(Form::HelpRequest(HelpRequest::default())),
            }),
            ..Default::default()
        };
        store.receive(&k, now(), None).await.unwrap();
    }

    fn envelope_for(k_id: &str, key: &str, case_ref: Option<&str>) -> Envelope {
        let outcome = match case_ref {
            Some(reference) => Outcome::CaseOpened(CaseOpened {
                case_reference: reference.into(),
                curator_user_id: "curator".into(),
                ..Default::default()
            }),
            None => Outcome::NoFurtherAction(NoFurtherAction {
                reason: "handled".into(),
            }),
        };
        Envelope {
            idempotency_key: key.into(),
            sender_agency_id: "commission".into(),
            recipient_agency_id: "school-1".into(),
            in_reply_to: k_id.into(),
            case_reference: case_ref.unwrap_or_default().into(),
            form_kind: FormKind::HelpRequestDecision as i32,
            payload: Some(Payload {
                form: Some(Form::HelpRequestDecision(HelpRequestDecision {
                    help_request_message_id: k_id.into(),
                    outcome: Some(outcome),
                    decided_by: "secretary".into(),
                    decided_at: Some(time::to_proto(now())),
                })),
            }),
            ..Default::default()
        }
    }

    async fn decide(store: &Store, k_id: &str, key: &str, year: Option<i64>) -> Recorded {
        let outgoing = format!("decision-{key}");
        let new = NewDecision {
            help_request_message_id: k_id,
            idempotency_key: key,
            outgoing_key: &outgoing,
            decided_by: "secretary",
            decided_at: now(),
            case: year.map(|year| NewCase {
                year,
                curator_user_id: "curator",
            }),
        };
        store
            .record_decision(&new, |r| envelope_for(k_id, &outgoing, r), None)
            .await
            .unwrap()
    }

    fn case_ref_of(recorded: &Recorded) -> Option<String> {
        match recorded {
            Recorded::New { decision, .. } => decision.case_reference.clone(),
            Recorded::AlreadyDecided => None,
        }
    }

    #[test]
    fn case_references_are_numbered_per_year() {
        assert_eq!(case_reference(2026, 1), "KTIZhK-2026-000001");
        assert_eq!(case_reference(2027, 123_456), "KTIZhK-2027-123456");
    }

    #[tokio::test]
    async fn cases_are_numbered_per_year_and_a_request_is_decided_once() {
        let (store, _dir) = testing::store().await;
        for id in ["k-1", "k-2", "k-3", "k-4"] {
            receive_k(&store, id).await;
        }
        let first = decide(&store, "k-1", "key-1", Some(2026)).await;
        assert_eq!(case_ref_of(&first).as_deref(), Some("KTIZhK-2026-000001"));
        let Recorded::New { decision, outgoing } = &first else {
            panic!("not recorded")
        };
        assert_eq!(decision.state, DecisionState::PendingSend);
        assert!(outgoing.message_id.is_none());
        assert_eq!(outgoing.envelope.case_reference, "KTIZhK-2026-000001");

        let second = decide(&store, "k-2", "key-2", Some(2026)).await;
        assert_eq!(case_ref_of(&second).as_deref(), Some("KTIZhK-2026-000002"));
        let next_year = decide(&store, "k-3", "key-3", Some(2027)).await;
        assert_eq!(
            case_ref_of(&next_year).as_deref(),
            Some("KTIZhK-2027-000001")
        );
        let no_case = decide(&store, "k-4", "key-4", None).await;
        assert!(matches!(no_case, Recorded::New { .. }));
        assert_eq!(case_ref_of(&no_case), None);
        assert_eq!(
            store
                .received("k-4")
                .await
                .unwrap()
                .unwrap()
                .referral_status,
            ReferralStatus::Rejected
        );

        // Deciding again, with any key, records nothing more.
        assert!(matches!(
            decide(&store, "k-1", "key-9", Some(2026)).await,
            Recorded::AlreadyDecided
        ));
        assert_eq!(store.case_count().await.unwrap(), 3);
        // Nothing is decided that was not received.
        assert!(matches!(
            decide(&store, "k-unknown", "key-8", None).await,
            Recorded::AlreadyDecided
        ));
    }

    #[tokio::test]
    async fn a_sent_decision_is_marked_and_a_refused_one_undone() {
        let (store, _dir) = testing::store().await;
        receive_k(&store, "k-1").await;
        receive_k(&store, "k-2").await;
        decide(&store, "k-1", "key-1", Some(2026)).await;
        let ack = SendResponse {
            message_id: "d-1".into(),
            state: DeliveryState::Queued as i32,
            ..Default::default()
        };
        store
            .mark_sent("decision-key-1", &ack, now())
            .await
            .unwrap();
        let decision = store.decision_for("k-1").await.unwrap().unwrap();
        assert_eq!(decision.state, DecisionState::Sent);
        assert_eq!(decision.decision_message_id.as_deref(), Some("d-1"));
        // A sent decision is never undone.
        store.undo_decision("k-1", None).await.unwrap();
        assert!(store.decision_for("k-1").await.unwrap().is_some());

        decide(&store, "k-2", "key-2", Some(2026)).await;
        store.undo_decision("k-2", None).await.unwrap();
        assert!(store.decision_for("k-2").await.unwrap().is_none());
        assert!(store.sent_by_key("decision-key-2").await.unwrap().is_none());
        assert_eq!(store.case_count().await.unwrap(), 1);
        assert_eq!(
            store
                .received("k-2")
                .await
                .unwrap()
                .unwrap()
                .referral_status,
            ReferralStatus::Received
        );
        // It can be decided again; the refused case's number is not reused.
        let again = decide(&store, "k-2", "key-3", Some(2026)).await;
        assert_eq!(case_ref_of(&again).as_deref(), Some("KTIZhK-2026-000003"));
    }
}
