//! The gateway's own checks of the case messages (information request and response, action
//! assignment and progress, review minutes) and of case events. The gateway never trusts a
//! client's validation: every field is checked again here.
//!
//! As everywhere in the hub, a violation names the field and says what is expected, never what
//! was sent, so no personal data reaches an error or a log line. Text lengths are counted in
//! characters; "required" means something other than whitespace.

use std::collections::BTreeSet;

use jiff::civil::Date;
use referral_core::{
    FieldViolations, time,
    validate::{self, LONG_TEXT_MAX, Text},
};
use referral_proto::v1::{
    ActionAssignment, ActionDeadline, ActionProgress, ActionProgressState, CalendarDate, CaseEvent,
    CaseEventKind, ConsultationAnswer, HealthNotice, HealthNoticeKind, IncidentSummary,
    InformationRequest, InformationResponse, InvestigationStatus, InvestigationUpdate, PlanAction,
    PlanReview, ReviewDecision, ReviewMinutes, RiskLevel,
};

/// Longest case reference (as the decision that opens a case allows).
pub(crate) const CASE_REFERENCE_MAX: usize = 100;
/// Longest answer to an information request (the commission's service accepts the same).
const ANSWER_MAX: usize = 8000;
/// Longest free text (questions, notes, actions).
/// Longest short text (names, positions, contacts, ids).
const SHORT_TEXT_MAX: usize = 200;
/// Most action rows one plan or review may carry.
const MAX_ACTIONS: usize = 200;
/// Most participants of one review meeting.
const MAX_PARTICIPANTS: usize = 100;

/// Checks one single-line text field through the rule every form shares
/// (`referral_core::validate::text`).
fn text(v: &mut FieldViolations, field: String, value: &str, required: bool, max: usize) {
    text_rule(v, field, value, required, max, false);
}

fn long_text(v: &mut FieldViolations, field: String, value: &str, required: bool) {
    text_rule(v, field, value, required, LONG_TEXT_MAX, true);
}

fn text_rule(
    v: &mut FieldViolations,
    field: String,
    value: &str,
    required: bool,
    max: usize,
    multiline: bool,
) {
    let rule = if required {
        Text::required(1, max)
    } else {
        Text::optional(max)
    };
    let rule = if multiline { rule.multiline() } else { rule };
    validate::text(v, &field, value, rule);
}

/// Whether a date field is absent (or all zero).
pub(crate) fn is_unset(d: Option<&CalendarDate>) -> bool {
    d.is_none_or(|d| *d == CalendarDate::default())
}

/// A required calendar date; `None` (with a violation) when it is missing or not a real date.
pub(crate) fn required_date(
    v: &mut FieldViolations,
    field: String,
    d: Option<&CalendarDate>,
) -> Option<Date> {
    let date = d.and_then(validate::calendar_date);
    if date.is_none() {
        v.add(field, "required: a real calendar date");
    }
    date
}

/// An optional calendar date: absent (or all zero) is fine, otherwise it must be real.
pub(crate) fn optional_date(
    v: &mut FieldViolations,
    field: String,
    d: Option<&CalendarDate>,
) -> Option<Date> {
    match d {
        None => None,
        Some(d) if *d == CalendarDate::default() => None,
        Some(d) => {
            let date = validate::calendar_date(d);
            if date.is_none() {
                v.add(field, "must be a real calendar date");
            }
            date
        }
    }
}

/// A required date (see [`required_date`]) that is not after `today`.
pub(crate) fn required_past_date(
    v: &mut FieldViolations,
    field: String,
    d: Option<&CalendarDate>,
    today: Date,
) -> Option<Date> {
    let date = required_date(v, field.clone(), d)?;
    not_after(v, field, date, today)
}

/// An optional date (see [`optional_date`]) that, when given, is not after `today`.
pub(crate) fn optional_past_date(
    v: &mut FieldViolations,
    field: String,
    d: Option<&CalendarDate>,
    today: Date,
) -> Option<Date> {
    let date = optional_date(v, field.clone(), d)?;
    not_after(v, field, date, today)
}

fn not_after(v: &mut FieldViolations, field: String, date: Date, today: Date) -> Option<Date> {
    if date > today {
        v.add(field, "must not be in the future");
        None
    } else {
        Some(date)
    }
}

/// The case reference of a case message: required, at most 100 characters.
pub(crate) fn case_reference(v: &mut FieldViolations, field: String, value: &str) {
    text(v, field, value, true, CASE_REFERENCE_MAX);
}

