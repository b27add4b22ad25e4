//! Graceful shutdown (issue 6): a component told to stop stops accepting connections at once,
//! finishes the calls in flight and the delivery batch it is pushing, then exits; nothing is left
//! half-done. Each on SQLite and on PostgreSQL.

use std::time::{Duration, Instant};

use referral_core::{
    db::{Backend as StoreBackend, Database},
    validate,
};
use referral_tests::{Backend, TestHub, both_backends};

/// Waits until nothing accepts connections on `port` any more (no event says so: polled, with a
/// deadline).
async fn refused(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "port {port} still accepts connections 10 s after shutdown began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` until it holds (there is no event for a row appearing in another component's
/// store), for at most 10 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn port_of(hub: &TestHub, agency_id: &str) -> u16 {
    hub.directory
        .agency(agency_id)
        .unwrap()
        .endpoint
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// A call in flight when its agency begins to stop completes OK; the agency then refuses new
/// connections.
async fn a_call_in_flight_completes_when_its_agency_stops(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let director = hub.staff("school-1", "director").await;

    // Hold the gateway's ledger head, which every Send takes first: the school's call, once it
    // has stored its pending K, waits at the gateway.
    let gateway_db = hub.gateway().database().clone();
    let mut held = gateway_db.begin().await.unwrap();
    sqlx::query("UPDATE ledger_head SET last_seq = last_seq")
        .execute(&mut *held)
        .await
        .unwrap();

    let today = hub.today();
    let call = tokio::spawn(async move {
        director
            .submit_k("in-flight-k", "", validate::sample_help_request(today))
            .await
    });
    eventually("the school stores its pending K", || async {
        hub.agency_count("school-1", "sent_messages").await == 1
    })
    .await;

    let port = port_of(&hub, "school-1");
    tokio::join!(hub.stop_agency("school-1"), async {
        // Shutdown has begun: no new connection is accepted...
        refused(port).await;
        // ...and the call in flight is still waiting; let it go on.
        held.rollback().await.unwrap();
    });
    let message_id = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the call in flight is answered")
        .unwrap()
        .expect("the call in flight completes OK");
    hub.delivered(&message_id).await;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "a stopped agency accepts no connection"
    );
}

/// A message the gateway is delivering when it begins to stop is delivered and recorded, not
/// left leased by a worker that is gone.
async fn the_delivery_under_way_finishes_when_the_gateway_stops(backend: Backend) {
    let hub = TestHub::start(backend).await;
    // Hold the commission's inbox table: the gateway's push of the K waits in its Deliver.
    let commission =
        Database::connect(&hub.storage, &referral_agency::component_name("commission"))
            .await
            .unwrap();
    let mut held = commission.begin().await.unwrap();
    let lock = match commission.backend() {
        StoreBackend::Postgres => "LOCK TABLE received_messages IN EXCLUSIVE MODE",
        // A write statement takes SQLite's one write lock, even when it changes no row.
        _ => "DELETE FROM received_messages WHERE 1 = 0",
    };
    sqlx::query(lock).execute(&mut *held).await.unwrap();

    let director = hub.staff("school-1", "director").await;
    let message_id = director
        .submit_k(
            "delivered-at-shutdown",
            "",
            validate::sample_help_request(hub.today()),
        )
        .await
        .expect("the K is accepted");
    let gateway_db = hub.gateway().database().clone();
    eventually("the worker leases the K", || async {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT lease_owner FROM outbox WHERE message_id = $1",
        )
        .bind(&message_id)
        .fetch_optional(gateway_db.pool())
        .await
        .unwrap()
        .flatten()
        .is_some()
    })
    .await;

    tokio::join!(hub.stop_gateway(), async {
        refused(hub.gateway_port).await;
        held.rollback().await.unwrap();
    });

    // The gateway has stopped: read its store as it left it.
    let gateway = Database::connect(&hub.storage, "gateway").await.unwrap();
    let state: String = sqlx::query_scalar("SELECT state FROM messages WHERE message_id = $1")
        .bind(&message_id)
        .fetch_one(gateway.pool())
        .await
        .unwrap();
    assert_eq!(state, "delivered", "the push under way was finished");
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
        .fetch_one(gateway.pool())
        .await
        .unwrap();
    assert_eq!(left, 0, "no outbox row is left leased");
    gateway.close().await;
    assert_eq!(
        hub.agency_count("commission", "received_messages").await,
        1,
        "the commission stored the K once"
    );
}

both_backends!(
    a_call_in_flight_completes_when_its_agency_stops,
    the_delivery_under_way_finishes_when_the_gateway_stops,
);
