//! Issue 5, the residential institution: its incident work beside the reports D it keeps for
//! every incident (M:2882-2890) and the commission's protection instruction (M:3010-3040).
//!
//! * A severe incident goes to the commission and the police in one action, and to nobody else;
//!   an injured child goes to health with only the medical part; a moderate or severe incident
//!   is not closed before it went to both (FAILED_PRECONDITION, nothing changes), and is after.
//!   An incident on each mandatory-report ground goes to both, each copy naming its ground.
//! * A member of staff's report bypassing an implicated director reaches the commission and the
//!   police, and the director's lists show nothing of it.
//! * Acceptance 1: a boy living in the institution reports violence there at school; the school's
//!   K names the institution as his residence; the commission decides a move and instructs the
//!   institution, which receives the instruction alone (nothing else of the case); its
//!   acknowledgements are filed in the case. An instruction not weighed first, from a stranger,
//!   or with bad fields is refused, the field named; none reaches an implicated director's
//!   institution.
//!
//! Each on SQLite and on PostgreSQL, through the real services and the real gateway.

use jiff::{ToSpan as _, civil::Date};
use referral_proto::v1::{
    AcknowledgeInstructionRequest, ActingUser, AssessIncidentRequest, CloseIncidentRequest,
    ConfidentialityLabel, Envelope, FormKind, GetMessageRequest, GetResidentialIncidentRequest,
    HelpRequest, IncidentChild, IncidentReferral, IncidentReferralPurpose, IncidentReferralState,
    IncidentReport, IncidentRole, IncidentSeverity, InjuredPerson, InstructionAcknowledgementKind,
    InstructionState, InvolvedChild, ListProtectionInstructionsRequest, MandatoryReportGround,
    Payload, ProblemBehaviour, ProtectionMeasure, PurposeOfUse, RecordIncidentRequest,
    ReferIncidentRequest, ReferInjuredChildRequest, ReferrerDetails,
    ReportBypassingDirectorRequest, ReportCircumstances, ReporterStatus, RequestInformationRequest,
    RiskTier, Role, SendProtectionInstructionRequest, SendRequest, Sensitivity,
    decide_help_request_request, help_request_decision, payload,
};
use referral_tests::{Backend, StaffClient, TestHub, assert_named, both_backends, samples::cd};
use tonic::Code;

both_backends!(
    incidents_go_to_commission_and_police_at_once_and_injured_children_to_health,
    a_referral_made_while_the_gateway_is_away_waits_and_goes_whole,
    a_report_bypassing_the_director_is_kept_from_the_director,
    a_protection_instruction_reaches_the_institution_alone,
    an_instruction_goes_only_where_the_child_lives_and_never_past_an_incident_referral,
    every_mandatory_report_ground_goes_to_the_commission_and_the_police,
);

const VICTIM: &str = "Ерасыл Қанатұлы Әбдіров";
const OFFENDER: &str = "Дәурен Серікұлы Ахметов";

/// A fight in the institution with one injured child, reported on `on`.
fn fight(on: Date) -> IncidentReport {
    IncidentReport {
        report_date: Some(cd(on)),
        reporter_name: "Жанар Төлеуқызы Сағындықова".into(),
        reporter_status: ReporterStatus::Staff as i32,
        incident_date: Some(cd(on)),
        description: "Жатақханада төбелес болды.".into(),
        behaviours: vec![ProblemBehaviour::FightOrPhysicalAggression as i32],
        anyone_harmed: true,
        number_harmed: 1,
        injured: vec![InjuredPerson {
            full_name: VICTIM.into(),
            injuries: "қолы сынған".into(),
        }],
        sent_for_medical_help: true,
        children: vec![
            InvolvedChild {
                full_name: VICTIM.into(),
                role: IncidentRole::Victim as i32,
                risk_tier: RiskTier::AtRisk as i32,
                iin: String::new(),
            },
            InvolvedChild {
                full_name: OFFENDER.into(),
                role: IncidentRole::Perpetrator as i32,
                risk_tier: RiskTier::HighRisk as i32,
                iin: String::new(),
            },
        ],
        ..Default::default()
    }
}

fn referrer() -> Option<ReferrerDetails> {
    Some(ReferrerDetails {
        position: "тәрбиеші".into(),
        phone: "+7 704 000 0002".into(),
    })
}

async fn get(
    staff: &StaffClient,
    id: &str,
) -> Result<referral_proto::v1::ResidentialIncident, tonic::Status> {
    staff
        .residential()
        .get_residential_incident(staff.req(GetResidentialIncidentRequest {
            incident_id: id.into(),
        }))
        .await
        .map(|r| r.into_inner())
}

async fn close(
    staff: &StaffClient,
    id: &str,
    version: u64,
) -> Result<referral_proto::v1::ResidentialIncident, tonic::Status> {
    staff
        .residential()
        .close_incident(staff.req(CloseIncidentRequest {
            incident_id: id.into(),
            base_version: version,
        }))
        .await
        .map(|r| r.into_inner())
}

/// The incident referrals the gateway holds for `agency`.
async fn referrals_to(hub: &TestHub, agency: &str) -> Vec<Envelope> {
    let mut out = Vec::new();
    for id in hub.messages_to(agency).await {
        let env = hub.gateway_envelope(&id).await.expect("stored");
        if env.form_kind == FormKind::IncidentReferral as i32 {
            out.push(env);
        }
    }
    out
}

