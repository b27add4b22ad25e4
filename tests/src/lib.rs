//! The test harness: a whole district (gateway and agency services) started in-process on port 0
//! with real mTLS, a fresh SQLite directory or a fresh PostgreSQL database per test, a manual
//! clock the test drives, and clients that talk to the components exactly as real ones do.

#![forbid(unsafe_code)]

pub mod capture;
pub mod load;
pub mod postgres;
pub mod process;
pub mod samples;
pub mod simulation;

use std::{collections::HashMap, net::SocketAddr, sync::Mutex, time::Duration};

use anyhow::Context as _;
use jiff::{SignedDuration, Timestamp};
use referral_agency::{AgencyConfig, AgencyService};
use referral_core::{
    Clock,
    auth::{DEV_ISSUER, DevIssuer, TokenVerifier},
    config::DeliverySettings,
    db::StorageConfig,
    directory::{Directory, parse_role},
    pki::{CertificateAuthority, ComponentIdentity, TlsMaterial},
    tls,
};
use referral_gateway::{
    DeliveryEvent, Gateway, GatewayConfig, GatewayHandle, KeySources, PayloadSealer, sealing,
};
use referral_proto::v1::{
    AgencyKind, agency_inbox_client::AgencyInboxClient, agency_staff_client::AgencyStaffClient,
    gateway_client::GatewayClient,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

pub use referral_core::telemetry::init_for_tests;

/// The demo district, with its endpoints rewritten to free ports.
const DEMO_DISTRICT: &str = include_str!("../../deploy/demo-district.toml");

/// What a test hub runs.
#[derive(Debug, Clone, Copy)]
pub struct HubOptions {
    /// Start every agency service of the district (otherwise only the gateway runs).
    pub start_agencies: bool,
    /// Run the gateway's delivery worker.
    pub run_delivery_worker: bool,
    /// Run the deadline engine in the background (otherwise only `GatewayHandle::settle`
    /// drives it, so that a test decides exactly when it looks at the clock).
    pub run_deadline_engine: bool,
    /// Every component's server limits (the defaults unless a test sets small ones).
    pub limits: referral_core::limits::ServerLimits,
    /// Run on the system clock instead of the manual one (tests of real outages, where retries
    /// must happen on their own in real time).
    pub real_clock: bool,
    /// The gateway's delivery retry settings.
    pub delivery: DeliverySettings,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            start_agencies: true,
            run_delivery_worker: true,
            run_deadline_engine: true,
            limits: referral_core::limits::ServerLimits::default(),
            real_clock: false,
            delivery: DeliverySettings {
                initial_backoff_ms: 1_000,
                max_backoff_ms: 60_000,
                attempt_timeout_ms: 10_000,
            },
        }
    }
}

/// Which store the components use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs a test body once per back end: `both_backends!(name);` expects `async fn name(Backend)`.
/// The PostgreSQL variant is skipped (loudly) when no server binaries exist, unless
/// `REQUIRE_POSTGRES=1`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $crate::init_for_tests();
                super::$name($crate::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $crate::init_for_tests();
                if $crate::postgres::available() {
                    super::$name($crate::Backend::Postgres).await;
                }
            }
        }
    )*};
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    /// A gateway runs on a runtime of its own; a crash drops that runtime, which kills every
    /// task it runs at once (server, open connections, workers), as a killed process would.
    crash: Option<tokio::sync::oneshot::Sender<()>>,
}

/// A running district.
pub struct TestHub {
    pub backend: Backend,
    pub clock: Clock,
    pub ca: CertificateAuthority,
    pub directory: Directory,
    pub storage: StorageConfig,
    gateway: Mutex<GatewayHandle>,
    pub gateway_port: u16,
    /// The payload keyring of this hub's gateways, loaded from a fresh key file in the hub's
    /// directory (`payload_key_file`): restarts and replicas share it, as they share the store.
    pub payload_sealer: PayloadSealer,
    pub payload_key_file: std::path::PathBuf,
    issuer: DevIssuer,
    data_dir: tempfile::TempDir,
    gateway_run: Mutex<Option<Running>>,
    agencies: Mutex<HashMap<String, Running>>,
    replicas: Mutex<Vec<(GatewayHandle, Running)>>,
    options: HubOptions,
}

/// Ports this process has handed out: each goes to one component for the life of the process.
static PORTS_HANDED_OUT: Mutex<std::collections::BTreeSet<u16>> =
    Mutex::new(std::collections::BTreeSet::new());

/// The kernel's range of ephemeral ports (what `bind(0)` and outgoing connections use).
fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((parts.next()??, parts.next()??))
        })
        .unwrap_or((32_768, 60_999))
}

