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

use jiff::{SignedDuration, ToSpan as _, civil::Date};
use referral_core::iin::Iin;
use referral_proto::v1::{
    AcknowledgeInstructionRequest, ActionProgressState, CaseFile, CaseStage, CloseCaseRequest,
    ClosureCriterion, ConcernState, DeadlineKind, DeadlineState, FileAssessmentRequest,
    FileSupportPlanRequest, FormKind, GetCaseRequest, GetConcernRequest, HealthNoticeKind,
    HelpRequest, IncidentRole, InstructionAcknowledgementKind, InvestigationStatus,
    LinkCaseRequest, LinkWrittenReportRequest, ListInvestigationsRequest,
    ListProtectionInstructionsRequest, ListReferralsRequest, ListServicesRequest, OpenCase,
    PlanReview, ProtectionMeasure, PurposeOfUse, RecordReviewRequest, RegisterPreventiveRequest,
    ReportActionProgressRequest, ReportCircumstances, ReportConcernRequest,
    RequestInformationRequest, ReviewDecision, RiskLevel, SendNoticeRequest,
    SendProtectionInstructionRequest, ServiceEvent, Sex, UpdateInvestigationRequest,
    UpdateServiceRequest, decide_help_request_request::Outcome, help_request_decision,
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

/// A K from the school about one of the two boys: he lives in the institution (nothing may flow
/// back to it), and the report belongs to one incident, in which he has `role`.
fn k_about(hub: &TestHub, name: &str, serial: u16, role: IncidentRole) -> HelpRequest {
    let mut k = referral_core::validate::sample_help_request(hub.today());
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
        .all_deadlines(case)
        .await
        .into_iter()
        .filter(|d| d.kind == kind as i32)
        .map(|d| DeadlineState::try_from(d.state).unwrap())
        .collect()
}

/// The school's own deadlines of one kind, with their states.
async fn school_deadlines(staff: &StaffClient, kind: DeadlineKind) -> Vec<DeadlineState> {
    deadline_states(staff, "", kind).await
}

/// The weekly progress deadlines of an NGO's service.
async fn weekly_deadlines(ngo: &StaffClient, service_id: &str) -> Vec<DeadlineState> {
    ngo.deadlines_about(service_id)
        .await
        .into_iter()
        .filter(|d| d.kind == DeadlineKind::WeeklyProgress as i32)
        .map(|d| DeadlineState::try_from(d.state).unwrap())
        .collect()
}

async fn the_manuals_scenario_runs_end_to_end(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let start = hub.today();

    // 0. The boy tells a teacher; the teacher reports the concern, which goes to the school's
    //    safeguarding lead (P:66-80).
    let teacher = hub.staff("school-1", "safety-team").await;
    let concern = teacher
        .safeguarding()
        .report_concern(teacher.req(ReportConcernRequest {
            idempotency_key: "scenario-concern".into(),
            pupil_name: VICTIM_NAME.into(),
            pupil_class: "6А".into(),
            what_happened: "Интернатта үлкен бала ұрады дейді / Говорит, что в интернате бьёт старший мальчик".into(),
            observed_on: Some(cd(start)),
            at_risk_now: true,
        }))
        .await
        .expect("the teacher reports the concern")
        .into_inner();
    assert_eq!(concern.assigned_to_user_id, "safeguarding-lead");

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
    // The lead links the written report to the concern: the child-protection service's answer
    // is now due within 3 working days (P:160-162).
    let lead = hub.staff("school-1", "safeguarding-lead").await;
    lead.safeguarding()
        .link_written_report(lead.req(LinkWrittenReportRequest {
            concern_id: concern.concern_id.clone(),
            help_request_message_id: victim_k.clone(),
        }))
        .await
        .expect("the K is the written report");
    hub.gateway().settle().await.unwrap();
    assert_eq!(
        school_deadlines(&lead, DeadlineKind::ProtectionServiceAnswer).await,
        [DeadlineState::Pending]
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

    // The commission's decision answered the school: the concern is answered and the answer
    // deadline met.
    hub.gateway().settle().await.unwrap();
    let answered = lead
        .safeguarding()
        .get_concern(lead.req(GetConcernRequest {
            concern_id: concern.concern_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answered.state, ConcernState::Answered as i32);
    assert_eq!(
        school_deadlines(&lead, DeadlineKind::ProtectionServiceAnswer).await,
        [DeadlineState::Met]
    );
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
                answer_by: Some(cd(hub.today() + 7.days())),
            }))
            .await
            .expect("information requested");
    }
    hub.deliver_everything().await;

    // The police: one investigation of the incident, linked to both boys' cases with their
    // roles; each change reaches both curators, each in their own case.
    let inspector = hub.staff("police-1", "inspector").await;
    let investigations = inspector
        .investigations()
        .list_investigations(inspector.req(ListInvestigationsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .investigations;
    let investigation = investigations
        .iter()
        .find(|i| i.case_reference == victim_case)
        .expect("the victim's request opened an investigation")
        .investigation_id
        .clone();
    for (case, role) in [
        (&victim_case, IncidentRole::Victim),
        (&offender_case, IncidentRole::Perpetrator),
    ] {
        inspector
            .investigations()
            .link_case(inspector.req(LinkCaseRequest {
                investigation_id: investigation.clone(),
                case_reference: case.clone(),
                child_role: role as i32,
            }))
            .await
            .expect("the case is linked to the incident's investigation");
    }
    inspector
        .investigations()
        .update_investigation(inspector.req(UpdateInvestigationRequest {
            investigation_id: investigation.clone(),
            status: InvestigationStatus::Opened as i32,
            status_on: Some(cd(start)),
            summary: "Қылмыстық іс қозғалды / Возбуждено дело".into(),
            idempotency_key: "scenario-opened".into(),
            ..Default::default()
        }))
        .await
        .expect("investigation opened");
    hub.deliver_everything().await;
    for (curator, case, other) in [
        (&curator1, &victim_case, &offender_case),
        (&curator2, &offender_case, &victim_case),
    ] {
        let file = get_case(curator, case).await;
        assert!(
            file.investigation_updates
                .iter()
                .any(|u| u.status == InvestigationStatus::Opened as i32),
            "the curator of {case} is told of the investigation"
        );
        let inbox = curator.inbox_of(FormKind::InvestigationUpdate).await;
        assert!(!inbox.is_empty());
        assert!(
            inbox.iter().all(|i| !i.summary.contains(other.as_str())),
            "a curator sees only their own case's updates"
        );
    }
    // Preventive registration of the offender reaches the offender's curator only; the
    // victim cannot be registered.
    let refused = inspector
        .investigations()
        .register_preventive(inspector.req(RegisterPreventiveRequest {
            case_reference: victim_case.clone(),
            registered_on: Some(cd(start)),
            grounds: "Зорлық / Насилие".into(),
            idempotency_key: "scenario-register-victim".into(),
        }))
        .await
        .expect_err("a victim is never registered");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    inspector
        .investigations()
        .register_preventive(inspector.req(RegisterPreventiveRequest {
            case_reference: offender_case.clone(),
            registered_on: Some(cd(start)),
            grounds: "Кіші балаға зорлық / Насилие над младшим".into(),
            idempotency_key: "scenario-register".into(),
        }))
        .await
        .expect("the offender is registered");
    hub.deliver_everything().await;
    assert_eq!(
        curator2
            .inbox_of(FormKind::PreventiveRegistration)
            .await
            .len(),
        1
    );
    assert!(
        curator1
            .inbox_of(FormKind::PreventiveRegistration)
            .await
            .is_empty()
    );
    assert!(
        secretary
            .inbox_of(FormKind::PreventiveRegistration)
            .await
            .is_empty()
    );

    // Health: the injured boy is admitted and treated; the curator sees it in the case.
    let doctor = hub.staff("health-1", "doctor").await;
    let referrals = doctor
        .health_notices()
        .list_referrals(doctor.req(ListReferralsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .referrals;
    assert_eq!(referrals.len(), 1, "only the victim was referred to health");
    assert_eq!(referrals[0].case_reference, victim_case);
    for (kind, key) in [
        (HealthNoticeKind::Admitted, "scenario-admitted"),
        (HealthNoticeKind::PsychologicalSupport, "scenario-support"),
    ] {
        doctor
            .health_notices()
            .send_notice(doctor.req(SendNoticeRequest {
                case_reference: victim_case.clone(),
                kind: kind as i32,
                on: Some(cd(start)),
                facility: "Аудандық аурухана / Районная больница".into(),
                note: "Жарақат емделді / Травма обработана".into(),
                idempotency_key: key.into(),
                ..Default::default()
            }))
            .await
            .expect("notice sent");
    }
    hub.deliver_everything().await;
    assert_eq!(
        get_case(&curator1, &victim_case).await.health_notices.len(),
        2
    );
    assert!(
        get_case(&curator2, &offender_case)
            .await
            .health_notices
            .is_empty()
    );

    // None of it reached the school, the institution, or the other agencies.
    for (agency, user) in [
        ("school-1", "director"),
        (INSTITUTION, "director"),
        ("ngo-1", "case-manager"),
        ("school-2", "director"),
    ] {
        let staff = hub.staff(agency, user).await;
        let got = kinds(&staff).await;
        assert!(
            !got.iter().any(|k| matches!(
                k,
                FormKind::InvestigationUpdate
                    | FormKind::PreventiveRegistration
                    | FormKind::HealthNotice
            )),
            "{agency} received {got:?}"
        );
    }
    let school_view = director
        .read_shared(&victim_case, PurposeOfUse::CoordinationOfCare)
        .await
        .expect("the referring school reads the status");
    assert!(
        school_view
            .case_file
            .as_ref()
            .is_none_or(|f| f.investigation_updates.is_empty()
                && f.health_notices.is_empty()
                && f.cycles.iter().all(|c| c.assessment.is_none())),
        "the school sees neither the investigation, nor health, nor L"
    );

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
                assessment: Some(sample_assessment(hub.today())),
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
    assert!(hub.today() <= start + 21.days());

    // 5. M for the victim with rows for an NGO and for the school.
    let t = hub.today();
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

    // The NGO takes the row on and reports weekly; the report is a deadline of the engine.
    let service = ngo
        .ngo_services()
        .list_services(ngo.req(ListServicesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .services;
    assert_eq!(service.len(), 1);
    let service_id = service[0].service_id.clone();
    assert_eq!(service[0].case_reference, victim_case);
    for (key, event, note) in [
        ("scenario-accept", ServiceEvent::Accepted, ""),
        (
            "scenario-week-1",
            ServiceEvent::WeeklyProgress,
            "Бірінші апта: екі кездесу / Первая неделя: две встречи",
        ),
    ] {
        ngo.ngo_services()
            .update_service(ngo.req(UpdateServiceRequest {
                service_id: service_id.clone(),
                idempotency_key: key.into(),
                event: event as i32,
                note: note.into(),
                ..Default::default()
            }))
            .await
            .expect("service step");
    }
    hub.deliver_everything().await;
    hub.gateway().settle().await.unwrap();
    let ngo = hub.staff("ngo-1", "case-manager").await;
    let weekly = weekly_deadlines(&ngo, &service_id).await;
    assert!(weekly.contains(&DeadlineState::Met), "{weekly:?}");
    assert!(weekly.contains(&DeadlineState::Pending), "{weekly:?}");
    let file = get_case(&curator1, &victim_case).await;
    let ngo_row = file
        .cycles
        .last()
        .unwrap()
        .actions
        .iter()
        .find(|a| a.action.as_ref().is_some_and(|r| r.number == 1))
        .unwrap();
    assert_eq!(ngo_row.progress, ActionProgressState::InProgress as i32);
    // The school reports on its own row.
    let assignment = director
        .inbox_of(FormKind::ActionAssignment)
        .await
        .remove(0);
    director
        .client
        .clone()
        .report_action_progress(
            director.req(ReportActionProgressRequest {
                message_id: assignment.message_id.clone(),
                idempotency_key: "scenario-school-row".into(),
                state: ActionProgressState::InProgress as i32,
                note:
                    "Сынып жетекшісі күн сайын сөйлеседі / Классный руководитель беседует ежедневно"
                        .into(),
            }),
        )
        .await
        .expect("the school reports progress");
    hub.deliver_everything().await;

    // The commission's protection decision: the boy moves to another institution. It reaches
    // the institution as an instruction, alone (the commission weighed it first).
    let v = version(&get_case(&curator1, &victim_case).await);
    let instructed = curator1
        .protection_instructions()
        .send_protection_instruction(curator1.req(SendProtectionInstructionRequest {
            idempotency_key: "scenario-instruction".into(),
            case_reference: victim_case.clone(),
            base_version: v,
            recipient_agency_id: INSTITUTION.into(),
            measure: ProtectionMeasure::MoveToAnotherInstitution as i32,
            measure_other: String::new(),
            new_placement: "№2 балалар үйі / Детский дом №2".into(),
            carry_out_by: Some(cd(t + 3.days())),
            decision_reference: "КТІЖК-12/2026".into(),
            decision_date: Some(cd(t)),
            reason: "Баланы қорғау / Защита ребёнка".into(),
            confidentiality_weighed: true,
            weighing_reason:
                "Ауыстыру үшін ғана; оқиға мазмұны берілмейді / Только для перевода".into(),
        }))
        .await
        .expect("instructed")
        .into_inner();
    hub.delivered(&instructed.message_id).await;
    let received = institution
        .residential()
        .list_protection_instructions(institution.req(ListProtectionInstructionsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .instructions;
    assert_eq!(received.len(), 1);
    assert_eq!(
        kinds(&institution).await,
        [FormKind::ProtectionInstruction],
        "the instruction and nothing else of either case"
    );
    institution
        .residential()
        .acknowledge_instruction(institution.req(AcknowledgeInstructionRequest {
            instruction_message_id: instructed.message_id.clone(),
            idempotency_key: "scenario-ack".into(),
            kind: InstructionAcknowledgementKind::Acknowledged as i32,
            on: Some(cd(t)),
            note: "Қабылданды / Принято".into(),
        }))
        .await
        .expect("acknowledged");
    hub.deliver_everything().await;
    let file = get_case(&curator1, &victim_case).await;
    assert_eq!(file.protection_instructions[0].acknowledgements.len(), 1);

    // 6. A review within 6 months, then closure.
    hub.clock.advance(SignedDuration::from_hours(150 * 24));
    let curator1 = hub.staff("commission", "curator-1").await;
    let t = hub.today();
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
    hub.gateway().settle().await.unwrap();
    assert_eq!(
        deadline_states(&curator1, &victim_case, DeadlineKind::PlanReview).await,
        [DeadlineState::Met],
        "the review was held within 6 months of the plan"
    );
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
    assert_eq!(
        kinds(&institution).await,
        [FormKind::ProtectionInstruction],
        "from report to closure, the institution received the instruction alone"
    );
    // Closure ended every clock of the case, the NGO's weekly report's included once it ends.
    let curator1 = hub.staff("commission", "curator-1").await;
    for kind in [DeadlineKind::PlanReview, DeadlineKind::Action] {
        let states = deadline_states(&curator1, &victim_case, kind).await;
        assert!(
            states
                .iter()
                .all(|s| matches!(s, DeadlineState::Met | DeadlineState::Cancelled)),
            "{kind:?}: {states:?}"
        );
    }
    hub.shutdown().await;
}

both_backends!(the_manuals_scenario_runs_end_to_end);
