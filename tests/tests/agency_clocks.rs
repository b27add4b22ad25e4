//! Agency clocks (issue 5): the school's and NGO's own deadlines in the gateway's deadline
//! engine, each scenario on SQLite and on PostgreSQL, through the real services and gateway:
//!
//! * a school's incidents (through `SchoolIncidents`, which queues the clock events): an urgent
//!   one due the day it is reported, overdue at local midnight with the alert in the school's
//!   inbox addressed to the director, met by the start, whose finish is met by the finish; one
//!   without injury due two working days on, over the weekend; one recorded while the gateway is
//!   down reaching it once it is back, once;
//! * the NGO's and the safeguarding lead's kinds recorded directly through the gateway (their
//!   services are built elsewhere): weekly progress, the 24-hour written confirmation, the
//!   protection service's answer met by the commission's decision on the K the school sent, the
//!   allegation's working day;
//! * refusals (wrong kind of agency, a K the caller did not send, bad fields, an IIN as subject)
//!   storing nothing.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp, civil::Date};
use referral_core::{time, validate::to_calendar_date};
use referral_proto::v1::{
    ActingUser, AgencyClockEvent, AgencyClockEventKind as E, Deadline, DeadlineKind as D,
    DeadlineState as S, FormKind, Incident, IncidentReport, IncidentRole, InjuredPerson,
    InvestigationStepRequest, InvolvedChild, ProblemBehaviour, RecordAgencyClockEventRequest,
    RecordIncidentRequest, ReporterStatus, RiskTier, Role, SubmitHelpRequestRequest,
};
use referral_tests::{Backend, StaffClient, TestHub, almaty, both_backends, fields, samples::row};
use tonic::Code;

both_backends!(
    a_schools_incidents_run_their_investigation_clocks,
    an_incident_recorded_while_the_gateway_is_down_reaches_it_once,
    an_ngos_service_reports_weekly,
    the_safeguarding_clocks_run_and_the_commissions_decision_answers,
    refused_clock_events_store_nothing,
);

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// An incident report on `on`, with an injured pupil or without.
fn incident(on: Date, injured: bool) -> IncidentReport {
    IncidentReport {
        report_date: Some(to_calendar_date(on)),
        reporter_name: "Асель Маратқызы Нұрова".into(),
        reporter_status: ReporterStatus::Teacher as i32,
        incident_date: Some(to_calendar_date(on)),
        description: "Үзілісте дәлізде төбелес болды.".into(),
        behaviours: vec![ProblemBehaviour::FightOrPhysicalAggression as i32],
        anyone_harmed: injured,
        number_harmed: u32::from(injured),
        injured: if injured {
            vec![InjuredPerson {
                full_name: "Ерасыл Қанатұлы".into(),
                injuries: "мұрнынан қан кетті".into(),
            }]
        } else {
            vec![]
        },
        sent_for_medical_help: injured,
        children: vec![InvolvedChild {
            full_name: "Ерасыл Қанатұлы".into(),
            role: IncidentRole::Victim as i32,
            risk_tier: RiskTier::AtRisk as i32,
            iin: String::new(),
        }],
        staff_witnesses: vec!["Гүлнар Серікқызы Әбенова".into()],
        ..Default::default()
    }
}

async fn record(staff: &StaffClient, key: &str, report: IncidentReport) -> Incident {
    staff
        .school_incidents()
        .record_incident(staff.req(RecordIncidentRequest {
            idempotency_key: key.into(),
            incident: Some(report),
            risk_of_injury: false,
        }))
        .await
        .expect("the incident is recorded")
        .into_inner()
}

async fn step(staff: &StaffClient, id: &str, finish: bool) {
    let request = staff.req(InvestigationStepRequest {
        incident_id: id.into(),
    });
    let mut client = staff.school_incidents();
    if finish {
        client.finish_investigation(request).await
    } else {
        client.start_investigation(request).await
    }
    .expect("the step is recorded");
}

/// The agency's deadlines of one subject (any state), through its staff API, in creation order.
async fn deadlines_of(staff: &StaffClient, subject: &str) -> Vec<Deadline> {
    let mut list = staff.deadlines_about(subject).await;
    list.sort_by_key(|d| (d.kind, d.action_number));
    list
}

