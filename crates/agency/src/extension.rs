//! How a service crate adds its own work to the shared agency service: an [`AgencyExtension`]
//! given to [`AgencyService::build_with`](crate::AgencyService::build_with).
//!
//! An extension can
//! * add tables to the agency's store (its migrations follow the agency's own, in one list, so
//!   one store still has one migration history);
//! * add gRPC services to the agency's server, guarded by the same staff authentication
//!   ([`AgencyHost::staff_auth`]) as the staff API;
//! * act **inside the transactions** of the shared flows, so that what it derives is committed
//!   together with what caused it: every newly received message
//!   ([`AgencyExtension::on_received`]), a case opened by the commission's decision
//!   ([`AgencyExtension::on_case_opened`]) and that case withdrawn again when the gateway refused
//!   the decision ([`AgencyExtension::on_case_withdrawn`]);
//! * act **after** a decision was handed to the gateway ([`AgencyExtension::after_commit`], e.g.
//!   to push an outbox) and run a background task while the service serves
//!   ([`AgencyExtension::run`]).
//!
//! Everything it needs of the agency comes through the [`AgencyHost`]: its directory entry and
//! district time zone, the directory, the clock, the token verifier, the store (transactions,
//! queuing outgoing messages in them) and the gateway link (sending queued messages, recording
//! case events, the deadline service).

use std::sync::Arc;

use jiff::{Timestamp, civil::Date, tz::TimeZone};
use referral_core::server::Router;
use referral_core::{
    Clock, ServiceResult,
    auth::TokenVerifier,
    db::{Any, AnyPool, EmbeddedMigration, Transaction},
    directory::{AgencyEntry, Directory},
    trace_context::TracedChannel,
};
use referral_proto::v1::{
    ActingUser, AgencyClockEvent, AgencyKind, Envelope, RecordCaseEventRequest,
    RecordCaseEventResponse, deadlines_client::DeadlinesClient,
};
use sqlx::AnyConnection;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::StaffAuth,
    error::AgencyResult,
    gateway_link::GatewayFailure,
    outbound::{Pushed, push},
    service::Context,
    store::{fingerprint, sent},
};

/// A case just opened by the commission's decision on a help request.
#[derive(Debug, Clone)]
pub struct OpenedCase<'a> {
    pub case_reference: &'a str,
    pub help_request_message_id: &'a str,
    pub curator_user_id: &'a str,
    /// The secretary or chair who decided.
    pub decided_by: &'a ActingUser,
    pub opened_at: Timestamp,
}

/// What a service crate adds to the shared agency service. Every method has a default that does
/// nothing, except [`migrations`](Self::migrations).
#[tonic::async_trait]
pub trait AgencyExtension: Send + Sync + std::fmt::Debug + 'static {
    /// The store's whole migration list: the agency's own ([`crate::MIGRATIONS`]), then the
    /// extension's, with versions of their own (the agency's are below 1000).
    fn migrations(&self) -> &'static [EmbeddedMigration];

    /// The names of the gRPC services [`add_services`](Self::add_services) adds, for the health
    /// service.
    fn service_names(&self) -> Vec<&'static str> {
        Vec::new()
    }

    /// Adds the extension's gRPC services to the agency's router.
    fn add_services(&self, _host: &AgencyHost, router: Router) -> Router {
        router
    }

    /// Called inside the inbox's transaction for each newly received message (never for a
    /// duplicate delivery). An error rolls the whole receipt back; the gateway delivers again.
    async fn on_received(
        &self,
        _host: &AgencyHost,
        _conn: &mut AnyConnection,
        _envelope: &Envelope,
        _now: Timestamp,
    ) -> ServiceResult<()> {
        Ok(())
    }

    /// Called inside the decision's transaction when it opens a case. An error undoes the
    /// decision.
    async fn on_case_opened(
        &self,
        _host: &AgencyHost,
        _conn: &mut AnyConnection,
        _case: &OpenedCase<'_>,
    ) -> ServiceResult<()> {
        Ok(())
    }

    /// Called inside the transaction that removes a decision the gateway refused, before its
    /// case is removed: the extension removes what it keeps about the case.
    async fn on_case_withdrawn(
        &self,
        _host: &AgencyHost,
        _conn: &mut AnyConnection,
        _case_reference: &str,
    ) -> ServiceResult<()> {
        Ok(())
    }

    /// Whether `user` may see one of the agency's messages (received or sent) through the staff
    /// API. The default lets every member of the agency see every message.
    async fn may_see(
        &self,
        _host: &AgencyHost,
        _user: &ActingUser,
        _envelope: &Envelope,
    ) -> ServiceResult<bool> {
        Ok(true)
    }

    /// Called after a shared flow committed something the extension may act on (today: a
    /// decision handed to the gateway). Not called from the inbox: a delivery is answered without
    /// calling the gateway back.
    async fn after_commit(&self, _host: &AgencyHost) {}

    /// Runs while the service serves, until `shutdown` is cancelled; the store stays open until
    /// it returns.
    async fn run(&self, _host: AgencyHost, _shutdown: CancellationToken) {}
}

