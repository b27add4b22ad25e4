//! The agency clocks' rules on a real store: every event kind, working days over weekends and
//! holidays in Asia/Almaty, the 24-hour instant, who is alerted, idempotency, replays, order,
//! and the refusals (which store nothing).

use super::*;
use referral_proto::v1::{
    AgencyClockEvent, AgencyClockEventKind as E, RecordAgencyClockEventRequest,
};

/// Friday 20 November 2026, 09:30 in Almaty (an ordinary weekend follows).
const FRIDAY: &str = "2026-11-20T04:30:00Z";

fn user(agency: &str) -> (String, Role) {
    match agency {
        "school-1" => ("safeguarding-lead".into(), Role::SafeguardingLead),
        "school-2" => ("director".into(), Role::SchoolDirector),
        "residential-1" => ("staff".into(), Role::InstitutionStaff),
        "ngo-1" | "ngo-2" => ("case-manager".into(), Role::NgoCaseManager),
        "police-1" => ("inspector".into(), Role::PoliceJuvenileInspector),
        _ => ("secretary".into(), Role::CommissionSecretary),
    }
}

fn event(kind: E, subject: &str, at: Timestamp) -> AgencyClockEvent {
    AgencyClockEvent {
        kind: kind as i32,
        subject_reference: subject.into(),
        occurred_at: Some(time::to_proto(at)),
        ..Default::default()
    }
}

impl Hub {
    /// Records a clock event as `agency` under `key`.
    async fn clock_event_keyed(
        &self,
        agency: &str,
        key: &str,
        event: AgencyClockEvent,
    ) -> Result<(String, bool), ServiceError> {
        let (user_id, role) = user(agency);
        let recorded = self
            .shared
            .record_agency_clock_event(
                &self.agency(agency),
                RecordAgencyClockEventRequest {
                    idempotency_key: key.into(),
                    acting_user: Some(ActingUser {
                        user_id,
                        agency_id: agency.into(),
                        role: role as i32,
                        display_name: "Staff".into(),
                    }),
                    event: Some(event),
                },
            )
            .await?;
        Ok((recorded.event_id, recorded.duplicate))
    }

    async fn clock_event(
        &self,
        agency: &str,
        event: AgencyClockEvent,
    ) -> Result<String, ServiceError> {
        let key = uuid::Uuid::new_v4().to_string();
        Ok(self.clock_event_keyed(agency, &key, event).await?.0)
    }

    /// Records `kind` for `subject` now.
    async fn now_event(&self, agency: &str, kind: E, subject: &str) -> String {
        self.clock_event(agency, event(kind, subject, self.clock.now()))
            .await
            .unwrap()
    }

    /// (kind, state, number, due date, due instant) of every agency clock, in creation order.
    async fn clocks(&self) -> Vec<(DeadlineKind, DeadlineState, i64, String, Timestamp)> {
        sqlx::query(
            "SELECT kind, state, action_number, due_on, due_at FROM deadlines \
             WHERE subject_reference <> '' ORDER BY created_at, deadline_id",
        )
        .fetch_all(self.shared.db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                super::super::model::parse_kind(r.get("kind")),
                super::super::model::parse_state(r.get("state")),
                r.get("action_number"),
                r.get("due_on"),
                time::from_micros(r.get("due_at")),
            )
        })
        .collect()
    }

    async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(self.shared.db.pool())
            .await
            .unwrap()
    }
}

use DeadlineKind as D;
use DeadlineState as S;

