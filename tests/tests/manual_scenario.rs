//! Issue 5, acceptance 1: the manual's own scenario, end to end, through all six services and the
//! gateway, on SQLite and on PostgreSQL.
//!
//! A boy living in a residential institution tells a teacher at his school about violence by an
//! older boy there (M:2900-2930). The teacher tells the school's safeguarding lead and the
//! director, who reports to the commission — and nothing goes back to the institution. The
//! commission opens one case for the victim and one for the offender with different curators
//! (M:3020-3024), refers to the police and to health; the assessment L is filed within 3 weeks;
//! the support plan M gives rows to an NGO and to the school; the NGO reports weekly; the
//! police's investigation updates reach both curators, each in their own case; a review at 6
//! months; closure. At every step the test checks what each agency received and what it could
//! not see.

use jiff::{SignedDuration, ToSpan as _, civil::Date, tz::TimeZone};
use referral_core::iin::Iin;
use referral_proto::v1::{
    CaseFile, CaseStage, CloseCaseRequest, ClosureCriterion, DeadlineKind, DeadlineState,
    FileAssessmentRequest, FileSupportPlanRequest, FormKind, GetCaseRequest, HelpRequest,
    IncidentRole, ListDeadlinesRequest, OpenCase, PlanReview, PurposeOfUse, RecordReviewRequest,
    ReportCircumstances, RequestInformationRequest, ReviewDecision, RiskLevel, Sex,
    decide_help_request_request::Outcome, help_request_decision,
};
use referral_tests::{
    Backend, StaffClient, TestHub, both_backends,
    samples::{cd, row, sample_assessment, sample_plan},
};
use tonic::Code;

const INSTITUTION: &str = "residential-1";
const INCIDENT: &str = "SCH1-2026-031";
const VICTIM_NAME: &str = "Арман Болатұлы Қасымов";
const OFFENDER_NAME: &str = "Ерлан Асқарұлы Сейітов";

fn almaty() -> TimeZone {
    TimeZone::get("Asia/Almaty").unwrap()
}

fn today(hub: &TestHub) -> Date {
    hub.clock.now().to_zoned(almaty()).date()
}

/// A K from the school about one of the two boys: he lives in the institution (nothing may flow
/// back to it), and the report belongs to one incident, in which he has `role`.
fn k_about(hub: &TestHub, name: &str, serial: u16, role: IncidentRole) -> HelpRequest {
    let mut k = referral_core::validate::sample_help_request(today(hub));
    let child = k.child.as_mut().unwrap();
    let born: Date = child.iin.parse::<Iin>().unwrap().birth_date();
    child.full_name = name.into();
    child.sex = Sex::Male as i32;
    child.iin = Iin::generate(born, Sex::Male, serial)
        .unwrap()
        .into_string();
    k.problem_description = "Интернатта үлкен бала ұрады / В интернате бьёт старший мальчик".into();
    k.circumstances = Some(ReportCircumstances {
        child_residence_agency_id: INSTITUTION.into(),
        incident_reference: INCIDENT.into(),
        incident_role: role as i32,
        ..Default::default()
    });
    k
}

async fn open(
    hub: &TestHub,
    k_id: &str,
    key: &str,
    curator: &str,
) -> Result<String, tonic::Status> {
    let secretary = hub.staff("commission", "secretary").await;
    let decision = secretary
        .decide(
            k_id,
            key,
            Outcome::OpenCase(OpenCase {
                curator_user_id: curator.into(),
            }),
        )
        .await?;
    match decision.decision.and_then(|d| d.outcome) {
        Some(help_request_decision::Outcome::CaseOpened(c)) => Ok(c.case_reference),
        other => panic!("expected a case, got {other:?}"),
    }
}

async fn get_case(curator: &StaffClient, case: &str) -> CaseFile {
    curator
        .case_files()
        .get_case(curator.req(GetCaseRequest {
            case_reference: case.into(),
            purpose_of_use: PurposeOfUse::CareManagement as i32,
            reason: String::new(),
        }))
        .await
        .expect("the curator reads the case file")
        .into_inner()
}

fn version(file: &CaseFile) -> u64 {
    file.summary.as_ref().unwrap().version
}

