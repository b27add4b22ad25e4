//! Acceptance 4 of issue 3: 10,000 cases (`SIMULATION_CASES` to change it) driven by a seeded
//! random schedule over two simulated years through the real deadline engine (case events over
//! the gateway's real RecordCaseEvent RPC, action progress over its real Send), checked against
//! an independent oracle (`referral_tests::simulation`): zero missed, zero duplicated, zero early
//! alerts, and none later than the one-hour step the clock moves by. The engine's background
//! task is off: `GatewayHandle::settle` (the same ingest and sweep code) runs at every step, so
//! the test alone decides when the engine looks at the clock.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use jiff::{SignedDuration, Timestamp, civil::Date};
use referral_proto::v1::{
    ActingUser, ActionAssignment, ActionDeadline, ActionProgress, ActionProgressState,
    CalendarDate, CaseEvent, CaseEventKind, ConfidentialityLabel, Envelope, FormKind, Payload,
    PlanAction, PurposeOfUse, RecordCaseEventRequest, RiskLevel, Role, SendRequest, payload,
};
use referral_tests::{
    Backend, HubOptions, TestHub, both_backends,
    simulation::{AlertState, DeadlineId, Event, Kind, Oracle, ROW_AGENCIES, Row, Step, schedule},
};
use tokio::sync::Mutex;
use tonic::transport::Channel;

type Gateway = referral_proto::v1::gateway_client::GatewayClient<Channel>;

const SEED: u64 = 0x5eed_2026;
const DAYS: i64 = 730;

fn cd(d: Date) -> CalendarDate {
    CalendarDate {
        year: d.year().into(),
        month: d.month().into(),
        day: d.day().into(),
    }
}

fn case_reference(case: usize) -> String {
    format!("SIM-{case:05}")
}

fn curator() -> Option<ActingUser> {
    Some(ActingUser {
        user_id: "curator-1".into(),
        agency_id: "commission".into(),
        role: Role::CommissionCurator as i32,
        display_name: String::new(),
    })
}

fn row_user(agency: usize) -> Option<ActingUser> {
    let (agency_id, user) = ROW_AGENCIES[agency];
    let role = match agency_id {
        "ngo-1" => Role::NgoCaseManager,
        "school-1" => Role::SchoolDirector,
        _ => Role::HealthWorker,
    };
    Some(ActingUser {
        user_id: user.into(),
        agency_id: agency_id.into(),
        role: role as i32,
        display_name: String::new(),
    })
}

/// (case, cycle, row number) → the latest assignment's message id and its agency.
type Assignments = HashMap<(usize, u32, u32), (String, usize)>;

/// The gateway clients the driver acts through, one per certificate.
struct Driver {
    commission: Gateway,
    agencies: Vec<Gateway>,
    assignments: Mutex<Assignments>,
}

impl Driver {
    async fn record(&self, case: usize, n: usize, event: CaseEvent) {
        self.commission
            .clone()
            .record_case_event(RecordCaseEventRequest {
                idempotency_key: format!("sim-{case}-{n}"),
                acting_user: curator(),
                event: Some(event),
            })
            .await
            .unwrap_or_else(|e| panic!("case {case} event {n} refused: {e:?}"));
    }