fn referral_of(env: &Envelope) -> IncidentReferral {
    match env.payload.as_ref().and_then(|p| p.form.clone()) {
        Some(payload::Form::IncidentReferral(r)) => r,
        other => panic!("not an incident referral: {other:?}"),
    }
}

async fn incidents_go_to_commission_and_police_at_once_and_injured_children_to_health(
    backend: Backend,
) {
    let hub = TestHub::start(backend).await;
    let on = hub.today();
    let staff = hub.staff("residential-1", "staff").await;
    let director = hub.staff("residential-1", "director").await;
    let d = staff
        .school_incidents()
        .record_incident(staff.req(RecordIncidentRequest {
            idempotency_key: "res-fight-1".into(),
            incident: Some(fight(on)),
            risk_of_injury: false,
        }))
        .await
        .expect("report D recorded")
        .into_inner();
    let id = d.incident_id.clone();

    // Not assessed: it cannot be closed, nor referred.
    let refused = close(&director, &id, 1).await.expect_err("not assessed");
    assert_eq!(refused.code(), Code::FailedPrecondition);

    // Bad fields are named.
    let bad = director
        .residential()
        .assess_incident(director.req(AssessIncidentRequest {
            incident_id: id.clone(),
            severity: 0,
            grounds: vec![99],
            grounds_other: String::new(),
        }))
        .await
        .expect_err("bad assessment");
    assert_named(&bad, &["severity", "grounds"]);

    let assessed = director
        .residential()
        .assess_incident(director.req(AssessIncidentRequest {
            incident_id: id.clone(),
            severity: IncidentSeverity::Severe as i32,
            grounds: vec![MandatoryReportGround::PhysicalViolenceWithInjury as i32],
            grounds_other: String::new(),
        }))
        .await
        .expect("assessed")
        .into_inner();
    assert!(assessed.must_refer);
    assert_eq!(
        assessed.referral_state,
        IncidentReferralState::NotReferred as i32
    );

    // A severe incident never referred is not closed, and nothing changes.
    let refused = close(&director, &id, assessed.version)
        .await
        .expect_err("never referred");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(get(&director, &id).await.unwrap(), assessed);
    assert!(referrals_to(&hub, "commission").await.is_empty());

    // One action: the commission and the police, both acknowledged.
    let referred = director
        .residential()
        .refer_incident(director.req(ReferIncidentRequest {
            incident_id: id.clone(),
            referrer: referrer(),
            children: Vec::new(),
        }))
        .await
        .expect("referred")
        .into_inner()
        .incident
        .unwrap();
    assert_eq!(
        referred.referral_state,
        IncidentReferralState::Referred as i32
    );
    assert!(!referred.commission_message_id.is_empty());
    assert!(!referred.police_message_id.is_empty());
    hub.deliver_everything().await;
    let to_commission = referrals_to(&hub, "commission").await;
    let to_police = referrals_to(&hub, "police-1").await;
    assert_eq!(to_commission.len(), 1);
    assert_eq!(to_police.len(), 1);
    let sent = referral_of(&to_police[0]);
    assert_eq!(sent.incident_reference, id);
    assert_eq!(sent.severity, IncidentSeverity::Severe as i32);
    assert_eq!(sent.children.len(), 2);
    assert!(sent.children[0].injured && sent.children[0].referred_for_medical_care);
    assert_eq!(referral_of(&to_commission[0]), sent);
    for other in ["school-1", "school-2", "health-1", "ngo-1", "ngo-2"] {
        assert!(
            referrals_to(&hub, other).await.is_empty(),
            "{other} received a referral"
        );
    }
    let secretary = hub.staff("commission", "secretary").await;
    assert_eq!(
        secretary.inbox_of(FormKind::IncidentReferral).await.len(),
        1,
        "the commission's register shows the referral"
    );
    // Referring again hands nothing new to the gateway.
    director
        .residential()
        .refer_incident(director.req(ReferIncidentRequest {
            incident_id: id.clone(),
            referrer: referrer(),
            children: Vec::new(),
        }))
        .await
        .expect("the same referral");
    assert_eq!(referrals_to(&hub, "police-1").await.len(), 1);

    // The injured child to health, at once: only the medical part reaches it.
    let bad = staff
        .residential()
        .refer_injured_child(staff.req(ReferInjuredChildRequest {
            idempotency_key: "res-health-bad".into(),
            incident_id: id.clone(),
            child: Some(IncidentChild {
                full_name: VICTIM.into(),
                iin: "12345".into(),
                role: IncidentRole::Victim as i32,
                ..Default::default()
            }),
            referrer: None,
        }))
        .await
        .expect_err("bad fields");
    assert_named(
        &bad,
        &["child.iin", "child.injuries", "child.role", "referrer"],
    );
    let health = staff
        .residential()
        .refer_injured_child(staff.req(ReferInjuredChildRequest {
            idempotency_key: "res-health-1".into(),
            incident_id: id.clone(),
            child: Some(IncidentChild {
                full_name: VICTIM.into(),
                date_of_birth: Some(cd(on - 12.years())),
                injuries: "қолы сынған".into(),
                ..Default::default()
            }),
            referrer: referrer(),
        }))
        .await
        .expect("referred to health")
        .into_inner();
    assert!(!health.message_id.is_empty());
    hub.delivered(&health.message_id).await;
    let doctor = hub.staff("health-1", "doctor").await;
    let received = doctor
        .client
        .clone()
        .get_message(doctor.req(GetMessageRequest {
            message_id: health.message_id.clone(),
        }))
        .await
        .expect("health reads it")
        .into_inner()
        .envelope
        .unwrap();
    let medical = referral_of(&received);
    assert_eq!(medical.purpose, IncidentReferralPurpose::MedicalCare as i32);
    assert_eq!(medical.children.len(), 1);
    assert_eq!(medical.children[0].full_name, VICTIM);
    assert_eq!(medical.children[0].injuries, "қолы сынған");
    assert!(medical.description.is_empty() && medical.severity == 0);
    assert!(medical.grounds.is_empty() && medical.circumstances.is_none());
    assert_eq!(referrals_to(&hub, "health-1").await.len(), 1);

    // Straight to the gateway: a referral to health carrying the incident is refused, the
    // fields named; a referral for investigation to health is refused outright.
    let gateway = hub.gateway_client_as("residential-1").await;
    let acting = ActingUser {
        user_id: "staff".into(),
        agency_id: "residential-1".into(),
        role: Role::InstitutionStaff as i32,
        display_name: "Жанар Төлеуқызы Сағындықова".into(),
    };
    let raw = |key: &str, purpose: IncidentReferralPurpose, r: IncidentReferral| SendRequest {
        envelope: Some(Envelope {
            idempotency_key: key.into(),
            recipient_agency_id: "health-1".into(),
            acting_user: Some(acting.clone()),
            purpose_of_use: PurposeOfUse::EmergencyTreatment as i32,
            form_kind: FormKind::IncidentReferral as i32,
            confidentiality: ConfidentialityLabel::Restricted as i32,
            payload: Some(Payload {
                form: Some(payload::Form::IncidentReferral(IncidentReferral {
                    purpose: purpose as i32,
                    ..r
                })),
            }),
            ..Default::default()
        }),
    };
    let mut telling = medical.clone();
    telling.description = "what happened".into();
    let refused = gateway
        .clone()
        .send(raw(
            "raw-health-1",
            IncidentReferralPurpose::MedicalCare,
            telling,
        ))
        .await
        .expect_err("more than the medical part");
    assert_named(
        &refused,
        &["envelope.payload.incident_referral.description"],
    );
    let refused = gateway
        .clone()
        .send(raw(
            "raw-health-2",
            IncidentReferralPurpose::Investigation,
            sent,
        ))
        .await
        .expect_err("investigation is not health's");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(referrals_to(&hub, "health-1").await.len(), 1);

    // Referred to both: it closes.
    let now = get(&director, &id).await.unwrap();
    let closed = close(&director, &id, now.version).await.expect("closes");
    assert!(closed.closed);
    let again = close(&director, &id, closed.version)
        .await
        .expect_err("closed already");
    assert_eq!(again.code(), Code::FailedPrecondition);

    // A light incident with no mandatory-report ground closes without a referral; a moderate one
    // does not, nor does a "light" one carrying a ground (M:2932-2940: the grounds are what makes
    // an incident moderate or severe).
    let mut recorded = Vec::new();
    for key in ["res-fight-2", "res-fight-3", "res-fight-4"] {
        recorded.push(
            staff
                .school_incidents()
                .record_incident(staff.req(RecordIncidentRequest {
                    idempotency_key: key.into(),
                    incident: Some(fight(on)),
                    risk_of_injury: false,
                }))
                .await
                .unwrap()
                .into_inner()
                .incident_id,
        );
    }
    let [light, light_with_ground, moderate] = <[String; 3]>::try_from(recorded).unwrap();
    let harassment = vec![MandatoryReportGround::PeerHarassmentWithHarm as i32];
    for (incident, severity, grounds) in [
        (&light, IncidentSeverity::Light, vec![]),
        (
            &light_with_ground,
            IncidentSeverity::Light,
            harassment.clone(),
        ),
        (&moderate, IncidentSeverity::Moderate, harassment),
    ] {
        let assessed = director
            .residential()
            .assess_incident(director.req(AssessIncidentRequest {
                incident_id: incident.clone(),
                severity: severity as i32,
                grounds,
                grounds_other: String::new(),
            }))
            .await
            .expect("assessed")
            .into_inner();
        assert_eq!(assessed.must_refer, incident != &light, "{severity:?}");
    }
    close(&director, &light, 1)
        .await
        .expect("a light one without a ground closes");
    for incident in [&light_with_ground, &moderate] {
        let refused = close(&director, incident, 1)
            .await
            .expect_err("never referred");
        assert_eq!(refused.code(), Code::FailedPrecondition);
        let unchanged = get(&director, incident).await.unwrap();
        assert!(!unchanged.closed);
        assert_eq!(unchanged.version, 1);
    }
    hub.shutdown().await;
}

