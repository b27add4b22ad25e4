//! Every field of the case file's changes, checked before anything is read or written: the
//! contact log entry, the information request, the assessment L, the support plan M, the review,
//! the closure and the reopening, and a document's metadata.
//!
//! Violations are named by their path in the request (`assessment.family`,
//! `plan.actions[1].responsible_agency_id`, `review.next_review_on`), as the rest of the hub
//! does, and say what is expected, never what was sent. Dates are judged on today's date in the
//! district (`today`); "not in the future" lets today pass. A review is due at most
//! [`REVIEW_MAX_MONTHS`] calendar months after the plan or the meeting that fixes it (M:2496-2533),
//! counted on the calendar (31 August plus six months is the last day of February).

use jiff::{Timestamp, civil::Date};
use referral_agency::checks::{
    self, LONG_TEXT, PERSON_NAME, REQUIRED_LONG_TEXT, SHORT_TEXT, Text, district_agency,
    optional_date, past_date, required_enum, text, text_list,
};
use referral_core::{FieldViolations, directory::Directory, validate};
use referral_deadlines::{DeadlineSettings, ReviewDateError, review_due};
use referral_proto::v1::{
    AgencyKind, Assessment, CalendarDate, CloseCaseRequest, ClosureCriterion, Contact,
    ContactMethod, FamilyMember, FileAssessmentRequest, FileSupportPlanRequest, PlanAction,
    PlanChild, RecordReviewRequest, ReopenCaseRequest, RequestInformationRequest, ReviewDecision,
    RiskLevel, Signature, UploadDocumentMetadata,
};

/// A review is due at most this many calendar months after the plan or the last review.
pub const REVIEW_MAX_MONTHS: u32 = 6;

/// How far in the future a signature's time may be (clock skew between machines).
const SIGNATURE_SKEW_MINUTES: i64 = 5;

/// Bounds of the lists of a form, so that one request cannot grow without limit.
const MAX_FAMILY: usize = 30;
const MAX_HISTORY: usize = 200;
const MAX_PEOPLE: usize = 50;
const MAX_NEEDS: usize = 50;
const MAX_ACTIONS: usize = 100;
const MAX_PARENTS: usize = 10;
const MAX_AGENCIES: usize = 50;
/// The longest text of one action row or need.
const ROW_TEXT: Text = Text::required(1, 2000).multiline();
/// How the family was told, why a case is reopened.
const REASON_TEXT: Text = Text::required(1, 2000).multiline();
/// The oldest age a family member may be given.
const MAX_AGE_YEARS: u32 = 120;
/// The relations that name the child in an assessment's family list.
const CHILD_RELATIONS: &[&str] = &["child", "бала", "ребёнок", "ребенок"];

/// What the checks need to know of the district: its agencies and the commission's own id.
#[derive(Debug, Clone, Copy)]
pub struct District<'a> {
    pub directory: &'a Directory,
    pub district_id: &'a str,
    pub commission_id: &'a str,
    pub today: Date,
}

/// The agency kinds the commission asks for information and sends minutes to.
pub const PARTNER_KINDS: &[AgencyKind] = &[
    AgencyKind::School,
    AgencyKind::Residential,
    AgencyKind::Police,
    AgencyKind::Health,
    AgencyKind::Ngo,
];

fn join(prefix: &str, field: &str) -> String {
    format!("{prefix}.{field}")
}

/// A case reference: required and short.
pub fn case_reference(v: &mut FieldViolations, value: &str) {
    text(v, "case_reference", value, Text::required(1, 64));
}

/// The version a change is based on: versions start at 1.
pub fn base_version(v: &mut FieldViolations, value: u64) {
    if value == 0 {
        v.add(
            "base_version",
            "required: the case version the change is based on (1 or more)",
        );
    }
}

/// `RecordContact`'s entry.
pub fn contact(v: &mut FieldViolations, contact: Option<&Contact>, today: Date) {
    let Some(c) = contact else {
        v.add("contact", "required");
        return;
    };
    past_date(v, "contact.date", c.date.as_ref(), today);
    text(v, "contact.made_by", &c.made_by, PERSON_NAME);
    text(v, "contact.with_whom", &c.with_whom, SHORT_TEXT);
    required_enum::<ContactMethod>(v, "contact.method", c.method);
    text(v, "contact.summary", &c.summary, REQUIRED_LONG_TEXT);
}