/// INFORMATION_REQUEST: the curator asks an agency that knows the child.
pub(crate) fn information_request(r: &InformationRequest, v: &mut FieldViolations, p: &str) {
    case_reference(v, format!("{p}.case_reference"), &r.case_reference);
    text(
        v,
        format!("{p}.child_full_name"),
        &r.child_full_name,
        true,
        SHORT_TEXT_MAX,
    );
    optional_date(
        v,
        format!("{p}.child_date_of_birth"),
        r.child_date_of_birth.as_ref(),
    );
    long_text(v, format!("{p}.questions"), &r.questions, true);
    optional_date(v, format!("{p}.answer_by"), r.answer_by.as_ref());
    text(
        v,
        format!("{p}.curator_user_id"),
        &r.curator_user_id,
        true,
        SHORT_TEXT_MAX,
    );
    text(
        v,
        format!("{p}.curator_name"),
        &r.curator_name,
        true,
        SHORT_TEXT_MAX,
    );
    text(
        v,
        format!("{p}.curator_contact"),
        &r.curator_contact,
        false,
        SHORT_TEXT_MAX,
    );
}

/// INFORMATION_RESPONSE: the agency's single answer to a request it received.
pub(crate) fn information_response(
    r: &InformationResponse,
    in_reply_to: &str,
    v: &mut FieldViolations,
    p: &str,
) {
    if r.request_message_id != in_reply_to {
        v.add(
            format!("{p}.request_message_id"),
            "must be the message the envelope replies to",
        );
    }
    case_reference(v, format!("{p}.case_reference"), &r.case_reference);
    // An answer may be longer than other free text: the agency's whole account of the child.
    text_rule(v, format!("{p}.answer"), &r.answer, true, ANSWER_MAX, true);
    text(
        v,
        format!("{p}.responder_name"),
        &r.responder_name,
        true,
        SHORT_TEXT_MAX,
    );
    text(
        v,
        format!("{p}.responder_position"),
        &r.responder_position,
        false,
        SHORT_TEXT_MAX,
    );
}

/// One action row of a plan (M) or of a review: number, action, due date, who and how.
fn plan_action(a: &PlanAction, v: &mut FieldViolations, p: &str) {
    if a.number == 0 {
        v.add(format!("{p}.number"), "required: 1 or more");
    }
    long_text(v, format!("{p}.action"), &a.action, true);
    required_date(v, format!("{p}.due_on"), a.due_on.as_ref());
    text(
        v,
        format!("{p}.responsible_person"),
        &a.responsible_person,
        false,
        SHORT_TEXT_MAX,
    );
    text(
        v,
        format!("{p}.responsible_agency_id"),
        &a.responsible_agency_id,
        false,
        SHORT_TEXT_MAX,
    );
    long_text(v, format!("{p}.method"), &a.method, false);
}

/// Action rows: each valid, numbers unique.
fn plan_actions(actions: &[PlanAction], v: &mut FieldViolations, p: &str) {
    if actions.len() > MAX_ACTIONS {
        v.add(p.to_owned(), format!("at most {MAX_ACTIONS} rows"));
        return;
    }
    let mut numbers = BTreeSet::new();
    for (i, a) in actions.iter().enumerate() {
        plan_action(a, v, &format!("{p}[{i}]"));
        if a.number != 0 && !numbers.insert(a.number) {
            v.add(format!("{p}[{i}].number"), "must be unique among the rows");
        }
    }
}

/// ACTION_ASSIGNMENT: one row of M, sent to the agency that carries it out (`recipient`).
pub(crate) fn action_assignment(
    a: &ActionAssignment,
    recipient: &str,
    v: &mut FieldViolations,
    p: &str,
) {
    case_reference(v, format!("{p}.case_reference"), &a.case_reference);
    match &a.action {
        None => v.add(format!("{p}.action"), "required"),
        Some(action) => {
            plan_action(action, v, &format!("{p}.action"));
            if action.responsible_agency_id != recipient {
                v.add(
                    format!("{p}.action.responsible_agency_id"),
                    "must be the recipient agency",
                );
            }
        }
    }
    text(
        v,
        format!("{p}.child_first_name"),
        &a.child_first_name,
        true,
        SHORT_TEXT_MAX,
    );
    if a.child_age_years > 25 {
        v.add(format!("{p}.child_age_years"), "at most 25");
    }
    text(
        v,
        format!("{p}.curator_name"),
        &a.curator_name,
        true,
        SHORT_TEXT_MAX,
    );
    text(
        v,
        format!("{p}.curator_contact"),
        &a.curator_contact,
        false,
        SHORT_TEXT_MAX,
    );
}

