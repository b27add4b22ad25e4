//! The gateway, the hub every agency talks through: an mTLS front door that knows each agency by
//! its certificate, deny-by-default routing rules, a durable and idempotent send, a delivery
//! worker that never gives up on a recipient, a hash-chained ledger of every message, and the
//! deadline engine that the ledger feeds.

#![forbid(unsafe_code)]

mod access;
pub mod api;
pub mod deadlines;
pub mod delivery;
mod forms;
// The fuzz targets' entry points (fuzz/), compiled only for them.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod ledger;
mod metrics;
mod police_forms;
pub mod policy;
mod protection_forms;
pub mod routing;
pub mod sealing;
mod service_forms;
pub mod store;
pub mod views;

use std::{
    collections::HashMap,
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
    group_commit,
    pki::TlsMaterial,
    server, tls,
};
use referral_deadlines::DistrictCalendar;
use referral_proto::v1::{
    DeadlineAlert, DeadlineOverviewResponse, ListDeadlinesRequest, ListDeadlinesResponse,
    ListOverdueRequest, deadlines_server::DeadlinesServer, gateway_server::GatewayServer,
};
use tokio::{
    net::TcpListener,
    sync::{Notify, broadcast, watch},
};
use tokio_util::sync::CancellationToken;

pub use deadlines::{EngineError, SettleReport};
pub use delivery::DeliveryEvent;
pub use referral_deadlines::{CalendarError, DeadlineSettings, HolidayCalendar};
pub use sealing::{KeyError, KeySources, PayloadSealer, SealError};

/// The holiday calendar the settings name. The shipped default (`deploy/holidays-kz.toml`) is
/// also compiled in, so a gateway started outside the repository still has Kazakhstan's
/// calendar; any other file must exist and be valid.
pub fn load_holidays(settings: &DeadlineSettings) -> Result<HolidayCalendar, CalendarError> {
    let file = &settings.holidays_file;
    if !file.exists() && *file == DeadlineSettings::default().holidays_file {
        return Ok(HolidayCalendar::embedded_kazakhstan());
    }
    HolidayCalendar::load(file)
}

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
    /// The deadline engine's periods.
    pub deadlines: DeadlineSettings,
    /// The official holidays working-day clocks skip.
    pub holidays: Arc<HolidayCalendar>,
    /// Run the deadline engine in the background (tests may drive it with
    /// [`GatewayHandle::settle`] alone).
    pub run_deadline_engine: bool,
    /// Run the delivery worker (a simulation may leave the outbox undelivered).
    pub run_delivery_worker: bool,
    /// The keyring payloads are sealed with at rest. Every replica over one store needs the same
    /// keys.
    pub payload_sealer: PayloadSealer,
    /// How long a delivered message's payload is kept before the worker removes it (zero: as
    /// soon as it is delivered and the deadline engine has read it).
    pub payload_retention: SignedDuration,
    /// Where the need-to-know policy is read from (`need_to_know.cedarschema` and
    /// `need_to_know.cedar`); `None` uses the policy built into the gateway. An invalid policy
    /// stops the gateway at start.
    pub policy_dir: Option<std::path::PathBuf>,
    /// The deployment's secret for the children's pseudonyms (HMAC-SHA-256 of the IIN). Every
    /// replica needs the same one, and it must outlive restarts, or referrals stop linking.
    pub child_link_secret: Vec<u8>,
    /// The server's limits (per-call timeout, concurrency, rate per calling agency, message
    /// size).
    pub limits: referral_core::limits::ServerLimits,
}

/// The default time a delivered payload is kept: 7 days.
pub const DEFAULT_PAYLOAD_RETENTION: SignedDuration = SignedDuration::from_hours(7 * 24);

