//! Referrals of pupils to NGOs, the NGO's services and the monthly log J (issue 5), each on
//! SQLite and on PostgreSQL, through the real school, NGO and commission services over mTLS and
//! the real gateway:
//!
//! * a school refers a pupil; only the NGO named receives it; the NGO accepts, schedules and
//!   holds a session, reports weekly progress and completes, and the school sees each step (FHIR
//!   status and BSeR business status, the support received); the safety team's meeting is
//!   scheduled and the NGO's attendance recorded once the meeting has begun;
//! * a decline needs a reason; completing a declined service is FAILED_PRECONDITION and changes
//!   nothing; bad fields are named and store nothing; strangers are refused; a cancellation the
//!   school requests reaches the NGO, which cancels with a reason;
//! * a support-plan row assigned to the NGO is a service whose steps reach the commission as
//!   action progress; the weekly progress report is a deadline of the gateway's engine, met by a
//!   report and raised as an alert in the NGO's inbox when a week passes without one;
//! * the log J of a month: one row per referral, CSV and XLSX (read back with calamine) with the
//!   form's Kazakh headings and Russian ones, sent to the commission once the month has ended.
//! * a referral made while the gateway is away is kept and answered without a message id; once
//!   the gateway is back, the school's retry loop hands it over unasked and the NGO receives it
//!   once.
//! * a step the gateway refuses is undone and its clock event never reaches the deadline engine
//!   (it is released only once the step's message is acknowledged); a refused step under a later
//!   one cannot be undone and changes nothing, while the later one's event follows its message;
//!   an update or a meeting notice naming another referral than the one it is about is not
//!   applied; a residential institution's staff cannot use the referrals, its director can; late
//!   weekly reports of an assigned plan row are not told to the commission.

use std::io::Cursor;

use calamine::{Data, Reader as _, Xlsx, open_workbook_from_rs};
use jiff::{SignedDuration, ToSpan as _};
use referral_core::{time, validate::to_calendar_date};
use referral_proto::v1::{
    ActionProgressState, AgencyClockEventKind, DeadlineKind, DeadlineState, Envelope, ExportFormat,
    ExportReferralLogRequest, FormKind, GetMessageRequest, GetServiceReferralRequest,
    GetServiceRequest, ListDeadlinesRequest, ListMeetingNoticesRequest, ListSafetyMeetingsRequest,
    ListServiceReferralsRequest, ListServicesRequest, MonthlyReferralLogRequest, NgoService,
    Payload, PurposeOfUse, RecordMeetingAttendanceRequest, RecordReferralCheckRequest,
    ReferPupilRequest, ReferralStatus, RequestServiceCancellationRequest, RiskTier,
    ScheduleSafetyMeetingRequest, SendReferralLogRequest, ServiceBusinessStatus, ServiceEvent,
    ServiceReferralRecord, ServiceSource, ServiceUpdate, UpdateServiceRequest, payload,
};
use referral_tests::{Backend, StaffClient, TestHub, almaty, both_backends, fields, samples::row};
use sha2::{Digest as _, Sha256};
use tonic::Code;

both_backends!(
    a_referral_runs_from_the_school_to_the_ngo_and_back,
    a_declined_referral_cannot_be_completed_and_strangers_are_refused,
    an_assigned_plan_row_is_a_service_reporting_weekly_to_the_commission,
    the_monthly_log_j_is_exported_and_reaches_the_commission,
    a_referral_made_while_the_gateway_is_away_reaches_the_ngo_once_it_is_back,
    a_refused_step_never_reaches_the_engine_and_forms_apply_only_to_the_referral_they_answer,
    a_refused_step_under_a_later_one_is_not_undone_and_the_later_ones_clock_event_follows_its_message,
);

const PUPIL: &str = "Ерасыл Нұрланұлы Қасымов";

fn referral(key: &str, pupil: &str, ngo: &str) -> ReferPupilRequest {
    ReferPupilRequest {
        idempotency_key: key.into(),
        pupil_full_name: pupil.into(),
        class_name: "7 Б".into(),
        date_of_birth: Some(to_calendar_date(jiff::civil::date(2013, 3, 4))),
        risk_tier: RiskTier::HighRisk as i32,
        ngo_agency_id: ngo.into(),
        support_requested: "Психологтың жеке кеңестері / индивидуальные консультации".into(),
        reason: "Құрдастарына қатысты агрессия".into(),
        contact_person: "Асель Маратқызы Нұрова".into(),
        contact_phone: "+7 702 000 0002".into(),
    }
}

async fn refer(school: &StaffClient, request: ReferPupilRequest) -> ServiceReferralRecord {
    school
        .school_referrals()
        .refer_pupil(school.req(request))
        .await
        .expect("the pupil is referred")
        .into_inner()
}

async fn referral_of(school: &StaffClient, id: &str) -> ServiceReferralRecord {
    school
        .school_referrals()
        .get_service_referral(school.req(GetServiceReferralRequest {
            referral_id: id.into(),
        }))
        .await
        .expect("the referral reads")
        .into_inner()
}

async fn services(ngo: &StaffClient) -> Vec<NgoService> {
    ngo.ngo_services()
        .list_services(ngo.req(ListServicesRequest {
            include_ended: true,
        }))
        .await
        .expect("the services list")
        .into_inner()
        .services
}

async fn service(ngo: &StaffClient, id: &str) -> NgoService {
    ngo.ngo_services()
        .get_service(ngo.req(GetServiceRequest {
            service_id: id.into(),
        }))
        .await
        .expect("the service reads")
        .into_inner()
}

fn step(service: &str, key: &str, event: ServiceEvent) -> UpdateServiceRequest {
    UpdateServiceRequest {
        service_id: service.into(),
        idempotency_key: key.into(),
        event: event as i32,
        ..Default::default()
    }
}

/// One step of a service; the message it sent is delivered before this returns.
async fn take_step(
    hub: &TestHub,
    ngo: &StaffClient,
    request: UpdateServiceRequest,
) -> Result<NgoService, tonic::Status> {
    let answer = ngo
        .ngo_services()
        .update_service(ngo.req(request))
        .await?
        .into_inner();
    assert!(!answer.message_id.is_empty(), "the step is sent");
    hub.delivered(&answer.message_id).await;
    Ok(answer.service.unwrap())
}

/// The gateway's messages of one form kind, as (recipient, message id).
async fn gateway_messages(hub: &TestHub, kind: FormKind) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT recipient_agency_id, message_id FROM messages WHERE form_kind = $1 \
         ORDER BY created_at",
    )
    .bind(kind.as_str_name())
    .fetch_all(hub.gateway().database().pool())
    .await
    .unwrap()
}

