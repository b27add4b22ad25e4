//! What every gRPC server of the hub limits, and the tower layers that enforce it. The stack is
//! assembled once, in [`crate::server::builder`]; outermost first:
//!
//! 1. [`RequestMetricsLayer`]: the method, gRPC status code and latency of every answered call
//!    into the component's [`Metrics`] (so that what the layers below refuse is counted too);
//! 2. [`ShedLayer`]: load shedding over a **global** concurrency limit: a call that finds every
//!    permit taken is answered `RESOURCE_EXHAUSTED` at once instead of queueing;
//! 3. [`RateLimitLayer`]: a token bucket per calling agency, answering `RESOURCE_EXHAUSTED`
//!    (2 and 3 are one service, [`Admit`], each with its own [`Admission`] check);
//! 4. [`DeadlineLayer`]: the per-call timeout (or the client's shorter `grpc-timeout`), answered
//!    `DEADLINE_EXCEEDED`; the deadline is kept in a task-local so that calls the handler makes to
//!    another component carry what is left of it ([`outbound_request`]);
//! 5. [`MessageSizeLayer`]: refuses a request message longer than the limit from its gRPC length
//!    prefix, before it is buffered.
//!
//! Health and reflection (`grpc.health.v1`, `grpc.reflection.*`) are not shed and not rate
//! limited: they are cheap, hold no store connection, and a Kubernetes probe must still see a
//! server that is merely busy as alive. They still have the deadline and the size limit.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, LazyLock, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Buf as _;
use serde::Deserialize;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tonic::{
    Code, Status,
    body::Body,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};
use tower::{Layer, Service};

use crate::{metrics::Metrics, pki::ComponentIdentity};

/// The limits of one gRPC server (`[limits]` in the configuration file,
/// `REFERRAL_HUB__LIMITS__…` in the environment). Every component applies the same settings to
/// its own server.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerLimits {
    /// The longest a call may take; a client's shorter `grpc-timeout` wins.
    pub request_timeout_ms: u64,
    /// Calls served at once by one server, over all connections; one more is answered
    /// `RESOURCE_EXHAUSTED` at once (load shedding), never queued.
    pub concurrency_limit: usize,
    /// Calls per second one calling agency may make (a token bucket refilled at this rate).
    pub agency_rate_per_second: u32,
    /// How many calls an agency may make at once above its rate (the bucket's size).
    pub agency_burst: u32,
    /// The largest request message, in bytes, read from each message's length prefix. The
    /// services' decoders refuse more than 1 MiB ([`crate::server::MAX_MESSAGE_BYTES`]) whatever
    /// this says, so it can only lower that.
    pub max_message_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            request_timeout_ms: 30_000,
            concurrency_limit: 512,
            agency_rate_per_second: 2_000,
            agency_burst: 4_000,
            max_message_bytes: crate::server::MAX_MESSAGE_BYTES,
        }
    }
}

impl ServerLimits {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.max(1))
    }
}

/// The whole stack as one layer, outermost first (see the module docs).
#[derive(Clone)]
pub struct ServerStack {
    metrics: RequestMetricsLayer,
    shed: ShedLayer,
    rate: RateLimitLayer,
    deadline: DeadlineLayer,
    size: MessageSizeLayer,
}

impl ServerStack {
    pub fn new(limits: &ServerLimits, metrics: Metrics) -> Self {
        Self {
            metrics: RequestMetricsLayer::new(metrics),
            shed: AdmitLayer::new(LoadShedder::new(limits.concurrency_limit)),
            rate: AdmitLayer::new(Arc::new(AgencyRateLimiter::new(
                limits.agency_rate_per_second,
                limits.agency_burst,
            ))),
            deadline: DeadlineLayer::new(limits.request_timeout()),
            size: MessageSizeLayer::new(limits.max_message_bytes),
        }
    }
}