/// A free port on loopback, never the same twice in this process. The component binds it later
/// (and binds it again when it restarts), so it is taken below the kernel's ephemeral range where
/// possible: a port from `bind(0)` could meanwhile become another test's port or the source port
/// of an outgoing connection, and the component would find it in use.
fn free_port() -> u16 {
    use std::hash::{BuildHasher as _, RandomState};
    let (ephemeral_low, ephemeral_high) = ephemeral_ports();
    let random = RandomState::new();
    let mut handed_out = PORTS_HANDED_OUT.lock().unwrap();
    // Below the ephemeral range, or above it when that leaves more room.
    let (low, high) = if ephemeral_low.saturating_sub(10_000) >= 65_535 - ephemeral_high {
        (10_000, ephemeral_low.saturating_sub(1))
    } else {
        (ephemeral_high.saturating_add(1), 65_535)
    };
    if low + 1_000 < high {
        for attempt in 0_u64..1_000 {
            let port = low + (random.hash_one(attempt) % u64::from(high - low)) as u16;
            if !handed_out.contains(&port)
                && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            {
                handed_out.insert(port);
                return port;
            }
        }
    }
    // No room outside the ephemeral range: let the kernel pick.
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// The moment every test starts at: a Friday morning in Almaty.
pub fn start_instant() -> Timestamp {
    "2026-11-20T04:30:00Z".parse().expect("a valid instant")
}

/// The district's time zone.
pub fn almaty() -> jiff::tz::TimeZone {
    jiff::tz::TimeZone::get("Asia/Almaty").expect("the zone database knows Asia/Almaty")
}

/// The fields an `INVALID_ARGUMENT` names, in its order.
pub fn fields(status: &tonic::Status) -> Vec<String> {
    referral_core::error::field_violations(status)
        .into_iter()
        .map(|v| v.field)
        .collect()
}

/// Asserts that `status` is `INVALID_ARGUMENT` naming (at least) each of `names`.
pub fn assert_named(status: &tonic::Status, names: &[&str]) {
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let named = fields(status);
    for name in names {
        assert!(named.iter().any(|f| f == name), "{name} not in {named:?}");
    }
}

/// Every deadline state, as a `ListDeadlinesRequest` filter.
pub fn all_deadline_states() -> Vec<i32> {
    use referral_proto::v1::DeadlineState as S;
    [
        S::Pending,
        S::Warned,
        S::Due,
        S::Overdue,
        S::Escalated,
        S::Met,
        S::Cancelled,
    ]
    .into_iter()
    .map(|s| s as i32)
    .collect()
}

impl TestHub {
    /// Starts the gateway and every agency of the demo district.
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, HubOptions::default()).await
    }

    /// Starts a hub with some parts left out.
    pub async fn start_with(backend: Backend, options: HubOptions) -> Self {
        Self::try_start(backend, options)
            .await
            .expect("the test hub starts")
    }

    async fn try_start(backend: Backend, options: HubOptions) -> anyhow::Result<Self> {
        tls::install_crypto_provider();
        let data_dir = tempfile::tempdir()?;
        let storage = StorageConfig {
            data_dir: data_dir.path().join("data"),
            database_url: match backend {
                Backend::Sqlite => None,
                Backend::Postgres => Some(postgres::fresh_database().await?.into()),
            },
        };
        let mut directory = Directory::parse(DEMO_DISTRICT)?;
        for agency in &mut directory.agencies {
            agency.endpoint = format!("https://127.0.0.1:{}", free_port());
        }
        let ca = CertificateAuthority::generate("referral-hub test CA")?;
        let ids: Vec<&str> = directory.agencies.iter().map(|a| a.id.as_str()).collect();
        let issuer = DevIssuer::ensure(&data_dir.path().join("issuer"), &ids)?;
        let clock = if options.real_clock {
            Clock::system()
        } else {
            Clock::manual(start_instant())
        };
        // A fresh payload key for this hub, through the key file path a deployment uses.
        let payload_key_file = data_dir.path().join("payload-keys");
        sealing::generate_key_file(&payload_key_file, "test-1")?;
        let payload_sealer = PayloadSealer::load(KeySources {
            file: Some(&payload_key_file),
            ..KeySources::default()
        })?;
        let gateway_port = free_port();
        let (gateway, gateway_run) = launch_gateway(
            &ca,
            &storage,
            &directory,
            &clock,
            &payload_sealer,
            gateway_port,
            options,
        )
        .await?;
        let hub = Self {
            backend,
            clock,
            ca,
            directory,
            storage,
            gateway: Mutex::new(gateway),
            gateway_port,
            payload_sealer,
            payload_key_file,
            issuer,
            data_dir,
            gateway_run: Mutex::new(Some(gateway_run)),
            agencies: Mutex::new(HashMap::new()),
            replicas: Mutex::new(Vec::new()),
            options,
        };
        let ids: Vec<String> = hub
            .directory
            .agencies
            .iter()
            .map(|a| a.id.clone())
            .collect();
        if options.start_agencies {
            for id in ids {
                hub.start_agency(&id).await?;
            }
        }
        Ok(hub)
    }

    /// The running gateway.
    pub fn gateway(&self) -> GatewayHandle {
        self.gateway.lock().unwrap().clone()
    }

    /// Kills the gateway without letting it finish anything (its task is aborted, as a crash
    /// would), then starts a new one on the same port and store.
    pub async fn crash_and_restart_gateway(&self) -> anyhow::Result<()> {
        let running = self.gateway_run.lock().unwrap().take();
        if let Some(mut running) = running {
            if let Some(crash) = running.crash.take() {
                let _ = crash.send(());
            }
            let _ = running.task.await;
        }
        self.start_gateway().await
    }

    /// Stops the gateway gracefully (its port closes; its store stays).
    pub async fn stop_gateway(&self) {
        let running = self.gateway_run.lock().unwrap().take();
        if let Some(running) = running {
            running.stop.cancel();
            running
                .task
                .await
                .expect("the gateway task does not panic")
                .expect("the gateway stops cleanly");
        }
    }

    /// Starts the gateway again on its port, over the same store.
    pub async fn start_gateway(&self) -> anyhow::Result<()> {
        let (handle, running) = launch_gateway(
            &self.ca,
            &self.storage,
            &self.directory,
            &self.clock,
            &self.payload_sealer,
            self.gateway_port,
            self.options,
        )
        .await?;
        *self.gateway.lock().unwrap() = handle;
        *self.gateway_run.lock().unwrap() = Some(running);
        Ok(())
    }

    /// Starts another gateway replica on its own port over the same store (as a second pod over
    /// one PostgreSQL database would run). It stops with the hub.
    pub async fn start_replica_gateway(&self) -> anyhow::Result<GatewayHandle> {
        let (handle, running) = launch_gateway(
            &self.ca,
            &self.storage,
            &self.directory,
            &self.clock,
            &self.payload_sealer,
            free_port(),
            self.options,
        )
        .await?;
        self.replicas
            .lock()
            .unwrap()
            .push((handle.clone(), running));
        Ok(handle)
    }

    /// Counts the rows of one table in an agency's own store (to prove nothing was kept).
    pub async fn agency_count(&self, agency_id: &str, table: &str) -> i64 {
        let db = referral_core::db::Database::connect(
            &self.storage,
            &referral_agency::component_name(agency_id),
        )
        .await
        .expect("the agency store opens");
        let count =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(db.pool())
                .await
                .expect("the table exists");
        db.close().await;
        count
    }

    /// One text value from an agency's own store: the first column of the first row `query`
    /// returns with `bind` as `$1`, if any.
    pub async fn agency_text(&self, agency_id: &str, query: &str, bind: &str) -> Option<String> {
        let db = referral_core::db::Database::connect(
            &self.storage,
            &referral_agency::component_name(agency_id),
        )
        .await
        .expect("the agency store opens");
        let value: Option<Option<String>> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(query.to_owned()))
                .bind(bind.to_owned())
                .fetch_optional(db.pool())
                .await
                .expect("the query runs");
        db.close().await;
        value.flatten()
    }

    /// The configuration `start_agency` starts `agency_id`'s service with: the port of its
    /// directory entry, its own certificate, this hub's store, gateway, issuer and clock.
    pub fn agency_config(&self, agency_id: &str) -> anyhow::Result<AgencyConfig> {
        let entry = self
            .directory
            .agency(agency_id)
            .with_context(|| format!("no agency {agency_id}"))?;
        let port: u16 = entry
            .endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("endpoint port")?;
        let identity = ComponentIdentity::agency(agency_id)?;
        Ok(AgencyConfig {
            agency_id: agency_id.to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            tls: TlsMaterial::new(&self.ca, &identity)?,
            storage: self.storage.clone(),
            gateway_endpoint: format!("https://127.0.0.1:{}", self.gateway_port),
            directory: self.directory.clone(),
            token_verifier: TokenVerifier::from_jwks_file(
                DEV_ISSUER,
                agency_id,
                &self.issuer.jwks_path(agency_id),
                self.clock.clone(),
            )?,
            clock: self.clock.clone(),
            limits: self.options.limits,
        })
    }

    /// Starts (or restarts, on the same port) one agency's service.
    pub async fn start_agency(&self, agency_id: &str) -> anyhow::Result<()> {
        let config = self.agency_config(agency_id)?;
        let entry = self
            .directory
            .agency(agency_id)
            .with_context(|| format!("no agency {agency_id}"))?;
        let service: AgencyService = match entry.kind() {
            AgencyKind::School => referral_school::build(config).await?,
            AgencyKind::Residential => referral_residential::build(config).await?,
            AgencyKind::Commission => referral_commission::build(config).await?,
            AgencyKind::Police => referral_police::build(config).await?,
            AgencyKind::Health => referral_health::build(config).await?,
            AgencyKind::Ngo => referral_ngo::build(config).await?,
            AgencyKind::Unspecified => anyhow::bail!("agency without a kind"),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(service.run_until_stopped(stop.clone()));
        self.agencies.lock().unwrap().insert(
            agency_id.to_owned(),
            Running {
                stop,
                task,
                crash: None,
            },
        );
        Ok(())
    }

    /// Stops one agency's service and waits until it has let go of its port.
    pub async fn stop_agency(&self, agency_id: &str) {
        let running = self.agencies.lock().unwrap().remove(agency_id);
        if let Some(running) = running {
            running.stop.cancel();
            running
                .task
                .await
                .expect("the agency task does not panic")
                .expect("the agency stops cleanly");
        }
    }

    /// A signed staff token for a user of the directory.
    pub fn token(&self, agency_id: &str, user_id: &str) -> String {
        let user = self
            .directory
            .user(agency_id, user_id)
            .unwrap_or_else(|| panic!("no user {user_id} in {agency_id}"));
        self.issuer
            .mint(
                agency_id,
                user_id,
                parse_role(&user.role).expect("a known role"),
                &user.full_name,
                SignedDuration::from_hours(8),
                self.clock.now(),
            )
            .expect("a token")
    }

    fn endpoint(&self, agency_id: &str) -> String {
        self.directory
            .agency(agency_id)
            .expect("a known agency")
            .endpoint
            .clone()
    }

    /// Submits a K from school 1's director, has the secretary open a case on it with curator-1,
    /// waits for both messages to be delivered, and returns the case reference.
    pub async fn open_case(&self, key: &str) -> String {
        use referral_proto::v1::{
            DecideHelpRequestRequest, OpenCase, SubmitHelpRequestRequest,
            decide_help_request_request, help_request_decision,
        };
        let today = self
            .clock
            .now()
            .to_zoned(jiff::tz::TimeZone::get("Asia/Almaty").expect("Almaty"))
            .date();
        let director = self.staff("school-1", "director").await;
        let k_id = director
            .client
            .clone()
            .submit_help_request(director.req(SubmitHelpRequestRequest {
                idempotency_key: format!("{key}-help-request"),
                recipient_agency_id: String::new(),
                help_request: Some(referral_core::validate::sample_help_request(today)),
            }))
            .await
            .expect("K submitted")
            .into_inner()
            .message_id;
        self.delivered(&k_id).await;
        let secretary = self.staff("commission", "secretary").await;
        let decision = secretary
            .client
            .clone()
            .decide_help_request(secretary.req(DecideHelpRequestRequest {
                message_id: k_id,
                idempotency_key: format!("{key}-decision"),
                outcome: Some(decide_help_request_request::Outcome::OpenCase(OpenCase {
                    curator_user_id: "curator-1".into(),
                })),
            }))
            .await
            .expect("case opened")
            .into_inner();
        self.delivered(&decision.decision_message_id).await;
        match decision.decision.and_then(|d| d.outcome) {
            Some(help_request_decision::Outcome::CaseOpened(c)) => c.case_reference,
            other => panic!("expected a case, got {other:?}"),
        }
    }

    /// A staff member's client of their agency's service (TLS, bearer token).
    pub async fn staff(&self, agency_id: &str, user_id: &str) -> StaffClient {
        let identity = ComponentIdentity::Agency(agency_id.to_owned());
        let channel = Endpoint::from_shared(self.endpoint(agency_id))
            .expect("endpoint")
            .tls_config(tls::client_tls_without_identity(
                self.ca.cert_pem(),
                &identity,
            ))
            .expect("tls")
            .connect()
            .await
            .expect("the agency service accepts connections");
        StaffClient {
            client: AgencyStaffClient::new(channel.clone()),
            channel,
            token: self.token(agency_id, user_id),
        }
    }

    /// A gateway client presenting `as_agency`'s certificate.
    pub async fn gateway_client_as(&self, as_agency: &str) -> GatewayClient<Channel> {
        let material =
            TlsMaterial::new(&self.ca, &ComponentIdentity::Agency(as_agency.to_owned())).unwrap();
        let channel = Endpoint::from_shared(format!("https://127.0.0.1:{}", self.gateway_port))
            .unwrap()
            .tls_config(tls::client_tls(&material, &ComponentIdentity::Gateway))
            .unwrap()
            .connect()
            .await
            .expect("the gateway accepts connections");
        GatewayClient::new(channel)
    }

    /// An inbox client of `agency_id` presenting `identity`'s certificate from `ca`.
    pub async fn inbox_client(
        &self,
        agency_id: &str,
        ca: &CertificateAuthority,
        identity: &ComponentIdentity,
    ) -> Result<AgencyInboxClient<Channel>, tonic::transport::Error> {
        let material = TlsMaterial::new(ca, identity).unwrap();
        let mut config =
            tls::client_tls(&material, &ComponentIdentity::Agency(agency_id.to_owned()));
        // Trust this hub's CA for the server even when the client cert comes from another CA.
        config = config.ca_certificate(tonic::transport::Certificate::from_pem(self.ca.cert_pem()));
        let channel = Endpoint::from_shared(self.endpoint(agency_id))
            .unwrap()
            .tls_config(config)
            .unwrap()
            .connect()
            .await?;
        Ok(AgencyInboxClient::new(channel))
    }

    /// Delivery events of every running gateway (the main one and its replicas), merged, and
    /// every worker woken up.
    fn all_events(&self) -> tokio::sync::mpsc::UnboundedReceiver<DeliveryEvent> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut gateways = vec![self.gateway()];
        gateways.extend(self.replicas.lock().unwrap().iter().map(|(h, _)| h.clone()));
        for gateway in gateways {
            let mut events = gateway.subscribe();
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    match events.recv().await {
                        Ok(event) => {
                            if tx.send(event).is_err() {
                                return;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => return,
                    }
                }
            });
            gateway.wake_worker();
        }
        rx
    }

    /// Waits until a gateway has recorded the delivery of `message_id`.
    pub async fn delivered(&self, message_id: &str) {
        let mut events = self.all_events();
        let wait = async {
            loop {
                if self.gateway_state(message_id).await.as_deref() != Some("queued") {
                    return;
                }
                if events.recv().await.is_none() {
                    panic!("every gateway stopped");
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .unwrap_or_else(|_| panic!("message {message_id} was not delivered within 60s"));
    }

    /// Waits until the gateway has recorded at least `attempts` failed attempts for a message.
    pub async fn failed_attempts(&self, message_id: &str, attempts: i64) {
        let mut events = self.all_events();
        let wait = async {
            loop {
                if self.attempts(message_id).await >= attempts {
                    return;
                }
                match events.recv().await {
                    Some(DeliveryEvent::Delivered { message_id: m }) if m == message_id => {
                        panic!("delivered while the recipient should be down")
                    }
                    Some(_) => {}
                    None => panic!("every gateway stopped"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .expect("the gateway attempts delivery");
    }

    /// The gateway's stored delivery state of a message (`queued`, `delivered`, `answered`).
    pub async fn gateway_state(&self, message_id: &str) -> Option<String> {
        sqlx::query_scalar("SELECT state FROM messages WHERE message_id = $1")
            .bind(message_id)
            .fetch_optional(self.gateway().database().pool())
            .await
            .unwrap()
    }

    /// The envelope the gateway stored (and delivers) for a message, its sealed payload opened
    /// (without payload once removed after delivery).
    pub async fn gateway_envelope(&self, message_id: &str) -> Option<referral_proto::v1::Envelope> {
        self.gateway()
            .stored_envelope(message_id)
            .await
            .expect("a stored envelope opens")
    }

    /// Every message the gateway holds for an agency, oldest first.
    pub async fn messages_to(&self, agency_id: &str) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT message_id FROM messages WHERE recipient_agency_id = $1 ORDER BY created_at",
        )
        .bind(agency_id)
        .fetch_all(self.gateway().database().pool())
        .await
        .unwrap()
    }

    /// Today in the district, by the manual clock.
    pub fn today(&self) -> jiff::civil::Date {
        self.clock.now().to_zoned(almaty()).date()
    }

    /// Runs the gateway's engine for what is due now and delivers what it raised.
    pub async fn settle(&self) {
        self.gateway().settle().await.expect("the gateway settles");
        self.deliver_everything().await;
    }

    /// Waits until every message the gateway has acknowledged so far is delivered.
    pub async fn deliver_everything(&self) {
        let queued: Vec<String> =
            sqlx::query_scalar("SELECT message_id FROM messages WHERE state = 'queued'")
                .fetch_all(self.gateway().database().pool())
                .await
                .unwrap();
        for id in queued {
            self.delivered(&id).await;
        }
    }

    /// The open deadlines of a case, as (kind, cycle), from the gateway's engine.
    pub async fn open_deadlines(&self, case_reference: &str) -> Vec<(String, i64)> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT kind, cycle FROM deadlines WHERE case_reference = $1 \
             AND state NOT IN ('DEADLINE_STATE_MET', 'DEADLINE_STATE_CANCELLED') ORDER BY kind, cycle",
        )
        .bind(case_reference)
        .fetch_all(self.gateway().database().pool())
        .await
        .unwrap();
        rows
    }

    pub async fn attempts(&self, message_id: &str) -> i64 {
        sqlx::query_scalar("SELECT delivery_attempts FROM messages WHERE message_id = $1")
            .bind(message_id)
            .fetch_one(self.gateway().database().pool())
            .await
            .unwrap()
    }

    /// Counts the rows of one of the gateway's tables.
    pub async fn gateway_count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(self.gateway().database().pool())
            .await
            .unwrap()
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self.data_dir.path()
    }

    /// Stops every component and waits for each to finish.
    pub async fn shutdown(self) {
        let ids: Vec<String> = self.agencies.lock().unwrap().keys().cloned().collect();
        for id in ids {
            self.stop_agency(&id).await;
        }
        let replicas: Vec<(GatewayHandle, Running)> =
            self.replicas.lock().unwrap().drain(..).collect();
        for (_, running) in replicas {
            running.stop.cancel();
            running.task.await.unwrap().unwrap();
        }
        let gateway = self.gateway_run.lock().unwrap().take();
        if let Some(running) = gateway {
            running.stop.cancel();
            running.task.await.unwrap().unwrap();
        }
    }
}

/// Builds and starts a gateway on `port`.
async fn launch_gateway(
    ca: &CertificateAuthority,
    storage: &StorageConfig,
    directory: &Directory,
    clock: &Clock,
    payload_sealer: &PayloadSealer,
    port: u16,
    options: HubOptions,
) -> anyhow::Result<(GatewayHandle, Running)> {
    let mut config = GatewayConfig::new(
        SocketAddr::from(([127, 0, 0, 1], port)),
        TlsMaterial::new(ca, &ComponentIdentity::Gateway)?,
        storage.clone(),
        directory.clone(),
        options.delivery,
        clock.clone(),
    );
    config.run_delivery_worker = options.run_delivery_worker;
    config.run_deadline_engine = options.run_deadline_engine;
    config.limits = options.limits;
    config.payload_sealer = payload_sealer.clone();
    // One children's-pseudonym secret per hub (its store), the same for restarts and replicas.
    config.child_link_secret =
        <sha2::Sha256 as sha2::Digest>::digest(format!("child-link:{:?}", storage.data_dir))
            .to_vec();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (crash_tx, crash_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                let _ = done_tx.send(Err(e.into()));
                return;
            }
        };
        let result = runtime.block_on(async move {
            let gateway = match Gateway::build(config).await {
                Ok(gateway) => gateway,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Ok(());
                }
            };
            let _ = ready_tx.send(Ok(gateway.handle()));
            tokio::select! {
                result = gateway.run_until_stopped(stopped) => result,
                Ok(()) = crash_rx => Ok(()),
            }
        });
        runtime.shutdown_background();
        let _ = done_tx.send(result);
    });
    let handle = ready_rx
        .await
        .map_err(|_| anyhow::anyhow!("the gateway thread died while starting"))??;
    // Awaiting the thread through a channel (not a blocking join) lets a failed test's runtime
    // shut down without waiting for a gateway that is still running.
    let task = tokio::spawn(async move {
        done_rx
            .await
            .map_err(|_| anyhow::anyhow!("the gateway thread panicked"))?
    });
    Ok((
        handle,
        Running {
            stop,
            task,
            crash: Some(crash_tx),
        },
    ))
}

