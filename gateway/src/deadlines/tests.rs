//! The engine's rules on a real store, driven through the gateway's own entry points
//! (`accept`, `record_case_event`, the delivery record) and a manual clock. End-to-end tests
//! through real services live in the `tests` crate.
//!
//! The store is SQLite in a temporary directory; with `GATEWAY_TEST_POSTGRES` set to the URL of
//! a PostgreSQL server's `postgres` database, each test gets a fresh database there instead.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp, civil::Date};
use prost::Message as _;
use referral_core::{
    Clock, ServiceError,
    config::DeliverySettings,
    db::StorageConfig,
    directory::{AgencyEntry, Directory},
    pki::{CertificateAuthority, ComponentIdentity, TlsMaterial},
    time, validate,
};
use referral_proto::v1::{
    ActingUser, ActionAssignment, ActionDeadline, ActionProgress, ActionProgressState,
    CalendarDate, CaseEvent, CaseEventKind, CaseOpened, ConfidentialityLabel, DeadlineAlert,
    DeadlineKind, DeadlineState, Envelope, FormKind, HelpRequestDecision, InformationRequest,
    InformationResponse, Payload, PlanAction, PurposeOfUse, RecordCaseEventRequest, RiskLevel,
    Role, help_request_decision, payload,
};
use sqlx::Row as _;

use super::{
    service::{ListQuery, Scope, list},
    settle,
};
use crate::{Gateway, GatewayConfig, Shared, delivery};

const DISTRICT: &str = "demo-district";

struct Hub {
    _dir: tempfile::TempDir,
    _gateway: Gateway,
    shared: Arc<Shared>,
    clock: Clock,
}

/// Friday 6 March 2026, 09:00 in Almaty; Monday 9 March is the day off for 8 March.
const FRIDAY_BEFORE_HOLIDAY: &str = "2026-03-06T04:00:00Z";

async fn hub(start: &str) -> Hub {
    let dir = tempfile::tempdir().unwrap();
    let directory = Directory::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/demo-district.toml"),
    )
    .unwrap();
    let ca = CertificateAuthority::generate("test CA").unwrap();
    let clock = Clock::manual(start.parse().unwrap());
    let database_url = match std::env::var("GATEWAY_TEST_POSTGRES") {
        Ok(admin) => Some(fresh_postgres_database(&admin).await.into()),
        Err(_) => None,
    };
    let config = GatewayConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        TlsMaterial::new(&ca, &ComponentIdentity::Gateway).unwrap(),
        StorageConfig {
            data_dir: dir.path().to_owned(),
            database_url,
        },
        directory,
        DeliverySettings::default(),
        clock.clone(),
    );
    let gateway = Gateway::build(config).await.unwrap();
    let shared = gateway.shared.clone();
    Hub {
        _dir: dir,
        _gateway: gateway,
        shared,
        clock,
    }
}

