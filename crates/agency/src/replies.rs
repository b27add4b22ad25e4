//! What an agency that supports a child sends back to the commission about its case
//! (M:2466-2478, M:2496-2533): the answer to an information request the curator sent while
//! assessing, and progress reports on the support-plan rows assigned to the agency.
//!
//! * `AnswerInformationRequest`: one answer per request, idempotent by key; an answer with
//!   another key after the first is `FAILED_PRECONDITION`. The answer goes back through the
//!   gateway as `INFORMATION_RESPONSE`, in reply to the request, with the responder's name (the
//!   caller's display name) and position.
//! * `ReportActionProgress`: as many reports as needed (in progress, cannot complete, with a
//!   note), until one says completed; after that, `FAILED_PRECONDITION`. Each is an
//!   `ACTION_PROGRESS` in reply to the assignment, dated today in the district.
//!
//! Every kind but the commission replies (the commission asks and assigns), in any role its kind
//! has. The reply and the received message's new status are stored together before the gateway
//! is called; if the gateway is not reachable the caller gets `UNAVAILABLE` and sends again with
//! the same key; if it refuses, both are undone.

use std::sync::Arc;

use prost::Message as _;
use referral_core::{
    FieldViolations, ServiceError,
    directory::{kind_name, role_fits_kind, role_name},
    validate,
};
use referral_proto::v1::{
    ActingUser, ActionProgress, ActionProgressState, AgencyKind, AnswerInformationRequestRequest,
    AnswerInformationRequestResponse, ConfidentialityLabel, Envelope, FormKind,
    InformationResponse, Payload, PurposeOfUse, ReportActionProgressRequest,
    ReportActionProgressResponse, Role, payload::Form,
};

use crate::{
    checks::{self, Text},
    error::{AgencyError, AgencyResult, not_found, permission_denied},
    forms::form,
    gateway_link::GatewayFailure,
    outbound::{Pushed, failure_error, push},
    service::Context,
    store::{
        fingerprint,
        replies::{Claim, ReplyKind},
        sent::{NewSent, SentRow},
    },
};

/// The longest answer to an information request, in characters.
pub const ANSWER_MAX_CHARS: usize = 8000;

/// What a caller is told when the gateway could not take their reply.
const REPLY_RETRY_HINT: &str =
    "the gateway is not reachable; the reply is kept: send it again with the same idempotency key";

/// Whether someone with `role` in an agency of `kind` may reply to the commission about a case.
pub fn may_reply(kind: AgencyKind, role: Role) -> bool {
    kind != AgencyKind::Commission && role_fits_kind(role, kind)
}

fn authorise(context: &Context, user: &ActingUser, what: &str) -> AgencyResult<()> {
    let role = Role::try_from(user.role).unwrap_or(Role::Unspecified);
    if !may_reply(context.kind, role) {
        return Err(permission_denied(&format!(
            "a {} of a {} may not {what}",
            role_name(role),
            kind_name(context.kind)
        )));
    }
    Ok(())
}

/// Checks an answer request. Field paths are those of the request.
pub fn check_answer(request: &AnswerInformationRequestRequest, v: &mut FieldViolations) {
    checks::message_id(v, "message_id", &request.message_id);
    validate::idempotency_key(&request.idempotency_key, "idempotency_key", v);
    checks::text(
        v,
        "answer",
        &request.answer,
        Text::required(1, ANSWER_MAX_CHARS).multiline(),
    );
    checks::text(
        v,
        "responder_position",
        &request.responder_position,
        Text::optional(200),
    );
}

/// Checks a progress report. Field paths are those of the request.
pub fn check_progress(request: &ReportActionProgressRequest, v: &mut FieldViolations) {
    checks::message_id(v, "message_id", &request.message_id);
    validate::idempotency_key(&request.idempotency_key, "idempotency_key", v);
    let state = checks::required_enum::<ActionProgressState>(v, "state", request.state);
    let note = if state == Some(ActionProgressState::CannotComplete) {
        Text::required(1, checks::LONG_TEXT_MAX).multiline()
    } else {
        checks::LONG_TEXT
    };
    checks::text(v, "note", &request.note, note);
}