/// The gateway is away when the institution refers: both referrals wait, queued together; the
/// incident is PENDING and cannot be closed; once the gateway is back, referring again hands both
/// over (the commission's first), each exactly once.
async fn a_referral_made_while_the_gateway_is_away_waits_and_goes_whole(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let on = hub.today();
    let director = hub.staff("residential-1", "director").await;
    let id = director
        .school_incidents()
        .record_incident(director.req(RecordIncidentRequest {
            idempotency_key: "res-away-1".into(),
            incident: Some(fight(on)),
            risk_of_injury: false,
        }))
        .await
        .expect("report D recorded")
        .into_inner()
        .incident_id;
    director
        .residential()
        .assess_incident(director.req(AssessIncidentRequest {
            incident_id: id.clone(),
            severity: IncidentSeverity::Moderate as i32,
            grounds: vec![MandatoryReportGround::ThreatOfPhysicalViolence as i32],
            grounds_other: String::new(),
        }))
        .await
        .expect("assessed");
    // Whatever the engine raises about the report's own clocks is delivered before it stops.
    hub.gateway().settle().await.expect("the engine settles");
    hub.deliver_everything().await;
    hub.stop_gateway().await;
    let refer = || {
        let mut client = director.residential();
        let request = director.req(ReferIncidentRequest {
            incident_id: id.clone(),
            referrer: referrer(),
            children: Vec::new(),
        });
        async move { client.refer_incident(request).await }
    };
    let waiting = refer()
        .await
        .expect("queued while the gateway is away")
        .into_inner()
        .incident
        .unwrap();
    assert_eq!(
        waiting.referral_state,
        IncidentReferralState::Pending as i32
    );
    assert!(waiting.commission_message_id.is_empty() && waiting.police_message_id.is_empty());
    let refused = close(&director, &id, waiting.version)
        .await
        .expect_err("not referred yet");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    hub.start_gateway().await.expect("the gateway is back");
    let referred = refer()
        .await
        .expect("handed over")
        .into_inner()
        .incident
        .unwrap();
    assert_eq!(
        referred.referral_state,
        IncidentReferralState::Referred as i32
    );
    assert_eq!(referred.version, waiting.version);
    hub.deliver_everything().await;
    assert_eq!(referrals_to(&hub, "commission").await.len(), 1);
    assert_eq!(referrals_to(&hub, "police-1").await.len(), 1);
    close(&director, &id, referred.version)
        .await
        .expect("referred to both: it closes");
    hub.shutdown().await;
}

