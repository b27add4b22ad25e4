//! Fault test 2 (issue 6): a recipient service down for a minute under load. Schools keep
//! submitting help requests K and an NGO keeps reporting progress on its rows of two cases while
//! the commission's service is stopped for [`OUTAGE`] of real time; the gateway acknowledges and
//! queues everything. When the commission is back, delivery resumes within seconds and every
//! message arrives exactly once, each case's progress reports in the order the NGO sent them (so
//! the curator sees the newest report's note, not an older one that arrived late).
//!
//! The hub runs on the system clock here: the gateway's retries and back-off run in real time.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use jiff::{Timestamp, ToSpan as _};
use referral_core::{config::DeliverySettings, time};
use referral_proto::v1::{ActionProgressState, FormKind, ReportActionProgressRequest};
use referral_tests::{Backend, HubOptions, TestHub, both_backends, load, samples::row};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long the commission's service stays down.
const OUTAGE: Duration = Duration::from_secs(60);
/// Load before the outage and after the return.
const LOAD_AROUND: Duration = Duration::from_secs(3);
/// Each K client's pause between two submissions, and the NGO's between two reports.
const K_PACE: Duration = Duration::from_millis(200);
const PROGRESS_PACE: Duration = Duration::from_millis(100);
/// The whole test's bound.
const BOUND: Duration = Duration::from_secs(300);
/// How soon after the commission's return the first queued message must reach it: the gateway's
/// back-off is capped at 2 s here.
const RESUME_WITHIN: Duration = Duration::from_secs(5);

both_backends!(a_recipient_down_for_a_minute_receives_everything_after_once_in_case_order);

/// One progress report the NGO sent (the NGO's list of them is in sending order).
#[derive(Debug, Clone)]
struct Report {
    case: String,
    note: String,
    message_id: String,
}

async fn a_recipient_down_for_a_minute_receives_everything_after_once_in_case_order(
    backend: Backend,
) {
    tokio::time::timeout(BOUND, run(backend))
        .await
        .unwrap_or_else(|_| panic!("the recipient outage test took longer than {BOUND:?}"));
}