impl<S> Layer<S> for ServerStack {
    type Service = RequestMetrics<Shed<RateLimit<Deadline<MessageSize<S>>>>>;
    fn layer(&self, inner: S) -> Self::Service {
        self.metrics.layer(
            self.shed
                .layer(self.rate.layer(self.deadline.layer(self.size.layer(inner)))),
        )
    }
}

/// Paths that are never shed nor rate limited (see the module docs).
fn is_probe(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

fn answer(status: Status) -> http::Response<Body> {
    status.into_http()
}

// ---------------------------------------------------------------------------------------------
// 1. Request metrics

/// How a request path is named in metrics and in the request's span: the path itself when it is
/// a method some component of the hub serves (the `referral.v1` services, health, reflection),
/// else `other`. The path comes from the client before anything checked who it is, so an invented
/// one, of any length, never becomes a label or a span field.
pub fn method_label(path: &str) -> &str {
    static KNOWN: LazyLock<HashSet<String>> = LazyLock::new(|| {
        use prost::Message as _;
        let mut known = HashSet::new();
        for set in [
            referral_proto::v1::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        ] {
            let set = prost_types::FileDescriptorSet::decode(set)
                .expect("the compiled-in descriptor sets decode");
            for file in &set.file {
                let package = file.package();
                for service in &file.service {
                    for method in &service.method {
                        known.insert(format!("/{package}.{}/{}", service.name(), method.name()));
                    }
                }
            }
        }
        known
    });
    if KNOWN.contains(path) { path } else { "other" }
}

/// Records every answered call into the component's [`Metrics`], by [`method_label`].
#[derive(Clone)]
pub struct RequestMetricsLayer {
    metrics: Metrics,
}

impl RequestMetricsLayer {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RequestMetrics<S> {
    inner: S,
    layer: RequestMetricsLayer,
}

/// Records a call when its answer is known, or as `Cancelled` when the future is dropped first
/// (the client went away, or the connection was reset).
struct Recording {
    metrics: Metrics,
    method: String,
    started: Instant,
    code: Option<Code>,
}

impl Drop for Recording {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(Code::Cancelled);
        self.metrics
            .record_request(&self.method, code, self.started.elapsed());
    }
}

impl<S> Service<http::Request<Body>> for RequestMetrics<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let recording = Recording {
            metrics: self.layer.metrics.clone(),
            method: method_label(req.uri().path()).to_owned(),
            started: Instant::now(),
            code: None,
        };
        let future = self.inner.call(req);
        Box::pin(async move {
            // Moved in whole, so that it is dropped (and records) when this future ends.
            let mut recording = recording;
            let result = future.await;
            if let Ok(response) = &result {
                recording.code = Some(status_code(response));
            }
            result
        })
    }
}

/// The gRPC status of a response, read from its headers. Errors are answered "trailers only"
/// (the status in the headers), which is how tonic answers a handler's or interceptor's error and
/// how the layers below answer; a response without `grpc-status` in its headers is a successful
/// call whose status comes in the trailers, and is counted `OK`. What this misses: a streaming
/// call that fails after it started sending (its status is in the trailers) is counted `OK`, and
/// its latency is the time to the response headers, not to the end of the stream.
fn status_code(response: &http::Response<Body>) -> Code {
    match response.headers().get("grpc-status") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|s| s.parse::<i32>().ok())
            .map(Code::from_i32)
            .unwrap_or(Code::Unknown),
        None => Code::Ok,
    }
}

// ---------------------------------------------------------------------------------------------
// 2. and 3. Admission: load shedding and the rate limit per calling agency

