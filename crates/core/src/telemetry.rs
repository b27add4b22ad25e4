//! Logs and traces. Every component logs through `tracing`, human-readable by default and JSON
//! when configured. Every span also goes through OpenTelemetry, so that it has a trace id that
//! log lines carry and that travels to the next component (see [`crate::trace_context`]); spans
//! are exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or the `telemetry.otlp_endpoint` setting, which wins) is
//! set. The exporter reads the other standard `OTEL_*` variables itself (headers, timeout,
//! compression, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`);
//! `OTEL_TRACES_EXPORTER=none` or `OTEL_SDK_DISABLED=true` turn export off.
//!
//! Personal data never goes into a span field or a log line: handlers log ids (message ids,
//! agency ids, user ids) and outcomes, never a child's name, IIN or address.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{
    Resource,
    trace::{SdkTracer, SdkTracerProvider},
};
use serde::Deserialize;
use tonic::codegen::http;
use tracing::Subscriber;
use tracing_subscriber::{
    EnvFilter, Layer as _, fmt::MakeWriter, layer::SubscriberExt as _, registry::LookupSpan,
    util::SubscriberInitExt as _,
};

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TelemetryConfig {
    /// `RUST_LOG`-style filter.
    #[serde(default = "default_filter")]
    pub filter: String,
    #[serde(default)]
    pub format: LogFormat,
    /// An OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`; none means no trace export.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
}

fn default_filter() -> String {
    "info,sqlx=warn,h2=warn,tower=warn,hyper=warn".into()
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            filter: default_filter(),
            format: LogFormat::Text,
            otlp_endpoint: None,
        }
    }
}

/// Flushes exported spans when dropped.
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Starts logging (and trace export when configured) for the process, and sets W3C trace
/// context as the propagator of every call between components.
pub fn init(service_name: &str, config: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .map_err(|e| anyhow::anyhow!("invalid log filter: {e}"))?;
    crate::trace_context::install_propagator();
    let mut resource = Resource::builder();
    // `OTEL_SERVICE_NAME`, read by the resource builder itself, names the service when set.
    if std::env::var_os("OTEL_SERVICE_NAME").is_none_or(|v| v.is_empty()) {
        resource = resource.with_service_name(service_name.to_owned());
    }
    let mut provider = SdkTracerProvider::builder().with_resource(resource.build());
    if let Some(endpoint) = export_endpoint(config) {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        // The setting overrides the environment; without it the exporter reads `OTEL_*`.
        if let Some(endpoint) = endpoint {
            exporter = exporter.with_endpoint(endpoint);
        }
        provider = provider.with_batch_exporter(exporter.build()?);
    }
    // Without an exporter the provider still gives every span its ids (so that logs carry a
    // trace id and calls carry a `traceparent`); finished spans are simply dropped.
    let provider = provider.build();
    let tracer = provider.tracer(service_name.to_owned());
    let guard = TelemetryGuard {
        provider: Some(provider),
    };
    subscriber(filter, config, std::io::stderr, Some(tracer))
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot start logging: {e}"))?;
    Ok(guard)
}

/// Whether spans are exported, and to which endpoint when the setting names one: `None` for no
/// export, `Some(None)` for the exporter's own `OTEL_*` environment.
fn export_endpoint(config: &TelemetryConfig) -> Option<Option<String>> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return None;
    }
    match config.otlp_endpoint.as_deref().map(str::trim) {
        Some(endpoint) if !endpoint.is_empty() => Some(Some(endpoint.to_owned())),
        _ => (env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some())
        .then_some(None),
    }
}

/// The span of one gRPC request, made by every server (`server::builder`'s `trace_fn`): named
/// `grpc`, a server span whose parent is the trace context the caller sent, with the method (as
/// metrics name it, [`crate::limits::method_label`]: a path no component serves is `other`), a
/// request id (the caller's `x-request-id` when it is a short safe token, else a new UUID v7)
/// and the trace id, so that every log line of the call carries both. Handlers record the ids,
/// kinds and outcome of what they did in the empty fields (`message_id`, `form_kind`, `sender`,
/// `recipient`, `outcome`); never personal data.
pub fn request_span<B>(request: &http::Request<B>) -> tracing::Span {
    use tracing::field::Empty;
    let span = tracing::info_span!(
        "grpc",
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = crate::limits::method_label(request.uri().path()),
        request_id = %crate::trace_context::request_id(request.headers()),
        trace_id = Empty,
        message_id = Empty,
        form_kind = Empty,
        sender = Empty,
        recipient = Empty,
        outcome = Empty,
    );
    crate::trace_context::continue_trace(&span, crate::trace_context::extract(request.headers()));
    span
}

