//! What the production telemetry emits, captured in memory for the test binaries that own the
//! process-global subscriber (`tests/tracing.rs`, `tests/no_personal_data.rs`): the log lines of
//! [`telemetry::subscriber`] written into a [`MemoryWriter`], and every span exported through
//! OpenTelemetry into an in-memory exporter.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData, SpanLimits};
use referral_core::telemetry::{self, TelemetryConfig};
use tracing::Subscriber;
use tracing_subscriber::{EnvFilter, registry::LookupSpan};

pub use referral_core::telemetry::MemoryWriter;

/// The in-memory log file and span exporter of one test binary.
#[derive(Debug)]
pub struct CapturedTelemetry {
    /// What the production formatter wrote.
    pub log: MemoryWriter,
    /// Every finished span.
    pub spans: InMemorySpanExporter,
    pub tracer_provider: SdkTracerProvider,
}

impl Default for CapturedTelemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl CapturedTelemetry {
    /// An empty log, and a tracer provider exporting span by span as each ends (a batch could
    /// still hold the last ones, or drop spans when its queue is full), with no limit that would
    /// drop attributes or events before a test reads them.
    pub fn new() -> Self {
        let spans = InMemorySpanExporter::default();
        let tracer_provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .with_span_limits(SpanLimits {
                max_events_per_span: u32::MAX,
                max_attributes_per_span: u32::MAX,
                max_links_per_span: u32::MAX,
                max_attributes_per_event: u32::MAX,
                max_attributes_per_link: u32::MAX,
            })
            .build();
        Self {
            log: MemoryWriter::default(),
            spans,
            tracer_provider,
        }
    }

    /// The production subscriber ([`telemetry::subscriber`]) with `config`'s filter and format,
    /// writing into [`Self::log`] and exporting every span into [`Self::spans`]. The caller may
    /// add layers, then installs it.
    pub fn subscriber(
        &self,
        config: &TelemetryConfig,
    ) -> impl Subscriber + for<'a> LookupSpan<'a> + Send + Sync + 'static {
        telemetry::subscriber(
            EnvFilter::new(&config.filter),
            config,
            self.log.clone(),
            Some(self.tracer_provider.tracer("referral-hub")),
        )
    }

    /// The spans finished so far.
    pub fn finished_spans(&self) -> Vec<SpanData> {
        self.spans.get_finished_spans().expect("the spans")
    }
}
