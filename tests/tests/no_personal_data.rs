//! Acceptance 5 of issue 4: a full scenario run at TRACE log level, with trace and metric
//! capture: the fixture child's name, IIN and address, and her parents' names and addresses,
//! appear in none of it, nor in any error a client is given.
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

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
};

use jiff::{SignedDuration, ToSpan as _, civil::Date, tz::TimeZone};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{
    metrics::{
        InMemoryMetricExporter, SdkMeterProvider,
        data::{AggregatedMetrics, MetricData},
    },
    trace::{InMemorySpanExporter, SdkTracerProvider, SpanData, SpanLimits},
};
use referral_core::{
    iin::Iin,
    telemetry::{self, TelemetryConfig},
    validate,
};
use referral_proto::v1::{
    ActionProgressState, AnswerConsultationRequest, AnswerInformationRequestRequest, Assessment,
    CaseFile, CloseCaseRequest, ClosureCriterion, ConsultRequest, Consultation, Contact,
    ContactMethod, Envelope, FileAssessmentRequest, FileSupportPlanRequest, FormKind,
    GetCaseRequest, GetMessageRequest, GetSentMessageRequest, GrantDisclosureRequest, HelpRequest,
    OpenCase, Payload, PlanAction, PlanReview, PurposeOfUse, RecordContactRequest,
    RecordReviewRequest, ReportActionProgressRequest, ReportCircumstances,
    RequestInformationRequest, ReviewDecision, RevokeDisclosureRequest, RiskLevel, Role,
    SendRequest, Sensitivity, Sex, SupportPlan, decide_help_request_request, help_request_decision,
    payload,
};
use referral_tests::{
    Backend, StaffClient, TestHub, envelope,
    samples::{cd, row, sample_assessment, sample_plan},
};
use tonic::{Code, Status};
use tonic_types::StatusExt as _;
use tracing_subscriber::{
    EnvFilter, fmt::MakeWriter, fmt::format::FmtSpan, layer::SubscriberExt as _,
    util::SubscriberInitExt as _,
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
    /// letters or more, both IINs, the addresses, the parents' full names and their parts.
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
        ];
        for (whose, name) in [
            ("child's", self.full_name),
            ("mother's", self.mother),
            ("father's", self.father),
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

/// An in-memory log file that the formatters write into.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Buffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffer {
    type Writer = Buffer;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

struct Capture {
    /// The production formatter's log lines.
    log: Buffer,
    /// Every event as JSON with all its fields and its spans' fields, and every span's close.
    json: Buffer,
    spans: InMemorySpanExporter,
    tracer_provider: SdkTracerProvider,
    metrics: InMemoryMetricExporter,
    meter_provider: SdkMeterProvider,
}

/// Installs the capture the first time it is called; every test of this binary shares it.
fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let spans = InMemorySpanExporter::default();
        // Exported span by span (not batched, which drops spans when its queue is full), with
        // no limit that would drop attributes or events before they are checked.
        let tracer_provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .with_span_limits(SpanLimits {
                max_events_per_span: u32::MAX,
                max_attributes_per_span: u32::MAX,
                max_links_per_span: u32::MAX,
                max_attributes_per_event: u32::MAX,
                max_attributes_per_link: u32::MAX,
            })
            .build();
        opentelemetry::global::set_tracer_provider(tracer_provider.clone());
        let metrics = InMemoryMetricExporter::default();
        let meter_provider = SdkMeterProvider::builder()
            .with_periodic_exporter(metrics.clone())
            .build();
        opentelemetry::global::set_meter_provider(meter_provider.clone());

        let log = Buffer::default();
        let json = Buffer::default();
        let config = TelemetryConfig {
            filter: "trace".into(),
            ..TelemetryConfig::default()
        };
        telemetry::subscriber(
            EnvFilter::new("trace"),
            &config,
            log.clone(),
            Some(tracer_provider.tracer("referral-hub")),
        )
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
            log,
            json,
            spans,
            tracer_provider,
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

fn today(hub: &TestHub) -> Date {
    hub.clock
        .now()
        .to_zoned(TimeZone::get("Asia/Almaty").unwrap())
        .date()
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
/// consultations, and refusals that concern her. Add each new feature that touches a child's
/// record here.
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
    hub.gateway()
        .settle()
        .await
        .expect("the deadline engine settles");
}

/// School 1 refers her (K); the commission opens a case with curator-1.
async fn referral_and_case_opened(hub: &TestHub, child: &Child) -> String {
    let director = hub.staff("school-1", "director").await;
    let k_id = director
        .submit_k("npd-help-request", "", child.help_request(today(hub)))
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
            child.help_request(today(hub)),
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
    let t = today(hub);
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
    let t = today(hub);
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
    let t = today(hub);
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
    let t = today(hub);
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
    let _ = capture.tracer_provider.force_flush();
    let _ = capture.meter_provider.force_flush();
    let log = capture.log.text();
    let json = capture.json.text();
    let spans = capture.spans.get_finished_spans().expect("the spans");
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
    let child = Child::new(today(&hub));
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