/// What happened to a queued message handed to the gateway by [`AgencyHost::push_message`].
#[derive(Debug)]
pub enum PushOutcome {
    /// Acknowledged now, or earlier: its message id.
    Sent(String),
    /// Not reachable (or not accepting this agency's credentials): still queued, try again later.
    NotNow(GatewayFailure),
    /// Refused for good; the queued row is removed.
    Refused(GatewayFailure),
    /// No message is queued under this key.
    Unknown,
}

/// The agency as an extension sees it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AgencyHost {
    context: Arc<Context>,
}

impl AgencyHost {
    pub(crate) fn new(context: Arc<Context>) -> Self {
        Self { context }
    }

    /// This agency's directory entry.
    pub fn agency(&self) -> &AgencyEntry {
        &self.context.agency
    }

    pub fn agency_id(&self) -> &str {
        &self.context.agency.id
    }

    pub fn kind(&self) -> AgencyKind {
        self.context.kind
    }

    /// The district's time zone: dates are judged in it.
    pub fn time_zone(&self) -> &TimeZone {
        &self.context.time_zone
    }

    /// Today's date in the district.
    pub fn today(&self) -> Date {
        self.context
            .clock
            .now()
            .to_zoned(self.context.time_zone.clone())
            .date()
    }

    pub fn directory(&self) -> &Directory {
        &self.context.directory
    }

    pub fn clock(&self) -> &Clock {
        &self.context.clock
    }

    pub fn token_verifier(&self) -> &TokenVerifier {
        &self.context.token_verifier
    }

    /// The staff API's interceptor: verifies the bearer token and attaches the acting user, read
    /// in handlers with [`crate::acting_user`].
    pub fn staff_auth(&self) -> StaffAuth {
        StaffAuth::new(&self.context.agency.id, self.context.token_verifier.clone())
    }

    /// The store's pool, for reads.
    pub fn pool(&self) -> &AnyPool {
        self.context.store.pool()
    }