/// A new database on the server `admin` points at; its URL.
async fn fresh_postgres_database(admin: &str) -> String {
    use sqlx::Connection as _;
    sqlx::any::install_default_drivers();
    let name = format!("gw_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::AnyConnection::connect(admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap();
    let (base, _) = admin.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn day(d: Date) -> Option<CalendarDate> {
    Some(validate::to_calendar_date(d))
}

impl Hub {
    fn agency(&self, id: &str) -> AgencyEntry {
        self.shared.directory().agency(id).cloned().unwrap()
    }

    async fn send(
        &self,
        from: &str,
        role: Role,
        to: &str,
        form: payload::Form,
        in_reply_to: &str,
    ) -> Result<String, ServiceError> {
        let kind = match &form {
            payload::Form::HelpRequest(_) => FormKind::HelpRequest,
            payload::Form::HelpRequestDecision(_) => FormKind::HelpRequestDecision,
            payload::Form::InformationRequest(_) => FormKind::InformationRequest,
            payload::Form::InformationResponse(_) => FormKind::InformationResponse,
            payload::Form::ActionAssignment(_) => FormKind::ActionAssignment,
            payload::Form::ActionProgress(_) => FormKind::ActionProgress,
            payload::Form::ReviewMinutes(_) => FormKind::ReviewMinutes,
            payload::Form::DeadlineAlert(_) => FormKind::DeadlineAlert,
            _ => FormKind::Unspecified,
        };
        let env = Envelope {
            idempotency_key: uuid::Uuid::new_v4().to_string(),
            recipient_agency_id: to.into(),
            acting_user: Some(ActingUser {
                // The commission's case messages come from the case's curator (the team).
                user_id: if from == "commission" {
                    "curator-1".to_owned()
                } else {
                    format!("{from}-user")
                },
                agency_id: from.into(),
                role: role as i32,
                display_name: "Staff".into(),
            }),
            purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
            form_kind: kind as i32,
            confidentiality: ConfidentialityLabel::Restricted as i32,
            in_reply_to: in_reply_to.into(),
            payload: Some(Payload { form: Some(form) }),
            ..Default::default()
        };
        let accepted = self.shared.accept(&self.agency(from), env).await?;
        Ok(accepted.message_id)
    }

    /// Action row `number` of case KZ-2026-1 assigned by its curator to ngo-1.
    async fn assign_to_ngo(&self, number: u32, action: &str, due: Date) -> String {
        self.send(
            "commission",
            Role::CommissionCurator,
            "ngo-1",
            payload::Form::ActionAssignment(ActionAssignment {
                case_reference: "KZ-2026-1".into(),
                action: Some(PlanAction {
                    number,
                    action: action.into(),
                    due_on: day(due),
                    responsible_agency_id: "ngo-1".into(),
                    ..Default::default()
                }),
                child_first_name: "Әлия".into(),
                child_age_years: 12,
                curator_name: "Дана Омарова".into(),
                curator_contact: String::new(),
            }),
            "",
        )
        .await
        .unwrap()
    }

    /// A K from school-1 to the commission, delivered now.
    async fn help_request_delivered(&self) -> String {
        let today = self.local_today();
        let k = self
            .send(
                "school-1",
                Role::SchoolDirector,
                "commission",
                payload::Form::HelpRequest(validate::sample_help_request(today)),
                "",
            )
            .await
            .unwrap();
        delivery::record_delivery_for_test(&self.shared, &k)
            .await
            .unwrap();
        k
    }

    fn local_today(&self) -> Date {
        self.shared
            .calendar(DISTRICT)
            .unwrap()
            .local_date(self.clock.now())
    }

    async fn record(
        &self,
        kind: CaseEventKind,
        cycle: u32,
        f: impl FnOnce(&mut CaseEvent),
    ) -> Result<String, ServiceError> {
        let mut event = CaseEvent {
            case_reference: "KZ-2026-1".into(),
            kind: kind as i32,
            occurred_at: Some(time::to_proto(self.clock.now())),
            cycle,
            curator_user_id: "curator-1".into(),
            ..Default::default()
        };
        f(&mut event);
        let req = RecordCaseEventRequest {
            idempotency_key: uuid::Uuid::new_v4().to_string(),
            acting_user: Some(ActingUser {
                user_id: "curator-1".into(),
                agency_id: "commission".into(),
                role: Role::CommissionCurator as i32,
                display_name: "Curator".into(),
            }),
            event: Some(event),
        };
        let recorded = self
            .shared
            .record_case_event(&self.agency("commission"), req)
            .await?;
        Ok(recorded.event_id)
    }

    async fn settle(&self) -> super::SettleReport {
        settle(&self.shared).await.unwrap()
    }

    /// (kind, state, action number, due date) of every deadline, in creation order.
    async fn deadlines(&self) -> Vec<(String, String, i64, String)> {
        sqlx::query(
            "SELECT kind, state, action_number, due_on FROM deadlines \
             ORDER BY created_at, deadline_id",
        )
        .fetch_all(self.shared.db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get("kind"),
                r.get("state"),
                r.get("action_number"),
                r.get("due_on"),
            )
        })
        .collect()
    }

    /// The DEADLINE_ALERT messages queued, as (recipient, state, addressed role).
    async fn alert_messages(&self) -> Vec<(String, DeadlineState, Role)> {
        let rows = crate::store::messages_of_kind(self.shared.db.pool(), FormKind::DeadlineAlert)
            .await
            .unwrap();
        rows.iter()
            .map(|row| {
                let env = crate::store::open_envelope(&self.shared.sealer, row).unwrap();
                assert_eq!(env.sender_agency_id, "gateway");
                let Some(payload::Form::DeadlineAlert(alert)) = env.payload.unwrap().form else {
                    panic!("an alert message carries an alert");
                };
                (
                    env.recipient_agency_id,
                    DeadlineState::try_from(alert.state).unwrap(),
                    Role::try_from(alert.addressed_to_role).unwrap(),
                )
            })
            .collect()
    }
}

fn decision(k: &str, case: &str) -> payload::Form {
    payload::Form::HelpRequestDecision(HelpRequestDecision {
        help_request_message_id: k.into(),
        outcome: Some(help_request_decision::Outcome::CaseOpened(CaseOpened {
            case_reference: case.into(),
            curator_user_id: "curator-1".into(),
            curator_name: "Дана Омарова".into(),
            curator_contact: String::new(),
        })),
        decided_by: "secretary".into(),
        decided_at: Some(time::to_proto(ts(FRIDAY_BEFORE_HOLIDAY))),
    })
}

