//! What the agency derives from an envelope: the form kind its payload carries, the one-line
//! summary staff see in lists, and referral statuses from delivery states and answers.

use referral_proto::v1::{
    ActionProgressState, DeadlineKind, DeadlineState, DeliveryState, Envelope, FormKind,
    HelpRequestDecision, InformationResponse, ReferralStatus, ReviewDecision,
    help_request_decision::Outcome, payload::Form,
};

/// The sender id the gateway puts on the messages it raises itself (deadline alerts).
pub const GATEWAY_SENDER_ID: &str = "gateway";

/// The longest action text an inbox summary shows, in characters.
const SUMMARY_ACTION_CHARS: usize = 120;

/// The form kind of a payload's form.
pub fn form_kind_of(form: &Form) -> FormKind {
    match form {
        Form::HelpRequest(_) => FormKind::HelpRequest,
        Form::HelpRequestDecision(_) => FormKind::HelpRequestDecision,
        Form::ReferralLog(_) => FormKind::ReferralLog,
        Form::Assessment(_) => FormKind::Assessment,
        Form::SupportPlan(_) => FormKind::SupportPlan,
        Form::IncidentReport(_) => FormKind::IncidentReport,
        Form::IncidentSummary(_) => FormKind::IncidentSummary,
        Form::InformationRequest(_) => FormKind::InformationRequest,
        Form::InformationResponse(_) => FormKind::InformationResponse,
        Form::ActionAssignment(_) => FormKind::ActionAssignment,
        Form::ActionProgress(_) => FormKind::ActionProgress,
        Form::ReviewMinutes(_) => FormKind::ReviewMinutes,
        Form::Consultation(_) => FormKind::Consultation,
        Form::ConsultationAnswer(_) => FormKind::ConsultationAnswer,
        Form::DisclosureAlert(_) => FormKind::DisclosureAlert,
        Form::DeadlineAlert(_) => FormKind::DeadlineAlert,
        Form::InvestigationUpdate(_) => FormKind::InvestigationUpdate,
        Form::HealthNotice(_) => FormKind::HealthNotice,
        Form::ServiceReferral(_) => FormKind::ServiceReferral,
        Form::ServiceUpdate(_) => FormKind::ServiceUpdate,
        Form::SafetyMeetingNotice(_) => FormKind::SafetyMeetingNotice,
        Form::IncidentReferral(_) => FormKind::IncidentReferral,
        Form::ProtectionInstruction(_) => FormKind::ProtectionInstruction,
        Form::InstructionAcknowledgement(_) => FormKind::InstructionAcknowledgement,
        Form::PreventiveRegistration(_) => FormKind::PreventiveRegistration,
    }
}

/// The form an envelope carries, if any.
pub fn form(envelope: &Envelope) -> Option<&Form> {
    envelope.payload.as_ref()?.form.as_ref()
}

/// The decision an envelope carries, if it carries one.
pub(crate) fn decision_of(envelope: &Envelope) -> Option<&HelpRequestDecision> {
    match form(envelope)? {
        Form::HelpRequestDecision(decision) => Some(decision),
        _ => None,
    }
}

/// The information response an envelope carries, if it carries one.
pub(crate) fn information_response_of(envelope: &Envelope) -> Option<&InformationResponse> {
    match form(envelope)? {
        Form::InformationResponse(response) => Some(response),
        _ => None,
    }
}