#[tokio::test]
async fn an_urgent_incident_is_due_the_same_day_and_tells_the_director_when_missed() {
    let hub = hub(FRIDAY).await;
    let mut urgent = event(E::IncidentRecorded, "incident-1", hub.clock.now());
    urgent.urgent = true;
    hub.clock_event("school-1", urgent).await.unwrap();
    hub.settle().await;
    let clocks = hub.clocks().await;
    assert_eq!(clocks.len(), 1);
    assert_eq!(
        (clocks[0].0, clocks[0].1, clocks[0].3.as_str()),
        (D::InvestigationStart, S::Due, "2026-11-20"),
        "due the day it was reported, and that day has begun"
    );
    // Overdue from the local midnight: 19:00 UTC.
    assert_eq!(clocks[0].4, ts("2026-11-20T19:00:00Z"));
    assert_eq!(
        hub.alert_messages().await,
        [
            ("school-1".into(), S::Warned, Role::SafetyTeamMember),
            ("school-1".into(), S::Due, Role::SafetyTeamMember),
        ]
    );
    hub.clock.set(ts("2026-11-20T18:59:59Z"));
    assert_eq!(hub.settle().await.alerts, 0);
    hub.clock.set(ts("2026-11-20T19:00:00Z"));
    assert_eq!(hub.settle().await.alerts, 1);
    // Overdue: the safety team and the director, never the commission.
    let alerts = hub.alert_messages().await;
    assert_eq!(
        alerts[2..],
        [
            ("school-1".into(), S::Overdue, Role::SafetyTeamMember),
            ("school-1".into(), S::Overdue, Role::SchoolDirector),
        ]
    );
    // Started late, on Monday: met, and the finish is due two working days on (Wednesday).
    hub.clock.set(ts("2026-11-23T04:00:00Z"));
    hub.now_event("school-1", E::InvestigationStarted, "incident-1")
        .await;
    let report = hub.settle().await;
    assert_eq!((report.deadlines_met, report.deadlines_created), (1, 1));
    let clocks = hub.clocks().await;
    assert_eq!(clocks[0].1, S::Met);
    assert_eq!(
        (clocks[1].0, clocks[1].1, clocks[1].3.as_str()),
        (D::InvestigationFinish, S::Pending, "2026-11-25")
    );
    hub.now_event("school-1", E::InvestigationFinished, "incident-1")
        .await;
    assert_eq!(hub.settle().await.deadlines_met, 1);
    assert_eq!(hub.clocks().await[1].1, S::Met);
    // Met is final: nothing more, ever.
    hub.clock.set(ts("2027-01-30T00:00:00Z"));
    assert_eq!(hub.settle().await.alerts, 0);
    // The school lists its own clocks; the commission's district view leaves them out.
    let query = |scope| ListQuery {
        scope,
        states: vec![S::Met],
        responsible_user_id: None,
        case_reference: None,
        page_size: 50,
        after: None,
    };
    let own = list(&hub.shared, &query(Scope::Agency("school-1".into())))
        .await
        .unwrap();
    assert_eq!(own.deadlines.len(), 2);
    assert!(
        own.deadlines
            .iter()
            .all(|d| d.subject_reference == "incident-1")
    );
    let district = list(&hub.shared, &query(Scope::District(DISTRICT.into())))
        .await
        .unwrap();
    assert!(district.deadlines.is_empty());
    // Escalation (of nothing) never reached the commission either.
    assert!(
        hub.alert_messages()
            .await
            .iter()
            .all(|(to, ..)| to == "school-1")
    );
    hub.shared.db.close().await;
}