/// A staff member's authenticated client.
#[derive(Clone)]
pub struct StaffClient {
    pub client: AgencyStaffClient<Channel>,
    pub token: String,
    channel: Channel,
}

impl StaffClient {
    /// Submits a help request K; the gateway's message id, or the refusal.
    pub async fn submit_k(
        &self,
        idempotency_key: &str,
        recipient: &str,
        k: referral_proto::v1::HelpRequest,
    ) -> Result<String, tonic::Status> {
        self.client
            .clone()
            .submit_help_request(self.req(referral_proto::v1::SubmitHelpRequestRequest {
                idempotency_key: idempotency_key.into(),
                recipient_agency_id: recipient.into(),
                help_request: Some(k),
            }))
            .await
            .map(|r| r.into_inner().message_id)
    }

    /// The commission's decision on a K.
    pub async fn decide(
        &self,
        message_id: &str,
        idempotency_key: &str,
        outcome: referral_proto::v1::decide_help_request_request::Outcome,
    ) -> Result<referral_proto::v1::DecideHelpRequestResponse, tonic::Status> {
        self.client
            .clone()
            .decide_help_request(self.req(referral_proto::v1::DecideHelpRequestRequest {
                message_id: message_id.into(),
                idempotency_key: idempotency_key.into(),
                outcome: Some(outcome),
            }))
            .await
            .map(|r| r.into_inner())
    }

