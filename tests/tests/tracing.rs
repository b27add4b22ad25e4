//! Issue 6, traces and logs: one referral is one trace. A school's K goes from a client through
//! the school's service, the gateway's Send, the delivery worker and the commission's inbox; the
//! spans of all four share the client's trace id and chain by parent ids, the log lines inside
//! each call carry its request id and trace id, a client's `x-request-id` is the request id of
//! its call, and nothing personal of the fixture K (the child's name, IIN and address, the
//! parents' names, the problem described…) is in a span or a log line, at debug level.
//!
//! This file is its own test binary because it owns the process-global `tracing` subscriber: the
//! production subscriber (`referral_core::telemetry::subscriber`) in its JSON format at debug
//! level, writing into memory (`referral_tests::capture`), with every span exported through `tracing-opentelemetry` into an in-memory
//! exporter, and W3C trace context as the global propagator, as `telemetry::init` sets it. It is
//! installed once (`capture`), before anything logs; the SQLite and PostgreSQL runs share it and
//! tell their traces apart by trace id. `TEST_LOG=1` is ignored here.

use std::{sync::OnceLock, time::Duration};

use opentelemetry::{
    Value,
    trace::{SpanId, SpanKind, TraceContextExt as _, TraceId},
};
use opentelemetry_sdk::trace::SpanData;
use referral_core::{
    telemetry::{LogFormat, TelemetryConfig},
    trace_context, validate,
};
use referral_proto::v1::{ParentInfo, SubmitHelpRequestRequest};
use referral_tests::{Backend, TestHub, capture::CapturedTelemetry};
use serde_json::Value as Json;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The production filter at debug level: the hub's own debug lines too, with the noisy
/// libraries kept at warnings as production keeps them.
const DEBUG_FILTER: &str = "debug,sqlx=warn,h2=warn,tower=warn,hyper=warn";

/// Installs the capture the first time it is called; both tests of this binary share it.
fn capture() -> &'static CapturedTelemetry {
    static CAPTURE: OnceLock<CapturedTelemetry> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        trace_context::install_propagator();
        let capture = CapturedTelemetry::new();
        let config = TelemetryConfig {
            format: LogFormat::Json,
            filter: DEBUG_FILTER.into(),
            ..TelemetryConfig::default()
        };
        capture
            .subscriber(&config)
            .try_init()
            .expect("this test binary installs the only global subscriber");
        capture
    })
}

/// The log lines written so far, parsed.
fn log_lines(capture: &CapturedTelemetry) -> Vec<Json> {
    capture
        .log
        .text()
        .lines()
        .map(|line| serde_json::from_str(line).expect("every log line is JSON"))
        .collect()
}

/// The finished spans of one trace.
fn spans_of(capture: &CapturedTelemetry, trace_id: TraceId) -> Vec<SpanData> {
    capture
        .finished_spans()
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace_id)
        .collect()
}

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn has(span: &SpanData, key: &str, value: &str) -> bool {
    attribute(span, key).is_some_and(|v| v.as_str() == value)
}

/// The one span of `trace` with this name and method.
fn one<'a>(trace: &'a [SpanData], name: &str, method: &str) -> Option<&'a SpanData> {
    let found: Vec<_> = trace
        .iter()
        .filter(|s| s.name == name && has(s, "rpc.method", method))
        .collect();
    assert!(found.len() <= 1, "one {name} span for {method}: {found:#?}");
    found.first().copied()
}

/// Whether `span` descends from the span `ancestor` through the parents recorded in `trace`.
fn descends(trace: &[SpanData], span: &SpanData, ancestor: SpanId) -> bool {
    let mut parent = span.parent_span_id;
    for _ in 0..trace.len() + 1 {
        if parent == ancestor {
            return true;
        }
        match trace.iter().find(|s| s.span_context.span_id() == parent) {
            Some(p) => parent = p.parent_span_id,
            None => return false,
        }
    }
    false
}

/// Whether a JSON log line was written inside a span with `field` = `value`.
fn in_span_with(line: &Json, field: &str, value: &str) -> bool {
    line["spans"]
        .as_array()
        .is_some_and(|spans| spans.iter().any(|s| s[field].as_str() == Some(value)))
}

const SCHOOL_SUBMIT: &str = "/referral.v1.AgencyStaff/SubmitHelpRequest";
const GATEWAY_SEND: &str = "/referral.v1.Gateway/Send";
const INBOX_DELIVER: &str = "/referral.v1.AgencyInbox/Deliver";