async fn a_report_bypassing_the_director_is_kept_from_the_director(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let on = hub.today();
    let staff = hub.staff("residential-1", "staff").await;
    let director = hub.staff("residential-1", "director").await;
    let report = |key: &str| ReportBypassingDirectorRequest {
        idempotency_key: key.into(),
        incident_date: Some(cd(on - 1.day())),
        severity: IncidentSeverity::Severe as i32,
        grounds: vec![MandatoryReportGround::CorporalPunishmentWithHarm as i32],
        grounds_other: String::new(),
        description: "Директор баланы ұрды.".into(),
        children: vec![IncidentChild {
            full_name: VICTIM.into(),
            role: IncidentRole::Victim as i32,
            injured: true,
            injuries: "көгерген".into(),
            ..Default::default()
        }],
        referrer: referrer(),
    };

    // The director cannot file it; bad fields are named.
    let refused = director
        .residential()
        .report_bypassing_director(director.req(report("bypass-0")))
        .await
        .expect_err("the director");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let bad = staff
        .residential()
        .report_bypassing_director(staff.req(ReportBypassingDirectorRequest {
            description: String::new(),
            children: Vec::new(),
            grounds: Vec::new(),
            referrer: None,
            ..report("bypass-bad")
        }))
        .await
        .expect_err("bad fields");
    assert_named(&bad, &["description", "children", "grounds", "referrer"]);

    let reported = staff
        .residential()
        .report_bypassing_director(staff.req(report("bypass-1")))
        .await
        .expect("reported")
        .into_inner()
        .incident
        .unwrap();
    assert!(reported.director_implicated);
    assert_eq!(
        reported.referral_state,
        IncidentReferralState::Referred as i32
    );
    hub.deliver_everything().await;
    for agency in ["commission", "police-1"] {
        let got = referrals_to(&hub, agency).await;
        assert_eq!(got.len(), 1, "{agency}");
        let r = referral_of(&got[0]);
        assert_eq!(
            r.circumstances.unwrap().implicated_director_agency_id,
            "residential-1"
        );
    }
    // The director's lists show nothing of it; the reporter's do.
    let ids = [
        reported.commission_message_id.clone(),
        reported.police_message_id.clone(),
    ];
    assert!(
        director
            .sent()
            .await
            .iter()
            .all(|s| !ids.contains(&s.message_id)),
        "the director sees the report"
    );
    let mine: Vec<String> = staff
        .sent()
        .await
        .into_iter()
        .map(|s| s.message_id)
        .collect();
    assert!(ids.iter().all(|id| mine.contains(id)));
    let hidden = get(&director, &reported.incident_id)
        .await
        .expect_err("the director");
    assert_eq!(hidden.code(), Code::NotFound);
    let sent = director
        .client
        .clone()
        .get_sent_message(director.req(referral_proto::v1::GetSentMessageRequest {
            message_id: ids[0].clone(),
        }))
        .await;
    assert!(sent.is_err(), "the director reads the report");
    // The same request again is the same report.
    let again = staff
        .residential()
        .report_bypassing_director(staff.req(report("bypass-1")))
        .await
        .expect("replayed")
        .into_inner()
        .incident
        .unwrap();
    assert_eq!(again.incident_id, reported.incident_id);
    assert_eq!(referrals_to(&hub, "commission").await.len(), 1);
    hub.shutdown().await;
}

/// School 1's K about a boy who lives in residential-1 and reported violence there, with the
/// circumstances given; the secretary opens a case with curator-1. Returns the case reference.
async fn open_case_with(hub: &TestHub, key: &str, circumstances: ReportCircumstances) -> String {
    open_case_from(hub, ("school-1", "director"), key, circumstances).await
}