#[tokio::test]
async fn without_injury_two_working_days_over_a_weekend_and_a_holiday() {
    // Friday 6 March 2026; Monday 9 March is the day off for 8 March: Tuesday 10, Wednesday 11.
    let hub = hub(FRIDAY_BEFORE_HOLIDAY).await;
    hub.now_event("school-1", E::IncidentRecorded, "incident-2")
        .await;
    hub.settle().await;
    let clocks = hub.clocks().await;
    assert_eq!(
        (clocks[0].0, clocks[0].1, clocks[0].3.as_str()),
        (D::InvestigationStart, S::Pending, "2026-03-11")
    );
    assert_eq!(clocks[0].4, ts("2026-03-11T19:00:00Z"));
    // Warned one working day before (Tuesday), not over the weekend.
    hub.clock.set(ts("2026-03-09T18:59:59Z"));
    assert_eq!(hub.settle().await.alerts, 0);
    hub.clock.set(ts("2026-03-09T19:00:00Z"));
    assert_eq!(hub.settle().await.alerts, 1);
    // Overdue, then escalated two days later to the director only.
    hub.clock.set(ts("2026-03-13T19:00:00Z"));
    hub.settle().await;
    let alerts = hub.alert_messages().await;
    assert_eq!(
        alerts.last(),
        Some(&("school-1".into(), S::Escalated, Role::SchoolDirector))
    );
    assert!(alerts.iter().all(|(to, ..)| to == "school-1"));
    // A residential institution's incident goes to its director.
    hub.now_event("residential-1", E::IncidentRecorded, "incident-3")
        .await;
    hub.clock.set(ts("2026-03-20T19:00:00Z"));
    hub.settle().await;
    let alerts = hub.alert_messages().await;
    assert!(alerts.contains(&(
        "residential-1".into(),
        S::Overdue,
        Role::InstitutionDirector
    )));
    assert!(alerts.contains(&("residential-1".into(), S::Overdue, Role::InstitutionStaff)));
    hub.shared.db.close().await;
}

#[tokio::test]
async fn the_written_confirmation_is_due_24_hours_after_the_call_to_the_instant() {
    let hub = hub(FRIDAY).await;
    let phoned = ts("2026-11-20T06:15:00Z");
    hub.clock.set(phoned);
    hub.now_event("school-1", E::ConcernPhoned, "concern-1")
        .await;
    hub.settle().await;
    let clocks = hub.clocks().await;
    assert_eq!(clocks[0].0, D::WrittenConfirmation);
    assert_eq!(clocks[0].4, ts("2026-11-21T06:15:00Z"), "24 hours exactly");
    // Warned (and due) six hours before, overdue at the instant, not at the end of the day.
    hub.clock.set(ts("2026-11-21T00:14:59Z"));
    assert_eq!(hub.settle().await.alerts, 0);
    hub.clock.set(ts("2026-11-21T06:14:59Z"));
    assert_eq!(hub.settle().await.alerts, 2);
    hub.clock.set(ts("2026-11-21T06:15:00Z"));
    assert_eq!(hub.settle().await.alerts, 1);
    assert_eq!(hub.clocks().await[0].1, S::Overdue);
    assert_eq!(
        hub.alert_messages().await[2..],
        [
            ("school-1".into(), S::Overdue, Role::SafeguardingLead),
            ("school-1".into(), S::Overdue, Role::SchoolDirector),
        ]
    );
    hub.shared.db.close().await;
}

#[tokio::test]
async fn a_written_report_is_answered_in_three_working_days_or_by_the_commissions_decision() {
    let hub = hub(FRIDAY_BEFORE_HOLIDAY).await;
    hub.now_event("school-1", E::ConcernPhoned, "concern-2")
        .await;
    let k = hub.help_request_delivered().await;
    let mut written = event(E::ConcernReportedInWriting, "concern-2", hub.clock.now());
    written.related_message_id = k.clone();
    hub.clock_event("school-1", written).await.unwrap();
    hub.settle().await;
    let clocks = hub.clocks().await;
    assert_eq!(clocks[0].0, D::WrittenConfirmation);
    assert_eq!(clocks[0].1, S::Met);
    // Friday 6 March; Monday 9 is a day off: 10, 11, 12 March.
    assert_eq!(
        (clocks[1].0, clocks[1].1, clocks[1].3.as_str()),
        (D::ProtectionServiceAnswer, S::Pending, "2026-03-12")
    );
    // No answer by then: "contact them again", to the lead (and the director).
    hub.clock.set(ts("2026-03-12T19:00:00Z"));
    hub.settle().await;
    assert!(hub.alert_messages().await.contains(&(
        "school-1".into(),
        S::Overdue,
        Role::SafeguardingLead
    )));
    // The commission decides the K: the answer has come, late, and the deadline is met.
    hub.send(
        "commission",
        Role::CommissionSecretary,
        "school-1",
        decision(&k, "KZ-2026-1"),
        &k,
    )
    .await
    .unwrap();
    hub.settle().await;
    let clocks = hub.clocks().await;
    assert_eq!(clocks[1].1, S::Met);
    // A second written report of the K, applied after the decision, is created met.
    let mut again = event(E::ConcernReportedInWriting, "concern-3", hub.clock.now());
    again.related_message_id = k.clone();
    hub.clock_event("school-1", again).await.unwrap();
    hub.settle().await;
    assert_eq!(hub.clocks().await[2].1, S::Met);
    hub.shared.db.close().await;
}