/// `RequestInformation`: the recipient is an agency of the district other than the commission.
pub fn information_request(
    v: &mut FieldViolations,
    request: &RequestInformationRequest,
    district: &District<'_>,
) {
    validate::idempotency_key(&request.idempotency_key, "idempotency_key", v);
    district_agency(
        v,
        "recipient_agency_id",
        &request.recipient_agency_id,
        district.directory,
        district.district_id,
        PARTNER_KINDS,
        "an agency of this district other than the commission",
    );
    text(v, "questions", &request.questions, REQUIRED_LONG_TEXT);
    if let Some(answer_by) = optional_date(v, "answer_by", request.answer_by.as_ref())
        && answer_by < district.today
    {
        v.add("answer_by", "must not be in the past");
    }
}

/// `FileAssessment`: every section of L (M:4843-4901) and the level of risk.
pub fn assessment(
    v: &mut FieldViolations,
    request: &FileAssessmentRequest,
    today: Date,
    now: Timestamp,
) {
    required_enum::<RiskLevel>(v, "risk_level", request.risk_level);
    let Some(l) = &request.assessment else {
        v.add("assessment", "required");
        return;
    };
    let p = "assessment";
    family(v, &l.family);
    let assessed_on = past_date(v, &join(p, "assessed_on"), l.assessed_on.as_ref(), today);
    text(
        v,
        &join(p, "responsible_person"),
        &l.responsible_person,
        PERSON_NAME,
    );
    text_list(
        v,
        &join(p, "others_involved"),
        &l.others_involved,
        SHORT_TEXT,
        false,
        MAX_PEOPLE,
    );
    history(v, l, today);
    for (field, value) in sections(l) {
        text(v, &join(p, field), value, LONG_TEXT);
    }
    for (field, value) in analysis(l) {
        text(v, &join(p, field), value, REQUIRED_LONG_TEXT);
    }
    text(
        v,
        &join(p, "recommendations"),
        &l.recommendations,
        REQUIRED_LONG_TEXT,
    );
    text(v, &join(p, "family_comment"), &l.family_comment, LONG_TEXT);
    if let Some(signature) = &l.family_signature {
        signature_block(v, &join(p, "family_signature"), signature, now);
    }
    let discussed = past_date(
        v,
        &join(p, "discussed_with_family_on"),
        l.discussed_with_family_on.as_ref(),
        today,
    );
    if let (Some(discussed), Some(assessed)) = (discussed, assessed_on)
        && discussed < assessed
    {
        v.add(
            join(p, "discussed_with_family_on"),
            "must not be before assessed_on: the results are discussed once assessed",
        );
    }
    text_list(
        v,
        &join(p, "discussion_participants"),
        &l.discussion_participants,
        SHORT_TEXT,
        true,
        MAX_PEOPLE,
    );
}