fn due_at(d: &Deadline) -> Timestamp {
    time::from_proto(d.due_at.as_ref().unwrap()).unwrap()
}

fn due_day(d: &Deadline) -> Date {
    time::from_proto(d.due_day_starts_at.as_ref().unwrap())
        .unwrap()
        .to_zoned(almaty())
        .date()
}

fn kind_state(d: &Deadline) -> (D, S) {
    (D::try_from(d.kind).unwrap(), S::try_from(d.state).unwrap())
}

/// The DEADLINE_ALERT messages in `staff`'s inbox about `subject`: (state, addressed role).
async fn alerts_about(staff: &StaffClient, subject: &str) -> Vec<(S, Role)> {
    let mut out: Vec<(S, Role)> = staff
        .alerts_about(subject)
        .await
        .iter()
        .map(|alert| {
            (
                S::try_from(alert.state).unwrap(),
                Role::try_from(alert.addressed_to_role).unwrap(),
            )
        })
        .collect();
    out.sort_by_key(|(s, r)| (*s as i32, *r as i32));
    out
}

/// A clock event recorded directly with the gateway, as `agency`'s service would.
async fn record_directly(
    hub: &TestHub,
    agency: &str,
    user: &str,
    role: Role,
    key: &str,
    event: AgencyClockEvent,
) -> Result<String, tonic::Status> {
    hub.gateway_client_as(agency)
        .await
        .record_agency_clock_event(RecordAgencyClockEventRequest {
            idempotency_key: key.into(),
            acting_user: Some(ActingUser {
                user_id: user.into(),
                agency_id: agency.into(),
                role: role as i32,
                display_name: "Staff".into(),
            }),
            event: Some(event),
        })
        .await
        .map(|r| r.into_inner().event_id)
}

fn event(kind: E, subject: &str, at: Timestamp) -> AgencyClockEvent {
    AgencyClockEvent {
        kind: kind as i32,
        subject_reference: subject.into(),
        occurred_at: Some(time::to_proto(at)),
        ..Default::default()
    }
}

/// A clock event of school-1's safeguarding lead, who is responsible for what it creates.
fn lead_says(kind: E, subject: &str, at: Timestamp) -> AgencyClockEvent {
    AgencyClockEvent {
        responsible_user_id: "safeguarding-lead".into(),
        ..event(kind, subject, at)
    }
}

