//! Issue 5, police and health: the curator asks the police and a health facility about a case;
//! the police open an investigation and move it along, the facility reports admission and
//! treatment, and every change reaches the curator's case file through the gateway (M:3215-3220,
//! M:2945-2955). Impossible transitions and bad fields change nothing; an agency with no part in
//! a case cannot report on it; the referring school never sees the investigation's content. Each
//! on SQLite and on PostgreSQL, through the real services and the real gateway.

use jiff::{ToSpan as _, civil::Date};
use referral_proto::v1::{
    ActingUser, ConfidentialityLabel, Envelope, FormKind, GetInvestigationRequest, HealthNotice,
    HealthNoticeKind, InvestigationStatus, InvestigationUpdate, ListInvestigationsRequest,
    ListReferralsRequest, Payload, PurposeOfUse, RequestInformationRequest, Role,
    SendNoticeRequest, SendRequest, UpdateInvestigationRequest, payload,
};
use referral_tests::{Backend, StaffClient, TestHub, both_backends, fields, samples::cd};
use tonic::Code;

async fn ask(hub: &TestHub, curator: &StaffClient, case: &str, agency: &str) {
    let version = curator.case_version(case).await;
    curator
        .case_files()
        .request_information(curator.req(RequestInformationRequest {
            case_reference: case.into(),
            base_version: version,
            idempotency_key: format!("{case}-ask-{agency}"),
            recipient_agency_id: agency.into(),
            questions: "Не белгілі? / Что известно?".into(),
            answer_by: Some(cd(hub.today() + 7.days())),
        }))
        .await
        .expect("information requested");
}