/// The idempotency key of the message the NGO sends for a step made under `step_key`.
fn step_message_key(step_key: &str) -> String {
    let digest = Sha256::digest(step_key.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("service-step:{hex}")
}

/// A SERVICE_UPDATE from ngo-1 answering the referral message `in_reply_to`, naming
/// `referral_reference`, sent straight to the gateway under `key`.
async fn ngo_update(
    hub: &TestHub,
    key: &str,
    in_reply_to: &str,
    referral_reference: &str,
    event: ServiceEvent,
    status: ReferralStatus,
    business: ServiceBusinessStatus,
) -> Result<String, tonic::Status> {
    let envelope = Envelope {
        idempotency_key: key.into(),
        recipient_agency_id: "school-1".into(),
        acting_user: Some(referral_proto::v1::ActingUser {
            user_id: "case-manager".into(),
            agency_id: "ngo-1".into(),
            role: referral_proto::v1::Role::NgoCaseManager as i32,
            display_name: "Ирина Ким".into(),
        }),
        purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
        form_kind: FormKind::ServiceUpdate as i32,
        confidentiality: referral_proto::v1::ConfidentialityLabel::Restricted as i32,
        in_reply_to: in_reply_to.into(),
        payload: Some(Payload {
            form: Some(payload::Form::ServiceUpdate(ServiceUpdate {
                referral_reference: referral_reference.into(),
                status: status as i32,
                business_status: business as i32,
                reported_at: Some(time::to_proto(hub.clock.now())),
                referral_message_id: in_reply_to.into(),
                event: event as i32,
                reason: "Орын жоқ / нет мест".into(),
                service_reference: "SVC-direct".into(),
                reported_by: "Ирина Ким".into(),
                ..Default::default()
            })),
        }),
        ..Default::default()
    };
    Ok(hub
        .gateway_client_as("ngo-1")
        .await
        .send(referral_proto::v1::SendRequest {
            envelope: Some(envelope),
        })
        .await?
        .into_inner()
        .message_id)
}

/// The clock events the gateway recorded about `subject`, in order, by kind.
async fn engine_events(hub: &TestHub, subject: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT kind FROM agency_clock_events WHERE subject_reference = $1 ORDER BY ledger_seq",
    )
    .bind(subject)
    .fetch_all(hub.gateway().database().pool())
    .await
    .unwrap()
}

/// The weekly-progress deadlines of `subject` in the gateway's engine, as (state, the agency
/// also told of late reports), by cycle.
async fn weekly_deadlines(hub: &TestHub, subject: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT state, related_agency_id FROM deadlines WHERE subject_reference = $1 \
         AND kind = $2 ORDER BY cycle",
    )
    .bind(subject)
    .bind(DeadlineKind::WeeklyProgress.as_str_name())
    .fetch_all(hub.gateway().database().pool())
    .await
    .unwrap()
}

fn is_open(state: &str) -> bool {
    state != DeadlineState::Met.as_str_name() && state != DeadlineState::Cancelled.as_str_name()
}