/// `AnswerInformationRequest`.
pub(crate) async fn answer(
    context: &Arc<Context>,
    user: ActingUser,
    request: AnswerInformationRequestRequest,
) -> AgencyResult<AnswerInformationRequestResponse> {
    authorise(context, &user, "answer an information request")?;
    let mut v = FieldViolations::new();
    check_answer(&request, &mut v);
    v.into_result()?;

    let received = context
        .store
        .received(&request.message_id)
        .await?
        .filter(|row| row.form_kind == FormKind::InformationRequest)
        .ok_or_else(|| not_found("no information request with this id in this agency's inbox"))?;
    let case_reference = match form(&received.envelope) {
        Some(Form::InformationRequest(asked)) => asked.case_reference.clone(),
        _ => received.envelope.case_reference.clone(),
    };
    let envelope = reply_envelope(
        context,
        &user,
        &received.envelope,
        &request.idempotency_key,
        FormKind::InformationResponse,
        ConfidentialityLabel::Restricted,
        Form::InformationResponse(InformationResponse {
            request_message_id: received.message_id.clone(),
            case_reference,
            answer: request.answer,
            responder_name: user.display_name.clone(),
            responder_position: request.responder_position,
        }),
    );
    let row = send_reply(
        context,
        &user,
        &received.message_id,
        ReplyKind::Answer,
        &envelope,
    )
    .await
    .map_err(|err| match err {
        ReplyError::Closed => ServiceError::FailedPrecondition(
            "this information request has already been answered".into(),
        )
        .into(),
        ReplyError::Other(err) => err,
    })?;
    tracing::info!(
        request = %received.message_id,
        response = row.message_id.as_deref().unwrap_or_default(),
        "information request answered"
    );
    Ok(AnswerInformationRequestResponse {
        response_message_id: row.message_id.unwrap_or_default(),
    })
}

/// `ReportActionProgress`.
pub(crate) async fn report_progress(
    context: &Arc<Context>,
    user: ActingUser,
    request: ReportActionProgressRequest,
) -> AgencyResult<ReportActionProgressResponse> {
    authorise(context, &user, "report progress on an action")?;
    let mut v = FieldViolations::new();
    check_progress(&request, &mut v);
    v.into_result()?;
    let state =
        ActionProgressState::try_from(request.state).unwrap_or(ActionProgressState::Unspecified);

    let received = context
        .store
        .received(&request.message_id)
        .await?
        .filter(|row| row.form_kind == FormKind::ActionAssignment)
        .ok_or_else(|| not_found("no action assignment with this id in this agency's inbox"))?;
    let (case_reference, action_number) = match form(&received.envelope) {
        Some(Form::ActionAssignment(assigned)) => (
            assigned.case_reference.clone(),
            assigned.action.as_ref().map_or(0, |a| a.number),
        ),
        _ => (received.envelope.case_reference.clone(), 0),
    };
    let today = context
        .clock
        .now()
        .to_zoned(context.time_zone.clone())
        .date();
    let envelope = reply_envelope(
        context,
        &user,
        &received.envelope,
        &request.idempotency_key,
        FormKind::ActionProgress,
        ConfidentialityLabel::Normal,
        Form::ActionProgress(ActionProgress {
            assignment_message_id: received.message_id.clone(),
            case_reference,
            action_number,
            state: state as i32,
            note: request.note,
            reported_on: Some(validate::to_calendar_date(today)),
            reported_by: user.display_name.clone(),
        }),
    );
    let row = send_reply(
        context,
        &user,
        &received.message_id,
        ReplyKind::Progress(state),
        &envelope,
    )
    .await
    .map_err(|err| match err {
        ReplyError::Closed => ServiceError::FailedPrecondition(
            "this action has already been reported completed".into(),
        )
        .into(),
        ReplyError::Other(err) => err,
    })?;
    tracing::info!(
        assignment = %received.message_id,
        progress = row.message_id.as_deref().unwrap_or_default(),
        state = state.as_str_name(),
        "action progress reported"
    );
    Ok(ReportActionProgressResponse {
        progress_message_id: row.message_id.unwrap_or_default(),
    })
}

/// The envelope of a reply to `replied` (sent back to its sender, in the same case).
fn reply_envelope(
    context: &Context,
    user: &ActingUser,
    replied: &Envelope,
    idempotency_key: &str,
    kind: FormKind,
    confidentiality: ConfidentialityLabel,
    payload: Form,
) -> Envelope {
    let purpose = PurposeOfUse::try_from(replied.purpose_of_use)
        .ok()
        .filter(|p| *p != PurposeOfUse::Unspecified)
        .unwrap_or(PurposeOfUse::CoordinationOfCare);
    Envelope {
        message_id: String::new(),
        idempotency_key: idempotency_key.to_owned(),
        sender_agency_id: context.agency.id.clone(),
        recipient_agency_id: replied.sender_agency_id.clone(),
        acting_user: Some(user.clone()),
        purpose_of_use: purpose as i32,
        case_reference: replied.case_reference.clone(),
        form_kind: kind as i32,
        confidentiality: confidentiality as i32,
        created_at: None,
        in_reply_to: replied.message_id.clone(),
        payload: Some(Payload {
            form: Some(payload),
        }),
    }
}

/// Why a reply was not sent.
enum ReplyError {
    /// The message replied to takes no more replies.
    Closed,
    Other(AgencyError),
}

impl From<AgencyError> for ReplyError {
    fn from(err: AgencyError) -> Self {
        Self::Other(err)
    }
}