/// ACTION_PROGRESS: progress or completion of an assigned row, one of many replies.
pub(crate) fn action_progress(
    a: &ActionProgress,
    in_reply_to: &str,
    v: &mut FieldViolations,
    p: &str,
) {
    if a.assignment_message_id != in_reply_to {
        v.add(
            format!("{p}.assignment_message_id"),
            "must be the message the envelope replies to",
        );
    }
    case_reference(v, format!("{p}.case_reference"), &a.case_reference);
    if a.action_number == 0 {
        v.add(format!("{p}.action_number"), "required: 1 or more");
    }
    let state = ActionProgressState::try_from(a.state).unwrap_or(ActionProgressState::Unspecified);
    if state == ActionProgressState::Unspecified {
        v.add(
            format!("{p}.state"),
            "required: in progress, completed or cannot complete",
        );
    }
    // An agency that cannot carry an action out says why.
    long_text(
        v,
        format!("{p}.note"),
        &a.note,
        state == ActionProgressState::CannotComplete,
    );
    required_date(v, format!("{p}.reported_on"), a.reported_on.as_ref());
    text(
        v,
        format!("{p}.reported_by"),
        &a.reported_by,
        true,
        SHORT_TEXT_MAX,
    );
}

/// A police investigation update: the case, the police's reference, a known status with its
/// date, the hearing's date when one is scheduled (and only then), a summary, who reports.
pub(crate) fn investigation_update(u: &InvestigationUpdate, v: &mut FieldViolations, p: &str) {
    case_reference(v, format!("{p}.case_reference"), &u.case_reference);
    text(
        v,
        format!("{p}.investigation_reference"),
        &u.investigation_reference,
        true,
        SHORT_TEXT_MAX,
    );
    let status =
        InvestigationStatus::try_from(u.status).unwrap_or(InvestigationStatus::Unspecified);
    if status == InvestigationStatus::Unspecified {
        v.add(
            format!("{p}.status"),
            "required: a known investigation status",
        );
    }
    required_date(v, format!("{p}.status_on"), u.status_on.as_ref());
    if status == InvestigationStatus::HearingScheduled {
        required_date(v, format!("{p}.hearing_on"), u.hearing_on.as_ref());
    } else if optional_date(v, format!("{p}.hearing_on"), u.hearing_on.as_ref()).is_some() {
        v.add(
            format!("{p}.hearing_on"),
            "only when the status is hearing scheduled",
        );
    }
    long_text(v, format!("{p}.summary"), &u.summary, false);
    text(
        v,
        format!("{p}.reported_by"),
        &u.reported_by,
        true,
        SHORT_TEXT_MAX,
    );
}

/// A health facility's notice: the case, a known kind with its date, the facility, a note
/// (required when the referral is declined), who reports.
pub(crate) fn health_notice(n: &HealthNotice, v: &mut FieldViolations, p: &str) {
    case_reference(v, format!("{p}.case_reference"), &n.case_reference);
    let kind = HealthNoticeKind::try_from(n.kind).unwrap_or(HealthNoticeKind::Unspecified);
    if kind == HealthNoticeKind::Unspecified {
        v.add(format!("{p}.kind"), "required: a known health notice kind");
    }
    required_date(v, format!("{p}.on"), n.on.as_ref());
    text(
        v,
        format!("{p}.facility"),
        &n.facility,
        true,
        SHORT_TEXT_MAX,
    );
    long_text(
        v,
        format!("{p}.note"),
        &n.note,
        kind == HealthNoticeKind::ReferralDeclined,
    );
    text(
        v,
        format!("{p}.reported_by"),
        &n.reported_by,
        true,
        SHORT_TEXT_MAX,
    );
}