// The harness starts on Friday 20 November 2026, 09:30 in Almaty.
async fn a_schools_incidents_run_their_investigation_clocks(backend: Backend) {
    let hub = TestHub::start(backend).await;

    // An injury: the investigation starts that day.
    let urgent = record(
        &hub.staff("school-1", "safety-team").await,
        "clock-urgent-1",
        incident(hub.today(), true),
    )
    .await;
    hub.settle().await;
    let list = deadlines_of(
        &hub.staff("school-1", "director").await,
        &urgent.incident_id,
    )
    .await;
    assert_eq!(list.len(), 1);
    assert_eq!(kind_state(&list[0]), (D::InvestigationStart, S::Due));
    assert_eq!(due_day(&list[0]), jiff::civil::date(2026, 11, 20));
    assert_eq!(due_at(&list[0]), ts("2026-11-20T19:00:00Z"));
    assert_eq!(list[0].responsible_agency_id, "school-1");

    // Not started by the end of the day: overdue, told to the team and to the director.
    hub.clock.set(ts("2026-11-20T18:59:59Z"));
    hub.settle().await;
    assert!(
        !alerts_about(
            &hub.staff("school-1", "director").await,
            &urgent.incident_id
        )
        .await
        .iter()
        .any(|(s, _)| *s == S::Overdue)
    );
    hub.clock.set(ts("2026-11-20T19:00:01Z"));
    hub.settle().await;
    let alerts = alerts_about(
        &hub.staff("school-1", "director").await,
        &urgent.incident_id,
    )
    .await;
    assert!(
        alerts.contains(&(S::Overdue, Role::SchoolDirector)),
        "{alerts:?}"
    );
    // Each reads the alert addressed to them in the school's inbox, not the other's.
    assert!(
        !alerts.contains(&(S::Overdue, Role::SafetyTeamMember)),
        "{alerts:?}"
    );
    let team = alerts_about(
        &hub.staff("school-1", "safety-team").await,
        &urgent.incident_id,
    )
    .await;
    assert!(
        team.contains(&(S::Overdue, Role::SafetyTeamMember)),
        "{team:?}"
    );
    assert!(
        !team.contains(&(S::Overdue, Role::SchoolDirector)),
        "{team:?}"
    );
    // The commission is not told of a school's own clock.
    assert!(
        alerts_about(
            &hub.staff("commission", "secretary").await,
            &urgent.incident_id
        )
        .await
        .is_empty()
    );

    // Started on Monday: met, and the finish is due two working days on (Wednesday).
    hub.clock.set(ts("2026-11-23T04:00:00Z"));
    step(
        &hub.staff("school-1", "safety-team").await,
        &urgent.incident_id,
        false,
    )
    .await;
    hub.settle().await;
    let list = deadlines_of(
        &hub.staff("school-1", "director").await,
        &urgent.incident_id,
    )
    .await;
    assert_eq!(kind_state(&list[0]), (D::InvestigationStart, S::Met));
    assert_eq!(kind_state(&list[1]), (D::InvestigationFinish, S::Pending));
    assert_eq!(due_day(&list[1]), jiff::civil::date(2026, 11, 25));
    step(
        &hub.staff("school-1", "safety-team").await,
        &urgent.incident_id,
        true,
    )
    .await;
    hub.settle().await;
    let list = deadlines_of(
        &hub.staff("school-1", "director").await,
        &urgent.incident_id,
    )
    .await;
    assert_eq!(kind_state(&list[1]), (D::InvestigationFinish, S::Met));

    // No injury, reported on Friday 27 November: Monday 30 November and Tuesday 1 December.
    hub.clock.set(ts("2026-11-27T05:00:00Z"));
    let calm = record(
        &hub.staff("school-1", "safety-team").await,
        "clock-calm-1",
        incident(hub.today(), false),
    )
    .await;
    hub.settle().await;
    let list = deadlines_of(&hub.staff("school-1", "director").await, &calm.incident_id).await;
    assert_eq!(kind_state(&list[0]), (D::InvestigationStart, S::Pending));
    assert_eq!(due_day(&list[0]), jiff::civil::date(2026, 12, 1));
    // The school shows the same date on the incident: the rule exists once.
    assert_eq!(
        calm.start_by.map(|d| (d.year, d.month, d.day)),
        Some((2026, 12, 1))
    );
    hub.shutdown().await;
}

async fn an_incident_recorded_while_the_gateway_is_down_reaches_it_once(backend: Backend) {
    let hub = TestHub::start(backend).await;
    hub.stop_gateway().await;
    let recorded = record(
        &hub.staff("school-1", "safety-team").await,
        "clock-offline-1",
        incident(hub.today(), true),
    )
    .await;
    assert_eq!(
        hub.agency_count("school-1", "clock_events").await,
        1,
        "queued in the incident's transaction"
    );
    hub.start_gateway().await.unwrap();
    assert_eq!(hub.gateway_count("agency_clock_events").await, 0);
    // The school's retry loop hands it over, without anyone calling the school again.
    let arrived = async {
        while hub.gateway_count("agency_clock_events").await == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), arrived)
        .await
        .expect("the retry loop pushes the queued event");
    hub.settle().await;
    let list = deadlines_of(
        &hub.staff("school-1", "director").await,
        &recorded.incident_id,
    )
    .await;
    assert_eq!(list.len(), 1);
    assert_eq!(kind_state(&list[0]), (D::InvestigationStart, S::Due));
    // Once: the next push (after the start) sends only the start, and recording the same
    // incident again queues nothing.
    step(
        &hub.staff("school-1", "safety-team").await,
        &recorded.incident_id,
        false,
    )
    .await;
    record(
        &hub.staff("school-1", "safety-team").await,
        "clock-offline-1",
        incident(hub.today(), true),
    )
    .await;
    hub.settle().await;
    assert_eq!(hub.gateway_count("agency_clock_events").await, 2);
    assert_eq!(hub.agency_count("school-1", "clock_events").await, 2);
    let list = deadlines_of(
        &hub.staff("school-1", "director").await,
        &recorded.incident_id,
    )
    .await;
    assert_eq!(list.len(), 2);
    assert_eq!(kind_state(&list[0]), (D::InvestigationStart, S::Met));
    hub.shutdown().await;
}