    /// Starts a transaction on the agency's store.
    pub async fn begin(&self) -> ServiceResult<Transaction<'static, Any>> {
        Ok(self.context.store.begin().await?)
    }

    /// Queues an outgoing message inside the caller's transaction, under `idempotency_key` (the
    /// envelope's own key should be the same): a `sent_messages` row, pending until
    /// [`push_message`](Self::push_message) hands it to the gateway. False when a message is
    /// queued (or sent) under this key already, which is then left as it is.
    pub async fn queue_message(
        &self,
        conn: &mut AnyConnection,
        idempotency_key: &str,
        acting_user_id: &str,
        envelope: &Envelope,
        now: Timestamp,
    ) -> ServiceResult<bool> {
        sent::insert_pending(
            conn,
            &sent::NewSent {
                idempotency_key,
                request_sha256: &fingerprint(&prost::Message::encode_to_vec(envelope)),
                acting_user_id,
                envelope,
                now,
            },
        )
        .await
        .map(|row| row.is_some())
    }

    /// The gateway's message id of the message queued under `idempotency_key`, once sent.
    pub async fn sent_message_id(&self, idempotency_key: &str) -> ServiceResult<Option<String>> {
        Ok(self
            .context
            .store
            .sent_by_key(idempotency_key)
            .await?
            .and_then(|row| row.message_id))
    }

    /// Pushes the messages still queued under the keys `pending_keys` selects (one column: the
    /// idempotency key, oldest first), undoing with `undo` each one the gateway refuses for good;
    /// an unreachable gateway leaves them for the next round. `what` names them in the logs.
    pub async fn push_pending<F, Fut>(&self, pending_keys: &'static str, what: &str, undo: F)
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = ServiceResult<()>>,
    {
        let keys: Vec<String> = match sqlx::query_scalar(pending_keys)
            .fetch_all(self.pool())
            .await
        {
            Ok(keys) => keys,
            Err(error) => {
                tracing::warn!(%error, what, "cannot read the pending messages");
                return;
            }
        };
        for key in keys {
            match self.push_message(&key).await {
                Ok(PushOutcome::Refused(failure)) => {
                    tracing::error!(?failure, what, "the gateway refused a message");
                    if let Err(error) = undo(key).await {
                        tracing::error!(%error, what, "cannot undo a refused message");
                    }
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, what, "cannot push a message"),
            }
        }
    }

    /// Hands the message queued under `idempotency_key` to the gateway, unless it was sent
    /// already, and records the acknowledgement. A refused message is removed from the queue.
    pub async fn push_message(&self, idempotency_key: &str) -> AgencyResult<PushOutcome> {
        let context = &self.context;
        let Some(row) = context.store.sent_by_key(idempotency_key).await? else {
            return Ok(PushOutcome::Unknown);
        };
        if let Some(id) = row.message_id {
            return Ok(PushOutcome::Sent(id));
        }
        Ok(match push(context, &row).await? {
            Pushed::Sent(row) => PushOutcome::Sent(row.message_id.unwrap_or_default()),
            Pushed::Failed(failure @ GatewayFailure::Refused(_)) => {
                context.store.forget_pending(idempotency_key).await?;
                PushOutcome::Refused(failure)
            }
            Pushed::Failed(failure) => PushOutcome::NotNow(failure),
        })
    }

    /// Queues a clock event for the gateway's deadline engine inside the caller's transaction
    /// (see [`crate::clock_events`]), under `idempotency_key` (stable for the change that causes
    /// it, e.g. `incident:{id}:recorded`): the same key and event again queue nothing, another
    /// event under the key is `ALREADY_EXISTS`. Call [`push_clock_events`](Self::push_clock_events)
    /// after the commit; the service's retry loop pushes it otherwise.
    pub async fn queue_clock_event(
        &self,
        conn: &mut AnyConnection,
        idempotency_key: &str,
        acting: &ActingUser,
        event: AgencyClockEvent,
    ) -> ServiceResult<()> {
        crate::clock_events::queue(conn, idempotency_key, acting, &event, self.clock().now()).await
    }

    /// Hands every queued clock event to the gateway, in order (best effort: what the gateway does
    /// not take now stays queued for the retry loop). Returns how many it recorded.
    pub async fn push_clock_events(&self) -> usize {
        crate::clock_events::push(&self.context).await
    }

    /// Queues one clock event in a transaction of its own and pushes it: for a caller with no
    /// change of its own to commit it with.
    pub async fn record_clock_event_now(
        &self,
        idempotency_key: &str,
        acting: &ActingUser,
        event: AgencyClockEvent,
    ) -> ServiceResult<()> {
        let mut tx = self.begin().await?;
        self.queue_clock_event(&mut tx, idempotency_key, acting, event)
            .await?;
        tx.commit().await?;
        self.push_clock_events().await;
        Ok(())
    }

    /// Records a case event with the gateway (commission only; the gateway checks).
    pub async fn record_case_event(
        &self,
        request: RecordCaseEventRequest,
    ) -> Result<RecordCaseEventResponse, GatewayFailure> {
        self.context.gateway.record_case_event(request).await
    }

    /// A client of the gateway's API, over this agency's mutual-TLS channel (filtered case reads,
    /// disclosure grants, the disclosure history).
    pub fn gateway(&self) -> referral_proto::v1::gateway_client::GatewayClient<TracedChannel> {
        self.context.gateway.client()
    }

    /// The interceptor that admits only the gateway's client certificate, for services the
    /// gateway calls (the commission's case source).
    pub fn gateway_only(&self) -> crate::auth::GatewayOnly {
        crate::auth::GatewayOnly
    }

    /// A client of the gateway's deadline service, over this agency's mutual-TLS channel.
    pub fn deadlines(&self) -> DeadlinesClient<TracedChannel> {
        self.context.gateway.deadlines()
    }

    /// Cancelled when the service begins to stop: long-running calls (streams) end with it.
    pub fn stopping(&self) -> &CancellationToken {
        &self.context.stopping
    }
}