/// A review meeting: date, participants, decision, revised rows, next review (required unless
/// support ends).
fn plan_review(r: &PlanReview, v: &mut FieldViolations, p: &str) {
    let meeting = required_date(v, format!("{p}.meeting_on"), r.meeting_on.as_ref());
    if r.participants.is_empty() {
        v.add(format!("{p}.participants"), "required: at least one");
    } else if r.participants.len() > MAX_PARTICIPANTS {
        v.add(
            format!("{p}.participants"),
            format!("at most {MAX_PARTICIPANTS}"),
        );
    }
    for (i, who) in r.participants.iter().enumerate() {
        text(
            v,
            format!("{p}.participants[{i}]"),
            who,
            true,
            SHORT_TEXT_MAX,
        );
    }
    let decision = ReviewDecision::try_from(r.decision).unwrap_or(ReviewDecision::Unspecified);
    if decision == ReviewDecision::Unspecified {
        v.add(format!("{p}.decision"), "required: a known review decision");
    }
    plan_actions(&r.revised_actions, v, &format!("{p}.revised_actions"));
    let next = if decision == ReviewDecision::EndSupport {
        optional_date(v, format!("{p}.next_review_on"), r.next_review_on.as_ref())
    } else {
        required_date(v, format!("{p}.next_review_on"), r.next_review_on.as_ref())
    };
    if let (Some(meeting), Some(next)) = (meeting, next)
        && next <= meeting
    {
        v.add(
            format!("{p}.next_review_on"),
            "must be after the meeting's date",
        );
    }
    for (i, who) in r.signed_by.iter().enumerate() {
        text(v, format!("{p}.signed_by[{i}]"), who, true, SHORT_TEXT_MAX);
    }
}

/// REVIEW_MINUTES: minutes of a review meeting, sent to every participating agency.
pub(crate) fn review_minutes(m: &ReviewMinutes, v: &mut FieldViolations, p: &str) {
    case_reference(v, format!("{p}.case_reference"), &m.case_reference);
    match &m.review {
        None => v.add(format!("{p}.review"), "required"),
        Some(r) => plan_review(r, v, &format!("{p}.review")),
    }
    text(
        v,
        format!("{p}.curator_name"),
        &m.curator_name,
        true,
        SHORT_TEXT_MAX,
    );
    text(
        v,
        format!("{p}.curator_contact"),
        &m.curator_contact,
        false,
        SHORT_TEXT_MAX,
    );
}

/// What a valid case event gives the engine, beyond the event itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CheckedEvent {
    pub kind: CaseEventKind,
    pub occurred_at: jiff::Timestamp,
    pub next_review_on: Option<Date>,
}

/// A case event's own fields. The caller checks what needs the directory and the settings
/// (responsible agencies, the review limit).
pub(crate) fn case_event(e: &CaseEvent, v: &mut FieldViolations, p: &str) -> Option<CheckedEvent> {
    case_reference(v, format!("{p}.case_reference"), &e.case_reference);
    let kind = CaseEventKind::try_from(e.kind).unwrap_or(CaseEventKind::Unspecified);
    if kind == CaseEventKind::Unspecified {
        v.add(format!("{p}.kind"), "required: a known case event kind");
    }
    let occurred_at = e.occurred_at.as_ref().and_then(time::from_proto);
    if occurred_at.is_none() {
        v.add(format!("{p}.occurred_at"), "required");
    }
    if e.cycle == 0 {
        v.add(format!("{p}.cycle"), "required: 1 or more");
    }
    let risk = RiskLevel::try_from(e.risk_level).unwrap_or(RiskLevel::Unspecified);
    if kind == CaseEventKind::AssessmentFiled && risk == RiskLevel::Unspecified {
        v.add(
            format!("{p}.risk_level"),
            "required for a filed assessment: a known risk level",
        );
    }
    // The assessment's clock names the curator; a case is opened with one.
    text(
        v,
        format!("{p}.curator_user_id"),
        &e.curator_user_id,
        kind == CaseEventKind::CaseOpened,
        SHORT_TEXT_MAX,
    );
    text(
        v,
        format!("{p}.help_request_message_id"),
        &e.help_request_message_id,
        false,
        SHORT_TEXT_MAX,
    );
    let plan_like = matches!(
        kind,
        CaseEventKind::SupportPlanFiled | CaseEventKind::ReviewHeld
    );
    // A review that ends support fixes no next review; every other review does, which the
    // commission checks against the review's decision (the event does not carry it).
    let next_review_on = match (kind, plan_like) {
        (_, true) => optional_date(v, format!("{p}.next_review_on"), e.next_review_on.as_ref()),
        _ => {
            if e.next_review_on
                .as_ref()
                .is_some_and(|d| *d != CalendarDate::default())
            {
                v.add(
                    format!("{p}.next_review_on"),
                    "only for a filed support plan or a review",
                );
            }
            None
        }
    };
    if plan_like {
        action_deadlines(&e.actions, v, &format!("{p}.actions"));
    } else if !e.actions.is_empty() {
        v.add(
            format!("{p}.actions"),
            "only for a filed support plan or a review",
        );
    }
    Some(CheckedEvent {
        kind,
        occurred_at: occurred_at?,
        next_review_on,
    })
}