/// A check that admits or refuses a call before the inner service is called: the load shedder
/// ([`LoadShedder`]) and the rate limit per calling agency ([`AgencyRateLimiter`]). Health and
/// reflection are admitted without asking it (see the module docs).
pub trait Admission: Clone + Send + 'static {
    /// What an admitted call holds until its response is ready, e.g. a permit.
    type Ticket: Send + 'static;

    /// Whether the ticket is held until the response's body has been sent (or dropped), not only
    /// until its headers: a server-streaming call (a document download) goes on after its
    /// headers, and a limit on calls served at once must count it while it streams.
    const HELD_THROUGH_BODY: bool = false;

    /// Admits `req`, or refuses it with the status to answer at once.
    fn admit(&self, req: &http::Request<Body>) -> Result<Self::Ticket, Status>;
}

/// The layer of an [`Admission`] check.
#[derive(Clone)]
pub struct AdmitLayer<A> {
    admission: A,
}

impl<A> AdmitLayer<A> {
    pub fn new(admission: A) -> Self {
        Self { admission }
    }
}

impl<S, A: Clone> Layer<S> for AdmitLayer<A> {
    type Service = Admit<S, A>;
    fn layer(&self, inner: S) -> Self::Service {
        Admit {
            inner,
            admission: self.admission.clone(),
        }
    }
}

/// Calls the inner service only for calls its [`Admission`] admits; a refused call is answered
/// with the refusal's status (a response, so that the metrics layer above counts it).
#[derive(Clone)]
pub struct Admit<S, A> {
    inner: S,
    admission: A,
}

impl<S, A> Service<http::Request<Body>> for Admit<S, A>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    A: Admission,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if is_probe(req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        match self.admission.admit(&req) {
            Ok(ticket) => {
                let future = self.inner.call(req);
                Box::pin(async move {
                    let result = future.await;
                    if !A::HELD_THROUGH_BODY {
                        drop(ticket);
                        return result;
                    }
                    result.map(|response| {
                        response.map(|body| {
                            Body::new(Holding {
                                body,
                                _ticket: ticket,
                            })
                        })
                    })
                })
            }
            Err(status) => Box::pin(std::future::ready(Ok(answer(status)))),
        }
    }
}

/// A response body that holds an admission's ticket until it is dropped: once its last frame
/// was sent, or when the client went away.
struct Holding<T> {
    body: Body,
    _ticket: T,
}

// The ticket is never pinned: it is only held, then dropped with the body.
impl<T> Unpin for Holding<T> {}

impl<T: Send + 'static> http_body::Body for Holding<T> {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Load shedding and the global concurrency limit, as one [`Admission`].
///
/// tower's `LoadShed` over `ConcurrencyLimit` would do the same, but (a) it fails with tower's
/// `Overloaded` error, which tonic 0.14 turns into `RESOURCE_EXHAUSTED` ("Too many active
/// requests for the connection") only in its own `RecoverError`, outside every layer given to
/// `Server::layer`, so the metrics layer above would see an error instead of a status; and (b)
/// `ConcurrencyLimit` takes its permit in `poll_ready`, before the request's path is known, so
/// health probes could not pass. Here the permit is taken in `call`, without waiting, from one
/// semaphore shared by every connection, and held until the response's body is done: a
/// server-streaming call counts for as long as it streams.
#[derive(Clone)]
pub struct LoadShedder {
    permits: Arc<Semaphore>,
}

impl LoadShedder {
    pub fn new(concurrency_limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrency_limit.max(1))),
        }
    }
}

impl Admission for LoadShedder {
    type Ticket = OwnedSemaphorePermit;
    const HELD_THROUGH_BODY: bool = true;

    fn admit(&self, _req: &http::Request<Body>) -> Result<Self::Ticket, Status> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted("the server is at its concurrency limit: retry later")
        })
    }
}

/// The load shedding layer ([`LoadShedder`]).
pub type ShedLayer = AdmitLayer<LoadShedder>;
pub type Shed<S> = Admit<S, LoadShedder>;

