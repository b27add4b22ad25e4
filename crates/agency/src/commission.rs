//! The commission's decision on a help request K (M:2393-2418): open a case file with a curator
//! from the commission's staff, or record "no further action" with a reason, and send the decision
//! back to the agency that asked.
//!
//! Only a commission service decides, and only its secretary or chair; everyone else is
//! `PERMISSION_DENIED`. The decision, the case file (numbered `KTIZhK-<year>-<nnnnnn>` per year in
//! the district's time zone) and the message carrying the decision are written in one transaction
//! before the gateway is called. If the gateway is not reachable the decision stays recorded as
//! `decision_pending_send`, the caller gets `UNAVAILABLE`, and deciding again with the same
//! idempotency key sends it (the gateway de-duplicates). If the gateway refuses it, the decision
//! is removed again, so nothing half-written remains.
//!
//! The commission service's extension (`referral-commission`) is told of the case inside the
//! decision's transaction (it starts the case file and records the `CASE_OPENED` event for the
//! gateway's deadline engine there), of its withdrawal inside the undoing one, and after the
//! decision was handed to the gateway (so the event goes out only once the decision has).

use std::sync::Arc;

use referral_core::{FieldViolations, ServiceError, directory::role_name, time, validate};
use referral_proto::v1::{
    ActingUser, AgencyKind, CaseOpened, ConfidentialityLabel, DecideHelpRequestRequest,
    DecideHelpRequestResponse, Envelope, FormKind, HelpRequestDecision, NoFurtherAction, Payload,
    PurposeOfUse, Role, decide_help_request_request, help_request_decision::Outcome, payload::Form,
};

use crate::{
    error::{AgencyResult, internal, not_found, permission_denied},
    gateway_link::GatewayFailure,
    outbound::{Pushed, failure_error, push},
    service::Context,
    store::{
        decisions::{DecisionRow, DecisionState, NewCase, NewDecision, Recorded},
        fingerprint,
        sent::SentRow,
    },
};

/// The roles that decide on help requests.
pub const DECIDER_ROLES: &[Role] = &[Role::CommissionSecretary, Role::CommissionChair];

/// Whether someone with `role` in an agency of `kind` may decide on help requests.
pub fn may_decide(kind: AgencyKind, role: Role) -> bool {
    kind == AgencyKind::Commission && DECIDER_ROLES.contains(&role)
}

/// The idempotency key of the message carrying a decision: derived from the help request and the
/// secretary's key, so deciding again with the same key sends the same message, and one key used
/// on two requests gives two messages.
pub fn decision_idempotency_key(help_request_message_id: &str, request_key: &str) -> String {
    let digest = fingerprint(format!("{help_request_message_id}\n{request_key}").as_bytes());
    format!("decision-{}", &digest[..40])
}

/// What a caller is told when the gateway could not take the decision.
const DECIDE_RETRY_HINT: &str = "the gateway is not reachable; the decision is recorded and will \
                                 be sent when you decide again with the same idempotency key";

/// `DecideHelpRequest`.
pub(crate) async fn decide(
    context: &Arc<Context>,
    user: ActingUser,
    request: DecideHelpRequestRequest,
) -> AgencyResult<DecideHelpRequestResponse> {
    let role = Role::try_from(user.role).unwrap_or(Role::Unspecified);
    if context.kind != AgencyKind::Commission {
        return Err(permission_denied(
            "only the commission decides on help requests",
        ));
    }
    if !may_decide(context.kind, role) {
        return Err(permission_denied(&format!(
            "only the commission's secretary or chair decides on help requests, not a {}",
            role_name(role)
        )));
    }
    let mut v = FieldViolations::new();
    validate::decide_help_request(&request, &mut v);
    v.into_result()?;

    let help_request = context
        .store
        .received(&request.message_id)
        .await?
        .filter(|row| row.form_kind == FormKind::HelpRequest)
        .ok_or_else(|| not_found("no help request with this id in this commission's inbox"))?;
    if let Some(existing) = context.store.decision_for(&help_request.message_id).await? {
        return replay(context, existing, &request.idempotency_key).await;
    }

    let curator = match &request.outcome {
        Some(decide_help_request_request::Outcome::OpenCase(open)) => Some(
            context
                .directory
                .user(&context.agency.id, &open.curator_user_id)
                .filter(|s| s.role() == Role::CommissionCurator)
                .ok_or_else(|| {
                    ServiceError::invalid_field(
                        "open_case.curator_user_id",
                        "must be a curator of this commission",
                    )
                })?,
        ),
        _ => None,
    };
    let reason = match &request.outcome {
        Some(decide_help_request_request::Outcome::NoFurtherAction(nfa)) => nfa.reason.clone(),
        _ => String::new(),
    };

    let decided_at = context.clock.now();
    let year = i64::from(decided_at.to_zoned(context.time_zone.clone()).year());
    let outgoing_key = decision_idempotency_key(&help_request.message_id, &request.idempotency_key);
    let new = NewDecision {
        help_request_message_id: &help_request.message_id,
        idempotency_key: &request.idempotency_key,
        outgoing_key: &outgoing_key,
        decided_by: &user.user_id,
        decided_at,
        case: curator.map(|c| NewCase {
            year,
            curator_user_id: &c.user_id,
        }),
    };
    let envelope_for = |case_reference: Option<&str>| {
        let outcome = match (case_reference, curator) {
            (Some(reference), Some(curator)) => Outcome::CaseOpened(CaseOpened {
                case_reference: reference.to_owned(),
                curator_user_id: curator.user_id.clone(),
                curator_name: curator.full_name.clone(),
                curator_contact: curator.contact.clone(),
            }),
            _ => Outcome::NoFurtherAction(NoFurtherAction {
                reason: reason.clone(),
            }),
        };
        Envelope {
            linked_referrals: Vec::new(),
            view_sections: Vec::new(),
            message_id: String::new(),
            idempotency_key: outgoing_key.clone(),
            sender_agency_id: context.agency.id.clone(),
            recipient_agency_id: help_request.sender_agency_id.clone(),
            acting_user: Some(user.clone()),
            purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
            case_reference: case_reference.unwrap_or_default().to_owned(),
            form_kind: FormKind::HelpRequestDecision as i32,
            confidentiality: ConfidentialityLabel::Normal as i32,
            created_at: None,
            in_reply_to: help_request.message_id.clone(),
            payload: Some(Payload {
                form: Some(Form::HelpRequestDecision(HelpRequestDecision {
                    help_request_message_id: help_request.message_id.clone(),
                    outcome: Some(outcome),
                    decided_by: user.user_id.clone(),
                    decided_at: Some(time::to_proto(decided_at)),
                })),
            }),
        }
    };

    let extension = context.extension();
    let hook = extension
        .as_ref()
        .map(|(ext, host)| (ext.as_ref() as &dyn crate::AgencyExtension, host, &user));
    match context
        .store
        .record_decision(&new, envelope_for, hook)
        .await?
    {
        Recorded::New { decision, outgoing } => {
            tracing::info!(
                help_request = %help_request.message_id,
                case_reference = decision.case_reference.as_deref().unwrap_or_default(),
                "help request decided"
            );
            send(context, &decision, &outgoing).await
        }
        // Someone decided between our check and our write.
        Recorded::AlreadyDecided => {
            let existing = context
                .store
                .decision_for(&help_request.message_id)
                .await?
                .ok_or_else(|| {
                    ServiceError::FailedPrecondition(
                        "this help request is being decided by someone else".into(),
                    )
                })?;
            replay(context, existing, &request.idempotency_key).await
        }
    }
}