/// The action rows of a case event: numbers unique and at least 1, due dates real.
fn action_deadlines(actions: &[ActionDeadline], v: &mut FieldViolations, p: &str) {
    if actions.len() > MAX_ACTIONS {
        v.add(p.to_owned(), format!("at most {MAX_ACTIONS} rows"));
        return;
    }
    let mut numbers = BTreeSet::new();
    for (i, a) in actions.iter().enumerate() {
        let row = format!("{p}[{i}]");
        if a.number == 0 {
            v.add(format!("{row}.number"), "required: 1 or more");
        } else if !numbers.insert(a.number) {
            v.add(format!("{row}.number"), "must be unique among the rows");
        }
        required_date(v, format!("{row}.due_on"), a.due_on.as_ref());
        text(
            v,
            format!("{row}.responsible_agency_id"),
            &a.responsible_agency_id,
            false,
            SHORT_TEXT_MAX,
        );
        // Case events carry no personal data: the engine addresses agencies and roles.
        if !a.responsible_person.is_empty() {
            v.add(
                format!("{row}.responsible_person"),
                "must be empty: the deadline engine keeps no names",
            );
        }
    }
}

/// The commission's answer to a consultation: advice, with no identity either.
pub(crate) fn consultation_answer(
    a: &ConsultationAnswer,
    in_reply_to: &str,
    v: &mut FieldViolations,
    prefix: &str,
) {
    if a.consultation_message_id != in_reply_to {
        v.add(
            format!("{prefix}.consultation_message_id"),
            "must be the message the envelope replies to",
        );
    }
    validate::text(
        v,
        &format!("{prefix}.advice"),
        &a.advice,
        Text::required(3, LONG_TEXT_MAX).multiline(),
    );
    validate::text(
        v,
        &format!("{prefix}.answered_by"),
        &a.answered_by,
        Text::required(1, 200),
    );
    validate::no_identity(v, &format!("{prefix}.advice"), &a.advice);
}

