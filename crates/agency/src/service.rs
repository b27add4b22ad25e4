//! Starting an agency service: [`AgencyService::build`] (or [`AgencyService::build_with`] and an
//! [`AgencyExtension`]) binds the listener, checks the agency's directory entry and opens its
//! store; [`AgencyService::run_until_stopped`] serves until told to stop. The server's whole
//! stack is assembled in [`AgencyService::router`].

use std::{net::SocketAddr, sync::Arc};

use jiff::tz::TimeZone;
use referral_core::server::Router;
use referral_core::{
    Clock,
    auth::TokenVerifier,
    db::{EmbeddedMigration, StorageConfig},
    directory::{AgencyEntry, Directory, kind_name},
    pki::TlsMaterial,
    server::{self, MAX_MESSAGE_BYTES},
    tls::{install_crypto_provider, server_tls},
};
use referral_proto::v1::{
    AgencyKind, agency_inbox_server::AgencyInboxServer, agency_staff_server::AgencyStaffServer,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{server::NamedService, service::interceptor::InterceptedService};

use crate::{
    auth::{GatewayOnly, StaffAuth},
    error::BuildError,
    extension::{AgencyExtension, AgencyHost},
    gateway_link::GatewayLink,
    inbox::InboxApi,
    staff::StaffApi,
    store::{MIGRATIONS, Store},
};

/// Everything an agency service needs to start.
#[derive(Debug, Clone)]
pub struct AgencyConfig {
    /// This agency's id in the directory (`school-1`).
    pub agency_id: String,
    /// Where the service listens; port 0 picks a free port.
    pub listen: SocketAddr,
    /// This agency's certificate and key (used as server and as client of the gateway) and the CA.
    pub tls: TlsMaterial,
    pub storage: StorageConfig,
    /// How the service reaches the gateway, e.g. `https://127.0.0.1:7400`.
    pub gateway_endpoint: String,
    pub directory: Directory,
    /// Verifies the staff's bearer tokens for this agency.
    pub token_verifier: TokenVerifier,
    pub clock: Clock,
    /// The server's limits (per-call timeout, concurrency, rate per caller, message size).
    pub limits: referral_core::limits::ServerLimits,
}

/// What every handler of one agency shares.
#[derive(Debug)]
pub(crate) struct Context {
    /// This agency's directory entry.
    pub(crate) agency: AgencyEntry,
    pub(crate) kind: AgencyKind,
    /// The district's time zone: dates and case years are judged in it.
    pub(crate) time_zone: TimeZone,
    pub(crate) directory: Directory,
    pub(crate) clock: Clock,
    pub(crate) store: Store,
    pub(crate) gateway: GatewayLink,
    pub(crate) token_verifier: TokenVerifier,
    /// What the service crate added, if anything.
    pub(crate) extension: Option<Arc<dyn AgencyExtension>>,
    /// Cancelled when the service begins to stop, so that streams end and shutdown completes.
    pub(crate) stopping: CancellationToken,
    /// One push of the clock events at a time, so they go out in order.
    pub(crate) clock_events_round: tokio::sync::Mutex<()>,
    /// The service's Prometheus registry (served on the admin port).
    pub(crate) metrics: referral_core::metrics::Metrics,
    /// Stores delivered messages in batches (`group_commit`, [`crate::inbox::write_receipts`]).
    pub(crate) receipts:
        referral_core::group_commit::Batcher<crate::store::received::PendingReceipt>,
    /// Records the gateway's acknowledgements of sent messages in batches
    /// ([`crate::outbound::write_acks`]).
    pub(crate) acks: referral_core::group_commit::Batcher<crate::store::sent::PendingAck>,
    /// Stores the pending rows of messages staff send, in batches
    /// ([`crate::outbound::write_pending_rows`]).
    pub(crate) pending_rows: referral_core::group_commit::Batcher<crate::store::sent::QueuedSend>,
}

impl Context {
    /// The extension, with the host it is called with.
    pub(crate) fn extension(self: &Arc<Self>) -> Option<(Arc<dyn AgencyExtension>, AgencyHost)> {
        self.extension
            .clone()
            .map(|ext| (ext, AgencyHost::new(self.clone())))
    }

    /// Tells the extension that a shared flow committed something it may act on.
    pub(crate) async fn after_commit(self: &Arc<Self>) {
        if let Some((ext, host)) = self.extension() {
            ext.after_commit(&host).await;
        }
    }
}

/// An agency service, bound to its port and ready to serve.
#[derive(Debug)]
pub struct AgencyService {
    listener: TcpListener,
    port: u16,
    tls: TlsMaterial,
    limits: referral_core::limits::ServerLimits,
    context: Arc<Context>,
}

impl AgencyService {
    /// Binds the listener, checks that the directory lists this agency with `expected_kind`,
    /// opens (and migrates) the store `agency-<id>` and prepares the gateway client. Nothing is
    /// served until [`run_until_stopped`](Self::run_until_stopped).
    pub async fn build(config: AgencyConfig, expected_kind: AgencyKind) -> anyhow::Result<Self> {
        Ok(Self::try_build(config, expected_kind, None).await?)
    }

    /// Like [`build`](Self::build), with the service crate's `extension`: its migrations run
    /// with the agency's, its services join the server, its hooks run in the shared flows.
    pub async fn build_with(
        config: AgencyConfig,
        expected_kind: AgencyKind,
        extension: Arc<dyn AgencyExtension>,
    ) -> anyhow::Result<Self> {
        Ok(Self::try_build(config, expected_kind, Some(extension)).await?)
    }

    async fn try_build(
        config: AgencyConfig,
        expected_kind: AgencyKind,
        extension: Option<Arc<dyn AgencyExtension>>,
    ) -> Result<Self, BuildError> {
        let migrations: &'static [EmbeddedMigration] = match &extension {
            None => MIGRATIONS,
            Some(ext) => {
                let all = ext.migrations();
                if !all.starts_with(MIGRATIONS)
                    || all[MIGRATIONS.len()..]
                        .iter()
                        .any(|(version, _, _)| *version < 1000)
                {
                    return Err(BuildError::ExtensionMigrations);
                }
                all
            }
        };
        install_crypto_provider();
        let listener = server::bind(config.listen)
            .await
            .map_err(|source| BuildError::Bind {
                addr: config.listen,
                source,
            })?;
        let port = listener
            .local_addr()
            .map_err(|source| BuildError::Bind {
                addr: config.listen,
                source,
            })?
            .port();

        let agency = config
            .directory
            .agency(&config.agency_id)
            .cloned()
            .ok_or_else(|| BuildError::UnknownAgency(config.agency_id.clone()))?;
        if agency.kind() != expected_kind {
            return Err(BuildError::WrongKind {
                id: agency.id,
                found: agency.kind,
                expected: kind_name(expected_kind),
            });
        }
        let district = config.directory.district(&agency.district).ok_or_else(|| {
            BuildError::UnknownDistrict {
                id: agency.id.clone(),
                district: agency.district.clone(),
            }
        })?;
        let time_zone = TimeZone::get(&district.time_zone).map_err(|_| BuildError::TimeZone {
            district: district.id.clone(),
            time_zone: district.time_zone.clone(),
        })?;

        let gateway = GatewayLink::new(&config.gateway_endpoint, &config.tls)?;
        let store = Store::open_with(&config.storage, &agency.id, migrations).await?;
        let metrics = referral_core::metrics::Metrics::new(&config.agency_id);
        crate::metrics::register(&metrics, store.database(), config.clock.clone());
        tracing::info!(agency_id = %agency.id, port, "agency service built");
        Ok(Self {
            listener,
            port,
            tls: config.tls,
            limits: config.limits,
            context: Arc::new_cyclic(|owner| Context {
                agency,
                kind: expected_kind,
                time_zone,
                directory: config.directory,
                clock: config.clock,
                store,
                gateway,
                token_verifier: config.token_verifier,
                extension,
                stopping: CancellationToken::new(),
                clock_events_round: tokio::sync::Mutex::new(()),
                metrics,
                receipts: referral_core::group_commit::Batcher::spawn(
                    &tokio::runtime::Handle::current(),
                    owner.clone(),
                    crate::inbox::RECEIPT_BATCH,
                    crate::inbox::write_receipts,
                ),
                acks: referral_core::group_commit::Batcher::spawn(
                    &tokio::runtime::Handle::current(),
                    owner.clone(),
                    crate::outbound::OUTGOING_BATCH,
                    crate::outbound::write_acks,
                ),
                pending_rows: referral_core::group_commit::Batcher::spawn(
                    &tokio::runtime::Handle::current(),
                    owner.clone(),
                    crate::outbound::OUTGOING_BATCH,
                    crate::outbound::write_pending_rows,
                ),
            }),
        })
    }

    /// The port the service listens on (the real one when built with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The service's metrics, for the admin port.
    pub fn metrics(&self) -> referral_core::metrics::Metrics {
        self.context.metrics.clone()
    }

    /// The service's store, for the admin port's readiness check.
    pub fn database(&self) -> referral_core::db::Database {
        self.context.store.database()
    }

    pub fn agency_id(&self) -> &str {
        &self.context.agency.id
    }

    /// The agency's kind.
    pub fn kind(&self) -> AgencyKind {
        self.context.kind
    }

    /// Serves until `shutdown` is cancelled, ends open streams, lets calls in flight finish,
    /// stops the extension's background task, then closes the store.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            listener,
            port,
            tls,
            limits,
            context,
        } = self;
        let router = Self::router(&tls, &limits, &context).await?;
        tracing::info!(agency_id = %context.agency.id, port, "agency service listening");
        let background = context.extension().map(|(ext, host)| {
            let stop = context.stopping.clone();
            tokio::spawn(async move { ext.run(host, stop).await })
        });
        // Every kind's clock events reach the gateway even when it was away when they were queued.
        let clock_events = tokio::spawn(crate::clock_events::run(
            context.clone(),
            context.stopping.clone(),
        ));
        let stopping = context.stopping.clone();
        let on_shutdown = shutdown.clone();
        let watcher = tokio::spawn(async move {
            on_shutdown.cancelled().await;
            stopping.cancel();
        });
        let served = server::serve(router, listener, shutdown).await;
        context.stopping.cancel();
        watcher.abort();
        if let Err(err) = clock_events.await {
            tracing::error!(error = %err, "the clock events' retry loop failed");
        }
        if let Some(background) = background
            && let Err(err) = background.await
        {
            tracing::error!(error = %err, "the agency extension's background task failed");
        }
        context.store.close().await;
        tracing::info!(agency_id = %context.agency.id, "agency service stopped");
        Ok(served?)
    }

    /// The agency's server, top to bottom.
    async fn router(
        tls: &TlsMaterial,
        limits: &referral_core::limits::ServerLimits,
        context: &Arc<Context>,
    ) -> anyhow::Result<Router> {
        let inbox = AgencyInboxServer::new(InboxApi::new(context.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let staff = AgencyStaffServer::new(StaffApi::new(context.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let mut serving = vec![
            <AgencyInboxServer<InboxApi> as NamedService>::NAME,
            <AgencyStaffServer<StaffApi> as NamedService>::NAME,
        ];
        let extension = context.extension();
        if let Some((ext, _)) = &extension {
            serving.extend(ext.service_names());
        }
        let (health, reflection) = server::health_and_reflection(&serving).await?;
        let staff_auth = StaffAuth::new(&context.agency.id, context.token_verifier.clone());
        let router =
            // TLS with optional client certificates, a trace span per call, request metrics,
            // load shedding, rate limit, deadline and message size: shared by every component.
            server::builder(server_tls(tls), limits, context.metrics.clone())?
                // Health and reflection: open to any TLS client, they reveal no data.
                .add_service(health)
                .add_service(reflection)
                // Inbox: authenticate the gateway's client certificate before decoding anything
                // else; oversized messages are refused from their length prefix.
                .add_service(InterceptedService::new(inbox, GatewayOnly))
                // Staff API: verify the bearer token and attach the acting user; handlers then
                // authorise by the user's role and this agency's kind.
                .add_service(InterceptedService::new(staff, staff_auth));
        // The service crate's own services, each behind the interceptor it chose (staff ones
        // behind the same bearer-token check as the staff API).
        Ok(match &extension {
            Some((ext, host)) => ext.add_services(host, router),
            None => router,
        })
    }
}
