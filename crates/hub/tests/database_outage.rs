//! Fault test 3 (issue 6): the database unreachable. The all-in-one process runs over a
//! PostgreSQL cluster of the test's own; while clients are submitting help requests K the cluster
//! is stopped (`pg_ctl -m fast`: sessions ended, new connections refused) for [`OUTAGE`]. Meanwhile
//! calls that need a store answer `UNAVAILABLE` within [`FAIL_FAST`] (the pool gives up after
//! `referral_core::db::PG_ACQUIRE_TIMEOUT`, not after a long acquire timeout), the process stays
//! up, and its background loops (delivery, the deadline engine, the agencies' retry loops) log
//! and back off instead of spinning or dying. When the cluster is back, new calls succeed and
//! every message acknowledged before the outage reaches the commission: nothing is lost.
//!
//! PostgreSQL only. On SQLite each store is a local file the process opens itself: there is no
//! server or network between them that could go away and come back, so there is no outage to
//! simulate (a full disk or a deleted file are other faults, not tested here).

use std::{
    collections::HashSet,
    path::Path,
    time::{Duration, Instant},
};

use referral_proto::v1::ListInboxRequest;
use referral_tests::{almaty, load, postgres::DedicatedCluster, process::HubProcess};
use tokio::{sync::watch, task::JoinSet};
use tonic::Code;

/// Help requests submitted under load across the outage (which begins after half of them are
/// acknowledged), and afterwards.
const BEFORE: u32 = 300;
const AFTER: u32 = 50;
/// Concurrent clients submitting the Ks before the outage.
const CLIENTS: u32 = 8;
/// How long the database stays down.
const OUTAGE: Duration = Duration::from_secs(15);
/// How soon a call must be refused while the database is down.
const FAIL_FAST: Duration = Duration::from_secs(4);
/// How many log lines the process may write per second of outage: a loop retrying without
/// back-off would write thousands.
const LOG_LINES_PER_SECOND: usize = 60;
/// The whole test's bound.
const BOUND: Duration = Duration::from_secs(240);
/// How often the test looks at the commission's store while waiting for delivery.
const POLL: Duration = Duration::from_millis(250);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_fails_calls_fast_and_loses_nothing_postgres() {
    referral_tests::init_for_tests();
    let Some(cluster) = DedicatedCluster::start().expect("a PostgreSQL cluster") else {
        return;
    };
    tokio::time::timeout(BOUND, outage(&cluster))
        .await
        .unwrap_or_else(|_| panic!("the database outage test took longer than {BOUND:?}"));
}