/// Opens a case whose plan gives row 1 to ngo-1; the ACTION_ASSIGNMENT's message id.
async fn assignment_to_ngo(hub: &TestHub) -> String {
    let case = hub.open_case("clock-ngo").await;
    let t = hub.today();
    hub.staff("commission", "curator-1")
        .await
        .file_assessment_and_plan(
            &case,
            "clock-ngo-plan",
            t,
            vec![row(
                1,
                t.checked_add(jiff::Span::new().days(60)).unwrap(),
                "ngo-1",
            )],
        )
        .await;
    hub.deliver_everything().await;
    let rows = hub
        .staff("ngo-1", "case-manager")
        .await
        .inbox_of(FormKind::ActionAssignment)
        .await;
    assert_eq!(rows.len(), 1);
    rows[0].message_id.clone()
}

/// A clock event of ngo-1's case manager.
async fn ngo_event(hub: &TestHub, key: &str, e: AgencyClockEvent) -> Result<String, tonic::Status> {
    record_directly(hub, "ngo-1", "case-manager", Role::NgoCaseManager, key, e).await
}

async fn an_ngos_service_reports_weekly(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let assignment = assignment_to_ngo(&hub).await;
    let mut started = event(E::ServiceStarted, "service-1", hub.clock.now());
    started.related_message_id = assignment;
    started.responsible_user_id = "case-manager".into();
    ngo_event(&hub, "svc-started-1", started)
        .await
        .expect("recorded");
    hub.settle().await;
    let list = deadlines_of(&hub.staff("ngo-1", "case-manager").await, "service-1").await;
    assert_eq!(list.len(), 1);
    assert_eq!(kind_state(&list[0]), (D::WeeklyProgress, S::Pending));
    assert_eq!(
        due_day(&list[0]),
        jiff::civil::date(2026, 11, 27),
        "7 days on"
    );
    assert_eq!(list[0].responsible_user_id, "case-manager");

    // Reported on Wednesday 25: met, and report no. 2 is due a week on.
    hub.clock.set(ts("2026-11-25T06:00:00Z"));
    ngo_event(
        &hub,
        "svc-progress-1",
        event(E::ServiceProgressReported, "service-1", hub.clock.now()),
    )
    .await
    .expect("recorded");
    hub.settle().await;
    let list = deadlines_of(&hub.staff("ngo-1", "case-manager").await, "service-1").await;
    assert_eq!(list.len(), 2);
    assert_eq!(kind_state(&list[0]), (D::WeeklyProgress, S::Met));
    assert_eq!(kind_state(&list[1]), (D::WeeklyProgress, S::Pending));
    assert_eq!(list[1].action_number, 2);
    assert_eq!(due_day(&list[1]), jiff::civil::date(2026, 12, 2));

    // Ended: the open report is cancelled, for good.
    ngo_event(
        &hub,
        "svc-ended-1",
        event(E::ServiceEnded, "service-1", hub.clock.now()),
    )
    .await
    .expect("recorded");
    hub.settle().await;
    hub.clock.set(ts("2027-01-10T00:00:00Z"));
    hub.settle().await;
    let list = deadlines_of(&hub.staff("ngo-1", "case-manager").await, "service-1").await;
    assert_eq!(kind_state(&list[1]), (D::WeeklyProgress, S::Cancelled));
    assert!(
        alerts_about(&hub.staff("ngo-1", "case-manager").await, "service-1")
            .await
            .is_empty()
    );
    hub.shutdown().await;
}