    /// The agency's inbox, every form kind.
    pub async fn inbox(&self) -> Vec<referral_proto::v1::InboxItem> {
        self.inbox_of(referral_proto::v1::FormKind::Unspecified)
            .await
    }

    /// The agency's inbox, one form kind.
    pub async fn inbox_of(
        &self,
        kind: referral_proto::v1::FormKind,
    ) -> Vec<referral_proto::v1::InboxItem> {
        self.client
            .clone()
            .list_inbox(self.req(referral_proto::v1::ListInboxRequest {
                form_kind: kind as i32,
                ..Default::default()
            }))
            .await
            .expect("the inbox lists")
            .into_inner()
            .items
    }

    /// What the agency sent.
    pub async fn sent(&self) -> Vec<referral_proto::v1::SentItem> {
        self.client
            .clone()
            .list_sent(self.req(referral_proto::v1::ListSentRequest::default()))
            .await
            .expect("the sent list lists")
            .into_inner()
            .items
    }

    /// Reads a case through the hub (`ReadSharedCase`), or the refusal.
    pub async fn read_shared(
        &self,
        case: &str,
        purpose: referral_proto::v1::PurposeOfUse,
    ) -> Result<referral_proto::v1::CaseView, tonic::Status> {
        self.client
            .clone()
            .read_shared_case(self.req(referral_proto::v1::ReadSharedCaseRequest {
                case_reference: case.into(),
                purpose_of_use: purpose as i32,
                reason: String::new(),
            }))
            .await
            .map(|r| r.into_inner())
    }