async fn run(backend: Backend) {
    let started = Instant::now();
    let deadline = started + BOUND;
    let hub = TestHub::start_with(
        backend,
        HubOptions {
            real_clock: true,
            delivery: DeliverySettings {
                initial_backoff_ms: 200,
                max_backoff_ms: 2_000,
                attempt_timeout_ms: 5_000,
            },
            ..HubOptions::default()
        },
    )
    .await;
    let today = hub.today();

    // Two cases, each with a support-plan row assigned to the NGO.
    let curator = hub.staff("commission", "curator-1").await;
    let mut cases = Vec::new();
    for key in ["outage-a", "outage-b"] {
        let case = hub.open_case(key).await;
        curator
            .file_assessment_and_plan(
                &case,
                &format!("{key}-plan"),
                today,
                vec![row(1, today + 30.days(), "ngo-1")],
            )
            .await;
        cases.push(case);
    }
    hub.deliver_everything().await;
    let ngo = hub.staff("ngo-1", "case-manager").await;
    let mut assignments = Vec::new();
    for item in ngo.inbox_of(FormKind::ActionAssignment).await {
        let envelope = hub
            .gateway_envelope(&item.message_id)
            .await
            .expect("the assignment is stored");
        assignments.push((envelope.case_reference, item.message_id));
    }
    assignments.sort();
    assert_eq!(
        assignments.iter().map(|(c, _)| c).collect::<Vec<_>>(),
        {
            let mut sorted: Vec<&String> = cases.iter().collect();
            sorted.sort();
            sorted
        },
        "the NGO holds one row of each case"
    );

    let assignment_of: HashMap<String, String> = assignments.iter().cloned().collect();

    // The load: two schools' directors submit Ks, the NGO reports on both cases in turn.
    let stop_load = CancellationToken::new();
    let mut load = JoinSet::new();
    let ks: Arc<Mutex<Vec<String>>> = Arc::default();
    for (c, school) in ["school-1", "school-2", "school-1"].into_iter().enumerate() {
        let staff = hub.staff(school, "director").await;
        let (stop, ks) = (stop_load.clone(), ks.clone());
        load.spawn(async move {
            let mut n = u32::try_from(c).expect("few clients") * 10_000;
            while !stop.is_cancelled() {
                let ack = load::submit_until_acknowledged(
                    &staff,
                    &format!("outage-k-{n}"),
                    &load::child_k(today, n),
                    deadline,
                )
                .await;
                ks.lock().unwrap().push(ack.message_id);
                n += 1;
                tokio::time::sleep(K_PACE).await;
            }
        });
    }
    let reports: Arc<Mutex<Vec<Report>>> = Arc::default();
    {
        let (stop, reports) = (stop_load.clone(), reports.clone());
        load.spawn(async move {
            let mut i = 0_u32;
            while !stop.is_cancelled() {
                let (case, assignment) = &assignments[i as usize % assignments.len()];
                let note = format!("Есеп {i}");
                let key = format!("outage-progress-{i}");
                let message_id = loop {
                    let sent = ngo
                        .client
                        .clone()
                        .report_action_progress(ngo.req(ReportActionProgressRequest {
                            message_id: assignment.clone(),
                            idempotency_key: key.clone(),
                            state: ActionProgressState::InProgress as i32,
                            note: note.clone(),
                        }))
                        .await;
                    match sent {
                        Ok(r) => break r.into_inner().progress_message_id,
                        Err(s) if load::retryable(s.code()) && Instant::now() < deadline => {
                            tokio::time::sleep(load::RETRY_PAUSE).await;
                        }
                        Err(s) => panic!("progress report {i} refused: {s:?}"),
                    }
                };
                reports.lock().unwrap().push(Report {
                    case: case.clone(),
                    note,
                    message_id,
                });
                i += 1;
                tokio::time::sleep(PROGRESS_PACE).await;
            }
        });
    }

    tokio::time::sleep(LOAD_AROUND).await;
    hub.stop_agency("commission").await;
    let down_at = Timestamp::now();
    tokio::time::sleep(OUTAGE).await;
    hub.start_agency("commission")
        .await
        .expect("the commission starts again");
    let back_at = Timestamp::now();
    let back = Instant::now();
    tokio::time::sleep(LOAD_AROUND).await;
    stop_load.cancel();
    while let Some(done) = load.join_next().await {
        done.expect("a load client does not panic");
    }
    hub.deliver_everything().await;
    let drained = Instant::now();

    let ks = ks.lock().unwrap().clone();
    let reports = reports.lock().unwrap().clone();
    let pool = hub.gateway().database().pool().clone();
    let queued_in_outage: Vec<(String, String)> = sqlx::query_as(
        "SELECT message_id, form_kind FROM messages WHERE recipient_agency_id = 'commission' \
         AND created_at >= $1 AND created_at < $2",
    )
    .bind(time::to_micros(down_at))
    .bind(time::to_micros(back_at))
    .fetch_all(&pool)
    .await
    .unwrap();
    let count_of = |kind: FormKind| {
        queued_in_outage
            .iter()
            .filter(|(_, k)| k == kind.as_str_name())
            .count()
    };
    let (outage_ks, outage_reports) = (
        count_of(FormKind::HelpRequest),
        count_of(FormKind::ActionProgress),
    );
    assert!(
        outage_ks > 0 && outage_reports > 0,
        "the outage queued Ks ({outage_ks}) and progress reports ({outage_reports})"
    );

    // Delivery resumed within seconds of the return.
    let first_after: Option<i64> = sqlx::query_scalar(
        "SELECT MIN(delivered_at) FROM messages WHERE recipient_agency_id = 'commission' \
         AND delivered_at >= $1",
    )
    .bind(time::to_micros(back_at))
    .fetch_one(&pool)
    .await
    .unwrap();
    let resumed_after = time::from_micros(first_after.expect("deliveries after the return"))
        .duration_since(back_at);
    assert!(
        resumed_after.unsigned_abs() <= RESUME_WITHIN,
        "delivery resumed {resumed_after:#} after the commission's return"
    );

    // Every message to the commission arrived, exactly once: its store holds each id the gateway
    // acknowledged to it, and nothing else.
    let commission = referral_core::db::Database::connect(
        &hub.storage,
        &referral_agency::component_name("commission"),
    )
    .await
    .unwrap();
    let received: Vec<(String, i64)> =
        sqlx::query_as("SELECT message_id, received_at FROM received_messages")
            .fetch_all(commission.pool())
            .await
            .unwrap();
    let received_at: HashMap<String, i64> = received.iter().cloned().collect();
    let sent_to_commission: HashSet<String> = sqlx::query_scalar(
        "SELECT message_id FROM messages WHERE recipient_agency_id = 'commission'",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(
        received_at.keys().cloned().collect::<HashSet<_>>(),
        sent_to_commission,
        "the commission holds exactly what the gateway acknowledged for it"
    );
    assert_eq!(received.len(), received_at.len(), "no message twice");
    for id in ks.iter().chain(reports.iter().map(|r| &r.message_id)) {
        assert!(received_at.contains_key(id), "acknowledged {id} arrived");
    }

    // Each case's reports arrived in the order the NGO sent them.
    for case in &cases {
        let order: Vec<(&Report, i64)> = reports
            .iter()
            .filter(|r| &r.case == case)
            .map(|r| (r, received_at[&r.message_id]))
            .collect();
        for pair in order.windows(2) {
            assert!(
                pair[0].1 < pair[1].1,
                "case {case}: '{}' arrived at {} but the later '{}' at {}",
                pair[0].0.note,
                pair[0].1,
                pair[1].0.note,
                pair[1].1
            );
        }
        // What the curator reads: the newest report's note.
        let last = order.last().expect("reports on every case").0;
        let assignment = &assignment_of[case];
        let file = curator.get_case(case).await.expect("the case reads");
        let action = file
            .cycles
            .last()
            .and_then(|c| {
                c.actions
                    .iter()
                    .find(|a| &a.assignment_message_id == assignment)
            })
            .expect("the NGO's row")
            .clone();
        assert_eq!(action.last_note, last.note, "case {case}");
    }
    commission.close().await;
    eprintln!(
        "recipient outage ({backend:?}): {} Ks and {} progress reports, {outage_ks} and \
         {outage_reports} of them queued during the {OUTAGE:?} outage; delivery resumed \
         {resumed_after:#} after the return; drained {:?} after it; whole test {:?}",
        ks.len(),
        reports.len(),
        drained.duration_since(back),
        started.elapsed()
    );
    hub.shutdown().await;
}