fn row(number: u32, due: Date, agency: &str) -> ActionDeadline {
    ActionDeadline {
        number,
        due_on: day(due),
        responsible_agency_id: agency.into(),
        responsible_person: String::new(),
    }
}

#[tokio::test]
async fn a_help_request_decision_runs_in_working_days_from_receipt_and_is_met_by_the_decision() {
    let hub = hub(FRIDAY_BEFORE_HOLIDAY).await;
    let k = hub.help_request_delivered().await;
    let report = hub.settle().await;
    assert_eq!(report.deadlines_created, 1);
    // Friday 6 March; Monday 9 March is a day off: 10, 11, 12 March.
    assert_eq!(
        hub.deadlines().await,
        [(
            "DEADLINE_KIND_HELP_REQUEST_DECISION".into(),
            "DEADLINE_STATE_PENDING".into(),
            0,
            "2026-03-12".into()
        )]
    );
    // Warned one working day before, at local midnight: to the commission's secretary.
    hub.clock.set(ts("2026-03-10T18:59:59Z"));
    assert_eq!(hub.settle().await.alerts, 0);
    hub.clock.set(ts("2026-03-10T19:00:00Z"));
    assert_eq!(hub.settle().await.alerts, 1);
    assert_eq!(
        hub.alert_messages().await,
        [(
            "commission".into(),
            DeadlineState::Warned,
            Role::CommissionSecretary
        )]
    );

    hub.send(
        "commission",
        Role::CommissionSecretary,
        "school-1",
        decision(&k, "KZ-2026-1"),
        &k,
    )
    .await
    .unwrap();
    let report = hub.settle().await;
    assert_eq!(report.deadlines_met, 1);
    // Met is final: the due day and beyond raise nothing.
    hub.clock.set(ts("2026-04-30T00:00:00Z"));
    assert_eq!(hub.settle().await.alerts, 0);
    assert_eq!(hub.deadlines().await[0].1, "DEADLINE_STATE_MET");
    hub.shared.db.close().await;
}

#[tokio::test]
async fn a_late_sweep_raises_every_state_once_in_order_and_a_second_raises_none() {
    let hub = hub(FRIDAY_BEFORE_HOLIDAY).await;
    let mut alerts = hub.shared.alerts.subscribe();
    hub.help_request_delivered().await;
    hub.settle().await;
    // The gateway was down for weeks: one sweep catches up through every state.
    hub.clock.set(ts("2026-04-01T00:00:00Z"));
    let report = hub.settle().await;
    assert_eq!(report.alerts, 4);
    let mut seen = Vec::new();
    while let Ok(a) = alerts.try_recv() {
        seen.push(DeadlineState::try_from(a.state).unwrap());
    }
    use DeadlineState::*;
    assert_eq!(seen, [Warned, Due, Overdue, Escalated]);
    // The secretary's own deadline tells the secretary once when overdue; the chair when escalated.
    assert_eq!(
        hub.alert_messages().await,
        [
            ("commission".into(), Warned, Role::CommissionSecretary),
            ("commission".into(), Due, Role::CommissionSecretary),
            ("commission".into(), Overdue, Role::CommissionSecretary),
            ("commission".into(), Escalated, Role::CommissionChair),
        ]
    );
    assert_eq!(hub.settle().await.alerts, 0);
    // Re-applying the whole ledger (a lost cursor) creates and raises nothing.
    sqlx::query("UPDATE deadline_cursor SET last_seq = 0")
        .execute(hub.shared.db.pool())
        .await
        .unwrap();
    let replay = hub.settle().await;
    assert!(replay.ledger_entries > 0);
    assert_eq!(
        (replay.deadlines_created, replay.alerts),
        (0, 0),
        "{replay:?}"
    );
    // Alerts are chained in the ledger like every message.
    hub.shared.db.close().await;
}