/// The same, the K from `(agency, user)`.
async fn open_case_from(
    hub: &TestHub,
    (agency, user): (&str, &str),
    key: &str,
    circumstances: ReportCircumstances,
) -> String {
    let school = hub.staff(agency, user).await;
    let k = HelpRequest {
        circumstances: Some(circumstances),
        ..referral_core::validate::sample_help_request(hub.today())
    };
    let k_id = school
        .submit_k(&format!("{key}-help-request"), "", k)
        .await
        .expect("K submitted");
    hub.delivered(&k_id).await;
    let secretary = hub.staff("commission", "secretary").await;
    let decision = secretary
        .decide(
            &k_id,
            &format!("{key}-decision-open"),
            decide_help_request_request::Outcome::OpenCase(referral_proto::v1::OpenCase {
                curator_user_id: "curator-1".into(),
            }),
        )
        .await
        .expect("case opened");
    hub.delivered(&decision.decision_message_id).await;
    match decision.decision.and_then(|d| d.outcome) {
        Some(help_request_decision::Outcome::CaseOpened(c)) => c.case_reference,
        other => panic!("expected a case, got {other:?}"),
    }
}

fn instruction(case: &str, version: u64, key: &str, on: Date) -> SendProtectionInstructionRequest {
    SendProtectionInstructionRequest {
        idempotency_key: key.into(),
        case_reference: case.into(),
        base_version: version,
        recipient_agency_id: "residential-1".into(),
        measure: ProtectionMeasure::MoveToAnotherInstitution as i32,
        measure_other: String::new(),
        new_placement: "№2 балалар үйі, Абай к-сі 5".into(),
        carry_out_by: Some(cd(on + 3.days())),
        decision_reference: "КТІЖК-7/2026".into(),
        decision_date: Some(cd(on)),
        reason: "Баланы қудалаудан қорғау / защита ребёнка от преследования".into(),
        confidentiality_weighed: true,
        weighing_reason: "Мекеме баланы ауыстыруы керек; оқиға мазмұны берілмейді.".into(),
    }
}