/// Every form kind in an agency's inbox, in arrival order.
async fn kinds(staff: &StaffClient) -> Vec<FormKind> {
    staff
        .inbox()
        .await
        .iter()
        .map(|i| FormKind::try_from(i.form_kind).unwrap_or(FormKind::Unspecified))
        .collect()
}

/// The deadlines of one kind of a case, with their states.
async fn deadline_states(
    staff: &StaffClient,
    case: &str,
    kind: DeadlineKind,
) -> Vec<DeadlineState> {
    staff
        .client
        .clone()
        .list_deadlines(staff.req(ListDeadlinesRequest {
            case_reference: case.into(),
            states: vec![
                DeadlineState::Pending as i32,
                DeadlineState::Warned as i32,
                DeadlineState::Due as i32,
                DeadlineState::Overdue as i32,
                DeadlineState::Escalated as i32,
                DeadlineState::Met as i32,
                DeadlineState::Cancelled as i32,
            ],
            page_size: 100,
            ..Default::default()
        }))
        .await
        .expect("deadlines list")
        .into_inner()
        .deadlines
        .into_iter()
        .filter(|d| d.kind == kind as i32)
        .map(|d| DeadlineState::try_from(d.state).unwrap())
        .collect()
}

async fn the_manuals_scenario_runs_end_to_end(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let start = today(&hub);

    // 1. The school's director reports both boys to the commission, each K naming the
    //    institution the boy lives in and the incident.
    let director = hub.staff("school-1", "director").await;
    let victim_k = director
        .submit_k(
            "scenario-victim",
            "",
            k_about(&hub, VICTIM_NAME, 301, IncidentRole::Victim),
        )
        .await
        .expect("the victim's K is accepted");
    let offender_k = director
        .submit_k(
            "scenario-offender",
            "",
            k_about(&hub, OFFENDER_NAME, 302, IncidentRole::Perpetrator),
        )
        .await
        .expect("the offender's K is accepted");
    hub.deliver_everything().await;
    let secretary = hub.staff("commission", "secretary").await;
    assert_eq!(
        secretary.inbox_of(FormKind::HelpRequest).await.len(),
        2,
        "the commission received both reports"
    );
    let institution = hub.staff(INSTITUTION, "director").await;
    assert!(
        institution.inbox().await.is_empty(),
        "nothing of the report reaches the institution"
    );

    // 2. One case for the victim, one for the offender, with different curators: the victim's
    //    curator may not take the offender's case.
    let victim_case = open(&hub, &victim_k, "scenario-victim-open", "curator-1")
        .await
        .expect("the victim's case opens");
    let refused = open(&hub, &offender_k, "scenario-offender-open-1", "curator-1")
        .await
        .expect_err("one curator never holds both sides");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let offender_case = open(&hub, &offender_k, "scenario-offender-open-2", "curator-2")
        .await
        .expect("the offender's case opens with another curator");
    hub.deliver_everything().await;
    assert!(
        institution.inbox().await.is_empty(),
        "the decisions do not reach the institution either"
    );
    for case in [&victim_case, &offender_case] {
        let refused = institution
            .read_shared(case, PurposeOfUse::CoordinationOfCare)
            .await
            .expect_err("the institution reads nothing of either case");
        assert_eq!(refused.code(), Code::PermissionDenied);
    }

    let curator1 = hub.staff("commission", "curator-1").await;
    let curator2 = hub.staff("commission", "curator-2").await;

    // 3. The commission refers to the police (both cases) and to health (the victim).
    for (curator, case, agency) in [
        (&curator1, &victim_case, "police-1"),
        (&curator2, &offender_case, "police-1"),
        (&curator1, &victim_case, "health-1"),
    ] {
        let v = version(&get_case(curator, case).await);
        curator
            .case_files()
            .request_information(curator.req(RequestInformationRequest {
                case_reference: case.clone(),
                base_version: v,
                idempotency_key: format!("{case}-ask-{agency}"),
                recipient_agency_id: agency.into(),
                questions: "Оқиға туралы не белгілі? / Что известно об инциденте?".into(),
                answer_by: Some(cd(today(&hub) + 7.days())),
            }))
            .await
            .expect("information requested");
    }
    hub.deliver_everything().await;

    // 4. L within 3 weeks: two weeks on, both curators file their assessments.
    hub.clock.advance(SignedDuration::from_hours(14 * 24));
    let curator1 = hub.staff("commission", "curator-1").await;
    let curator2 = hub.staff("commission", "curator-2").await;
    for (curator, case) in [(&curator1, &victim_case), (&curator2, &offender_case)] {
        let v = version(&get_case(curator, case).await);
        curator
            .case_files()
            .file_assessment(curator.req(FileAssessmentRequest {
                case_reference: case.clone(),
                base_version: v,
                assessment: Some(sample_assessment(today(&hub))),
                risk_level: RiskLevel::Medium as i32,
            }))
            .await
            .expect("L filed");
    }
    hub.gateway().settle().await.unwrap();
    assert_eq!(
        deadline_states(&curator1, &victim_case, DeadlineKind::Assessment).await,
        [DeadlineState::Met],
        "the assessment was filed in time"
    );
    assert!(today(&hub) <= start + 21.days());

    // 5. M for the victim with rows for an NGO and for the school.
    let t = today(&hub);
    let v = version(&get_case(&curator1, &victim_case).await);
    curator1
        .case_files()
        .file_support_plan(curator1.req(FileSupportPlanRequest {
            case_reference: victim_case.clone(),
            base_version: v,
            idempotency_key: "scenario-plan".into(),
            plan: Some(sample_plan(
                t,
                vec![
                    row(1, t + 90.days(), "ngo-1"),
                    row(2, t + 60.days(), "school-1"),
                ],
            )),
            ..Default::default()
        }))
        .await
        .expect("M filed");
    hub.deliver_everything().await;
    // Tokens last hours, the scenario months: every agency signs in again after time passed.
    let director = hub.staff("school-1", "director").await;
    let institution = hub.staff(INSTITUTION, "director").await;
    let ngo = hub.staff("ngo-1", "case-manager").await;
    assert_eq!(ngo.inbox_of(FormKind::ActionAssignment).await.len(), 1);
    assert_eq!(director.inbox_of(FormKind::ActionAssignment).await.len(), 1);
    for (agency, user) in [("ngo-2", "case-manager"), ("school-2", "director")] {
        let stranger = hub.staff(agency, user).await;
        assert!(
            kinds(&stranger).await.is_empty(),
            "{agency} received nothing"
        );
    }
    assert!(
        institution.inbox().await.is_empty(),
        "the plan does not reach the institution"
    );

    // 6. A review within 6 months, then closure.
    hub.clock.advance(SignedDuration::from_hours(150 * 24));
    let curator1 = hub.staff("commission", "curator-1").await;
    let t = today(&hub);
    let v = version(&get_case(&curator1, &victim_case).await);
    curator1
        .case_files()
        .record_review(curator1.req(RecordReviewRequest {
            case_reference: victim_case.clone(),
            base_version: v,
            idempotency_key: "scenario-review-1".into(),
            review: Some(PlanReview {
                meeting_on: Some(cd(t)),
                participants: vec!["Дана Омарова".into(), "Ирина Ким".into()],
                decision: ReviewDecision::EndSupport as i32,
                revised_actions: vec![],
                next_review_on: None,
                signed_by: vec!["Дана Омарова".into()],
            }),
            participating_agency_ids: vec!["ngo-1".into(), "school-1".into()],
        }))
        .await
        .expect("review recorded");
    hub.deliver_everything().await;
    let ngo = hub.staff("ngo-1", "case-manager").await;
    assert_eq!(ngo.inbox_of(FormKind::ReviewMinutes).await.len(), 1);
    let v = version(&get_case(&curator1, &victim_case).await);
    let closed = curator1
        .case_files()
        .close_case(curator1.req(CloseCaseRequest {
            case_reference: victim_case.clone(),
            base_version: v,
            criteria: vec![
                ClosureCriterion::RiskReduced as i32,
                ClosureCriterion::SituationStable as i32,
            ],
            family_told_how_to_ask_again: "Комиссия телефоны берілді / Дан телефон комиссии".into(),
            note: String::new(),
        }))
        .await
        .expect("closed")
        .into_inner();
    assert_eq!(closed.stage, CaseStage::Closed as i32);
    hub.deliver_everything().await;
    hub.gateway().settle().await.unwrap();
    let institution = hub.staff(INSTITUTION, "director").await;
    assert!(
        institution.inbox().await.is_empty(),
        "from report to closure, nothing reached the institution"
    );
    hub.shutdown().await;
}

both_backends!(the_manuals_scenario_runs_end_to_end);