/// The child's health and development, the parents' care and the living conditions: recorded
/// when known.
fn sections(l: &Assessment) -> [(&'static str, &str); 12] {
    [
        ("physical_health", &l.physical_health),
        ("emotional_development", &l.emotional_development),
        ("behavioural_development", &l.behavioural_development),
        ("relationships", &l.relationships),
        ("self_care", &l.self_care),
        ("ability_to_keep_safe", &l.ability_to_keep_safe),
        ("stability_and_supervision", &l.stability_and_supervision),
        (
            "parents_understanding_and_will_to_change",
            &l.parents_understanding_and_will_to_change,
        ),
        ("relatives_and_friends", &l.relatives_and_friends),
        ("access_to_local_services", &l.access_to_local_services),
        ("housing", &l.housing),
        ("income", &l.income),
    ]
}

/// The social worker's analysis: what L is for, so every part of it is required.
fn analysis(l: &Assessment) -> [(&'static str, &str); 8] {
    [
        ("family_strengths", &l.family_strengths),
        ("family_weaknesses", &l.family_weaknesses),
        ("concerns_and_risks", &l.concerns_and_risks),
        ("likely_consequences", &l.likely_consequences),
        ("effect_on_parents", &l.effect_on_parents),
        (
            "capacity_to_keep_child_safe",
            &l.capacity_to_keep_child_safe,
        ),
        ("capacity_to_change", &l.capacity_to_change),
        ("help_needed", &l.help_needed),
    ]
}

/// The child and the family members: at least the child (relation "child").
fn family(v: &mut FieldViolations, members: &[FamilyMember]) {
    let field = "assessment.family";
    if members.is_empty() {
        v.add(field, "at least the child is required");
        return;
    }
    if members.len() > MAX_FAMILY {
        v.add(field, format!("must have at most {MAX_FAMILY} members"));
        return;
    }
    for (i, m) in members.iter().enumerate() {
        let f = |name: &str| format!("{field}[{i}].{name}");
        text(v, &f("full_name"), &m.full_name, PERSON_NAME);
        text(v, &f("relation"), &m.relation, Text::required(1, 100));
        if m.age_years > MAX_AGE_YEARS {
            v.add(f("age_years"), format!("must be at most {MAX_AGE_YEARS}"));
        }
        text(v, &f("address"), &m.address, Text::optional(500));
        text(v, &f("occupation"), &m.occupation, Text::optional(300));
        phone(v, &f("phone"), &m.phone);
        email(v, &f("email"), &m.email);
    }
    let has_child = members.iter().any(|m| {
        let relation = m.relation.trim().to_lowercase();
        CHILD_RELATIONS.contains(&relation.as_str())
    });
    if !has_child {
        v.add(field, "must include the child (relation \"child\")");
    }
}

/// Family history and earlier interventions, in chronological order.
fn history(v: &mut FieldViolations, l: &Assessment, today: Date) {
    let field = "assessment.history";
    if l.history.len() > MAX_HISTORY {
        v.add(field, format!("must have at most {MAX_HISTORY} entries"));
        return;
    }
    let mut previous: Option<Date> = None;
    for (i, entry) in l.history.iter().enumerate() {
        let date_field = format!("{field}[{i}].date");
        let date = past_date(v, &date_field, entry.date.as_ref(), today);
        text(v, &format!("{field}[{i}].event"), &entry.event, ROW_TEXT);
        if let (Some(date), Some(before)) = (date, previous)
            && date < before
        {
            v.add(date_field, "must be in chronological order");
        }
        previous = date.or(previous);
    }
}

/// An optional phone number: 5 to 30 digits, spaces, `+`, `-` and parentheses.
fn phone(v: &mut FieldViolations, field: &str, value: &str) {
    if value.is_empty() {
        return;
    }
    let ok = (5..=30).contains(&value.chars().count())
        && value
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '+' | '-' | '(' | ')'))
        && value.chars().filter(char::is_ascii_digit).count() >= 5;
    if !ok {
        v.add(
            field,
            "must be 5 to 30 digits, spaces, '+', '-' and parentheses",
        );
    }
}

/// An optional e-mail address: one `@` with something on each side, no spaces.
fn email(v: &mut FieldViolations, field: &str, value: &str) {
    if value.is_empty() {
        return;
    }
    let ok = value.chars().count() <= 254
        && !value.chars().any(|c| c.is_whitespace() || c.is_control())
        && value.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        });
    if !ok {
        v.add(field, "must be an e-mail address");
    }
}

/// A signature block: the signer's name and a time not in the future.
fn signature_block(v: &mut FieldViolations, prefix: &str, s: &Signature, now: Timestamp) {
    text(v, &join(prefix, "signer_name"), &s.signer_name, PERSON_NAME);
    let field = join(prefix, "signed_at");
    match &s.signed_at {
        None => v.add(field, "required"),
        Some(t) => match Timestamp::new(t.seconds, t.nanos)
            .ok()
            .filter(|_| t.nanos >= 0)
        {
            None => v.add(field, "must be a valid timestamp"),
            Some(at) => {
                if at.duration_since(now) > jiff::SignedDuration::from_mins(SIGNATURE_SKEW_MINUTES)
                {
                    v.add(field, "must not be in the future");
                }
            }
        },
    }
}

/// Action rows of a plan or a review: numbers unique from 1, every column filled, due dates
/// from today, and the responsible agency an agency of the district (the commission's own id
/// for the rows it carries out).
fn actions(
    v: &mut FieldViolations,
    field: &str,
    rows: &[PlanAction],
    district: &District<'_>,
    required: bool,
) {
    if rows.is_empty() {
        if required {
            v.add(field, "at least one action row is required");
        }
        return;
    }
    if rows.len() > MAX_ACTIONS {
        v.add(field, format!("must have at most {MAX_ACTIONS} rows"));
        return;
    }
    let mut numbers = std::collections::BTreeSet::new();
    for (i, row) in rows.iter().enumerate() {
        let f = |name: &str| format!("{field}[{i}].{name}");
        if row.number == 0 {
            v.add(f("number"), "must be 1 or more");
        } else if !numbers.insert(row.number) {
            v.add(f("number"), "must be unique within the plan");
        }
        text(v, &f("action"), &row.action, ROW_TEXT);
        if let Some(due) = checks::required_date(v, &f("due_on"), row.due_on.as_ref())
            && due < district.today
        {
            v.add(f("due_on"), "must not be before today");
        }
        text(
            v,
            &f("responsible_person"),
            &row.responsible_person,
            SHORT_TEXT,
        );
        district_agency(
            v,
            &f("responsible_agency_id"),
            &row.responsible_agency_id,
            district.directory,
            district.district_id,
            &[],
            "an agency of this district (the commission's own id for the rows it carries out)",
        );
        text(v, &f("method"), &row.method, ROW_TEXT);
    }
}