// The alert feed relays what another replica raised; an alert whose rows no longer decode is
// skipped, and the alerts after it still reach this replica's watchers.
#[tokio::test]
async fn the_alert_feed_skips_an_unreadable_alert_and_relays_the_ones_after_it() {
    let hub = hub(FRIDAY_BEFORE_HOLIDAY).await;
    let first = hub.help_request_delivered().await;
    hub.help_request_delivered().await;
    hub.settle().await;
    hub.clock.set(ts("2026-03-12T00:00:00Z"));
    assert_eq!(
        hub.settle().await.alerts,
        4,
        "warned and due, of two deadlines"
    );
    // As if another replica had raised them.
    hub.shared.local_alerts.forget_all();
    // The first help request's deadline row no longer decodes.
    sqlx::query("UPDATE deadlines SET due_on = 'not a date' WHERE help_request_message_id = $1")
        .bind(&first)
        .execute(hub.shared.db.pool())
        .await
        .unwrap();
    let mut alerts = hub.shared.alerts.subscribe();
    let mut cursor = super::feed::Cursor::default();
    super::feed::relay(&hub.shared, &mut cursor).await.unwrap();
    let mut relayed = Vec::new();
    while let Ok(alert) = alerts.try_recv() {
        relayed.push(alert.deadline.unwrap().help_request_message_id);
    }
    assert_eq!(
        relayed.len(),
        2,
        "the other deadline's warned and due: {relayed:?}"
    );
    assert!(relayed.iter().all(|id| *id != first));
    let end: i64 = sqlx::query_scalar("SELECT MAX(seq) FROM ledger")
        .fetch_one(hub.shared.db.pool())
        .await
        .unwrap();
    assert_eq!(cursor.seq, end, "the cursor is past every entry");
    hub.shared.db.close().await;
}

#[tokio::test]
async fn concurrent_engines_raise_each_alert_exactly_once() {
    let hub = hub(FRIDAY_BEFORE_HOLIDAY).await;
    for _ in 0..5 {
        hub.help_request_delivered().await;
    }
    hub.clock.set(ts("2026-03-12T00:00:00Z"));
    // Two "replicas" (and the delivered entries) race for the same ledger and deadlines.
    let a = settle(&hub.shared);
    let b = settle(&hub.shared);
    let (a, b) = tokio::join!(a, b);
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.deadlines_created + b.deadlines_created, 5);
    assert_eq!(a.alerts + b.alerts, 10, "warned and due, once each");
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deadline_alerts")
        .fetch_one(hub.shared.db.pool())
        .await
        .unwrap();
    assert_eq!(stored, 10);
    assert_eq!(hub.alert_messages().await.len(), 10);
    let verified = crate::ledger::verify(hub.shared.db.pool()).await.unwrap();
    assert!(verified.entries > 10);
    hub.shared.db.close().await;
}

