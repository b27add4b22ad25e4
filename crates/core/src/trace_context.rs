//! W3C trace context across components: one referral is one trace, from the school's service
//! through the gateway and its delivery worker to the commission's inbox.
//!
//! On the wire the context travels in the `traceparent`/`tracestate` gRPC metadata, written by
//! the process's global propagator (W3C `TraceContextPropagator`, set by
//! [`crate::telemetry::init`]): every outbound client wraps its channel with [`traced`] (or calls
//! [`inject`]), and every server span takes its parent from the request's headers ([`extract`],
//! in [`crate::telemetry::request_span`]).
//!
//! Work done later in another task (the gateway's delivery worker, an agency's retry of a queued
//! message) continues the trace of the call that queued it: the queuing transaction stores
//! [`current_traceparent`] beside the row, and the worker's span takes it back as its parent with
//! [`continue_trace`]. A `traceparent` is four ids and flags, never personal data.

use std::collections::HashMap;

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator as _},
    trace::{TraceContextExt as _, TraceId},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::{
    Request, Status,
    codegen::http,
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The metadata key of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Sets W3C trace context as the process's propagator (what [`inject`] and [`extract`] use).
pub fn install_propagator() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
}

/// Writes the current span's trace context into outgoing gRPC metadata. Nothing is written when
/// there is no trace (no OpenTelemetry layer, or the span is disabled).
pub fn inject(metadata: &mut MetadataMap) {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&cx, &mut MetadataInjector(metadata));
    });
}

/// The trace context a caller sent in its request headers (empty when none or malformed).
pub fn extract(headers: &http::HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    })
}

/// The interceptor every outbound client of the hub carries: it injects the trace context of the
/// span the call is made in.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inject;

impl Interceptor for Inject {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        inject(request.metadata_mut());
        Ok(request)
    }
}

/// A channel whose calls carry the caller's trace context.
pub type TracedChannel = InterceptedService<Channel, Inject>;

/// Wraps `channel` so that every call made on it carries the current trace context.
pub fn traced(channel: Channel) -> TracedChannel {
    InterceptedService::new(channel, Inject)
}

/// The current span's `traceparent`, to store with work that another task does later; `None`
/// when there is no trace.
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The context a stored `traceparent` names (empty when it is malformed).
pub fn stored_context(traceparent: &str) -> Context {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    TraceContextPropagator::new().extract(&carrier)
}

/// Makes `span` a child of `parent` when `parent` holds a trace, then records the span's trace
/// id in its `trace_id` field, so that every log line inside it carries the id. Call it right
/// after creating the span, before it is entered.
pub fn continue_trace(span: &tracing::Span, parent: Context) {
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

/// The trace id of `span`, when it has one.
pub fn trace_id(span: &tracing::Span) -> Option<TraceId> {
    let trace_id = span.context().span().span_context().trace_id();
    (trace_id != TraceId::INVALID).then_some(trace_id)
}

/// The request id of a call: the caller's `x-request-id` when it is a short token of safe
/// characters (so that a caller cannot write arbitrary text into the logs), else a new UUID v7.
pub fn request_id(headers: &http::HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| is_safe_request_id(id))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
}

fn is_safe_request_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_safe_request_id_is_kept_and_anything_else_replaced() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-request-id", "req-42:a.b_C".parse().unwrap());
        assert_eq!(request_id(&headers), "req-42:a.b_C");
        for unsafe_id in ["has space", "semi;colon", "{\"json\":1}", &"x".repeat(65)] {
            headers.insert("x-request-id", unsafe_id.parse().unwrap());
            let id = request_id(&headers);
            assert_ne!(id, unsafe_id);
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        }
        assert!(uuid::Uuid::parse_str(&request_id(&http::HeaderMap::new())).is_ok());
    }

    #[test]
    fn a_stored_traceparent_gives_back_its_trace() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = stored_context(traceparent);
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_remote());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(!stored_context("garbage").span().span_context().is_valid());
    }
}
