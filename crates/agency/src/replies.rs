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
//! the same key; if it refuses, both are undone. A retry is told from another reply by the
//! request's own fields, and sends the envelope stored the first time (its date and name), even
//! on another day.

use std::sync::Arc;

use jiff::civil::Date;
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
        Store, fingerprint,
        received::ReceivedRow,
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
    let request_sha256 = answer_fingerprint(&request);
    let envelope = answer_envelope(&context.agency.id, &user, &received, request);
    let row = send_reply(
        context,
        &user,
        &received.message_id,
        ReplyKind::Answer,
        &request_sha256,
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
    let today = context
        .clock
        .now()
        .to_zoned(context.time_zone.clone())
        .date();
    let request_sha256 = progress_fingerprint(&request);
    let envelope = progress_envelope(&context.agency.id, &user, &received, request, today);
    let row = send_reply(
        context,
        &user,
        &received.message_id,
        ReplyKind::Progress(state),
        &request_sha256,
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

/// What tells a retry of a reply from another reply under the same idempotency key: the
/// request's own fields (length-prefixed, after a tag naming the call), never what the reply's
/// envelope adds from the moment it is built (the date of a report, the caller's display name).
fn request_fingerprint(call: &str, fields: &[&[u8]]) -> String {
    let mut bytes = Vec::new();
    for field in std::iter::once(call.as_bytes()).chain(fields.iter().copied()) {
        bytes.extend_from_slice(&(field.len() as u64).to_be_bytes());
        bytes.extend_from_slice(field);
    }
    fingerprint(&bytes)
}

/// The fingerprint of an `AnswerInformationRequest`: request, answer and position.
fn answer_fingerprint(request: &AnswerInformationRequestRequest) -> String {
    request_fingerprint(
        "AnswerInformationRequest",
        &[
            request.message_id.as_bytes(),
            request.answer.as_bytes(),
            request.responder_position.as_bytes(),
        ],
    )
}

/// The fingerprint of a `ReportActionProgress`: assignment, state and note.
fn progress_fingerprint(request: &ReportActionProgressRequest) -> String {
    request_fingerprint(
        "ReportActionProgress",
        &[
            request.message_id.as_bytes(),
            &request.state.to_be_bytes(),
            request.note.as_bytes(),
        ],
    )
}

/// The `INFORMATION_RESPONSE` answering the information request `received`.
fn answer_envelope(
    sender_agency_id: &str,
    user: &ActingUser,
    received: &ReceivedRow,
    request: AnswerInformationRequestRequest,
) -> Envelope {
    let case_reference = match form(&received.envelope) {
        Some(Form::InformationRequest(asked)) => asked.case_reference.clone(),
        _ => received.envelope.case_reference.clone(),
    };
    reply_envelope(
        sender_agency_id,
        user,
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
    )
}

/// The `ACTION_PROGRESS` on the action assignment `received`, reported on `today`.
fn progress_envelope(
    sender_agency_id: &str,
    user: &ActingUser,
    received: &ReceivedRow,
    request: ReportActionProgressRequest,
    today: Date,
) -> Envelope {
    let (case_reference, action_number) = match form(&received.envelope) {
        Some(Form::ActionAssignment(assigned)) => (
            assigned.case_reference.clone(),
            assigned.action.as_ref().map_or(0, |a| a.number),
        ),
        _ => (received.envelope.case_reference.clone(), 0),
    };
    reply_envelope(
        sender_agency_id,
        user,
        &received.envelope,
        &request.idempotency_key,
        FormKind::ActionProgress,
        ConfidentialityLabel::Normal,
        Form::ActionProgress(ActionProgress {
            assignment_message_id: received.message_id.clone(),
            case_reference,
            action_number,
            state: request.state,
            note: request.note,
            reported_on: Some(validate::to_calendar_date(today)),
            reported_by: user.display_name.clone(),
        }),
    )
}

/// The envelope of a reply to `replied` (sent back to its sender, in the same case).
fn reply_envelope(
    sender_agency_id: &str,
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
        linked_referrals: Vec::new(),
        view_sections: Vec::new(),
        message_id: String::new(),
        idempotency_key: idempotency_key.to_owned(),
        sender_agency_id: sender_agency_id.to_owned(),
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
/// acknowledged row. A retry with the same key and request (`request_sha256`, see
/// [`request_fingerprint`]) gets the same message: the stored envelope is sent again, not
/// `envelope`, so a retry on another day sends the report as first made.
async fn send_reply(
    context: &Arc<Context>,
    user: &ActingUser,
    replied_id: &str,
    kind: ReplyKind,
    request_sha256: &str,
    envelope: &Envelope,
) -> Result<SentRow, ReplyError> {
    let new = NewSent {
        idempotency_key: &envelope.idempotency_key,
        request_sha256,
        acting_user_id: &user.user_id,
        envelope,
        now: context.clock.now(),
    };
    let row = claim(&context.store, replied_id, kind, &new).await?;
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

/// Claims the received message for the reply `new` and stores it pending: the row to hand to the
/// gateway. For a retry (same key, same request) that is the row stored the first time, with its
/// envelope; the same key with another request is `ALREADY_EXISTS`.
async fn claim(
    store: &Store,
    replied_id: &str,
    kind: ReplyKind,
    new: &NewSent<'_>,
) -> Result<SentRow, ReplyError> {
    match store.claim_reply(replied_id, kind, new).await? {
        Claim::New(row) => Ok(*row),
        Claim::Existing(row) if row.request_sha256 == new.request_sha256 => Ok(*row),
        Claim::Existing(_) | Claim::KeyUsedElsewhere => Err(ServiceError::AlreadyExists(
            "this idempotency key was already used for a different message".into(),
        )
        .into()),
        Claim::Closed => Err(ReplyError::Closed),
        Claim::NotFound => {
            Err(not_found("no message of this kind with this id in this agency's inbox").into())
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

    fn assignment(id: &str) -> Envelope {
        Envelope {
            linked_referrals: Vec::new(),
            view_sections: Vec::new(),
            message_id: id.into(),
            sender_agency_id: "commission".into(),
            recipient_agency_id: "ngo-1".into(),
            case_reference: "KZ-ALM-2026-000001".into(),
            form_kind: FormKind::ActionAssignment as i32,
            payload: Some(Payload {
                form: Some(Form::ActionAssignment(
                    referral_proto::v1::ActionAssignment::default(),
                )),
            }),
            ..Default::default()
        }
    }

    fn staff(display_name: &str) -> ActingUser {
        ActingUser {
            user_id: "ngo-worker".into(),
            display_name: display_name.into(),
            role: Role::NgoCaseManager as i32,
            ..Default::default()
        }
    }

    async fn claim_progress(
        store: &Store,
        received: &ReceivedRow,
        user: &ActingUser,
        request: &ReportActionProgressRequest,
        today: Date,
    ) -> Result<SentRow, ReplyError> {
        let sha = progress_fingerprint(request);
        let envelope = progress_envelope("ngo-1", user, received, request.clone(), today);
        let state = ActionProgressState::try_from(request.state).unwrap();
        let now = "2026-03-02T05:00:00Z".parse().unwrap();
        claim(
            store,
            &received.message_id,
            ReplyKind::Progress(state),
            &NewSent {
                idempotency_key: &request.idempotency_key,
                request_sha256: &sha,
                acting_user_id: &user.user_id,
                envelope: &envelope,
                now,
            },
        )
        .await
    }

    fn already_exists(result: Result<SentRow, ReplyError>) -> bool {
        match result {
            Err(ReplyError::Other(err)) => {
                tonic::Status::from(err).code() == tonic::Code::AlreadyExists
            }
            _ => false,
        }
    }

    #[tokio::test]
    async fn a_retry_on_the_next_day_sends_the_stored_report() {
        let (store, _dir) = crate::store::testing::store().await;
        let now = "2026-03-02T05:00:00Z".parse().unwrap();
        store.receive(&assignment("a-1"), now, None).await.unwrap();
        let received = store.received("a-1").await.unwrap().unwrap();
        let report = ReportActionProgressRequest {
            message_id: "a-1".into(),
            idempotency_key: "progress-0001".into(),
            state: ActionProgressState::Completed as i32,
            note: "отбасы кеңес алды".into(),
        };
        let monday = jiff::civil::date(2026, 3, 2);
        let first = claim_progress(&store, &received, &staff("Айгүл"), &report, monday)
            .await
            .unwrap_or_else(|_| panic!("the first report is claimed"));
        assert!(first.message_id.is_none());

        // The gateway was unreachable; the caller sends again after midnight (and their display
        // name changed meanwhile): the stored report, as made on Monday, is the one to send.
        let tuesday = monday.tomorrow().unwrap();
        let retry = claim_progress(&store, &received, &staff("Айгүл С."), &report, tuesday)
            .await
            .unwrap_or_else(|_| panic!("a retry is not ALREADY_EXISTS"));
        assert_eq!(retry.idempotency_key, first.idempotency_key);
        assert_eq!(retry.envelope, first.envelope);
        match form(&retry.envelope) {
            Some(Form::ActionProgress(p)) => {
                assert_eq!(p.reported_on, Some(validate::to_calendar_date(monday)));
                assert_eq!(p.reported_by, "Айгүл");
            }
            other => panic!("not a progress report: {other:?}"),
        }

        // The same key with another note is another report.
        let mut other = report.clone();
        other.note = "отбасы көшіп кетті".into();
        assert!(already_exists(
            claim_progress(&store, &received, &staff("Айгүл"), &other, tuesday).await
        ));
        // And a new key finds the action completed.
        let mut again = report.clone();
        again.idempotency_key = "progress-0002".into();
        assert!(matches!(
            claim_progress(&store, &received, &staff("Айгүл"), &again, tuesday).await,
            Err(ReplyError::Closed)
        ));
    }

    #[test]
    fn a_reply_is_the_same_request_by_its_own_fields() {
        let report = ReportActionProgressRequest {
            message_id: "a-1".into(),
            idempotency_key: "progress-0001".into(),
            state: ActionProgressState::InProgress as i32,
            note: "басталды".into(),
        };
        let mut retry = report.clone();
        retry.idempotency_key = "progress-0002".into();
        assert_eq!(progress_fingerprint(&report), progress_fingerprint(&retry));
        for change in [
            |r: &mut ReportActionProgressRequest| r.message_id = "a-2".into(),
            |r: &mut ReportActionProgressRequest| {
                r.state = ActionProgressState::Completed as i32;
            },
            |r: &mut ReportActionProgressRequest| r.note = "басталды.".into(),
        ] {
            let mut other = report.clone();
            change(&mut other);
            assert_ne!(progress_fingerprint(&report), progress_fingerprint(&other));
        }

        let answer = answer_request();
        let mut other = answer.clone();
        other.responder_position = "дәрігер".into();
        assert_ne!(answer_fingerprint(&answer), answer_fingerprint(&other));
        let mut other = answer.clone();
        other.answer.push('.');
        assert_ne!(answer_fingerprint(&answer), answer_fingerprint(&other));
        // Fields do not run into each other.
        let mut shifted = answer.clone();
        shifted.answer = format!("{}{}", answer.answer, answer.responder_position);
        shifted.responder_position.clear();
        assert_ne!(answer_fingerprint(&answer), answer_fingerprint(&shifted));
    }
}