    async fn assign(&self, case: usize, cycle: u32, rows: &[Row]) {
        for row in rows {
            let (agency_id, _) = ROW_AGENCIES[row.agency];
            let envelope = Envelope {
                idempotency_key: format!("sim-assign-{case}-{cycle}-{}-{}", row.number, row.due_on),
                recipient_agency_id: agency_id.into(),
                acting_user: curator(),
                purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
                case_reference: case_reference(case),
                form_kind: FormKind::ActionAssignment as i32,
                confidentiality: ConfidentialityLabel::Normal as i32,
                payload: Some(Payload {
                    form: Some(payload::Form::ActionAssignment(ActionAssignment {
                        case_reference: case_reference(case),
                        action: Some(PlanAction {
                            number: row.number,
                            action: "Кеңес беру".into(),
                            due_on: Some(cd(row.due_on)),
                            responsible_person: "Маман".into(),
                            responsible_agency_id: agency_id.into(),
                            method: "Апта сайын".into(),
                        }),
                        child_first_name: "Бала".into(),
                        child_age_years: 12,
                        curator_name: "Дана Омарова".into(),
                        curator_contact: "+7 701 000 0002".into(),
                    })),
                }),
                ..Default::default()
            };
            let id = self
                .commission
                .clone()
                .send(SendRequest {
                    envelope: Some(envelope),
                })
                .await
                .unwrap_or_else(|e| panic!("assignment for case {case} refused: {e:?}"))
                .into_inner()
                .message_id;
            self.assignments
                .lock()
                .await
                .insert((case, cycle, row.number), (id, row.agency));
        }
    }

    async fn complete(&self, case: usize, n: usize, cycle: u32, number: u32, on: Date) {
        let Some((assignment, agency)) = self
            .assignments
            .lock()
            .await
            .get(&(case, cycle, number))
            .cloned()
        else {
            return;
        };
        let envelope = Envelope {
            idempotency_key: format!("sim-done-{case}-{n}"),
            recipient_agency_id: "commission".into(),
            acting_user: row_user(agency),
            purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
            case_reference: case_reference(case),
            form_kind: FormKind::ActionProgress as i32,
            confidentiality: ConfidentialityLabel::Normal as i32,
            in_reply_to: assignment.clone(),
            payload: Some(Payload {
                form: Some(payload::Form::ActionProgress(ActionProgress {
                    assignment_message_id: assignment,
                    case_reference: case_reference(case),
                    action_number: number,
                    state: ActionProgressState::Completed as i32,
                    note: "Орындалды".into(),
                    reported_on: Some(cd(on)),
                    reported_by: ROW_AGENCIES[agency].1.into(),
                })),
            }),
            ..Default::default()
        };
        self.agencies[agency]
            .clone()
            .send(SendRequest {
                envelope: Some(envelope),
            })
            .await
            .unwrap_or_else(|e| panic!("progress for case {case} refused: {e:?}"));
    }

    async fn apply(&self, e: &Event, n: usize, oracle: &Oracle) {
        let reference = case_reference(e.case);
        let base = |kind: CaseEventKind, cycle: u32| CaseEvent {
            case_reference: reference.clone(),
            kind: kind as i32,
            occurred_at: Some(referral_core::time::to_proto(e.at)),
            cycle,
            curator_user_id: "curator-1".into(),
            ..Default::default()
        };
        let deadlines = |rows: &[Row]| -> Vec<ActionDeadline> {
            rows.iter()
                .map(|r| ActionDeadline {
                    number: r.number,
                    due_on: Some(cd(r.due_on)),
                    responsible_agency_id: ROW_AGENCIES[r.agency].0.into(),
                    responsible_person: String::new(),
                })
                .collect()
        };
        match &e.step {
            Step::Open { cycle } => {
                let mut event = base(CaseEventKind::CaseOpened, *cycle);
                event.help_request_message_id = uuid::Uuid::now_v7().to_string();
                self.record(e.case, n, event).await
            }
            Step::Reopen { cycle } => {
                self.record(e.case, n, base(CaseEventKind::CaseReopened, *cycle))
                    .await
            }
            Step::Assessment { cycle, high_risk } => {
                let mut event = base(CaseEventKind::AssessmentFiled, *cycle);
                event.risk_level = if *high_risk {
                    RiskLevel::High
                } else {
                    RiskLevel::Medium
                } as i32;
                self.record(e.case, n, event).await
            }
            Step::Plan {
                cycle,
                first_review_on,
                rows,
            } => {
                let mut event = base(CaseEventKind::SupportPlanFiled, *cycle);
                event.next_review_on = first_review_on.map(cd);
                event.actions = deadlines(rows);
                self.record(e.case, n, event).await;
                self.assign(e.case, *cycle, rows).await;
            }
            Step::Review {
                cycle,
                next_review_on,
                rows,
            } => {
                let mut event = base(CaseEventKind::ReviewHeld, *cycle);
                event.next_review_on = Some(cd(*next_review_on));
                event.actions = deadlines(rows);
                self.record(e.case, n, event).await;
                self.assign(e.case, *cycle, rows).await;
            }
            Step::Complete { cycle, number } => {
                let on = e.at.to_zoned(oracle.tz.clone()).date();
                self.complete(e.case, n, *cycle, *number, on).await
            }
            Step::Close { cycle } => {
                self.record(e.case, n, base(CaseEventKind::CaseClosed, *cycle))
                    .await
            }
        }
    }
}