/// Answers a decision request on a help request that is already decided: the same result for
/// the same idempotency key (sending it first if it is still pending), `FAILED_PRECONDITION` for
/// any other key.
async fn replay(
    context: &Arc<Context>,
    existing: DecisionRow,
    idempotency_key: &str,
) -> AgencyResult<DecideHelpRequestResponse> {
    if existing.idempotency_key != idempotency_key {
        let hint = match existing.state {
            DecisionState::Sent => "this help request has already been decided",
            DecisionState::PendingSend => {
                "this help request has already been decided; the decision is not sent yet: \
                 decide again with the original idempotency key to send it"
            }
        };
        return Err(ServiceError::FailedPrecondition(hint.into()).into());
    }
    match existing.state {
        DecisionState::Sent => Ok(response(&existing, existing.decision_message_id.as_deref())),
        DecisionState::PendingSend => {
            let outgoing = context
                .store
                .sent_by_key(&existing.outgoing_key)
                .await?
                .ok_or_else(|| internal(anyhow::anyhow!("a pending decision has no message")))?;
            match &outgoing.message_id {
                // Sent by a concurrent call in the meantime.
                Some(id) => Ok(response(&existing, Some(id))),
                None => send(context, &existing, &outgoing).await,
            }
        }
    }
}

/// Hands a recorded decision to the gateway.
async fn send(
    context: &Arc<Context>,
    decision: &DecisionRow,
    outgoing: &SentRow,
) -> AgencyResult<DecideHelpRequestResponse> {
    match push(context, outgoing).await? {
        Pushed::Sent(row) => {
            context.after_commit().await;
            Ok(response(decision, row.message_id.as_deref()))
        }
        Pushed::Failed(failure) => {
            if !matches!(failure, GatewayFailure::Unreachable(_)) {
                // Refused: the decision is not kept half-done.
                let extension = context.extension();
                let hook = extension
                    .as_ref()
                    .map(|(ext, host)| (ext.as_ref() as &dyn crate::AgencyExtension, host));
                context
                    .store
                    .undo_decision(&decision.help_request_message_id, hook)
                    .await?;
            }
            Err(failure_error(failure, DECIDE_RETRY_HINT))
        }
    }
}

fn response(decision: &DecisionRow, message_id: Option<&str>) -> DecideHelpRequestResponse {
    DecideHelpRequestResponse {
        decision: Some(decision.decision.clone()),
        decision_message_id: message_id.unwrap_or_default().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_commission_secretary_or_chair_decides() {
        assert!(may_decide(
            AgencyKind::Commission,
            Role::CommissionSecretary
        ));
        assert!(may_decide(AgencyKind::Commission, Role::CommissionChair));
        assert!(!may_decide(AgencyKind::Commission, Role::CommissionCurator));
        assert!(!may_decide(AgencyKind::School, Role::CommissionSecretary));
    }

    #[test]
    fn decision_keys_are_stable_valid_and_per_request() {
        let a = decision_idempotency_key("k-1", "secretary-key-1");
        assert_eq!(a, decision_idempotency_key("k-1", "secretary-key-1"));
        assert_ne!(a, decision_idempotency_key("k-2", "secretary-key-1"));
        let mut v = FieldViolations::new();
        validate::idempotency_key(&a, "idempotency_key", &mut v);
        assert!(v.is_empty(), "{v}");
    }
}