fn update(
    case: &str,
    status: InvestigationStatus,
    on: Date,
    key: &str,
) -> UpdateInvestigationRequest {
    UpdateInvestigationRequest {
        case_reference: case.into(),
        status: status as i32,
        status_on: Some(cd(on)),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

async fn denials(hub: &TestHub, case: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT sender_agency_id, outcome FROM ledger \
         WHERE event = 'access.denied' AND case_reference = $1 ORDER BY seq",
    )
    .bind(case)
    .fetch_all(hub.gateway().database().pool())
    .await
    .unwrap()
}

/// An envelope as an agency service would build it, for calls straight to the gateway.
fn raw(agency: &str, user: &str, role: Role, key: &str, form: payload::Form) -> Envelope {
    let kind = match &form {
        payload::Form::InvestigationUpdate(_) => FormKind::InvestigationUpdate,
        _ => FormKind::HealthNotice,
    };
    Envelope {
        idempotency_key: key.into(),
        recipient_agency_id: "commission".into(),
        acting_user: Some(ActingUser {
            user_id: user.into(),
            agency_id: agency.into(),
            role: role as i32,
            display_name: String::new(),
        }),
        purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
        form_kind: kind as i32,
        confidentiality: ConfidentialityLabel::Restricted as i32,
        payload: Some(Payload { form: Some(form) }),
        ..Default::default()
    }
}

async fn updates_and_notices_reach_the_curator(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let case = hub.open_case("ph").await;
    let other = hub.open_case("ph-other").await;
    let curator = hub.staff("commission", "curator-1").await;
    ask(&hub, &curator, &case, "police-1").await;
    ask(&hub, &curator, &case, "health-1").await;
    hub.deliver_everything().await;
    let t = hub.today();

    // The police received the request: an investigation, RECEIVED.
    let inspector = hub.staff("police-1", "inspector").await;
    let list = inspector
        .investigations()
        .list_investigations(inspector.req(ListInvestigationsRequest::default()))
        .await
        .expect("the inspector lists")
        .into_inner()
        .investigations;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].case_reference, case);
    assert_eq!(list[0].status, InvestigationStatus::Received as i32);
    let investigation_id = list[0].investigation_id.clone();

    // Opened, then an impossible jump to DECIDED: refused, nothing changes.
    let opened = inspector
        .investigations()
        .update_investigation(inspector.req(update(
            &case,
            InvestigationStatus::Opened,
            t,
            "ph-key-inv-1",
        )))
        .await
        .expect("opened")
        .into_inner();
    assert!(!opened.message_id.is_empty(), "sent through the gateway");
    let mut decided = update(&case, InvestigationStatus::Decided, t, "ph-key-inv-bad");
    decided.summary = "Сот шешімі".into();
    let err = inspector
        .investigations()
        .update_investigation(inspector.req(decided))
        .await
        .expect_err("OPENED cannot jump to DECIDED");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let now = inspector
        .investigations()
        .get_investigation(inspector.req(GetInvestigationRequest {
            investigation_id: investigation_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.status, InvestigationStatus::Opened as i32);
    assert_eq!(now.version, opened.investigation.as_ref().unwrap().version);
    assert_eq!(now.history.len(), 1);

    // Bad fields, each named; nothing changes.
    let mut bad = update(
        &case,
        InvestigationStatus::HearingScheduled,
        t + 3.days(),
        "ph-key-inv-bad-2",
    );
    bad.hearing_on = None;
    let err = inspector
        .investigations()
        .update_investigation(inspector.req(bad))
        .await
        .expect_err("bad fields");
    assert_eq!(err.code(), Code::InvalidArgument);
    let named = fields(&err);
    assert!(named.iter().any(|f| f == "status_on"), "{named:?}");
    assert!(named.iter().any(|f| f == "hearing_on"), "{named:?}");
    let err = inspector
        .investigations()
        .update_investigation(inspector.req(UpdateInvestigationRequest {
            idempotency_key: "ph-key-inv-bad-3".into(),
            ..Default::default()
        }))
        .await
        .expect_err("nothing given");
    let named = fields(&err);
    for field in ["investigation_id", "status", "status_on"] {
        assert!(named.iter().any(|f| f == field), "{field}: {named:?}");
    }

    // Along the lifecycle: prosecutor, hearing.
    inspector
        .investigations()
        .update_investigation(inspector.req(update(
            &case,
            InvestigationStatus::ReferredToProsecutor,
            t,
            "ph-key-inv-2",
        )))
        .await
        .expect("referred to the prosecutor");
    let mut hearing = update(
        &case,
        InvestigationStatus::HearingScheduled,
        t,
        "ph-key-inv-3",
    );
    hearing.hearing_on = Some(cd(t + 14.days()));
    hearing.summary = "Сот отырысы / Судебное заседание".into();
    let heard = inspector
        .investigations()
        .update_investigation(inspector.req(hearing.clone()))
        .await
        .expect("hearing scheduled")
        .into_inner();
    // The same request again: the same answer, nothing sent twice.
    let again = inspector
        .investigations()
        .update_investigation(inspector.req(hearing))
        .await
        .expect("a retry is answered")
        .into_inner();
    assert_eq!(again.message_id, heard.message_id);
    assert_eq!(again.investigation.unwrap().history.len(), 3);

    // Health: ADMITTED, then TREATMENT; DISCHARGED ends it.
    let doctor = hub.staff("health-1", "doctor").await;
    let referrals = doctor
        .health_notices()
        .list_referrals(doctor.req(ListReferralsRequest {}))
        .await
        .expect("the doctor lists")
        .into_inner()
        .referrals;
    assert_eq!(referrals.len(), 1);
    assert_eq!(referrals[0].case_reference, case);
    let notice = |kind: HealthNoticeKind, key: &str| SendNoticeRequest {
        case_reference: case.clone(),
        kind: kind as i32,
        on: Some(cd(t)),
        facility: "Аудандық аурухана, педиатрия".into(),
        note: "Жарақат емделуде".into(),
        idempotency_key: key.into(),
        ..Default::default()
    };
    let err = doctor
        .health_notices()
        .send_notice(doctor.req(notice(HealthNoticeKind::Treatment, "ph-key-hn-0")))
        .await
        .expect_err("no treatment before admission");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let mut bad = notice(HealthNoticeKind::Admitted, "ph-key-hn-bad");
    bad.facility = String::new();
    bad.on = Some(cd(t + 2.days()));
    let err = doctor
        .health_notices()
        .send_notice(doctor.req(bad))
        .await
        .expect_err("bad fields");
    assert_eq!(err.code(), Code::InvalidArgument);
    let named = fields(&err);
    assert!(named.iter().any(|f| f == "facility"), "{named:?}");
    assert!(named.iter().any(|f| f == "on"), "{named:?}");
    for (kind, key) in [
        (HealthNoticeKind::Admitted, "ph-key-hn-1"),
        (HealthNoticeKind::Treatment, "ph-key-hn-2"),
    ] {
        let sent = doctor
            .health_notices()
            .send_notice(doctor.req(notice(kind, key)))
            .await
            .expect("notice sent")
            .into_inner();
        assert!(!sent.message_id.is_empty());
    }
    hub.deliver_everything().await;

    // The curator's case file shows every update and notice, oldest first.
    let file = curator.get_case(&case).await.expect("the case file reads");
    let statuses: Vec<i32> = file
        .investigation_updates
        .iter()
        .map(|u| u.status)
        .collect();
    assert_eq!(
        statuses,
        [
            InvestigationStatus::Opened as i32,
            InvestigationStatus::ReferredToProsecutor as i32,
            InvestigationStatus::HearingScheduled as i32,
        ]
    );
    let last = file.investigation_updates.last().unwrap();
    assert_eq!(last.investigation_reference, investigation_id);
    assert_eq!(last.hearing_on, Some(cd(t + 14.days())));
    assert_eq!(last.summary, "Сот отырысы / Судебное заседание");
    let kinds: Vec<i32> = file.health_notices.iter().map(|n| n.kind).collect();
    assert_eq!(
        kinds,
        [
            HealthNoticeKind::Admitted as i32,
            HealthNoticeKind::Treatment as i32
        ]
    );
    assert!(
        curator
            .get_case(&other)
            .await
            .expect("the case file reads")
            .investigation_updates
            .is_empty()
    );

    // The referring school reads the case through the hub: not the investigation, not the notes.
    let school = hub.staff("school-1", "director").await;
    let view = school
        .read_shared(&case, PurposeOfUse::CoordinationOfCare)
        .await
        .expect("the referring school reads the case's status");
    let file = view.case_file.unwrap_or_default();
    assert!(file.summary.is_some());
    assert!(
        file.investigation_updates.is_empty() && file.health_notices.is_empty(),
        "{file:?}"
    );

    // An agency with no part in a case cannot report on it: refused and recorded, nothing stored.
    let police = hub.gateway_client_as("police-1").await;
    let stray = InvestigationUpdate {
        case_reference: other.clone(),
        investigation_reference: "INV-stray".into(),
        status: InvestigationStatus::Opened as i32,
        status_on: Some(cd(t)),
        hearing_on: None,
        summary: String::new(),
        reported_by: "Inspector".into(),
        child_role: 0,
    };
    let refused = police
        .clone()
        .send(SendRequest {
            envelope: Some(raw(
                "police-1",
                "inspector",
                Role::PoliceJuvenileInspector,
                "ph-key-stray-update",
                payload::Form::InvestigationUpdate(stray.clone()),
            )),
        })
        .await
        .expect_err("police-1 has no part in the other case");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let health = hub.gateway_client_as("health-1").await;
    let refused = health
        .clone()
        .send(SendRequest {
            envelope: Some(raw(
                "health-1",
                "doctor",
                Role::HealthWorker,
                "ph-key-stray-notice",
                payload::Form::HealthNotice(HealthNotice {
                    case_reference: other.clone(),
                    kind: HealthNoticeKind::Admitted as i32,
                    on: Some(cd(t)),
                    facility: "Аурухана".into(),
                    note: String::new(),
                    reported_by: "Doctor".into(),
                }),
            )),
        })
        .await
        .expect_err("health-1 has no part in the other case");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let ngo = hub.gateway_client_as("ngo-2").await;
    let refused = ngo
        .clone()
        .send(SendRequest {
            envelope: Some(raw(
                "ngo-2",
                "case-manager",
                Role::NgoCaseManager,
                "ph-key-ngo-update",
                payload::Form::InvestigationUpdate(InvestigationUpdate {
                    case_reference: case.clone(),
                    ..stray.clone()
                }),
            )),
        })
        .await
        .expect_err("an NGO sends no investigation update");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let denied = denials(&hub, &other).await;
    assert!(
        denied.iter().any(|(agency, _)| agency == "police-1")
            && denied.iter().any(|(agency, _)| agency == "health-1"),
        "{denied:?}"
    );
    // The gateway checks every field too, naming it.
    let refused = police
        .clone()
        .send(SendRequest {
            envelope: Some(raw(
                "police-1",
                "inspector",
                Role::PoliceJuvenileInspector,
                "ph-key-bad-update",
                payload::Form::InvestigationUpdate(InvestigationUpdate {
                    case_reference: case.clone(),
                    investigation_reference: String::new(),
                    status: 0,
                    ..stray
                }),
            )),
        })
        .await
        .expect_err("bad fields");
    assert_eq!(refused.code(), Code::InvalidArgument);
    let named = fields(&refused);
    for field in [
        "envelope.payload.investigation_update.investigation_reference",
        "envelope.payload.investigation_update.status",
    ] {
        assert!(named.iter().any(|f| f == field), "{field}: {named:?}");
    }
    hub.deliver_everything().await;
    assert!(
        curator
            .get_case(&other)
            .await
            .expect("the case file reads")
            .investigation_updates
            .is_empty()
    );
    assert!(
        curator
            .get_case(&other)
            .await
            .expect("the case file reads")
            .health_notices
            .is_empty()
    );
    assert_eq!(
        curator
            .get_case(&case)
            .await
            .expect("the case file reads")
            .investigation_updates
            .len(),
        3
    );
    hub.shutdown().await;
}

/// An institution refers an injured child to the facility before the commission has a case: the
/// facility's notices are held, and reach the commission's case file once a health worker links
/// the referral to the case the commission asks about (M:2940-2955).
async fn an_injured_childs_referral_waits_for_its_case(backend: Backend) {
    use referral_proto::v1::{
        IncidentChild, IncidentReferral, IncidentReferralPurpose, IncidentReporter,
        LinkReferralRequest,
    };
    let hub = TestHub::start(backend).await;
    let t = hub.today();
    let referral = IncidentReferral {
        incident_reference: "D-RES-9".into(),
        purpose: IncidentReferralPurpose::MedicalCare as i32,
        institution: "Балалар үйі".into(),
        incident_date: Some(cd(t)),
        referred_on: Some(cd(t)),
        children: vec![IncidentChild {
            full_name: "Асанов Ерлан".into(),
            iin: String::new(),
            date_of_birth: Some(cd(Date::new(2014, 5, 1).unwrap())),
            role: 0,
            injured: true,
            injuries: "Сынық / Перелом".into(),
            referred_for_medical_care: true,
        }],
        reporter: Some(IncidentReporter {
            full_name: "Серикова Айгуль".into(),
            position: "тәрбиеші".into(),
            phone: "+77010000000".into(),
        }),
        ..Default::default()
    };
    hub.gateway_client_as("residential-1")
        .await
        .send(SendRequest {
            envelope: Some(Envelope {
                idempotency_key: "ph-injured-child".into(),
                recipient_agency_id: "health-1".into(),
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
                    form: Some(payload::Form::IncidentReferral(referral)),
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("the institution refers the injured child");
    hub.deliver_everything().await;

    let doctor = hub.staff("health-1", "doctor").await;
    let list = || async {
        doctor
            .health_notices()
            .list_referrals(doctor.req(ListReferralsRequest {}))
            .await
            .expect("the doctor lists")
            .into_inner()
            .referrals
    };
    let referrals = list().await;
    assert_eq!(referrals.len(), 1, "{referrals:?}");
    let injured = referrals[0].clone();
    assert!(injured.case_reference.is_empty());
    assert_eq!(injured.incident_reference, "D-RES-9");
    assert_eq!(injured.referred_by_agency_id, "residential-1");
    assert_eq!(injured.child.as_ref().unwrap().full_name, "Асанов Ерлан");
    let notice = |kind: HealthNoticeKind, key: &str| SendNoticeRequest {
        referral_id: injured.referral_id.clone(),
        kind: kind as i32,
        on: Some(cd(t)),
        facility: "Аудандық аурухана, травматология".into(),
        note: String::new(),
        idempotency_key: key.into(),
        ..Default::default()
    };
    // Admitted at once: held, sent nowhere.
    let admitted = doctor
        .health_notices()
        .send_notice(doctor.req(notice(HealthNoticeKind::Admitted, "ph-held-admitted")))
        .await
        .expect("admitted")
        .into_inner();
    assert!(admitted.message_id.is_empty());
    assert_eq!(admitted.referral.unwrap().held_notices, 1);
    let err = doctor
        .health_notices()
        .send_notice(doctor.req(notice(HealthNoticeKind::Admitted, "ph-held-twice")))
        .await
        .expect_err("admitted already");
    assert_eq!(err.code(), Code::FailedPrecondition);
    // No case the commission asked about: nothing to link to; bad fields named.
    let link = |case: &str| LinkReferralRequest {
        referral_id: injured.referral_id.clone(),
        case_reference: case.into(),
    };
    let err = doctor
        .health_notices()
        .link_referral(doctor.req(link("KT-NOT-ASKED")))
        .await
        .expect_err("the commission has not asked about that case");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = doctor
        .health_notices()
        .link_referral(doctor.req(LinkReferralRequest::default()))
        .await
        .expect_err("nothing given");
    let named = fields(&err);
    for field in ["referral_id", "case_reference"] {
        assert!(named.iter().any(|f| f == field), "{field}: {named:?}");
    }

    // The commission opens the child's case and asks the facility; the doctor links the referral.
    let case = hub.open_case("ph-injured").await;
    let curator = hub.staff("commission", "curator-1").await;
    ask(&hub, &curator, &case, "health-1").await;
    hub.deliver_everything().await;
    assert_eq!(list().await.len(), 2);
    let linked = doctor
        .health_notices()
        .link_referral(doctor.req(link(&case)))
        .await
        .expect("linked")
        .into_inner()
        .referral
        .unwrap();
    assert_eq!(linked.case_reference, case);
    assert_eq!(linked.held_notices, 0);
    assert_eq!(list().await.len(), 1, "the case's own referral is absorbed");
    // Treatment now goes straight to the case.
    let treated = doctor
        .health_notices()
        .send_notice(doctor.req(notice(HealthNoticeKind::Treatment, "ph-linked-treatment")))
        .await
        .expect("treatment")
        .into_inner();
    assert!(!treated.message_id.is_empty());
    hub.deliver_everything().await;
    let kinds: Vec<(i32, String)> = curator
        .get_case(&case)
        .await
        .expect("the case file reads")
        .health_notices
        .iter()
        .map(|n| (n.kind, n.case_reference.clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            (HealthNoticeKind::Admitted as i32, case.clone()),
            (HealthNoticeKind::Treatment as i32, case.clone())
        ]
    );
    hub.shutdown().await;
}

both_backends!(updates_and_notices_reach_the_curator);
both_backends!(an_injured_childs_referral_waits_for_its_case);