/// Who a call counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    /// The agency named by the verified client certificate.
    Agency(String),
    /// The gateway (delivering to an agency's inbox): not rate limited, its delivery worker
    /// paces itself (16 pushes at a time) and a refused delivery would only be retried later.
    Gateway,
    /// No client certificate (a person's CLI with a bearer token, a probe): counted per peer
    /// host, by its IP address (not per connection: a new connection must not bring a new
    /// burst). At an agency's server every staff token is of that agency, so keying by the token
    /// would let one busy user stop all the others; people behind one NAT share a bucket, which
    /// the defaults leave far above what people type.
    Connection(Option<IpAddr>),
}

/// The caller of a request, from the connection's TLS information.
pub fn caller_of(req: &http::Request<Body>) -> Caller {
    let info = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>();
    let identity = info.and_then(|i| i.peer_certs()).and_then(|certs| {
        certs
            .first()
            .and_then(|leaf| crate::tls::identity_from_der(leaf))
    });
    match identity {
        Some(ComponentIdentity::Gateway) => Caller::Gateway,
        Some(ComponentIdentity::Agency(id)) => Caller::Agency(id),
        None => Caller::Connection(info.and_then(|i| i.get_ref().remote_addr()).map(|a| a.ip())),
    }
}

/// Token buckets, one per caller. A bucket that has filled up again is the same as a new one,
/// so full buckets are dropped when the map grows (callers keyed by connection come and go).
#[derive(Debug)]
pub struct AgencyRateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<Caller, (f64, Instant)>>,
}

/// Buckets kept before the full ones are swept out.
const SWEEP_ABOVE: usize = 4096;

impl AgencyRateLimiter {
    pub fn new(rate_per_second: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate_per_second.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from `caller`'s bucket at `now`; `false` when it is empty.
    pub fn try_take(&self, caller: &Caller, now: Instant) -> bool {
        let (rate, burst) = (self.rate, self.burst);
        let refilled = |(tokens, at): (f64, Instant)| {
            (tokens + now.saturating_duration_since(at).as_secs_f64() * rate).min(burst)
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > SWEEP_ABOVE {
            buckets.retain(|_, bucket| refilled(*bucket) < burst);
        }
        let bucket = buckets.entry(caller.clone()).or_insert((burst, now));
        let tokens = refilled(*bucket);
        if tokens >= 1.0 {
            *bucket = (tokens - 1.0, now);
            true
        } else {
            *bucket = (tokens, now);
            false
        }
    }
}

/// The rate limit per calling agency, as an [`Admission`]: the gateway's deliveries are not
/// limited.
impl Admission for Arc<AgencyRateLimiter> {
    type Ticket = ();

    fn admit(&self, req: &http::Request<Body>) -> Result<Self::Ticket, Status> {
        let caller = caller_of(req);
        if caller == Caller::Gateway || self.try_take(&caller, Instant::now()) {
            return Ok(());
        }
        tracing::debug!(caller = ?caller_label(&caller), "rate limit exceeded");
        Err(Status::resource_exhausted(
            "the calling agency is over its rate limit: slow down",
        ))
    }
}

/// The rate limit layer ([`AgencyRateLimiter`]).
pub type RateLimitLayer = AdmitLayer<Arc<AgencyRateLimiter>>;
pub type RateLimit<S> = Admit<S, Arc<AgencyRateLimiter>>;

/// A caller as logs may name it: an agency id, or `anonymous` (never an address).
fn caller_label(caller: &Caller) -> &str {
    match caller {
        Caller::Agency(id) => id,
        Caller::Gateway => "gateway",
        Caller::Connection(_) => "anonymous",
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Deadlines

tokio::task_local! {
    /// The instant by which the call being served must be answered.
    static INBOUND_DEADLINE: Instant;
}

/// What is left of the deadline of the call being served, if this task serves one.
pub fn inbound_remaining() -> Option<Duration> {
    INBOUND_DEADLINE
        .try_with(|deadline| deadline.saturating_duration_since(Instant::now()))
        .ok()
}

/// The timeout of a call made while serving another: the smaller of `own` and what is left of
/// the call being served.
pub fn outbound_timeout(own: Duration) -> Duration {
    inbound_remaining().map_or(own, |left| left.min(own))
}

/// A request for a call to another component, carrying `grpc-timeout`: the smaller of `own` and
/// what is left of the call being served (so the callee stops when our caller has given up).
pub fn outbound_request<T>(message: T, own: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(outbound_timeout(own));
    request
}

/// Runs `future` as if it served a call with `deadline` (a background task that wants its calls
/// bounded by its own deadline, and tests).
pub async fn with_deadline<F: Future>(deadline: Instant, future: F) -> F::Output {
    INBOUND_DEADLINE.scope(deadline, future).await
}

#[derive(Clone)]
pub struct DeadlineLayer {
    timeout: Duration,
}

impl DeadlineLayer {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            timeout: self.timeout,
        }
    }
}

#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Service<http::Request<Body>> for Deadline<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let timeout = grpc_timeout(req.headers()).map_or(self.timeout, |t| t.min(self.timeout));
        let deadline = Instant::now() + timeout;
        let future = INBOUND_DEADLINE.scope(deadline, self.inner.call(req));
        Box::pin(async move {
            tokio::select! {
                // The deadline first: an answer that comes in the same instant as the deadline
                // (a downstream call cut at the propagated deadline) is still late.
                biased;
                () = tokio::time::sleep_until(deadline) => Ok(answer(Status::deadline_exceeded(
                    "the call's deadline passed before it was answered",
                ))),
                result = future => result,
            }
        })
    }
}