#[tokio::test]
async fn a_case_runs_its_clocks_from_opening_to_closure_and_again_after_reopening() {
    use jiff::civil::date;
    let hub = hub("2026-01-20T04:00:00Z").await;
    let k = hub.help_request_delivered().await;
    hub.record(CaseEventKind::CaseOpened, 1, |e| {
        e.help_request_message_id = k.clone()
    })
    .await
    .unwrap();
    let report = hub.settle().await;
    // The K's decision deadline and the assessment (21 days, across the month end).
    assert_eq!(report.deadlines_created, 2);
    assert_eq!(report.deadlines_met, 1, "opening the case decides the K");
    assert_eq!(
        hub.deadlines().await[1],
        (
            "DEADLINE_KIND_ASSESSMENT".into(),
            "DEADLINE_STATE_PENDING".into(),
            0,
            "2026-02-10".into()
        )
    );

    hub.clock.set(ts("2026-02-02T04:00:00Z"));
    hub.record(CaseEventKind::AssessmentFiled, 1, |e| {
        e.risk_level = RiskLevel::High as i32
    })
    .await
    .unwrap();
    hub.settle().await;
    // L met; M due 14 days later.
    let d = hub.deadlines().await;
    assert_eq!(d[1].1, "DEADLINE_STATE_MET");
    assert_eq!(
        d[2],
        (
            "DEADLINE_KIND_SUPPORT_PLAN".into(),
            "DEADLINE_STATE_PENDING".into(),
            0,
            "2026-02-16".into()
        )
    );

    hub.clock.set(ts("2026-02-10T04:00:00Z"));
    hub.record(CaseEventKind::SupportPlanFiled, 1, |e| {
        e.actions = vec![
            row(1, date(2026, 3, 1), "ngo-1"),
            row(2, date(2026, 3, 15), ""),
            row(3, date(2026, 4, 1), "school-1"),
        ];
    })
    .await
    .unwrap();
    hub.settle().await;
    let d = hub.deadlines().await;
    assert_eq!(d[2].1, "DEADLINE_STATE_MET");
    // High risk: the first review 3 months on (no date fixed).
    assert_eq!(
        d[3],
        (
            "DEADLINE_KIND_PLAN_REVIEW".into(),
            "DEADLINE_STATE_PENDING".into(),
            0,
            "2026-05-10".into()
        )
    );
    assert_eq!(
        d[4..]
            .iter()
            .map(|r| (r.2, r.3.as_str()))
            .collect::<Vec<_>>(),
        [(1, "2026-03-01"), (2, "2026-03-15"), (3, "2026-04-01")]
    );
    let responsible: Vec<(String, String, String)> = sqlx::query(
        "SELECT responsible_agency_id, responsible_role, responsible_user_id FROM deadlines \
         WHERE kind = 'DEADLINE_KIND_ACTION' ORDER BY action_number",
    )
    .fetch_all(hub.shared.db.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect();
    assert_eq!(
        responsible,
        [
            ("ngo-1".into(), "ngo_case_manager".into(), String::new()),
            (
                "commission".into(),
                "commission_curator".into(),
                "curator-1".into()
            ),
            ("school-1".into(), "safeguarding_lead".into(), String::new()),
        ]
    );

    // The NGO reports progress, then completion, on its assignment: row 1 met on completion.
    let assignment = hub
        .assign_to_ngo(1, "Психологиялық кеңес", date(2026, 3, 1))
        .await;
    let progress = |state: ActionProgressState| {
        payload::Form::ActionProgress(ActionProgress {
            assignment_message_id: assignment.clone(),
            case_reference: "KZ-2026-1".into(),
            action_number: 1,
            state: state as i32,
            note: String::new(),
            reported_on: day(date(2026, 2, 20)),
            reported_by: "NGO case manager".into(),
        })
    };
    for state in [
        ActionProgressState::InProgress,
        ActionProgressState::Completed,
    ] {
        hub.send(
            "ngo-1",
            Role::NgoCaseManager,
            "commission",
            progress(state),
            &assignment,
        )
        .await
        .unwrap();
    }
    let report = hub.settle().await;
    assert_eq!(report.deadlines_met, 1);
    assert_eq!(hub.deadlines().await[4].1, "DEADLINE_STATE_MET");

    // A review: the review met, the next fixed; row 2 moved, row 3 dropped, row 1 kept (met),
    // row 4 added.
    hub.clock.set(ts("2026-03-02T04:00:00Z"));
    hub.record(CaseEventKind::ReviewHeld, 1, |e| {
        e.next_review_on = day(date(2026, 6, 1));
        e.actions = vec![
            row(1, date(2026, 3, 1), "ngo-1"),
            row(2, date(2026, 3, 20), ""),
            row(4, date(2026, 5, 1), "health-1"),
        ];
    })
    .await
    .unwrap();
    let report = hub.settle().await;
    assert_eq!(
        (
            report.deadlines_created,
            report.deadlines_met,
            report.deadlines_cancelled
        ),
        (3, 1, 2),
        "{report:?}"
    );
    let open: Vec<(String, i64, String)> = hub
        .deadlines()
        .await
        .into_iter()
        .filter(|d| {
            !matches!(
                d.1.as_str(),
                "DEADLINE_STATE_MET" | "DEADLINE_STATE_CANCELLED"
            )
        })
        .map(|d| (d.0, d.2, d.3))
        .collect();
    assert_eq!(
        open,
        [
            // Fixed by the first review: review sequence 1 (the plan's was 0).
            ("DEADLINE_KIND_PLAN_REVIEW".into(), 1, "2026-06-01".into()),
            ("DEADLINE_KIND_ACTION".into(), 2, "2026-03-20".into()),
            ("DEADLINE_KIND_ACTION".into(), 4, "2026-05-01".into()),
        ]
    );

    // Closure cancels everything open; nothing is raised for the case afterwards.
    hub.record(CaseEventKind::CaseClosed, 1, |_| {})
        .await
        .unwrap();
    let report = hub.settle().await;
    assert_eq!(report.deadlines_cancelled, 3);
    let refused = hub
        .record(CaseEventKind::AssessmentFiled, 1, |e| {
            e.risk_level = RiskLevel::Low as i32
        })
        .await
        .unwrap_err();
    assert!(matches!(refused, ServiceError::FailedPrecondition(_)));

    // Reopening: every stage again, a new assessment from the reopening.
    hub.clock.set(ts("2026-09-01T04:00:00Z"));
    hub.record(CaseEventKind::CaseReopened, 2, |_| {})
        .await
        .unwrap();
    hub.settle().await;
    let open: Vec<(String, String)> = hub
        .deadlines()
        .await
        .into_iter()
        .filter(|d| {
            !matches!(
                d.1.as_str(),
                "DEADLINE_STATE_MET" | "DEADLINE_STATE_CANCELLED"
            )
        })
        .map(|d| (d.0, d.3))
        .collect();
    assert_eq!(
        open,
        [("DEADLINE_KIND_ASSESSMENT".into(), "2026-09-22".into())]
    );
    // The reopened cycle's clock raises alerts as usual.
    hub.clock.set(ts("2026-09-19T19:00:00Z"));
    assert_eq!(hub.settle().await.alerts, 1);
    // And a replay of the whole ledger resurrects nothing.
    sqlx::query("UPDATE deadline_cursor SET last_seq = 0")
        .execute(hub.shared.db.pool())
        .await
        .unwrap();
    let before = hub.deadlines().await;
    let replay = hub.settle().await;
    assert_eq!(
        (
            replay.deadlines_created,
            replay.deadlines_met,
            replay.deadlines_cancelled
        ),
        (0, 0, 0)
    );
    assert_eq!(hub.deadlines().await, before);
    hub.shared.db.close().await;
}

#[tokio::test]
async fn a_completion_meets_the_row_of_the_cycle_its_assignment_was_sent_in() {
    use jiff::civil::date;
    let hub = hub("2026-01-20T04:00:00Z").await;
    hub.record(CaseEventKind::CaseOpened, 1, |_| {})
        .await
        .unwrap();
    hub.record(CaseEventKind::AssessmentFiled, 1, |e| {
        e.risk_level = RiskLevel::Low as i32
    })
    .await
    .unwrap();
    let rows = |e: &mut CaseEvent| e.actions = vec![row(1, date(2026, 12, 1), "ngo-1")];
    hub.record(CaseEventKind::SupportPlanFiled, 1, rows)
        .await
        .unwrap();
    let assignment = hub.assign_to_ngo(1, "Кеңес", date(2026, 12, 1)).await;
    hub.settle().await;
    hub.record(CaseEventKind::CaseClosed, 1, |_| {})
        .await
        .unwrap();
    hub.record(CaseEventKind::CaseReopened, 2, |_| {})
        .await
        .unwrap();
    hub.record(CaseEventKind::AssessmentFiled, 2, |e| {
        e.risk_level = RiskLevel::Low as i32
    })
    .await
    .unwrap();
    hub.record(CaseEventKind::SupportPlanFiled, 2, rows)
        .await
        .unwrap();
    hub.settle().await;
    // The agency completes the row it was assigned in the first cycle.
    hub.send(
        "ngo-1",
        Role::NgoCaseManager,
        "commission",
        payload::Form::ActionProgress(ActionProgress {
            assignment_message_id: assignment.clone(),
            case_reference: "KZ-2026-1".into(),
            action_number: 1,
            state: ActionProgressState::Completed as i32,
            note: String::new(),
            reported_on: day(date(2026, 1, 25)),
            reported_by: "NGO".into(),
        }),
        &assignment,
    )
    .await
    .unwrap();
    let report = hub.settle().await;
    assert_eq!(report.deadlines_met, 0, "{report:?}");
    let open: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM deadlines WHERE kind = 'DEADLINE_KIND_ACTION' AND cycle = 2 \
         AND state = 'DEADLINE_STATE_PENDING'",
    )
    .fetch_one(hub.shared.db.pool())
    .await
    .unwrap();
    assert_eq!(open, 1, "the second cycle's row is still open");
    hub.shared.db.close().await;
}

