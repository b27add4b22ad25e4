//! Logs and traces. Every component logs through `tracing`; when an OTLP endpoint is configured,
//! spans are also exported with OpenTelemetry.
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

/// Starts logging (and trace export when configured) for the process.
pub fn init(service_name: &str, config: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .map_err(|e| anyhow::anyhow!("invalid log filter: {e}"))?;
    let mut guard = TelemetryGuard::default();
    let tracer = match &config.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    Resource::builder()
                        .with_service_name(service_name.to_owned())
                        .build(),
                )
                .build();
            let tracer = provider.tracer(service_name.to_owned());
            guard.provider = Some(provider);
            Some(tracer)
        }
        None => None,
    };
    subscriber(filter, config, std::io::stderr, tracer)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot start logging: {e}"))?;
    Ok(guard)
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
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_target(false)
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
