//! Acceptance 5 of issue 4: a full scenario run at TRACE log level, with trace and metric
//! capture: the fixture child's name, IIN and address, and her parents' names and addresses,
//! appear in none of it, nor in any error a client is given. Since issue 5 the scenario also
//! runs every agency service about her (safeguarding, school referrals and log J, NGO services,
//! residential incidents and protection instructions, police investigations, health notices,
//! the agency clocks), and the name of a member of staff an allegation accuses is checked too.
//!
//! This file is its own test binary because it owns the process-global `tracing` subscriber:
//! the production subscriber (`referral_core::telemetry::subscriber`, the very layers
//! `referral-hub` runs with) at TRACE for every target, writing its log lines into memory and
//! exporting every span through `tracing-opentelemetry` into an in-memory exporter, plus a JSON
//! log of every event with all its fields, its spans' fields, and every span's close. Records of
//! the `log` crate (rustls logs through it) are forwarded into the same subscriber. An in-memory
//! metric exporter is the global OpenTelemetry meter provider: the hub registers no metrics yet,
//! so it catches nothing today, but any metric added later through `opentelemetry::global` is
//! checked here without changing this test.
//!
//! The two halves are separate so that the scenario can grow with each confidentiality feature:
//! [`scenario`] is everything done with the child's data, through real services over mTLS,
//! collecting each refusal a client sees; [`assert_no_personal_data`] looks for the child in
//! everything captured.
//!
//! It does not use `both_backends!`, which first installs the `TEST_LOG` subscriber: this test
//! must install its own before anything logs. `TEST_LOG=1` is ignored here.

use std::sync::OnceLock;

use jiff::{SignedDuration, Timestamp, ToSpan as _, civil::Date};
use opentelemetry_sdk::{
    metrics::{
        InMemoryMetricExporter, SdkMeterProvider,
        data::{AggregatedMetrics, MetricData},
    },
    trace::SpanData,
};
use referral_core::{iin::Iin, telemetry::TelemetryConfig, validate};
use referral_proto::v1::{
    AcknowledgeInstructionRequest, ActingUser, ActionProgressState, AgencyClockEvent,
    AgencyClockEventKind, AnswerConsultationRequest, AnswerInformationRequestRequest,
    AssessIncidentRequest, Assessment, CaseFile, CloseCaseRequest, CloseConcernRequest,
    CloseIncidentRequest, ClosureCriterion, ConcernState, ConsultRequest, Consultation, Contact,
    ContactMethod, DeadlineState, Envelope, ExportFormat, ExportReferralLogRequest,
    FileAssessmentRequest, FileSupportPlanRequest, FormKind, GetCaseRequest, GetConcernRequest,
    GetMessageRequest, GetResidentialIncidentRequest, GetSentMessageRequest,
    GrantDisclosureRequest, HealthNoticeKind, HelpRequest, IncidentChild, IncidentReport,
    IncidentRole, IncidentSeverity, InjuredPerson, InstructionAcknowledgementKind,
    InvestigationStatus, InvolvedChild, LinkCaseRequest, LinkReferralRequest,
    LinkWrittenReportRequest, ListInvestigationsRequest, ListProtectionInstructionsRequest,
    ListReferralsRequest, ListServicesRequest, MandatoryReportGround, MonthlyReferralLogRequest,
    OpenCase, Payload, PlanAction, PlanReview, ProblemBehaviour, ProtectionMeasure, PurposeOfUse,
    RecordAgencyClockEventRequest, RecordAllegationRequest, RecordAnswerRequest,
    RecordContactRequest, RecordIncidentRequest, RecordPhoneReportRequest, RecordReviewRequest,
    ReferIncidentRequest, ReferInjuredChildRequest, ReferPupilRequest, ReferrerDetails,
    RegisterPreventiveRequest, ReportActionProgressRequest, ReportBypassingDirectorRequest,
    ReportCircumstances, ReportConcernRequest, ReporterStatus, RequestInformationRequest,
    ReviewDecision, RevokeDisclosureRequest, RiskLevel, RiskTier, Role, SendNoticeRequest,
    SendProtectionInstructionRequest, SendReferralLogRequest, SendRequest, Sensitivity,
    ServiceEvent, Sex, SupportPlan, UpdateInvestigationRequest, UpdateServiceRequest,
    decide_help_request_request, help_request_decision, payload,
};
use referral_tests::{
    Backend, StaffClient, TestHub, almaty,
    capture::{CapturedTelemetry, MemoryWriter},
    envelope,
    samples::{cd, row, sample_assessment, sample_plan},
};
use tonic::{Code, Status};
use tonic_types::StatusExt as _;
use tracing_subscriber::{
    fmt::format::FmtSpan, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

// ---------------------------------------------------------------------------------------------
// The fixture: a child and her parents, with distinctive names and addresses.

/// The child whose data must appear nowhere but in the forms themselves.
struct Child {
    full_name: &'static str,
    iin: String,
    /// The IIN with a wrong check digit (sent once, refused).
    bad_iin: String,
    date_of_birth: Date,
    address: &'static str,
    mother: &'static str,
    father: &'static str,
    father_address: &'static str,
    /// A member of staff an allegation about her accuses, by name (not in the directory).
    accused: &'static str,
}

impl Child {
    fn new(today: Date) -> Self {
        let date_of_birth = today - 11.years() - 4.months() - 17.days();
        let iin = (7351..=9999)
            .find_map(|serial| Iin::generate(date_of_birth, Sex::Female, serial))
            .expect("an IIN exists for some serial")
            .into_string();
        let mut bad_iin = iin.clone().into_bytes();
        bad_iin[11] = b'0' + (bad_iin[11] - b'0' + 1) % 10;
        Self {
            full_name: "Әйгерім Сұлтанқызы Жұмабаева",
            iin,
            bad_iin: String::from_utf8(bad_iin).expect("digits"),
            date_of_birth,
            address: "Түркістан облысы, Сайрам ауданы, Ақсукент ауылы, Жібек жолы көшесі, 58-үй",
            mother: "Гүлмира Бақытжанқызы Жұмабаева",
            father: "Сұлтан Ерболұлы Жұмабаев",
            father_address: "Маңғыстау облысы, Ақтау қ., 14-шағын аудан, 3-үй, 71-пәтер",
            accused: "Бауыржан Талғатұлы Есенбеков",
        }
    }

    fn first_name(&self) -> &'static str {
        self.full_name.split(' ').next().unwrap_or_default()
    }

    /// Form K about her: the sample K with her data in every personal field, and her first name
    /// in the free text.
    fn help_request(&self, today: Date) -> HelpRequest {
        let mut k = validate::sample_help_request(today);
        let child = k.child.as_mut().expect("the sample names a child");
        child.full_name = self.full_name.into();
        child.iin = self.iin.clone();
        child.date_of_birth = Some(cd(self.date_of_birth));
        child.age_years = 11;
        child.registered_address = self.address.into();
        let mother = k.mother.as_mut().expect("the sample names a mother");
        mother.full_name = self.mother.into();
        mother.address = self.address.into();
        let father = k.father.as_mut().expect("the sample names a father");
        father.full_name = self.father.into();
        father.address = self.father_address.into();
        k.problem_description = format!(
            "{} сабаққа жиі кешігеді, қолында көгерген іздер байқалды.",
            self.first_name()
        );
        k
    }

    /// Assessment L of her family.
    fn assessment(&self, today: Date) -> Assessment {
        let mut l = sample_assessment(today);
        l.family[0].full_name = self.full_name.into();
        l.family[0].address = self.address.into();
        l.family[1].full_name = self.mother.into();
        l.family[1].address = self.address.into();
        if let Some(signature) = l.family_signature.as_mut() {
            signature.signer_name = self.mother.into();
        }
        l.discussion_participants = vec![self.mother.into(), "Дана Омарова".into()];
        l.concerns_and_risks = format!("{}: үйде ұрсыс, көгерген іздер", self.first_name());
        l
    }

    /// Support plan M for her.
    fn plan(&self, today: Date, rows: Vec<PlanAction>) -> SupportPlan {
        let mut m = sample_plan(today, rows);
        m.parents[0].full_name = self.mother.into();
        let child = m.child.as_mut().expect("the sample plan names a child");
        child.full_name = self.full_name.into();
        child.age_years = 11;
        child.address = self.address.into();
        m
    }

    /// What must not appear, each with what it is: her full name and every part of it of four
    /// letters or more, both IINs, the addresses, the parents' full names and their parts, and
    /// the full name (and parts) of the member of staff an allegation accuses.
    fn personal_data(&self) -> Vec<(String, String)> {
        let mut data = vec![
            ("child's full name".to_owned(), self.full_name.to_owned()),
            ("child's IIN".to_owned(), self.iin.clone()),
            (
                "child's IIN with a bad check digit".to_owned(),
                self.bad_iin.clone(),
            ),
            ("child's address".to_owned(), self.address.to_owned()),
            (
                "a part of the child's address".to_owned(),
                "Ақсукент".to_owned(),
            ),
            ("mother's full name".to_owned(), self.mother.to_owned()),
            ("father's full name".to_owned(), self.father.to_owned()),
            (
                "father's address".to_owned(),
                self.father_address.to_owned(),
            ),
            (
                "the accused staff member's full name".to_owned(),
                self.accused.to_owned(),
            ),
        ];
        for (whose, name) in [
            ("child's", self.full_name),
            ("mother's", self.mother),
            ("father's", self.father),
            ("accused staff member's", self.accused),
        ] {
            for part in name.split(' ').filter(|p| p.chars().count() >= 4) {
                data.push((format!("a part of the {whose} name"), part.to_owned()));
            }
        }
        data
    }
}

