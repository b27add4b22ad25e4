//! Fault test 1 (issue 6): `kill -9` of the all-in-one process in the middle of 10,000 help
//! requests K. 32 clients (the school's director, each on a connection of its own) submit them,
//! each K under its own idempotency key, trying again with the same key after every failure until
//! acknowledged. After about 3,000 acknowledgements the process gets SIGKILL and is started again
//! on the same data and ports while the clients keep trying. Then every acknowledged message id is
//! in the commission's store exactly once, no id twice, exactly 10,000 in all, a key asked again
//! answers the id it was acknowledged with, and the gateway's ledger chain verifies.
//!
//! The real binary runs as a child process, so no event crosses into the test: delivery is awaited
//! by reading the commission's store in a bounded loop.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    time::{Duration, Instant},
};

use referral_tests::{Backend, almaty, load, postgres, process::HubProcess};
use tokio::{sync::watch, task::JoinSet};

const SUBMISSIONS: u32 = 10_000;
const CLIENTS: u32 = 32;
/// Acknowledgements before the kill.
const KILL_AFTER: u32 = 3_000;
/// The whole test's bound (the CI machine has 2 cores).
const BOUND: Duration = Duration::from_secs(360);
/// How often the test looks at the commission's store while waiting for delivery.
const POLL: Duration = Duration::from_millis(250);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_10000_ks_loses_and_doubles_nothing_sqlite() {
    referral_tests::init_for_tests();
    bounded(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_10000_ks_loses_and_doubles_nothing_postgres() {
    referral_tests::init_for_tests();
    if postgres::available() {
        bounded(Backend::Postgres).await;
    }
}

async fn bounded(backend: Backend) {
    tokio::time::timeout(BOUND, crash_in_the_middle(backend))
        .await
        .unwrap_or_else(|_| panic!("the crash test ({backend:?}) took longer than {BOUND:?}"));
}

async fn crash_in_the_middle(backend: Backend) {
    let started = Instant::now();
    let deadline = started + BOUND;
    let url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(postgres::fresh_database().await.expect("a database")),
    };
    let mut hub = HubProcess::new(Path::new(env!("CARGO_BIN_EXE_referral-hub")), url)
        .expect("the hub's directory");
    // The commission dies with the process: after the restart the gateway retries soon.
    hub.setting("DELIVERY__INITIAL_BACKOFF_MS", "200")
        .setting("DELIVERY__MAX_BACKOFF_MS", "2000");
    hub.start().await.expect("the hub starts");
    let today = jiff::Zoned::now().with_time_zone(almaty()).date();

    let (acks_tx, mut acks) = watch::channel(0_u32);
    let mut clients = JoinSet::new();
    for c in 0..CLIENTS {
        let staff = hub
            .staff("school-1", "director")
            .await
            .expect("a staff client");
        let acks_tx = acks_tx.clone();
        clients.spawn(async move {
            let mut mine = Vec::new();
            for n in (c..SUBMISSIONS).step_by(CLIENTS as usize) {
                let key = format!("crash-k-{n:05}");
                let ack = load::submit_until_acknowledged(
                    &staff,
                    &key,
                    &load::child_k(today, n),
                    deadline,
                )
                .await;
                acks_tx.send_modify(|a| *a += 1);
                mine.push((n, ack));
            }
            (staff, mine)
        });
    }
    drop(acks_tx);

    acks.wait_for(|a| *a >= KILL_AFTER)
        .await
        .expect("the clients acknowledge");
    hub.kill().expect("SIGKILL");
    let killed_at = *acks.borrow();
    let down = Instant::now();
    hub.start().await.expect("the hub starts again");
    let restart = down.elapsed();

    let mut acked: HashMap<u32, load::Acknowledged> = HashMap::new();
    let mut staff = None;
    while let Some(done) = clients.join_next().await {
        let (client, mine) = done.expect("a client does not panic");
        staff.get_or_insert(client);
        acked.extend(mine);
    }
    let staff = staff.expect("a client");
    let submitted = started.elapsed();
    assert!(
        (KILL_AFTER..SUBMISSIONS).contains(&killed_at),
        "killed after {killed_at} acknowledgements"
    );
    assert_eq!(acked.len(), SUBMISSIONS as usize);
    let ids: HashSet<&str> = acked.values().map(|a| a.message_id.as_str()).collect();
    assert_eq!(
        ids.len(),
        SUBMISSIONS as usize,
        "every key was acknowledged with an id of its own"
    );
    let interrupted: Vec<u32> = acked
        .iter()
        .filter(|(_, a)| a.failures > 0)
        .map(|(n, _)| *n)
        .collect();
    assert!(
        !interrupted.is_empty(),
        "some submissions failed while the hub was down"
    );

    // A key asked again answers the id it was acknowledged with: every interrupted one and every
    // hundredth of the others.
    let mut replays = 0;
    for (n, ack) in &acked {
        if ack.failures == 0 && n % 100 != 0 {
            continue;
        }
        let again = load::submit_until_acknowledged(
            &staff,
            &format!("crash-k-{n:05}"),
            &load::child_k(today, *n),
            deadline,
        )
        .await;
        assert_eq!(
            again.message_id, ack.message_id,
            "key crash-k-{n:05} replayed"
        );
        replays += 1;
    }

    // Delivery: the commission's store holds every acknowledged id, once, and nothing else.
    let commission = hub
        .store("commission")
        .await
        .expect("the commission's store");
    let received = loop {
        let received: Vec<String> = sqlx::query_scalar(
            "SELECT message_id FROM received_messages WHERE sender_agency_id = 'school-1'",
        )
        .fetch_all(commission.pool())
        .await
        .expect("the commission's inbox reads");
        if received.len() >= SUBMISSIONS as usize {
            break received;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {SUBMISSIONS} delivered by the deadline",
            received.len()
        );
        tokio::time::sleep(POLL).await;
    };
    let delivered = started.elapsed();
    let received_ids: HashSet<&str> = received.iter().map(String::as_str).collect();
    assert_eq!(received.len(), received_ids.len(), "no message id twice");
    assert_eq!(
        received_ids, ids,
        "the commission holds exactly the acknowledged messages"
    );
    commission.close().await;

    // The gateway and the school agree: one message per key, none left to deliver or to send.
    let gateway = hub.store("gateway").await.expect("the gateway's store");
    let (messages, keys, queued): (i64, i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT idempotency_key), \
         COALESCE(SUM(CASE WHEN state = 'queued' THEN 1 ELSE 0 END), 0) \
         FROM messages WHERE sender_agency_id = 'school-1'",
    )
    .fetch_one(gateway.pool())
    .await
    .expect("the gateway's messages read");
    assert_eq!(
        (messages, keys, queued),
        (i64::from(SUBMISSIONS), i64::from(SUBMISSIONS), 0)
    );
    gateway.close().await;
    let school = hub.store("school-1").await.expect("the school's store");
    let (sent, pending): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN status = 'sent' THEN 0 ELSE 1 END), 0) \
         FROM sent_messages",
    )
    .fetch_one(school.pool())
    .await
    .expect("the school's sent messages read");
    assert_eq!((sent, pending), (i64::from(SUBMISSIONS), 0));
    school.close().await;

    // The ledger the killed process was appending to is an intact chain.
    let verified = referral_hub::audit::verify(&hub.storage())
        .await
        .expect("the ledger verifies after kill -9");
    eprintln!(
        "kill -9 ({backend:?}): killed after {killed_at} of {SUBMISSIONS} acknowledgements, \
         restarted in {restart:?}; {} submissions failed at least once, {replays} replays \
         answered their first id; all acknowledged after {submitted:?}, all delivered after \
         {delivered:?}; ledger {verified:?}",
        interrupted.len()
    );
    hub.kill().expect("the hub stops");
}