/// The client's `grpc-timeout` header (gRPC over HTTP/2: at most 8 digits and a unit).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// 5. Message size

#[derive(Clone)]
pub struct MessageSizeLayer {
    max: usize,
}

impl MessageSizeLayer {
    pub fn new(max: usize) -> Self {
        Self { max }
    }
}

impl<S> Layer<S> for MessageSizeLayer {
    type Service = MessageSize<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MessageSize {
            inner,
            max: self.max,
        }
    }
}

#[derive(Clone)]
pub struct MessageSize<S> {
    inner: S,
    max: usize,
}

impl<S> Service<http::Request<Body>> for MessageSize<S>
where
    S: Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let max = self.max;
        self.inner.call(req.map(|body| {
            Body::new(FrameLimit {
                inner: body,
                max,
                header: [0; 5],
                header_len: 0,
                left_in_message: 0,
            })
        }))
    }
}

/// A request body that fails with `OUT_OF_RANGE` (what tonic's own decoder answers) as soon as a
/// gRPC message's length prefix (a flag byte and a big-endian u32) says it is longer than `max`.
/// Each message of a stream is judged alone.
struct FrameLimit {
    inner: Body,
    max: usize,
    header: [u8; 5],
    header_len: usize,
    left_in_message: usize,
}

impl FrameLimit {
    fn check(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.left_in_message > 0 {
                let n = self.left_in_message.min(data.len());
                self.left_in_message -= n;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data = &data[n..];
            if self.header_len == 5 {
                self.header_len = 0;
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                if len > self.max {
                    return Err(Status::out_of_range(format!(
                        "a request message may be at most {} bytes",
                        self.max
                    )));
                }
                self.left_in_message = len;
            }
        }
        Ok(())
    }
}

impl http_body::Body for FrameLimit {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Err(status) = self.check(data.chunk())
                {
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limiter = AgencyRateLimiter::new(10, 3);
        let school = Caller::Agency("school-1".into());
        let police = Caller::Agency("police-1".into());
        let t0 = Instant::now();
        assert!((0..3).all(|_| limiter.try_take(&school, t0)));
        assert!(!limiter.try_take(&school, t0), "the burst is spent");
        // Another agency has its own bucket.
        assert!(limiter.try_take(&police, t0));
        // 100 ms at 10/s is one more token.
        let t1 = t0 + Duration::from_millis(100);
        assert!(limiter.try_take(&school, t1));
        assert!(!limiter.try_take(&school, t1));
    }