impl GatewayConfig {
    /// A configuration with the default deadline periods, Kazakhstan's embedded holiday
    /// calendar, both background tasks running, the default payload retention and an
    /// [ephemeral](PayloadSealer::ephemeral) payload key: a deployment sets `payload_sealer` to
    /// the keys it loads, or what it stores cannot be read after a restart.
    pub fn new(
        listen: SocketAddr,
        tls: TlsMaterial,
        storage: StorageConfig,
        directory: Directory,
        delivery: DeliverySettings,
        clock: Clock,
    ) -> Self {
        Self {
            listen,
            tls,
            storage,
            directory,
            delivery,
            clock,
            deadlines: DeadlineSettings::default(),
            holidays: Arc::new(HolidayCalendar::embedded_kazakhstan()),
            run_deadline_engine: true,
            run_delivery_worker: true,
            payload_sealer: PayloadSealer::ephemeral(),
            payload_retention: DEFAULT_PAYLOAD_RETENTION,
            policy_dir: None,
            // Two random (OS-generated) v4 UUIDs: 244 random bits, for a gateway that is given
            // no secret (a test); a deployment configures its own.
            child_link_secret: [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()]
                .iter()
                .flat_map(|u| *u.as_bytes())
                .collect(),
            limits: referral_core::limits::ServerLimits::default(),
        }
    }
}

/// State shared by the APIs, the delivery worker and the deadline engine.
pub(crate) struct Shared {
    pub(crate) db: Database,
    pub(crate) clock: Clock,
    directory: RwLock<Arc<Directory>>,
    pub(crate) wake: Notify,
    pub(crate) events: broadcast::Sender<DeliveryEvent>,
    pub(crate) tls: TlsMaterial,
    delivery: DeliverySettings,
    pub(crate) worker_id: String,
    pub(crate) deadlines: DeadlineSettings,
    /// Each district's calendar (its time zone and the holidays), by district id.
    calendars: HashMap<String, DistrictCalendar>,
    /// Wakes the deadline engine: the ledger has new entries.
    pub(crate) engine_wake: Notify,
    /// Deadline alerts as they are raised (here, or by another replica: `deadlines::feed`), for
    /// `WatchDeadlines`.
    pub(crate) alerts: broadcast::Sender<DeadlineAlert>,
    /// The alerts this replica's sweeps raised and broadcast themselves.
    pub(crate) local_alerts: deadlines::feed::LocalAlerts,
    /// The ledger sequence number up to which this replica's alert feed has relayed alerts.
    pub(crate) feed_position: watch::Sender<i64>,
    /// Seals payloads at rest and opens them.
    pub(crate) sealer: PayloadSealer,
    /// How long delivered payloads are kept.
    pub(crate) payload_retention: SignedDuration,
    /// The need-to-know policy.
    pub(crate) policy: policy::PolicyEngine,
    /// The sensitivity class of every field.
    pub(crate) views: views::ViewFilter,
    /// The key of the children's pseudonyms (HMAC of the IIN).
    pub(crate) child_link_secret: Vec<u8>,
    /// The gateway's Prometheus registry (served on the admin port).
    pub(crate) metrics: referral_core::metrics::Metrics,
    /// The gateway's own families on that registry (outbox, deliveries, deadlines, denials).
    pub(crate) gateway_metrics: metrics::GatewayMetrics,
    /// One lazily connected mTLS channel per agency (by id and endpoint), shared by the
    /// delivery worker and the case-file reads: HTTP/2 multiplexes the calls, and a read no
    /// longer pays a TLS handshake.
    agency_channels: std::sync::Mutex<HashMap<(String, String), tonic::transport::Channel>>,
    /// Stores accepted sends and records accepted deliveries, those waiting together in one
    /// transaction under the ledger's lock (`group_commit`, `api::write_ledger_batch`).
    pub(crate) ledger_writer: group_commit::Batcher<api::LedgerWrite>,
    /// The store as the writers reach it: its own connections, on the writers' thread.
    pub(crate) writer_db: Database,
    /// The thread the writers run on (stops when the gateway is dropped).
    _writer_thread: group_commit::WriterThread,
}

