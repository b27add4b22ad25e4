use referral_proto::v1::{ChronologyEntry, PlanReview, SupportPlan};

use super::*;

const DIRECTORY: &str = r#"
[[districts]]
id = "d-1"
name_kk = "Аудан"
name_ru = "Район"

[[districts]]
id = "d-2"
name_kk = "Басқа"
name_ru = "Другой"

[[agencies]]
id = "commission"
kind = "commission"
district = "d-1"
name_kk = "КТІЖК"
name_ru = "КДНиЗП"
endpoint = "https://127.0.0.1:1"

[[agencies]]
id = "school-1"
kind = "school"
district = "d-1"
name_kk = "Мектеп"
name_ru = "Школа"
endpoint = "https://127.0.0.1:2"

[[agencies]]
id = "ngo-1"
kind = "ngo"
district = "d-1"
name_kk = "ҮЕҰ"
name_ru = "НПО"
endpoint = "https://127.0.0.1:3"

[[agencies]]
id = "commission-2"
kind = "commission"
district = "d-2"
name_kk = "КТІЖК 2"
name_ru = "КДНиЗП 2"
endpoint = "https://127.0.0.1:4"

[[agencies]]
id = "school-9"
kind = "school"
district = "d-2"
name_kk = "Мектеп 9"
name_ru = "Школа 9"
endpoint = "https://127.0.0.1:5"
"#;

fn directory() -> Directory {
    Directory::parse(DIRECTORY).unwrap()
}

/// Monday 31 August 2026, 10:00 in Almaty.
fn today() -> Date {
    Date::constant(2026, 8, 31)
}

fn now() -> Timestamp {
    "2026-08-31T05:00:00Z".parse().unwrap()
}

fn date(y: i32, m: i32, d: i32) -> Option<CalendarDate> {
    Some(CalendarDate {
        year: y,
        month: m,
        day: d,
    })
}

fn district(directory: &Directory) -> District<'_> {
    District {
        directory,
        district_id: "d-1",
        commission_id: "commission",
        today: today(),
    }
}

fn fields(check: impl FnOnce(&mut FieldViolations)) -> Vec<String> {
    let mut v = FieldViolations::new();
    check(&mut v);
    v.iter().map(|f| f.field.clone()).collect()
}

fn assessment_request() -> FileAssessmentRequest {
    let text = |s: &str| s.to_owned();
    FileAssessmentRequest {
        case_reference: "KTIZhK-2026-000001".into(),
        base_version: 2,
        risk_level: RiskLevel::Medium as i32,
        assessment: Some(Assessment {
            family: vec![
                FamilyMember {
                    full_name: "Әлия Нұрланова".into(),
                    relation: "child".into(),
                    age_years: 12,
                    ..Default::default()
                },
                FamilyMember {
                    full_name: "Гүлнар Нұрланова".into(),
                    relation: "mother".into(),
                    age_years: 38,
                    phone: "+7 701 234 56 78".into(),
                    email: "gulnar@example.kz".into(),
                    ..Default::default()
                },
            ],
            assessed_on: date(2026, 8, 28),
            responsible_person: "Айгерім Сапарова".into(),
            history: vec![
                ChronologyEntry {
                    date: date(2025, 9, 1),
                    event: text("Мектепке ауысты"),
                },
                ChronologyEntry {
                    date: date(2026, 2, 10),
                    event: text("Психологпен кеңес"),
                },
            ],
            family_strengths: text("Анасы қолдауға дайын"),
            family_weaknesses: text("Табыс тұрақсыз"),
            concerns_and_risks: text("Сыныптастарының қорлауы"),
            likely_consequences: text("Мектептен шығып қалуы мүмкін"),
            effect_on_parents: text("Анасы алаңдаулы"),
            capacity_to_keep_child_safe: text("Жеткілікті"),
            capacity_to_change: text("Қолдаумен бар"),
            help_needed: text("Психологиялық қолдау"),
            recommendations: text("Жеке қолдау жоспарын құру"),
            discussed_with_family_on: date(2026, 8, 31),
            discussion_participants: vec![text("Гүлнар Нұрланова (анасы)")],
            ..Default::default()
        }),
    }
}

#[test]
fn a_complete_assessment_passes() {
    assert_eq!(
        fields(|v| assessment(v, &assessment_request(), today(), now())),
        Vec::<String>::new()
    );
}

#[test]
fn an_assessment_needs_the_child_the_analysis_the_discussion_and_a_risk_level() {
    let mut request = assessment_request();
    request.risk_level = RiskLevel::Unspecified as i32;
    let l = request.assessment.as_mut().unwrap();
    l.family.remove(0);
    l.concerns_and_risks = "  ".into();
    l.recommendations.clear();
    l.discussion_participants.clear();
    l.discussed_with_family_on = None;
    assert_eq!(
        fields(|v| assessment(v, &request, today(), now())),
        [
            "risk_level",
            "assessment.family",
            "assessment.concerns_and_risks",
            "assessment.recommendations",
            "assessment.discussed_with_family_on",
            "assessment.discussion_participants",
        ]
    );
    request.assessment = None;
    assert!(fields(|v| assessment(v, &request, today(), now())).contains(&"assessment".into()));
}