    /// The commission grants `agency` one section of a case until `expires` (commission staff).
    pub async fn grant(
        &self,
        case: &str,
        agency: &str,
        section: referral_proto::v1::Sensitivity,
        expires: jiff::Timestamp,
        reason: &str,
    ) -> Result<referral_proto::v1::DisclosureGrant, tonic::Status> {
        self.case_files()
            .grant_disclosure(self.req(referral_proto::v1::GrantDisclosureRequest {
                case_reference: case.into(),
                grantee_agency_id: agency.into(),
                section: section as i32,
                expires_at: Some(referral_core::time::to_proto(expires)),
                reason: reason.into(),
                ..Default::default()
            }))
            .await
            .map(|r| r.into_inner())
    }

    /// The first thousand entries of the disclosure history of a case's child (commission
    /// staff), or the refusal.
    pub async fn disclosures(
        &self,
        case: &str,
    ) -> Result<Vec<referral_proto::v1::DisclosureRecord>, tonic::Status> {
        self.case_files()
            .list_disclosures(self.req(referral_proto::v1::ListDisclosuresRequest {
                case_reference: case.into(),
                page_size: 1000,
                ..Default::default()
            }))
            .await
            .map(|r| r.into_inner().records)
    }

    /// Reads a case file (`GetCase`, no purpose of use: the curator's own case), or the refusal.
    pub async fn get_case(
        &self,
        case_reference: &str,
    ) -> Result<referral_proto::v1::CaseFile, tonic::Status> {
        self.case_files()
            .get_case(self.req(referral_proto::v1::GetCaseRequest {
                case_reference: case_reference.into(),
                ..Default::default()
            }))
            .await
            .map(|r| r.into_inner())
    }