impl Shared {
    /// The directory as last loaded from the store (a snapshot, cheap to hold across awaits).
    pub(crate) fn directory(&self) -> Arc<Directory> {
        self.directory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The calendar of a district, when the directory knows it.
    pub(crate) fn calendar(&self, district_id: &str) -> Option<&DistrictCalendar> {
        self.calendars.get(district_id)
    }

    /// Tells the delivery worker and the deadline engine that the ledger has new entries (call
    /// after the commit).
    pub(crate) fn ledger_appended(&self) {
        self.wake.notify_one();
        self.engine_wake.notify_one();
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

    /// The channel to an agency's service, with the gateway's own certificate, made once per
    /// agency and endpoint (a directory change of endpoint makes a new one). `None` when the
    /// directory does not list the agency or its endpoint is not a usable URL.
    pub(crate) fn agency_channel(&self, agency_id: &str) -> Option<tonic::transport::Channel> {
        let endpoint = self.directory().agency(agency_id)?.endpoint.clone();
        let key = (agency_id.to_owned(), endpoint);
        let mut channels = self
            .agency_channels
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.get(&key) {
            return Some(channel.clone());
        }
        let identity = referral_core::pki::ComponentIdentity::Agency(agency_id.to_owned());
        let channel = tonic::transport::Endpoint::from_shared(key.1.clone())
            .ok()?
            .tls_config(tls::client_tls(&self.tls, &identity))
            .ok()?
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(self.attempt_timeout())
            .connect_lazy();
        channels.retain(|(id, _), _| id != agency_id);
        channels.insert(key, channel.clone());
        Some(channel)
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
    run_deadline_engine: bool,
    run_delivery_worker: bool,
    limits: referral_core::limits::ServerLimits,
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
        // A year the holiday calendar does not list counts only weekends as days off: say so
        // loudly, every start, until someone adds the year (README: "How to update the holiday
        // calendar").
        let this_year = config.clock.now().to_zoned(jiff::tz::TimeZone::UTC).year();
        for year in [this_year, this_year + 1] {
            if !config.holidays.covers(year) {
                tracing::warn!(
                    year,
                    "the holiday calendar does not list this year: working-day deadlines will skip weekends only"
                );
            }
        }
        let db = Database::open(&config.storage, "gateway", store::MIGRATIONS).await?;
        store::save_directory(&db, &config.directory)
            .await
            .context("cannot save the agency directory")?;
        let directory = store::load_directory(db.pool())
            .await
            .context("cannot read the agency directory")?;
        store::check_payload_keys(db.pool(), &config.payload_sealer).await?;
        let listener = server::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let mut calendars = HashMap::new();
        for district in &directory.districts {
            let calendar = DistrictCalendar::new(&district.time_zone, config.holidays.clone())
                .with_context(|| format!("district {} has no usable calendar", district.id))?;
            calendars.insert(district.id.clone(), calendar);
        }
        let (events, _) = broadcast::channel(1024);
        let (alerts, _) = broadcast::channel(4096);
        let registry = referral_core::metrics::Metrics::new("gateway");
        let gateway_metrics =
            metrics::GatewayMetrics::register(&registry, db.clone(), config.clock.clone());
        let policy = policy::PolicyEngine::load(config.policy_dir.as_deref())
            .context("the need-to-know policy does not load")?;
        let views = views::ViewFilter::new().context("the field classes do not load")?;
        let writer_thread = group_commit::WriterThread::start("gateway-writer")
            .context("cannot start the gateway's writer thread")?;
        // Connected from the writers' thread, so that its sockets are that runtime's.
        let writer_db = writer_thread
            .handle()
            .spawn({
                let storage = config.storage.clone();
                async move { Database::connect(&storage, "gateway").await }
            })
            .await
            .context("the writer thread stopped")??;
        let shared = Arc::new_cyclic(|owner| Shared {
            writer_db,
            ledger_writer: group_commit::Batcher::spawn(
                writer_thread.handle(),
                owner.clone(),
                api::LEDGER_BATCH,
                api::write_ledger_batch,
            ),
            db,
            clock: config.clock,
            directory: RwLock::new(Arc::new(directory)),
            wake: Notify::new(),
            events,
            tls: config.tls,
            delivery: config.delivery,
            worker_id: uuid::Uuid::new_v4().to_string(),
            deadlines: config.deadlines,
            calendars,
            engine_wake: Notify::new(),
            alerts,
            local_alerts: deadlines::feed::LocalAlerts::default(),
            feed_position: watch::Sender::new(0),
            sealer: config.payload_sealer,
            payload_retention: config.payload_retention,
            policy,
            views,
            child_link_secret: config.child_link_secret,
            metrics: registry,
            gateway_metrics,
            agency_channels: std::sync::Mutex::new(HashMap::new()),
            _writer_thread: writer_thread,
        });
        Ok(Self {
            listener,
            shared,
            run_deadline_engine: config.run_deadline_engine,
            run_delivery_worker: config.run_delivery_worker,
            limits: config.limits,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The gateway's metrics, for the admin port.
    pub fn metrics(&self) -> referral_core::metrics::Metrics {
        self.shared.metrics.clone()
    }

    /// The gateway's store, for the admin port's readiness check.
    pub fn database(&self) -> referral_core::db::Database {
        self.shared.db.clone()
    }

    pub fn handle(&self) -> GatewayHandle {
        GatewayHandle {
            shared: self.shared.clone(),
        }
    }

    /// Serves the APIs and runs the delivery worker and the deadline engine until `shutdown` is
    /// cancelled.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // Aborted if this future is dropped (a crash in tests): no orphaned task lives on.
        let mut background = Vec::new();
        if self.run_delivery_worker {
            background.push(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
                delivery::run(self.shared.clone(), shutdown.clone()),
            )));
        }
        if self.run_deadline_engine {
            background.push(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
                deadlines::run(self.shared.clone(), shutdown.clone()),
            )));
        }
        // Whether or not this replica's engine runs, its watchers see every replica's alerts.
        background.push(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
            deadlines::feed::run(self.shared.clone(), shutdown.clone()),
        )));
        let (health, reflection) =
            server::health_and_reflection(&["referral.v1.Gateway", "referral.v1.Deadlines"])
                .await?;
        let mut builder = server::builder(
            tls::server_tls(&self.shared.tls),
            &self.limits,
            self.shared.metrics.clone(),
        )?;
        let router = builder
            .add_service(health)
            .add_service(reflection)
            .add_service(tonic::service::interceptor::InterceptedService::new(
                GatewayServer::new(api::GatewayApi {
                    shared: self.shared.clone(),
                })
                .max_decoding_message_size(server::MAX_MESSAGE_BYTES),
                api::authenticate(self.shared.clone()),
            ))
            .add_service(tonic::service::interceptor::InterceptedService::new(
                DeadlinesServer::new(deadlines::DeadlinesApi {
                    shared: self.shared.clone(),
                    shutdown: shutdown.clone(),
                })
                .max_decoding_message_size(server::MAX_MESSAGE_BYTES),
                api::authenticate(self.shared.clone()),
            ));
        let served = server::serve(router, self.listener, shutdown.clone()).await;
        shutdown.cancel();
        for task in background {
            let _ = task.await;
        }
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

    /// The gateway's metrics (what its admin port serves).
    pub fn metrics(&self) -> referral_core::metrics::Metrics {
        self.shared.metrics.clone()
    }

    /// Deadline alerts from now on, as `WatchDeadlines` streams them.
    pub fn subscribe_alerts(&self) -> broadcast::Receiver<DeadlineAlert> {
        self.shared.alerts.subscribe()
    }

    /// Waits until this replica's alert feed has read the ledger up to `seq`: every alert
    /// committed up to there has then been broadcast to this replica's watchers, by its own
    /// sweep or by the feed (tests: nothing later can be a late copy).
    pub async fn alert_feed_reached(&self, seq: i64) {
        let mut position = self.shared.feed_position.subscribe();
        // The sender lives as long as the gateway's shared state, which `self` holds.
        let _ = position.wait_for(|at| *at >= seq).await;
    }

    /// Runs the deadline engine to completion for the clock's current instant, in the caller's
    /// task: applies every ledger entry not yet applied, then raises every transition whose
    /// instant has come (the same code the background task runs; safe beside it and beside
    /// other replicas).
    pub async fn settle(&self) -> anyhow::Result<SettleReport> {
        Ok(deadlines::settle(&self.shared).await?)
    }

    /// `ListDeadlines` as the certificate of `agency_id` would call it (tests, benchmarks).
    pub async fn list_deadlines_as(
        &self,
        agency_id: &str,
        req: ListDeadlinesRequest,
    ) -> Result<ListDeadlinesResponse, tonic::Status> {
        let caller = self.agency(agency_id)?;
        Ok(deadlines::list_deadlines(&self.shared, &caller, req).await?)
    }

    /// `ListOverdue` as the certificate of `agency_id` would call it (tests, benchmarks).
    pub async fn list_overdue_as(
        &self,
        agency_id: &str,
        req: ListOverdueRequest,
    ) -> Result<ListDeadlinesResponse, tonic::Status> {
        let caller = self.agency(agency_id)?;
        Ok(deadlines::list_overdue(&self.shared, &caller, req).await?)
    }

    /// `DeadlineOverview` as the certificate of `agency_id` would call it.
    pub async fn deadline_overview_as(
        &self,
        agency_id: &str,
    ) -> Result<DeadlineOverviewResponse, tonic::Status> {
        let caller = self.agency(agency_id)?;
        Ok(deadlines::overview(&self.shared, &caller).await?)
    }

    fn agency(
        &self,
        agency_id: &str,
    ) -> Result<referral_core::directory::AgencyEntry, tonic::Status> {
        self.shared
            .directory()
            .agency(agency_id)
            .cloned()
            .ok_or_else(|| tonic::Status::unauthenticated("no such agency"))
    }

    /// The envelope the gateway holds for a message, its payload opened (without payload once
    /// removed after delivery). `None` for an unknown message.
    pub async fn stored_envelope(
        &self,
        message_id: &str,
    ) -> anyhow::Result<Option<referral_proto::v1::Envelope>> {
        let Some(row) = store::message_by_id(self.shared.db.pool(), message_id).await? else {
            return Ok(None);
        };
        Ok(Some(store::open_envelope(&self.shared.sealer, &row)?))
    }

    /// The envelopes of every message of one form kind the gateway holds, payloads opened,
    /// oldest first.
    pub async fn stored_envelopes_of_kind(
        &self,
        form_kind: referral_proto::v1::FormKind,
    ) -> anyhow::Result<Vec<referral_proto::v1::Envelope>> {
        let rows = store::messages_of_kind(self.shared.db.pool(), form_kind).await?;
        rows.iter()
            .map(|row| Ok(store::open_envelope(&self.shared.sealer, row)?))
            .collect()
    }

    /// The keyring this gateway seals and opens payloads with.
    pub fn payload_sealer(&self) -> &PayloadSealer {
        &self.shared.sealer
    }

    /// Removes, now, the payloads whose retention after delivery has passed and that the
    /// deadline engine has read (the step the delivery worker runs); returns how many.
    pub async fn purge_payloads(&self) -> anyhow::Result<u64> {
        Ok(delivery::purge_payloads(&self.shared).await?)
    }

    /// Verifies the ledger's hash chain.
    pub async fn verify_ledger(&self) -> Result<ledger::Verified, ledger::VerifyError> {
        ledger::verify(self.shared.db.pool()).await
    }
}