async fn one_referral_is_one_trace(backend: Backend) {
    let capture = capture();
    let hub = TestHub::start(backend).await;
    let director = hub.staff("school-1", "director").await;
    let k = validate::sample_help_request(hub.today());
    let child = k.child.clone().expect("the sample names a child");

    // The client's own span, whose context the request carries: the school's server span must
    // continue it.
    let client_span = tracing::info_span!("test client", otel.kind = "client");
    let client_cx = client_span.context();
    let trace_id = client_cx.span().span_context().trace_id();
    let client_span_id = client_cx.span().span_context().span_id();
    assert_ne!(trace_id, TraceId::INVALID, "the test's span has a trace");
    let request_id = format!("tracing-test-{}", uuid::Uuid::new_v4().simple());
    let mut request = director.req(SubmitHelpRequestRequest {
        idempotency_key: format!("tracing-k-{}", uuid::Uuid::new_v4().simple()),
        recipient_agency_id: String::new(),
        help_request: Some(k.clone()),
    });
    client_span.in_scope(|| trace_context::inject(request.metadata_mut()));
    request
        .metadata_mut()
        .insert("x-request-id", request_id.parse().expect("ascii"));
    let k_id = director
        .client
        .clone()
        .submit_help_request(request)
        .await
        .expect("the school submits K")
        .into_inner()
        .message_id;
    hub.delivered(&k_id).await;
    drop(client_span);
    // The school's row of the K keeps the call's trace context, for a push retried later, by
    // another task, to continue this trace.
    let stored = hub
        .agency_text(
            "school-1",
            "SELECT trace_context FROM sent_messages WHERE message_id = $1",
            &k_id,
        )
        .await;
    assert!(
        stored
            .as_deref()
            .is_some_and(|t| t.contains(&trace_id.to_string())),
        "the school's row of the K names its trace: {stored:?}"
    );

    // Spans are exported as they end; the commission's server span and the worker's delivery
    // span end just after the answer the test waited for, so they are polled for, bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let trace = loop {
        let trace = spans_of(capture, trace_id);
        let complete = one(&trace, "grpc", INBOX_DELIVER).is_some()
            && trace.iter().any(|s| s.name == "delivery")
            && trace.iter().any(|s| s.name == "test client");
        if complete || tokio::time::Instant::now() > deadline {
            break trace;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let names: Vec<_> = trace.iter().map(|s| s.name.to_string()).collect();

    // The chain: client → school server span → its push (client) → gateway Send (server) →
    // delivery (client) → commission Deliver (server), one trace id throughout.
    let school = one(&trace, "grpc", SCHOOL_SUBMIT)
        .unwrap_or_else(|| panic!("the school's server span is in the trace: {names:?}"));
    assert_eq!(school.span_kind, SpanKind::Server);
    assert_eq!(
        school.parent_span_id, client_span_id,
        "the school's span continues the client's context"
    );
    assert!(school.parent_span_is_remote);
    assert!(has(school, "request_id", &request_id), "{school:#?}");
    assert!(has(school, "trace_id", &trace_id.to_string()));

    let push = trace
        .iter()
        .find(|s| s.name == "push")
        .unwrap_or_else(|| panic!("the school's push is in the trace: {names:?}"));
    assert_eq!(push.span_kind, SpanKind::Client);
    assert!(descends(&trace, push, school.span_context.span_id()));
    assert!(has(push, "message_id", &k_id));

    let send = one(&trace, "grpc", GATEWAY_SEND)
        .unwrap_or_else(|| panic!("the gateway's Send is in the trace: {names:?}"));
    assert_eq!(send.span_kind, SpanKind::Server);
    assert_eq!(
        send.parent_span_id,
        push.span_context.span_id(),
        "the gateway's span is the child of the school's call"
    );
    assert!(send.parent_span_is_remote);
    for (key, value) in [
        ("message_id", k_id.as_str()),
        ("form_kind", "FORM_KIND_HELP_REQUEST"),
        ("sender", "school-1"),
        ("recipient", "commission"),
        ("outcome", "accepted"),
    ] {
        assert!(
            has(send, key, value),
            "Send's span has {key}={value}: {send:#?}"
        );
    }

    let delivery = trace
        .iter()
        .find(|s| s.name == "delivery" && has(s, "message_id", &k_id))
        .unwrap_or_else(|| panic!("the delivery is in the trace: {names:?}"));
    assert_eq!(delivery.span_kind, SpanKind::Client);
    assert!(
        descends(&trace, delivery, send.span_context.span_id()),
        "the delivery continues the Send call's stored context"
    );
    assert!(has(delivery, "outcome", "delivered"));
    assert!(has(delivery, "recipient", "commission"));

    let inbox = one(&trace, "grpc", INBOX_DELIVER)
        .unwrap_or_else(|| panic!("the commission's Deliver is in the trace: {names:?}"));
    assert_eq!(inbox.span_kind, SpanKind::Server);
    assert_eq!(
        inbox.parent_span_id,
        delivery.span_context.span_id(),
        "the commission's span is the child of the delivery"
    );
    assert!(has(inbox, "message_id", &k_id));
    assert!(has(inbox, "outcome", "received"));

    // Logs: the gateway's "message accepted" line of this K carries the trace id and a request
    // id; every line of the school's call carries the client's request id and the trace id; the
    // worker's "message delivered" line carries the trace id.
    let trace_hex = trace_id.to_string();
    let lines = log_lines(capture);
    let accepted = lines
        .iter()
        .find(|l| {
            l["fields"]["message"] == "message accepted" && l["fields"]["message_id"] == *k_id
        })
        .expect("the gateway logs the accepted K");
    assert!(in_span_with(accepted, "trace_id", &trace_hex), "{accepted}");
    let grpc = accepted["spans"]
        .as_array()
        .and_then(|spans| spans.iter().find(|s| s["name"] == "grpc"))
        .expect("the line is inside the Send call's span");
    assert!(
        grpc["request_id"].as_str().is_some_and(|id| !id.is_empty()),
        "{accepted}"
    );
    let school_lines: Vec<_> = lines
        .iter()
        .filter(|l| in_span_with(l, "request_id", &request_id))
        .collect();
    assert!(
        school_lines
            .iter()
            .any(|l| l["fields"]["message"] == "message handed to the gateway"),
        "the school's call logs under the client's request id: {school_lines:#?}"
    );
    for line in &school_lines {
        assert!(in_span_with(line, "trace_id", &trace_hex), "{line}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "message delivered"
                && l["fields"]["message_id"] == *k_id
                && in_span_with(l, "trace_id", &trace_hex)),
        "the worker's line about the K carries its trace id"
    );
    // Every line written inside a request carries a request id and a trace id, and every line of
    // a delivery a trace id.
    for line in &lines {
        for span in line["spans"].as_array().into_iter().flatten() {
            if span["name"] == "grpc" {
                assert!(span["request_id"].is_string(), "{line}");
                assert!(span["trace_id"].is_string(), "{line}");
            }
            if span["name"] == "delivery" {
                assert!(span["trace_id"].is_string(), "{line}");
            }
        }
    }

    // No personal data of the child in the trace's spans or in the log.
    let mut span_text = String::new();
    for span in &trace {
        span_text.push_str(&format!("{} {:?}\n", span.name, span.attributes));
        for event in &span.events.events {
            span_text.push_str(&format!("{} {:?}\n", event.name, event.attributes));
        }
    }
    let log = capture.log.text();
    assert!(
        lines.iter().any(|l| l["level"] == "DEBUG"),
        "the log is captured at debug level"
    );
    let parent = |p: &Option<ParentInfo>| p.clone().expect("the sample names both parents");
    let (mother, father) = (parent(&k.mother), parent(&k.father));
    let referrer = k.referrer.clone().expect("the sample names the referrer");
    for (what, value) in [
        ("child's name", child.full_name.as_str()),
        ("child's IIN", child.iin.as_str()),
        ("child's address", child.registered_address.as_str()),
        ("mother's name", mother.full_name.as_str()),
        ("father's name", father.full_name.as_str()),
        ("father's address", father.address.as_str()),
        ("referrer's phone", referrer.phone.as_str()),
        ("problem described", k.problem_description.as_str()),
        ("prevention's effect", k.prevention_effect.as_str()),
    ] {
        assert!(!value.is_empty());
        assert!(!span_text.contains(value), "the {what} is in a span");
        assert!(!log.contains(value), "the {what} is in the log");
    }
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    one_referral_is_one_trace(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    capture();
    if referral_tests::postgres::available() {
        one_referral_is_one_trace(Backend::Postgres).await;
    }
}