/// A review date fixed on `from` (the plan's filing day or the meeting's day): after `from`, not
/// in the past, and within the limit of the deadline engine ([`referral_deadlines::review_due`]):
/// at most [`REVIEW_MAX_MONTHS`] calendar months after `from`.
fn review_date(v: &mut FieldViolations, field: &str, date: Date, from: Date, today: Date) {
    if date <= from {
        v.add(field, "must be after the day it is fixed on");
        return;
    }
    if date < today {
        v.add(field, "must not be in the past");
        return;
    }
    let settings = DeadlineSettings {
        review_max_months: REVIEW_MAX_MONTHS,
        ..DeadlineSettings::default()
    };
    match review_due(from, Some(date), false, &settings) {
        Ok(_) => {}
        Err(ReviewDateError::BeforeFrom { .. }) => {
            v.add(field, "must be after the day it is fixed on");
        }
        Err(ReviewDateError::TooLate { latest, months, .. }) => v.add(
            field,
            format!("must be at most {months} months after the day it is fixed on ({latest})"),
        ),
    }
}

/// `FileSupportPlan`: every part of M (M:4902-4954); reviews come later, with `RecordReview`.
pub fn support_plan(
    v: &mut FieldViolations,
    request: &FileSupportPlanRequest,
    district: &District<'_>,
    now: Timestamp,
) {
    validate::idempotency_key(&request.idempotency_key, "idempotency_key", v);
    if let Some(first) = optional_date(v, "first_review_on", request.first_review_on.as_ref()) {
        review_date(v, "first_review_on", first, district.today, district.today);
    }
    let Some(m) = &request.plan else {
        v.add("plan", "required");
        return;
    };
    if m.parents.len() > MAX_PARENTS {
        v.add(
            "plan.parents",
            format!("must have at most {MAX_PARENTS} entries"),
        );
    } else {
        for (i, parent) in m.parents.iter().enumerate() {
            let f = |name: &str| format!("plan.parents[{i}].{name}");
            text(v, &f("full_name"), &parent.full_name, PERSON_NAME);
            if parent.age_years > MAX_AGE_YEARS {
                v.add(f("age_years"), format!("must be at most {MAX_AGE_YEARS}"));
            }
            text(
                v,
                &f("social_status"),
                &parent.social_status,
                Text::optional(200),
            );
            text(v, &f("contacts"), &parent.contacts, Text::optional(500));
        }
    }
    plan_child(v, m.child.as_ref());
    if let Some(report_date) = optional_date(v, "plan.report_date", m.report_date.as_ref())
        && report_date > district.today
    {
        v.add("plan.report_date", "must not be in the future");
    }
    text_list(v, "plan.needs", &m.needs, ROW_TEXT, true, MAX_NEEDS);
    if m.specialists.len() > MAX_PEOPLE {
        v.add(
            "plan.specialists",
            format!("must have at most {MAX_PEOPLE} entries"),
        );
    } else {
        for (i, s) in m.specialists.iter().enumerate() {
            let f = |name: &str| format!("plan.specialists[{i}].{name}");
            text(v, &f("full_name"), &s.full_name, PERSON_NAME);
            text(v, &f("organisation"), &s.organisation, Text::optional(300));
            text(v, &f("contacts"), &s.contacts, Text::optional(500));
        }
    }
    actions(v, "plan.actions", &m.actions, district, true);
    text(v, "plan.recommendations", &m.recommendations, LONG_TEXT);
    if let Some(signature) = &m.social_worker_signature {
        signature_block(v, "plan.social_worker_signature", signature, now);
    }
    if !m.reviews.is_empty() {
        v.add(
            "plan.reviews",
            "must be empty: reviews are recorded with RecordReview",
        );
    }
}