    /// A request for `path` with an empty body.
    fn empty_request(path: &str) -> http::Request<Body> {
        http::Request::builder()
            .uri(path)
            .body(Body::empty())
            .unwrap()
    }

    /// A shedder of one permit refuses a second call while the first is served, lets probes
    /// through, and admits again once the first call's response is ready.
    #[tokio::test]
    async fn the_shedder_holds_its_permit_until_the_response_and_lets_probes_pass() {
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = Arc::new(tokio::sync::Mutex::new(Some(released)));
        let inner = tower::service_fn(move |req: http::Request<Body>| {
            let released = released.clone();
            async move {
                if req.uri().path() == "/slow" {
                    let wait = released.lock().await.take().unwrap();
                    let _ = wait.await;
                }
                Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
            }
        });
        let service = AdmitLayer::new(LoadShedder::new(1)).layer(inner);
        let call = |path: &str| service.clone().call(empty_request(path));
        let slow = tokio::spawn(call("/slow"));
        // The first call holds the one permit (taken in `call`, before the spawn).
        let refused = call("/referral.v1.Gateway/Send").await.unwrap();
        assert_eq!(status_code(&refused), Code::ResourceExhausted);
        let probe = call("/grpc.health.v1.Health/Check").await.unwrap();
        assert_eq!(status_code(&probe), Code::Ok);
        release.send(()).unwrap();
        assert_eq!(status_code(&slow.await.unwrap().unwrap()), Code::Ok);
        let again = call("/referral.v1.Gateway/Send").await.unwrap();
        assert_eq!(status_code(&again), Code::Ok);
    }