async fn a_protection_instruction_reaches_the_institution_alone(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let on = hub.today();
    let case = open_case_with(
        &hub,
        "acc1",
        ReportCircumstances {
            child_residence_agency_id: "residential-1".into(),
            ..Default::default()
        },
    )
    .await;
    let curator = hub.staff("commission", "curator-1").await;
    let stranger = hub.staff("commission", "curator-2").await;
    let v = curator.case_version(&case).await;

    // Not weighed first: refused, the field named; bad fields named; a stranger refused.
    let unweighed = curator
        .protection_instructions()
        .send_protection_instruction(curator.req(SendProtectionInstructionRequest {
            confidentiality_weighed: false,
            weighing_reason: String::new(),
            ..instruction(&case, v, "instr-unweighed", on)
        }))
        .await
        .expect_err("not weighed");
    assert_named(&unweighed, &["confidentiality_weighed", "weighing_reason"]);
    let bad = curator
        .protection_instructions()
        .send_protection_instruction(curator.req(SendProtectionInstructionRequest {
            measure: 0,
            new_placement: String::new(),
            recipient_agency_id: "school-1".into(),
            carry_out_by: Some(cd(on - 1.day())),
            ..instruction(&case, v, "instr-bad", on)
        }))
        .await
        .expect_err("bad fields");
    assert_named(&bad, &["measure", "recipient_agency_id", "carry_out_by"]);
    let refused = stranger
        .protection_instructions()
        .send_protection_instruction(stranger.req(instruction(&case, v, "instr-stranger", on)))
        .await
        .expect_err("a stranger");
    assert_eq!(refused.code(), Code::PermissionDenied);
    // The institution still receives nothing else of the case (no back-flow).
    let asked = curator
        .case_files()
        .request_information(curator.req(RequestInformationRequest {
            case_reference: case.clone(),
            base_version: v,
            idempotency_key: "ask-residential".into(),
            recipient_agency_id: "residential-1".into(),
            questions: "Не белгілі?".into(),
            answer_by: Some(cd(on + 7.days())),
        }))
        .await
        .expect_err("no back-flow");
    assert_eq!(asked.code(), Code::PermissionDenied);

    let sent = curator
        .protection_instructions()
        .send_protection_instruction(curator.req(instruction(&case, v, "instr-first", on)))
        .await
        .expect("instructed")
        .into_inner();
    assert!(!sent.message_id.is_empty());
    hub.delivered(&sent.message_id).await;
    let stored = hub.gateway_envelope(&sent.message_id).await.unwrap();
    assert_eq!(
        stored.view_sections,
        vec![
            Sensitivity::CaseStatus as i32,
            Sensitivity::AssignedWork as i32
        ]
    );

    // The institution: the instruction, and nothing else of the case.
    let director = hub.staff("residential-1", "director").await;
    let listed = director
        .residential()
        .list_protection_instructions(director.req(ListProtectionInstructionsRequest {}))
        .await
        .expect("listed")
        .into_inner()
        .instructions;
    assert_eq!(listed.len(), 1);
    let got = listed[0].instruction.clone().unwrap();
    assert_eq!(got.case_reference, case);
    assert_eq!(
        got.measure,
        ProtectionMeasure::MoveToAnotherInstitution as i32
    );
    assert_eq!(got.new_placement, "№2 балалар үйі, Абай к-сі 5");
    assert!(!got.child_full_name.is_empty());
    // The reason tells what the child disclosed: the case record, never the institution's.
    assert_eq!(got.reason, "");
    let of_case: Vec<_> = hub.messages_to("residential-1").await.into_iter().collect();
    let mut kinds = Vec::new();
    for id in of_case {
        let env = hub.gateway_envelope(&id).await.unwrap();
        if env.case_reference == case {
            kinds.push(env.form_kind);
        }
    }
    assert_eq!(kinds, vec![FormKind::ProtectionInstruction as i32]);
    let read = director
        .read_shared(&case, PurposeOfUse::CoordinationOfCare)
        .await
        .expect_err("the case file");
    assert_eq!(read.code(), Code::PermissionDenied);

    // Acknowledged, then carried out; both filed in the case.
    let ack = |key: &str, kind: InstructionAcknowledgementKind| AcknowledgeInstructionRequest {
        idempotency_key: key.into(),
        instruction_message_id: sent.message_id.clone(),
        kind: kind as i32,
        on: Some(cd(on)),
        note: "Қабылданды".into(),
    };
    let early = director
        .residential()
        .acknowledge_instruction(director.req(ack(
            "ack-too-early",
            InstructionAcknowledgementKind::CarriedOut,
        )))
        .await
        .expect_err("before acknowledging");
    assert_eq!(early.code(), Code::FailedPrecondition);
    let bad = director
        .residential()
        .acknowledge_instruction(director.req(AcknowledgeInstructionRequest {
            kind: 0,
            on: None,
            ..ack(
                "ack-bad-fields",
                InstructionAcknowledgementKind::Acknowledged,
            )
        }))
        .await
        .expect_err("bad fields");
    assert_named(&bad, &["kind", "on"]);
    for (key, kind) in [
        (
            "ack-acknowledged",
            InstructionAcknowledgementKind::Acknowledged,
        ),
        (
            "ack-carried-out",
            InstructionAcknowledgementKind::CarriedOut,
        ),
    ] {
        let state = director
            .residential()
            .acknowledge_instruction(director.req(ack(key, kind)))
            .await
            .expect("acknowledged")
            .into_inner();
        assert_eq!(state.state, kind as i32);
        assert!(
            state
                .acknowledgement_message_ids
                .iter()
                .all(|m| !m.is_empty())
        );
    }
    let twice = director
        .residential()
        .acknowledge_instruction(director.req(ack(
            "ack-acknowledged-again",
            InstructionAcknowledgementKind::Acknowledged,
        )))
        .await
        .expect_err("acknowledged already");
    assert_eq!(twice.code(), Code::FailedPrecondition);
    // The list shows each instruction with the message ids of its own acknowledgements.
    let listed = director
        .residential()
        .list_protection_instructions(director.req(ListProtectionInstructionsRequest {}))
        .await
        .expect("listed")
        .into_inner()
        .instructions;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].state,
        InstructionAcknowledgementKind::CarriedOut as i32
    );
    assert_eq!(listed[0].acknowledgement_message_ids.len(), 2);
    assert!(
        listed[0]
            .acknowledgement_message_ids
            .iter()
            .all(|m| !m.is_empty())
    );
    hub.deliver_everything().await;
    let file = curator.get_case(&case).await.unwrap();
    assert_eq!(file.protection_instructions.len(), 1);
    let record = &file.protection_instructions[0];
    assert_eq!(record.instruction_message_id, sent.message_id);
    assert_eq!(record.state, InstructionState::CarriedOut as i32);
    assert_eq!(record.acknowledgements.len(), 2);
    assert!(!record.weighing_reason.is_empty());
    // The commission keeps the reason in the case file.
    assert_eq!(
        record.instruction.as_ref().unwrap().reason,
        instruction(&case, v, "instr-first", on).reason
    );

    // A case whose report implicates the institution's director: no instruction reaches it,
    // neither through the commission's service nor straight at the gateway.
    let implicated = open_case_with(
        &hub,
        "impl",
        ReportCircumstances {
            implicated_director_agency_id: "residential-1".into(),
            ..Default::default()
        },
    )
    .await;
    let v = curator.case_version(&implicated).await;
    let refused = curator
        .protection_instructions()
        .send_protection_instruction(curator.req(instruction(
            &implicated,
            v,
            "instr-implicated",
            on,
        )))
        .await
        .expect_err("implicated director");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let gateway = hub.gateway_client_as("commission").await;
    let refused = gateway
        .clone()
        .send(SendRequest {
            envelope: Some(Envelope {
                idempotency_key: "raw-instruction-impl".into(),
                recipient_agency_id: "residential-1".into(),
                acting_user: Some(ActingUser {
                    user_id: "curator-1".into(),
                    agency_id: "commission".into(),
                    role: Role::CommissionCurator as i32,
                    display_name: "Дана Ерланқызы Омарова".into(),
                }),
                purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
                case_reference: implicated.clone(),
                form_kind: FormKind::ProtectionInstruction as i32,
                confidentiality: ConfidentialityLabel::Restricted as i32,
                payload: Some(Payload {
                    form: Some(payload::Form::ProtectionInstruction(
                        referral_proto::v1::ProtectionInstruction {
                            case_reference: implicated.clone(),
                            // The institution's copy has no reason; the form requires one.
                            reason: "Қорғау / Защита".into(),
                            ..got.clone()
                        },
                    )),
                }),
                ..Default::default()
            }),
        })
        .await
        .expect_err("the gateway's policy");
    assert_eq!(refused.code(), Code::PermissionDenied);
    hub.shutdown().await;
}