#[tokio::test]
async fn the_lead_may_record_the_answer_and_an_allegation_reaches_the_director_in_a_working_day() {
    let hub = hub(FRIDAY_BEFORE_HOLIDAY).await;
    let k = hub.help_request_delivered().await;
    let mut written = event(E::ConcernReportedInWriting, "concern-4", hub.clock.now());
    written.related_message_id = k;
    hub.clock_event("school-1", written).await.unwrap();
    hub.now_event("school-1", E::ProtectionServiceAnswered, "concern-4")
        .await;
    hub.now_event("school-1", E::AllegationRecorded, "allegation-1")
        .await;
    hub.settle().await;
    let clocks = hub.clocks().await;
    assert_eq!(
        (clocks[0].0, clocks[0].1),
        (D::ProtectionServiceAnswer, S::Met)
    );
    // Friday 6 March: the next working day is Tuesday 10 March.
    assert_eq!(
        (clocks[1].0, clocks[1].1, clocks[1].3.as_str()),
        (D::AllegationToDirector, S::Warned, "2026-03-10")
    );
    hub.clock.set(ts("2026-03-10T19:00:00Z"));
    hub.settle().await;
    assert!(hub.alert_messages().await.contains(&(
        "school-1".into(),
        S::Overdue,
        Role::SchoolDirector
    )));
    hub.now_event("school-1", E::AllegationReceivedByDirector, "allegation-1")
        .await;
    hub.settle().await;
    assert_eq!(hub.clocks().await[1].1, S::Met);
    hub.shared.db.close().await;
}