    /// A server-streaming call holds its permit while its body streams, and gives it back when
    /// the body ends or the client drops it; the rate limit's ticket holds nothing.
    #[tokio::test]
    async fn a_streaming_call_holds_its_permit_until_its_body_is_done() {
        use http_body_util::BodyExt as _;
        use tokio_stream::StreamExt as _;
        let (chunks, stream) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, Status>>(4);
        let stream = Arc::new(std::sync::Mutex::new(Some(stream)));
        let inner = tower::service_fn(move |req: http::Request<Body>| {
            let stream = stream.clone();
            async move {
                let body = match req.uri().path() {
                    "/download" => {
                        let rx = stream.lock().unwrap().take().unwrap();
                        let frames = tokio_stream::wrappers::ReceiverStream::new(rx)
                            .map(|chunk| chunk.map(http_body::Frame::data));
                        Body::new(http_body_util::StreamBody::new(frames))
                    }
                    _ => Body::empty(),
                };
                Ok::<_, std::convert::Infallible>(http::Response::new(body))
            }
        });
        let service = AdmitLayer::new(LoadShedder::new(1)).layer(inner);
        let call = |path: &str| service.clone().call(empty_request(path));
        // The download's headers are answered; its body has not ended.
        let mut download = call("/download").await.unwrap().into_body();
        chunks
            .send(Ok(bytes::Bytes::from_static(b"part 1")))
            .await
            .unwrap();
        let first = download.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "part 1");
        let refused = call("/referral.v1.Gateway/Send").await.unwrap();
        assert_eq!(status_code(&refused), Code::ResourceExhausted);
        // The stream ends: the permit is free once the body is done with.
        drop(chunks);
        assert!(download.frame().await.is_none());
        drop(download);
        let admitted = call("/referral.v1.Gateway/Send").await.unwrap();
        assert_eq!(status_code(&admitted), Code::Ok);
        // A unary call's body ends with it: dropped, its permit is free again.
        drop(admitted);
        let again = call("/referral.v1.Gateway/Send").await.unwrap();
        assert_eq!(status_code(&again), Code::Ok);
    }

    #[test]
    fn only_methods_the_hub_serves_are_named() {
        for known in [
            "/referral.v1.Gateway/Send",
            "/referral.v1.AgencyStaff/SubmitHelpRequest",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(method_label(known), known);
        }
        let invented = format!("/referral.v1.Gateway/{}", "Send".repeat(1000));
        for unknown in ["/", "", "/referral.v1.Gateway/Sen", invented.as_str()] {
            assert_eq!(method_label(unknown), "other", "{unknown}");
        }
    }

    #[test]
    fn grpc_timeouts_parse_as_the_protocol_says() {
        let header = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&h)
        };
        assert_eq!(header("250m"), Some(Duration::from_millis(250)));
        assert_eq!(header("3S"), Some(Duration::from_secs(3)));
        assert_eq!(header("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(header("123456789m"), None, "more than 8 digits");
        assert_eq!(header("5x"), None);
        assert_eq!(header("m"), None);
    }

    #[test]
    fn message_prefixes_over_the_limit_are_refused_across_chunks() {
        let frame_limit = |max| FrameLimit {
            inner: Body::empty(),
            max,
            header: [0; 5],
            header_len: 0,
            left_in_message: 0,
        };
        let message = |len: u32| {
            let mut m = vec![0];
            m.extend(len.to_be_bytes());
            m.extend(std::iter::repeat_n(7, len as usize));
            m
        };
        // Two messages of 10 bytes, split at every byte: within a limit of 10.
        let mut limit = frame_limit(10);
        let stream = [message(10), message(10)].concat();
        for byte in stream.chunks(1) {
            limit.check(byte).unwrap();
        }
        // The third message's prefix says 11: refused, even split inside the prefix.
        let over = message(11);
        limit.check(&over[..3]).unwrap();
        let status = limit.check(&over[3..]).unwrap_err();
        assert_eq!(status.code(), Code::OutOfRange);
    }

    #[tokio::test]
    async fn the_deadline_of_the_call_served_bounds_outbound_calls() {
        let own = Duration::from_secs(15);
        assert_eq!(
            outbound_timeout(own),
            own,
            "outside a call: our own timeout"
        );
        let deadline = Instant::now() + Duration::from_millis(300);
        let (inside, request) = with_deadline(deadline, async {
            (
                outbound_timeout(own),
                outbound_request((), Duration::from_secs(15)),
            )
        })
        .await;
        assert!(inside <= Duration::from_millis(300) && inside > Duration::ZERO);
        let header = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .unwrap()
            .to_owned();
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", header.parse().unwrap());
        let sent = grpc_timeout(&headers).unwrap();
        assert!(sent <= Duration::from_millis(300), "sent {header}");
    }

    #[tokio::test]
    async fn the_deadline_layer_answers_deadline_exceeded_and_sets_the_task_local() {
        let slow = tower::service_fn(|_req: http::Request<Body>| async {
            let seen = inbound_remaining();
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, std::convert::Infallible>(answer(Status::internal(format!("{seen:?}"))))
        });
        let mut service = DeadlineLayer::new(Duration::from_secs(30)).layer(slow);
        let mut req = http::Request::new(Body::empty());
        req.headers_mut()
            .insert("grpc-timeout", "100m".parse().unwrap());
        let started = std::time::Instant::now();
        let response = service.call(req).await.unwrap();
        assert_eq!(status_code(&response), Code::DeadlineExceeded);
        assert!(started.elapsed() < Duration::from_secs(2));

        let seen = tower::service_fn(|_req: http::Request<Body>| async {
            let left = inbound_remaining().unwrap();
            assert!(left <= Duration::from_millis(100), "{left:?}");
            Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
        });
        let mut service = DeadlineLayer::new(Duration::from_millis(100)).layer(seen);
        let response = service
            .call(http::Request::new(Body::empty()))
            .await
            .unwrap();
        assert_eq!(status_code(&response), Code::Ok);
    }
}
