//! Issue 6, fault test 4: two gateway replicas over one store (one PostgreSQL database, or one
//! SQLite file) raise every deadline alert exactly once, deliver each alert message once, and a
//! deadline watcher connected to either replica sees every alert once, whichever replica raised
//! it. Each on SQLite and on PostgreSQL.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use jiff::Timestamp;
use referral_core::{time, validate};
use referral_proto::v1::{DeadlineAlert, DeadlineState, FormKind, WatchDeadlinesRequest};
use referral_tests::{Backend, HubOptions, TestHub, both_backends};
use tokio::sync::broadcast;

/// Every instant at which one of `deadlines` changes state, earliest first.
fn transition_instants(deadlines: &[referral_proto::v1::Deadline]) -> Vec<Timestamp> {
    let mut instants = BTreeSet::new();
    for d in deadlines {
        for at in [&d.warn_at, &d.due_day_starts_at, &d.due_at, &d.escalate_at]
            .into_iter()
            .flatten()
        {
            instants.insert(time::from_proto(at).expect("a valid instant"));
        }
    }
    instants.into_iter().collect()
}

/// The next alert a replica broadcasts (as its `WatchDeadlines` streams see it).
async fn next_alert(
    index: usize,
    alerts: &mut broadcast::Receiver<DeadlineAlert>,
) -> DeadlineAlert {
    match alerts.recv().await {
        Ok(alert) => alert,
        Err(e) => panic!("replica {index}'s alert watcher: {e}"),
    }
}

/// The rows of `deadline_alerts`: one per (deadline, state) entered.
async fn alert_rows(hub: &TestHub) -> Vec<(String, String)> {
    sqlx::query_as("SELECT deadline_id, state FROM deadline_alerts ORDER BY deadline_id, raised_at")
        .fetch_all(hub.gateway().database().pool())
        .await
        .unwrap()
}