#[tokio::test]
async fn a_service_reports_weekly_each_report_opens_the_next_and_the_end_cancels() {
    let hub = hub(FRIDAY).await;
    hub.record(CaseEventKind::CaseOpened, 1, |_| {})
        .await
        .unwrap();
    hub.record(CaseEventKind::AssessmentFiled, 1, |e| {
        e.risk_level = RiskLevel::Low as i32
    })
    .await
    .unwrap();
    hub.record(CaseEventKind::SupportPlanFiled, 1, |e| {
        e.actions = vec![row(1, jiff::civil::date(2026, 12, 20), "ngo-1")]
    })
    .await
    .unwrap();
    let assignment = hub
        .assign_to_ngo(1, "Weekly sessions", jiff::civil::date(2026, 12, 20))
        .await;
    let mut started = event(E::ServiceStarted, "service-1", hub.clock.now());
    started.related_message_id = assignment;
    started.responsible_user_id = "case-manager".into();
    hub.clock_event("ngo-1", started).await.unwrap();
    hub.settle().await;
    let clocks = hub.clocks().await;
    assert_eq!(
        (clocks[0].0, clocks[0].1, clocks[0].2, clocks[0].3.as_str()),
        (D::WeeklyProgress, S::Pending, 1, "2026-11-27")
    );
    // Reported on Thursday 26: met, and the next is due a week on.
    hub.clock.set(ts("2026-11-26T06:00:00Z"));
    hub.now_event("ngo-1", E::ServiceProgressReported, "service-1")
        .await;
    hub.settle().await;
    let clocks = hub.clocks().await;
    assert_eq!(clocks[0].1, S::Met);
    assert_eq!(
        (clocks[1].1, clocks[1].2, clocks[1].3.as_str()),
        (S::Pending, 2, "2026-12-03")
    );
    // The case manager the start named stays responsible for the next report.
    let users: Vec<String> = sqlx::query_scalar(
        "SELECT responsible_user_id FROM deadlines WHERE subject_reference = 'service-1' \
         ORDER BY action_number",
    )
    .fetch_all(hub.shared.db.pool())
    .await
    .unwrap();
    assert_eq!(users, ["case-manager", "case-manager"]);
    // Late: the NGO; not the commission that assigned the service (it has its own deadline for
    // the plan row; only a referring school or institution is told of late reports).
    hub.clock.set(ts("2026-12-03T19:00:00Z"));
    hub.settle().await;
    let alerts = hub.alert_messages().await;
    assert!(alerts.contains(&("ngo-1".into(), S::Overdue, Role::NgoCaseManager)));
    assert!(
        !alerts.iter().any(|(agency, _, _)| agency == "commission"),
        "{alerts:?}"
    );
    // Ended: cancelled, and a report after the end opens nothing.
    hub.now_event("ngo-1", E::ServiceEnded, "service-1").await;
    hub.now_event("ngo-1", E::ServiceProgressReported, "service-1")
        .await;
    hub.settle().await;
    let clocks = hub.clocks().await;
    assert_eq!(clocks.len(), 2);
    assert_eq!(clocks[1].1, S::Cancelled);
    hub.shared.db.close().await;
}

#[tokio::test]
async fn replays_create_nothing_and_a_meeting_event_first_leaves_the_deadline_met() {
    let hub = hub(FRIDAY).await;
    // Started applied before the report (another order of the same subject's events).
    hub.now_event("school-1", E::InvestigationStarted, "incident-9")
        .await;
    hub.now_event("school-1", E::IncidentRecorded, "incident-9")
        .await;
    hub.settle().await;
    let clocks = hub.clocks().await;
    let start = clocks
        .iter()
        .find(|c| c.0 == D::InvestigationStart)
        .unwrap();
    assert_eq!(start.1, S::Met);
    // The same key and event: one event; another event under the key: ALREADY_EXISTS.
    let e = event(E::AllegationRecorded, "allegation-9", hub.clock.now());
    let (id, duplicate) = hub
        .clock_event_keyed("school-1", "allegation-9-key", e.clone())
        .await
        .unwrap();
    assert!(!duplicate);
    let (again, duplicate) = hub
        .clock_event_keyed("school-1", "allegation-9-key", e)
        .await
        .unwrap();
    assert_eq!((again, duplicate), (id, true));
    let err = hub
        .clock_event_keyed(
            "school-1",
            "allegation-9-key",
            event(E::AllegationRecorded, "allegation-10", hub.clock.now()),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::AlreadyExists(_)), "{err:?}");
    hub.settle().await;
    let before = hub.clocks().await;
    // Re-applying the whole ledger creates nothing and changes no state.
    sqlx::query("UPDATE deadline_cursor SET last_seq = 0")
        .execute(hub.shared.db.pool())
        .await
        .unwrap();
    let replay = hub.settle().await;
    assert_eq!((replay.deadlines_created, replay.alerts), (0, 0));
    assert_eq!(hub.clocks().await, before);
    hub.shared.db.close().await;
}