#[test]
fn assessment_dates_are_real_not_in_the_future_and_in_order() {
    let mut request = assessment_request();
    let l = request.assessment.as_mut().unwrap();
    l.assessed_on = date(2026, 9, 1);
    l.history[1].date = date(2025, 1, 1);
    l.discussed_with_family_on = date(2026, 2, 30);
    l.family[1].email = "not an address".into();
    l.family[1].age_years = 300;
    assert_eq!(
        fields(|v| assessment(v, &request, today(), now())),
        [
            "assessment.family[1].age_years",
            "assessment.family[1].email",
            "assessment.assessed_on",
            "assessment.history[1].date",
            "assessment.discussed_with_family_on",
        ]
    );
    let mut request = assessment_request();
    let l = request.assessment.as_mut().unwrap();
    l.discussed_with_family_on = date(2026, 8, 1);
    assert_eq!(
        fields(|v| assessment(v, &request, today(), now())),
        ["assessment.discussed_with_family_on"]
    );
}

fn action(number: u32, agency: &str) -> PlanAction {
    PlanAction {
        number,
        action: "Психологтың апта сайынғы кеңесі".into(),
        due_on: date(2026, 10, 30),
        responsible_person: "Дана Ержанова".into(),
        responsible_agency_id: agency.into(),
        method: "Жеке сабақтар".into(),
    }
}

fn plan_request() -> FileSupportPlanRequest {
    FileSupportPlanRequest {
        case_reference: "KTIZhK-2026-000001".into(),
        base_version: 3,
        idempotency_key: "plan-key-0001".into(),
        plan: Some(SupportPlan {
            child: Some(PlanChild {
                full_name: "Әлия Нұрланова".into(),
                age_years: 12,
                ..Default::default()
            }),
            needs: vec!["Қауіпсіздік".into(), "Оқуды жалғастыру".into()],
            actions: vec![
                action(1, "ngo-1"),
                action(2, "school-1"),
                action(3, "commission"),
            ],
            ..Default::default()
        }),
        first_review_on: None,
    }
}

#[test]
fn a_complete_plan_passes_and_the_first_review_may_be_six_calendar_months_on() {
    let directory = directory();
    let mut request = plan_request();
    assert!(fields(|v| support_plan(v, &request, &district(&directory), now())).is_empty());
    // 31 August + 6 months is the last day of February.
    request.first_review_on = date(2027, 2, 28);
    assert!(fields(|v| support_plan(v, &request, &district(&directory), now())).is_empty());
    request.first_review_on = date(2027, 3, 1);
    assert_eq!(
        fields(|v| support_plan(v, &request, &district(&directory), now())),
        ["first_review_on"]
    );
    request.first_review_on = date(2026, 8, 31);
    assert_eq!(
        fields(|v| support_plan(v, &request, &district(&directory), now())),
        ["first_review_on"]
    );
}

#[test]
fn every_action_row_needs_an_agency_of_the_district() {
    let directory = directory();
    let mut request = plan_request();
    let rows = &mut request.plan.as_mut().unwrap().actions;
    rows[1].responsible_agency_id.clear();
    rows[2].responsible_agency_id = "school-9".into();
    rows.push(PlanAction {
        number: 1,
        due_on: date(2026, 8, 30),
        ..action(4, "nowhere")
    });
    assert_eq!(
        fields(|v| support_plan(v, &request, &district(&directory), now())),
        [
            "plan.actions[1].responsible_agency_id",
            "plan.actions[2].responsible_agency_id",
            "plan.actions[3].number",
            "plan.actions[3].due_on",
            "plan.actions[3].responsible_agency_id",
        ]
    );
}

#[test]
fn a_plan_needs_needs_rows_and_no_reviews_of_its_own() {
    let directory = directory();
    let mut request = plan_request();
    let plan = request.plan.as_mut().unwrap();
    plan.needs.clear();
    plan.actions.clear();
    plan.reviews.push(PlanReview::default());
    plan.child = None;
    request.idempotency_key = "x".into();
    assert_eq!(
        fields(|v| support_plan(v, &request, &district(&directory), now())),
        [
            "idempotency_key",
            "plan.child",
            "plan.needs",
            "plan.actions",
            "plan.reviews",
        ]
    );
}

fn review_request(decision: ReviewDecision) -> RecordReviewRequest {
    RecordReviewRequest {
        case_reference: "KTIZhK-2026-000001".into(),
        base_version: 4,
        idempotency_key: "review-key-0001".into(),
        review: Some(PlanReview {
            meeting_on: date(2026, 8, 31),
            participants: vec!["Айгерім Сапарова".into(), "Гүлнар Нұрланова".into()],
            decision: decision as i32,
            revised_actions: vec![action(1, "ngo-1")],
            next_review_on: date(2027, 2, 28),
            signed_by: vec![],
        }),
        participating_agency_ids: vec!["ngo-1".into(), "school-1".into()],
    }
}