    /// The version of a case file, as its curator reads it.
    pub async fn case_version(&self, case_reference: &str) -> u64 {
        self.get_case(case_reference)
            .await
            .expect("the case reads")
            .summary
            .expect("a case file has a summary")
            .version
    }

    /// The curator files the sample assessment L (medium risk) on `on` and then a support plan
    /// M of `rows` on the case; the case's version after M.
    pub async fn file_assessment_and_plan(
        &self,
        case_reference: &str,
        plan_key: &str,
        on: jiff::civil::Date,
        rows: Vec<referral_proto::v1::PlanAction>,
    ) -> u64 {
        use referral_proto::v1::{FileAssessmentRequest, FileSupportPlanRequest, RiskLevel};
        let version = self
            .case_files()
            .file_assessment(self.req(FileAssessmentRequest {
                case_reference: case_reference.into(),
                base_version: self.case_version(case_reference).await,
                assessment: Some(samples::sample_assessment(on)),
                risk_level: RiskLevel::Medium as i32,
            }))
            .await
            .expect("L filed")
            .into_inner()
            .version;
        self.case_files()
            .file_support_plan(self.req(FileSupportPlanRequest {
                case_reference: case_reference.into(),
                base_version: version,
                idempotency_key: plan_key.into(),
                plan: Some(samples::sample_plan(on, rows)),
                first_review_on: None,
            }))
            .await
            .expect("M filed")
            .into_inner()
            .version
    }

