//! Need to know on the agency's side (issue 4): reading a case through the hub, and the
//! consultation without identity (P:153-157).
//!
//! * `ReadSharedCase`: the caller's read goes to the gateway with the caller as acting user; the
//!   gateway's policy decides what of the case this person sees, records the read and answers
//!   the filtered view. The agency adds nothing and keeps nothing.
//! * `Consult`: a school (or residential institution) asks its district's commission about a
//!   concern. The form has no field for a name; the gateway refuses text that holds an IIN.
//! * `AnswerConsultation`: the commission's single answer, in reply to the consultation.

use prost::Message as _;
use referral_core::{FieldViolations, ServiceError, validate};
use referral_proto::v1::{
    ActingUser, AgencyKind, AnswerConsultationRequest, AnswerConsultationResponse, CaseView,
    ConfidentialityLabel, ConsultRequest, ConsultResponse, ConsultationAnswer, Envelope, FormKind,
    Payload, PurposeOfUse, ReadCaseRequest, ReadSharedCaseRequest, payload::Form,
};

use crate::{
    error::{AgencyResult, internal, not_found, permission_denied},
    outbound::failure_error,
    service::Context,
    staff::send_tracked,
    store::fingerprint,
};

const READ_RETRY_HINT: &str = "the gateway cannot be reached: read the case again later";

/// Reads a case through the gateway as the caller.
pub(crate) async fn read_shared_case(
    context: &Context,
    user: ActingUser,
    request: ReadSharedCaseRequest,
) -> AgencyResult<CaseView> {
    context
        .gateway
        .read_case(ReadCaseRequest {
            acting_user: Some(user),
            case_reference: request.case_reference,
            purpose_of_use: request.purpose_of_use,
            reason: request.reason,
        })
        .await
        .map_err(|failure| failure_error(failure, READ_RETRY_HINT))
}

/// Consults the district's commission without naming the child.
pub(crate) async fn consult(
    context: &Context,
    user: ActingUser,
    request: ConsultRequest,
) -> AgencyResult<ConsultResponse> {
    if !matches!(context.kind, AgencyKind::School | AgencyKind::Residential) {
        return Err(permission_denied(
            "consultations are for schools and residential institutions",
        ));
    }
    let mut v = FieldViolations::new();
    validate::idempotency_key(&request.idempotency_key, "idempotency_key", &mut v);
    let mut consultation = request.consultation.unwrap_or_default();
    // The staff member asking is the caller, whatever the request says.
    consultation.consulted_by = user.display_name.clone();
    validate::consultation(&consultation, &mut v, "consultation");
    v.into_result()?;
    let commission = context
        .directory
        .commission_of(&context.agency.district)
        .map(|c| c.id.clone())
        .ok_or_else(|| {
            internal(anyhow::anyhow!(
                "the directory has no commission for this agency's district"
            ))
        })?;
    let request_sha256 = fingerprint(&consultation.encode_to_vec());
    let envelope = Envelope {
        idempotency_key: request.idempotency_key,
        sender_agency_id: context.agency.id.clone(),
        recipient_agency_id: commission,
        acting_user: Some(user.clone()),
        purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
        form_kind: FormKind::Consultation as i32,
        confidentiality: ConfidentialityLabel::Normal as i32,
        payload: Some(Payload {
            form: Some(Form::Consultation(consultation)),
        }),
        ..Envelope::default()
    };
    let row = send_tracked(
        context,
        &user,
        envelope,
        &request_sha256,
        "a different consultation",
    )
    .await?;
    Ok(ConsultResponse {
        message_id: row.message_id.unwrap_or_default(),
    })
}

/// The commission answers a consultation it received.
pub(crate) async fn answer_consultation(
    context: &Context,
    user: ActingUser,
    request: AnswerConsultationRequest,
) -> AgencyResult<AnswerConsultationResponse> {
    if context.kind != AgencyKind::Commission {
        return Err(permission_denied(
            "only the commission answers consultations",
        ));
    }
    let mut v = FieldViolations::new();
    if request.message_id.trim().is_empty() || request.message_id.len() > 100 {
        v.add("message_id", "required, at most 100 characters");
    }
    validate::text(
        &mut v,
        "advice",
        &request.advice,
        validate::Text::required(3, 4000).multiline(),
    );
    v.into_result()?;
    let received = context
        .store
        .received(&request.message_id)
        .await?
        .filter(|r| r.form_kind == FormKind::Consultation)
        .ok_or_else(|| not_found("no consultation with this id in the inbox"))?;
    let answer = ConsultationAnswer {
        consultation_message_id: received.message_id.clone(),
        advice: request.advice,
        answered_by: user.display_name.clone(),
    };
    let request_sha256 = fingerprint(&answer.encode_to_vec());
    let envelope = Envelope {
        idempotency_key: format!("consultation-answer:{}", received.message_id),
        sender_agency_id: context.agency.id.clone(),
        recipient_agency_id: received.sender_agency_id.clone(),
        acting_user: Some(user.clone()),
        purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
        form_kind: FormKind::ConsultationAnswer as i32,
        confidentiality: ConfidentialityLabel::Normal as i32,
        in_reply_to: received.message_id,
        payload: Some(Payload {
            form: Some(Form::ConsultationAnswer(answer)),
        }),
        ..Envelope::default()
    };
    let row = send_tracked(context, &user, envelope, &request_sha256, "another answer")
        .await
        .map_err(|e| match e {
            crate::error::AgencyError::Service(ServiceError::AlreadyExists(_)) => {
                crate::error::AgencyError::Service(ServiceError::FailedPrecondition(
                    "this consultation has already been answered".into(),
                ))
            }
            other => other,
        })?;
    Ok(AnswerConsultationResponse {
        answer_message_id: row.message_id.unwrap_or_default(),
    })
}