#[test]
fn a_review_fixes_the_next_one_at_most_six_months_on() {
    let directory = directory();
    let d = district(&directory);
    let mut request = review_request(ReviewDecision::ContinueWithChanges);
    assert!(fields(|v| review(v, &request, &d)).is_empty());
    request.review.as_mut().unwrap().next_review_on = date(2027, 3, 1);
    assert_eq!(
        fields(|v| review(v, &request, &d)),
        ["review.next_review_on"]
    );
    request.review.as_mut().unwrap().next_review_on = None;
    assert_eq!(
        fields(|v| review(v, &request, &d)),
        ["review.next_review_on"]
    );

    // Ending support needs no next review.
    let mut request = review_request(ReviewDecision::EndSupport);
    request.review.as_mut().unwrap().next_review_on = None;
    assert!(fields(|v| review(v, &request, &d)).is_empty());
}

#[test]
fn a_review_needs_participants_a_decision_and_partner_agencies() {
    let directory = directory();
    let d = district(&directory);
    let mut request = review_request(ReviewDecision::Unspecified);
    request.review.as_mut().unwrap().participants.clear();
    request.participating_agency_ids = vec!["ngo-1".into(), "commission".into(), "ngo-1".into()];
    assert_eq!(
        fields(|v| review(v, &request, &d)),
        [
            "participating_agency_ids[1]",
            "participating_agency_ids[2]",
            "review.participants",
            "review.decision",
        ]
    );
}

#[test]
fn a_closure_needs_criteria_once_each_and_the_family_told() {
    let close_request = |criteria: Vec<ClosureCriterion>, told: &str| CloseCaseRequest {
        case_reference: "KTIZhK-2026-000001".into(),
        base_version: 5,
        criteria: criteria.into_iter().map(|c| c as i32).collect(),
        family_told_how_to_ask_again: told.into(),
        note: String::new(),
    };
    assert!(
        fields(|v| close(
            v,
            &close_request(
                vec![
                    ClosureCriterion::RiskReduced,
                    ClosureCriterion::SituationStable
                ],
                "Анасына КТІЖК телефоны берілді"
            )
        ))
        .is_empty()
    );
    assert_eq!(
        fields(|v| close(v, &close_request(vec![], ""))),
        ["criteria", "family_told_how_to_ask_again"]
    );
    assert_eq!(
        fields(|v| close(
            v,
            &close_request(
                vec![
                    ClosureCriterion::RiskReduced,
                    ClosureCriterion::Unspecified,
                    ClosureCriterion::RiskReduced
                ],
                "told"
            )
        )),
        ["criteria[1]", "criteria[2]"]
    );
}

#[test]
fn contacts_and_information_requests_are_checked() {
    let contact_entry = Contact {
        date: date(2026, 8, 31),
        made_by: "Айгерім Сапарова".into(),
        with_whom: "анасы".into(),
        method: ContactMethod::HomeVisit as i32,
        summary: "Үйге бардық".into(),
    };
    assert!(fields(|v| contact(v, Some(&contact_entry), today())).is_empty());
    let bad = Contact {
        date: date(2026, 9, 1),
        method: ContactMethod::Unspecified as i32,
        summary: String::new(),
        ..contact_entry
    };
    assert_eq!(
        fields(|v| contact(v, Some(&bad), today())),
        ["contact.date", "contact.method", "contact.summary"]
    );
    assert_eq!(fields(|v| contact(v, None, today())), ["contact"]);

    let directory = directory();
    let d = district(&directory);
    let ask = |recipient: &str, answer_by| RequestInformationRequest {
        case_reference: "KTIZhK-2026-000001".into(),
        base_version: 1,
        idempotency_key: "info-key-0001".into(),
        recipient_agency_id: recipient.into(),
        questions: "Бала емханада тіркеуде ме?".into(),
        answer_by,
    };
    assert!(fields(|v| information_request(v, &ask("ngo-1", date(2026, 9, 7)), &d)).is_empty());
    assert!(fields(|v| information_request(v, &ask("ngo-1", None), &d)).is_empty());
    assert_eq!(
        fields(|v| information_request(v, &ask("commission", date(2026, 8, 30)), &d)),
        ["recipient_agency_id", "answer_by"]
    );
    assert_eq!(
        fields(|v| information_request(v, &ask("school-9", None), &d)),
        ["recipient_agency_id"]
    );
}

#[test]
fn reopening_needs_a_reason_and_versions_start_at_one() {
    let request = ReopenCaseRequest {
        case_reference: "KTIZhK-2026-000001".into(),
        base_version: 6,
        reason: " ".into(),
    };
    assert_eq!(fields(|v| reopen(v, &request)), ["reason"]);
    assert_eq!(fields(|v| base_version(v, 0)), ["base_version"]);
    assert!(fields(|v| base_version(v, 1)).is_empty());
}

#[test]
fn violations_never_repeat_what_was_sent() {
    let mut request = assessment_request();
    let secret = "Құпия Есім Тегі";
    request.assessment.as_mut().unwrap().family[0].relation = secret.repeat(20);
    let mut v = FieldViolations::new();
    assessment(&mut v, &request, today(), now());
    assert!(!v.is_empty());
    assert!(v.iter().all(|f| !f.description.contains("Құпия")));
}