async fn the_safeguarding_clocks_run_and_the_commissions_decision_answers(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let lead_event = |key: &'static str, e: AgencyClockEvent| {
        let hub = &hub;
        async move {
            record_directly(
                hub,
                "school-1",
                "safeguarding-lead",
                Role::SafeguardingLead,
                key,
                e,
            )
            .await
            .expect("recorded")
        }
    };
    // Phoned at 11:15 on Friday: in writing by 11:15 on Saturday, to the instant.
    let phoned = ts("2026-11-20T06:15:00Z");
    hub.clock.set(phoned);
    lead_event(
        "concern-1-phoned",
        lead_says(E::ConcernPhoned, "concern-1", phoned),
    )
    .await;
    hub.settle().await;
    let list = deadlines_of(
        &hub.staff("school-1", "safeguarding-lead").await,
        "concern-1",
    )
    .await;
    assert_eq!(kind_state(&list[0]), (D::WrittenConfirmation, S::Pending));
    assert_eq!(due_at(&list[0]), ts("2026-11-21T06:15:00Z"));
    hub.clock.set(ts("2026-11-21T06:14:59Z"));
    hub.settle().await;
    assert_eq!(
        kind_state(
            &deadlines_of(
                &hub.staff("school-1", "safeguarding-lead").await,
                "concern-1"
            )
            .await[0]
        )
        .1,
        S::Due
    );
    hub.clock.set(ts("2026-11-21T06:15:00Z"));
    hub.settle().await;
    assert_eq!(
        kind_state(
            &deadlines_of(
                &hub.staff("school-1", "safeguarding-lead").await,
                "concern-1"
            )
            .await[0]
        )
        .1,
        S::Overdue
    );
    assert!(
        alerts_about(
            &hub.staff("school-1", "safeguarding-lead").await,
            "concern-1"
        )
        .await
        .contains(&(S::Overdue, Role::SafeguardingLead))
    );

    // In writing (late), as a K the school really sent: the answer is due in 3 working days.
    let lead = hub.staff("school-1", "safeguarding-lead").await;
    let k = lead
        .client
        .clone()
        .submit_help_request(lead.req(SubmitHelpRequestRequest {
            idempotency_key: "concern-1-k".into(),
            recipient_agency_id: String::new(),
            help_request: Some(referral_core::validate::sample_help_request(hub.today())),
        }))
        .await
        .expect("K submitted")
        .into_inner()
        .message_id;
    hub.delivered(&k).await;
    let mut written = lead_says(E::ConcernReportedInWriting, "concern-1", hub.clock.now());
    written.related_message_id = k.clone();
    lead_event("concern-1-written", written).await;
    hub.settle().await;
    let list = deadlines_of(
        &hub.staff("school-1", "safeguarding-lead").await,
        "concern-1",
    )
    .await;
    assert_eq!(kind_state(&list[0]), (D::WrittenConfirmation, S::Met));
    assert_eq!(
        kind_state(&list[1]),
        (D::ProtectionServiceAnswer, S::Pending)
    );
    // Saturday 21: Monday 23, Tuesday 24, Wednesday 25.
    assert_eq!(due_day(&list[1]), jiff::civil::date(2026, 11, 25));
    assert_eq!(list[1].help_request_message_id, k);

    // The commission decides the K: the answer has come.
    let secretary = hub.staff("commission", "secretary").await;
    let decided = secretary
        .decide(
            &k,
            "concern-1-decision",
            referral_proto::v1::decide_help_request_request::Outcome::NoFurtherAction(
                referral_proto::v1::NoFurtherAction {
                    reason: "the school's measures are enough".into(),
                },
            ),
        )
        .await
        .expect("decided");
    hub.delivered(&decided.decision_message_id).await;
    hub.settle().await;
    let list = deadlines_of(
        &hub.staff("school-1", "safeguarding-lead").await,
        "concern-1",
    )
    .await;
    assert_eq!(kind_state(&list[1]), (D::ProtectionServiceAnswer, S::Met));

    // An allegation recorded on Monday reaches the director by Tuesday.
    hub.clock.set(ts("2026-11-23T05:00:00Z"));
    lead_event(
        "allegation-1-recorded",
        lead_says(E::AllegationRecorded, "allegation-1", hub.clock.now()),
    )
    .await;
    hub.settle().await;
    let list = deadlines_of(
        &hub.staff("school-1", "safeguarding-lead").await,
        "allegation-1",
    )
    .await;
    assert_eq!(list[0].kind, D::AllegationToDirector as i32);
    assert_eq!(due_day(&list[0]), jiff::civil::date(2026, 11, 24));
    lead_event(
        "allegation-1-received",
        event(
            E::AllegationReceivedByDirector,
            "allegation-1",
            hub.clock.now(),
        ),
    )
    .await;
    hub.settle().await;
    assert_eq!(
        kind_state(
            &deadlines_of(
                &hub.staff("school-1", "safeguarding-lead").await,
                "allegation-1"
            )
            .await[0]
        ),
        (D::AllegationToDirector, S::Met)
    );
    hub.shutdown().await;
}