// ---------------------------------------------------------------------------------------------
// The capture: one global subscriber and meter provider for the whole test binary.

struct Capture {
    /// The production subscriber's log lines and spans.
    telemetry: CapturedTelemetry,
    /// Every event as JSON with all its fields and its spans' fields, and every span's close.
    json: MemoryWriter,
    metrics: InMemoryMetricExporter,
    meter_provider: SdkMeterProvider,
}

/// Installs the capture the first time it is called; every test of this binary shares it.
fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let telemetry = CapturedTelemetry::new();
        opentelemetry::global::set_tracer_provider(telemetry.tracer_provider.clone());
        let metrics = InMemoryMetricExporter::default();
        let meter_provider = SdkMeterProvider::builder()
            .with_periodic_exporter(metrics.clone())
            .build();
        opentelemetry::global::set_meter_provider(meter_provider.clone());

        let json = MemoryWriter::default();
        let config = TelemetryConfig {
            filter: "trace".into(),
            ..TelemetryConfig::default()
        };
        telemetry
            .subscriber(&config)
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_span_events(FmtSpan::CLOSE)
                    .with_writer(json.clone()),
            )
            .try_init()
            .expect("this test binary installs the only global subscriber");
        tracing::info!("capture installed");
        Capture {
            telemetry,
            json,
            metrics,
            meter_provider,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The scenario.

/// What a client was told when it was refused.
#[derive(Default)]
struct Refusals(Vec<(&'static str, String)>);

impl Refusals {
    /// Records a refusal: its code, message, decoded details (field violations and the rest),
    /// the raw details and the metadata.
    fn record<T: std::fmt::Debug>(
        &mut self,
        what: &'static str,
        expected: Code,
        result: Result<T, Status>,
    ) {
        let status = result.expect_err(what);
        assert_eq!(status.code(), expected, "{what}: {}", status.message());
        self.0.push((
            what,
            format!(
                "{:?} {} {:?} {} {:?}",
                status.code(),
                status.message(),
                status.get_error_details(),
                String::from_utf8_lossy(status.details()),
                status.metadata(),
            ),
        ));
    }
}

async fn get_case(curator: &StaffClient, case: &str) -> CaseFile {
    read_case(curator, case, PurposeOfUse::CareManagement, "")
        .await
        .expect("the case file reads")
}

async fn version(curator: &StaffClient, case: &str) -> u64 {
    get_case(curator, case)
        .await
        .summary
        .expect("a summary")
        .version
}

/// The commission's own staff reading its case file (`GetCase`), or the refusal.
async fn read_case(
    staff: &StaffClient,
    case: &str,
    purpose: PurposeOfUse,
    reason: &str,
) -> Result<CaseFile, Status> {
    staff
        .case_files()
        .get_case(staff.req(GetCaseRequest {
            case_reference: case.into(),
            purpose_of_use: purpose as i32,
            reason: reason.into(),
        }))
        .await
        .map(tonic::Response::into_inner)
}

fn has_assessment(file: &CaseFile) -> bool {
    file.cycles.iter().any(|c| c.assessment.is_some())
}

/// A received message, as its agency's staff open it.
async fn received(staff: &StaffClient, message_id: &str) -> Envelope {
    staff
        .client
        .clone()
        .get_message(staff.req(GetMessageRequest {
            message_id: message_id.into(),
        }))
        .await
        .expect("the message opens")
        .into_inner()
        .envelope
        .expect("an envelope")
}

/// The commission's secretary opens a case on the K `k_id` with `curator`: the case reference
/// and the decision's message id (not waited for: a decision may be withheld).
async fn open_case(hub: &TestHub, k_id: &str, key: &str, curator: &str) -> (String, String) {
    let secretary = hub.staff("commission", "secretary").await;
    let decision = secretary
        .decide(
            k_id,
            key,
            decide_help_request_request::Outcome::OpenCase(OpenCase {
                curator_user_id: curator.into(),
            }),
        )
        .await
        .expect("the commission opens a case");
    match decision.decision.and_then(|d| d.outcome) {
        Some(help_request_decision::Outcome::CaseOpened(c)) => {
            (c.case_reference, decision.decision_message_id)
        }
        other => panic!("expected a case, got {other:?}"),
    }
}

/// Everything done with the child's data: a K, the commission's decision, a second K about her
/// from another agency (linked by her IIN's keyed hash), a case worked from contact to closure
/// with other agencies taking part, reads of it through the hub, a disclosure grant, the glass
/// broken, her disclosure history; reports about her that concern a residential institution,
/// consultations, and refusals that concern her; then the agencies' own work about her (issue
/// 5): the school's safeguarding concerns and an allegation against a member of staff, her
/// referral to an NGO and the log J, an incident at her institution referred to the commission,
/// the police and health and a report bypassing its director, the police and health working
/// her case, a protection instruction, and the agency clocks running out; each service also
/// refusing a request about her. Add each new feature that touches a child's record here.
async fn scenario(hub: &TestHub, child: &Child, refusals: &mut Refusals) {
    let case = referral_and_case_opened(hub, child).await;
    same_child_referred_again(hub, child, &case).await;
    case_worked(hub, child, &case, refusals).await;
    case_read_through_the_hub(hub, &case, refusals).await;
    assessment_granted_to_the_ngo(hub, child, &case).await;
    glass_broken_by_the_chair(hub, child, &case, refusals).await;
    case_reviewed_and_closed(hub, child, &case, refusals).await;
    disclosure_history_listed(hub, &case).await;
    reports_about_her_institution(hub, child, refusals).await;
    consultations(hub, child, refusals).await;
    refused_requests(hub, child, refusals).await;
    let (case, unconfirmed_concern) = safeguarding_concerns_about_her(hub, child, refusals).await;
    let allegation = allegation_against_staff(hub, child, refusals).await;
    let service = referred_to_the_ngo(hub, child, refusals).await;
    let incident = incidents_at_her_institution(hub, child, refusals).await;
    let work = AgencyWork {
        case,
        unconfirmed_concern,
        allegation,
        service,
        incident,
    };
    police_link_her_case(hub, child, &work, refusals).await;
    health_notices_about_her(hub, child, &work, refusals).await;
    protection_instruction_about_her(hub, child, &work, refusals).await;
    agency_clocks_run_out_and_log_j_sent(hub, &work).await;
    hub.gateway()
        .settle()
        .await
        .expect("the deadline engine settles");
}

/// School 1 refers her (K); the commission opens a case with curator-1.
async fn referral_and_case_opened(hub: &TestHub, child: &Child) -> String {
    let director = hub.staff("school-1", "director").await;
    let k_id = director
        .submit_k("npd-help-request", "", child.help_request(hub.today()))
        .await
        .expect("the school refers the child");
    hub.delivered(&k_id).await;
    let (case, decision) = open_case(hub, &k_id, "npd-decision", "curator-1").await;
    hub.delivered(&decision).await;
    case
}

/// Health 1 refers her too, with the same IIN: the commission's copy names the school's
/// referral and its case (the gateway links them by the IIN's keyed hash); left undecided.
async fn same_child_referred_again(hub: &TestHub, child: &Child, case: &str) {
    let doctor = hub.staff("health-1", "doctor").await;
    let k_id = doctor
        .submit_k(
            "npd-help-request-health",
            "",
            child.help_request(hub.today()),
        )
        .await
        .expect("the hospital refers the same child");
    hub.delivered(&k_id).await;
    let secretary = hub.staff("commission", "secretary").await;
    let linked = received(&secretary, &k_id).await.linked_referrals;
    assert_eq!(linked.len(), 1, "{linked:?}");
    assert_eq!(linked[0].referring_agency_id, "school-1");
    assert_eq!(linked[0].case_reference, case);
}

/// The case worked: a contact, an information request the hospital answers, L, M with rows for
/// the NGO and the school, progress reported on a row; and a stale change refused on the way.
async fn case_worked(hub: &TestHub, child: &Child, case: &str, refusals: &mut Refusals) {
    let t = hub.today();
    let curator = hub.staff("commission", "curator-1").await;
    let files = curator.case_files();
    let contact = Contact {
        date: Some(cd(t)),
        made_by: "curator-1".into(),
        with_whom: child.mother.into(),
        method: ContactMethod::HomeVisit as i32,
        summary: format!("{} үйінде болдық: {}", child.first_name(), child.address),
    };
    let base = version(&curator, case).await;
    files
        .clone()
        .record_contact(curator.req(RecordContactRequest {
            case_reference: case.into(),
            base_version: base,
            contact: Some(contact.clone()),
        }))
        .await
        .expect("contact recorded");
    let stale = files
        .clone()
        .record_contact(curator.req(RecordContactRequest {
            case_reference: case.into(),
            base_version: base,
            contact: Some(contact),
        }))
        .await;
    refusals.record("a stale contact", Code::Aborted, stale);

    files
        .clone()
        .request_information(curator.req(RequestInformationRequest {
            case_reference: case.into(),
            base_version: version(&curator, case).await,
            idempotency_key: "npd-info".into(),
            recipient_agency_id: "health-1".into(),
            questions: format!("{} ({}) емханаға жүгінді ме?", child.full_name, child.iin),
            answer_by: Some(cd(t + 7.days())),
        }))
        .await
        .expect("information requested");
    hub.deliver_everything().await;
    let doctor = hub.staff("health-1", "doctor").await;
    let request = doctor
        .inbox_of(FormKind::InformationRequest)
        .await
        .pop()
        .expect("the hospital receives the request");
    let answer = doctor
        .client
        .clone()
        .answer_information_request(doctor.req(AnswerInformationRequestRequest {
            message_id: request.message_id,
            idempotency_key: "npd-info-answer".into(),
            answer: format!("{} екі рет жүгінді, жарақат тіркелді", child.full_name),
            responder_position: "Педиатр".into(),
        }))
        .await
        .expect("the hospital answers")
        .into_inner();
    hub.delivered(&answer.response_message_id).await;

    files
        .clone()
        .file_assessment(curator.req(FileAssessmentRequest {
            case_reference: case.into(),
            base_version: version(&curator, case).await,
            assessment: Some(child.assessment(t)),
            risk_level: RiskLevel::Medium as i32,
        }))
        .await
        .expect("L filed");
    files
        .clone()
        .file_support_plan(curator.req(FileSupportPlanRequest {
            case_reference: case.into(),
            base_version: version(&curator, case).await,
            idempotency_key: "npd-plan".into(),
            plan: Some(child.plan(
                t,
                vec![
                    row(1, t + 30.days(), "ngo-1"),
                    row(2, t + 20.days(), "school-1"),
                ],
            )),
            first_review_on: None,
        }))
        .await
        .expect("M filed");
    hub.deliver_everything().await;

    let ngo = hub.staff("ngo-1", "case-manager").await;
    let assignment = ngo
        .inbox_of(FormKind::ActionAssignment)
        .await
        .pop()
        .expect("the NGO receives its row");
    let progress = ngo
        .client
        .clone()
        .report_action_progress(ngo.req(ReportActionProgressRequest {
            message_id: assignment.message_id,
            idempotency_key: "npd-progress".into(),
            state: ActionProgressState::Completed as i32,
            note: format!("{} 8 кездесуге қатысты", child.first_name()),
        }))
        .await
        .expect("the NGO reports its row completed")
        .into_inner();
    hub.delivered(&progress.progress_message_id).await;
}

/// A review with minutes to the NGO and the school, closure, and an L for the closed case
/// refused.
async fn case_reviewed_and_closed(
    hub: &TestHub,
    child: &Child,
    case: &str,
    refusals: &mut Refusals,
) {
    let t = hub.today();
    let curator = hub.staff("commission", "curator-1").await;
    let files = curator.case_files();
    files
        .clone()
        .record_review(curator.req(RecordReviewRequest {
            case_reference: case.into(),
            base_version: version(&curator, case).await,
            idempotency_key: "npd-review".into(),
            review: Some(PlanReview {
                meeting_on: Some(cd(t)),
                participants: vec!["Дана Омарова".into(), child.mother.into()],
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
    files
        .clone()
        .close_case(curator.req(CloseCaseRequest {
            case_reference: case.into(),
            base_version: version(&curator, case).await,
            criteria: vec![ClosureCriterion::RiskReduced as i32],
            family_told_how_to_ask_again: format!("{} телефон нөмірін алды", child.mother),
            note: String::new(),
        }))
        .await
        .expect("case closed");
    hub.deliver_everything().await;

    let closed = files
        .clone()
        .file_assessment(curator.req(FileAssessmentRequest {
            case_reference: case.into(),
            base_version: version(&curator, case).await,
            assessment: Some(child.assessment(t)),
            risk_level: RiskLevel::Low as i32,
        }))
        .await;
    refusals.record("an L for the closed case", Code::FailedPrecondition, closed);
}

/// Reads through the hub: the referring school and the NGO carrying a row see their views, the
/// police (with no part in the case) are refused, and an aggregate read shows the status only.
async fn case_read_through_the_hub(hub: &TestHub, case: &str, refusals: &mut Refusals) {
    let school = hub.staff("school-1", "director").await;
    let view = school
        .read_shared(case, PurposeOfUse::CoordinationOfCare)
        .await
        .expect("the referring school reads the case's status");
    assert!(!has_assessment(view.case_file.as_ref().expect("a file")));
    let ngo = hub.staff("ngo-1", "case-manager").await;
    let view = ngo
        .read_shared(case, PurposeOfUse::CoordinationOfCare)
        .await
        .expect("the NGO reads its work");
    assert!(!has_assessment(view.case_file.as_ref().expect("a file")));
    let police = hub.staff("police-1", "inspector").await;
    let result = police.read_shared(case, PurposeOfUse::LawEnforcement).await;
    refusals.record(
        "the police reading a case they have no part in",
        Code::PermissionDenied,
        result,
    );
    let view = ngo
        .read_shared(case, PurposeOfUse::AggregateReporting)
        .await
        .expect("an aggregate read");
    assert_eq!(view.sections_shown, vec![Sensitivity::CaseStatus as i32]);
}

/// The curator grants the NGO her assessment for an hour, with a reason naming her (kept in the
/// gateway's grants table); the NGO reads L; an hour and a minute later it no longer can; the
/// grant is revoked.
async fn assessment_granted_to_the_ngo(hub: &TestHub, child: &Child, case: &str) {
    let curator = hub.staff("commission", "curator-1").await;
    let ngo = hub.staff("ngo-1", "case-manager").await;
    let grant = curator
        .case_files()
        .grant_disclosure(curator.req(GrantDisclosureRequest {
            case_reference: case.into(),
            grantee_agency_id: "ngo-1".into(),
            section: Sensitivity::Assessment as i32,
            expires_at: Some(referral_core::time::to_proto(
                hub.clock.now() + SignedDuration::from_hours(1),
            )),
            reason: format!("Психолог {} бағалауын көруі керек", child.first_name()),
            ..Default::default()
        }))
        .await
        .expect("L granted to the NGO")
        .into_inner();
    let shared = |what: &'static str| {
        let ngo = &ngo;
        async move {
            ngo.read_shared(case, PurposeOfUse::CoordinationOfCare)
                .await
                .expect(what)
                .case_file
                .expect("a file")
        }
    };
    assert!(has_assessment(&shared("the NGO reads L, granted").await));
    hub.clock.advance(SignedDuration::from_mins(61));
    assert!(!has_assessment(&shared("the NGO reads the case").await));
    curator
        .case_files()
        .revoke_disclosure(curator.req(RevokeDisclosureRequest {
            grant_id: grant.grant_id,
            ..Default::default()
        }))
        .await
        .expect("the grant revoked");
}

/// The chair breaks the glass: without a reason refused; with a reason naming her, the whole
/// file, and the curator alerted with the reason (a message meant for them).
async fn glass_broken_by_the_chair(
    hub: &TestHub,
    child: &Child,
    case: &str,
    refusals: &mut Refusals,
) {
    let chair = hub.staff("commission", "chair").await;
    let result = read_case(&chair, case, PurposeOfUse::BreakTheGlass, "").await;
    refusals.record(
        "break-the-glass without a reason",
        Code::InvalidArgument,
        result,
    );
    let reason = format!(
        "{} түнде жоғалып кетті, куратор байланыста жоқ",
        child.full_name
    );
    let file = read_case(&chair, case, PurposeOfUse::BreakTheGlass, &reason)
        .await
        .expect("the chair breaks the glass");
    assert!(has_assessment(&file));
    hub.deliver_everything().await;
    let curator = hub.staff("commission", "curator-1").await;
    let alert = curator
        .inbox_of(FormKind::DisclosureAlert)
        .await
        .pop()
        .expect("the curator is alerted");
    match received(&curator, &alert.message_id)
        .await
        .payload
        .and_then(|p| p.form)
    {
        Some(payload::Form::DisclosureAlert(a)) => assert!(a.reason == reason),
        _ => panic!("expected a disclosure alert"),
    }
}

/// The curator lists the case's disclosure history.
async fn disclosure_history_listed(hub: &TestHub, case: &str) {
    let curator = hub.staff("commission", "curator-1").await;
    let records = curator.disclosures(case).await.expect("the history lists");
    let events: Vec<&str> = records.iter().map(|r| r.event.as_str()).collect();
    for expected in [
        "case.read",
        "access.denied",
        "grant.created",
        "grant.revoked",
    ] {
        assert!(
            events.contains(&expected),
            "{expected} missing in {events:?}"
        );
    }
}

/// Two more reports about her that concern residential-1. The school reports that she lives
/// there: the curator's information request to it is refused, as is its reading of the case. A
/// member of its staff reports its director: the police receive the report directly, the
/// decision is withheld from the institution, and its director cannot see the report.
async fn reports_about_her_institution(hub: &TestHub, child: &Child, refusals: &mut Refusals) {
    let t = hub.today();
    let lead = hub.staff("school-1", "safeguarding-lead").await;
    let mut k = child.help_request(t);
    k.circumstances = Some(ReportCircumstances {
        child_residence_agency_id: "residential-1".into(),
        ..Default::default()
    });
    let k_id = lead
        .submit_k("npd-residence", "", k)
        .await
        .expect("the school reports a child of the institution");
    hub.delivered(&k_id).await;
    let (case, decision) = open_case(hub, &k_id, "npd-residence-decision", "curator-1").await;
    hub.delivered(&decision).await;
    let curator = hub.staff("commission", "curator-1").await;
    let result = curator
        .case_files()
        .request_information(curator.req(RequestInformationRequest {
            case_reference: case.clone(),
            base_version: version(&curator, &case).await,
            idempotency_key: "npd-residence-info".into(),
            recipient_agency_id: "residential-1".into(),
            questions: format!("{} ({}) туралы не білесіз?", child.full_name, child.iin),
            answer_by: Some(cd(t + 7.days())),
        }))
        .await;
    refusals.record(
        "an information request to the institution she lives in",
        Code::PermissionDenied,
        result,
    );
    let director = hub.staff("residential-1", "director").await;
    let result = director
        .read_shared(&case, PurposeOfUse::CoordinationOfCare)
        .await;
    refusals.record(
        "her institution reading the case",
        Code::PermissionDenied,
        result,
    );

    let staff = hub.staff("residential-1", "staff").await;
    let mut k = child.help_request(t);
    k.circumstances = Some(ReportCircumstances {
        implicated_director_agency_id: "residential-1".into(),
        ..Default::default()
    });
    let k_id = staff
        .submit_k("npd-director", "", k)
        .await
        .expect("the staff report their director");
    hub.deliver_everything().await;
    let inspector = hub.staff("police-1", "inspector").await;
    let copy = inspector
        .inbox_of(FormKind::HelpRequest)
        .await
        .pop()
        .expect("the police receive the report directly");
    received(&inspector, &copy.message_id).await;
    let (_, decision) = open_case(hub, &k_id, "npd-director-decision", "curator-2").await;
    assert_eq!(
        hub.gateway_state(&decision).await.as_deref(),
        Some("withheld")
    );
    hub.deliver_everything().await;
    let result = director
        .client
        .clone()
        .get_sent_message(director.req(GetSentMessageRequest { message_id: k_id }))
        .await;
    refusals.record(
        "the implicated director asking for the report",
        Code::NotFound,
        result,
    );
}

/// The school consults the commission: with her IIN in the concern refused, at its service and
/// at the gateway; without identity delivered and answered.
async fn consultations(hub: &TestHub, child: &Child, refusals: &mut Refusals) {
    let lead = hub.staff("school-1", "safeguarding-lead").await;
    let consultation = |concern: String| Consultation {
        concern,
        question: "Не істеу керек?".into(),
        child_age_years: 11,
        consulted_by: String::new(),
    };
    let with_iin = consultation(format!(
        "Оқушы {} жиі сабаққа келмейді, үйде жанжал бар",
        child.iin
    ));
    let result = lead
        .client
        .clone()
        .consult(lead.req(ConsultRequest {
            idempotency_key: "npd-consult-iin".into(),
            consultation: Some(with_iin.clone()),
        }))
        .await;
    refusals.record("a consultation with her IIN", Code::InvalidArgument, result);
    let mut direct = envelope(
        "school-1",
        "safeguarding-lead",
        Role::SafeguardingLead,
        "commission",
        "npd-consult-iin-direct",
        HelpRequest::default(),
    );
    direct.form_kind = FormKind::Consultation as i32;
    direct.payload = Some(Payload {
        form: Some(payload::Form::Consultation(Consultation {
            consulted_by: "Safeguarding lead".into(),
            ..with_iin
        })),
    });
    let result = hub
        .gateway_client_as("school-1")
        .await
        .send(SendRequest {
            envelope: Some(direct),
        })
        .await;
    refusals.record(
        "a consultation with her IIN, at the gateway",
        Code::InvalidArgument,
        result,
    );

    let consulted = lead
        .client
        .clone()
        .consult(lead.req(ConsultRequest {
            idempotency_key: "npd-consult".into(),
            consultation: Some(consultation(
                "5-сыныптағы оқушы жиі кешігеді, қолында көгерген іздер бар".into(),
            )),
        }))
        .await
        .expect("a consultation without identity")
        .into_inner();
    hub.delivered(&consulted.message_id).await;
    let secretary = hub.staff("commission", "secretary").await;
    let question = secretary
        .inbox_of(FormKind::Consultation)
        .await
        .pop()
        .expect("the commission receives the consultation");
    let answer = secretary
        .client
        .clone()
        .answer_consultation(secretary.req(AnswerConsultationRequest {
            message_id: question.message_id,
            advice: "Қауіп белгілері болса, K жіберіңіз.".into(),
        }))
        .await
        .expect("the commission answers")
        .into_inner();
    hub.delivered(&answer.answer_message_id).await;
}

/// Invalid input about her and a forbidden flow, at the agency services and at the gateway.
async fn refused_requests(hub: &TestHub, child: &Child, refusals: &mut Refusals) {
    let t = hub.today();
    let director = hub.staff("school-1", "director").await;

    let mut bad_iin = child.help_request(t);
    bad_iin.child.as_mut().unwrap().iin = child.bad_iin.clone();
    let result = director.submit_k("npd-bad-iin", "", bad_iin.clone()).await;
    refusals.record("a K with a bad IIN", Code::InvalidArgument, result);

    let mut too_long = child.help_request(t);
    too_long.child.as_mut().unwrap().full_name = [child.full_name; 10].join(" ");
    too_long.mother.as_mut().unwrap().address = [child.address; 60].join("; ");
    let result = director.submit_k("npd-too-long", "", too_long).await;
    refusals.record("a K with fields too long", Code::InvalidArgument, result);

    let ngo = hub.staff("ngo-1", "case-manager").await;
    let result = ngo
        .submit_k("npd-to-police", "police-1", child.help_request(t))
        .await;
    refusals.record(
        "a K from an NGO to the police",
        Code::PermissionDenied,
        result,
    );

    // Straight to the gateway, past the agency's own checks.
    let mut gateway = hub.gateway_client_as("school-1").await;
    let result = gateway
        .send(SendRequest {
            envelope: Some(envelope(
                "school-1",
                "director",
                Role::SchoolDirector,
                "commission",
                "npd-gateway-bad-iin",
                bad_iin,
            )),
        })
        .await;
    refusals.record(
        "a K with a bad IIN, at the gateway",
        Code::InvalidArgument,
        result,
    );
    let result = gateway
        .send(SendRequest {
            envelope: Some(envelope(
                "school-1",
                "director",
                Role::SchoolDirector,
                "police-1",
                "npd-gateway-to-police",
                child.help_request(t),
            )),
        })
        .await;
    refusals.record(
        "a K from a school to the police, at the gateway",
        Code::PermissionDenied,
        result,
    );
}

// ---------------------------------------------------------------------------------------------
// The agencies' own work about her (issue 5).

/// What the agencies' own work about her left for the steps after it.
struct AgencyWork {
    /// The case opened on the school's written report of her concern.
    case: String,
    /// The concern phoned and never confirmed in writing.
    unconfirmed_concern: String,
    /// The allegation nobody acknowledges.
    allegation: String,
    /// Her service at ngo-1.
    service: String,
    /// The residential institution's report D of the incident involving her.
    incident: String,
}

/// School 1's safeguarding procedure about her: a concern with a bad field refused; a concern
/// reported, phoned, linked to the school's K (which names residential-1 as her home), the K
/// decided by the commission (the answer), an answer recorded again refused, the concern
/// closed; a second concern phoned and never confirmed in writing; a clock event straight at the
/// gateway with her IIN as subject and her name as the responsible user refused. Returns the case
/// and the unconfirmed concern.
async fn safeguarding_concerns_about_her(
    hub: &TestHub,
    child: &Child,
    refusals: &mut Refusals,
) -> (String, String) {
    let t = hub.today();
    let teacher = hub.staff("school-1", "safety-team").await;
    let lead = hub.staff("school-1", "safeguarding-lead").await;
    let concern = |key: &str| ReportConcernRequest {
        idempotency_key: key.into(),
        pupil_name: child.full_name.into(),
        pupil_class: "5 «А»".into(),
        what_happened: format!(
            "{} қолында көгерген іздер бар; мекенжайы: {}, ЖСН {}",
            child.first_name(),
            child.address,
            child.iin
        ),
        observed_on: Some(cd(t)),
        at_risk_now: false,
    };
    let result = teacher
        .safeguarding()
        .report_concern(teacher.req(ReportConcernRequest {
            pupil_class: String::new(),
            observed_on: Some(cd(t + 1.days())),
            ..concern("npd-concern-bad")
        }))
        .await;
    refusals.record(
        "a concern about her with bad fields",
        Code::InvalidArgument,
        result,
    );
    let reported = teacher
        .safeguarding()
        .report_concern(teacher.req(concern("npd-concern")))
        .await
        .expect("the concern is reported")
        .into_inner();
    let id = reported.concern_id;
    let phone = |id: &str, at: Timestamp| RecordPhoneReportRequest {
        concern_id: id.into(),
        phoned_at: Some(referral_core::time::to_proto(at)),
    };
    let result = lead
        .safeguarding()
        .record_phone_report(lead.req(phone(&id, hub.clock.now() + SignedDuration::from_hours(2))))
        .await;
    refusals.record(
        "a phone report in the future",
        Code::InvalidArgument,
        result,
    );
    lead.safeguarding()
        .record_phone_report(lead.req(phone(&id, hub.clock.now())))
        .await
        .expect("the lead phones the service");

    let mut k = child.help_request(t);
    k.circumstances = Some(ReportCircumstances {
        child_residence_agency_id: "residential-1".into(),
        ..Default::default()
    });
    let k_id = lead
        .submit_k("npd-safeguarding-k", "", k)
        .await
        .expect("the school's written report");
    hub.delivered(&k_id).await;
    let linked = lead
        .safeguarding()
        .link_written_report(lead.req(LinkWrittenReportRequest {
            concern_id: id.clone(),
            help_request_message_id: k_id.clone(),
        }))
        .await
        .expect("the K confirms the phone call")
        .into_inner();
    assert_eq!(linked.state, ConcernState::ReferredInWriting as i32);
    let (case, decision) = open_case(hub, &k_id, "npd-safeguarding-decision", "curator-1").await;
    hub.delivered(&decision).await;
    assert_eq!(
        lead.safeguarding()
            .get_concern(lead.req(GetConcernRequest {
                concern_id: id.clone(),
            }))
            .await
            .expect("the concern reads")
            .into_inner()
            .state,
        ConcernState::Answered as i32,
        "the commission's decision answers the concern"
    );
    let result = lead
        .safeguarding()
        .record_answer(lead.req(RecordAnswerRequest {
            concern_id: id.clone(),
            answer_note: format!("{} ісі ашылды", child.full_name),
        }))
        .await;
    refusals.record(
        "an answer recorded for an answered concern",
        Code::FailedPrecondition,
        result,
    );
    lead.safeguarding()
        .close_concern(lead.req(CloseConcernRequest {
            concern_id: id,
            reason: format!("Комиссия {} ісін ашты", child.first_name()),
        }))
        .await
        .expect("the concern is closed");

    let unconfirmed = teacher
        .safeguarding()
        .report_concern(teacher.req(ReportConcernRequest {
            what_happened: format!("{} бүгін де жылап келді", child.full_name),
            ..concern("npd-concern-2")
        }))
        .await
        .expect("a second concern")
        .into_inner()
        .concern_id;
    lead.safeguarding()
        .record_phone_report(lead.req(phone(&unconfirmed, hub.clock.now())))
        .await
        .expect("phoned, never confirmed");

    let result = hub
        .gateway_client_as("school-1")
        .await
        .record_agency_clock_event(RecordAgencyClockEventRequest {
            idempotency_key: "npd-clock-event-iin".into(),
            acting_user: Some(ActingUser {
                user_id: "safeguarding-lead".into(),
                agency_id: "school-1".into(),
                role: Role::SafeguardingLead as i32,
                display_name: child.mother.into(),
            }),
            event: Some(AgencyClockEvent {
                kind: AgencyClockEventKind::ConcernPhoned as i32,
                subject_reference: child.iin.clone(),
                occurred_at: Some(referral_core::time::to_proto(hub.clock.now())),
                responsible_user_id: child.full_name.into(),
                ..Default::default()
            }),
        })
        .await;
    refusals.record(
        "a clock event with her IIN as its subject, at the gateway",
        Code::InvalidArgument,
        result,
    );
    (case, unconfirmed)
}

/// A teacher reports an allegation about her against a member of staff named (not in the
/// directory); one naming the accused both by user and by name is refused. Nobody acknowledges
/// it. Returns the allegation.
async fn allegation_against_staff(hub: &TestHub, child: &Child, refusals: &mut Refusals) -> String {
    let teacher = hub.staff("school-1", "safety-team").await;
    let allegation = |key: &str, user: &str| RecordAllegationRequest {
        idempotency_key: key.into(),
        accused_user_id: user.into(),
        accused_name: child.accused.into(),
        allegation: format!("{} {}-ны итеріп жіберді", child.accused, child.first_name()),
        happened_on: Some(cd(hub.today())),
    };
    let result = teacher
        .safeguarding()
        .record_allegation(teacher.req(allegation("npd-allegation-both", "safeguarding-deputy")))
        .await;
    refusals.record(
        "an allegation naming the accused twice",
        Code::InvalidArgument,
        result,
    );
    let recorded = teacher
        .safeguarding()
        .record_allegation(teacher.req(allegation("npd-allegation", "")))
        .await
        .expect("the allegation is recorded")
        .into_inner();
    assert_eq!(recorded.assigned_to_user_id, "director");
    recorded.allegation_id
}

/// The safety team refers her to ngo-1 (a referral with bad fields refused first); the NGO
/// accepts and reports a week's progress naming her (a decline without a reason refused); the
/// log J of the month is read and exported as CSV (an unknown format refused), and sending it
/// before the month has ended refused. Returns her service.
async fn referred_to_the_ngo(hub: &TestHub, child: &Child, refusals: &mut Refusals) -> String {
    let t = hub.today();
    let school = hub.staff("school-1", "safety-team").await;
    let referral = |key: &str| ReferPupilRequest {
        idempotency_key: key.into(),
        pupil_full_name: child.full_name.into(),
        class_name: "5 «А»".into(),
        date_of_birth: Some(cd(child.date_of_birth)),
        risk_tier: RiskTier::HighRisk as i32,
        ngo_agency_id: "ngo-1".into(),
        support_requested: format!("{} үшін психологтың кеңестері", child.first_name()),
        reason: format!("{} үйде зорлық көреді ({})", child.full_name, child.address),
        contact_person: child.mother.into(),
        contact_phone: "+7 702 000 0002".into(),
    };
    let result = school
        .school_referrals()
        .refer_pupil(school.req(ReferPupilRequest {
            date_of_birth: Some(cd(t + 1.days())),
            risk_tier: RiskTier::NotAtRisk as i32,
            ngo_agency_id: child.address.into(),
            ..referral("npd-refer-bad")
        }))
        .await;
    refusals.record(
        "a referral of her with bad fields",
        Code::InvalidArgument,
        result,
    );
    let record = school
        .school_referrals()
        .refer_pupil(school.req(referral("npd-refer")))
        .await
        .expect("the school refers her")
        .into_inner();
    hub.delivered(&record.message_id).await;

    let ngo = hub.staff("ngo-1", "case-manager").await;
    let service = ngo
        .ngo_services()
        .list_services(ngo.req(ListServicesRequest {
            include_ended: false,
        }))
        .await
        .expect("the NGO lists its services")
        .into_inner()
        .services
        .into_iter()
        .find(|s| s.referral_reference == record.referral_id)
        .expect("the NGO received her referral")
        .service_id;
    let step = |key: &str, event: ServiceEvent| UpdateServiceRequest {
        service_id: service.clone(),
        idempotency_key: key.into(),
        event: event as i32,
        ..Default::default()
    };
    let result = ngo
        .ngo_services()
        .update_service(ngo.req(step("npd-decline", ServiceEvent::Declined)))
        .await;
    refusals.record("a decline without a reason", Code::InvalidArgument, result);
    for request in [
        UpdateServiceRequest {
            support_received: format!("{} апта сайын психологпен кездеседі", child.first_name()),
            ..step("npd-accept", ServiceEvent::Accepted)
        },
        UpdateServiceRequest {
            note: format!(
                "{} екі кездесуге келді, анасы {} қатысты",
                child.full_name, child.mother
            ),
            ..step("npd-week-1", ServiceEvent::WeeklyProgress)
        },
    ] {
        let answer = ngo
            .ngo_services()
            .update_service(ngo.req(request))
            .await
            .expect("the NGO's step")
            .into_inner();
        hub.delivered(&answer.message_id).await;
    }

    let (year, month) = (i32::from(t.year()), i32::from(t.month()));
    let log = school
        .school_referrals()
        .monthly_referral_log(school.req(MonthlyReferralLogRequest { year, month }))
        .await
        .expect("the log J reads")
        .into_inner();
    assert!(log.rows.iter().any(|r| r.pupil_name == child.full_name));
    let export = |format: ExportFormat| ExportReferralLogRequest {
        year,
        month,
        format: format as i32,
    };
    let csv = school
        .school_referrals()
        .export_referral_log(school.req(export(ExportFormat::Csv)))
        .await
        .expect("the log J as CSV")
        .into_inner();
    assert!(String::from_utf8_lossy(&csv.content).contains(child.full_name));
    let result = school
        .school_referrals()
        .export_referral_log(school.req(export(ExportFormat::Unspecified)))
        .await;
    refusals.record("the log J in no format", Code::InvalidArgument, result);
    let result = school
        .school_referrals()
        .send_referral_log(school.req(SendReferralLogRequest {
            year,
            month,
            idempotency_key: "npd-log-early".into(),
        }))
        .await;
    refusals.record(
        "the log J sent before the month ended",
        Code::FailedPrecondition,
        result,
    );
    service
}

/// Residential-1's staff record a fight in which she was injured (report D, her IIN given); the
/// director assesses it (a bad assessment refused) and refers it to the commission and the
/// police in one action; the staff refer her injury to health (with a bad IIN refused first);
/// the director closes it. A member of staff reports the director hurting her, bypassing the
/// director (who cannot file it). Returns report D.
async fn incidents_at_her_institution(
    hub: &TestHub,
    child: &Child,
    refusals: &mut Refusals,
) -> String {
    let t = hub.today();
    let staff = hub.staff("residential-1", "staff").await;
    let director = hub.staff("residential-1", "director").await;
    let fight = IncidentReport {
        report_date: Some(cd(t)),
        reporter_name: "Жанар Төлеуқызы Сағындықова".into(),
        reporter_status: ReporterStatus::Staff as i32,
        incident_date: Some(cd(t)),
        description: format!("Жатақханада {} ұрып жіберді", child.first_name()),
        behaviours: vec![ProblemBehaviour::FightOrPhysicalAggression as i32],
        anyone_harmed: true,
        number_harmed: 1,
        injured: vec![InjuredPerson {
            full_name: child.full_name.into(),
            injuries: "қолы сынған".into(),
        }],
        sent_for_medical_help: true,
        children: vec![
            InvolvedChild {
                full_name: child.full_name.into(),
                role: IncidentRole::Victim as i32,
                risk_tier: RiskTier::AtRisk as i32,
                iin: child.iin.clone(),
            },
            InvolvedChild {
                full_name: "Дәурен Серікұлы Ахметов".into(),
                role: IncidentRole::Perpetrator as i32,
                risk_tier: RiskTier::HighRisk as i32,
                iin: String::new(),
            },
        ],
        ..Default::default()
    };
    let incident = staff
        .school_incidents()
        .record_incident(staff.req(RecordIncidentRequest {
            idempotency_key: "npd-res-fight".into(),
            incident: Some(fight),
            risk_of_injury: false,
        }))
        .await
        .expect("report D recorded")
        .into_inner()
        .incident_id;
    let assessment = |severity: i32, grounds: Vec<i32>| AssessIncidentRequest {
        incident_id: incident.clone(),
        severity,
        grounds,
        grounds_other: String::new(),
    };
    let result = director
        .residential()
        .assess_incident(director.req(assessment(0, vec![99])))
        .await;
    refusals.record(
        "an assessment with bad fields",
        Code::InvalidArgument,
        result,
    );
    director
        .residential()
        .assess_incident(director.req(assessment(
            IncidentSeverity::Severe as i32,
            vec![MandatoryReportGround::PhysicalViolenceWithInjury as i32],
        )))
        .await
        .expect("assessed");
    let referrer = || {
        Some(ReferrerDetails {
            position: "тәрбиеші".into(),
            phone: "+7 704 000 0002".into(),
        })
    };
    let referred = director
        .residential()
        .refer_incident(director.req(ReferIncidentRequest {
            incident_id: incident.clone(),
            referrer: referrer(),
            children: Vec::new(),
        }))
        .await
        .expect("referred to the commission and the police")
        .into_inner()
        .incident
        .expect("the incident");
    hub.delivered(&referred.commission_message_id).await;
    hub.delivered(&referred.police_message_id).await;

    let injured = |iin: &str| IncidentChild {
        full_name: child.full_name.into(),
        iin: iin.into(),
        date_of_birth: Some(cd(child.date_of_birth)),
        injuries: "қолы сынған".into(),
        ..Default::default()
    };
    let result = staff
        .residential()
        .refer_injured_child(staff.req(ReferInjuredChildRequest {
            idempotency_key: "npd-res-health-bad".into(),
            incident_id: incident.clone(),
            child: Some(injured(&child.bad_iin)),
            referrer: referrer(),
        }))
        .await;
    refusals.record(
        "her injury referred with a bad IIN",
        Code::InvalidArgument,
        result,
    );
    let health = staff
        .residential()
        .refer_injured_child(staff.req(ReferInjuredChildRequest {
            idempotency_key: "npd-res-health".into(),
            incident_id: incident.clone(),
            child: Some(injured(&child.iin)),
            referrer: referrer(),
        }))
        .await
        .expect("her injury referred to health")
        .into_inner();
    hub.delivered(&health.message_id).await;
    let version = director
        .residential()
        .get_residential_incident(director.req(GetResidentialIncidentRequest {
            incident_id: incident.clone(),
        }))
        .await
        .expect("the incident reads")
        .into_inner()
        .version;
    director
        .residential()
        .close_incident(director.req(CloseIncidentRequest {
            incident_id: incident.clone(),
            base_version: version,
        }))
        .await
        .expect("referred to both: it closes");

    let bypass = ReportBypassingDirectorRequest {
        idempotency_key: "npd-bypass".into(),
        incident_date: Some(cd(t)),
        severity: IncidentSeverity::Severe as i32,
        grounds: vec![MandatoryReportGround::CorporalPunishmentWithHarm as i32],
        grounds_other: String::new(),
        description: format!("Директор {} ұрды", child.full_name),
        children: vec![IncidentChild {
            role: IncidentRole::Victim as i32,
            injured: true,
            injuries: "көгерген".into(),
            ..injured(&child.iin)
        }],
        referrer: referrer(),
    };
    let result = director
        .residential()
        .report_bypassing_director(director.req(bypass.clone()))
        .await;
    refusals.record(
        "the director filing a report bypassing the director",
        Code::PermissionDenied,
        result,
    );
    let reported = staff
        .residential()
        .report_bypassing_director(staff.req(bypass))
        .await
        .expect("the report bypassing the director")
        .into_inner()
        .incident
        .expect("the report");
    hub.delivered(&reported.commission_message_id).await;
    hub.delivered(&reported.police_message_id).await;
    incident
}

/// The curator asks the police about her case; the inspector links it, as the victim's, to the
/// investigation of the institution's incident; a summary naming her refused, an update made;
/// her preventive registration refused (she is the victim).
async fn police_link_her_case(
    hub: &TestHub,
    child: &Child,
    work: &AgencyWork,
    refusals: &mut Refusals,
) {
    let t = hub.today();
    let curator = hub.staff("commission", "curator-1").await;
    curator
        .case_files()
        .request_information(curator.req(RequestInformationRequest {
            case_reference: work.case.clone(),
            base_version: version(&curator, &work.case).await,
            idempotency_key: "npd-ask-police".into(),
            recipient_agency_id: "police-1".into(),
            questions: format!("{} ({}) бойынша тергеу барысы?", child.full_name, child.iin),
            answer_by: Some(cd(t + 7.days())),
        }))
        .await
        .expect("the police are asked");
    hub.deliver_everything().await;
    let inspector = hub.staff("police-1", "inspector").await;
    let investigation = inspector
        .investigations()
        .list_investigations(inspector.req(ListInvestigationsRequest {
            include_closed: true,
        }))
        .await
        .expect("the inspector lists")
        .into_inner()
        .investigations
        .into_iter()
        .find(|i| i.incident_reference == work.incident)
        .expect("the institution's referral opened an investigation")
        .investigation_id;
    let linked = inspector
        .investigations()
        .link_case(inspector.req(LinkCaseRequest {
            investigation_id: investigation.clone(),
            case_reference: work.case.clone(),
            child_role: IncidentRole::Victim as i32,
        }))
        .await
        .expect("her case linked to the incident's investigation")
        .into_inner()
        .investigation
        .expect("the investigation");
    assert!(linked.cases.iter().any(|c| c.case_reference == work.case));
    let update = |key: &str, summary: String| UpdateInvestigationRequest {
        investigation_id: investigation.clone(),
        status: InvestigationStatus::Opened as i32,
        status_on: Some(cd(t)),
        idempotency_key: key.into(),
        summary,
        ..Default::default()
    };
    let result = inspector
        .investigations()
        .update_investigation(inspector.req(update(
            "npd-update-naming",
            format!("{} (ЖСН {}) жауап алынды", child.full_name, child.iin),
        )))
        .await;
    refusals.record("an update naming her", Code::InvalidArgument, result);
    let opened = inspector
        .investigations()
        .update_investigation(
            inspector.req(update("npd-update", "Іс қозғалды / Возбуждено дело".into())),
        )
        .await
        .expect("the investigation opened")
        .into_inner();
    hub.delivered(&opened.message_id).await;
    let result = inspector
        .investigations()
        .register_preventive(inspector.req(RegisterPreventiveRequest {
            case_reference: work.case.clone(),
            registered_on: Some(cd(t)),
            grounds: format!("{} төбелеске қатысты", child.full_name),
            idempotency_key: "npd-register".into(),
        }))
        .await;
    refusals.record(
        "her preventive registration (she is the victim)",
        Code::FailedPrecondition,
        result,
    );
}

/// The curator asks health-1 about her case; the doctor notes her admission on the
/// institution's referral of her injury (held, waiting for a case), links it to her case, and
/// notes her treatment; an admission again, and a notice with bad fields, refused.
async fn health_notices_about_her(
    hub: &TestHub,
    child: &Child,
    work: &AgencyWork,
    refusals: &mut Refusals,
) {
    let t = hub.today();
    let curator = hub.staff("commission", "curator-1").await;
    curator
        .case_files()
        .request_information(curator.req(RequestInformationRequest {
            case_reference: work.case.clone(),
            base_version: version(&curator, &work.case).await,
            idempotency_key: "npd-ask-health".into(),
            recipient_agency_id: "health-1".into(),
            questions: format!("{} емделді ме?", child.full_name),
            answer_by: Some(cd(t + 7.days())),
        }))
        .await
        .expect("health is asked");
    hub.deliver_everything().await;
    let doctor = hub.staff("health-1", "doctor").await;
    let injury = doctor
        .health_notices()
        .list_referrals(doctor.req(ListReferralsRequest {}))
        .await
        .expect("the doctor lists")
        .into_inner()
        .referrals
        .into_iter()
        .find(|r| r.case_reference.is_empty() && r.incident_reference == work.incident)
        .expect("the institution's referral of her injury")
        .referral_id;
    let notice = |key: &str, kind: HealthNoticeKind| SendNoticeRequest {
        referral_id: injury.clone(),
        kind: kind as i32,
        on: Some(cd(t)),
        facility: "Аудандық аурухана, травматология".into(),
        note: format!("{}: қолы гипсте", child.first_name()),
        idempotency_key: key.into(),
        ..Default::default()
    };
    doctor
        .health_notices()
        .send_notice(doctor.req(notice("npd-admitted", HealthNoticeKind::Admitted)))
        .await
        .expect("admitted, held");
    let result = doctor
        .health_notices()
        .send_notice(doctor.req(notice("npd-admitted-2", HealthNoticeKind::Admitted)))
        .await;
    refusals.record(
        "her admission noted twice",
        Code::FailedPrecondition,
        result,
    );
    let result = doctor
        .health_notices()
        .send_notice(doctor.req(SendNoticeRequest {
            facility: String::new(),
            on: Some(cd(t + 2.days())),
            ..notice("npd-notice-bad", HealthNoticeKind::Treatment)
        }))
        .await;
    refusals.record("a notice with bad fields", Code::InvalidArgument, result);
    doctor
        .health_notices()
        .link_referral(doctor.req(LinkReferralRequest {
            referral_id: injury.clone(),
            case_reference: work.case.clone(),
        }))
        .await
        .expect("her injury's referral linked to her case");
    let treated = doctor
        .health_notices()
        .send_notice(doctor.req(notice("npd-treatment", HealthNoticeKind::Treatment)))
        .await
        .expect("treatment")
        .into_inner();
    hub.delivered(&treated.message_id).await;
    hub.deliver_everything().await;
    assert_eq!(get_case(&curator, &work.case).await.health_notices.len(), 2);
}

/// The curator instructs residential-1, where she lives, to move her (an instruction with bad
/// fields refused first); its director acknowledges it.
async fn protection_instruction_about_her(
    hub: &TestHub,
    child: &Child,
    work: &AgencyWork,
    refusals: &mut Refusals,
) {
    let t = hub.today();
    let curator = hub.staff("commission", "curator-1").await;
    let instruction = |key: &str, base_version: u64| SendProtectionInstructionRequest {
        idempotency_key: key.into(),
        case_reference: work.case.clone(),
        base_version,
        recipient_agency_id: "residential-1".into(),
        measure: ProtectionMeasure::MoveToAnotherInstitution as i32,
        measure_other: String::new(),
        new_placement: "№2 балалар үйі, Абай к-сі 5".into(),
        carry_out_by: Some(cd(t + 3.days())),
        decision_reference: "КТІЖК-7/2026".into(),
        decision_date: Some(cd(t)),
        reason: format!("{} директордан қорғау керек", child.full_name),
        confidentiality_weighed: true,
        weighing_reason: format!(
            "{} ауыстырылады; оқиға мазмұны берілмейді",
            child.first_name()
        ),
    };
    let base = version(&curator, &work.case).await;
    let result = curator
        .protection_instructions()
        .send_protection_instruction(curator.req(SendProtectionInstructionRequest {
            measure: 0,
            new_placement: child.address.into(),
            carry_out_by: Some(cd(t - 1.days())),
            ..instruction("npd-instruction-bad", base)
        }))
        .await;
    refusals.record(
        "a protection instruction with bad fields",
        Code::InvalidArgument,
        result,
    );
    let sent = curator
        .protection_instructions()
        .send_protection_instruction(curator.req(instruction("npd-instruction", base)))
        .await
        .expect("the institution instructed")
        .into_inner();
    hub.delivered(&sent.message_id).await;
    let director = hub.staff("residential-1", "director").await;
    let listed = director
        .residential()
        .list_protection_instructions(director.req(ListProtectionInstructionsRequest {}))
        .await
        .expect("the director lists instructions")
        .into_inner()
        .instructions;
    assert_eq!(listed.len(), 1);
    director
        .residential()
        .acknowledge_instruction(director.req(AcknowledgeInstructionRequest {
            idempotency_key: "npd-instruction-ack".into(),
            instruction_message_id: sent.message_id,
            kind: InstructionAcknowledgementKind::Acknowledged as i32,
            on: Some(cd(t)),
            note: format!("{} туралы нұсқау қабылданды", child.first_name()),
        }))
        .await
        .expect("acknowledged");
    hub.deliver_everything().await;
}

/// The clock moves to the first of next month: the agency clocks run out (the unconfirmed phone
/// call, the unacknowledged allegation, the NGO's weekly report) and their alerts reach the
/// school's lead, its director and the NGO; the log J of the month ended is sent to the
/// commission, which opens it.
async fn agency_clocks_run_out_and_log_j_sent(hub: &TestHub, work: &AgencyWork) {
    let t = hub.today();
    let (year, month) = (i32::from(t.year()), i32::from(t.month()));
    let first_of_next = t.last_of_month() + 1.day();
    hub.clock.set(
        first_of_next
            .at(9, 0, 0, 0)
            .to_zoned(almaty())
            .unwrap()
            .timestamp(),
    );
    hub.gateway()
        .settle()
        .await
        .expect("the deadline engine settles");
    hub.deliver_everything().await;
    let lead = hub.staff("school-1", "safeguarding-lead").await;
    let director = hub.staff("school-1", "director").await;
    let ngo = hub.staff("ngo-1", "case-manager").await;
    for (who, staff, subject) in [
        ("the lead", &lead, &work.unconfirmed_concern),
        ("the director", &director, &work.allegation),
        ("the NGO", &ngo, &work.service),
    ] {
        let alerts = staff.alerts_about(subject).await;
        assert!(
            alerts
                .iter()
                .any(|a| a.state == DeadlineState::Overdue as i32
                    || a.state == DeadlineState::Escalated as i32),
            "{who} is alerted: {alerts:?}"
        );
    }

    let sent = director
        .school_referrals()
        .send_referral_log(director.req(SendReferralLogRequest {
            year,
            month,
            idempotency_key: "npd-log-sent".into(),
        }))
        .await
        .expect("the log J sent")
        .into_inner();
    hub.delivered(&sent.message_id).await;
    let secretary = hub.staff("commission", "secretary").await;
    match received(&secretary, &sent.message_id)
        .await
        .payload
        .and_then(|p| p.form)
    {
        Some(payload::Form::ReferralLog(log)) => assert!(!log.rows.is_empty()),
        other => panic!("expected a log J, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The checks.

/// Everything captured, as text, by where it came from.
struct Captured {
    sources: Vec<(String, String)>,
    log_lines: usize,
    json_events: usize,
    spans: usize,
    metric_points: usize,
    refusals: usize,
}

fn collect(refusals: &Refusals) -> Captured {
    let capture = capture();
    let _ = capture.telemetry.tracer_provider.force_flush();
    let _ = capture.meter_provider.force_flush();
    let log = capture.telemetry.log.text();
    let json = capture.json.text();
    let spans = capture.telemetry.finished_spans();
    let mut span_text = String::new();
    for span in &spans {
        span_data_text(span, &mut span_text);
    }
    let (metric_text, metric_points) = metric_text(&capture.metrics);
    let mut sources = vec![
        ("log lines".to_owned(), log.clone()),
        ("JSON events and span closes".to_owned(), json.clone()),
        ("exported spans".to_owned(), span_text),
        ("metrics".to_owned(), metric_text),
    ];
    for (what, text) in &refusals.0 {
        sources.push((format!("the error for {what}"), text.clone()));
    }
    Captured {
        log_lines: log.lines().count(),
        json_events: json.lines().count(),
        spans: spans.len(),
        metric_points,
        refusals: refusals.0.len(),
        sources,
    }
}

/// A span's name, attributes, events (name and attributes), status and links, as text.
fn span_data_text(span: &SpanData, out: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "span {} [{}]",
        span.name,
        span.instrumentation_scope.name()
    );
    for kv in &span.attributes {
        let _ = writeln!(out, "  {}={}", kv.key, kv.value);
    }
    for event in &span.events.events {
        let _ = writeln!(out, "  event {}", event.name);
        for kv in &event.attributes {
            let _ = writeln!(out, "    {}={}", kv.key, kv.value);
        }
    }
    for link in &span.links.links {
        for kv in &link.attributes {
            let _ = writeln!(out, "  link {}={}", kv.key, kv.value);
        }
    }
    let _ = writeln!(out, "  status {:?}", span.status);
}

/// Every metric's name, description, unit, and each data point's attributes and value.
fn metric_text(exporter: &InMemoryMetricExporter) -> (String, usize) {
    use std::fmt::Write as _;
    fn points<T: std::fmt::Debug + Copy>(data: &MetricData<T>, out: &mut String) -> usize {
        let mut n = 0;
        let mut point = |attributes: Vec<String>, value: String| {
            let _ = writeln!(out, "  {} = {value}", attributes.join(","));
            n += 1;
        };
        let kvs = |it: &mut dyn Iterator<Item = &opentelemetry::KeyValue>| {
            it.map(|kv| format!("{}={}", kv.key, kv.value)).collect()
        };
        match data {
            MetricData::Gauge(g) => g
                .data_points()
                .for_each(|p| point(kvs(&mut p.attributes()), format!("{:?}", p.value()))),
            MetricData::Sum(s) => s
                .data_points()
                .for_each(|p| point(kvs(&mut p.attributes()), format!("{:?}", p.value()))),
            MetricData::Histogram(h) => h
                .data_points()
                .for_each(|p| point(kvs(&mut p.attributes()), format!("{:?}", p.sum()))),
            MetricData::ExponentialHistogram(h) => h
                .data_points()
                .for_each(|p| point(kvs(&mut p.attributes()), format!("{}", p.count()))),
        }
        n
    }
    let mut out = String::new();
    let mut n = 0;
    for resource in exporter.get_finished_metrics().expect("the metrics") {
        for scope in resource.scope_metrics() {
            for metric in scope.metrics() {
                let _ = writeln!(
                    out,
                    "metric {} ({}) [{}] {}",
                    metric.name(),
                    scope.scope().name(),
                    metric.unit(),
                    metric.description()
                );
                n += match metric.data() {
                    AggregatedMetrics::F64(d) => points(d, &mut out),
                    AggregatedMetrics::U64(d) => points(d, &mut out),
                    AggregatedMetrics::I64(d) => points(d, &mut out),
                };
            }
        }
    }
    (out, n)
}

/// The ways a value can be written down in a log: as it is (compared in lower case, Cyrillic
/// too), and its UTF-8 bytes the way a byte string (`b"\xd3\x98…"`), a hex dump and a byte
/// vector (`[211, 152, …]`) print them, and with `\u` escapes.
fn spellings(value: &str) -> Vec<String> {
    let bytes = value.as_bytes();
    let mut forms = vec![value.to_lowercase()];
    forms.push(
        bytes
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    char::from(b).to_string()
                } else {
                    format!("\\x{b:02x}")
                }
            })
            .collect(),
    );
    forms.push(bytes.iter().map(|b| format!("{b:02x}")).collect());
    forms.push(
        bytes
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    );
    forms.push(
        value
            .chars()
            .map(|c| {
                if c.is_ascii() {
                    c.to_string()
                } else {
                    format!("\\u{:04x}", u32::from(c))
                }
            })
            .collect(),
    );
    forms.sort();
    forms.dedup();
    forms
}

/// Terminal colour codes are dropped so that a value the formatter coloured is still found.
fn without_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn assert_no_personal_data(child: &Child, captured: &Captured) {
    let needles: Vec<(String, String, String)> = child
        .personal_data()
        .into_iter()
        .flat_map(|(what, value)| {
            spellings(&value)
                .into_iter()
                .map(move |form| (what.clone(), value.clone(), form))
        })
        .collect();
    let mut leaks = Vec::new();
    let mut bytes = 0;
    // NO_PERSONAL_DATA_DUMP=<dir> keeps what was checked, to see what the run logged.
    if let Some(dir) = std::env::var_os("NO_PERSONAL_DATA_DUMP") {
        std::fs::create_dir_all(&dir).expect("the dump directory");
        for (i, (source, text)) in captured.sources.iter().enumerate() {
            let file = std::path::Path::new(&dir).join(format!("{i:02}.txt"));
            std::fs::write(&file, format!("{source}\n{text}")).expect("the dump");
        }
    }
    for (source, text) in &captured.sources {
        let text = without_ansi(text).to_lowercase();
        bytes += text.len();
        for (what, value, form) in &needles {
            if let Some(at) = text.find(form.as_str()) {
                let start = text.floor_char_boundary(at.saturating_sub(120));
                let end = text.ceil_char_boundary((at + form.len() + 120).min(text.len()));
                leaks.push(format!(
                    "{what} ({value:?}, written {form:?}) in {source}: …{}…",
                    text[start..end].replace('\n', " ⏎ ")
                ));
            }
        }
    }
    println!(
        "checked {bytes} bytes for {} spellings of {} personal values: {} log lines, {} JSON \
         events and span closes, {} exported spans, {} metric data points, {} client errors",
        needles.len(),
        child.personal_data().len(),
        captured.log_lines,
        captured.json_events,
        captured.spans,
        captured.metric_points,
        captured.refusals,
    );
    assert!(
        leaks.is_empty(),
        "personal data leaked ({} places):\n{}",
        leaks.len(),
        leaks.join("\n")
    );
    assert!(
        captured.log_lines > 100 && captured.spans > 10,
        "the capture saw the run"
    );
}

async fn no_personal_data_in_logs_traces_metrics_or_errors(backend: Backend) {
    capture();
    let hub = TestHub::start(backend).await;
    let child = Child::new(hub.today());
    let mut refusals = Refusals::default();
    scenario(&hub, &child, &mut refusals).await;
    hub.shutdown().await;
    assert_no_personal_data(&child, &collect(&refusals));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    no_personal_data_in_logs_traces_metrics_or_errors(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    capture();
    if referral_tests::postgres::available() {
        no_personal_data_in_logs_traces_metrics_or_errors(Backend::Postgres).await;
    }
}
