//! What the agency derives from an envelope: the form kind its payload carries, the one-line
//! summary staff see in lists, and referral statuses from delivery states and decisions.

use referral_proto::v1::{
    DeliveryState, Envelope, FormKind, HelpRequestDecision, ReferralStatus,
    help_request_decision::Outcome, payload::Form,
};

/// The form kind of a payload's form.
pub(crate) fn form_kind_of(form: &Form) -> FormKind {
    match form {
        Form::HelpRequest(_) => FormKind::HelpRequest,
        Form::HelpRequestDecision(_) => FormKind::HelpRequestDecision,
        Form::ReferralLog(_) => FormKind::ReferralLog,
        Form::Assessment(_) => FormKind::Assessment,
        Form::SupportPlan(_) => FormKind::SupportPlan,
        Form::IncidentReport(_) => FormKind::IncidentReport,
        Form::IncidentSummary(_) => FormKind::IncidentSummary,
    }
}

fn form(envelope: &Envelope) -> Option<&Form> {
    envelope.payload.as_ref()?.form.as_ref()
}

/// The decision an envelope carries, if it carries one.
pub(crate) fn decision_of(envelope: &Envelope) -> Option<&HelpRequestDecision> {
    match form(envelope)? {
        Form::HelpRequestDecision(decision) => Some(decision),
        _ => None,
    }
}

/// The referral status a decision sets: a case opened accepts the referral, no further action
/// rejects it.
pub(crate) fn decision_status(decision: &HelpRequestDecision) -> ReferralStatus {
    match decision.outcome {
        Some(Outcome::CaseOpened(_)) => ReferralStatus::Accepted,
        Some(Outcome::NoFurtherAction(_)) => ReferralStatus::Rejected,
        None => ReferralStatus::Received,
    }
}

/// The status of a message as it arrives in an inbox: a decision carries its own outcome,
/// everything else is received.
pub(crate) fn received_status(envelope: &Envelope) -> ReferralStatus {
    decision_of(envelope).map_or(ReferralStatus::Received, decision_status)
}

/// The status of a sent message: from the answer when there is one, else from where it is.
pub(crate) fn sent_status(state: DeliveryState, answer: Option<&Envelope>) -> ReferralStatus {
    if let Some(decision) = answer.and_then(decision_of) {
        return decision_status(decision);
    }
    match state {
        DeliveryState::Unspecified | DeliveryState::Queued => ReferralStatus::Requested,
        DeliveryState::Delivered | DeliveryState::Answered => ReferralStatus::Received,
        DeliveryState::RefusedByRecipient => ReferralStatus::Failed,
    }
}

/// How far along a delivery state is, so that a stale answer never moves a message back.
pub(crate) fn delivery_rank(state: DeliveryState) -> u8 {
    match state {
        DeliveryState::Unspecified => 0,
        DeliveryState::Queued => 1,
        DeliveryState::Delivered | DeliveryState::RefusedByRecipient => 2,
        DeliveryState::Answered => 3,
    }
}

/// The one-line summary of a message, shown only to this agency's staff: the child's name for a
/// help request, the case reference (or "no further action") for a decision.
pub(crate) fn summary(envelope: &Envelope) -> String {
    match form(envelope) {
        Some(Form::HelpRequest(k)) => k
            .child
            .as_ref()
            .map(|child| child.full_name.clone())
            .unwrap_or_default(),
        Some(Form::HelpRequestDecision(decision)) => match &decision.outcome {
            Some(Outcome::CaseOpened(case)) => case.case_reference.clone(),
            Some(Outcome::NoFurtherAction(_)) => "no further action".to_owned(),
            None => String::new(),
        },
        Some(Form::ReferralLog(log)) => log.school_name.clone(),
        Some(Form::IncidentSummary(summary)) => summary.school_name.clone(),
        Some(Form::SupportPlan(plan)) => plan
            .child
            .as_ref()
            .map(|child| child.full_name.clone())
            .unwrap_or_default(),
        Some(Form::Assessment(_) | Form::IncidentReport(_)) | None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use referral_proto::v1::{CaseOpened, NoFurtherAction, Payload};

    use super::*;

    fn decision_envelope(outcome: Outcome) -> Envelope {
        Envelope {
            form_kind: FormKind::HelpRequestDecision as i32,
            payload: Some(Payload {
                form: Some(Form::HelpRequestDecision(HelpRequestDecision {
                    outcome: Some(outcome),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_decision_sets_the_status_of_the_help_request() {
        let opened = decision_envelope(Outcome::CaseOpened(CaseOpened {
            case_reference: "KTIZhK-2026-000001".into(),
            ..Default::default()
        }));
        let closed = decision_envelope(Outcome::NoFurtherAction(NoFurtherAction {
            reason: "handled by the school".into(),
        }));
        assert_eq!(
            sent_status(DeliveryState::Answered, Some(&opened)),
            ReferralStatus::Accepted
        );
        assert_eq!(
            sent_status(DeliveryState::Answered, Some(&closed)),
            ReferralStatus::Rejected
        );
        assert_eq!(
            sent_status(DeliveryState::Queued, None),
            ReferralStatus::Requested
        );
        assert_eq!(
            sent_status(DeliveryState::Delivered, None),
            ReferralStatus::Received
        );
        assert_eq!(summary(&opened), "KTIZhK-2026-000001");
        assert_eq!(received_status(&closed), ReferralStatus::Rejected);
    }
}
