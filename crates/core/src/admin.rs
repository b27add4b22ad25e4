//! The plain-HTTP admin port every component serves beside its gRPC port, for orchestrators and
//! Prometheus:
//! - `GET /healthz`: 200 `ok` while the process is up (a liveness probe);
//! - `GET /readyz`: 200 `ready` when the component's store answers and its migrations ran
//!   ([`Database::check_ready`]), else 503 naming the component only (never a connection string
//!   or a driver's message, which are logged instead);
//! - `GET /metrics`: the component's registry in the OpenMetrics text format, after its
//!   refreshers have read the gauges kept in the store (bounded by [`REFRESH_TIMEOUT`]).
//!
//! The port carries no personal data and no case data, and no TLS: it is meant for the cluster's
//! network (a NetworkPolicy or the loopback interface), like Prometheus exporters generally are.

use std::{net::SocketAddr, time::Duration};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{db::Database, metrics::Metrics};

/// The content type of prometheus-client's text encoder (OpenMetrics 1.0).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a scrape waits for the gauges read from the store before it encodes what it has.
pub const REFRESH_TIMEOUT: Duration = Duration::from_secs(2);

/// What the admin port reports on: one component's metrics and store.
#[derive(Clone, Debug)]
struct Target {
    metrics: Metrics,
    database: Database,
}

/// A component's admin server, bound and ready to serve.
#[derive(Debug)]
pub struct AdminServer {
    listener: TcpListener,
    target: Target,
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port) for the component whose `metrics` and `database`
    /// are given. Nothing is served until [`run_until_stopped`](Self::run_until_stopped).
    pub async fn bind(
        addr: SocketAddr,
        metrics: Metrics,
        database: Database,
    ) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
            target: Target { metrics, database },
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then lets requests in flight finish.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let component = self.target.metrics.component().to_owned();
        let addr = self.listener.local_addr()?;
        let router = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(self.target);
        tracing::info!(component = %component, %addr, "admin port listening");
        axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(target): State<Target>) -> Response {
    match target.database.check_ready().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => {
            tracing::warn!(reason = %why, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{} is not ready\n", target.metrics.component()),
            )
                .into_response()
        }
    }
}

async fn metrics(State(target): State<Target>) -> Response {
    target.metrics.refresh(REFRESH_TIMEOUT).await;
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        target.metrics.encode(),
    )
        .into_response()
}
