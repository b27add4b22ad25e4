//! Issue 5, police: one investigation per incident, linked to the case of every child involved.
//! Every change reaches the curator of each case, each in their own case file and each naming only
//! that case and its child's role (M:3215-3220); the offender's preventive registration reaches
//! only the offender's curator (M:3240-3260), refused for the victim's case by the police and by
//! the gateway; an institution's direct referral opens an investigation whose changes wait for a
//! case and reach it once linked. Impossible steps are FAILED_PRECONDITION with nothing changed,
//! bad fields named. Each on SQLite and on PostgreSQL, through the real services and gateway.

use jiff::{ToSpan as _, civil::Date};
use referral_core::iin::Iin;
use referral_proto::v1::{
    ActingUser, CaseDeliveryState, ConfidentialityLabel, EndPreventiveRegistrationRequest,
    Envelope, FormKind, GetInvestigationRequest, HelpRequest, IncidentChild, IncidentReferral,
    IncidentReferralPurpose, IncidentReporter, IncidentRole, IncidentSeverity, Investigation,
    InvestigationStatus, LinkCaseRequest, ListInvestigationsRequest, MandatoryReportGround,
    OpenCase, Payload, PreventiveRegistration, PreventiveRegistrationStatus, PurposeOfUse,
    RegisterPreventiveRequest, ReportCircumstances, RequestInformationRequest, Role, SendRequest,
    Sex, UpdateInvestigationRequest, decide_help_request_request::Outcome, help_request_decision,
    payload,
};
use referral_tests::{Backend, StaffClient, TestHub, both_backends, fields, samples::cd};
use tonic::Code;

/// A K from school-1 about a child of incident `incident` with `role`.
fn k(hub: &TestHub, name: &str, serial: u16, incident: &str, role: IncidentRole) -> HelpRequest {
    let mut k = referral_core::validate::sample_help_request(hub.today());
    let child = k.child.as_mut().unwrap();
    let born: Date = child.iin.parse::<Iin>().unwrap().birth_date();
    child.full_name = name.into();
    child.iin = Iin::generate(born, Sex::Female, serial)
        .unwrap()
        .into_string();
    k.circumstances = Some(ReportCircumstances {
        incident_reference: incident.into(),
        incident_role: role as i32,
        ..Default::default()
    });
    k
}

/// Submits `k` and opens a case on it with `curator`.
async fn open(hub: &TestHub, key: &str, k: HelpRequest, curator: &str) -> String {
    let school = hub.staff("school-1", "director").await;
    let k_id = school.submit_k(key, "", k).await.expect("K submitted");
    hub.deliver_everything().await;
    let secretary = hub.staff("commission", "secretary").await;
    let decision = secretary
        .decide(
            &k_id,
            &format!("{key}-decision"),
            Outcome::OpenCase(OpenCase {
                curator_user_id: curator.into(),
            }),
        )
        .await
        .expect("case opened");
    hub.deliver_everything().await;
    match decision.decision.and_then(|d| d.outcome) {
        Some(help_request_decision::Outcome::CaseOpened(c)) => c.case_reference,
        other => panic!("expected a case, got {other:?}"),
    }
}

/// The curator asks the police about the case.
async fn ask_police(hub: &TestHub, curator: &StaffClient, case: &str) {
    let version = curator.case_version(case).await;
    curator
        .case_files()
        .request_information(curator.req(RequestInformationRequest {
            case_reference: case.into(),
            base_version: version,
            idempotency_key: format!("{case}-ask-police"),
            recipient_agency_id: "police-1".into(),
            questions: "Тергеу барысы? / Ход расследования?".into(),
            answer_by: Some(cd(hub.today() + 7.days())),
        }))
        .await
        .expect("information requested");
}