async fn outage(cluster: &DedicatedCluster) {
    let started = Instant::now();
    let deadline = started + BOUND;
    let mut hub = HubProcess::new(
        Path::new(env!("CARGO_BIN_EXE_referral-hub")),
        Some(cluster.url()),
    )
    .expect("the hub's directory");
    hub.setting("DELIVERY__INITIAL_BACKOFF_MS", "200")
        .setting("DELIVERY__MAX_BACKOFF_MS", "2000")
        .setting("DELIVERY__ATTEMPT_TIMEOUT_MS", "2000");
    hub.start().await.expect("the hub starts");
    let today = jiff::Zoned::now().with_time_zone(almaty()).date();

    // The outage comes under load: clients submitting Ks, each trying again with its key until
    // acknowledged, across the outage.
    let (acks_tx, mut acks) = watch::channel(0_u32);
    let mut clients = JoinSet::new();
    for c in 0..CLIENTS {
        let staff = hub.staff("school-1", "director").await.expect("a client");
        let acks_tx = acks_tx.clone();
        clients.spawn(async move {
            let mut acked = Vec::new();
            for n in (c..BEFORE).step_by(CLIENTS as usize) {
                let k = load::child_k(today, n);
                let key = format!("load-k-{n:04}");
                acked.push(load::submit_until_acknowledged(&staff, &key, &k, deadline).await);
                acks_tx.send_modify(|a| *a += 1);
            }
            acked
        });
    }
    drop(acks_tx);
    acks.wait_for(|a| *a >= BEFORE / 2)
        .await
        .expect("the clients acknowledge");
    // What the gateway still had to deliver a moment before the outage.
    let gateway = hub.store("gateway").await.expect("the gateway's store");
    let queued_at_outage: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
        .fetch_one(gateway.pool())
        .await
        .unwrap();
    gateway.close().await;

    let log = hub.log_path(1);
    let lines_before = log_lines(&log);
    cluster.stop().expect("the database stops");
    let down = Instant::now();

    // Calls that need a store are refused at once with UNAVAILABLE.
    let director = hub.staff("school-1", "director").await.unwrap();
    let secretary = hub.staff("commission", "secretary").await.unwrap();
    let mut slowest = Duration::ZERO;
    for i in 0..3 {
        let asked = Instant::now();
        let refused = director
            .submit_k(
                &format!("during-k-{i}"),
                "",
                load::child_k(today, BEFORE + i),
            )
            .await
            .expect_err("no K is acknowledged without a store");
        let took = asked.elapsed();
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(
            took <= FAIL_FAST,
            "SubmitHelpRequest refused after {took:?}"
        );
        slowest = slowest.max(took);

        let asked = Instant::now();
        let refused = secretary
            .client
            .clone()
            .list_inbox(secretary.req(ListInboxRequest::default()))
            .await
            .expect_err("no inbox without a store");
        let took = asked.elapsed();
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(took <= FAIL_FAST, "ListInbox refused after {took:?}");
        slowest = slowest.max(took);
    }

    // The outage lasts: the scenario's own duration, not a wait for something.
    tokio::time::sleep(OUTAGE.saturating_sub(down.elapsed())).await;
    assert!(
        hub.is_running(),
        "the process stays up without its database"
    );
    let outage_lines = log_lines(&log) - lines_before;
    let outage_secs = usize::try_from(down.elapsed().as_secs()).unwrap_or(usize::MAX) + 1;
    assert!(
        outage_lines <= LOG_LINES_PER_SECOND * outage_secs,
        "{outage_lines} log lines in {outage_secs} s of outage: a loop is not backing off"
    );
    assert!(
        outage_lines > 0,
        "the background loops say that they cannot reach the store"
    );

    cluster.restart().expect("the database starts again");
    let back = Instant::now();
    let mut acknowledged: HashSet<String> = HashSet::new();
    let mut failed_calls = 0;
    while let Some(acked) = clients.join_next().await {
        for ack in acked.expect("a client does not panic") {
            failed_calls += ack.failures;
            acknowledged.insert(ack.message_id);
        }
    }
    assert!(
        failed_calls > 0,
        "the outage came while the clients were submitting"
    );

    // New calls succeed (the first may still meet the pool reconnecting).
    let mut first_success = None;
    for n in BEFORE + 10..BEFORE + 10 + AFTER {
        let ack = load::submit_until_acknowledged(
            &director,
            &format!("after-k-{n:04}"),
            &load::child_k(today, n),
            deadline,
        )
        .await;
        first_success.get_or_insert_with(|| back.elapsed());
        acknowledged.insert(ack.message_id);
    }
    let first_success = first_success.expect("calls succeed");

    // Everything acknowledged, before the outage and after, reaches the commission, once.
    let commission = hub
        .store("commission")
        .await
        .expect("the commission's store");
    let received: HashSet<String> = loop {
        let received: Vec<String> = sqlx::query_scalar(
            "SELECT message_id FROM received_messages WHERE sender_agency_id = 'school-1'",
        )
        .fetch_all(commission.pool())
        .await
        .expect("the commission's inbox reads");
        let received: HashSet<String> = received.into_iter().collect();
        if acknowledged.is_subset(&received) {
            break received;
        }
        assert!(
            Instant::now() < deadline,
            "{} acknowledged Ks not delivered by the deadline",
            acknowledged.difference(&received).count()
        );
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(
        received, acknowledged,
        "the commission holds what was acknowledged, nothing else"
    );
    commission.close().await;
    assert!(hub.is_running(), "the process is still up");
    eprintln!(
        "database outage: the outage came after {} of {BEFORE} Ks under load ({queued_at_outage} \
         queued at the gateway a moment before), {failed_calls} of the clients' calls failed \
         meanwhile; calls refused with UNAVAILABLE within {slowest:?} (slowest), {outage_lines} \
         log lines in {outage_secs} s of outage, first call after the return succeeded after \
         {first_success:?}, all {} delivered; whole test {:?}",
        BEFORE / 2,
        acknowledged.len(),
        started.elapsed()
    );
    hub.kill().expect("the hub stops");
}

/// How many lines a log file holds.
fn log_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|text| text.lines().count())
        .unwrap_or(0)
}