async fn a_referral_runs_from_the_school_to_the_ngo_and_back(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let school = hub.staff("school-1", "safety-team").await;
    let ngo = hub.staff("ngo-1", "case-manager").await;

    let record = refer(&school, referral("refer-0001", PUPIL, "ngo-1")).await;
    assert_eq!(record.status, ReferralStatus::Requested as i32);
    assert_eq!(record.service_name, "«Бала қорғаны» қоғамдық қоры");
    assert!(!record.message_id.is_empty());
    hub.delivered(&record.message_id).await;
    // The same request again answers the same referral.
    let again = refer(&school, referral("refer-0001", PUPIL, "ngo-1")).await;
    assert_eq!(again.referral_id, record.referral_id);

    // Only the NGO named receives it.
    assert_eq!(
        gateway_messages(&hub, FormKind::ServiceReferral).await,
        vec![("ngo-1".to_owned(), record.message_id.clone())]
    );
    for other in ["ngo-2", "commission", "police-1", "health-1", "school-2"] {
        assert!(!hub.messages_to(other).await.contains(&record.message_id));
    }
    assert!(
        services(&hub.staff("ngo-2", "case-manager").await)
            .await
            .is_empty()
    );
    let listed = services(&ngo).await;
    assert_eq!(listed.len(), 1);
    let svc = listed[0].clone();
    assert_eq!(svc.source, ServiceSource::Referral as i32);
    assert_eq!(svc.child_name, PUPIL);
    assert_eq!(svc.referral_reference, record.referral_id);
    assert_eq!(svc.status, ReferralStatus::Received as i32);
    assert_eq!(svc.business_status, ServiceBusinessStatus::Created as i32);

    // Accepted: the school sees it, with the support the pupil receives.
    let accept = UpdateServiceRequest {
        support_received: "Апта сайын психологтың кеңесі".into(),
        ..step(&svc.service_id, "step-accept", ServiceEvent::Accepted)
    };
    let after = take_step(&hub, &ngo, accept).await.unwrap();
    assert_eq!(after.status, ReferralStatus::Accepted as i32);
    let seen = referral_of(&school, &record.referral_id).await;
    assert_eq!(seen.status, ReferralStatus::Accepted as i32);
    assert_eq!(seen.business_status, ServiceBusinessStatus::Accepted as i32);
    assert_eq!(seen.support_received, "Апта сайын психологтың кеңесі");

    // The safety team's meeting about the pupil, fixed by the school, reaches the NGO.
    let meeting_at = hub.clock.now() + SignedDuration::from_hours(48);
    let meeting = school
        .school_referrals()
        .schedule_safety_meeting(school.req(ScheduleSafetyMeetingRequest {
            referral_id: record.referral_id.clone(),
            idempotency_key: "meeting-0001".into(),
            meeting_at: Some(time::to_proto(meeting_at)),
            place: "Мектеп, 12-кабинет".into(),
            note: String::new(),
        }))
        .await
        .expect("the meeting is scheduled")
        .into_inner();
    hub.delivered(&meeting.message_id).await;
    let notices = ngo
        .ngo_services()
        .list_meeting_notices(ngo.req(ListMeetingNoticesRequest {
            service_id: svc.service_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .notices;
    assert_eq!(notices.len(), 1);
    assert_eq!(
        notices[0].notice.as_ref().unwrap().meeting_reference,
        meeting.meeting_id
    );

    // A session scheduled today and held, then the weekly report.
    let schedule = UpdateServiceRequest {
        session_on: Some(to_calendar_date(hub.today())),
        ..step(
            &svc.service_id,
            "step-schedule",
            ServiceEvent::SessionScheduled,
        )
    };
    take_step(&hub, &ngo, schedule).await.unwrap();
    // Held before it was scheduled? Not possible twice: held, then held again is refused.
    take_step(
        &hub,
        &ngo,
        step(&svc.service_id, "step-held", ServiceEvent::SessionHeld),
    )
    .await
    .unwrap();
    let twice = take_step(
        &hub,
        &ngo,
        step(&svc.service_id, "step-held-2", ServiceEvent::SessionHeld),
    )
    .await
    .unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition);
    let progress = UpdateServiceRequest {
        note: "Екі кездесу өтті, мінез-құлқы жақсаруда".into(),
        ..step(&svc.service_id, "step-week-1", ServiceEvent::WeeklyProgress)
    };
    take_step(&hub, &ngo, progress).await.unwrap();
    let seen = referral_of(&school, &record.referral_id).await;
    assert_eq!(seen.status, ReferralStatus::InProgress as i32);
    assert_eq!(
        seen.business_status,
        ServiceBusinessStatus::EventCompleted as i32
    );
    let events: Vec<i32> = seen.updates.iter().map(|u| u.event).collect();
    assert_eq!(
        events,
        vec![
            ServiceEvent::Accepted as i32,
            ServiceEvent::SessionScheduled as i32,
            ServiceEvent::SessionHeld as i32,
            ServiceEvent::WeeklyProgress as i32,
        ]
    );

    // Attendance: not before the meeting has begun, then once.
    let attend = |attended: bool| RecordMeetingAttendanceRequest {
        meeting_id: meeting.meeting_id.clone(),
        ngo_attended: attended,
    };
    let early = school
        .school_referrals()
        .record_meeting_attendance(school.req(attend(true)))
        .await
        .unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition);
    hub.clock.advance(SignedDuration::from_hours(49));
    // Tokens last a working day: both log in again.
    let school = hub.staff("school-1", "safety-team").await;
    let ngo = hub.staff("ngo-1", "case-manager").await;
    let recorded = school
        .school_referrals()
        .record_meeting_attendance(school.req(attend(true)))
        .await
        .expect("attendance recorded")
        .into_inner();
    assert_eq!(recorded.ngo_attended, Some(true));
    let again = school
        .school_referrals()
        .record_meeting_attendance(school.req(attend(false)))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    let meetings = school
        .school_referrals()
        .list_safety_meetings(school.req(ListSafetyMeetingsRequest {
            referral_id: record.referral_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .meetings;
    assert_eq!(meetings.len(), 1);
    assert_eq!(meetings[0].ngo_attended, Some(true));

    // The school's follow-up check: not in the future.
    let future = school
        .school_referrals()
        .record_referral_check(school.req(RecordReferralCheckRequest {
            referral_id: record.referral_id.clone(),
            checked_on: Some(to_calendar_date(hub.today() + 1.day())),
        }))
        .await
        .unwrap_err();
    assert_eq!(fields(&future), ["checked_on"]);
    // Nor before the date referred: refused, and nothing recorded.
    let referred_on = record
        .referral
        .as_ref()
        .and_then(|r| r.referred_on.as_ref())
        .and_then(referral_core::validate::calendar_date)
        .expect("the referral has its date");
    assert!(
        referred_on < hub.today(),
        "the clock moved on since the referral"
    );
    let before_referral = school
        .school_referrals()
        .record_referral_check(school.req(RecordReferralCheckRequest {
            referral_id: record.referral_id.clone(),
            checked_on: Some(to_calendar_date(referred_on - 1.day())),
        }))
        .await
        .unwrap_err();
    assert_eq!(fields(&before_referral), ["checked_on"]);
    assert_eq!(
        referral_of(&school, &record.referral_id).await.date_checked,
        None,
        "a refused check changes nothing"
    );
    let checked = school
        .school_referrals()
        .record_referral_check(school.req(RecordReferralCheckRequest {
            referral_id: record.referral_id.clone(),
            checked_on: Some(to_calendar_date(hub.today())),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checked.date_checked, Some(to_calendar_date(hub.today())));

    // Completed: the school sees fulfilment completed; nothing more can happen.
    let done = take_step(
        &hub,
        &ngo,
        step(&svc.service_id, "step-complete", ServiceEvent::Completed),
    )
    .await
    .unwrap();
    assert_eq!(done.status, ReferralStatus::Completed as i32);
    let seen = referral_of(&school, &record.referral_id).await;
    assert_eq!(seen.status, ReferralStatus::Completed as i32);
    assert_eq!(
        seen.business_status,
        ServiceBusinessStatus::FulfilmentCompleted as i32
    );
    let cancel = school
        .school_referrals()
        .request_service_cancellation(school.req(RequestServiceCancellationRequest {
            referral_id: record.referral_id.clone(),
            idempotency_key: "cancel-0001".into(),
            reason: "Оқушы басқа мектепке ауысты".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(cancel.code(), Code::FailedPrecondition);
    hub.shutdown().await;
}

async fn a_declined_referral_cannot_be_completed_and_strangers_are_refused(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let school = hub.staff("school-1", "director").await;
    let ngo = hub.staff("ngo-1", "case-manager").await;

    // Bad fields are named, and nothing is stored or sent.
    let mut bad = referral("refer-bad-01", "", "police-1");
    bad.risk_tier = RiskTier::NotAtRisk as i32;
    bad.date_of_birth = Some(to_calendar_date(hub.today() + 1.day()));
    bad.reason.clear();
    let refused = school
        .school_referrals()
        .refer_pupil(school.req(bad))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(
        fields(&refused),
        [
            "pupil_full_name",
            "date_of_birth",
            "risk_tier",
            "ngo_agency_id",
            "reason"
        ]
    );
    let t = hub.today();
    let none = school
        .school_referrals()
        .list_service_referrals(school.req(ListServiceReferralsRequest {
            year: i32::from(t.year()),
            month: i32::from(t.month()),
        }))
        .await
        .unwrap()
        .into_inner()
        .referrals;
    assert!(none.is_empty());
    assert!(
        gateway_messages(&hub, FormKind::ServiceReferral)
            .await
            .is_empty()
    );

    // Declined, with a reason only.
    let record = refer(&school, referral("refer-0002", PUPIL, "ngo-1")).await;
    hub.delivered(&record.message_id).await;
    let svc = services(&ngo).await.remove(0);
    let no_reason = ngo
        .ngo_services()
        .update_service(ngo.req(step(&svc.service_id, "decline-1", ServiceEvent::Declined)))
        .await
        .unwrap_err();
    assert_eq!(fields(&no_reason), ["reason"]);
    let decline = UpdateServiceRequest {
        reason: "Орын жоқ / нет мест".into(),
        ..step(&svc.service_id, "decline-2", ServiceEvent::Declined)
    };
    let declined = take_step(&hub, &ngo, decline).await.unwrap();
    assert_eq!(declined.status, ReferralStatus::Rejected as i32);
    let seen = referral_of(&school, &record.referral_id).await;
    assert_eq!(seen.status, ReferralStatus::Rejected as i32);
    assert_eq!(seen.business_status, ServiceBusinessStatus::Declined as i32);
    assert_eq!(seen.reason, "Орын жоқ / нет мест");

    // Completing a declined service: FAILED_PRECONDITION, and nothing changes or is sent.
    let sent_before = gateway_messages(&hub, FormKind::ServiceUpdate).await.len();
    let refused = ngo
        .ngo_services()
        .update_service(ngo.req(step(&svc.service_id, "complete-1", ServiceEvent::Completed)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let unchanged = service(&ngo, &svc.service_id).await;
    assert_eq!(unchanged, declined);
    assert_eq!(
        gateway_messages(&hub, FormKind::ServiceUpdate).await.len(),
        sent_before
    );
    // Nor is a meeting fixed for a pupil the NGO does not serve.
    let meeting = school
        .school_referrals()
        .schedule_safety_meeting(school.req(ScheduleSafetyMeetingRequest {
            referral_id: record.referral_id.clone(),
            idempotency_key: "meeting-0002".into(),
            meeting_at: Some(time::to_proto(
                hub.clock.now() + SignedDuration::from_hours(24),
            )),
            place: "Мектеп".into(),
            note: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(meeting.code(), Code::FailedPrecondition);

    // Strangers: another NGO does not know the service; another agency's staff are not let in;
    // another NGO cannot answer the referral, and a police service cannot refer.
    let other_ngo = hub.staff("ngo-2", "case-manager").await;
    let unknown = other_ngo
        .ngo_services()
        .get_service(other_ngo.req(GetServiceRequest {
            service_id: svc.service_id.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let school_token = school.token.clone();
    let intruder = ngo.with_token(school_token);
    let refused = intruder
        .ngo_services()
        .list_services(intruder.req(ListServicesRequest::default()))
        .await
        .unwrap_err();
    assert!(matches!(
        refused.code(),
        Code::Unauthenticated | Code::PermissionDenied
    ));
    let other_school = hub.staff("school-2", "director").await;
    let not_theirs = other_school
        .school_referrals()
        .get_service_referral(other_school.req(GetServiceReferralRequest {
            referral_id: record.referral_id.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(not_theirs.code(), Code::NotFound);
    let forged = Envelope {
        idempotency_key: "forged-update-1".into(),
        recipient_agency_id: "school-1".into(),
        acting_user: Some(referral_proto::v1::ActingUser {
            user_id: "case-manager".into(),
            agency_id: "ngo-2".into(),
            role: referral_proto::v1::Role::NgoCaseManager as i32,
            display_name: "Самал Бекова".into(),
        }),
        purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
        form_kind: FormKind::ServiceUpdate as i32,
        confidentiality: referral_proto::v1::ConfidentialityLabel::Restricted as i32,
        in_reply_to: record.message_id.clone(),
        payload: Some(Payload {
            form: Some(payload::Form::ServiceUpdate(ServiceUpdate {
                referral_reference: record.referral_id.clone(),
                status: ReferralStatus::Completed as i32,
                business_status: ServiceBusinessStatus::FulfilmentCompleted as i32,
                reported_at: Some(time::to_proto(hub.clock.now())),
                referral_message_id: record.message_id.clone(),
                event: ServiceEvent::Completed as i32,
                service_reference: "SVC-forged".into(),
                reported_by: "Самал Бекова".into(),
                ..Default::default()
            })),
        }),
        ..Default::default()
    };
    let refused = hub
        .gateway_client_as("ngo-2")
        .await
        .send(referral_proto::v1::SendRequest {
            envelope: Some(forged),
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&refused), ["envelope.in_reply_to"]);
    let mut police_referral = referral_proto::v1::ServiceReferral {
        referral_reference: "SR-police".into(),
        ..Default::default()
    };
    police_referral.pupil_full_name = PUPIL.into();
    let refused = hub
        .gateway_client_as("police-1")
        .await
        .send(referral_proto::v1::SendRequest {
            envelope: Some(Envelope {
                idempotency_key: "police-referral-1".into(),
                recipient_agency_id: "ngo-1".into(),
                acting_user: Some(referral_proto::v1::ActingUser {
                    user_id: "inspector".into(),
                    agency_id: "police-1".into(),
                    role: referral_proto::v1::Role::PoliceJuvenileInspector as i32,
                    display_name: String::new(),
                }),
                purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
                form_kind: FormKind::ServiceReferral as i32,
                confidentiality: referral_proto::v1::ConfidentialityLabel::Restricted as i32,
                payload: Some(Payload {
                    form: Some(payload::Form::ServiceReferral(police_referral)),
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    // Another school cannot fix a meeting about a referral it did not make.
    let refused = hub
        .gateway_client_as("school-2")
        .await
        .send(referral_proto::v1::SendRequest {
            envelope: Some(Envelope {
                idempotency_key: "foreign-meeting-1".into(),
                recipient_agency_id: "ngo-1".into(),
                acting_user: Some(referral_proto::v1::ActingUser {
                    user_id: "director".into(),
                    agency_id: "school-2".into(),
                    role: referral_proto::v1::Role::SchoolDirector as i32,
                    display_name: "Ольга Смирнова".into(),
                }),
                purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
                form_kind: FormKind::SafetyMeetingNotice as i32,
                confidentiality: referral_proto::v1::ConfidentialityLabel::Restricted as i32,
                payload: Some(Payload {
                    form: Some(payload::Form::SafetyMeetingNotice(
                        referral_proto::v1::SafetyMeetingNotice {
                            referral_reference: record.referral_id.clone(),
                            referral_message_id: record.message_id.clone(),
                            meeting_reference: "SM-foreign".into(),
                            meeting_at: Some(time::to_proto(
                                hub.clock.now() + SignedDuration::from_hours(24),
                            )),
                            place: "Мектеп".into(),
                            convened_by: "Ольга Смирнова".into(),
                            note: String::new(),
                        },
                    )),
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(
        fields(&refused),
        ["envelope.payload.safety_meeting_notice.referral_message_id"]
    );
    assert!(
        gateway_messages(&hub, FormKind::SafetyMeetingNotice)
            .await
            .is_empty()
    );
    assert_eq!(referral_of(&school, &record.referral_id).await, seen);

    // The school asks to cancel a running service; the NGO sees it and cancels with a reason.
    let second = refer(&school, referral("refer-0003", "Әлия Маратқызы", "ngo-1")).await;
    hub.delivered(&second.message_id).await;
    let svc2 = services(&ngo)
        .await
        .into_iter()
        .find(|s| s.referral_reference == second.referral_id)
        .unwrap();
    take_step(
        &hub,
        &ngo,
        step(&svc2.service_id, "accept-3", ServiceEvent::Accepted),
    )
    .await
    .unwrap();
    let asked = school
        .school_referrals()
        .request_service_cancellation(school.req(RequestServiceCancellationRequest {
            referral_id: second.referral_id.clone(),
            idempotency_key: "cancel-0003".into(),
            reason: "Оқушы басқа мектепке ауысты".into(),
        }))
        .await
        .expect("cancellation requested")
        .into_inner();
    assert!(asked.cancellation_requested);
    hub.deliver_everything().await;
    assert_eq!(
        service(&ngo, &svc2.service_id).await.business_status,
        ServiceBusinessStatus::CancellationRequested as i32
    );
    let cancel = UpdateServiceRequest {
        reason: "Мектептің өтініші бойынша".into(),
        ..step(&svc2.service_id, "cancel-3", ServiceEvent::Cancelled)
    };
    take_step(&hub, &ngo, cancel).await.unwrap();
    let seen = referral_of(&school, &second.referral_id).await;
    assert_eq!(seen.status, ReferralStatus::Cancelled as i32);
    assert_eq!(
        seen.business_status,
        ServiceBusinessStatus::FulfilmentCancelled as i32
    );
    hub.shutdown().await;
}

async fn an_assigned_plan_row_is_a_service_reporting_weekly_to_the_commission(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let case = hub.open_case("svc-case").await;
    let curator = hub.staff("commission", "curator-1").await;
    let t = hub.today();
    curator
        .file_assessment_and_plan(&case, "svc-plan", t, vec![row(1, t + 30.days(), "ngo-1")])
        .await;
    hub.deliver_everything().await;

    let ngo = hub.staff("ngo-1", "case-manager").await;
    let listed = services(&ngo).await;
    assert_eq!(listed.len(), 1);
    let svc = listed[0].clone();
    assert_eq!(svc.source, ServiceSource::ActionAssignment as i32);
    assert_eq!(svc.case_reference, case);
    assert_eq!(svc.action_number, 1);
    assert_eq!(svc.referrer_agency_id, "commission");

    take_step(
        &hub,
        &ngo,
        step(&svc.service_id, "row-accept", ServiceEvent::Accepted),
    )
    .await
    .unwrap();
    let progress = UpdateServiceRequest {
        note: "Бірінші апта: екі кездесу".into(),
        ..step(&svc.service_id, "row-week-1", ServiceEvent::WeeklyProgress)
    };
    take_step(&hub, &ngo, progress).await.unwrap();
    let file = curator.get_case(&case).await.expect("the case reads");
    let action = &file.cycles.last().unwrap().actions[0];
    assert_eq!(action.progress, ActionProgressState::InProgress as i32);

    // The weekly report is a deadline of the engine: the report just made met the first one,
    // and the next is due a week on.
    hub.gateway().settle().await.unwrap();
    // The case manager's own deadlines, through the NGO's staff API.
    let service_id = svc.service_id.as_str();
    let deadlines = |ngo: StaffClient, states: Vec<DeadlineState>| async move {
        ngo.client
            .clone()
            .list_deadlines(ngo.req(ListDeadlinesRequest {
                states: states.into_iter().map(|s| s as i32).collect(),
                ..Default::default()
            }))
            .await
            .expect("the case manager lists their deadlines")
            .into_inner()
            .deadlines
            .into_iter()
            .filter(|d| {
                d.kind == DeadlineKind::WeeklyProgress as i32 && d.subject_reference == service_id
            })
            .collect::<Vec<_>>()
    };
    let met = deadlines(ngo.with_token(ngo.token.clone()), vec![DeadlineState::Met]).await;
    assert_eq!(met.len(), 1);
    assert_eq!(met[0].responsible_user_id, "case-manager");
    assert_eq!(
        deadlines(ngo.with_token(ngo.token.clone()), Vec::new())
            .await
            .len(),
        1,
        "the next report is open"
    );

    // A week and more without a report: the alert reaches the NGO's inbox.
    hub.clock.advance(SignedDuration::from_hours(24 * 8));
    hub.gateway().settle().await.unwrap();
    hub.deliver_everything().await;
    // Tokens last a working day: both log in again.
    let ngo = hub.staff("ngo-1", "case-manager").await;
    let curator = hub.staff("commission", "curator-1").await;
    let alerts = ngo.inbox_of(FormKind::DeadlineAlert).await;
    assert!(
        alerts.iter().any(|a| a.summary.contains("weekly_progress")),
        "the NGO is alerted: {alerts:?}"
    );
    // Late reports of an assigned row are the NGO's: the commission has its own deadlines for
    // plan rows, and is not told (with no case reference, every member would see the alert).
    let weekly = weekly_deadlines(&hub, &svc.service_id).await;
    assert!(weekly.len() >= 2);
    assert!(weekly.iter().all(|(_, told)| told.is_empty()), "{weekly:?}");
    for member in ["secretary", "curator-1", "chair"] {
        let alerts = hub
            .staff("commission", member)
            .await
            .inbox_of(FormKind::DeadlineAlert)
            .await;
        assert!(
            !alerts.iter().any(|a| a.summary.contains("weekly_progress")),
            "{member}: {alerts:?}"
        );
    }

    // Completed: the commission sees the row completed.
    take_step(
        &hub,
        &ngo,
        step(&svc.service_id, "row-complete", ServiceEvent::Completed),
    )
    .await
    .unwrap();
    let file = curator.get_case(&case).await.expect("the case reads");
    let action = &file.cycles.last().unwrap().actions[0];
    assert_eq!(action.progress, ActionProgressState::Completed as i32);
    hub.gateway().settle().await.unwrap();
    assert!(
        deadlines(ngo.with_token(ngo.token.clone()), Vec::new())
            .await
            .is_empty(),
        "no report is due once the service ended"
    );
    hub.shutdown().await;
}

fn cell(range: &calamine::Range<Data>, row: usize, col: usize) -> String {
    match range.get((row, col)) {
        Some(Data::String(s)) => s.clone(),
        Some(Data::Empty) | None => String::new(),
        other => format!("{other:?}"),
    }
}

async fn the_monthly_log_j_is_exported_and_reaches_the_commission(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let school = hub.staff("school-1", "safety-team").await;
    let first = refer(&school, referral("log-000001", PUPIL, "ngo-1")).await;
    let second = refer(&school, referral("log-000002", "Әлия Маратқызы", "ngo-2")).await;
    assert_ne!(first.referral_id, second.referral_id);
    hub.deliver_everything().await;
    school
        .school_referrals()
        .record_referral_check(school.req(RecordReferralCheckRequest {
            referral_id: second.referral_id.clone(),
            checked_on: Some(to_calendar_date(hub.today())),
        }))
        .await
        .unwrap();
    let t = hub.today();
    let (year, month) = (i32::from(t.year()), i32::from(t.month()));

    let j = school
        .school_referrals()
        .monthly_referral_log(school.req(MonthlyReferralLogRequest { year, month }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(j.school_name, "№1 жалпы білім беретін мектеп");
    assert_eq!(j.rows.len(), 2);
    assert_eq!(j.rows[0].pupil_name, PUPIL);
    assert_eq!(j.rows[0].service, "«Бала қорғаны» қоғамдық қоры");
    assert_eq!(j.rows[1].date_checked, Some(to_calendar_date(t)));
    assert_eq!(j.rows[0].date_referred, Some(to_calendar_date(t)));
    assert_eq!(j.rows[0].contact_person, "Асель Маратқызы Нұрова");

    let export = |format: ExportFormat| {
        let school = &school;
        async move {
            school
                .school_referrals()
                .export_referral_log(school.req(ExportReferralLogRequest {
                    year,
                    month,
                    format: format as i32,
                }))
                .await
        }
    };
    let kk = [
        "Оқушының аты",
        "Оқушы жіберілген білім беруші секторға жатпайтын қызмет атауы",
        "Оқушының білім беруші секторға жатпайтын қызметтен алатын қолдауы",
        "Жіберілген күн",
        "Байланыс жасаушы адам",
        "Тексерген күн",
    ];
    let ru = [
        "Имя учащегося",
        "Наименование службы вне сферы образования, в которую направлен учащийся",
        "Поддержка, получаемая учащимся от службы вне сферы образования",
        "Дата направления",
        "Контактное лицо",
        "Дата проверки",
    ];
    let xlsx = export(ExportFormat::Xlsx).await.unwrap().into_inner();
    assert!(xlsx.file_name.ends_with(".xlsx"));
    let mut workbook: Xlsx<_> = open_workbook_from_rs(Cursor::new(xlsx.content)).unwrap();
    let range = workbook.worksheet_range_at(0).unwrap().unwrap();
    assert_eq!(range.height(), 4, "two heading rows and a row per referral");
    for (col, heading) in kk.iter().enumerate() {
        assert_eq!(&cell(&range, 0, col), heading);
        assert_eq!(cell(&range, 1, col), ru[col]);
    }
    assert_eq!(cell(&range, 2, 0), PUPIL);
    assert_eq!(cell(&range, 3, 0), "Әлия Маратқызы");
    assert_eq!(cell(&range, 3, 5), t.to_string());
    let csv = export(ExportFormat::Csv).await.unwrap().into_inner();
    assert_eq!(csv.content_type, "text/csv; charset=utf-8");
    let text = String::from_utf8(csv.content).unwrap();
    let lines: Vec<&str> = text.trim_start_matches('\u{FEFF}').lines().collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0], kk.join(","));
    let quoted: Vec<String> = ru
        .iter()
        .map(|h| {
            if h.contains(',') {
                format!("\"{h}\"")
            } else {
                (*h).to_owned()
            }
        })
        .collect();
    assert_eq!(lines[1], quoted.join(","));
    assert!(lines[2].starts_with(PUPIL));
    let unknown = export(ExportFormat::Unspecified).await.unwrap_err();
    assert_eq!(fields(&unknown), ["format"]);

    // Sent once the month has ended, to the commission, which receives the rows with names.
    let send = |school: StaffClient, key: &'static str| async move {
        school
            .school_referrals()
            .send_referral_log(school.req(SendReferralLogRequest {
                year,
                month,
                idempotency_key: key.into(),
            }))
            .await
    };
    let early = send(school, "log-send-1").await.unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition);
    let first_of_next = t.last_of_month() + 1.day();
    hub.clock.set(
        first_of_next
            .at(9, 0, 0, 0)
            .to_zoned(almaty())
            .unwrap()
            .timestamp(),
    );
    // Tokens last a working day: the director logs in on the first of the month.
    let director = hub.staff("school-1", "director").await;
    let sent = send(director.with_token(director.token.clone()), "log-send-1")
        .await
        .unwrap()
        .into_inner();
    let again = send(director, "log-send-1").await.unwrap().into_inner();
    assert_eq!(again.message_id, sent.message_id);
    hub.delivered(&sent.message_id).await;
    assert_eq!(
        gateway_messages(&hub, FormKind::ReferralLog).await,
        vec![("commission".to_owned(), sent.message_id.clone())]
    );
    let secretary = hub.staff("commission", "secretary").await;
    let inbox = secretary.inbox_of(FormKind::ReferralLog).await;
    assert!(inbox.iter().any(|i| i.message_id == sent.message_id));
    let received = secretary
        .client
        .clone()
        .get_message(secretary.req(GetMessageRequest {
            message_id: sent.message_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    let Some(payload::Form::ReferralLog(got)) = received
        .envelope
        .and_then(|e| e.payload)
        .and_then(|p| p.form)
    else {
        panic!("a log J");
    };
    assert_eq!(got.rows.len(), 2);
    assert_eq!(got.rows[0].pupil_name, PUPIL);
    assert_eq!(
        got.rows[1].service,
        "«Отбасы» психологиялық қолдау орталығы"
    );
    hub.shutdown().await;
}

async fn a_referral_made_while_the_gateway_is_away_reaches_the_ngo_once_it_is_back(
    backend: Backend,
) {
    let hub = TestHub::start(backend).await;
    let school = hub.staff("school-1", "safety-team").await;
    let ngo = hub.staff("ngo-1", "case-manager").await;

    hub.stop_gateway().await;
    let record = refer(&school, referral("refer-away-1", PUPIL, "ngo-1")).await;
    assert!(record.message_id.is_empty(), "nothing reached the gateway");
    assert_eq!(record.status, ReferralStatus::Requested as i32);
    assert_eq!(
        hub.agency_count("school-1", "sent_messages").await,
        1,
        "queued in the referral's transaction"
    );
    assert!(services(&ngo).await.is_empty(), "nothing delivered");

    // Back: nobody asks the school again; its retry loop pushes the referral and the gateway
    // delivers it. Subscribed before the first look, so no delivery falls between the two.
    hub.start_gateway().await.unwrap();
    let mut events = hub.gateway().subscribe();
    let arrived = async {
        loop {
            if let Some((_, id)) = gateway_messages(&hub, FormKind::ServiceReferral)
                .await
                .into_iter()
                .next()
            {
                return id;
            }
            match events.recv().await {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    panic!("the gateway stopped")
                }
            }
        }
    };
    let message_id = tokio::time::timeout(std::time::Duration::from_secs(60), arrived)
        .await
        .expect("the school's retry loop sends the referral");
    hub.delivered(&message_id).await;
    // The school records the gateway's answer right after it came, which the gateway's delivery
    // may precede: nothing to await but the school's own store.
    let recorded = async {
        while referral_of(&school, &record.referral_id)
            .await
            .message_id
            .is_empty()
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), recorded)
        .await
        .expect("the school records the gateway's answer");

    // Once: one message at the gateway, one service at the NGO, and the school's record shows
    // the message id; the same request again answers the same message.
    assert_eq!(
        gateway_messages(&hub, FormKind::ServiceReferral).await,
        vec![("ngo-1".to_owned(), message_id.clone())]
    );
    let listed = services(&ngo).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].received_message_id, message_id);
    assert_eq!(listed[0].referral_reference, record.referral_id);
    assert_eq!(listed[0].child_name, PUPIL);
    assert_eq!(hub.agency_count("ngo-1", "received_messages").await, 1);
    assert_eq!(
        referral_of(&school, &record.referral_id).await.message_id,
        message_id
    );
    let again = refer(&school, referral("refer-away-1", PUPIL, "ngo-1")).await;
    assert_eq!(again.referral_id, record.referral_id);
    assert_eq!(again.message_id, message_id);
    assert_eq!(
        gateway_messages(&hub, FormKind::ServiceReferral)
            .await
            .len(),
        1
    );
    hub.shutdown().await;
}

/// A SAFETY_MEETING_NOTICE from school-1 about the referral message `referral_message_id`,
/// naming `referral_reference`, sent straight to the gateway under `key`.
async fn school_notice(
    hub: &TestHub,
    key: &str,
    referral_message_id: &str,
    referral_reference: &str,
) -> String {
    hub.gateway_client_as("school-1")
        .await
        .send(referral_proto::v1::SendRequest {
            envelope: Some(Envelope {
                idempotency_key: key.into(),
                recipient_agency_id: "ngo-1".into(),
                acting_user: Some(referral_proto::v1::ActingUser {
                    user_id: "director".into(),
                    agency_id: "school-1".into(),
                    role: referral_proto::v1::Role::SchoolDirector as i32,
                    display_name: "Асель Нұрова".into(),
                }),
                purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
                form_kind: FormKind::SafetyMeetingNotice as i32,
                confidentiality: referral_proto::v1::ConfidentialityLabel::Restricted as i32,
                payload: Some(Payload {
                    form: Some(payload::Form::SafetyMeetingNotice(
                        referral_proto::v1::SafetyMeetingNotice {
                            referral_reference: referral_reference.into(),
                            referral_message_id: referral_message_id.into(),
                            meeting_reference: format!("SM-{key}"),
                            meeting_at: Some(time::to_proto(
                                hub.clock.now() + SignedDuration::from_hours(24),
                            )),
                            place: "Мектеп".into(),
                            convened_by: "Асель Нұрова".into(),
                            note: String::new(),
                        },
                    )),
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("the gateway takes the notice")
        .into_inner()
        .message_id
}

/// Two referrals to ngo-1 (keys `refer-{series}01`, `refer-{series}02`, the first of the boy),
/// the first's service accepted with step `step-{series}01`: the school's and the NGO's staff,
/// both referrals, the first's service and the service as accepted.
async fn two_referrals_first_accepted(
    hub: &TestHub,
    series: &str,
) -> (
    StaffClient,
    StaffClient,
    ServiceReferralRecord,
    ServiceReferralRecord,
    NgoService,
    NgoService,
) {
    let school = hub.staff("school-1", "safety-team").await;
    let ngo = hub.staff("ngo-1", "case-manager").await;
    let first = refer(
        &school,
        referral(&format!("refer-{series}01"), PUPIL, "ngo-1"),
    )
    .await;
    let second = refer(
        &school,
        referral(&format!("refer-{series}02"), "Әлия Маратқызы", "ngo-1"),
    )
    .await;
    hub.deliver_everything().await;
    let svc = services(&ngo)
        .await
        .into_iter()
        .find(|s| s.referral_reference == first.referral_id)
        .expect("the first referral's service");
    let accepted = take_step(
        hub,
        &ngo,
        step(
            &svc.service_id,
            &format!("step-{series}01"),
            ServiceEvent::Accepted,
        ),
    )
    .await
    .unwrap();
    (school, ngo, first, second, svc, accepted)
}

/// Takes the gateway message key the NGO's step `step_key` will go under, by an update on the
/// `second` referral (delivered), so that the gateway refuses that step for good.
async fn take_at_gateway(hub: &TestHub, second: &ServiceReferralRecord, step_key: &str) {
    let taken = ngo_update(
        hub,
        &step_message_key(step_key),
        &second.message_id,
        &second.referral_id,
        ServiceEvent::Accepted,
        ReferralStatus::Accepted,
        ServiceBusinessStatus::Accepted,
    )
    .await
    .expect("a valid update");
    hub.delivered(&taken).await;
}

async fn a_refused_step_never_reaches_the_engine_and_forms_apply_only_to_the_referral_they_answer(
    backend: Backend,
) {
    let hub = TestHub::start(backend).await;
    let (school, ngo, first, second, svc, accepted) =
        two_referrals_first_accepted(&hub, "01").await;
    hub.gateway().settle().await.unwrap();
    let started = AgencyClockEventKind::ServiceStarted.as_str_name();
    assert_eq!(engine_events(&hub, &svc.service_id).await, [started]);
    let weekly = weekly_deadlines(&hub, &svc.service_id).await;
    assert_eq!(weekly.len(), 1);
    assert!(is_open(&weekly[0].0));
    assert_eq!(
        weekly[0].1, "school-1",
        "late reports are told to the school"
    );

    // The key the NGO's completion will go under is taken at the gateway already (by an update
    // on the second referral): the gateway refuses the completion for good.
    take_at_gateway(&hub, &second, "step-0102").await;
    let refused = ngo
        .ngo_services()
        .update_service(ngo.req(step(&svc.service_id, "step-0102", ServiceEvent::Completed)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists);
    // Undone, and the engine never heard of the end: the weekly report is still due.
    assert_eq!(service(&ngo, &svc.service_id).await, accepted);
    hub.gateway().settle().await.unwrap();
    assert_eq!(engine_events(&hub, &svc.service_id).await, [started]);
    assert!(is_open(&weekly_deadlines(&hub, &svc.service_id).await[0].0));
    assert_eq!(hub.agency_count("ngo-1", "clock_events").await, 1);
    assert_eq!(hub.agency_count("ngo-1", "ngo_step_clock_events").await, 0);
    assert_eq!(
        referral_of(&school, &first.referral_id).await.status,
        ReferralStatus::Accepted as i32
    );
    // Completed under another key: acknowledged, then the engine hears of it.
    take_step(
        &hub,
        &ngo,
        step(&svc.service_id, "step-0103", ServiceEvent::Completed),
    )
    .await
    .unwrap();
    hub.gateway().settle().await.unwrap();
    assert_eq!(
        engine_events(&hub, &svc.service_id).await,
        [started, AgencyClockEventKind::ServiceEnded.as_str_name()]
    );
    assert!(!is_open(
        &weekly_deadlines(&hub, &svc.service_id).await[0].0
    ));

    // An update answering the first referral but naming the second (the gateway no longer holds
    // the referral's payload to compare) is applied to neither.
    let first_before = referral_of(&school, &first.referral_id).await;
    let second_before = referral_of(&school, &second.referral_id).await;
    assert_eq!(second_before.status, ReferralStatus::Accepted as i32);
    let crossed = ngo_update(
        &hub,
        "crossed-update-01",
        &first.message_id,
        &second.referral_id,
        ServiceEvent::Declined,
        ReferralStatus::Rejected,
        ServiceBusinessStatus::Declined,
    )
    .await
    .expect("the gateway cannot tell");
    hub.delivered(&crossed).await;
    assert_eq!(referral_of(&school, &first.referral_id).await, first_before);
    assert_eq!(
        referral_of(&school, &second.referral_id).await,
        second_before
    );
    // Nor is a meeting notice about the second referral naming the first kept; a right one is.
    let crossed = school_notice(
        &hub,
        "crossed-notice-1",
        &second.message_id,
        &first.referral_id,
    )
    .await;
    hub.delivered(&crossed).await;
    let right = school_notice(
        &hub,
        "right-notice-01",
        &second.message_id,
        &second.referral_id,
    )
    .await;
    hub.delivered(&right).await;
    let notices = ngo
        .ngo_services()
        .list_meeting_notices(ngo.req(ListMeetingNoticesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .notices;
    let kept: Vec<&str> = notices.iter().map(|n| n.message_id.as_str()).collect();
    assert_eq!(kept, [right.as_str()]);

    // A residential institution's staff cannot refer or read the referrals (they name pupils);
    // its director can.
    let staff = hub.staff("residential-1", "staff").await;
    let refused = staff
        .school_referrals()
        .refer_pupil(staff.req(referral("refer-0104", PUPIL, "ngo-1")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let t = hub.today();
    let month = || ListServiceReferralsRequest {
        year: i32::from(t.year()),
        month: i32::from(t.month()),
    };
    let refused = staff
        .school_referrals()
        .list_service_referrals(staff.req(month()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let refused = staff
        .school_referrals()
        .monthly_referral_log(staff.req(MonthlyReferralLogRequest {
            year: i32::from(t.year()),
            month: i32::from(t.month()),
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let director = hub.staff("residential-1", "director").await;
    let listed = director
        .school_referrals()
        .list_service_referrals(director.req(month()))
        .await
        .expect("the institution's director lists its referrals")
        .into_inner()
        .referrals;
    assert!(listed.is_empty(), "the institution referred nobody");
    hub.shutdown().await;
}

async fn a_refused_step_under_a_later_one_is_not_undone_and_the_later_ones_clock_event_follows_its_message(
    backend: Backend,
) {
    let hub = TestHub::start(backend).await;
    let (school, ngo, first, second, svc, _) = two_referrals_first_accepted(&hub, "02").await;
    // The first report's key is taken at the gateway already.
    take_at_gateway(&hub, &second, "step-0202").await;

    // Two weekly reports while the gateway is away: kept, their messages queued, their clock
    // events held (the engine hears of a step only once its message is acknowledged).
    hub.stop_gateway().await;
    for key in ["step-0202", "step-0203"] {
        let report = UpdateServiceRequest {
            note: "Апта сайынғы есеп".into(),
            ..step(&svc.service_id, key, ServiceEvent::WeeklyProgress)
        };
        let answer = ngo
            .ngo_services()
            .update_service(ngo.req(report))
            .await
            .expect("kept while the gateway is away")
            .into_inner();
        assert!(answer.message_id.is_empty());
    }
    let after = service(&ngo, &svc.service_id).await;
    assert_eq!(hub.agency_count("ngo-1", "clock_events").await, 1);
    assert_eq!(hub.agency_count("ngo-1", "ngo_step_clock_events").await, 2);

    // Back: the NGO's retry loop pushes both, unasked. The first is refused, and cannot be undone
    // under the second; the second is acknowledged, then its clock event follows.
    hub.start_gateway().await.unwrap();
    let pushed = async {
        while hub
            .agency_count("ngo-1", "sent_messages WHERE message_id IS NULL")
            .await
            > 0
            || engine_events(&hub, &svc.service_id).await.len() < 2
        {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), pushed)
        .await
        .expect("the NGO's retry loop pushes the reports");
    hub.deliver_everything().await;
    // Nothing changed by the failed undo: the service, its steps, the held event of the refused
    // report (never released).
    assert_eq!(service(&ngo, &svc.service_id).await, after);
    assert_eq!(hub.agency_count("ngo-1", "ngo_service_steps").await, 3);
    assert_eq!(hub.agency_count("ngo-1", "ngo_step_clock_events").await, 1);
    assert_eq!(hub.agency_count("ngo-1", "clock_events").await, 2);
    assert_eq!(
        engine_events(&hub, &svc.service_id).await,
        [
            AgencyClockEventKind::ServiceStarted.as_str_name(),
            AgencyClockEventKind::ServiceProgressReported.as_str_name()
        ]
    );
    let events: Vec<i32> = referral_of(&school, &first.referral_id)
        .await
        .updates
        .iter()
        .map(|u| u.event)
        .collect();
    assert_eq!(
        events,
        [
            ServiceEvent::Accepted as i32,
            ServiceEvent::WeeklyProgress as i32
        ],
        "the refused report never reached the school"
    );
    hub.shutdown().await;
}