fn update(
    id: &str,
    status: InvestigationStatus,
    on: Date,
    key: &str,
) -> UpdateInvestigationRequest {
    UpdateInvestigationRequest {
        investigation_id: id.into(),
        status: status as i32,
        status_on: Some(cd(on)),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

async fn list(inspector: &StaffClient) -> Vec<Investigation> {
    inspector
        .investigations()
        .list_investigations(inspector.req(ListInvestigationsRequest {
            include_closed: true,
        }))
        .await
        .expect("the inspector lists")
        .into_inner()
        .investigations
}

async fn get(inspector: &StaffClient, id: &str) -> Investigation {
    inspector
        .investigations()
        .get_investigation(inspector.req(GetInvestigationRequest {
            investigation_id: id.into(),
            ..Default::default()
        }))
        .await
        .expect("the investigation reads")
        .into_inner()
}

async fn link(
    inspector: &StaffClient,
    id: &str,
    case: &str,
    role: IncidentRole,
) -> Result<Investigation, tonic::Status> {
    inspector
        .investigations()
        .link_case(inspector.req(LinkCaseRequest {
            investigation_id: id.into(),
            case_reference: case.into(),
            child_role: role as i32,
        }))
        .await
        .map(|r| r.into_inner().investigation.unwrap())
}

/// The (case, form kind) of each message in a commission user's inbox, of the police's kinds
/// (the case is the first word of the inbox's one-line summary).
async fn police_messages(staff: &StaffClient) -> Vec<(String, i32)> {
    staff
        .inbox()
        .await
        .into_iter()
        .filter(|i| {
            i.form_kind == FormKind::InvestigationUpdate as i32
                || i.form_kind == FormKind::PreventiveRegistration as i32
        })
        .map(|i| {
            let case = i.summary.split(':').next().unwrap_or_default().to_owned();
            (case, i.form_kind)
        })
        .collect()
}

fn registration_envelope(case: &str, investigation: &str, on: Date, key: &str) -> Envelope {
    Envelope {
        idempotency_key: key.into(),
        recipient_agency_id: "commission".into(),
        acting_user: Some(ActingUser {
            user_id: "inspector".into(),
            agency_id: "police-1".into(),
            role: Role::PoliceJuvenileInspector as i32,
            display_name: String::new(),
        }),
        purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
        form_kind: FormKind::PreventiveRegistration as i32,
        confidentiality: ConfidentialityLabel::Restricted as i32,
        payload: Some(Payload {
            form: Some(payload::Form::PreventiveRegistration(
                PreventiveRegistration {
                    case_reference: case.into(),
                    investigation_reference: investigation.into(),
                    status: PreventiveRegistrationStatus::Registered as i32,
                    registered_on: Some(cd(on)),
                    grounds: "Құқық бұзушылық / Правонарушение".into(),
                    inspector: "Ерлан Сапаров".into(),
                    ended_on: None,
                    end_reason: String::new(),
                },
            )),
        }),
        ..Default::default()
    }
}

async fn one_investigation_reaches_every_curator(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let t = hub.today();
    let victim_case = open(
        &hub,
        "pi-victim",
        k(
            &hub,
            "Әлібек Серікұлы Нұров",
            501,
            "INC-PI-1",
            IncidentRole::Victim,
        ),
        "curator-1",
    )
    .await;
    let offender_case = open(
        &hub,
        "pi-offender",
        k(
            &hub,
            "Данияр Болатұлы Омаров",
            502,
            "INC-PI-1",
            IncidentRole::Perpetrator,
        ),
        "curator-2",
    )
    .await;
    let curator_1 = hub.staff("commission", "curator-1").await;
    let curator_2 = hub.staff("commission", "curator-2").await;
    ask_police(&hub, &curator_1, &victim_case).await;
    ask_police(&hub, &curator_2, &offender_case).await;
    hub.deliver_everything().await;

    // Two requests, two investigations RECEIVED, each with its one case and no role yet.
    let inspector = hub.staff("police-1", "inspector").await;
    let received = list(&inspector).await;
    assert_eq!(received.len(), 2, "{received:?}");
    let of = |case: &str| {
        received
            .iter()
            .find(|i| i.cases.iter().any(|c| c.case_reference == case))
            .unwrap()
            .investigation_id
            .clone()
    };
    let investigation = of(&victim_case);
    let offenders_own = of(&offender_case);
    assert_ne!(investigation, offenders_own);

    // Bad links, each named; a case the commission never asked about; nothing changes.
    let err = link(&inspector, "", "", IncidentRole::Unspecified)
        .await
        .expect_err("nothing given");
    assert_eq!(err.code(), Code::InvalidArgument);
    let named = fields(&err);
    for f in ["investigation_id", "case_reference", "child_role"] {
        assert!(named.iter().any(|n| n == f), "{f}: {named:?}");
    }
    let err = link(
        &inspector,
        &investigation,
        "KT-NEVER-ASKED",
        IncidentRole::Witness,
    )
    .await
    .expect_err("a case the police were never asked about");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    // The victim's role, then the investigation opens: one update, to the victim's case.
    link(
        &inspector,
        &investigation,
        &victim_case,
        IncidentRole::Victim,
    )
    .await
    .expect("role set");
    let opened = inspector
        .investigations()
        .update_investigation(inspector.req(update(
            &investigation,
            InvestigationStatus::Opened,
            t,
            "pi-opened",
        )))
        .await
        .expect("opened")
        .into_inner();
    assert_eq!(opened.deliveries.len(), 1);

    // The offender's case joins the incident's investigation: its own (empty) one is absorbed,
    // and it receives the change made before it joined.
    let joined = link(
        &inspector,
        &investigation,
        &offender_case,
        IncidentRole::Perpetrator,
    )
    .await
    .expect("the offender's case linked");
    assert_eq!(joined.cases.len(), 2);
    assert_eq!(joined.history[0].deliveries.len(), 2);
    assert_eq!(
        list(&inspector).await.len(),
        1,
        "one investigation per incident"
    );

    // A summary with a child's IIN would reach every case: refused, named.
    let mut named_child = update(
        &investigation,
        InvestigationStatus::ReferredToProsecutor,
        t,
        "pi-iin-summary",
    );
    named_child.summary = format!(
        "ЖСН {}",
        Iin::generate(Date::new(2012, 5, 15).unwrap(), Sex::Male, 3)
            .or_else(|| Iin::generate(Date::new(2012, 5, 15).unwrap(), Sex::Male, 4))
            .unwrap()
            .into_string()
    );
    let err = inspector
        .investigations()
        .update_investigation(inspector.req(named_child))
        .await
        .expect_err("an IIN in the summary");
    assert_eq!(fields(&err), ["summary"]);

    // The next change goes to both cases, once each, even when asked twice.
    let referred = update(
        &investigation,
        InvestigationStatus::ReferredToProsecutor,
        t,
        "pi-prosecutor",
    );
    let first = inspector
        .investigations()
        .update_investigation(inspector.req(referred.clone()))
        .await
        .expect("referred to the prosecutor")
        .into_inner();
    let queued = hub.agency_count("police-1", "sent_messages").await;
    let again = inspector
        .investigations()
        .update_investigation(inspector.req(referred))
        .await
        .expect("a retry is answered")
        .into_inner();
    assert_eq!(again.deliveries, first.deliveries);
    assert_eq!(hub.agency_count("police-1", "sent_messages").await, queued);
    let cases: Vec<&str> = first
        .deliveries
        .iter()
        .map(|d| d.case_reference.as_str())
        .collect();
    assert_eq!(cases, [victim_case.as_str(), offender_case.as_str()]);
    assert!(
        first
            .deliveries
            .iter()
            .all(|d| d.state == CaseDeliveryState::Sent as i32 && !d.message_id.is_empty())
    );
    hub.deliver_everything().await;

    // Each curator has both changes in their own case file, with their child's role only.
    for (curator, case, role) in [
        (&curator_1, &victim_case, IncidentRole::Victim),
        (&curator_2, &offender_case, IncidentRole::Perpetrator),
    ] {
        let file = curator.get_case(case).await.expect("own case file");
        let got: Vec<(i32, &str, &str, i32)> = file
            .investigation_updates
            .iter()
            .map(|u| {
                (
                    u.status,
                    u.case_reference.as_str(),
                    u.investigation_reference.as_str(),
                    u.child_role,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    InvestigationStatus::Opened as i32,
                    case.as_str(),
                    investigation.as_str(),
                    role as i32
                ),
                (
                    InvestigationStatus::ReferredToProsecutor as i32,
                    case.as_str(),
                    investigation.as_str(),
                    role as i32
                ),
            ]
        );
    }
    // Each sees only their own case's messages; neither reads the other's file.
    let mine_1 = police_messages(&curator_1).await;
    let mine_2 = police_messages(&curator_2).await;
    assert_eq!(mine_1.len(), 2, "{mine_1:?}");
    assert_eq!(mine_2.len(), 2, "{mine_2:?}");
    assert!(mine_1.iter().all(|(c, _)| *c == victim_case));
    assert!(mine_2.iter().all(|(c, _)| *c == offender_case));
    assert!(curator_1.get_case(&offender_case).await.is_err());
    assert!(curator_2.get_case(&victim_case).await.is_err());

    // Preventive registration: refused for the victim, bad fields named, nothing stored.
    let register = |case: &str, key: &str| RegisterPreventiveRequest {
        case_reference: case.into(),
        registered_on: Some(cd(t)),
        grounds: "Құрдасына дене жарақатын салды / Причинил телесные повреждения".into(),
        idempotency_key: key.into(),
    };
    let err = inspector
        .investigations()
        .register_preventive(inspector.req(register(&victim_case, "pi-reg-victim")))
        .await
        .expect_err("a victim is not registered");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let mut bad = register(&offender_case, "pi-reg-bad");
    bad.registered_on = Some(cd(t + 1.days()));
    bad.grounds = String::new();
    let err = inspector
        .investigations()
        .register_preventive(inspector.req(bad))
        .await
        .expect_err("bad fields");
    assert_eq!(err.code(), Code::InvalidArgument);
    let named = fields(&err);
    for f in ["registered_on", "grounds"] {
        assert!(named.iter().any(|n| n == f), "{f}: {named:?}");
    }
    assert_eq!(
        hub.agency_count("police-1", "preventive_registrations")
            .await,
        0
    );
    // The gateway refuses it too, straight from the police's certificate, for the victim's case.
    let police = hub.gateway_client_as("police-1").await;
    let refused = police
        .clone()
        .send(SendRequest {
            envelope: Some(registration_envelope(
                &victim_case,
                &investigation,
                t,
                "pi-raw-registration",
            )),
        })
        .await
        .expect_err("no registration on the victim's case");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let mut bad = registration_envelope(&offender_case, &investigation, t, "pi-raw-bad");
    if let Some(payload::Form::PreventiveRegistration(r)) =
        bad.payload.as_mut().and_then(|p| p.form.as_mut())
    {
        r.status = 0;
        r.inspector = String::new();
    }
    let refused = police
        .clone()
        .send(SendRequest {
            envelope: Some(bad),
        })
        .await
        .expect_err("bad fields at the gateway");
    assert_eq!(refused.code(), Code::InvalidArgument);
    let named = fields(&refused);
    for f in [
        "envelope.payload.preventive_registration.status",
        "envelope.payload.preventive_registration.inspector",
    ] {
        assert!(named.iter().any(|n| n == f), "{f}: {named:?}");
    }

    // Registered: the offender's curator learns it, no one else.
    let registered = inspector
        .investigations()
        .register_preventive(inspector.req(register(&offender_case, "pi-register")))
        .await
        .expect("registered")
        .into_inner();
    assert!(!registered.message_id.is_empty());
    let err = inspector
        .investigations()
        .register_preventive(inspector.req(register(&offender_case, "pi-reg-twice")))
        .await
        .expect_err("registered already");
    assert_eq!(err.code(), Code::FailedPrecondition);
    // A registered offender's role cannot become the victim's.
    let err = link(
        &inspector,
        &investigation,
        &offender_case,
        IncidentRole::Victim,
    )
    .await
    .expect_err("registered as an offender");
    assert_eq!(err.code(), Code::FailedPrecondition);
    hub.deliver_everything().await;
    let regs = |m: &[(String, i32)]| {
        m.iter()
            .filter(|(_, k)| *k == FormKind::PreventiveRegistration as i32)
            .count()
    };
    assert_eq!(regs(&police_messages(&curator_2).await), 1);
    assert_eq!(regs(&police_messages(&curator_1).await), 0);
    let secretary = hub.staff("commission", "secretary").await;
    assert_eq!(regs(&police_messages(&secretary).await), 0);
    let school = hub.staff("school-1", "director").await;
    assert!(
        school
            .inbox()
            .await
            .iter()
            .all(|i| i.form_kind != FormKind::PreventiveRegistration as i32)
    );
    let view = school
        .read_shared(&offender_case, PurposeOfUse::CoordinationOfCare)
        .await
        .expect("the referring school reads the status");
    assert!(
        view.case_file
            .unwrap_or_default()
            .investigation_updates
            .is_empty()
    );

    // Ended; ending again is impossible.
    let end = |key: &str| EndPreventiveRegistrationRequest {
        case_reference: offender_case.clone(),
        ended_on: Some(cd(t)),
        end_reason: "Түзелді / Исправился".into(),
        idempotency_key: key.into(),
    };
    let ended = inspector
        .investigations()
        .end_preventive_registration(inspector.req(end("pi-end-registration")))
        .await
        .expect("ended")
        .into_inner();
    let offender_link = ended
        .investigation
        .unwrap()
        .cases
        .into_iter()
        .find(|c| c.case_reference == offender_case)
        .unwrap();
    assert_eq!(
        offender_link.registration.unwrap().status,
        PreventiveRegistrationStatus::Ended as i32
    );
    let err = inspector
        .investigations()
        .end_preventive_registration(inspector.req(end("pi-end-again")))
        .await
        .expect_err("not registered any more");
    assert_eq!(err.code(), Code::FailedPrecondition);
    hub.deliver_everything().await;
    assert_eq!(regs(&police_messages(&curator_2).await), 2);

    // To the end of the lifecycle; a closed investigation moves no more and takes no case.
    let mut hearing = update(
        &investigation,
        InvestigationStatus::HearingScheduled,
        t,
        "pi-hearing",
    );
    hearing.hearing_on = Some(cd(t + 10.days()));
    inspector
        .investigations()
        .update_investigation(inspector.req(hearing))
        .await
        .expect("hearing");
    for (status, key) in [
        (InvestigationStatus::Decided, "pi-decided"),
        (InvestigationStatus::Closed, "pi-closed"),
    ] {
        let mut step = update(&investigation, status, t, key);
        step.summary = "Сот шешімі шықты / Вынесено решение суда".into();
        inspector
            .investigations()
            .update_investigation(inspector.req(step))
            .await
            .expect("step");
    }
    let closed = get(&inspector, &investigation).await;
    let mut reopen = update(&investigation, InvestigationStatus::Opened, t, "pi-reopen");
    reopen.summary = String::new();
    let err = inspector
        .investigations()
        .update_investigation(inspector.req(reopen))
        .await
        .expect_err("closed");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let after = get(&inspector, &investigation).await;
    assert_eq!(after.version, closed.version);
    assert_eq!(after.history.len(), closed.history.len());
    hub.deliver_everything().await;
    assert_eq!(
        curator_1
            .get_case(&victim_case)
            .await
            .unwrap()
            .investigation_updates
            .len(),
        5
    );
    assert_eq!(
        curator_2
            .get_case(&offender_case)
            .await
            .unwrap()
            .investigation_updates
            .len(),
        5
    );
    hub.shutdown().await;
}

fn incident_referral(hub: &TestHub, child: &str) -> IncidentReferral {
    let t = hub.today();
    IncidentReferral {
        incident_reference: "D-RES-7".into(),
        purpose: IncidentReferralPurpose::Investigation as i32,
        institution: "Балалар үйі".into(),
        incident_date: Some(cd(t - 1.days())),
        referred_on: Some(cd(t)),
        severity: IncidentSeverity::Severe as i32,
        grounds: vec![MandatoryReportGround::PhysicalViolenceWithInjury as i32],
        grounds_other: String::new(),
        description: "Төбелес / Драка".into(),
        children: vec![IncidentChild {
            full_name: child.into(),
            iin: String::new(),
            date_of_birth: Some(cd(Date::new(2013, 4, 2).unwrap())),
            role: IncidentRole::Victim as i32,
            injured: true,
            injuries: "Сынық / Перелом".into(),
            referred_for_medical_care: true,
        }],
        reporter: Some(IncidentReporter {
            full_name: "Серикова Айгуль".into(),
            position: "тәрбиеші".into(),
            phone: "+77010000000".into(),
        }),
        circumstances: None,
    }
}

async fn a_direct_referral_waits_for_its_case(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let t = hub.today();
    let child = "Нұрлан Асқарұлы Беков";
    let institution = hub.gateway_client_as("residential-1").await;
    institution
        .clone()
        .send(SendRequest {
            envelope: Some(Envelope {
                idempotency_key: "pi-direct-referral".into(),
                recipient_agency_id: "police-1".into(),
                acting_user: Some(ActingUser {
                    user_id: "director".into(),
                    agency_id: "residential-1".into(),
                    role: Role::InstitutionDirector as i32,
                    display_name: String::new(),
                }),
                purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
                form_kind: FormKind::IncidentReferral as i32,
                confidentiality: ConfidentialityLabel::Restricted as i32,
                payload: Some(Payload {
                    form: Some(payload::Form::IncidentReferral(incident_referral(
                        &hub, child,
                    ))),
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("the institution refers the incident to the police");
    hub.deliver_everything().await;

    let inspector = hub.staff("police-1", "inspector").await;
    let received = list(&inspector).await;
    assert_eq!(received.len(), 1, "{received:?}");
    let direct = received[0].clone();
    assert_eq!(direct.incident_reference, "D-RES-7");
    assert_eq!(direct.referred_by_agency_id, "residential-1");
    assert!(direct.cases.is_empty());
    assert_eq!(direct.status, InvestigationStatus::Received as i32);

    // A summary naming the child would reach every case later linked: refused.
    let mut naming = update(
        &direct.investigation_id,
        InvestigationStatus::Opened,
        t,
        "pi-direct-naming",
    );
    naming.summary = format!("{child} сұралды");
    let err = inspector
        .investigations()
        .update_investigation(inspector.req(naming))
        .await
        .expect_err("names the child");
    assert_eq!(fields(&err), ["summary"]);
    // Opened before any case exists: kept, sent nowhere yet.
    let opened = inspector
        .investigations()
        .update_investigation(inspector.req(update(
            &direct.investigation_id,
            InvestigationStatus::Opened,
            t,
            "pi-direct-opened",
        )))
        .await
        .expect("opened")
        .into_inner();
    assert!(opened.deliveries.is_empty() && opened.message_id.is_empty());

    // The commission opens the child's case and asks the police; the inspector links it.
    let case = open(
        &hub,
        "pi-direct",
        k(&hub, child, 503, "D-RES-7", IncidentRole::Victim),
        "curator-1",
    )
    .await;
    let curator = hub.staff("commission", "curator-1").await;
    ask_police(&hub, &curator, &case).await;
    hub.deliver_everything().await;
    assert_eq!(list(&inspector).await.len(), 2);
    // The request's own investigation cannot absorb the referral's (it has its history).
    let own = list(&inspector)
        .await
        .into_iter()
        .find(|i| i.investigation_id != direct.investigation_id)
        .unwrap();
    let err = link(
        &inspector,
        &own.investigation_id,
        &case,
        IncidentRole::Victim,
    )
    .await;
    // Linking within its own investigation is allowed (sets the role): not the error case.
    assert!(err.is_ok());
    let linked = link(
        &inspector,
        &direct.investigation_id,
        &case,
        IncidentRole::Victim,
    )
    .await
    .expect("linked to the referral's investigation");
    assert_eq!(linked.cases.len(), 1);
    assert_eq!(linked.history.len(), 1);
    assert_eq!(linked.history[0].deliveries.len(), 1);
    assert_eq!(list(&inspector).await.len(), 1);
    hub.deliver_everything().await;
    let file = curator.get_case(&case).await.unwrap();
    assert_eq!(file.investigation_updates.len(), 1);
    let got = &file.investigation_updates[0];
    assert_eq!(got.status, InvestigationStatus::Opened as i32);
    assert_eq!(got.investigation_reference, direct.investigation_id);
    assert_eq!(got.child_role, IncidentRole::Victim as i32);

    // The referral's investigation cannot be moved into another.
    let other_case = open(
        &hub,
        "pi-direct-other",
        k(
            &hub,
            "Бекзат Ерланұлы Тоқтаров",
            504,
            "",
            IncidentRole::Unspecified,
        ),
        "curator-2",
    )
    .await;
    let curator_2 = hub.staff("commission", "curator-2").await;
    ask_police(&hub, &curator_2, &other_case).await;
    hub.deliver_everything().await;
    let other = list(&inspector)
        .await
        .into_iter()
        .find(|i| i.investigation_id != direct.investigation_id)
        .unwrap();
    let err = link(
        &inspector,
        &other.investigation_id,
        &case,
        IncidentRole::Victim,
    )
    .await
    .expect_err("the case's investigation has its own history");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        get(&inspector, &direct.investigation_id).await.cases.len(),
        1
    );
    hub.shutdown().await;
}

both_backends!(one_investigation_reaches_every_curator);
both_backends!(a_registration_needs_a_case_known_to_be_the_offenders);
both_backends!(a_direct_referral_waits_for_its_case);

/// The gateway admits a preventive registration only on a case known to be the offender's: a
/// report that gives the child no role is not enough, nor the police's word that the child is the
/// victim; the police's latest update saying perpetrator is.
async fn a_registration_needs_a_case_known_to_be_the_offenders(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let t = hub.today();
    let case = open(
        &hub,
        "pr-unknown",
        // A K about the child alone, no incident named.
        HelpRequest {
            circumstances: None,
            ..k(
                &hub,
                "Арман Қайратұлы Сейітов",
                503,
                "INC-PR-1",
                IncidentRole::Perpetrator,
            )
        },
        "curator-1",
    )
    .await;
    let curator = hub.staff("commission", "curator-1").await;
    ask_police(&hub, &curator, &case).await;
    hub.deliver_everything().await;
    let inspector = hub.staff("police-1", "inspector").await;
    let investigation = list(&inspector).await[0].investigation_id.clone();
    let police = hub.gateway_client_as("police-1").await;
    let raw = |key: &str| SendRequest {
        envelope: Some(registration_envelope(&case, &investigation, t, key)),
    };

    // Nobody said what the child did: refused.
    let refused = police
        .clone()
        .send(raw("pr-raw-unknown"))
        .await
        .expect_err("no role known");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // The police say the victim: refused.
    link(&inspector, &investigation, &case, IncidentRole::Victim)
        .await
        .expect("role set");
    inspector
        .investigations()
        .update_investigation(inspector.req(update(
            &investigation,
            InvestigationStatus::Opened,
            t,
            "pr-opened",
        )))
        .await
        .expect("opened");
    let refused = police
        .clone()
        .send(raw("pr-raw-victim"))
        .await
        .expect_err("the victim's case");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // Their next update says perpetrator: admitted, and it reaches the case's curator.
    link(&inspector, &investigation, &case, IncidentRole::Perpetrator)
        .await
        .expect("role corrected");
    inspector
        .investigations()
        .update_investigation(inspector.req(update(
            &investigation,
            InvestigationStatus::ReferredToProsecutor,
            t,
            "pr-prosecutor",
        )))
        .await
        .expect("referred");
    let registered = inspector
        .investigations()
        .register_preventive(inspector.req(RegisterPreventiveRequest {
            case_reference: case.clone(),
            registered_on: Some(cd(t)),
            grounds: "Құрдасына дене жарақатын салды / Причинил телесные повреждения".into(),
            idempotency_key: "pr-register".into(),
        }))
        .await
        .expect("registered")
        .into_inner();
    assert!(!registered.message_id.is_empty());
    hub.deliver_everything().await;
    assert_eq!(
        police_messages(&curator)
            .await
            .iter()
            .filter(|(c, k)| *c == case && *k == FormKind::PreventiveRegistration as i32)
            .count(),
        1
    );
    hub.shutdown().await;
}