#[tokio::test]
async fn refusals_name_the_reason_and_store_nothing() {
    let hub = hub(FRIDAY).await;
    let k_of_school_2 = hub
        .send(
            "school-2",
            Role::SchoolDirector,
            "commission",
            payload::Form::HelpRequest(validate::sample_help_request(hub.local_today())),
            "",
        )
        .await
        .unwrap();
    let ledger_before = hub.count("ledger").await;
    let now = hub.clock.now();
    // Wrong kind of agency.
    for (agency, kind) in [
        ("police-1", E::IncidentRecorded),
        ("ngo-1", E::IncidentRecorded),
        ("commission", E::AllegationRecorded),
        ("school-1", E::ServiceStarted),
        ("health-1", E::ConcernPhoned),
    ] {
        let err = hub
            .clock_event(agency, event(kind, "subject-1", now))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ServiceError::PermissionDenied(_)),
            "{agency} {kind:?}: {err:?}"
        );
    }
    // A K another school sent, and a message that does not exist.
    let mut foreign = event(E::ConcernReportedInWriting, "concern-1", now);
    foreign.related_message_id = k_of_school_2.clone();
    let err = hub.clock_event("school-1", foreign).await.unwrap_err();
    assert!(
        matches!(&err, ServiceError::InvalidArgument(v) if v.contains("event.related_message_id")),
        "{err:?}"
    );
    let mut missing = event(E::ServiceStarted, "service-1", now);
    missing.related_message_id = uuid::Uuid::now_v7().to_string();
    let err = hub.clock_event("ngo-1", missing).await.unwrap_err();
    assert!(
        matches!(&err, ServiceError::InvalidArgument(v) if v.contains("event.related_message_id")),
        "{err:?}"
    );
    // Bad fields, each named.
    let iin = (0..100)
        .find_map(|serial| {
            referral_core::iin::Iin::generate(
                jiff::civil::date(2014, 5, 2),
                referral_proto::v1::Sex::Male,
                serial,
            )
        })
        .unwrap();
    let cases: Vec<(AgencyClockEvent, &str)> = vec![
        (event(E::Unspecified, "s-1", now), "event.kind"),
        (
            event(E::IncidentRecorded, "", now),
            "event.subject_reference",
        ),
        (
            event(E::IncidentRecorded, "has space", now),
            "event.subject_reference",
        ),
        (
            event(E::IncidentRecorded, &"x".repeat(129), now),
            "event.subject_reference",
        ),
        (
            event(E::IncidentRecorded, iin.as_str(), now),
            "event.subject_reference",
        ),
        (
            event(E::IncidentRecorded, &format!("child-{}", iin.as_str()), now),
            "event.subject_reference",
        ),
        (
            AgencyClockEvent {
                occurred_at: None,
                ..event(E::IncidentRecorded, "s-1", now)
            },
            "event.occurred_at",
        ),
        (
            event(
                E::IncidentRecorded,
                "s-1",
                now + SignedDuration::from_hours(1),
            ),
            "event.occurred_at",
        ),
        (
            AgencyClockEvent {
                urgent: true,
                ..event(E::ConcernPhoned, "s-1", now)
            },
            "event.urgent",
        ),
        (
            AgencyClockEvent {
                responsible_user_id: "no body".into(),
                ..event(E::ConcernPhoned, "s-1", now)
            },
            "event.responsible_user_id",
        ),
        (
            AgencyClockEvent {
                responsible_user_id: "x".repeat(201),
                ..event(E::ConcernPhoned, "s-1", now)
            },
            "event.responsible_user_id",
        ),
        (
            AgencyClockEvent {
                responsible_role: Role::NgoCaseManager as i32,
                ..event(E::ConcernPhoned, "s-1", now)
            },
            "event.responsible_role",
        ),
        (
            event(E::ConcernReportedInWriting, "s-1", now),
            "event.related_message_id",
        ),
        (
            AgencyClockEvent {
                related_message_id: "not-an-id".into(),
                ..event(E::ConcernReportedInWriting, "s-1", now)
            },
            "event.related_message_id",
        ),
    ];
    for (bad, field) in cases {
        let err = hub.clock_event("school-1", bad).await.unwrap_err();
        assert!(
            matches!(&err, ServiceError::InvalidArgument(v) if v.contains(field)),
            "{field}: {err:?}"
        );
        // The message names the field and what is expected, never the value.
        assert!(!err.to_string().contains(iin.as_str()));
    }
    let err = hub
        .clock_event_keyed("school-1", "short", event(E::ConcernPhoned, "s-1", now))
        .await
        .unwrap_err();
    assert!(matches!(&err, ServiceError::InvalidArgument(v) if v.contains("idempotency_key")));
    // The acting user of another agency, or in a role of another kind.
    let request = |agency: &str, role: Role| RecordAgencyClockEventRequest {
        idempotency_key: uuid::Uuid::new_v4().to_string(),
        acting_user: Some(ActingUser {
            user_id: "someone".into(),
            agency_id: agency.into(),
            role: role as i32,
            display_name: String::new(),
        }),
        event: Some(event(E::ConcernPhoned, "s-1", now)),
    };
    for req in [
        request("school-2", Role::SchoolDirector),
        request("school-1", Role::CommissionChair),
    ] {
        let err = hub
            .shared
            .record_agency_clock_event(&hub.agency("school-1"), req)
            .await
            .unwrap_err();
        assert!(matches!(err, ServiceError::PermissionDenied(_)), "{err:?}");
    }
    assert_eq!(hub.count("agency_clock_events").await, 0);
    assert_eq!(hub.count("ledger").await, ledger_before);
    hub.settle().await;
    assert!(hub.clocks().await.is_empty());
    hub.shared.db.close().await;
}