#[tokio::test]
async fn a_decision_applied_before_the_delivery_leaves_a_met_deadline() {
    let hub = hub(FRIDAY_BEFORE_HOLIDAY).await;
    let k = hub
        .send(
            "school-1",
            Role::SchoolDirector,
            "commission",
            payload::Form::HelpRequest(validate::sample_help_request(hub.local_today())),
            "",
        )
        .await
        .unwrap();
    // The commission decided before the gateway recorded the delivery.
    hub.send(
        "commission",
        Role::CommissionSecretary,
        "school-1",
        decision(&k, "KZ-2026-1"),
        &k,
    )
    .await
    .unwrap();
    delivery::record_delivery_for_test(&hub.shared, &k)
        .await
        .unwrap();
    hub.settle().await;
    hub.clock.set(ts("2026-04-30T00:00:00Z"));
    assert_eq!(hub.settle().await.alerts, 0);
    let d = hub.deadlines().await;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].1, "DEADLINE_STATE_MET");
    hub.shared.db.close().await;
}

#[tokio::test]
async fn record_case_event_checks_who_what_and_idempotency() {
    use jiff::civil::date;
    let hub = hub("2026-08-31T04:00:00Z").await;
    let commission = hub.agency("commission");
    let opened = CaseEvent {
        case_reference: "KZ-2026-7".into(),
        kind: CaseEventKind::CaseOpened as i32,
        occurred_at: Some(time::to_proto(hub.clock.now())),
        cycle: 1,
        curator_user_id: "curator-1".into(),
        ..Default::default()
    };
    let req = |user: &str, agency: &str, role: Role, event: CaseEvent| RecordCaseEventRequest {
        idempotency_key: "open-KZ-2026-7".into(),
        acting_user: Some(ActingUser {
            user_id: user.into(),
            agency_id: agency.into(),
            role: role as i32,
            display_name: String::new(),
        }),
        event: Some(event),
    };
    // Only a commission, for its curator, secretary or chair.
    let school = hub.agency("school-1");
    assert!(matches!(
        hub.shared
            .record_case_event(
                &school,
                req("d", "school-1", Role::SchoolDirector, opened.clone())
            )
            .await,
        Err(ServiceError::PermissionDenied(_))
    ));
    assert!(matches!(
        hub.shared
            .record_case_event(
                &commission,
                req("d", "school-1", Role::CommissionCurator, opened.clone())
            )
            .await,
        Err(ServiceError::PermissionDenied(_))
    ));
    assert!(matches!(
        hub.shared
            .record_case_event(
                &commission,
                req("d", "commission", Role::HealthWorker, opened.clone())
            )
            .await,
        Err(ServiceError::PermissionDenied(_))
    ));
    // Idempotent by (commission, key); another event under the key is refused.
    let first = hub
        .shared
        .record_case_event(
            &commission,
            req(
                "curator-1",
                "commission",
                Role::CommissionCurator,
                opened.clone(),
            ),
        )
        .await
        .unwrap();
    let again = hub
        .shared
        .record_case_event(
            &commission,
            req(
                "curator-1",
                "commission",
                Role::CommissionCurator,
                opened.clone(),
            ),
        )
        .await
        .unwrap();
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(first.event_id, again.event_id);
    let other = CaseEvent {
        cycle: 2,
        ..opened.clone()
    };
    assert!(matches!(
        hub.shared
            .record_case_event(
                &commission,
                req("curator-1", "commission", Role::CommissionCurator, other)
            )
            .await,
        Err(ServiceError::AlreadyExists(_))
    ));
    // A plan whose next review lies more than 6 months on: from 31 August, 28 February is the
    // last day allowed.
    hub.record(CaseEventKind::AssessmentFiled, 1, |e| {
        e.case_reference = "KZ-2026-7".into();
        e.risk_level = RiskLevel::Medium as i32;
    })
    .await
    .unwrap();
    let late = hub
        .record(CaseEventKind::SupportPlanFiled, 1, |e| {
            e.case_reference = "KZ-2026-7".into();
            e.next_review_on = day(date(2027, 3, 1));
            e.actions = vec![row(1, date(2026, 10, 1), "police-9")];
        })
        .await
        .unwrap_err();
    let ServiceError::InvalidArgument(v) = late else {
        panic!("{late:?}");
    };
    assert!(v.contains("event.next_review_on"), "{v}");
    assert!(v.contains("event.actions[0].responsible_agency_id"), "{v}");
    hub.record(CaseEventKind::SupportPlanFiled, 1, |e| {
        e.case_reference = "KZ-2026-7".into();
        e.next_review_on = day(date(2027, 2, 28));
    })
    .await
    .unwrap();
    // Every event is a ledger entry, and the chain holds.
    let events: Vec<String> =
        sqlx::query_scalar("SELECT event FROM ledger WHERE event LIKE 'case.%' ORDER BY seq")
            .fetch_all(hub.shared.db.pool())
            .await
            .unwrap();
    assert_eq!(
        events,
        [
            "case.case_opened",
            "case.assessment_filed",
            "case.support_plan_filed"
        ]
    );
    crate::ledger::verify(hub.shared.db.pool()).await.unwrap();
    hub.shared.db.close().await;
}

