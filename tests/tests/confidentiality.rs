//! Acceptance tests of need to know (issue 4), each on SQLite and on PostgreSQL, through the
//! public APIs of the real agency services and the real gateway over mTLS:
//!
//! * one adversarial test per special rule (no back-flow, a director implicated, one curator
//!   never on both sides of an incident, a consultation without identity, aggregate reports
//!   without identity, L and the case file only to the team and explicit grants) and for
//!   break-the-glass, each trying to break the rule and failing;
//! * a grant for one hour, refused once the clock has moved past it (acceptance 3);
//! * two agencies referring the same child by IIN: the commission sees the link, neither agency
//!   sees the other (acceptance 4).

use jiff::{SignedDuration, ToSpan as _, civil::Date, tz::TimeZone};
use referral_core::iin::Iin;
use referral_proto::v1::{
    ActingUser, AnswerConsultationRequest, CaseFile, ConfidentialityLabel, ConsultRequest,
    Consultation, DeliveryState, FileAssessmentRequest, FileSupportPlanRequest, FormKind,
    GetCaseRequest, GetMessageRequest, GetSentMessageRequest, GrantDisclosureRequest, HelpRequest,
    IncidentRole, IncidentSummary, OpenCase, Payload, PurposeOfUse, ReadSharedCaseRequest,
    ReportCircumstances, RequestInformationRequest, RevokeDisclosureRequest, RiskLevel, Role,
    SendRequest, Sensitivity, Sex, decide_help_request_request::Outcome, help_request_decision,
    payload,
};
use referral_tests::{
    Backend, StaffClient, TestHub, both_backends,
    samples::{cd, row, sample_assessment, sample_plan},
};
use tonic::Code;

fn almaty() -> TimeZone {
    TimeZone::get("Asia/Almaty").unwrap()
}

fn today(hub: &TestHub) -> Date {
    hub.clock.now().to_zoned(almaty()).date()
}

/// The sample K with circumstances.
fn k_with(hub: &TestHub, circumstances: ReportCircumstances) -> HelpRequest {
    let mut k = referral_core::validate::sample_help_request(today(hub));
    k.circumstances = Some(circumstances);
    k
}

/// The sample K about another child: another name and IIN (same birth date).
fn k_about(hub: &TestHub, name: &str, serial: u16) -> HelpRequest {
    let mut k = referral_core::validate::sample_help_request(today(hub));
    let child = k.child.as_mut().unwrap();
    let born: Date = child.iin.parse::<Iin>().unwrap().birth_date();
    child.full_name = name.into();
    child.iin = Iin::generate(born, Sex::Female, serial)
        .unwrap()
        .into_string();
    k
}

/// Opens a case on `k_id` with `curator`, or the refusal.
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

async fn get_case(
    staff: &StaffClient,
    case: &str,
    purpose: PurposeOfUse,
    reason: &str,
) -> Result<CaseFile, tonic::Status> {
    staff
        .case_files()
        .get_case(staff.req(GetCaseRequest {
            case_reference: case.into(),
            purpose_of_use: purpose as i32,
            reason: reason.into(),
        }))
        .await
        .map(|r| r.into_inner())
}

fn has_assessment(file: &CaseFile) -> bool {
    file.cycles.iter().any(|c| c.assessment.is_some())
}

fn has_plan(file: &CaseFile) -> bool {
    file.cycles.iter().any(|c| c.support_plan.is_some())
}

/// Files L, then M with a row for `row_agency`, as curator-1.
async fn file_l_and_m(hub: &TestHub, case: &str, row_agency: &str) {
    let curator = hub.staff("commission", "curator-1").await;
    let version = |f: CaseFile| f.summary.unwrap().version;
    let v = version(
        get_case(&curator, case, PurposeOfUse::CareManagement, "")
            .await
            .unwrap(),
    );
    curator
        .case_files()
        .file_assessment(curator.req(FileAssessmentRequest {
            case_reference: case.into(),
            base_version: v,
            assessment: Some(sample_assessment(today(hub))),
            risk_level: RiskLevel::Medium as i32,
        }))
        .await
        .expect("L filed");
    let v = version(
        get_case(&curator, case, PurposeOfUse::CareManagement, "")
            .await
            .unwrap(),
    );
    curator
        .case_files()
        .file_support_plan(curator.req(FileSupportPlanRequest {
            case_reference: case.into(),
            base_version: v,
            idempotency_key: format!("{case}-plan"),
            plan: Some(sample_plan(
                today(hub),
                vec![
                    row(1, today(hub) + 14.days(), row_agency),
                    row(2, today(hub) + 21.days(), "commission"),
                ],
            )),
            ..Default::default()
        }))
        .await
        .expect("M filed");
    hub.deliver_everything().await;
}

/// The ledger's audit entries of one kind for a case.
async fn audit_events(hub: &TestHub, event: &str, case: &str) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT sender_agency_id, acting_user_id, outcome FROM ledger \
         WHERE event = $1 AND case_reference = $2 ORDER BY seq",
    )
    .bind(event)
    .bind(case)
    .fetch_all(hub.gateway().database().pool())
    .await
    .unwrap()
}

