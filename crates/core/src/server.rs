//! One way to serve gRPC: bind first (port 0 allowed), then serve a router with TLS, health,
//! reflection and graceful shutdown. Every component's server is built here.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Server, ServerTlsConfig};
use tower::layer::util::{Identity, Stack};

use crate::{
    limits::{ServerLimits, ServerStack},
    metrics::Metrics,
};

/// A server with the hub's stack (see [`builder`]), to which services are added.
pub type HubServer = Server<Stack<ServerStack, Identity>>;

/// The router of a server built by [`builder`]: what components and agency extensions add their
/// services to.
pub type Router = tonic::transport::server::Router<Stack<ServerStack, Identity>>;

/// The largest request any component accepts. Larger messages are refused by the decoder from
/// the length prefix, before the body is buffered.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Binds a listener; `port` 0 picks a free port (tests).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// The server with the settings every component shares, outermost first:
/// - TLS with optional client certificates (the interceptors decide who may call what);
/// - a tracing span per request naming only the method (`limits::method_label`: a method some
///   component serves, else `other`; never a payload);
/// - the stack of [`crate::limits`], from `limits`: request metrics into `metrics`, load shedding
///   over a global concurrency limit, a rate limit per calling agency, the per-call deadline
///   (propagated to the calls a handler makes) and the message size limit. Overload and rate
///   limits are answered `RESOURCE_EXHAUSTED`, a passed deadline `DEADLINE_EXCEEDED`.
///
/// tonic's own per-connection limits and timeout are left off: the stack does both, once per
/// server instead of once per connection, with the statuses above (tonic's timeout answers
/// `CANCELLED`).
pub fn builder(
    tls: ServerTlsConfig,
    limits: &ServerLimits,
    metrics: Metrics,
) -> Result<HubServer, tonic::transport::Error> {
    Ok(Server::builder()
        .tls_config(tls)?
        .trace_fn(crate::telemetry::request_span)
        .layer(ServerStack::new(limits, metrics)))
}

/// The health and reflection services every component adds to its router.
pub async fn health_and_reflection(
    serving: &[&str],
) -> anyhow::Result<(
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
)> {
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in serving {
        reporter
            .set_service_status(*name, tonic_health::ServingStatus::Serving)
            .await;
    }
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(referral_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    Ok((health, reflection))
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then finishes in-flight calls.
pub async fn serve(
    router: Router,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    router
        // TCP_NODELAY on every accepted connection: tonic applies its own `tcp_nodelay` only to
        // listeners it binds itself, and without it Nagle's algorithm meets the peer's delayed
        // ACK and holds small responses for about 40 ms (BENCHMARKS.md, read-path).
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.cancelled_owned(),
        )
        .await
}
