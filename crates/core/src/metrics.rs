//! Prometheus metrics, one registry per component. Each component builds one [`Metrics`] when it
//! is built, registers its own families on it (outbox depth, deliveries, deadlines, denials…)
//! and serves it in the text format on its plain-HTTP admin port (`crate::admin`).
//!
//! Labels carry methods, status codes, agency ids, kinds and states only: never a child's name,
//! IIN or address, and never a case reference (that would also make the label set unbounded).

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Metric, Registry},
};

/// Labels of the request counters: the gRPC method path and the status code's name.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub code: String,
}

/// Labels of the latency histogram: the gRPC method path.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

/// Builds latency histograms: 1 ms to ~16 s in doubling buckets.
#[derive(Debug, Clone, Copy)]
pub struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.001, 2.0, 15))
    }
}

/// Reads values kept in a component's store (outbox depth, deadlines by state) into its gauges
/// just before a scrape encodes them.
type Refresher = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// One component's metrics. Cheap to clone; every clone records into the same registry.
#[derive(Clone)]
pub struct Metrics {
    component: Arc<str>,
    registry: Arc<Mutex<Registry>>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<MethodLabels, Histogram, LatencyBuckets>,
    refreshers: Arc<Mutex<Vec<Refresher>>>,
    /// One refresh at a time: many scrapers (or one hostile client of the admin port) cannot
    /// turn scrapes into concurrent store queries that take the connections real calls need.
    refreshing: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("component", &self.component)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry for `component` (e.g. `gateway`, `school-1`), with the request families every
    /// gRPC server records into.
    pub fn new(component: &str) -> Self {
        let mut registry = Registry::with_prefix("referral");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "grpc_requests",
            "gRPC calls answered, by method and status code",
            requests.clone(),
        );
        let latency = Family::new_with_constructor(LatencyBuckets);
        registry.register_with_unit(
            "grpc_request_duration",
            "Time to answer a gRPC call, by method",
            prometheus_client::registry::Unit::Seconds,
            latency.clone(),
        );
        Self {
            component: component.into(),
            registry: Arc::new(Mutex::new(registry)),
            requests,
            latency,
            refreshers: Arc::default(),
            refreshing: Arc::default(),
        }
    }

    /// The component these metrics belong to.
    pub fn component(&self) -> &str {
        &self.component
    }

    /// Registers a component's own metric family (done once, when the component is built).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .register(name, help, metric);
    }

    /// Adds a refresher: an async read of values the component keeps in its store, run before
    /// every scrape (by [`refresh`](Self::refresh)). It should log its own failures and leave
    /// the gauges as they were.
    pub fn add_refresher<F, Fut>(&self, refresh: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.refreshers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(move || Box::pin(refresh())));
    }

    /// Runs every refresher, together, for at most `timeout`; a scrape then encodes whatever
    /// they managed to update. Says whether they all finished in time.
    pub async fn refresh(&self, timeout: Duration) -> bool {
        // A scrape arriving while another refreshes waits its turn (bounded by `timeout`; then
        // it serves the previous values).
        let Ok(_turn) = tokio::time::timeout(timeout, self.refreshing.lock()).await else {
            tracing::warn!(component = %self.component, "metrics refresh busy; serving the previous values");
            return false;
        };
        let refreshers = self
            .refreshers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let all = async {
            let mut running = tokio::task::JoinSet::new();
            for refresh in refreshers {
                running.spawn(refresh());
            }
            while running.join_next().await.is_some() {}
        };
        let finished = tokio::time::timeout(timeout, all).await.is_ok();
        if !finished {
            tracing::warn!(component = %self.component, "metrics refresh timed out; serving the previous values");
        }
        finished
    }

    /// Records one answered gRPC call.
    pub fn record_request(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                code: format!("{code:?}"),
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabels {
                method: method.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The registry in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}