// Rule 1: a child living in a residential institution reports violence there (to a trusted adult
// at school): nothing about the report is ever delivered to, or readable by, that institution.
async fn nothing_flows_back_to_the_institution_a_child_disclosed_about(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let school = hub.staff("school-1", "safeguarding-lead").await;
    let k = k_with(
        &hub,
        ReportCircumstances {
            child_residence_agency_id: "residential-1".into(),
            ..Default::default()
        },
    );
    let k_id = school.submit_k("backflow-k", "", k).await.unwrap();
    hub.delivered(&k_id).await;
    let case = open(&hub, &k_id, "backflow-decision", "curator-1")
        .await
        .unwrap();
    hub.deliver_everything().await;

    // The curator asks the institution for information: refused by the gateway.
    let curator = hub.staff("commission", "curator-1").await;
    let v = get_case(&curator, &case, PurposeOfUse::CareManagement, "")
        .await
        .unwrap()
        .summary
        .unwrap()
        .version;
    let asked = curator
        .case_files()
        .request_information(curator.req(RequestInformationRequest {
            case_reference: case.clone(),
            base_version: v,
            idempotency_key: "backflow-info".into(),
            recipient_agency_id: "residential-1".into(),
            questions: "Бала туралы не білесіз?".into(),
            answer_by: Some(cd(today(&hub) + 7.days())),
        }))
        .await;
    let status = asked.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // Whatever the commission service does with it, the gateway itself refuses such a message
    // from the commission's certificate.
    let commission = hub.gateway_client_as("commission").await;
    let mut request = referral_tests::envelope(
        "commission",
        "curator-1",
        Role::CommissionCurator,
        "residential-1",
        "backflow-direct",
        Default::default(),
    );
    request.form_kind = FormKind::InformationRequest as i32;
    request.case_reference = case.clone();
    request.payload = Some(Payload {
        form: Some(payload::Form::InformationRequest(
            referral_proto::v1::InformationRequest {
                case_reference: case.clone(),
                child_full_name: "Әлия Серікқызы Нұрланова".into(),
                questions: "Не білесіз?".into(),
                answer_by: Some(cd(today(&hub) + 7.days())),
                curator_user_id: "curator-1".into(),
                curator_name: "Дана Омарова".into(),
                ..Default::default()
            },
        )),
    });
    let refused = commission
        .clone()
        .send(SendRequest {
            envelope: Some(request),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // Nor may a case event give it a row (its deadline alerts would tell it of the case).
    let refused = commission
        .clone()
        .record_case_event(referral_proto::v1::RecordCaseEventRequest {
            idempotency_key: "backflow-event".into(),
            acting_user: Some(ActingUser {
                user_id: "curator-1".into(),
                agency_id: "commission".into(),
                role: Role::CommissionCurator as i32,
                display_name: String::new(),
            }),
            event: Some(referral_proto::v1::CaseEvent {
                case_reference: case.clone(),
                kind: referral_proto::v1::CaseEventKind::SupportPlanFiled as i32,
                occurred_at: Some(referral_core::time::to_proto(hub.clock.now())),
                risk_level: RiskLevel::Medium as i32,
                curator_user_id: "curator-1".into(),
                actions: vec![referral_proto::v1::ActionDeadline {
                    number: 1,
                    due_on: Some(cd(today(&hub) + 10.days())),
                    responsible_agency_id: "residential-1".into(),
                    responsible_person: String::new(),
                }],
                cycle: 1,
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    hub.deliver_everything().await;

    // The institution holds nothing of it, and reading the case is refused.
    assert!(hub.messages_to("residential-1").await.is_empty());
    let director = hub.staff("residential-1", "director").await;
    assert!(director.inbox().await.is_empty());
    for purpose in [
        PurposeOfUse::CoordinationOfCare,
        PurposeOfUse::AggregateReporting,
    ] {
        let status = director.read_shared(&case, purpose).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
    }
    // Every refusal is in the ledger.
    let denied = audit_events(&hub, "access.denied", &case).await;
    assert!(
        denied
            .iter()
            .any(|(agency, _, _)| agency == "residential-1"),
        "{denied:?}"
    );
    assert!(
        denied.iter().any(|(agency, _, _)| agency == "commission"),
        "{denied:?}"
    );
    hub.shutdown().await;
}

// Rule 2: a report implicating an institution's director reaches the outside bodies directly
// and is never visible to that director.
async fn a_report_implicating_the_director_bypasses_and_never_reaches_them(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let staff = hub.staff("residential-1", "staff").await;
    let k = k_with(
        &hub,
        ReportCircumstances {
            implicated_director_agency_id: "residential-1".into(),
            ..Default::default()
        },
    );
    let k_id = staff.submit_k("director-k", "", k).await.unwrap();
    hub.deliver_everything().await;
    // The commission and the police both receive it.
    let secretary = hub.staff("commission", "secretary").await;
    assert!(
        secretary
            .inbox_of(FormKind::HelpRequest)
            .await
            .iter()
            .any(|m| m.message_id == k_id)
    );
    let inspector = hub.staff("police-1", "inspector").await;
    assert_eq!(inspector.inbox_of(FormKind::HelpRequest).await.len(), 1);

    // The director does not see it among the institution's sent messages, by list or by id.
    let director = hub.staff("residential-1", "director").await;
    assert!(director.sent().await.is_empty());
    let status = director
        .client
        .clone()
        .get_sent_message(director.req(GetSentMessageRequest {
            message_id: k_id.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(staff.sent().await.len(), 1, "its author still sees it");

    // The commission opens a case: the decision is kept from the institution.
    let case = open(&hub, &k_id, "director-decision", "curator-1")
        .await
        .unwrap();
    let decision_id: String = sqlx::query_scalar(
        "SELECT message_id FROM messages WHERE form_kind = 'FORM_KIND_HELP_REQUEST_DECISION'",
    )
    .fetch_one(hub.gateway().database().pool())
    .await
    .unwrap();
    assert_eq!(
        hub.gateway_state(&decision_id).await.as_deref(),
        Some("withheld")
    );
    hub.deliver_everything().await;
    assert!(director.inbox().await.is_empty());
    assert!(staff.inbox().await.is_empty());
    // Even the author's status of the report says no more than that it was delivered.
    let sent = staff
        .client
        .clone()
        .get_sent_message(staff.req(GetSentMessageRequest {
            message_id: k_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(sent.answer.is_none());
    assert_eq!(sent.state, DeliveryState::Delivered as i32);
    // And reading the case through the hub is refused to everyone there.
    for user in ["director", "staff"] {
        let someone = hub.staff("residential-1", user).await;
        let status = someone
            .read_shared(&case, PurposeOfUse::CoordinationOfCare)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
    }
    // The copy that went to the police, and the withheld decision, are in the child's history.
    let curator = hub.staff("commission", "curator-1").await;
    let history = curator.disclosures(&case).await.unwrap();
    assert!(
        history
            .iter()
            .any(|r| r.event == "message.delivered" && r.agency_id == "police-1"),
        "{history:?}"
    );
    assert!(history.iter().any(|r| r.event == "message.withheld"));
    hub.shutdown().await;
}

// Rule 3: one curator never holds the victim's and the offender's case of the same incident.
async fn one_curator_never_holds_both_sides_of_an_incident(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let school = hub.staff("school-1", "director").await;
    let victim = k_with(
        &hub,
        ReportCircumstances {
            incident_reference: "INC-2026-17".into(),
            incident_role: IncidentRole::Victim as i32,
            ..Default::default()
        },
    );
    let mut offender = k_about(&hub, "Ерлан Асқарұлы Сейітов", 777);
    offender.circumstances = Some(ReportCircumstances {
        incident_reference: "INC-2026-17".into(),
        incident_role: IncidentRole::Perpetrator as i32,
        ..Default::default()
    });
    let victim_k = school
        .submit_k("incident-victim", "", victim)
        .await
        .unwrap();
    let offender_k = school
        .submit_k("incident-offender", "", offender)
        .await
        .unwrap();
    hub.deliver_everything().await;
    open(&hub, &victim_k, "incident-victim-decision", "curator-1")
        .await
        .unwrap();
    let refused = open(&hub, &offender_k, "incident-offender-decision", "curator-1")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(
        hub.gateway_count("access_cases").await,
        1,
        "the refused decision opened nothing"
    );
    // Another curator may take it.
    let offender_case = open(
        &hub,
        &offender_k,
        "incident-offender-decision-2",
        "curator-2",
    )
    .await
    .unwrap();
    // Nor can a case event hand the offender's case to the victim's curator.
    let commission = hub.gateway_client_as("commission").await;
    let handover = referral_proto::v1::RecordCaseEventRequest {
        idempotency_key: "incident-handover".into(),
        acting_user: Some(ActingUser {
            user_id: "secretary".into(),
            agency_id: "commission".into(),
            role: Role::CommissionSecretary as i32,
            display_name: String::new(),
        }),
        event: Some(referral_proto::v1::CaseEvent {
            case_reference: offender_case.clone(),
            kind: referral_proto::v1::CaseEventKind::CaseReopened as i32,
            occurred_at: Some(referral_core::time::to_proto(hub.clock.now())),
            curator_user_id: "curator-1".into(),
            cycle: 2,
            ..Default::default()
        }),
    };
    let refused = commission
        .clone()
        .record_case_event(handover)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("curator_user_id"), "{refused:?}");
    hub.shutdown().await;
}

// Rule 4: a school consults the commission without naming the child or the family.
async fn a_consultation_carries_no_identity(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let lead = hub.staff("school-1", "safeguarding-lead").await;
    let iin = referral_core::validate::sample_help_request(today(&hub))
        .child
        .unwrap()
        .iin;
    let messages_before = hub.gateway_count("messages").await;
    // With the child's IIN in the text: refused, the field named, nothing stored.
    let status = lead
        .client
        .clone()
        .consult(lead.req(ConsultRequest {
            idempotency_key: "consult-iin".into(),
            consultation: Some(Consultation {
                concern: format!("Оқушы {iin} жиі сабаққа келмейді, үйде жанжал бар"),
                question: "Не істеу керек?".into(),
                child_age_years: 12,
                consulted_by: String::new(),
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields: Vec<String> = referral_core::error::field_violations(&status)
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert!(
        fields.contains(&"consultation.concern".to_owned()),
        "{fields:?}"
    );
    assert!(
        !status.message().contains(&iin),
        "the error does not repeat the IIN"
    );
    assert_eq!(hub.gateway_count("messages").await, messages_before);

    // Straight to the gateway, bypassing the school's service: refused as well.
    let gateway = hub.gateway_client_as("school-1").await;
    let mut envelope = referral_tests::envelope(
        "school-1",
        "safeguarding-lead",
        Role::SafeguardingLead,
        "commission",
        "consult-direct-to-gateway",
        Default::default(),
    );
    envelope.form_kind = FormKind::Consultation as i32;
    envelope.payload = Some(Payload {
        form: Some(payload::Form::Consultation(Consultation {
            concern: format!("Баланың ЖСН-і {iin}, анасы ішімдік ішеді"),
            question: "Кімге хабарласу керек?".into(),
            child_age_years: 12,
            consulted_by: "Safeguarding lead".into(),
        })),
    });
    let status = gateway
        .clone()
        .send(SendRequest {
            envelope: Some(envelope.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        referral_core::error::field_violations(&status)
            .iter()
            .any(|v| v.field == "envelope.payload.consultation.concern"),
        "{status:?}"
    );
    // Nor can a consultation be tied to a case.
    envelope.idempotency_key = "consult-with-a-case".into();
    envelope.case_reference = "KTIZhK-2026-000001".into();
    if let Some(payload::Form::Consultation(c)) =
        envelope.payload.as_mut().and_then(|p| p.form.as_mut())
    {
        c.concern = "Оқушы жиі сабаққа келмейді, үйде жанжал бар".into();
    }
    let status = gateway
        .clone()
        .send(SendRequest {
            envelope: Some(envelope),
        })
        .await
        .unwrap_err();
    assert!(
        referral_core::error::field_violations(&status)
            .iter()
            .any(|v| v.field == "envelope.case_reference"),
        "{status:?}"
    );
    assert_eq!(hub.gateway_count("messages").await, messages_before);

    // Without identity: delivered to the commission and answered.
    let consulted = lead
        .client
        .clone()
        .consult(lead.req(ConsultRequest {
            idempotency_key: "consult-ok".into(),
            consultation: Some(Consultation {
                concern: "7-сыныптағы оқушы жиі сабаққа келмейді, үйде жанжал бар сияқты".into(),
                question: "Қай кезде комиссияға K жіберу керек?".into(),
                child_age_years: 13,
                consulted_by: String::new(),
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    hub.delivered(&consulted.message_id).await;
    assert_eq!(
        hub.gateway_count("referrals").await,
        0,
        "a consultation links no child"
    );
    let secretary = hub.staff("commission", "secretary").await;
    let received = secretary.inbox_of(FormKind::Consultation).await;
    assert_eq!(received.len(), 1);
    let answer = secretary
        .client
        .clone()
        .answer_consultation(secretary.req(AnswerConsultationRequest {
            message_id: received[0].message_id.clone(),
            advice: "Қауіп белгілері болса, K жіберіңіз; алдымен ата-анамен сөйлесіңіз.".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    hub.delivered(&answer.answer_message_id).await;
    assert_eq!(lead.inbox_of(FormKind::ConsultationAnswer).await.len(), 1);
    hub.shutdown().await;
}

// Rule 5: aggregate reports never carry a child's identity.
async fn aggregate_reports_carry_no_identity(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let gateway = hub.gateway_client_as("school-1").await;
    let iin = referral_core::validate::sample_help_request(today(&hub))
        .child
        .unwrap()
        .iin;
    let summary = |school_name: String| IncidentSummary {
        school_name,
        year: 2026,
        month: 10,
        total_reports: 3,
        reported_by_pupils: 2,
        reported_by_teachers: 1,
        ..Default::default()
    };
    let send = |key: &str, e: IncidentSummary, purpose: PurposeOfUse| {
        let mut envelope = referral_tests::envelope(
            "school-1",
            "director",
            Role::SchoolDirector,
            "commission",
            key,
            Default::default(),
        );
        envelope.form_kind = FormKind::IncidentSummary as i32;
        envelope.purpose_of_use = purpose as i32;
        envelope.confidentiality = ConfidentialityLabel::Unrestricted as i32;
        envelope.payload = Some(Payload {
            form: Some(payload::Form::IncidentSummary(e)),
        });
        let mut gateway = gateway.clone();
        async move {
            gateway
                .send(SendRequest {
                    envelope: Some(envelope),
                })
                .await
        }
    };
    let refused_field = |status: tonic::Status| {
        assert_eq!(status.code(), Code::InvalidArgument);
        referral_core::error::field_violations(&status)
            .into_iter()
            .map(|v| v.field)
            .collect::<Vec<_>>()
    };
    let fields = refused_field(
        send(
            "summary-with-iin",
            summary(format!("№12 мектеп {iin}")),
            PurposeOfUse::AggregateReporting,
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(
        fields,
        vec!["envelope.payload.incident_summary.school_name"]
    );
    let fields = refused_field(
        send(
            "summary-wrong-purpose",
            summary("№12 мектеп".into()),
            PurposeOfUse::CoordinationOfCare,
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(fields, vec!["envelope.purpose_of_use"]);
    send(
        "summary-accepted",
        summary("№12 мектеп".into()),
        PurposeOfUse::AggregateReporting,
    )
    .await
    .expect("an aggregate summary without identity is accepted");

    // A case read for aggregate reporting shows status only, even to those who may see more.
    let case = hub.open_case("aggregate").await;
    file_l_and_m(&hub, &case, "ngo-1").await;
    let curator = hub.staff("commission", "curator-1").await;
    let file = get_case(&curator, &case, PurposeOfUse::AggregateReporting, "")
        .await
        .unwrap();
    let summary = file.summary.clone().unwrap();
    assert_eq!(summary.case_reference, case);
    assert_eq!(
        summary.child_full_name, "",
        "no identity in an aggregate read"
    );
    assert!(file.help_request.is_none() || !has_identity(&file));
    assert!(
        file.cycles
            .iter()
            .all(|c| c.assessment.is_none() && c.support_plan.is_none())
    );
    let ngo = hub.staff("ngo-1", "case-manager").await;
    let view = ngo
        .read_shared(&case, PurposeOfUse::AggregateReporting)
        .await
        .unwrap();
    assert_eq!(view.sections_shown, vec![Sensitivity::CaseStatus as i32]);
    hub.shutdown().await;
}

fn has_identity(file: &CaseFile) -> bool {
    file.help_request
        .as_ref()
        .and_then(|e| e.payload.as_ref())
        .and_then(|p| p.form.as_ref())
        .is_some_and(|f| match f {
            payload::Form::HelpRequest(k) => {
                k.child.as_ref().is_some_and(|c| !c.full_name.is_empty())
            }
            _ => false,
        })
}

// Rule 6 and acceptance 3: L and the case file only to the case team and explicit grants; a
// grant for one hour is refused once the clock has moved past it; a revoked grant is refused.
async fn the_case_file_is_for_the_team_and_grants_that_expire(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let case = hub.open_case("grants").await;
    file_l_and_m(&hub, &case, "ngo-1").await;

    // The team sees everything.
    let curator = hub.staff("commission", "curator-1").await;
    let file = get_case(&curator, &case, PurposeOfUse::CareManagement, "")
        .await
        .unwrap();
    assert!(has_assessment(&file) && has_plan(&file));
    // The secretary keeps the register, without L or M, or the case record's documents.
    let secretary = hub.staff("commission", "secretary").await;
    let file = get_case(&secretary, &case, PurposeOfUse::CareManagement, "")
        .await
        .unwrap();
    assert!(!has_assessment(&file) && !has_plan(&file));
    assert!(!file.summary.as_ref().unwrap().child_full_name.is_empty());
    let document = curator
        .case_files()
        .upload_document(curator.req(tokio_stream::iter(vec![
            referral_proto::v1::UploadDocumentChunk {
                part: Some(referral_proto::v1::upload_document_chunk::Part::Metadata(
                    referral_proto::v1::UploadDocumentMetadata {
                        case_reference: case.clone(),
                        title: "Бұйрық".into(),
                        file_name: "order.pdf".into(),
                    },
                )),
            },
            referral_proto::v1::UploadDocumentChunk {
                part: Some(referral_proto::v1::upload_document_chunk::Part::Data(
                    b"%PDF-1.4\n% order\n".to_vec(),
                )),
            },
        ])))
        .await
        .unwrap()
        .into_inner();
    let download = |staff: &StaffClient| {
        let request = staff.req(referral_proto::v1::DownloadDocumentRequest {
            case_reference: case.clone(),
            document_id: document.document_id.clone(),
        });
        let mut files = staff.case_files();
        async move { files.download_document(request).await.map(|_| ()) }
    };
    download(&curator)
        .await
        .expect("the curator reads the record");
    let status = download(&secretary).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // The register shows the secretary no risk level (the assessment's finding).
    let listed = secretary
        .case_files()
        .list_cases(secretary.req(referral_proto::v1::ListCasesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .cases;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].risk_level, RiskLevel::Unspecified as i32);
    // Nor may the secretary grant the commission (or herself) what its team keeps.
    let status = secretary
        .grant(
            &case,
            "commission",
            Sensitivity::Assessment,
            hub.clock.now() + SignedDuration::from_hours(1),
            "Отырысқа дайындық",
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // The NGO carrying a row: its own row, the curator's contact; never L or M.
    let ngo = hub.staff("ngo-1", "case-manager").await;
    let view = ngo
        .read_shared(&case, PurposeOfUse::CoordinationOfCare)
        .await
        .unwrap();
    let file = view.case_file.unwrap();
    assert!(!has_assessment(&file) && !has_plan(&file));
    let rows: Vec<_> = file
        .cycles
        .iter()
        .flat_map(|c| c.actions.iter())
        .filter_map(|a| a.action.as_ref())
        .collect();
    assert_eq!(rows.len(), 1, "its own row only: {rows:?}");
    assert_eq!(rows[0].responsible_agency_id, "ngo-1");
    assert_eq!(file.summary.as_ref().unwrap().child_full_name, "");
    assert!(file.help_request.is_none() || !has_identity(&file));
    // The referring school: the status, the curator's contact and the next review date.
    let school = hub.staff("school-1", "director").await;
    let view = school
        .read_shared(&case, PurposeOfUse::CoordinationOfCare)
        .await
        .unwrap();
    let file = view.case_file.unwrap();
    let summary = file.summary.clone().unwrap();
    assert!(!summary.curator_contact.is_empty());
    assert!(summary.next_review_on.is_some(), "{summary:?}");
    assert!(!has_assessment(&file) && !has_plan(&file));
    assert!(file.cycles.iter().all(|c| c.actions.is_empty()));
    // An agency with no part in the case: refused.
    let police = hub.staff("police-1", "inspector").await;
    let status = police
        .read_shared(&case, PurposeOfUse::LawEnforcement)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // A grant of L to the NGO for one hour.
    let expires = hub.clock.now() + SignedDuration::from_hours(1);
    let grant = curator
        .grant(
            &case,
            "ngo-1",
            Sensitivity::Assessment,
            expires,
            "Психолог баланың бағалауын көруі керек",
        )
        .await
        .unwrap();
    assert!(grant.active);
    let file = ngo
        .read_shared(&case, PurposeOfUse::CoordinationOfCare)
        .await
        .unwrap()
        .case_file
        .unwrap();
    assert!(has_assessment(&file), "granted: L is shown");
    assert!(!has_plan(&file), "only the section granted");
    // Another NGO gains nothing from it.
    let other = hub.staff("ngo-2", "case-manager").await;
    assert_eq!(
        other
            .read_shared(&case, PurposeOfUse::CoordinationOfCare)
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    // One hour and a minute later, refused again.
    hub.clock.advance(SignedDuration::from_mins(61));
    let file = ngo
        .read_shared(&case, PurposeOfUse::CoordinationOfCare)
        .await
        .unwrap()
        .case_file
        .unwrap();
    assert!(!has_assessment(&file), "the grant has expired");

    // A revoked grant gives nothing either.
    let grant = curator
        .grant(
            &case,
            "ngo-1",
            Sensitivity::Plan,
            hub.clock.now() + SignedDuration::from_hours(24),
            "Жоспарды бірге қарау",
        )
        .await
        .unwrap();
    assert!(has_plan(
        &ngo.read_shared(&case, PurposeOfUse::CoordinationOfCare)
            .await
            .unwrap()
            .case_file
            .unwrap()
    ));
    curator
        .case_files()
        .revoke_disclosure(curator.req(RevokeDisclosureRequest {
            grant_id: grant.grant_id,
            ..Default::default()
        }))
        .await
        .unwrap();
    assert!(!has_plan(
        &ngo.read_shared(&case, PurposeOfUse::CoordinationOfCare)
            .await
            .unwrap()
            .case_file
            .unwrap()
    ));
    // Only the team, the secretary or the chair grant; a grant needs a reason and an end.
    let status = curator
        .case_files()
        .grant_disclosure(curator.req(GrantDisclosureRequest {
            case_reference: case.clone(),
            grantee_agency_id: "ngo-1".into(),
            section: Sensitivity::Assessment as i32,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let other_curator = hub.staff("commission", "curator-2").await;
    let status = other_curator
        .grant(
            &case,
            "ngo-2",
            Sensitivity::Assessment,
            hub.clock.now() + SignedDuration::from_hours(1),
            "Маған керек",
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // Grants, revocations, reads and denials are all in the child's disclosure history.
    let history = curator.disclosures(&case).await.unwrap();
    let events: Vec<&str> = history.iter().map(|r| r.event.as_str()).collect();
    for expected in [
        "message.accepted",
        "message.delivered",
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
    assert!(
        history.iter().any(|r| r.event == "case.read"
            && r.agency_id == "ngo-1"
            && r.sections.contains(&(Sensitivity::Assessment as i32))),
        "the NGO's granted read of L is recorded"
    );
    assert!(
        history
            .iter()
            .any(|r| r.event == "access.denied" && r.agency_id == "police-1")
    );
    // The NGO may not list the history.
    let status = ngo.disclosures(&case).await.unwrap_err();
    assert!(
        matches!(
            status.code(),
            Code::Unimplemented | Code::PermissionDenied | Code::Unauthenticated
        ),
        "{status:?}"
    );
    hub.shutdown().await;
}

// Break the glass: the chair opens a case outside the team with purpose BTG and a written
// reason; it is allowed, recorded, shown in the history, and the curator is alerted.
async fn breaking_the_glass_is_allowed_recorded_and_alerted(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let case = hub.open_case("btg").await;
    file_l_and_m(&hub, &case, "ngo-1").await;
    let chair = hub.staff("commission", "chair").await;
    // Without breaking the glass: the register only.
    let file = get_case(&chair, &case, PurposeOfUse::CareManagement, "")
        .await
        .unwrap();
    assert!(!has_assessment(&file));
    // Breaking the glass without a reason: refused, the field named.
    let status = get_case(&chair, &case, PurposeOfUse::BreakTheGlass, "")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        referral_core::error::field_violations(&status)
            .iter()
            .any(|v| v.field == "reason")
    );
    // The secretary breaking the glass gains nothing.
    let secretary = hub.staff("commission", "secretary").await;
    let file = get_case(
        &secretary,
        &case,
        PurposeOfUse::BreakTheGlass,
        "Баланың өміріне қауіп бар, куратор жоқ",
    )
    .await
    .unwrap();
    assert!(!has_assessment(&file));
    // Nor does another agency.
    let ngo = hub.staff("ngo-1", "case-manager").await;
    let status = ngo
        .client
        .clone()
        .read_shared_case(ngo.req(ReadSharedCaseRequest {
            case_reference: case.clone(),
            purpose_of_use: PurposeOfUse::BreakTheGlass as i32,
            reason: "Шұғыл жағдай, баланы іздеп жатырмыз".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!has_assessment(status.case_file.as_ref().unwrap()));
    assert!(!status.break_the_glass);
    // The chair with a reason: everything, recorded, the curator alerted.
    let reason = "Түнде бала жоғалып кетті, куратор байланыста жоқ";
    let file = get_case(&chair, &case, PurposeOfUse::BreakTheGlass, reason)
        .await
        .unwrap();
    assert!(has_assessment(&file) && has_plan(&file));
    hub.deliver_everything().await;
    let curator = hub.staff("commission", "curator-1").await;
    let alerts = curator.inbox_of(FormKind::DisclosureAlert).await;
    assert_eq!(alerts.len(), 1, "the curator is alerted once");
    // The commission's inbox shows a case's messages to its curator only.
    for other in ["curator-2", "secretary"] {
        let other = hub.staff("commission", other).await;
        assert!(other.inbox_of(FormKind::DisclosureAlert).await.is_empty());
        let status = other
            .client
            .clone()
            .get_message(other.req(GetMessageRequest {
                message_id: alerts[0].message_id.clone(),
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
    }
    let alert = curator
        .client
        .clone()
        .get_message(curator.req(GetMessageRequest {
            message_id: alerts[0].message_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .envelope
        .unwrap();
    match alert.payload.and_then(|p| p.form) {
        Some(payload::Form::DisclosureAlert(a)) => {
            assert_eq!(a.addressed_to_user_id, "curator-1");
            assert_eq!(a.opened_by_user_id, "chair");
            assert_eq!(a.reason, reason);
        }
        other => panic!("expected a disclosure alert, got {other:?}"),
    }
    let history = curator.disclosures(&case).await.unwrap();
    let btg: Vec<_> = history
        .iter()
        .filter(|r| r.event == "case.read" && r.purpose_of_use == "PURPOSE_OF_USE_BREAK_THE_GLASS")
        .collect();
    assert!(
        btg.iter()
            .any(|r| r.user_id == "chair" && r.sections.contains(&(Sensitivity::Assessment as i32))),
        "{btg:?}"
    );
    hub.shutdown().await;
}

// Acceptance 4: two agencies refer the same child by IIN; the commission sees the link, neither
// agency sees the other.
async fn referrals_of_one_child_are_linked_for_the_commission_only(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let school = hub.staff("school-1", "director").await;
    let doctor = hub.staff("health-1", "doctor").await;
    let k = referral_core::validate::sample_help_request(today(&hub));
    let iin = k.child.as_ref().unwrap().iin.clone();
    let first = school.submit_k("link-school", "", k.clone()).await.unwrap();
    hub.delivered(&first).await;
    let case = open(&hub, &first, "link-decision", "curator-1")
        .await
        .unwrap();
    let second = doctor.submit_k("link-health", "", k).await.unwrap();
    // A third referral, of another child, links to nothing.
    let other = school
        .submit_k(
            "link-other",
            "",
            k_about(&hub, "Нұржан Болатұлы Әлиев", 555),
        )
        .await
        .unwrap();
    hub.deliver_everything().await;

    let secretary = hub.staff("commission", "secretary").await;
    let received = |id: String| {
        let secretary = &secretary;
        async move {
            secretary
                .client
                .clone()
                .get_message(secretary.req(GetMessageRequest { message_id: id }))
                .await
                .unwrap()
                .into_inner()
                .envelope
                .unwrap()
        }
    };
    let linked = received(second.clone()).await.linked_referrals;
    assert_eq!(linked.len(), 1, "{linked:?}");
    assert_eq!(linked[0].help_request_message_id, first);
    assert_eq!(linked[0].referring_agency_id, "school-1");
    assert_eq!(linked[0].case_reference, case);
    assert!(received(first.clone()).await.linked_referrals.is_empty());
    assert!(received(other.clone()).await.linked_referrals.is_empty());
    // A case opened on the second referral: health-1 reading it learns nothing of the first.
    let second_case = open(&hub, &second, "link-decision-2", "curator-2")
        .await
        .unwrap();
    hub.deliver_everything().await;
    let view = doctor
        .read_shared(&second_case, PurposeOfUse::CoordinationOfCare)
        .await
        .unwrap();
    let shown_k = view.case_file.unwrap().help_request.unwrap_or_default();
    assert!(shown_k.linked_referrals.is_empty(), "{shown_k:?}");
    // Links only the gateway makes: a client's own are dropped.
    let gateway = hub.gateway_client_as("school-1").await;
    let mut forged = referral_tests::envelope(
        "school-1",
        "director",
        Role::SchoolDirector,
        "commission",
        "link-forged-k",
        k_about(&hub, "Айдана Серікқызы Омарова", 556),
    );
    forged.linked_referrals = vec![referral_proto::v1::LinkedReferral {
        help_request_message_id: first.clone(),
        referring_agency_id: "police-1".into(),
        case_reference: case.clone(),
        ..Default::default()
    }];
    let forged_id = gateway
        .clone()
        .send(SendRequest {
            envelope: Some(forged),
        })
        .await
        .unwrap()
        .into_inner()
        .message_id;
    hub.delivered(&forged_id).await;
    assert!(received(forged_id).await.linked_referrals.is_empty());
    // A help request never carries a case reference.
    let mut with_case = referral_tests::envelope(
        "school-1",
        "director",
        Role::SchoolDirector,
        "commission",
        "link-k-with-case",
        k_about(&hub, "Айдана Серікқызы Омарова", 557),
    );
    with_case.case_reference = case.clone();
    let status = gateway
        .clone()
        .send(SendRequest {
            envelope: Some(with_case),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // Neither referring agency learns of the other.
    for (staff, id) in [(&school, &first), (&doctor, &second)] {
        let sent = staff
            .client
            .clone()
            .get_sent_message(staff.req(GetSentMessageRequest {
                message_id: id.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        let envelope = sent.envelope.unwrap();
        assert!(envelope.linked_referrals.is_empty());
    }
    let health_messages = hub.messages_to("health-1").await;
    for id in health_messages {
        let envelope = hub.gateway_envelope(&id).await.unwrap();
        assert!(envelope.linked_referrals.is_empty());
        assert_ne!(envelope.sender_agency_id, "school-1");
    }
    let status = doctor
        .read_shared(&case, PurposeOfUse::Treatment)
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "health is not on that case"
    );
    // The gateway keeps the keyed hash, never the IIN.
    let pseudonym = |id: String| {
        let hub = &hub;
        async move {
            sqlx::query_scalar::<_, Option<String>>(
                "SELECT child_pseudonym FROM referrals WHERE help_request_message_id = $1",
            )
            .bind(id)
            .fetch_one(hub.gateway().database().pool())
            .await
            .unwrap()
            .expect("a referral with an IIN has a pseudonym")
        }
    };
    let (of_first, of_second, of_other) = (
        pseudonym(first.clone()).await,
        pseudonym(second.clone()).await,
        pseudonym(other.clone()).await,
    );
    assert_eq!(of_first, of_second);
    assert_ne!(of_first, of_other);
    for p in [&of_first, &of_other] {
        assert!(!p.contains(&iin));
    }
    hub.shutdown().await;
}

both_backends!(
    nothing_flows_back_to_the_institution_a_child_disclosed_about,
    a_report_implicating_the_director_bypasses_and_never_reaches_them,
    one_curator_never_holds_both_sides_of_an_incident,
    a_consultation_carries_no_identity,
    aggregate_reports_carry_no_identity,
    the_case_file_is_for_the_team_and_grants_that_expire,
    breaking_the_glass_is_allowed_recorded_and_alerted,
    referrals_of_one_child_are_linked_for_the_commission_only,
);