async fn refused_clock_events_store_nothing(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let now = hub.clock.now();
    // A K school-2 sent, which school-1 cannot name as its own written report.
    let other = hub.staff("school-2", "director").await;
    let k = other
        .client
        .clone()
        .submit_help_request(other.req(SubmitHelpRequestRequest {
            idempotency_key: "other-school-k".into(),
            recipient_agency_id: String::new(),
            help_request: Some(referral_core::validate::sample_help_request(hub.today())),
        }))
        .await
        .expect("K submitted")
        .into_inner()
        .message_id;
    hub.delivered(&k).await;
    let ledger_before = hub.gateway_count("ledger").await;

    // The wrong kind of agency.
    let err = record_directly(
        &hub,
        "ngo-1",
        "case-manager",
        Role::NgoCaseManager,
        "wrong-kind-1",
        event(E::IncidentRecorded, "incident-1", now),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = record_directly(
        &hub,
        "school-1",
        "director",
        Role::SchoolDirector,
        "wrong-kind-2",
        event(E::ServiceStarted, "service-1", now),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // Another school's K.
    let mut foreign = event(E::ConcernReportedInWriting, "concern-1", now);
    foreign.related_message_id = k;
    let err = record_directly(
        &hub,
        "school-1",
        "safeguarding-lead",
        Role::SafeguardingLead,
        "foreign-k-1",
        foreign,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(fields(&err), ["event.related_message_id"]);
    // Bad fields, all named at once; an IIN as subject named and never echoed.
    let iin = (0..100)
        .find_map(|serial| {
            referral_core::iin::Iin::generate(
                jiff::civil::date(2014, 5, 2),
                referral_proto::v1::Sex::Male,
                serial,
            )
        })
        .unwrap();
    let bad = AgencyClockEvent {
        kind: E::ConcernPhoned as i32,
        subject_reference: iin.as_str().into(),
        occurred_at: Some(time::to_proto(now + SignedDuration::from_hours(2))),
        urgent: true,
        responsible_user_id: "Айгүл Серікқызы".into(),
        responsible_role: Role::PoliceJuvenileInspector as i32,
        related_message_id: "not-a-message".into(),
    };
    let err = record_directly(
        &hub,
        "school-1",
        "safeguarding-lead",
        Role::SafeguardingLead,
        "bad-fields-1",
        bad,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut named = fields(&err);
    named.sort();
    assert_eq!(
        named,
        [
            "event.occurred_at",
            "event.related_message_id",
            "event.responsible_role",
            "event.responsible_user_id",
            "event.subject_reference",
            "event.urgent",
        ]
    );
    assert!(!format!("{err:?}").contains(iin.as_str()));

    assert_eq!(hub.gateway_count("agency_clock_events").await, 0);
    assert_eq!(hub.gateway_count("ledger").await, ledger_before);
    hub.gateway().settle().await.unwrap();
    let count: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM deadlines WHERE subject_reference <> ''")
            .fetch_one(hub.gateway().database().pool())
            .await
            .unwrap();
    assert_eq!(count, 0);
    hub.shutdown().await;
}
