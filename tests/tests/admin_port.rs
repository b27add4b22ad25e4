//! The admin port (`referral_core::admin`) of real components: `/healthz` answers while the
//! process is up, `/readyz` only while the store answers and its migrations ran, and `/metrics`
//! is Prometheus text whose gauges and counters follow what the hub did (the outbox filling while
//! the commission is down and draining when it is back, deliveries, a deadline a K opened, a
//! refused read) without a trace of the child the forms were about.
//!
//! `cargo test -p referral-tests --test admin_port`

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use jiff::SignedDuration;
use referral_core::{admin::AdminServer, validate};
use referral_proto::v1::PurposeOfUse;
use referral_tests::{Backend, TestHub, both_backends};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

both_backends!(admin_port_reports_health_readiness_and_metrics);

/// An answer of the admin port: status code, headers (lower-case names), body.
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// `GET path` over HTTP/1.0 (the server closes the connection after its answer).
async fn get(addr: SocketAddr, path: &str) -> Answer {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        std::io::Result::Ok(String::from_utf8(raw).expect("the answer is UTF-8"))
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the admin port answers within 10 s")
        .expect("the admin port accepts the request");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// One sample of the text format: the metric's name, its labels and its value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus/OpenMetrics text format strictly enough to catch a malformed line:
/// every line is a `# HELP`/`# TYPE`/`# UNIT` comment, `# EOF` (last), or
/// `name{label="value",…} number`.
fn parse(text: &str) -> Vec<Sample> {
    let is_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"# EOF"),
        "the exposition ends with # EOF"
    );
    let mut samples = Vec::new();
    for line in &lines[..lines.len() - 1] {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            let (kind, name) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            assert!(
                ["HELP", "TYPE", "UNIT"].contains(&kind) && is_name(name),
                "malformed comment line: {line}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("malformed sample: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number in: {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line}"));
                let labels = inner
                    .split("\",")
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (key, value) = pair
                            .split_once("=\"")
                            .unwrap_or_else(|| panic!("malformed label in: {line}"));
                        assert!(is_name(key), "malformed label name in: {line}");
                        (key.to_owned(), value.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name, labels)
            }
        };
        assert!(is_name(name), "malformed metric name in: {line}");
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

/// The value of the sample `name` whose labels include `labels` (0 when there is none: a counter
/// nothing has incremented yet is not written).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(
        found.len() <= 1,
        "{name} {labels:?} is ambiguous: {found:?}"
    );
    found.first().map_or(0.0, |s| s.value)
}

/// Scrapes `/metrics`: checks the answer, parses it, and returns the samples and the text.
async fn scrape(addr: SocketAddr) -> (Vec<Sample>, String) {
    let answer = get(addr, "/metrics").await;
    assert_eq!(answer.status, 200);
    let content_type = answer.headers.get("content-type").cloned();
    assert_eq!(
        content_type.as_deref(),
        Some(referral_core::admin::METRICS_CONTENT_TYPE)
    );
    (parse(&answer.body), answer.body)
}

/// Serves an admin port on a free loopback port until `stop`.
async fn serve_admin(
    metrics: referral_core::metrics::Metrics,
    database: referral_core::db::Database,
    stop: &CancellationToken,
) -> (SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>) {
    let admin = AdminServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)), metrics, database)
        .await
        .expect("the admin port binds");
    let addr = admin.local_addr().unwrap();
    (addr, tokio::spawn(admin.run_until_stopped(stop.clone())))
}