fn kind_of(name: &str) -> Option<Kind> {
    match name {
        "DEADLINE_KIND_ASSESSMENT" => Some(Kind::Assessment),
        "DEADLINE_KIND_SUPPORT_PLAN" => Some(Kind::SupportPlan),
        "DEADLINE_KIND_PLAN_REVIEW" => Some(Kind::PlanReview),
        "DEADLINE_KIND_ACTION" => Some(Kind::Action),
        _ => None,
    }
}

fn alert_state_of(name: &str) -> Option<AlertState> {
    match name {
        "DEADLINE_STATE_WARNED" => Some(AlertState::Warned),
        "DEADLINE_STATE_DUE" => Some(AlertState::Due),
        "DEADLINE_STATE_OVERDUE" => Some(AlertState::Overdue),
        "DEADLINE_STATE_ESCALATED" => Some(AlertState::Escalated),
        _ => None,
    }
}

async fn ten_thousand_cases_raise_exactly_the_expected_alerts(backend: Backend) {
    let cases: usize = std::env::var("SIMULATION_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let hub = TestHub::start_with(
        backend,
        HubOptions {
            start_agencies: false,
            run_delivery_worker: false,
            run_deadline_engine: false,
            ..Default::default()
        },
    )
    .await;
    let oracle = Oracle::almaty();
    let start = hub.clock.now();
    let end = start + SignedDuration::from_hours(24 * DAYS);
    let events = schedule(SEED, cases, start, DAYS, &oracle);
    let expected = oracle.expected(&events, end);

    let mut agencies = Vec::new();
    for (agency, _) in ROW_AGENCIES {
        agencies.push(hub.gateway_client_as(agency).await);
    }
    let driver = Arc::new(Driver {
        commission: hub.gateway_client_as("commission").await,
        agencies,
        assignments: Mutex::new(HashMap::new()),
    });
    let oracle = Arc::new(oracle);

    // The clock visits every hour and every event's instant.
    let mut next = 0;
    let mut tick = start;
    let gateway = hub.gateway();
    while tick <= end {
        let upto = events[next..].partition_point(|e| e.at <= tick) + next;
        let mut instants: Vec<Timestamp> = events[next..upto].iter().map(|e| e.at).collect();
        instants.dedup();
        for at in instants {
            hub.clock.set(at);
            gateway.settle().await.expect("the engine settles");
            // Cases are independent: apply their events concurrently, each case in order.
            let mut by_case: BTreeMap<usize, Vec<(usize, Event)>> = BTreeMap::new();
            while next < upto && events[next].at == at {
                by_case
                    .entry(events[next].case)
                    .or_default()
                    .push((next, events[next].clone()));
                next += 1;
            }
            let mut tasks = tokio::task::JoinSet::new();
            for (_, list) in by_case {
                let driver = driver.clone();
                let oracle = oracle.clone();
                tasks.spawn(async move {
                    for (n, e) in list {
                        driver.apply(&e, n, &oracle).await;
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.expect("a driver task does not panic");
            }
            gateway.settle().await.expect("the engine settles");
        }
        hub.clock.set(tick);
        gateway.settle().await.expect("the engine settles");
        tick += SignedDuration::from_hours(1);
    }
    hub.clock.set(end);
    gateway.settle().await.expect("the engine settles");

    // Compare, alert by alert.
    let rows: Vec<(String, i64, String, i64, String, String, i64)> = sqlx::query_as::<
        _,
        (String, i64, String, i64, String, String, i64),
    >(
        "SELECT d.case_reference, d.cycle, d.kind, d.action_number, d.due_on, a.state, a.raised_at \
         FROM deadline_alerts a JOIN deadlines d ON d.deadline_id = a.deadline_id",
    )
    .fetch_all(gateway.database().pool())
    .await
    .expect("the alerts read");
    let mut want: HashMap<(DeadlineId, AlertState), Timestamp> = expected
        .iter()
        .map(|a| ((a.deadline, a.state), a.at_or_after))
        .collect();
    assert_eq!(
        want.len(),
        expected.len(),
        "the oracle lists each alert once"
    );
    let (mut early, mut late, mut unexpected, mut duplicated) = (0, 0, Vec::new(), 0);
    let mut seen = std::collections::HashSet::new();
    for (reference, cycle, kind, number, due_on, state, raised_at) in rows {
        let Some(kind) = kind_of(&kind) else { continue };
        let case: usize = reference.trim_start_matches("SIM-").parse().unwrap();
        let id = DeadlineId {
            case,
            cycle: cycle as u32,
            kind,
            number: number as u32,
            due_on: due_on.parse().unwrap(),
        };
        let state = alert_state_of(&state).expect("an alert state");
        let raised = referral_core::time::from_micros(raised_at);
        if !seen.insert((id, state)) {
            duplicated += 1;
            continue;
        }
        match want.remove(&(id, state)) {
            None => unexpected.push((id, state, raised)),
            Some(at) if raised < at => early += 1,
            Some(at) if raised > at + SignedDuration::from_hours(1) => late += 1,
            Some(_) => {}
        }
    }
    // Every alert went out as messages: at least one per alert, never twice to the same person.
    // Read through the gateway's store, which opens the sealed payloads.
    let envelopes = gateway
        .stored_envelopes_of_kind(FormKind::DeadlineAlert)
        .await
        .expect("the alert messages read");
    let mut sent_to = std::collections::HashSet::new();
    let mut alerts_sent = std::collections::HashSet::new();
    let mut repeated_messages = 0;
    for envelope in envelopes {
        let Some(payload::Form::DeadlineAlert(alert)) = envelope.payload.and_then(|p| p.form)
        else {
            panic!("an alert message carries another form");
        };
        // An agency may hear of one alert twice only for two different people in it (the
        // curator, then the secretary, of an overdue commission deadline).
        if !sent_to.insert((
            alert.alert_id.clone(),
            envelope.recipient_agency_id,
            alert.addressed_to_role,
        )) {
            repeated_messages += 1;
        }
        alerts_sent.insert(alert.alert_id);
    }
    let alert_ids: Vec<String> = sqlx::query_scalar("SELECT alert_id FROM deadline_alerts")
        .fetch_all(gateway.database().pool())
        .await
        .unwrap();
    let unsent = alert_ids
        .iter()
        .filter(|id| !alerts_sent.contains(*id))
        .count();
    assert_eq!(
        repeated_messages, 0,
        "someone was told of the same alert twice"
    );
    assert_eq!(unsent, 0, "alerts raised but never sent");
    let missed: Vec<_> = want.into_iter().take(5).collect();
    eprintln!(
        "simulation: {cases} cases, {} events, {} expected alerts",
        events.len(),
        expected.len()
    );
    assert!(missed.is_empty(), "missed alerts, e.g. {missed:?}");
    assert!(
        unexpected.is_empty(),
        "{} unexpected alerts, e.g. {:?}",
        unexpected.len(),
        &unexpected[..unexpected.len().min(5)]
    );
    assert_eq!(duplicated, 0, "duplicated alerts");
    assert_eq!(early, 0, "early alerts");
    assert_eq!(late, 0, "late alerts");
    hub.shutdown().await;
}

both_backends!(ten_thousand_cases_raise_exactly_the_expected_alerts);