#[tokio::test]
async fn case_messages_follow_their_reply_rules() {
    use jiff::civil::date;
    let hub = hub(FRIDAY_BEFORE_HOLIDAY).await;
    // The gateway sends case messages only for a case it knows.
    hub.record(CaseEventKind::CaseOpened, 1, |_| {})
        .await
        .unwrap();
    let request = hub
        .send(
            "commission",
            Role::CommissionCurator,
            "health-1",
            payload::Form::InformationRequest(InformationRequest {
                case_reference: "KZ-2026-1".into(),
                child_full_name: "Әлия Нұрланова".into(),
                questions: "Баланың денсаулығы туралы мәлімет".into(),
                curator_user_id: "curator-1".into(),
                curator_name: "Дана Омарова".into(),
                ..Default::default()
            }),
            "",
        )
        .await
        .unwrap();
    let answer = |case: &str| {
        payload::Form::InformationResponse(InformationResponse {
            request_message_id: request.clone(),
            case_reference: case.into(),
            answer: "Есепте тұрмайды".into(),
            responder_name: "Дәрігер".into(),
            responder_position: String::new(),
        })
    };
    let wrong_case = hub
        .send(
            "health-1",
            Role::HealthWorker,
            "commission",
            answer("KZ-OTHER"),
            &request,
        )
        .await
        .unwrap_err();
    assert!(matches!(wrong_case, ServiceError::InvalidArgument(_)));
    hub.send(
        "health-1",
        Role::HealthWorker,
        "commission",
        answer("KZ-2026-1"),
        &request,
    )
    .await
    .unwrap();
    // A single answer: the second is refused.
    let second = hub
        .send(
            "health-1",
            Role::HealthWorker,
            "commission",
            answer("KZ-2026-1"),
            &request,
        )
        .await
        .unwrap_err();
    assert!(matches!(second, ServiceError::FailedPrecondition(_)));
    // The police did not receive the request: they cannot answer it.
    let stranger = hub
        .send(
            "police-1",
            Role::PoliceJuvenileInspector,
            "commission",
            answer("KZ-2026-1"),
            &request,
        )
        .await
        .unwrap_err();
    assert!(matches!(stranger, ServiceError::InvalidArgument(_)));
    // No agency may send a deadline alert.
    let forged = hub
        .send(
            "school-1",
            Role::SchoolDirector,
            "commission",
            payload::Form::DeadlineAlert(DeadlineAlert::default()),
            "",
        )
        .await
        .unwrap_err();
    assert!(matches!(forged, ServiceError::PermissionDenied(_)));
    // An assignment names the recipient as the row's agency; progress names the row.
    let assignment = hub
        .assign_to_ngo(2, "Отбасымен жұмыс", date(2026, 4, 1))
        .await;
    let wrong_row = hub
        .send(
            "ngo-1",
            Role::NgoCaseManager,
            "commission",
            payload::Form::ActionProgress(ActionProgress {
                assignment_message_id: assignment.clone(),
                case_reference: "KZ-2026-1".into(),
                action_number: 3,
                state: ActionProgressState::InProgress as i32,
                note: String::new(),
                reported_on: day(date(2026, 3, 6)),
                reported_by: "NGO".into(),
            }),
            &assignment,
        )
        .await
        .unwrap_err();
    let ServiceError::InvalidArgument(v) = wrong_row else {
        panic!("{wrong_row:?}");
    };
    assert!(v.contains("envelope.payload.action_progress.action_number"));
    // The envelope is given the payload's case reference.
    let envelope: Vec<u8> =
        sqlx::query_scalar("SELECT envelope FROM messages WHERE message_id = $1")
            .bind(&assignment)
            .fetch_one(hub.shared.db.pool())
            .await
            .unwrap();
    assert_eq!(
        Envelope::decode(envelope.as_slice())
            .unwrap()
            .case_reference,
        "KZ-2026-1"
    );
    hub.shared.db.close().await;
}