async fn admin_port_reports_health_readiness_and_metrics(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let stop_admin = CancellationToken::new();
    let gateway = hub.gateway();
    let (gateway_admin, gateway_admin_task) =
        serve_admin(gateway.metrics(), gateway.database().clone(), &stop_admin).await;

    // School 1 runs as a service this test built, so that its admin port watches its store.
    hub.stop_agency("school-1").await;
    let school = referral_school::build(hub.agency_config("school-1").unwrap())
        .await
        .unwrap();
    let school_db = school.database();
    let (school_admin, school_admin_task) =
        serve_admin(school.metrics(), school_db.clone(), &stop_admin).await;
    let stop_school = CancellationToken::new();
    let school_task = tokio::spawn(school.run_until_stopped(stop_school.clone()));

    for addr in [gateway_admin, school_admin] {
        let health = get(addr, "/healthz").await;
        assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
        let ready = get(addr, "/readyz").await;
        assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
        assert_eq!(get(addr, "/nothing-here").await.status, 404);
    }
    let (before, _) = scrape(gateway_admin).await;
    assert_eq!(value(&before, "referral_outbox_depth", &[]), 0.0);

    // Three K's while the commission is down: the outbox holds them, its oldest ages with the
    // clock, and each failed attempt is counted.
    hub.stop_agency("commission").await;
    let director = hub.staff("school-1", "director").await;
    let k = validate::sample_help_request(hub.today());
    let mut ids = Vec::new();
    for n in 0..3 {
        let mut k = k.clone();
        k.recurrence = format!("{n} рет / раз");
        ids.push(
            director
                .submit_k(&format!("admin-k-{n}"), "", k)
                .await
                .expect("the gateway accepts the K"),
        );
    }
    for id in &ids {
        hub.failed_attempts(id, 1).await;
    }
    hub.clock.advance(SignedDuration::from_secs(10));
    let (queued, _) = scrape(gateway_admin).await;
    assert_eq!(value(&queued, "referral_outbox_depth", &[]), 3.0);
    assert!(value(&queued, "referral_outbox_oldest_age_seconds", &[]) >= 10.0);
    let commission_failed = [("recipient", "commission"), ("outcome", "failed_attempt")];
    assert!(value(&queued, "referral_deliveries_total", &commission_failed) >= 3.0);
    assert_eq!(
        value(
            &queued,
            "referral_deliveries_total",
            &[("recipient", "commission"), ("outcome", "delivered")]
        ),
        0.0
    );
    // Acknowledged by the gateway: nothing waits in the school's own outbox.
    let (school_samples, _) = scrape(school_admin).await;
    for queue in ["messages", "clock_events"] {
        assert_eq!(
            value(
                &school_samples,
                "referral_agency_outbox_depth",
                &[("queue", queue)]
            ),
            0.0,
            "{queue}"
        );
    }

    // The commission is back: the retries deliver everything and the outbox is empty.
    hub.start_agency("commission").await.unwrap();
    hub.clock.advance(SignedDuration::from_hours(1));
    for id in &ids {
        hub.delivered(id).await;
    }
    hub.settle().await;
    let (drained, _) = scrape(gateway_admin).await;
    assert_eq!(value(&drained, "referral_outbox_depth", &[]), 0.0);
    assert_eq!(
        value(&drained, "referral_outbox_oldest_age_seconds", &[]),
        0.0
    );
    assert!(
        value(
            &drained,
            "referral_deliveries_total",
            &[("recipient", "commission"), ("outcome", "delivered")]
        ) >= 3.0
    );
    assert!(
        value(
            &drained,
            "referral_delivery_retries_total",
            &[("recipient", "commission")]
        ) >= 3.0
    );

    // The deadline each K opened is counted under its kind and state, as the store has them.
    let (kind, state): (String, String) =
        sqlx::query_as("SELECT kind, state FROM deadlines WHERE help_request_message_id = $1")
            .bind(&ids[0])
            .fetch_one(gateway.database().pool())
            .await
            .expect("the K opened a deadline");
    let stored: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM deadlines WHERE kind = $1 AND state = $2")
            .bind(&kind)
            .bind(&state)
            .fetch_one(gateway.database().pool())
            .await
            .unwrap();
    assert!(stored >= 3, "{kind} {state}: {stored}");
    let label = |name: &str, prefix: &str| name.trim_start_matches(prefix).to_ascii_lowercase();
    let (kind, state) = (
        label(&kind, "DEADLINE_KIND_"),
        label(&state, "DEADLINE_STATE_"),
    );
    let (deadlines, _) = scrape(gateway_admin).await;
    assert_eq!(
        value(
            &deadlines,
            "referral_deadlines",
            &[("kind", &kind), ("state", &state)]
        ),
        stored as f64,
        "{kind} {state}"
    );

    // A read the policy refuses (school 2 has nothing to do with the case) is counted.
    let case = hub.open_case("admin-case").await;
    let outsider = hub.staff("school-2", "director").await;
    let refused = outsider
        .read_shared(&case, PurposeOfUse::CoordinationOfCare)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let read_denied = [("action", "read"), ("form_kind", "case_file")];
    let (denied, gateway_text) = scrape(gateway_admin).await;
    assert!(
        value(&denied, "referral_policy_denials_total", &read_denied)
            > value(&drained, "referral_policy_denials_total", &read_denied)
    );

    // Nothing of the child (or of anyone in the form) is in any metric: no name, address or IIN
    // (labels are ids, kinds and states, all ASCII).
    let (_, school_text) = scrape(school_admin).await;
    let child = k.child.as_ref().unwrap();
    for text in [&gateway_text, &school_text] {
        for personal in [&child.full_name, &child.registered_address, &child.iin] {
            assert!(
                !text.contains(personal.as_str()),
                "personal data in metrics"
            );
        }
        assert!(
            text.is_ascii(),
            "a label or help text carries non-ASCII text"
        );
    }

    // Readiness follows the store: a store whose newest migration is not recorded is not ready,
    // nor is one that is closed; the process is still alive.
    sqlx::query(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT MAX(version) FROM _sqlx_migrations)",
    )
    .execute(school_db.pool())
    .await
    .unwrap();
    let unmigrated = get(school_admin, "/readyz").await;
    assert_eq!(unmigrated.status, 503);
    assert_eq!(unmigrated.body, "school-1 is not ready\n");
    stop_school.cancel();
    school_task
        .await
        .unwrap()
        .expect("the school service stops cleanly");
    let closed = get(school_admin, "/readyz").await;
    assert_eq!(closed.status, 503);
    assert_eq!(closed.body, "school-1 is not ready\n");
    assert_eq!(get(school_admin, "/healthz").await.status, 200);
    let gateway_ready = get(gateway_admin, "/readyz").await;
    assert_eq!(
        gateway_ready.status, 200,
        "the gateway's store is untouched"
    );

    // Graceful shutdown on the token.
    stop_admin.cancel();
    for task in [gateway_admin_task, school_admin_task] {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the admin port stops")
            .unwrap()
            .unwrap();
    }
    hub.shutdown().await;
}