/// Receives from `watch` until it has seen `expected` distinct (deadline, state) alerts, within
/// 60 seconds; returns how many times each was seen.
async fn watch_until<F>(what: &str, expected: usize, mut next: F) -> BTreeMap<(String, i32), usize>
where
    F: AsyncFnMut() -> Option<DeadlineAlert>,
{
    let mut seen: BTreeMap<(String, i32), usize> = BTreeMap::new();
    let wait = async {
        while seen.len() < expected {
            let Some(alert) = next().await else {
                panic!("{what} ended after {} of {expected} alerts", seen.len());
            };
            let deadline_id = alert
                .deadline
                .expect("an alert names its deadline")
                .deadline_id;
            *seen.entry((deadline_id, alert.state)).or_default() += 1;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .unwrap_or_else(|_| panic!("{what} did not see {expected} alerts within 60s"));
    seen
}

// Both replicas run their deadline engine and delivery worker; every step of the clock wakes
// both engines at once (the manual clock wakes their sleeps) and the test settles both again
// concurrently, so up to four sweeps race for the same deadlines.
async fn two_replicas_raise_each_deadline_alert_once(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let replica = hub.start_replica_gateway().await.unwrap();
    let replicas = [hub.gateway(), replica.clone()];
    let mut taps: Vec<_> = replicas.iter().map(|g| g.subscribe_alerts()).collect();
    // Cases (an assessment clock each, the curator's) and help requests left undecided (a
    // decision clock each, the secretary's).
    for n in 0..4 {
        hub.open_case(&format!("replica-case-{n}")).await;
    }
    let director = hub.staff("school-1", "director").await;
    for n in 0..4 {
        let id = director
            .submit_k(
                &format!("replica-undecided-{n}"),
                "",
                validate::sample_help_request(hub.today()),
            )
            .await
            .unwrap();
        hub.delivered(&id).await;
    }
    let (a, b) = tokio::join!(replicas[0].settle(), replicas[1].settle());
    a.unwrap();
    b.unwrap();
    // The secretary lists every deadline of the district.
    let secretary = hub.staff("commission", "secretary").await;
    let deadlines = secretary.all_deadlines("").await;
    let open: Vec<_> = deadlines
        .iter()
        .filter(|d| d.state == DeadlineState::Pending as i32)
        .cloned()
        .collect();
    assert_eq!(
        open.len(),
        8,
        "four assessments and four decisions: {deadlines:?}"
    );

    // A watcher through the commission's own service (connected to the first replica).
    let mut watch = secretary
        .client
        .clone()
        .watch_deadlines(secretary.req(WatchDeadlinesRequest::default()))
        .await
        .expect("watching")
        .into_inner();

    let mut expected_rows = 0;
    for at in transition_instants(&open) {
        hub.clock.set(at);
        // Every deadline whose instants have come has entered that many states.
        expected_rows += open
            .iter()
            .map(|d| {
                [&d.warn_at, &d.due_day_starts_at, &d.due_at, &d.escalate_at]
                    .into_iter()
                    .flatten()
                    .filter(|t| time::from_proto(t).unwrap() == at)
                    .count()
            })
            .sum::<usize>();
        let (a, b) = tokio::join!(replicas[0].settle(), replicas[1].settle());
        a.unwrap();
        b.unwrap();
        assert_eq!(alert_rows(&hub).await.len(), expected_rows, "at {at}");
    }
    assert_eq!(
        expected_rows,
        open.len() * 4,
        "warned, due, overdue, escalated each"
    );

    // One row per (deadline, state), in the order the states come.
    let rows = alert_rows(&hub).await;
    let mut per_deadline: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (deadline, state) in rows {
        per_deadline.entry(deadline).or_default().push(state);
    }
    assert_eq!(per_deadline.len(), open.len());
    for (deadline, states) in &per_deadline {
        assert_eq!(
            states,
            &[
                "DEADLINE_STATE_WARNED",
                "DEADLINE_STATE_DUE",
                "DEADLINE_STATE_OVERDUE",
                "DEADLINE_STATE_ESCALATED"
            ],
            "the alerts of {deadline}"
        );
    }

    // Every replica's watchers saw each alert once, whichever replica raised it, and nothing
    // more once its feed has read the whole ledger (a late copy would be there by then).
    let ledger_end: i64 = sqlx::query_scalar("SELECT MAX(seq) FROM ledger")
        .fetch_one(hub.gateway().database().pool())
        .await
        .unwrap();
    for (i, tap) in taps.iter_mut().enumerate() {
        let seen = watch_until(
            &format!("replica {i}'s watchers"),
            expected_rows,
            async || Some(next_alert(i, tap).await),
        )
        .await;
        let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
        assert!(repeated.is_empty(), "replica {i} repeated {repeated:?}");
        tokio::time::timeout(
            Duration::from_secs(60),
            replicas[i].alert_feed_reached(ledger_end),
        )
        .await
        .unwrap_or_else(|_| panic!("replica {i}'s feed did not reach the ledger's end"));
        assert!(
            matches!(tap.try_recv(), Err(broadcast::error::TryRecvError::Empty)),
            "replica {i} broadcast more than one alert per (deadline, state)"
        );
    }
    let seen = watch_until("the secretary's watch", expected_rows, async || {
        watch.message().await.expect("the stream is healthy")
    })
    .await;
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
    assert!(repeated.is_empty(), "the watch repeated {repeated:?}");

    // Each alert message stored, acknowledged in the ledger and delivered once.
    hub.deliver_everything().await;
    let alert_kind = FormKind::DeadlineAlert.as_str_name();
    let messages: Vec<String> = sqlx::query_scalar(
        "SELECT idempotency_key FROM messages WHERE form_kind = $1 ORDER BY idempotency_key",
    )
    .bind(alert_kind)
    .fetch_all(hub.gateway().database().pool())
    .await
    .unwrap();
    let distinct: BTreeSet<&String> = messages.iter().collect();
    assert_eq!(
        distinct.len(),
        messages.len(),
        "one message per alert and addressee"
    );
    for event in ["message.accepted", "message.delivered"] {
        let entries: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM ledger WHERE event = $1 AND form_kind = $2")
                .bind(event)
                .bind(alert_kind)
                .fetch_one(hub.gateway().database().pool())
                .await
                .unwrap();
        assert_eq!(
            entries,
            messages.len() as i64,
            "{event} once per alert message"
        );
    }
    // The commission's inbox holds each alert once per addressee: an assessment's and a
    // decision's warned and due alerts go to the responsible person, overdue to them and the
    // secretary, escalated to the chair.
    // The secretary logs in again (weeks have passed on the clock).
    let secretary = hub.staff("commission", "secretary").await;
    let inbox = secretary.deadline_alerts().await;
    assert_eq!(
        inbox.len(),
        messages.len(),
        "every alert message reached the inbox once"
    );
    let mut per_addressee: BTreeMap<(String, i32, i32, String), usize> = BTreeMap::new();
    for alert in &inbox {
        let deadline_id = alert.deadline.as_ref().unwrap().deadline_id.clone();
        *per_addressee
            .entry((
                deadline_id,
                alert.state,
                alert.addressed_to_role,
                alert.addressed_to_user_id.clone(),
            ))
            .or_default() += 1;
    }
    assert!(
        per_addressee.values().all(|n| *n == 1),
        "an addressee told twice: {per_addressee:?}"
    );
    let told: BTreeSet<(String, i32)> = per_addressee
        .keys()
        .map(|(d, state, _, _)| (d.clone(), *state))
        .collect();
    assert_eq!(told.len(), expected_rows, "every (deadline, state) told");
    hub.gateway()
        .verify_ledger()
        .await
        .expect("one linear chain");
    hub.shutdown().await;
}

// The alerts one replica raises reach the watchers connected to the other: here only the
// second replica's engine runs (the first's is off and never settled), while the commission's
// watch is connected to the first.
async fn a_watcher_on_one_replica_sees_the_alerts_the_other_raises(backend: Backend) {
    let hub = TestHub::start_with(
        backend,
        HubOptions {
            run_deadline_engine: false,
            ..HubOptions::default()
        },
    )
    .await;
    let replica = hub.start_replica_gateway().await.unwrap();
    let mut first = hub.gateway().subscribe_alerts();
    let case = hub.open_case("cross-replica-watch").await;
    replica.settle().await.unwrap();
    let secretary = hub.staff("commission", "secretary").await;
    let deadlines: Vec<_> = secretary
        .all_deadlines(&case)
        .await
        .into_iter()
        .filter(|d| d.state == DeadlineState::Pending as i32)
        .collect();
    assert_eq!(deadlines.len(), 1, "the assessment clock");
    let mut watch = secretary
        .client
        .clone()
        .watch_deadlines(secretary.req(WatchDeadlinesRequest::default()))
        .await
        .expect("watching")
        .into_inner();
    hub.clock
        .set(time::from_proto(deadlines[0].escalate_at.as_ref().unwrap()).unwrap());
    let report = replica.settle().await.unwrap();
    assert_eq!(
        report.alerts, 4,
        "warned, due, overdue and escalated, by the replica"
    );
    let seen = watch_until("the first replica's watchers", 4, async || {
        Some(next_alert(0, &mut first).await)
    })
    .await;
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    // Nothing more once the first replica's feed has read the whole ledger.
    let ledger_end: i64 = sqlx::query_scalar("SELECT MAX(seq) FROM ledger")
        .fetch_one(hub.gateway().database().pool())
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(60),
        hub.gateway().alert_feed_reached(ledger_end),
    )
    .await
    .expect("the first replica's feed reaches the ledger's end");
    assert!(
        matches!(first.try_recv(), Err(broadcast::error::TryRecvError::Empty)),
        "the first replica relayed an alert twice"
    );
    let seen = watch_until("the secretary's watch", 4, async || {
        watch.message().await.expect("the stream is healthy")
    })
    .await;
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    hub.shutdown().await;
}

both_backends!(
    two_replicas_raise_each_deadline_alert_once,
    a_watcher_on_one_replica_sees_the_alerts_the_other_raises,
);