#[tokio::test]
async fn lists_are_scoped_ordered_by_lateness_and_paged() {
    let hub = hub(FRIDAY_BEFORE_HOLIDAY).await;
    for _ in 0..7 {
        hub.help_request_delivered().await;
        hub.clock.advance(SignedDuration::from_hours(24));
    }
    hub.settle().await;
    hub.clock.set(ts("2026-05-01T00:00:00Z"));
    hub.settle().await;
    let district = Scope::District(DISTRICT.into());
    let mut query = ListQuery {
        scope: district.clone(),
        states: vec![DeadlineState::Overdue, DeadlineState::Escalated],
        responsible_user_id: None,
        case_reference: None,
        page_size: 3,
        after: None,
    };
    let mut due = Vec::new();
    loop {
        let page = list(&hub.shared, &query).await.unwrap();
        assert!(page.deadlines.len() <= 3);
        due.extend(page.deadlines.iter().map(|d| {
            assert_eq!(d.kind, DeadlineKind::HelpRequestDecision as i32);
            time::from_proto(d.due_at.as_ref().unwrap()).unwrap()
        }));
        if page.next_page_token.is_empty() {
            break;
        }
        let (at, id) = page.next_page_token.split_once('.').unwrap();
        query.after = Some((at.parse().unwrap(), id.into()));
    }
    assert_eq!(due.len(), 7);
    assert!(due.windows(2).all(|w| w[0] <= w[1]), "most late first");
    // A school is responsible for none of them.
    query.scope = Scope::Agency("school-1".into());
    query.after = None;
    assert!(
        list(&hub.shared, &query)
            .await
            .unwrap()
            .deadlines
            .is_empty()
    );
    hub.shared.db.close().await;
}

mod agency_clocks;