/// Whether `envelope` is the one answer its `in_reply_to` message gets: a decision on a help
/// request, or the response to an information request. (Progress reports on an action are many,
/// so they do not answer the assignment.)
pub(crate) fn is_answer(envelope: &Envelope) -> bool {
    decision_of(envelope).is_some() || information_response_of(envelope).is_some()
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

/// The referral status of a received assignment after a progress report in `state`: only a
/// completed action is final.
pub(crate) fn progress_status(state: ActionProgressState) -> ReferralStatus {
    match state {
        ActionProgressState::Completed => ReferralStatus::Completed,
        ActionProgressState::CannotComplete => ReferralStatus::Failed,
        ActionProgressState::InProgress | ActionProgressState::Unspecified => {
            ReferralStatus::InProgress
        }
    }
}

/// The status of a message as it arrives in an inbox: a decision carries its own outcome,
/// everything else is received.
pub(crate) fn received_status(envelope: &Envelope) -> ReferralStatus {
    decision_of(envelope).map_or(ReferralStatus::Received, decision_status)
}

/// The status of a sent message: from the answer when there is one, else from where it is.
pub(crate) fn sent_status(state: DeliveryState, answer: Option<&Envelope>) -> ReferralStatus {
    if let Some(answer) = answer {
        if let Some(decision) = decision_of(answer) {
            return decision_status(decision);
        }
        if information_response_of(answer).is_some() {
            return ReferralStatus::Completed;
        }
    }
    match state {
        DeliveryState::Unspecified | DeliveryState::Queued => ReferralStatus::Requested,
        DeliveryState::Delivered | DeliveryState::Answered => ReferralStatus::Received,
        DeliveryState::RefusedByRecipient => ReferralStatus::Failed,
        DeliveryState::Withheld => ReferralStatus::OnHold,
    }
}

/// How far along a delivery state is, so that a stale answer never moves a message back.
pub(crate) fn delivery_rank(state: DeliveryState) -> u8 {
    match state {
        DeliveryState::Unspecified => 0,
        DeliveryState::Queued => 1,
        DeliveryState::Delivered | DeliveryState::RefusedByRecipient | DeliveryState::Withheld => 2,
        DeliveryState::Answered => 3,
    }
}

/// `FORM_KIND_X` style names without their prefix, lower case: `ACTION_PROGRESS_STATE_COMPLETED`
/// with prefix `ACTION_PROGRESS_STATE_` gives `completed`.
fn short_name(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_ascii_lowercase()
}

/// At most `max` characters of `text` on one line, with an ellipsis when cut.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// The one-line summary of a message, shown only to this agency's staff: the child's name for a
/// help request, the case reference (or "no further action") for a decision, and for the case's
/// messages the case reference with what the message is about.
///
/// An action assignment's summary never names the child (it carries the child's first name
/// only, and that stays in the message): the case reference and the action are enough to find
/// it, and an NGO's lists are seen by more people than the case needs.
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
        Some(Form::InformationRequest(request)) => {
            format!("{}: {}", request.case_reference, request.child_full_name)
        }
        Some(Form::InformationResponse(response)) => {
            format!("{}: information received", response.case_reference)
        }
        Some(Form::ActionAssignment(assignment)) => {
            let action = assignment.action.as_ref();
            format!(
                "{} #{}: {}",
                assignment.case_reference,
                action.map_or(0, |a| a.number),
                one_line(
                    action.map_or("", |a| a.action.as_str()),
                    SUMMARY_ACTION_CHARS
                )
            )
        }
        Some(Form::ActionProgress(progress)) => format!(
            "{} #{}: {}",
            progress.case_reference,
            progress.action_number,
            short_name(
                ActionProgressState::try_from(progress.state)
                    .unwrap_or(ActionProgressState::Unspecified)
                    .as_str_name(),
                "ACTION_PROGRESS_STATE_"
            )
        ),
        Some(Form::ReviewMinutes(minutes)) => {
            let decision = minutes
                .review
                .as_ref()
                .map_or(ReviewDecision::Unspecified, |r| {
                    ReviewDecision::try_from(r.decision).unwrap_or(ReviewDecision::Unspecified)
                });
            format!(
                "{}: review minutes ({})",
                minutes.case_reference,
                short_name(decision.as_str_name(), "REVIEW_DECISION_")
            )
        }
        Some(Form::DeadlineAlert(alert)) => {
            let deadline = alert.deadline.as_ref();
            let kind = deadline.map_or(DeadlineKind::Unspecified, |d| {
                DeadlineKind::try_from(d.kind).unwrap_or(DeadlineKind::Unspecified)
            });
            let state = DeadlineState::try_from(alert.state).unwrap_or(DeadlineState::Unspecified);
            format!(
                "{}: {} {}",
                deadline.map_or("", |d| d.case_reference.as_str()),
                short_name(kind.as_str_name(), "DEADLINE_KIND_"),
                short_name(state.as_str_name(), "DEADLINE_STATE_")
            )
        }
        Some(Form::Consultation(_)) => "consultation".to_owned(),
        Some(Form::ConsultationAnswer(_)) => "consultation answered".to_owned(),
        Some(Form::DisclosureAlert(alert)) => format!(
            "{}: opened outside the case team (break the glass)",
            alert.case_reference
        ),
        Some(Form::InvestigationUpdate(update)) => format!(
            "{}: investigation {}",
            update.case_reference,
            short_name(
                referral_proto::v1::InvestigationStatus::try_from(update.status)
                    .unwrap_or_default()
                    .as_str_name(),
                "INVESTIGATION_STATUS_"
            )
        ),
        Some(Form::HealthNotice(notice)) => format!(
            "{}: health {}",
            notice.case_reference,
            short_name(
                referral_proto::v1::HealthNoticeKind::try_from(notice.kind)
                    .unwrap_or_default()
                    .as_str_name(),
                "HEALTH_NOTICE_KIND_"
            )
        ),
        Some(Form::ServiceReferral(r)) => format!("{}: service referral", r.referral_reference),
        Some(Form::ServiceUpdate(u)) => format!(
            "{}: service {}",
            u.referral_reference,
            short_name(
                referral_proto::v1::ServiceBusinessStatus::try_from(u.business_status)
                    .unwrap_or_default()
                    .as_str_name(),
                "SERVICE_BUSINESS_STATUS_"
            )
        ),
        Some(Form::SafetyMeetingNotice(n)) => {
            format!("{}: safety team meeting", n.referral_reference)
        }
        Some(Form::IncidentReferral(r)) => {
            let severity =
                referral_proto::v1::IncidentSeverity::try_from(r.severity).unwrap_or_default();
            if r.purpose == referral_proto::v1::IncidentReferralPurpose::MedicalCare as i32 {
                format!("{}: injured child referred for care", r.incident_reference)
            } else {
                format!(
                    "{}: incident referral, {}",
                    r.incident_reference,
                    severity
                        .as_str_name()
                        .trim_start_matches("INCIDENT_SEVERITY_")
                        .to_ascii_lowercase()
                )
            }
        }
        Some(Form::ProtectionInstruction(i)) => {
            format!("{}: protection instruction", i.case_reference)
        }
        Some(Form::InstructionAcknowledgement(a)) => {
            if a.kind == referral_proto::v1::InstructionAcknowledgementKind::CarriedOut as i32 {
                format!("{}: instruction carried out", a.case_reference)
            } else {
                format!("{}: instruction acknowledged", a.case_reference)
            }
        }
        Some(Form::PreventiveRegistration(r)) => {
            format!("{}: preventive registration", r.case_reference)
        }
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

    #[test]
    fn an_assignment_summary_names_the_case_and_the_action_never_the_child() {
        use referral_proto::v1::{ActionAssignment, PlanAction};
        let envelope = Envelope {
            form_kind: FormKind::ActionAssignment as i32,
            payload: Some(Payload {
                form: Some(Form::ActionAssignment(ActionAssignment {
                    case_reference: "KTIZhK-2026-000001".into(),
                    action: Some(PlanAction {
                        number: 2,
                        action: "Психологтың апта сайынғы\nкеңесі".into(),
                        ..Default::default()
                    }),
                    child_first_name: "Әлия".into(),
                    child_age_years: 12,
                    ..Default::default()
                })),
            }),
            ..Default::default()
        };
        let line = summary(&envelope);
        assert_eq!(
            line,
            "KTIZhK-2026-000001 #2: Психологтың апта сайынғы кеңесі"
        );
        assert!(!line.contains("Әлия"));
    }

    #[test]
    fn an_information_response_completes_the_request_it_answers() {
        use referral_proto::v1::InformationResponse;
        let response = Envelope {
            form_kind: FormKind::InformationResponse as i32,
            in_reply_to: "request-1".into(),
            payload: Some(Payload {
                form: Some(Form::InformationResponse(InformationResponse::default())),
            }),
            ..Default::default()
        };
        assert!(is_answer(&response));
        assert_eq!(
            sent_status(DeliveryState::Answered, Some(&response)),
            ReferralStatus::Completed
        );
        assert_eq!(
            progress_status(ActionProgressState::CannotComplete),
            ReferralStatus::Failed
        );
    }
}