    /// The agency's deadlines in every state (of one case, or all with `case_reference` empty),
    /// as its staff list them.
    pub async fn all_deadlines(&self, case_reference: &str) -> Vec<referral_proto::v1::Deadline> {
        self.client
            .clone()
            .list_deadlines(self.req(referral_proto::v1::ListDeadlinesRequest {
                case_reference: case_reference.into(),
                states: all_deadline_states(),
                page_size: 500,
                ..Default::default()
            }))
            .await
            .expect("the deadlines list")
            .into_inner()
            .deadlines
    }

    /// The agency's deadlines about one subject (a concern, an incident, a service…), every state.
    pub async fn deadlines_about(&self, subject: &str) -> Vec<referral_proto::v1::Deadline> {
        let mut deadlines = self.all_deadlines("").await;
        deadlines.retain(|d| d.subject_reference == subject);
        deadlines
    }

    /// Every DEADLINE_ALERT in the agency's inbox, each opened, oldest first.
    pub async fn deadline_alerts(&self) -> Vec<referral_proto::v1::DeadlineAlert> {
        use referral_proto::v1::{FormKind, GetMessageRequest, payload};
        let mut alerts = Vec::new();
        for item in self.inbox_of(FormKind::DeadlineAlert).await {
            let form = self
                .client
                .clone()
                .get_message(self.req(GetMessageRequest {
                    message_id: item.message_id,
                }))
                .await
                .expect("the alert opens")
                .into_inner()
                .envelope
                .and_then(|e| e.payload)
                .and_then(|p| p.form);
            let Some(payload::Form::DeadlineAlert(alert)) = form else {
                panic!("a DEADLINE_ALERT carries an alert");
            };
            alerts.push(alert);
        }
        alerts
    }