/// The monthly incident summary E: counts for one school and month, and no child's identity.
pub(crate) fn incident_summary(e: &IncidentSummary, v: &mut FieldViolations, prefix: &str) {
    validate::text(
        v,
        &format!("{prefix}.school_name"),
        &e.school_name,
        Text::required(1, 300),
    );
    validate::no_identity(v, &format!("{prefix}.school_name"), &e.school_name);
    if !(2000..=2100).contains(&e.year) {
        v.add(format!("{prefix}.year"), "a year from 2000 to 2100");
    }
    if !(1..=12).contains(&e.month) {
        v.add(format!("{prefix}.month"), "a month from 1 to 12");
    }
    // Summed wide: counts near u32::MAX must be refused, not overflow.
    let reported: u64 = [
        e.reported_by_pupils,
        e.reported_by_teachers,
        e.reported_by_staff,
        e.reported_by_parents,
        e.reported_by_others,
    ]
    .into_iter()
    .map(u64::from)
    .sum();
    if reported != u64::from(e.total_reports) {
        v.add(
            format!("{prefix}.total_reports"),
            "must equal the reports counted by who reported them",
        );
    }
    let mut seen = BTreeSet::new();
    for (i, b) in e.behaviours.iter().enumerate() {
        let known = referral_proto::v1::ProblemBehaviour::try_from(b.behaviour)
            .is_ok_and(|k| k != referral_proto::v1::ProblemBehaviour::Unspecified);
        if !known || !seen.insert(b.behaviour) {
            v.add(
                format!("{prefix}.behaviours[{i}].behaviour"),
                "a known behaviour, each at most once",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(y: i32, m: i32, d: i32) -> Option<CalendarDate> {
        Some(CalendarDate {
            year: y,
            month: m,
            day: d,
        })
    }

    fn fields(v: &FieldViolations) -> Vec<&str> {
        v.iter().map(|f| f.field.as_str()).collect()
    }

    // Found by the case_forms fuzz target: counts whose sum overflows u32 panicked (debug) or
    // wrapped around to match a small total (release).
    #[test]
    fn an_incident_summary_with_huge_counts_is_refused_without_overflow() {
        let summary = IncidentSummary {
            school_name: "School 1".into(),
            year: 2026,
            month: 11,
            total_reports: 1,
            reported_by_pupils: u32::MAX,
            reported_by_teachers: 2,
            ..Default::default()
        };
        let mut v = FieldViolations::new();
        incident_summary(&summary, &mut v, "e");
        assert_eq!(fields(&v), ["e.total_reports"]);
    }

    #[test]
    fn a_review_event_needs_unique_rows_and_may_end_support_without_a_next_review() {
        let event = CaseEvent {
            case_reference: "KZ-1".into(),
            kind: CaseEventKind::ReviewHeld as i32,
            occurred_at: Some(time::to_proto("2026-03-02T05:00:00Z".parse().unwrap())),
            cycle: 1,
            actions: vec![
                ActionDeadline {
                    number: 1,
                    due_on: date(2026, 4, 1),
                    ..Default::default()
                },
                ActionDeadline {
                    number: 1,
                    due_on: date(2026, 2, 30),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let mut v = FieldViolations::new();
        case_event(&event, &mut v, "event");
        assert_eq!(
            fields(&v),
            ["event.actions[1].number", "event.actions[1].due_on"]
        );
    }

    #[test]
    fn an_assessment_event_needs_a_risk_level_and_every_event_a_cycle() {
        let event = CaseEvent {
            case_reference: " ".into(),
            kind: CaseEventKind::AssessmentFiled as i32,
            ..Default::default()
        };
        let mut v = FieldViolations::new();
        assert!(case_event(&event, &mut v, "event").is_none());
        assert_eq!(
            fields(&v),
            [
                "event.case_reference",
                "event.occurred_at",
                "event.cycle",
                "event.risk_level"
            ]
        );
    }

    #[test]
    fn progress_must_name_the_assignment_it_answers_and_explain_a_refusal() {
        let progress = ActionProgress {
            assignment_message_id: "other".into(),
            case_reference: "KZ-1".into(),
            action_number: 2,
            state: ActionProgressState::CannotComplete as i32,
            note: "  ".into(),
            reported_on: date(2026, 3, 1),
            reported_by: "Айгүл".into(),
        };
        let mut v = FieldViolations::new();
        action_progress(&progress, "m-1", &mut v, "p");
        assert_eq!(fields(&v), ["p.assignment_message_id", "p.note"]);
    }

    #[test]
    fn an_assignment_goes_to_the_agency_responsible_for_its_row() {
        let assignment = ActionAssignment {
            case_reference: "KZ-1".into(),
            action: Some(PlanAction {
                number: 1,
                action: "Психологпен жұмыс".into(),
                due_on: date(2026, 4, 1),
                responsible_agency_id: "ngo-1".into(),
                ..Default::default()
            }),
            child_first_name: "Дана".into(),
            child_age_years: 12,
            curator_name: "Curator".into(),
            ..Default::default()
        };
        let mut v = FieldViolations::new();
        action_assignment(&assignment, "ngo-1", &mut v, "a");
        assert!(v.is_empty(), "{v}");
        action_assignment(&assignment, "school-1", &mut v, "a");
        assert_eq!(fields(&v), ["a.action.responsible_agency_id"]);
    }

    #[test]
    fn minutes_need_a_decision_and_a_later_next_review_unless_support_ends() {
        let mut minutes = ReviewMinutes {
            case_reference: "KZ-1".into(),
            review: Some(PlanReview {
                meeting_on: date(2026, 3, 2),
                participants: vec!["Curator".into()],
                decision: ReviewDecision::ContinueWithChanges as i32,
                next_review_on: date(2026, 3, 1),
                ..Default::default()
            }),
            curator_name: "Curator".into(),
            curator_contact: String::new(),
        };
        let mut v = FieldViolations::new();
        review_minutes(&minutes, &mut v, "m");
        assert_eq!(fields(&v), ["m.review.next_review_on"]);
        let review = minutes.review.as_mut().unwrap();
        review.decision = ReviewDecision::EndSupport as i32;
        review.next_review_on = None;
        let mut v = FieldViolations::new();
        review_minutes(&minutes, &mut v, "m");
        assert!(v.is_empty(), "{v}");
    }
}