/// The commission's protection instruction straight at the gateway, as curator-1.
fn raw_instruction(case: &str, key: &str, on: Date) -> SendRequest {
    SendRequest {
        envelope: Some(Envelope {
            idempotency_key: key.into(),
            recipient_agency_id: "residential-1".into(),
            acting_user: Some(ActingUser {
                user_id: "curator-1".into(),
                agency_id: "commission".into(),
                role: Role::CommissionCurator as i32,
                display_name: "Дана Ерланқызы Омарова".into(),
            }),
            purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
            case_reference: case.into(),
            form_kind: FormKind::ProtectionInstruction as i32,
            confidentiality: ConfidentialityLabel::Restricted as i32,
            payload: Some(Payload {
                form: Some(payload::Form::ProtectionInstruction(
                    referral_proto::v1::ProtectionInstruction {
                        case_reference: case.into(),
                        child_full_name: VICTIM.into(),
                        child_date_of_birth: Some(cd(Date::new(2013, 4, 2).unwrap())),
                        measure: ProtectionMeasure::MoveToAnotherInstitution as i32,
                        measure_other: String::new(),
                        new_placement: "№2 балалар үйі".into(),
                        carry_out_by: Some(cd(on + 3.days())),
                        decision_reference: "КТІЖК-9/2026".into(),
                        decision_date: Some(cd(on)),
                        reason: "Қорғау / Защита".into(),
                        instructed_by: "Дана Ерланқызы Омарова".into(),
                        contact: String::new(),
                    },
                )),
            }),
            ..Default::default()
        }),
    }
}

/// The messages of `case` the gateway holds for residential-1.
async fn of_case_to_institution(hub: &TestHub, case: &str) -> usize {
    let mut n = 0;
    for id in hub.messages_to("residential-1").await {
        if hub.gateway_envelope(&id).await.unwrap().case_reference == case {
            n += 1;
        }
    }
    n
}