    /// The DEADLINE_ALERTs in the agency's inbox about `subject`, each opened, oldest first.
    pub async fn alerts_about(&self, subject: &str) -> Vec<referral_proto::v1::DeadlineAlert> {
        let mut alerts = self.deadline_alerts().await;
        alerts.retain(|alert| {
            alert
                .deadline
                .as_ref()
                .is_some_and(|d| d.subject_reference == subject)
        });
        alerts
    }

    /// The same connection, calling with another bearer token.
    pub fn with_token(&self, token: impl Into<String>) -> StaffClient {
        StaffClient {
            client: self.client.clone(),
            token: token.into(),
            channel: self.channel.clone(),
        }
    }

    /// The commission's case-file API on the same connection (commission staff only).
    pub fn case_files(&self) -> referral_proto::v1::case_files_client::CaseFilesClient<Channel> {
        referral_proto::v1::case_files_client::CaseFilesClient::new(self.channel.clone())
    }

    /// The incident reports D and summary E of a school or residential institution on the same
    /// connection (that agency's staff only).
    pub fn school_incidents(
        &self,
    ) -> referral_proto::v1::school_incidents_client::SchoolIncidentsClient<Channel> {
        referral_proto::v1::school_incidents_client::SchoolIncidentsClient::new(
            self.channel.clone(),
        )
    }

    /// A school's safeguarding API (lead's absences, concerns, allegations against staff) on the
    /// same connection (that school's staff only).
    pub fn safeguarding(
        &self,
    ) -> referral_proto::v1::safeguarding_client::SafeguardingClient<Channel> {
        referral_proto::v1::safeguarding_client::SafeguardingClient::new(self.channel.clone())
    }

    /// The police's investigations API on the same connection (police staff only).
    pub fn investigations(
        &self,
    ) -> referral_proto::v1::investigations_client::InvestigationsClient<Channel> {
        referral_proto::v1::investigations_client::InvestigationsClient::new(self.channel.clone())
    }

    /// A health facility's notices API on the same connection (health staff only).
    pub fn health_notices(
        &self,
    ) -> referral_proto::v1::health_notices_client::HealthNoticesClient<Channel> {
        referral_proto::v1::health_notices_client::HealthNoticesClient::new(self.channel.clone())
    }

    /// A school's (or residential institution's) referrals of pupils to NGOs and its log J on
    /// the same connection (that agency's staff only).
    pub fn school_referrals(
        &self,
    ) -> referral_proto::v1::school_referrals_client::SchoolReferralsClient<Channel> {
        referral_proto::v1::school_referrals_client::SchoolReferralsClient::new(
            self.channel.clone(),
        )
    }

    /// An NGO's services on the same connection (its case managers only).
    pub fn ngo_services(
        &self,
    ) -> referral_proto::v1::ngo_services_client::NgoServicesClient<Channel> {
        referral_proto::v1::ngo_services_client::NgoServicesClient::new(self.channel.clone())
    }

    /// A residential institution's incident work and protection instructions on the same
    /// connection (that institution's staff only).
    pub fn residential(
        &self,
    ) -> referral_proto::v1::residential_incidents_client::ResidentialIncidentsClient<Channel> {
        referral_proto::v1::residential_incidents_client::ResidentialIncidentsClient::new(
            self.channel.clone(),
        )
    }

    /// The commission's protection instructions on the same connection (commission staff only).
    pub fn protection_instructions(
        &self,
    ) -> referral_proto::v1::protection_instructions_client::ProtectionInstructionsClient<Channel>
    {
        referral_proto::v1::protection_instructions_client::ProtectionInstructionsClient::new(
            self.channel.clone(),
        )
    }

    /// Wraps a message in a request carrying the bearer token.
    pub fn req<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.token)
                .parse()
                .expect("ascii token"),
        );
        req
    }
}

/// An envelope carrying a K, as an agency service would build it (for calls straight to the
/// gateway that bypass the agency service).
pub fn envelope(
    acting_agency: &str,
    user_id: &str,
    role: referral_proto::v1::Role,
    recipient: &str,
    idempotency_key: &str,
    k: referral_proto::v1::HelpRequest,
) -> referral_proto::v1::Envelope {
    use referral_proto::v1::{
        ActingUser, ConfidentialityLabel, Envelope, FormKind, Payload, PurposeOfUse, payload,
    };
    Envelope {
        idempotency_key: idempotency_key.into(),
        recipient_agency_id: recipient.into(),
        acting_user: Some(ActingUser {
            user_id: user_id.into(),
            agency_id: acting_agency.into(),
            role: role as i32,
            display_name: String::new(),
        }),
        purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
        form_kind: FormKind::HelpRequest as i32,
        confidentiality: ConfidentialityLabel::Restricted as i32,
        payload: Some(Payload {
            form: Some(payload::Form::HelpRequest(k)),
        }),
        ..Default::default()
    }
}
