//! Acceptance 2 and 3 of issue 3: deadlines on edge dates (a holiday weekend, a month end,
//! 31 August, local midnight), and alerts raised exactly once across gateway crashes. Each on
//! SQLite and on PostgreSQL, through the real services, gateway and engine.

use jiff::{SignedDuration, Timestamp, civil::Date, tz::TimeZone};
use referral_core::validate;
use referral_proto::v1::{
    DeadlineKind, DeadlineState, FormKind, ListDeadlinesRequest, ListInboxRequest,
    SubmitHelpRequestRequest, WatchDeadlinesRequest,
};
use referral_tests::{Backend, StaffClient, TestHub, both_backends};

fn almaty() -> TimeZone {
    TimeZone::get("Asia/Almaty").unwrap()
}

fn local(hub: &TestHub) -> Date {
    hub.clock.now().to_zoned(almaty()).date()
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

async fn submit_k(hub: &TestHub, key: &str) -> String {
    let director = hub.staff("school-1", "director").await;
    let id = director
        .client
        .clone()
        .submit_help_request(director.req(SubmitHelpRequestRequest {
            idempotency_key: key.into(),
            recipient_agency_id: String::new(),
            help_request: Some(validate::sample_help_request(local(hub))),
        }))
        .await
        .expect("K submitted")
        .into_inner()
        .message_id;
    hub.delivered(&id).await;
    id
}

/// The commission's deadlines of one kind (any state), through the secretary's staff API.
async fn deadlines_of(
    staff: &StaffClient,
    kind: DeadlineKind,
    case: &str,
) -> Vec<referral_proto::v1::Deadline> {
    let all = [
        DeadlineState::Pending,
        DeadlineState::Warned,
        DeadlineState::Due,
        DeadlineState::Overdue,
        DeadlineState::Escalated,
        DeadlineState::Met,
        DeadlineState::Cancelled,
    ];
    staff
        .client
        .clone()
        .list_deadlines(staff.req(ListDeadlinesRequest {
            states: all.iter().map(|s| *s as i32).collect(),
            case_reference: case.into(),
            ..Default::default()
        }))
        .await
        .expect("deadlines list")
        .into_inner()
        .deadlines
        .into_iter()
        .filter(|d| d.kind == kind as i32)
        .collect()
}

fn due_at(d: &referral_proto::v1::Deadline) -> Timestamp {
    referral_core::time::from_proto(d.due_at.as_ref().unwrap()).unwrap()
}

// A K received on the Friday before the Nauryz holidays (Monday 23 March 2026, with the days off
// moved to Tuesday and Wednesday): 3 working days are Thursday 26, Friday 27 and Monday 30 March.
async fn a_k_before_a_holiday_weekend_is_due_after_the_holidays(backend: Backend) {
    let hub = TestHub::start(backend).await;
    hub.clock.set(ts("2026-03-20T05:00:00Z")); // Friday, 10:00 in Almaty
    let k = submit_k(&hub, "holiday-k").await;
    hub.gateway().settle().await.unwrap();
    let secretary = hub.staff("commission", "secretary").await;
    let list = deadlines_of(&secretary, DeadlineKind::HelpRequestDecision, "").await;
    let d = list
        .iter()
        .find(|d| d.help_request_message_id == k)
        .expect("a decision clock runs for the K");
    assert_eq!(
        due_at(d),
        ts("2026-03-30T19:00:00Z"),
        "due at the end of Monday 30 March"
    );
    assert_eq!(d.responsible_agency_id, "commission");
    hub.shutdown().await;
}

// An assessment period crossing a month end, and an opening one second either side of local
// midnight.
async fn assessment_clocks_follow_the_local_calendar(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let secretary = hub.staff("commission", "secretary").await;
    for (opened, due_on) in [
        ("2026-01-20T05:00:00Z", jiff::civil::date(2026, 2, 10)),
        // 23:59:59 on 20 January in Almaty: still the 20th.
        ("2026-01-20T18:59:59Z", jiff::civil::date(2026, 2, 10)),
        // 00:00:00 on 21 January in Almaty.
        ("2026-01-20T19:00:00Z", jiff::civil::date(2026, 2, 11)),
    ] {
        hub.clock.set(ts(opened));
        let case = hub.open_case(&format!("month-end-{opened}")).await;
        hub.gateway().settle().await.unwrap();
        let list = deadlines_of(&secretary, DeadlineKind::Assessment, &case).await;
        assert_eq!(list.len(), 1, "{opened}");
        let due_day =
            referral_core::time::from_proto(list[0].due_day_starts_at.as_ref().unwrap()).unwrap();
        assert_eq!(due_day.to_zoned(almaty()).date(), due_on, "opened {opened}");
    }
    hub.shutdown().await;
}

// A deadline becomes overdue exactly at local midnight after its due day, not a second earlier.
async fn a_deadline_turns_overdue_at_local_midnight(backend: Backend) {
    let hub = TestHub::start(backend).await;
    hub.clock.set(ts("2026-01-20T05:00:00Z"));
    let case = hub.open_case("midnight").await;
    let secretary = hub.staff("commission", "secretary").await;
    hub.gateway().settle().await.unwrap();
    let due = due_at(&deadlines_of(&secretary, DeadlineKind::Assessment, &case).await[0]);
    assert_eq!(due, ts("2026-02-10T19:00:00Z"));
    hub.clock.set(due - SignedDuration::from_secs(1));
    hub.gateway().settle().await.unwrap();
    // Weeks later: the secretary logs in again.
    let secretary = hub.staff("commission", "secretary").await;
    let d = &deadlines_of(&secretary, DeadlineKind::Assessment, &case).await[0];
    assert_eq!(
        d.state,
        DeadlineState::Due as i32,
        "one second before midnight"
    );
    hub.clock.set(due);
    hub.gateway().settle().await.unwrap();
    let d = &deadlines_of(&secretary, DeadlineKind::Assessment, &case).await[0];
    assert_eq!(d.state, DeadlineState::Overdue as i32, "at midnight");
    hub.shutdown().await;
}

// Acceptance 3: kill and restart the gateway between the warning and the due instant; no alert
// is lost or repeated, and each reaches the commission's inbox once.
async fn alerts_are_raised_once_across_gateway_crashes(backend: Backend) {
    let hub = TestHub::start(backend).await;
    hub.clock.set(ts("2026-01-20T05:00:00Z"));
    let case = hub.open_case("crash-alerts").await;
    let secretary = hub.staff("commission", "secretary").await;
    hub.gateway().settle().await.unwrap();
    let d = deadlines_of(&secretary, DeadlineKind::Assessment, &case).await[0].clone();
    let warn_at = referral_core::time::from_proto(d.warn_at.as_ref().unwrap()).unwrap();
    let due_day = referral_core::time::from_proto(d.due_day_starts_at.as_ref().unwrap()).unwrap();

    hub.clock.set(warn_at);
    hub.gateway().settle().await.unwrap();
    hub.gateway().settle().await.unwrap();
    hub.crash_and_restart_gateway().await.unwrap();
    hub.gateway().settle().await.unwrap();
    // The secretary logs in on the morning the deadline falls due.
    hub.clock.set(due_day - SignedDuration::from_mins(5));
    let secretary = hub.staff("commission", "secretary").await;

    // Someone watches the deadlines when the due day begins.
    let mut watch = secretary
        .client
        .clone()
        .watch_deadlines(secretary.req(WatchDeadlinesRequest::default()))
        .await
        .expect("watching")
        .into_inner();
    hub.clock.set(due_day);
    hub.gateway().settle().await.unwrap();
    let alert = tokio::time::timeout(std::time::Duration::from_secs(30), watch.message())
        .await
        .expect("an alert arrives")
        .expect("the stream is healthy")
        .expect("an alert");
    assert_eq!(alert.state, DeadlineState::Due as i32);
    assert_eq!(alert.deadline.as_ref().unwrap().case_reference, case);

    hub.crash_and_restart_gateway().await.unwrap();
    hub.gateway().settle().await.unwrap();

    let states: Vec<String> = sqlx::query_scalar(
        "SELECT a.state FROM deadline_alerts a JOIN deadlines d ON d.deadline_id = a.deadline_id \
         WHERE d.case_reference = $1 ORDER BY a.raised_at",
    )
    .bind(&case)
    .fetch_all(hub.gateway().database().pool())
    .await
    .unwrap();
    assert_eq!(
        states,
        ["DEADLINE_STATE_WARNED", "DEADLINE_STATE_DUE"],
        "each alert exactly once"
    );
    // Rows the crashed gateway had leased are taken over when their lease runs out.
    hub.clock.advance(SignedDuration::from_mins(2));
    hub.deliver_everything().await;
    let secretary = hub.staff("commission", "secretary").await;
    let alerts = secretary
        .client
        .clone()
        .list_inbox(secretary.req(ListInboxRequest {
            form_kind: FormKind::DeadlineAlert as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(alerts.len(), 2, "the commission receives each alert once");
    hub.gateway()
        .verify_ledger()
        .await
        .expect("the ledger holds");
    hub.shutdown().await;
}

// A plan filed on 31 August is reviewed 6 months later: on the last day of February.
async fn a_review_from_31_august_is_due_on_the_last_day_of_february(backend: Backend) {
    use referral_proto::v1::{
        FileAssessmentRequest, FileSupportPlanRequest, GetCaseRequest, RiskLevel,
    };
    use referral_tests::samples::{row, sample_assessment, sample_plan};
    let hub = TestHub::start(backend).await;
    hub.clock.set(ts("2026-08-31T05:00:00Z"));
    let case = hub.open_case("31-august").await;
    let curator = hub.staff("commission", "curator-1").await;
    let version = |file: referral_proto::v1::CaseFile| file.summary.unwrap().version;
    let v = version(
        curator
            .case_files()
            .get_case(curator.req(GetCaseRequest {
                case_reference: case.clone(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner(),
    );
    let today = local(&hub);
    let v = curator
        .case_files()
        .file_assessment(curator.req(FileAssessmentRequest {
            case_reference: case.clone(),
            base_version: v,
            assessment: Some(sample_assessment(today)),
            risk_level: RiskLevel::Medium as i32,
        }))
        .await
        .expect("L filed")
        .into_inner()
        .version;
    curator
        .case_files()
        .file_support_plan(curator.req(FileSupportPlanRequest {
            case_reference: case.clone(),
            base_version: v,
            idempotency_key: "31-august-plan".into(),
            plan: Some(sample_plan(
                today,
                vec![row(1, today + jiff::ToSpan::days(30), "ngo-1")],
            )),
            first_review_on: None,
        }))
        .await
        .expect("M filed");
    hub.gateway().settle().await.unwrap();
    let secretary = hub.staff("commission", "secretary").await;
    let reviews = deadlines_of(&secretary, DeadlineKind::PlanReview, &case).await;
    assert_eq!(reviews.len(), 1);
    let due_day =
        referral_core::time::from_proto(reviews[0].due_day_starts_at.as_ref().unwrap()).unwrap();
    assert_eq!(
        due_day.to_zoned(almaty()).date(),
        jiff::civil::date(2027, 2, 28)
    );
    hub.shutdown().await;
}

both_backends!(
    a_review_from_31_august_is_due_on_the_last_day_of_february,
    a_k_before_a_holiday_weekend_is_due_after_the_holidays,
    assessment_clocks_follow_the_local_calendar,
    a_deadline_turns_overdue_at_local_midnight,
    alerts_are_raised_once_across_gateway_crashes,
);

// A review held early that fixes the next review on the date the met one had still starts a new
// review clock: a met deadline is never resurrected, and a new obligation is never lost.
async fn a_review_on_the_same_date_as_the_last_one_starts_a_new_clock(backend: Backend) {
    use referral_proto::v1::{
        ActingUser, CaseEvent, CaseEventKind, RecordCaseEventRequest, RiskLevel, Role,
    };
    use referral_tests::samples::cd;
    let hub = TestHub::start(backend).await;
    let gateway = hub.gateway_client_as("commission").await;
    let curator = Some(ActingUser {
        user_id: "curator-1".into(),
        agency_id: "commission".into(),
        role: Role::CommissionCurator as i32,
        display_name: String::new(),
    });
    let case = "SAME-DATE-1";
    let review_on = jiff::civil::date(2027, 1, 15);
    let record = |n: u32, kind: CaseEventKind, next: Option<Date>| {
        let mut event = CaseEvent {
            case_reference: case.into(),
            kind: kind as i32,
            occurred_at: Some(referral_core::time::to_proto(hub.clock.now())),
            cycle: 1,
            curator_user_id: "curator-1".into(),
            risk_level: RiskLevel::Medium as i32,
            next_review_on: next.map(cd),
            ..Default::default()
        };
        if kind == CaseEventKind::CaseOpened {
            event.help_request_message_id = uuid::Uuid::now_v7().to_string();
        }
        let request = RecordCaseEventRequest {
            idempotency_key: format!("same-date-event-{n}"),
            acting_user: curator.clone(),
            event: Some(event),
        };
        let mut gateway = gateway.clone();
        async move {
            gateway
                .record_case_event(request)
                .await
                .expect("event recorded")
        }
    };
    record(1, CaseEventKind::CaseOpened, None).await;
    record(2, CaseEventKind::AssessmentFiled, None).await;
    record(3, CaseEventKind::SupportPlanFiled, Some(review_on)).await;
    // The review meets early and fixes the next review on the same day.
    record(4, CaseEventKind::ReviewHeld, Some(review_on)).await;
    hub.gateway().settle().await.unwrap();
    let reviews: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, action_number FROM deadlines WHERE case_reference = $1 \
         AND kind = 'DEADLINE_KIND_PLAN_REVIEW' ORDER BY action_number",
    )
    .bind(case)
    .fetch_all(hub.gateway().database().pool())
    .await
    .unwrap();
    assert_eq!(
        reviews,
        [
            ("DEADLINE_STATE_MET".to_string(), 0),
            ("DEADLINE_STATE_PENDING".to_string(), 1)
        ],
        "the plan's review is met and the review's own clock runs"
    );
    hub.shutdown().await;
}

both_backends!(a_review_on_the_same_date_as_the_last_one_starts_a_new_clock);

// A row moved to another agency on the same date is another obligation: the first agency's
// deadline is cancelled, the new agency's clock runs, and only the new agency can meet it.
async fn a_row_moved_to_another_agency_gets_its_own_clock(backend: Backend) {
    use referral_proto::v1::{
        ActingUser, ActionAssignment, ActionDeadline, ActionProgress, ActionProgressState,
        CaseEvent, CaseEventKind, ConfidentialityLabel, Envelope, Payload, PlanAction,
        PurposeOfUse, RecordCaseEventRequest, RiskLevel, Role, SendRequest, payload,
    };
    use referral_tests::samples::cd;
    let hub = TestHub::start_with(
        backend,
        referral_tests::HubOptions {
            start_agencies: false,
            run_delivery_worker: false,
            run_deadline_engine: false,
            ..Default::default()
        },
    )
    .await;
    let commission = hub.gateway_client_as("commission").await;
    let curator = Some(ActingUser {
        user_id: "curator-1".into(),
        agency_id: "commission".into(),
        role: Role::CommissionCurator as i32,
        display_name: String::new(),
    });
    let case = "MOVED-ROW-1";
    let due = jiff::civil::date(2027, 1, 15);
    let row = |agency: &str| ActionDeadline {
        number: 1,
        due_on: Some(cd(due)),
        responsible_agency_id: agency.into(),
        responsible_person: String::new(),
    };
    let record = |n: u32, kind: CaseEventKind, rows: Vec<ActionDeadline>| {
        let mut event = CaseEvent {
            case_reference: case.into(),
            kind: kind as i32,
            occurred_at: Some(referral_core::time::to_proto(hub.clock.now())),
            cycle: 1,
            curator_user_id: "curator-1".into(),
            risk_level: RiskLevel::Medium as i32,
            actions: rows,
            ..Default::default()
        };
        if kind == CaseEventKind::CaseOpened {
            event.help_request_message_id = uuid::Uuid::now_v7().to_string();
        }
        if kind == CaseEventKind::ReviewHeld {
            event.next_review_on = Some(cd(jiff::civil::date(2027, 3, 1)));
        }
        let request = RecordCaseEventRequest {
            idempotency_key: format!("moved-row-event-{n}"),
            acting_user: curator.clone(),
            event: Some(event),
        };
        let mut gateway = commission.clone();
        async move {
            gateway
                .record_case_event(request)
                .await
                .expect("event recorded")
        }
    };
    record(1, CaseEventKind::CaseOpened, vec![]).await;
    record(2, CaseEventKind::AssessmentFiled, vec![]).await;
    record(3, CaseEventKind::SupportPlanFiled, vec![row("ngo-1")]).await;
    // The first agency's assignment, which it will later (wrongly) report completed.
    let assignment = commission
        .clone()
        .send(SendRequest {
            envelope: Some(Envelope {
                idempotency_key: "moved-row-assignment-1".into(),
                recipient_agency_id: "ngo-1".into(),
                acting_user: curator.clone(),
                purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
                case_reference: case.into(),
                form_kind: FormKind::ActionAssignment as i32,
                confidentiality: ConfidentialityLabel::Normal as i32,
                payload: Some(Payload {
                    form: Some(payload::Form::ActionAssignment(ActionAssignment {
                        case_reference: case.into(),
                        action: Some(PlanAction {
                            number: 1,
                            action: "Кеңес беру".into(),
                            due_on: Some(cd(due)),
                            responsible_person: "Маман".into(),
                            responsible_agency_id: "ngo-1".into(),
                            method: "Апта сайын".into(),
                        }),
                        child_first_name: "Бала".into(),
                        child_age_years: 12,
                        curator_name: "Дана Омарова".into(),
                        curator_contact: "+7 701 000 0002".into(),
                    })),
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("assignment sent")
        .into_inner()
        .message_id;
    // The review moves the row to school 1, same number, same date.
    record(4, CaseEventKind::ReviewHeld, vec![row("school-1")]).await;
    // The NGO reports its old row completed.
    hub.gateway_client_as("ngo-1")
        .await
        .send(SendRequest {
            envelope: Some(Envelope {
                idempotency_key: "moved-row-progress-1".into(),
                recipient_agency_id: "commission".into(),
                acting_user: Some(ActingUser {
                    user_id: "case-manager".into(),
                    agency_id: "ngo-1".into(),
                    role: Role::NgoCaseManager as i32,
                    display_name: String::new(),
                }),
                purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
                case_reference: case.into(),
                form_kind: FormKind::ActionProgress as i32,
                confidentiality: ConfidentialityLabel::Normal as i32,
                in_reply_to: assignment.clone(),
                payload: Some(Payload {
                    form: Some(payload::Form::ActionProgress(ActionProgress {
                        assignment_message_id: assignment,
                        case_reference: case.into(),
                        action_number: 1,
                        state: ActionProgressState::Completed as i32,
                        note: "Орындалды".into(),
                        reported_on: Some(cd(local(&hub))),
                        reported_by: "case-manager".into(),
                    })),
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("progress sent");
    hub.gateway().settle().await.unwrap();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT responsible_agency_id, state FROM deadlines WHERE case_reference = $1 \
         AND kind = 'DEADLINE_KIND_ACTION' ORDER BY responsible_agency_id",
    )
    .bind(case)
    .fetch_all(hub.gateway().database().pool())
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            ("ngo-1".to_string(), "DEADLINE_STATE_CANCELLED".to_string()),
            ("school-1".to_string(), "DEADLINE_STATE_PENDING".to_string()),
        ],
        "the school's clock runs, untouched by the NGO's report"
    );
    hub.shutdown().await;
}

both_backends!(a_row_moved_to_another_agency_gets_its_own_clock);