/// An instruction names the child: it goes only to the institution the case's report says the
/// child lives in. What an institution's own incident referral said of an incident (a director
/// implicated) holds for every case opened on a K of the same referrer naming that incident, even
/// when the K leaves it out; the same reference from another agency is another incident.
async fn an_instruction_goes_only_where_the_child_lives_and_never_past_an_incident_referral(
    backend: Backend,
) {
    let hub = TestHub::start(backend).await;
    let on = hub.today();
    let curator = hub.staff("commission", "curator-1").await;
    let commission = hub.gateway_client_as("commission").await;

    // A report naming no residence: residential-1 is told nothing, neither through the
    // commission's service (refused before anything is stored) nor straight at the gateway.
    let elsewhere = open_case_with(&hub, "nores", ReportCircumstances::default()).await;
    let v = curator.case_version(&elsewhere).await;
    let refused = curator
        .protection_instructions()
        .send_protection_instruction(curator.req(instruction(&elsewhere, v, "instr-nores", on)))
        .await
        .expect_err("the child does not live there");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(curator.case_version(&elsewhere).await, v);
    assert!(
        curator
            .get_case(&elsewhere)
            .await
            .expect("the case reads")
            .protection_instructions
            .is_empty()
    );
    let refused = commission
        .clone()
        .send(raw_instruction(&elsewhere, "raw-nores", on))
        .await
        .expect_err("the gateway's policy");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(of_case_to_institution(&hub, &elsewhere).await, 0);

    // School 1 referred an incident implicating residential-1's director; its K about the same
    // incident names residential-1 as the boy's residence and leaves the director out. The
    // gateway remembers the incident referral: the instruction is refused there, the commission
    // answers the refusal, its case file shows the instruction refused, nothing went out.
    let school = hub.gateway_client_as("school-1").await;
    school
        .clone()
        .send(SendRequest {
            envelope: Some(Envelope {
                idempotency_key: "impl-incident-referral".into(),
                recipient_agency_id: "commission".into(),
                acting_user: Some(ActingUser {
                    user_id: "director".into(),
                    agency_id: "school-1".into(),
                    role: Role::SchoolDirector as i32,
                    display_name: String::new(),
                }),
                purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
                form_kind: FormKind::IncidentReferral as i32,
                confidentiality: ConfidentialityLabel::Restricted as i32,
                payload: Some(Payload {
                    form: Some(payload::Form::IncidentReferral(IncidentReferral {
                        incident_reference: "INC-IMPL-1".into(),
                        purpose: IncidentReferralPurpose::Investigation as i32,
                        institution: "№1 мектеп".into(),
                        incident_date: Some(cd(on - 1.day())),
                        referred_on: Some(cd(on)),
                        severity: IncidentSeverity::Severe as i32,
                        grounds: vec![MandatoryReportGround::CorporalPunishmentWithHarm as i32],
                        grounds_other: String::new(),
                        description: "Директор баланы ұрды.".into(),
                        children: vec![IncidentChild {
                            full_name: VICTIM.into(),
                            role: IncidentRole::Victim as i32,
                            ..Default::default()
                        }],
                        reporter: Some(referral_proto::v1::IncidentReporter {
                            full_name: "Гүлнар Серікқызы Әбенова".into(),
                            position: "директор".into(),
                            phone: "+77020000001".into(),
                        }),
                        circumstances: Some(ReportCircumstances {
                            implicated_director_agency_id: "residential-1".into(),
                            ..Default::default()
                        }),
                    })),
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("the school refers the incident");
    let lives_there = ReportCircumstances {
        child_residence_agency_id: "residential-1".into(),
        incident_reference: "INC-IMPL-1".into(),
        incident_role: IncidentRole::Victim as i32,
        ..Default::default()
    };
    let implicated = open_case_with(&hub, "impl-incident", lives_there.clone()).await;
    let v = curator.case_version(&implicated).await;
    let refused = curator
        .protection_instructions()
        .send_protection_instruction(curator.req(instruction(
            &implicated,
            v,
            "instr-impl-incident",
            on,
        )))
        .await
        .expect_err("the director is implicated by the incident referral");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let file = curator.get_case(&implicated).await.expect("the case reads");
    assert_eq!(file.protection_instructions.len(), 1);
    assert_eq!(
        file.protection_instructions[0].state,
        InstructionState::Refused as i32
    );
    assert!(
        file.protection_instructions[0]
            .instruction_message_id
            .is_empty()
    );
    let refused = commission
        .clone()
        .send(raw_instruction(&implicated, "raw-impl-incident", on))
        .await
        .expect_err("the gateway's policy");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    hub.deliver_everything().await;
    assert_eq!(of_case_to_institution(&hub, &implicated).await, 0);

    // The same reference from school 2 is school 2's own incident: its case's instruction
    // reaches residential-1.
    let other = open_case_from(&hub, ("school-2", "director"), "other-school", lives_there).await;
    let v = curator.case_version(&other).await;
    let sent = curator
        .protection_instructions()
        .send_protection_instruction(curator.req(instruction(&other, v, "instr-other", on)))
        .await
        .expect("instructed")
        .into_inner();
    assert!(!sent.message_id.is_empty());
    hub.delivered(&sent.message_id).await;
    assert_eq!(of_case_to_institution(&hub, &other).await, 1);

    // A report bypassing residential-1's director, then the institution's own K naming that
    // incident but not the director: the institution reads nothing of the case, not even the
    // status a referrer sees.
    let staff = hub.staff("residential-1", "staff").await;
    let bypassed = staff
        .residential()
        .report_bypassing_director(staff.req(ReportBypassingDirectorRequest {
            idempotency_key: "bypass-then-k".into(),
            incident_date: Some(cd(on - 1.day())),
            severity: IncidentSeverity::Severe as i32,
            grounds: vec![MandatoryReportGround::CorporalPunishmentWithHarm as i32],
            grounds_other: String::new(),
            description: "Директор баланы ұрды.".into(),
            children: vec![IncidentChild {
                full_name: VICTIM.into(),
                role: IncidentRole::Victim as i32,
                injured: true,
                injuries: "көгерген".into(),
                ..Default::default()
            }],
            referrer: referrer(),
        }))
        .await
        .expect("reported")
        .into_inner()
        .incident
        .unwrap();
    hub.deliver_everything().await;
    let own = open_case_from(
        &hub,
        ("residential-1", "staff"),
        "own-k",
        ReportCircumstances {
            incident_reference: bypassed.incident_id.clone(),
            incident_role: IncidentRole::Victim as i32,
            ..Default::default()
        },
    )
    .await;
    let read = staff
        .read_shared(&own, PurposeOfUse::CoordinationOfCare)
        .await
        .expect_err("implicated by the bypassing report");
    assert_eq!(read.code(), Code::PermissionDenied, "{read:?}");
    hub.shutdown().await;
}

/// DOMAIN.md section 3 (M:2932-2940): an incident on any of the mandatory-report grounds goes to
/// the commission AND the police, each copy naming the ground.
async fn every_mandatory_report_ground_goes_to_the_commission_and_the_police(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let on = hub.today();
    let staff = hub.staff("residential-1", "staff").await;
    let director = hub.staff("residential-1", "director").await;
    let grounds = [
        MandatoryReportGround::ThreatOfPhysicalViolence,
        MandatoryReportGround::PhysicalViolenceWithInjury,
        MandatoryReportGround::PhysicalViolenceWithWeapon,
        MandatoryReportGround::SexualCommentsHarassment,
        MandatoryReportGround::TakingMoney,
        MandatoryReportGround::PeerHarassmentWithHarm,
        MandatoryReportGround::CorporalPunishmentWithHarm,
    ];
    let mut incidents = Vec::new();
    for ground in grounds {
        let id = staff
            .school_incidents()
            .record_incident(staff.req(RecordIncidentRequest {
                idempotency_key: format!("res-ground-{}", ground as i32),
                incident: Some(fight(on)),
                risk_of_injury: false,
            }))
            .await
            .expect("report D recorded")
            .into_inner()
            .incident_id;
        let assessed = director
            .residential()
            .assess_incident(director.req(AssessIncidentRequest {
                incident_id: id.clone(),
                severity: IncidentSeverity::Moderate as i32,
                grounds: vec![ground as i32],
                grounds_other: String::new(),
            }))
            .await
            .expect("assessed")
            .into_inner();
        assert!(assessed.must_refer, "{ground:?}");
        let referred = director
            .residential()
            .refer_incident(director.req(ReferIncidentRequest {
                incident_id: id.clone(),
                referrer: referrer(),
                children: Vec::new(),
            }))
            .await
            .expect("referred")
            .into_inner()
            .incident
            .unwrap();
        assert_eq!(
            referred.referral_state,
            IncidentReferralState::Referred as i32,
            "{ground:?}"
        );
        assert!(!referred.commission_message_id.is_empty(), "{ground:?}");
        assert!(!referred.police_message_id.is_empty(), "{ground:?}");
        incidents.push((id, ground));
    }
    hub.deliver_everything().await;
    for agency in ["commission", "police-1"] {
        let received = referrals_to(&hub, agency).await;
        assert_eq!(received.len(), grounds.len(), "{agency}");
        for (id, ground) in &incidents {
            let referral = received
                .iter()
                .map(referral_of)
                .find(|r| &r.incident_reference == id)
                .unwrap_or_else(|| panic!("{agency} lacks the referral on {ground:?}"));
            assert_eq!(referral.grounds, vec![*ground as i32], "{agency}");
        }
    }
    hub.shutdown().await;
}