fn plan_child(v: &mut FieldViolations, child: Option<&PlanChild>) {
    let Some(c) = child else {
        v.add("plan.child", "required");
        return;
    };
    text(v, "plan.child.full_name", &c.full_name, PERSON_NAME);
    if c.age_years > 19 {
        v.add("plan.child.age_years", "must be a child's age");
    }
    if referral_proto::v1::Sex::try_from(c.sex).is_err() {
        v.add("plan.child.sex", "unknown value");
    }
    text(v, "plan.child.address", &c.address, Text::optional(500));
}

/// `RecordReview`: the meeting, its decision, the revised rows and the next review date (fixed at
/// the meeting, at most six months on, unless support ends), and the agencies that took part.
/// Who may record a placement recommendation is checked by the caller (it is a permission).
pub fn review(v: &mut FieldViolations, request: &RecordReviewRequest, district: &District<'_>) {
    validate::idempotency_key(&request.idempotency_key, "idempotency_key", v);
    agencies(v, &request.participating_agency_ids, district);
    let Some(r) = &request.review else {
        v.add("review", "required");
        return;
    };
    let meeting_on = past_date(
        v,
        "review.meeting_on",
        r.meeting_on.as_ref(),
        district.today,
    );
    text_list(
        v,
        "review.participants",
        &r.participants,
        SHORT_TEXT,
        true,
        MAX_PEOPLE,
    );
    let decision = required_enum::<ReviewDecision>(v, "review.decision", r.decision);
    actions(
        v,
        "review.revised_actions",
        &r.revised_actions,
        district,
        false,
    );
    let next = if decision == Some(ReviewDecision::EndSupport) {
        optional_date(v, "review.next_review_on", r.next_review_on.as_ref())
    } else {
        checks::required_date(v, "review.next_review_on", r.next_review_on.as_ref())
    };
    if let (Some(next), Some(meeting_on)) = (next, meeting_on) {
        review_date(v, "review.next_review_on", next, meeting_on, district.today);
    }
    text_list(
        v,
        "review.signed_by",
        &r.signed_by,
        SHORT_TEXT,
        false,
        MAX_PEOPLE,
    );
}

/// The agencies that receive a review's minutes: agencies of the district other than the
/// commission, each once.
fn agencies(v: &mut FieldViolations, ids: &[String], district: &District<'_>) {
    if ids.len() > MAX_AGENCIES {
        v.add(
            "participating_agency_ids",
            format!("must have at most {MAX_AGENCIES} entries"),
        );
        return;
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, id) in ids.iter().enumerate() {
        let field = format!("participating_agency_ids[{i}]");
        if district_agency(
            v,
            &field,
            id,
            district.directory,
            district.district_id,
            PARTNER_KINDS,
            "an agency of this district other than the commission",
        ) && !seen.insert(id.as_str())
        {
            v.add(field, "must not repeat an agency");
        }
    }
}

/// `CloseCase`: at least one criterion (M:2540-2555), none unspecified or twice, and how the
/// family was told it can ask again (M:2556-2560).
pub fn close(v: &mut FieldViolations, request: &CloseCaseRequest) {
    if request.criteria.is_empty() {
        v.add("criteria", "at least one closure criterion is required");
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, value) in request.criteria.iter().enumerate() {
        let field = format!("criteria[{i}]");
        if required_enum::<ClosureCriterion>(v, &field, *value).is_some() && !seen.insert(*value) {
            v.add(field, "must not repeat a criterion");
        }
    }
    text(
        v,
        "family_told_how_to_ask_again",
        &request.family_told_how_to_ask_again,
        REASON_TEXT,
    );
    text(v, "note", &request.note, LONG_TEXT);
}

/// `ReopenCase`: why.
pub fn reopen(v: &mut FieldViolations, request: &ReopenCaseRequest) {
    text(v, "reason", &request.reason, REASON_TEXT);
}

/// The metadata chunk of `UploadDocument`.
pub fn document_metadata(v: &mut FieldViolations, metadata: &UploadDocumentMetadata) {
    text(
        v,
        "metadata.case_reference",
        &metadata.case_reference,
        Text::required(1, 64),
    );
    text(v, "metadata.title", &metadata.title, SHORT_TEXT);
    text(
        v,
        "metadata.file_name",
        &metadata.file_name,
        Text::optional(255),
    );
}

/// A calendar date for a message, from a civil date.
pub fn to_calendar(date: Date) -> CalendarDate {
    validate::to_calendar_date(date)
}

#[cfg(test)]
mod tests;