#[tokio::test]
async fn an_idempotency_key_stands_for_the_event_and_who_records_it() {
    let hub = hub(FRIDAY).await;
    let e = event(E::AllegationRecorded, "allegation-7", hub.clock.now());
    let request = |user: &str, role: Role| RecordAgencyClockEventRequest {
        idempotency_key: "allegation-7-recorded".into(),
        acting_user: Some(ActingUser {
            user_id: user.into(),
            agency_id: "school-1".into(),
            role: role as i32,
            display_name: "Staff".into(),
        }),
        event: Some(e.clone()),
    };
    let school = hub.agency("school-1");
    let first = hub
        .shared
        .record_agency_clock_event(&school, request("safety-team", Role::SafetyTeamMember))
        .await
        .unwrap();
    assert!(!first.duplicate);
    // The same user, role and event: the same event, recorded once.
    let again = hub
        .shared
        .record_agency_clock_event(&school, request("safety-team", Role::SafetyTeamMember))
        .await
        .unwrap();
    assert_eq!((again.event_id, again.duplicate), (first.event_id, true));
    // The same event under the key from someone else, or from the same user in another role:
    // another request, refused (the ledger's entry names who recorded it).
    for (user, role) in [
        ("director", Role::SchoolDirector),
        ("safety-team-2", Role::SafetyTeamMember),
        ("safety-team", Role::SafeguardingDeputy),
    ] {
        let err = hub
            .shared
            .record_agency_clock_event(&school, request(user, role))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ServiceError::AlreadyExists(_)),
            "{user} {role:?}: {err:?}"
        );
    }
    assert_eq!(hub.count("agency_clock_events").await, 1);
    hub.shared.db.close().await;
}

/// (subject, state, met at) of every PROTECTION_SERVICE_ANSWER deadline, by subject.
async fn answers(hub: &Hub) -> Vec<(String, DeadlineState, Option<i64>)> {
    sqlx::query(
        "SELECT subject_reference, state, met_at FROM deadlines WHERE kind = $1 \
         ORDER BY subject_reference",
    )
    .bind(D::ProtectionServiceAnswer.as_str_name())
    .fetch_all(hub.shared.db.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get("subject_reference"),
            super::super::model::parse_state(r.get("state")),
            r.get("met_at"),
        )
    })
    .collect()
}

