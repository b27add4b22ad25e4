//! Filing what the partner agencies send back into the case file, inside the inbox's transaction
//! (so a message is never received without being filed, nor filed twice):
//! * an `INFORMATION_RESPONSE` answers the information request it replies to, if it comes from the
//!   agency asked and the request has no answer yet;
//! * an `ACTION_PROGRESS` sets the progress of the action rows carrying the assignment it reports
//!   on, if it comes from the agency responsible; a completed row stays completed.
//!
//! * an `INVESTIGATION_UPDATE` or a `PREVENTIVE_REGISTRATION` from the police, or a
//!   `HEALTH_NOTICE` from a health facility, is kept whole in the case's reports (the gateway
//!   admits them only from an agency working on the case), once per message; like every message
//!   of a case, only the case's curator sees it in the inbox.
//!
//! A reply to a message whose acknowledgement this service has not stored yet finds nothing here;
//! it is filed when the acknowledgement is stored ([`crate::outbox`]). Replies that match nothing
//! are kept in the inbox as received and logged by id.
//!
//! Filing does not move the case's version: the curator's own edits are not made stale by an
//! agency's report, and the report never overwrites what the curator wrote.

use jiff::Timestamp;
use prost::Message as _;
use referral_agency::forms::form;
use referral_core::{ServiceResult, db::Row as _, time};
use referral_proto::v1::{
    ActionProgress, ActionProgressState, Envelope, FormKind, InformationResponse, payload::Form,
};
use sqlx::AnyConnection;

/// Files `envelope`, received at `at`, if it is a reply the case file keeps.
pub async fn file(
    conn: &mut AnyConnection,
    envelope: &Envelope,
    at: Timestamp,
) -> ServiceResult<()> {
    match form(envelope) {
        Some(Form::InformationResponse(response)) => answer(conn, envelope, response, at).await,
        Some(Form::ActionProgress(progress)) => report(conn, envelope, progress, at).await,
        Some(Form::InvestigationUpdate(update)) => {
            partner_report(
                conn,
                envelope,
                &update.case_reference,
                update.encode_to_vec(),
                at,
            )
            .await
        }
        Some(Form::HealthNotice(notice)) => {
            partner_report(
                conn,
                envelope,
                &notice.case_reference,
                notice.encode_to_vec(),
                at,
            )
            .await
        }
        Some(Form::PreventiveRegistration(registration)) => {
            partner_report(
                conn,
                envelope,
                &registration.case_reference,
                registration.encode_to_vec(),
                at,
            )
            .await
        }
        Some(Form::InstructionAcknowledgement(acknowledgement)) => {
            crate::instructions::file_acknowledgement(conn, envelope, acknowledgement, at).await
        }
        _ => Ok(()),
    }
}