/// The subscriber every component logs through: `filter`, log lines in the format of `config`
/// written to `writer`, and, given a `tracer`, every span exported through OpenTelemetry.
///
/// [`init`] installs it with stderr and the OTLP exporter. The no-personal-data test
/// (`tests/tests/no_personal_data.rs`) installs the same subscriber with an in-memory writer and
/// exporter, so that it checks exactly what production emits. There is no redaction layer here
/// on purpose: personal data must not reach a span or an event in the first place.
pub fn subscriber<W>(
    filter: EnvFilter,
    config: &TelemetryConfig,
    writer: W,
    tracer: Option<SdkTracer>,
) -> impl Subscriber + for<'a> LookupSpan<'a> + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = match config.format {
        // Colours only for a person at a terminal, not in a collected log file.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .boxed(),
    };
    let otel = tracer.map(|tracer| tracing_opentelemetry::layer().with_tracer(tracer));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
}

/// An in-memory log file for [`subscriber`]'s writer: what tests read back to check what the
/// production formatter wrote (this crate's unit tests and `referral_tests::capture`).
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct MemoryWriter(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl MemoryWriter {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

impl std::io::Write for MemoryWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for MemoryWriter {
    type Writer = MemoryWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Logging for tests: quiet unless `TEST_LOG=1`. Safe to call from every test.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn")),
            )
            .with_test_writer()
            .try_init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `log` holds, without the colour codes a terminal would get.
    fn without_colours(log: &MemoryWriter) -> String {
        log.text()
            .split('\u{1b}')
            .enumerate()
            .map(|(i, part)| {
                if i == 0 {
                    part
                } else {
                    part.split_once('m').map_or(part, |p| p.1)
                }
            })
            .collect()
    }

    /// The span names a method the hub serves by its path, and any other path (a caller may send
    /// one of any length before anything checked who it is) as `other`.
    #[test]
    fn the_span_names_known_methods_and_other_paths_other() {
        let log = MemoryWriter::default();
        let config = TelemetryConfig::default();
        let subscriber = subscriber(EnvFilter::new("info"), &config, log.clone(), None);
        let invented = format!("/referral.v1.Gateway/{}", "x".repeat(10_000));
        tracing::subscriber::with_default(subscriber, || {
            for path in ["/referral.v1.Gateway/Send", invented.as_str()] {
                let request = http::Request::builder().uri(path).body(()).unwrap();
                request_span(&request).in_scope(|| tracing::info!("inside the call"));
            }
        });
        let text = without_colours(&log);
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains("rpc.method=\"/referral.v1.Gateway/Send\""),
            "{text}"
        );
        assert!(lines[1].contains("rpc.method=\"other\""), "{text}");
        assert!(
            !text.contains(&invented[1..]),
            "the invented path is not recorded"
        );
    }

    /// A request's log line, in the default text format, carries the caller's request id and the
    /// trace id of the `traceparent` it sent; a request without either gets a new request id and
    /// a new trace.
    #[test]
    fn text_lines_inside_a_request_carry_its_request_id_and_trace_id() {
        crate::trace_context::install_propagator();
        let log = MemoryWriter::default();
        let config = TelemetryConfig {
            filter: "info".into(),
            ..TelemetryConfig::default()
        };
        let tracer = SdkTracerProvider::builder().build().tracer("test");
        let subscriber = subscriber(EnvFilter::new("info"), &config, log.clone(), Some(tracer));
        tracing::subscriber::with_default(subscriber, || {
            let request = http::Request::builder()
                .uri("/referral.v1.Gateway/Send")
                .header("x-request-id", "req-0001")
                .header(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )
                .body(())
                .unwrap();
            request_span(&request).in_scope(|| tracing::info!("inside the call"));
            let bare = http::Request::builder().uri("/x").body(()).unwrap();
            request_span(&bare).in_scope(|| tracing::info!("inside another call"));
        });
        let text = without_colours(&log);
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("request_id=req-0001"), "{text}");
        assert!(
            lines[0].contains("trace_id=4bf92f3577b34da6a3ce929d0e0e4736"),
            "{text}"
        );
        assert!(lines[0].contains("inside the call"), "{text}");
        assert!(lines[1].contains("request_id="), "{text}");
        assert!(lines[1].contains("trace_id="), "{text}");
        assert!(
            !lines[1].contains("4bf92f3577b34da6a3ce929d0e0e4736"),
            "{text}"
        );
    }
}
