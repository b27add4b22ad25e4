//! The gateway, the hub every agency talks through: an mTLS front door that knows each agency by
//! its certificate, deny-by-default routing rules, a durable and idempotent send, a delivery
//! worker that never gives up on a recipient, and a hash-chained ledger of every message.

#![forbid(unsafe_code)]

pub mod api;
pub mod delivery;
pub mod ledger;
pub mod routing;
pub mod store;

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
};

use anyhow::Context as _;
use jiff::SignedDuration;
use referral_core::{
    Clock,
    config::DeliverySettings,
    db::{Database, StorageConfig},
    directory::Directory,
    pki::TlsMaterial,
    server, tls,
};
use referral_proto::v1::gateway_server::GatewayServer;
use tokio::{
    net::TcpListener,
    sync::{Notify, broadcast},
};
use tokio_util::sync::CancellationToken;

pub use delivery::DeliveryEvent;

/// Everything the gateway needs to start.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The gateway's certificate (server and client) and the CA it trusts.
    pub tls: TlsMaterial,
    pub storage: StorageConfig,
    /// The agency directory to load into the store at start.
    pub directory: Directory,
    pub delivery: DeliverySettings,
    pub clock: Clock,
}

/// State shared by the API and the delivery worker.
pub(crate) struct Shared {
    pub(crate) db: Database,
    pub(crate) clock: Clock,
    directory: RwLock<Arc<Directory>>,
    pub(crate) wake: Notify,
    pub(crate) events: broadcast::Sender<DeliveryEvent>,
    pub(crate) tls: TlsMaterial,
    delivery: DeliverySettings,
    pub(crate) worker_id: String,
}

impl Shared {
    /// The directory as last loaded from the store (a snapshot, cheap to hold across awaits).
    pub(crate) fn directory(&self) -> Arc<Directory> {
        self.directory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn backoff(&self, attempts: i64) -> SignedDuration {
        delivery::backoff(
            self.delivery.initial_backoff_ms,
            self.delivery.max_backoff_ms,
            attempts,
        )
    }

    pub(crate) fn attempt_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.delivery.attempt_timeout_ms)
    }

    /// How long a worker holds a row it is pushing; after that another worker may take it over.
    pub(crate) fn lease_length(&self) -> SignedDuration {
        SignedDuration::from_millis(
            i64::try_from(self.delivery.attempt_timeout_ms.saturating_mul(3)).unwrap_or(i64::MAX),
        )
    }
}

/// A built gateway: its listener is bound, its store migrated, its directory loaded.
pub struct Gateway {
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// A handle for tests and the launcher: observe deliveries, read states, verify the ledger.
#[derive(Clone)]
pub struct GatewayHandle {
    shared: Arc<Shared>,
}

impl Gateway {
    pub async fn build(config: GatewayConfig) -> anyhow::Result<Self> {
        tls::install_crypto_provider();
        config
            .directory
            .validate()
            .context("the agency directory is not valid")?;
        let db = Database::open(&config.storage, "gateway", store::MIGRATIONS).await?;
        store::save_directory(db.pool(), &config.directory)
            .await
            .context("cannot save the agency directory")?;
        let directory = store::load_directory(db.pool())
            .await
            .context("cannot read the agency directory")?;
        let listener = server::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let (events, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            db,
            clock: config.clock,
            directory: RwLock::new(Arc::new(directory)),
            wake: Notify::new(),
            events,
            tls: config.tls,
            delivery: config.delivery,
            worker_id: uuid::Uuid::new_v4().to_string(),
        });
        Ok(Self { listener, shared })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn handle(&self) -> GatewayHandle {
        GatewayHandle {
            shared: self.shared.clone(),
        }
    }

    /// Serves the API and runs the delivery worker until `shutdown` is cancelled.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // Aborted if this future is dropped (a crash in tests): no orphaned worker lives on.
        let worker = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(delivery::run(
            self.shared.clone(),
            shutdown.clone(),
        )));
        let (health, reflection) = server::health_and_reflection(&["referral.v1.Gateway"]).await?;
        let router = server::builder(tls::server_tls(&self.shared.tls))?
            .add_service(health)
            .add_service(reflection)
            .add_service(tonic::service::interceptor::InterceptedService::new(
                GatewayServer::new(api::GatewayApi {
                    shared: self.shared.clone(),
                })
                .max_decoding_message_size(server::MAX_MESSAGE_BYTES),
                api::authenticate(self.shared.clone()),
            ));
        let served = server::serve(router, self.listener, shutdown.clone()).await;
        shutdown.cancel();
        let _ = worker.await;
        self.shared.db.close().await;
        served.context("the gateway server failed")
    }
}

impl GatewayHandle {
    /// Delivery events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<DeliveryEvent> {
        self.shared.events.subscribe()
    }

    /// Asks the worker to look at the outbox now.
    pub fn wake_worker(&self) {
        self.shared.wake.notify_one();
    }

    pub fn database(&self) -> &Database {
        &self.shared.db
    }

    pub fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    /// Verifies the ledger's hash chain.
    pub async fn verify_ledger(&self) -> Result<ledger::Verified, ledger::VerifyError> {
        ledger::verify(self.shared.db.pool()).await
    }
}

/// Verifies the ledger of a gateway store offline (the `referral-hub ledger verify` command).
pub async fn verify_ledger(storage: &StorageConfig) -> anyhow::Result<ledger::Verified> {
    let db = Database::open(storage, "gateway", store::MIGRATIONS).await?;
    let verified = ledger::verify(db.pool()).await;
    db.close().await;
    Ok(verified?)
}