impl From<ServiceError> for ReplyError {
    fn from(err: ServiceError) -> Self {
        Self::Other(err.into())
    }
}

/// Claims the received message for the reply, stores it pending and hands it to the gateway: the
/// acknowledged row. A retry with the same key and content gets the same message.
async fn send_reply(
    context: &Arc<Context>,
    user: &ActingUser,
    replied_id: &str,
    kind: ReplyKind,
    envelope: &Envelope,
) -> Result<SentRow, ReplyError> {
    let request_sha256 = fingerprint(&envelope.encode_to_vec());
    let new = NewSent {
        idempotency_key: &envelope.idempotency_key,
        request_sha256: &request_sha256,
        acting_user_id: &user.user_id,
        envelope,
        now: context.clock.now(),
    };
    let row = match context.store.claim_reply(replied_id, kind, &new).await? {
        Claim::New(row) => *row,
        Claim::Existing(row) if row.request_sha256 == request_sha256 => *row,
        Claim::Existing(_) | Claim::KeyUsedElsewhere => {
            return Err(ServiceError::AlreadyExists(
                "this idempotency key was already used for a different message".into(),
            )
            .into());
        }
        Claim::Closed => return Err(ReplyError::Closed),
        Claim::NotFound => {
            return Err(
                not_found("no message of this kind with this id in this agency's inbox").into(),
            );
        }
    };
    if row.message_id.is_some() {
        return Ok(row);
    }
    match push(context, &row).await? {
        Pushed::Sent(row) => Ok(*row),
        Pushed::Failed(failure) => {
            if matches!(failure, GatewayFailure::Refused(_)) {
                context
                    .store
                    .unclaim_reply(replied_id, kind, &row.idempotency_key)
                    .await?;
            }
            Err(failure_error(failure, REPLY_RETRY_HINT).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_but_the_commission_replies_in_its_own_roles() {
        assert!(may_reply(AgencyKind::Ngo, Role::NgoCaseManager));
        assert!(may_reply(AgencyKind::Health, Role::HealthWorker));
        assert!(may_reply(AgencyKind::School, Role::SafetyTeamMember));
        assert!(!may_reply(AgencyKind::Commission, Role::CommissionCurator));
        assert!(!may_reply(AgencyKind::School, Role::HealthWorker));
        assert!(!may_reply(AgencyKind::Police, Role::Unspecified));
    }

    fn answer_request() -> AnswerInformationRequestRequest {
        AnswerInformationRequestRequest {
            message_id: "0195f0e2-0000-7000-8000-000000000001".into(),
            idempotency_key: "answer-0001".into(),
            answer: "Бала емханада 2025 жылдан бері тіркеуде.".into(),
            responder_position: "учаскелік дәрігер".into(),
        }
    }

    #[test]
    fn an_answer_is_required_and_bounded() {
        let mut v = FieldViolations::new();
        check_answer(&answer_request(), &mut v);
        assert!(v.is_empty(), "{v}");

        let mut request = answer_request();
        request.answer = "ә".repeat(ANSWER_MAX_CHARS + 1);
        request.responder_position = "x".repeat(201);
        request.idempotency_key = "short".into();
        request.message_id.clear();
        let mut v = FieldViolations::new();
        check_answer(&request, &mut v);
        for field in [
            "answer",
            "responder_position",
            "idempotency_key",
            "message_id",
        ] {
            assert!(v.contains(field), "{field}: {v}");
        }
        let mut request = answer_request();
        request.answer = "  \n ".into();
        let mut v = FieldViolations::new();
        check_answer(&request, &mut v);
        assert!(v.contains("answer"));
    }

    #[test]
    fn a_progress_report_needs_a_state_and_a_note_when_it_cannot_be_done() {
        let report = |state: ActionProgressState, note: &str| ReportActionProgressRequest {
            message_id: "0195f0e2-0000-7000-8000-000000000001".into(),
            idempotency_key: "progress-0001".into(),
            state: state as i32,
            note: note.into(),
        };
        let fields = |r: &ReportActionProgressRequest| {
            let mut v = FieldViolations::new();
            check_progress(r, &mut v);
            v.iter().map(|f| f.field.clone()).collect::<Vec<_>>()
        };
        assert!(fields(&report(ActionProgressState::Completed, "")).is_empty());
        assert_eq!(
            fields(&report(ActionProgressState::Unspecified, "")),
            ["state"]
        );
        assert_eq!(
            fields(&report(ActionProgressState::CannotComplete, " ")),
            ["note"]
        );
        assert!(
            fields(&report(
                ActionProgressState::CannotComplete,
                "отбасы көшіп кетті"
            ))
            .is_empty()
        );
        assert_eq!(
            fields(&report(ActionProgressState::InProgress, &"x".repeat(4001))),
            ["note"]
        );
    }
}