#[tokio::test]
async fn the_answer_deadline_ends_by_the_ledgers_order_whenever_the_engine_runs() {
    let hub = hub(FRIDAY_BEFORE_HOLIDAY).await;
    let written = |subject: &str, k: &str, at| AgencyClockEvent {
        related_message_id: k.into(),
        ..event(E::ConcernReportedInWriting, subject, at)
    };
    let decide = |k: String, case: &'static str| {
        let hub = &hub;
        async move {
            hub.send(
                "commission",
                Role::CommissionSecretary,
                "school-1",
                decision(&k, case),
                &k,
            )
            .await
            .unwrap();
        }
    };
    let (k1, k2, k3) = (
        hub.help_request_delivered().await,
        hub.help_request_delivered().await,
        hub.help_request_delivered().await,
    );
    let t0 = hub.clock.now();
    // Written report, then the decision: once with the engine run between the two...
    hub.clock_event("school-1", written("concern-a", &k1, t0))
        .await
        .unwrap();
    hub.settle().await;
    // ... once with the engine run only after both (the decision's row is there by then).
    hub.clock_event("school-1", written("concern-b", &k2, t0))
        .await
        .unwrap();
    hub.clock.set(t0 + SignedDuration::from_hours(1));
    decide(k1, "KZ-2026-1").await;
    decide(k2, "KZ-2026-2").await;
    let decided_at = time::to_micros(hub.clock.now());
    // The decision first, then the written report: created met.
    decide(k3.clone(), "KZ-2026-3").await;
    hub.clock.set(t0 + SignedDuration::from_hours(2));
    hub.clock_event("school-1", written("concern-c", &k3, hub.clock.now()))
        .await
        .unwrap();
    let written_after = time::to_micros(hub.clock.now());
    hub.settle().await;
    let live = answers(&hub).await;
    assert_eq!(
        live,
        [
            ("concern-a".into(), S::Met, Some(decided_at)),
            ("concern-b".into(), S::Met, Some(decided_at)),
            ("concern-c".into(), S::Met, Some(written_after)),
        ],
        "pending until the decision's entry, whenever the engine ran; met from the start when \
         the decision came first"
    );
    // Replayed from an empty deadline table, the ledger ends them the same.
    sqlx::query("DELETE FROM deadline_alerts")
        .execute(hub.shared.db.pool())
        .await
        .unwrap();
    sqlx::query("DELETE FROM deadlines WHERE subject_reference <> ''")
        .execute(hub.shared.db.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE deadline_cursor SET last_seq = 0")
        .execute(hub.shared.db.pool())
        .await
        .unwrap();
    hub.settle().await;
    assert_eq!(answers(&hub).await, live);
    hub.shared.db.close().await;
}

#[tokio::test]
async fn an_allegation_against_the_director_is_told_to_the_lead_alone() {
    let hub = hub(FRIDAY).await;
    hub.clock_event(
        "school-1",
        AgencyClockEvent {
            responsible_user_id: "safeguarding-lead".into(),
            responsible_role: Role::SafeguardingLead as i32,
            ..event(E::AllegationRecorded, "allegation-5", hub.clock.now())
        },
    )
    .await
    .unwrap();
    hub.settle().await;
    // Friday 20 November: due by Monday's end; escalated long after.
    hub.clock.set(ts("2026-12-31T00:00:00Z"));
    hub.settle().await;
    let alerts = hub.alert_messages().await;
    let states: Vec<DeadlineState> = alerts.iter().map(|a| a.1).collect();
    assert!(
        states.contains(&S::Overdue) && states.contains(&S::Escalated),
        "{alerts:?}"
    );
    assert!(
        alerts
            .iter()
            .all(|(to, _, role)| to == "school-1" && *role == Role::SafeguardingLead),
        "never the director: {alerts:?}"
    );
    hub.shared.db.close().await;
}