/// Files a police investigation update or a health notice in its case, if the case is this
/// commission's; otherwise it stays in the inbox as received.
async fn partner_report(
    conn: &mut AnyConnection,
    envelope: &Envelope,
    case_reference: &str,
    report: Vec<u8>,
    at: Timestamp,
) -> ServiceResult<()> {
    let known = sqlx::query("SELECT 1 FROM case_files WHERE case_reference = $1")
        .bind(case_reference)
        .fetch_optional(&mut *conn)
        .await?
        .is_some();
    if !known {
        tracing::info!(
            message_id = %envelope.message_id,
            "a partner's report on no known case; kept in the inbox"
        );
        return Ok(());
    }
    let kind = FormKind::try_from(envelope.form_kind).unwrap_or(FormKind::Unspecified);
    let filed = sqlx::query(
        "INSERT INTO case_partner_reports (message_id, case_reference, form_kind, \
         sender_agency_id, report, received_at) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(envelope.message_id.as_str())
    .bind(case_reference)
    .bind(kind.as_str_name())
    .bind(envelope.sender_agency_id.as_str())
    .bind(report)
    .bind(time::to_micros(at))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    tracing::info!(
        message_id = %envelope.message_id,
        kind = kind.as_str_name(),
        filed = filed == 1,
        "partner report received"
    );
    Ok(())
}

/// The key under which this commission queued the message `message_id` of kind `kind`.
async fn sent_key(
    conn: &mut AnyConnection,
    message_id: &str,
    kind: FormKind,
) -> ServiceResult<Option<String>> {
    if message_id.is_empty() {
        return Ok(None);
    }
    Ok(sqlx::query(
        "SELECT idempotency_key FROM sent_messages WHERE message_id = $1 AND form_kind = $2",
    )
    .bind(message_id)
    .bind(kind.as_str_name())
    .fetch_optional(&mut *conn)
    .await?
    .map(|row| row.try_get::<String, _>(0))
    .transpose()?)
}

fn replied_id<'a>(envelope: &'a Envelope, named: &'a str) -> &'a str {
    if named.is_empty() {
        &envelope.in_reply_to
    } else {
        named
    }
}

async fn answer(
    conn: &mut AnyConnection,
    envelope: &Envelope,
    response: &InformationResponse,
    at: Timestamp,
) -> ServiceResult<()> {
    let request_id = replied_id(envelope, &response.request_message_id);
    let Some(key) = sent_key(conn, request_id, FormKind::InformationRequest).await? else {
        tracing::info!(
            message_id = %envelope.message_id,
            "an information response for no known request; kept in the inbox"
        );
        return Ok(());
    };
    let filed = sqlx::query(
        "UPDATE information_requests SET response_message_id = $1, response = $2, \
         answered_at = $3 WHERE request_key = $4 AND recipient_agency_id = $5 \
         AND response IS NULL",
    )
    .bind(envelope.message_id.as_str())
    .bind(response.encode_to_vec())
    .bind(time::to_micros(at))
    .bind(key.as_str())
    .bind(envelope.sender_agency_id.as_str())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    tracing::info!(
        message_id = %envelope.message_id,
        request = %request_id,
        filed = filed == 1,
        "information response received"
    );
    Ok(())
}

async fn report(
    conn: &mut AnyConnection,
    envelope: &Envelope,
    progress: &ActionProgress,
    at: Timestamp,
) -> ServiceResult<()> {
    let assignment_id = replied_id(envelope, &progress.assignment_message_id);
    let state =
        ActionProgressState::try_from(progress.state).unwrap_or(ActionProgressState::Unspecified);
    let Some(key) = sent_key(conn, assignment_id, FormKind::ActionAssignment).await? else {
        tracing::info!(
            message_id = %envelope.message_id,
            "an action progress report for no known assignment; kept in the inbox"
        );
        return Ok(());
    };
    if state == ActionProgressState::Unspecified {
        return Ok(());
    }
    // Every row carrying the assignment (a row kept unchanged by a review carries it on).
    let filed = sqlx::query(
        "UPDATE case_actions SET progress = $1, last_note = $2, last_reported_at = $3 \
         WHERE assignment_key = $4 AND responsible_agency_id = $5 AND progress <> $6 \
         AND (last_reported_at IS NULL OR last_reported_at <= $3)",
    )
    .bind(state.as_str_name())
    .bind(progress.note.as_str())
    .bind(time::to_micros(at))
    .bind(key.as_str())
    .bind(envelope.sender_agency_id.as_str())
    .bind(ActionProgressState::Completed.as_str_name())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    tracing::info!(
        message_id = %envelope.message_id,
        assignment = %assignment_id,
        state = state.as_str_name(),
        rows = filed,
        "action progress received"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use referral_proto::v1::{InformationRequest, Payload, PlanAction};

    use super::*;
    use crate::testing::{self, CASE, now};

    fn reply(id: &str, sender: &str, in_reply_to: &str, form: Form) -> Envelope {
        Envelope {
            message_id: id.into(),
            sender_agency_id: sender.into(),
            recipient_agency_id: "commission".into(),
            in_reply_to: in_reply_to.into(),
            case_reference: CASE.into(),
            form_kind: referral_agency::forms::form_kind_of(&form) as i32,
            payload: Some(Payload { form: Some(form) }),
            ..Default::default()
        }
    }

    async fn file_one(db: &referral_core::db::Database, envelope: &Envelope) {
        let mut tx = db.begin().await.unwrap();
        file(&mut tx, envelope, now()).await.unwrap();
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn an_answer_is_filed_once_and_only_from_the_agency_asked() {
        let (db, _dir) = testing::store().await;
        testing::open_case(&db, true).await;
        testing::sent(
            &db,
            "info-key",
            Some("req-1"),
            FormKind::InformationRequest,
            "health-1",
        )
        .await;
        sqlx::query(
            "INSERT INTO information_requests (request_key, case_reference, cycle, \
             recipient_agency_id, request, requested_by, requested_at) \
             VALUES ('info-key', $1, 1, 'health-1', $2, 'curator-1', 0)",
        )
        .bind(CASE)
        .bind(InformationRequest::default().encode_to_vec())
        .execute(db.pool())
        .await
        .unwrap();
        let answer = |id: &str, sender: &str, text: &str| {
            reply(
                id,
                sender,
                "req-1",
                Form::InformationResponse(InformationResponse {
                    request_message_id: "req-1".into(),
                    case_reference: CASE.into(),
                    answer: text.into(),
                    ..Default::default()
                }),
            )
        };
        let filed = || async {
            sqlx::query("SELECT response_message_id FROM information_requests")
                .fetch_one(db.pool())
                .await
                .unwrap()
                .try_get::<Option<String>, _>(0)
                .unwrap()
        };
        file_one(&db, &answer("resp-0", "police-1", "not asked")).await;
        assert_eq!(filed().await, None);
        file_one(&db, &answer("resp-1", "health-1", "first")).await;
        assert_eq!(filed().await.as_deref(), Some("resp-1"));
        file_one(&db, &answer("resp-2", "health-1", "second")).await;
        assert_eq!(filed().await.as_deref(), Some("resp-1"));
    }

    #[tokio::test]
    async fn progress_is_filed_on_the_assigned_row_and_completion_sticks() {
        let (db, _dir) = testing::store().await;
        testing::open_case(&db, true).await;
        testing::sent(
            &db,
            "assign-key",
            Some("asg-1"),
            FormKind::ActionAssignment,
            "ngo-1",
        )
        .await;
        sqlx::query(
            "INSERT INTO case_actions (case_reference, cycle, revision, number, action, \
             responsible_agency_id, in_force, assignment_key, progress, last_note, \
             last_reported_at) VALUES ($1, 1, 0, 1, $2, 'ngo-1', 1, 'assign-key', \
             'ACTION_PROGRESS_STATE_UNSPECIFIED', '', NULL)",
        )
        .bind(CASE)
        .bind(PlanAction::default().encode_to_vec())
        .execute(db.pool())
        .await
        .unwrap();
        let report = |id: &str, sender: &str, state: ActionProgressState, note: &str| {
            reply(
                id,
                sender,
                "asg-1",
                Form::ActionProgress(ActionProgress {
                    assignment_message_id: "asg-1".into(),
                    case_reference: CASE.into(),
                    action_number: 1,
                    state: state as i32,
                    note: note.into(),
                    ..Default::default()
                }),
            )
        };
        let row = || async {
            let r = sqlx::query("SELECT progress, last_note FROM case_actions")
                .fetch_one(db.pool())
                .await
                .unwrap();
            (
                r.try_get::<String, _>(0).unwrap(),
                r.try_get::<String, _>(1).unwrap(),
            )
        };
        file_one(
            &db,
            &report("p-0", "school-1", ActionProgressState::Completed, ""),
        )
        .await;
        assert_eq!(row().await.0, "ACTION_PROGRESS_STATE_UNSPECIFIED");
        file_one(
            &db,
            &report("p-1", "ngo-1", ActionProgressState::InProgress, "started"),
        )
        .await;
        assert_eq!(
            row().await,
            ("ACTION_PROGRESS_STATE_IN_PROGRESS".into(), "started".into())
        );
        file_one(
            &db,
            &report("p-2", "ngo-1", ActionProgressState::Completed, "done"),
        )
        .await;
        file_one(
            &db,
            &report("p-3", "ngo-1", ActionProgressState::InProgress, "late"),
        )
        .await;
        assert_eq!(
            row().await,
            ("ACTION_PROGRESS_STATE_COMPLETED".into(), "done".into())
        );
    }
}
