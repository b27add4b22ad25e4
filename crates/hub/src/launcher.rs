//! The launcher: `referral-hub up` runs every component of the hub in one process (the
//! "monolithic mode" of Loki and Tempo), `gateway` and `agency --id <id>` run one component alone,
//! and `audit verify` checks the gateway's ledger offline. All of them build components with the
//! components' own `build` functions, so the two modes cannot drift apart.
//!
//! Every component also serves its plain-HTTP admin port (`/healthz`, `/readyz`, `/metrics`,
//! `referral_core::admin`): `up` puts the gateway's on `admin_listen` (127.0.0.1:9400 unless
//! configured) and each agency's on the following ports in directory order; `gateway` and
//! `agency --id` serve one when `admin_listen` is set.
//!
//! In development mode the first start creates the development PKI, the token issuer's keys and
//! the gateway's payload key file under the data directory; in production mode nothing is
//! generated and the files must exist (payload keys must be configured).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use anyhow::{Context as _, bail};
use referral_agency::{AgencyConfig, AgencyService};
use referral_core::{
    Clock,
    admin::AdminServer,
    auth::{DevIssuer, TokenVerifier},
    directory::{AgencyEntry, Directory, role_name},
    pki::{ComponentIdentity, TlsFiles, TlsMaterial, ensure_dev_pki},
    telemetry,
    tls::install_crypto_provider,
};
use referral_gateway::{Gateway, GatewayConfig, KeySources, PayloadSealer, sealing};
use referral_proto::v1::AgencyKind;
use serde_json::json;
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use crate::{
    UsageError,
    output::{Format, Table, print_json},
    settings::{DirectorySource, Settings},
};

/// How long components get to finish calls in flight after a shutdown request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// Where `up` serves the gateway's admin port when `admin_listen` is not set; the agencies' admin
/// ports follow it (9401, 9402, … in directory order).
const UP_ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9400);

/// One built component, bound to its port and ready to serve.
enum Component {
    Gateway(Gateway),
    Agency(AgencyService),
}

/// A component with what the start-up table shows about it.
struct Built {
    name: String,
    kind: String,
    listen: SocketAddr,
    /// The component's admin port, when it serves one.
    admin: Option<AdminServer>,
    component: Component,
}

impl Component {
    /// Binds the component's admin port on `addr`.
    async fn admin(&self, addr: SocketAddr) -> anyhow::Result<AdminServer> {
        let (metrics, database) = match self {
            Self::Gateway(gateway) => (gateway.metrics(), gateway.database()),
            Self::Agency(agency) => (agency.metrics(), agency.database()),
        };
        AdminServer::bind(addr, metrics, database)
            .await
            .with_context(|| format!("cannot listen on {addr} for the admin port"))
    }

    /// Binds the admin port on `addr` when one is given.
    async fn admin_on(&self, addr: Option<SocketAddr>) -> anyhow::Result<Option<AdminServer>> {
        Ok(match addr {
            Some(addr) => Some(self.admin(addr).await?),
            None => None,
        })
    }

    async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        match self {
            Self::Gateway(gateway) => gateway.run_until_stopped(shutdown).await,
            Self::Agency(agency) => agency.run_until_stopped(shutdown).await,
        }
    }
}

/// `referral-hub up`.
pub async fn up(settings: &Settings, format: Format) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    let _telemetry = telemetry::init("referral-hub", &settings.config.telemetry)?;
    install_crypto_provider();
    let (directory, source) = settings.directory()?;
    let generated = prepare_credentials(settings, &directory)?;
    let clock = Clock::system();

    let mut built = Vec::new();
    let gateway = build_gateway(
        settings,
        &directory,
        settings.config.gateway.listen,
        clock.clone(),
    )
    .await?;
    let gateway_listen = SocketAddr::new(settings.config.gateway.listen.ip(), gateway.port());
    // In one process the agencies reach the gateway where it is actually bound.
    let gateway_endpoint = format!("https://{}", dial_address(gateway_listen));
    let admin_base = settings.config.admin_listen.unwrap_or(UP_ADMIN_LISTEN);
    let component = Component::Gateway(gateway);
    built.push(Built {
        name: "gateway".into(),
        kind: "gateway".into(),
        listen: gateway_listen,
        admin: Some(component.admin(admin_base).await?),
        component,
    });
    for (n, agency) in directory.agencies.iter().enumerate() {
        let listen = listen_address(&agency.endpoint)
            .with_context(|| format!("cannot start {}", agency.id))?;
        let service = build_agency(
            settings,
            &directory,
            agency,
            listen,
            &gateway_endpoint,
            clock.clone(),
        )
        .await?;
        let listen = SocketAddr::new(listen.ip(), service.port());
        let component = Component::Agency(service);
        built.push(Built {
            name: agency.id.clone(),
            kind: agency.kind.clone(),
            listen,
            admin: Some(component.admin(nth_admin_port(admin_base, n + 1)?).await?),
            component,
        });
    }

    print_banner(settings, &directory, &source, &built, generated, format);
    run_all(built, &mut signals).await
}

/// `referral-hub gateway`.
pub async fn gateway(settings: &Settings) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    let _telemetry = telemetry::init("referral-gateway", &settings.config.telemetry)?;
    install_crypto_provider();
    let (directory, source) = settings.directory()?;
    prepare_credentials(settings, &directory)?;
    let listen = settings.config.gateway.listen;
    let gateway = build_gateway(settings, &directory, listen, Clock::system()).await?;
    let listen = SocketAddr::new(listen.ip(), gateway.port());
    tracing::info!(%listen, directory = %source, "gateway listening");
    let component = Component::Gateway(gateway);
    let built = Built {
        name: "gateway".into(),
        kind: "gateway".into(),
        listen,
        admin: component.admin_on(settings.config.admin_listen).await?,
        component,
    };
    run_all(vec![built], &mut signals).await
}

/// `referral-hub agency --id <id>`.
pub async fn agency(
    settings: &Settings,
    id: &str,
    listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    let (directory, source) = settings.directory()?;
    let Some(entry) = directory.agency(id).cloned() else {
        let known: Vec<&str> = directory.agencies.iter().map(|a| a.id.as_str()).collect();
        return Err(UsageError(format!(
            "no agency {id} in {source}; known agencies: {}",
            known.join(", ")
        ))
        .into());
    };
    let _telemetry = telemetry::init(&format!("referral-{id}"), &settings.config.telemetry)?;
    install_crypto_provider();
    prepare_credentials(settings, &directory)?;
    let listen = match listen {
        Some(listen) => listen,
        None => listen_address(&entry.endpoint)?,
    };
    let service = build_agency(
        settings,
        &directory,
        &entry,
        listen,
        &settings.config.gateway.endpoint,
        Clock::system(),
    )
    .await?;
    let listen = SocketAddr::new(listen.ip(), service.port());
    tracing::info!(agency_id = id, %listen, gateway = %settings.config.gateway.endpoint, "agency service listening");
    let component = Component::Agency(service);
    let built = Built {
        name: entry.id.clone(),
        kind: entry.kind.clone(),
        listen,
        admin: component.admin_on(settings.config.admin_listen).await?,
        component,
    };
    run_all(vec![built], &mut signals).await
}

/// Every component's identity: the gateway and each agency of the directory.
fn identities(directory: &Directory) -> anyhow::Result<Vec<ComponentIdentity>> {
    let mut ids = vec![ComponentIdentity::Gateway];
    for agency in &directory.agencies {
        ids.push(ComponentIdentity::agency(agency.id.clone())?);
    }
    Ok(ids)
}

/// The gateway's child-link secret file when none is configured (development mode only).
fn dev_child_link_file(settings: &Settings) -> std::path::PathBuf {
    settings.config.pki_dir().join("child-link-secret")
}

/// The secret the children's pseudonyms are keyed with: the configured one (inline or file), or
/// in development mode the generated `<pki_dir>/child-link-secret`. Production mode never
/// generates one. Like a private key, the file must be readable by its owner only.
fn child_link_secret(settings: &Settings) -> anyhow::Result<Vec<u8>> {
    let gateway = &settings.config.gateway;
    let (text, source) = match (
        gateway.inline_child_link_secret(),
        &gateway.child_link_secret_file,
    ) {
        (Some(inline), _) => (inline.to_owned(), "gateway.child_link_secret".to_owned()),
        (None, file) => {
            let path = match file {
                Some(path) => path.clone(),
                None if settings.development() => dev_child_link_file(settings),
                None => anyhow::bail!(
                    "production mode needs the children's pseudonym secret: set \
                     gateway.child_link_secret_file or REFERRAL_HUB__GATEWAY__CHILD_LINK_SECRET \
                     (README: Need-to-know policy)"
                ),
            };
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                let mode = std::fs::metadata(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?
                    .permissions()
                    .mode();
                anyhow::ensure!(
                    mode & 0o077 == 0,
                    "{} is readable by others (mode {:o}): chmod 600 it",
                    path.display(),
                    mode & 0o777
                );
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            (text, path.display().to_string())
        }
    };
    sealing::decode_secret(&text)
        .map_err(|why| anyhow::anyhow!("the child-link secret in {source} is {why}"))
}

/// The gateway's payload key file when none is configured (development mode only).
fn dev_payload_key_file(settings: &Settings) -> std::path::PathBuf {
    settings.config.pki_dir().join("payload-keys")
}

/// In development mode: makes sure the development PKI, the issuer keys and the gateway's
/// payload key file (unless keys are configured) exist, creating what is missing, and says
/// whether anything was created. In production mode this does nothing; the components then load
/// their files and fail clearly if one is missing.
fn prepare_credentials(settings: &Settings, directory: &Directory) -> anyhow::Result<bool> {
    if !settings.development() {
        return Ok(false);
    }
    let pki_dir = settings.config.pki_dir();
    let report = ensure_dev_pki(&pki_dir, &identities(directory)?).with_context(|| {
        format!(
            "cannot prepare the development PKI in {}",
            pki_dir.display()
        )
    })?;
    let jwks_dir = settings.config.jwks_dir();
    let ids: Vec<&str> = directory.agencies.iter().map(|a| a.id.as_str()).collect();
    let missing_keys = ids
        .iter()
        .any(|id| !jwks_dir.join(format!("{id}.jwks.json")).exists());
    DevIssuer::ensure(&jwks_dir, &ids).with_context(|| {
        format!(
            "cannot prepare the development token issuer in {}",
            jwks_dir.display()
        )
    })?;
    let gateway = &settings.config.gateway;
    let payload_keys = dev_payload_key_file(settings);
    let missing_payload_key = gateway.payload_key_file.is_none()
        && gateway.payload_keys.is_none()
        && !payload_keys.exists();
    if missing_payload_key {
        sealing::generate_key_file(&payload_keys, "dev-1").with_context(|| {
            format!(
                "cannot create the development payload key file {}",
                payload_keys.display()
            )
        })?;
    }
    let child_link = dev_child_link_file(settings);
    let missing_child_link = gateway.child_link_secret_file.is_none()
        && gateway.child_link_secret.is_none()
        && !child_link.exists();
    if missing_child_link {
        sealing::generate_secret_file(&child_link).with_context(|| {
            format!(
                "cannot create the development child-link secret {}",
                child_link.display()
            )
        })?;
    }
    let created = !report.is_empty() || missing_keys || missing_payload_key || missing_child_link;
    if created {
        tracing::info!(pki = %pki_dir.display(), issuer = %jwks_dir.display(), "development credentials created");
    }
    Ok(created)
}

/// The gateway's payload keyring: the configured key file and/or inline keys; in development
/// mode with neither configured, the generated `<pki_dir>/payload-keys`. Production mode never
/// generates keys and refuses to start without them.
fn payload_sealer(settings: &Settings) -> anyhow::Result<PayloadSealer> {
    let gateway = &settings.config.gateway;
    let inline = gateway.inline_payload_keys();
    let file = match (&gateway.payload_key_file, inline) {
        (Some(file), _) => Some(file.clone()),
        (None, Some(_)) => None,
        (None, None) if settings.development() => Some(dev_payload_key_file(settings)),
        (None, None) => bail!(
            "production mode needs payload keys: set gateway.payload_key_file \
             (REFERRAL_HUB__GATEWAY__PAYLOAD_KEY_FILE) or REFERRAL_HUB__GATEWAY__PAYLOAD_KEYS; \
             they are never generated in production (README: Payload keys)"
        ),
    };
    PayloadSealer::load(KeySources {
        file: file.as_deref(),
        inline,
        active: gateway.payload_active_key.as_deref(),
    })
    .context("cannot load the gateway's payload keys")
}

/// A component's certificate, key and CA from the PKI directory.
fn tls_material(settings: &Settings, identity: &ComponentIdentity) -> anyhow::Result<TlsMaterial> {
    let dir = settings.config.pki_dir();
    TlsMaterial::load(&TlsFiles::in_dir(&dir, identity)).with_context(|| {
        if settings.development() {
            format!("cannot load the certificate of {identity}")
        } else {
            format!(
                "cannot load the certificate of {identity} (production mode: certificates are read from {}, never generated)",
                dir.display()
            )
        }
    })
}

async fn build_gateway(
    settings: &Settings,
    directory: &Directory,
    listen: SocketAddr,
    clock: Clock,
) -> anyhow::Result<Gateway> {
    let holidays = referral_gateway::load_holidays(&settings.config.deadlines)
        .context("cannot read the holiday calendar")?;
    let config = GatewayConfig {
        deadlines: settings.config.deadlines.clone(),
        holidays: std::sync::Arc::new(holidays),
        payload_sealer: payload_sealer(settings)?,
        child_link_secret: child_link_secret(settings)?,
        policy_dir: settings.config.gateway.policy_dir.clone(),
        limits: settings.config.limits,
        payload_retention: jiff::SignedDuration::from_hours(
            24 * i64::from(settings.config.gateway.payload_retention_days),
        ),
        ..GatewayConfig::new(
            listen,
            tls_material(settings, &ComponentIdentity::Gateway)?,
            settings.config.storage(),
            directory.clone(),
            settings.config.delivery,
            clock,
        )
    };
    Gateway::build(config)
        .await
        .context("cannot start the gateway")
}

async fn build_agency(
    settings: &Settings,
    directory: &Directory,
    agency: &AgencyEntry,
    listen: SocketAddr,
    gateway_endpoint: &str,
    clock: Clock,
) -> anyhow::Result<AgencyService> {
    let id = agency.id.as_str();
    let start = || format!("cannot start {id}");
    let jwks = settings.config.jwks_dir().join(format!("{id}.jwks.json"));
    let token_verifier =
        TokenVerifier::from_jwks_file(&settings.config.auth.issuer, id, &jwks, clock.clone())
            .with_context(start)?;
    let config = AgencyConfig {
        agency_id: id.to_owned(),
        listen,
        tls: tls_material(settings, &ComponentIdentity::agency(id)?).with_context(start)?,
        storage: settings.config.storage(),
        gateway_endpoint: gateway_endpoint.to_owned(),
        directory: directory.clone(),
        token_verifier,
        clock,
        limits: settings.config.limits,
    };
    let built = match agency.kind() {
        AgencyKind::School => referral_school::build(config).await,
        AgencyKind::Residential => referral_residential::build(config).await,
        AgencyKind::Commission => referral_commission::build(config).await,
        AgencyKind::Police => referral_police::build(config).await,
        AgencyKind::Health => referral_health::build(config).await,
        AgencyKind::Ngo => referral_ngo::build(config).await,
        AgencyKind::Unspecified => bail!("agency {id} has an unknown kind {}", agency.kind),
    };
    built.with_context(start)
}

/// Where a service whose endpoint is `https://host:port` listens: that port, on the host's
/// address when the host is an IP address (`localhost` is 127.0.0.1), on every interface when it
/// is a DNS name.
pub fn listen_address(endpoint: &str) -> anyhow::Result<SocketAddr> {
    let uri: tonic::transport::Uri = endpoint
        .parse()
        .with_context(|| format!("the endpoint {endpoint} is not a URL"))?;
    let port = uri
        .port_u16()
        .with_context(|| format!("the endpoint {endpoint} has no port"))?;
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    };
    Ok(SocketAddr::new(ip, port))
}

/// The address to dial for a listener: an unspecified address (0.0.0.0, ::) is dialled on the
/// loopback interface.
fn dial_address(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), listen.port())
        }
        _ => listen,
    }
}

/// The admin address of `up`'s `n`th component (the gateway is 0): `base`'s port plus `n`, or
/// port 0 for each when `base` asks for any free port.
fn nth_admin_port(base: SocketAddr, n: usize) -> anyhow::Result<SocketAddr> {
    if base.port() == 0 {
        return Ok(base);
    }
    let port = u16::try_from(n)
        .ok()
        .and_then(|n| base.port().checked_add(n))
        .with_context(|| format!("admin ports from {base} run past 65535 for {n} components"))?;
    Ok(SocketAddr::new(base.ip(), port))
}

/// Ctrl-C (SIGINT) and SIGTERM, registered before anything starts so that a signal during
/// start-up is not lost (or fatal).
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle Ctrl-C")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "Ctrl-C",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// Runs the components until a signal or until one of them stops; then stops all of them and
/// waits for each. The first failure is the result.
async fn run_all(built: Vec<Built>, signals: &mut Signals) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    for b in built {
        let token = shutdown.clone();
        let name = b.name;
        if let Some(admin) = b.admin {
            let (token, name) = (token.clone(), format!("{name}'s admin port"));
            tasks.spawn(async move {
                let result = admin.run_until_stopped(token).await;
                (name, result.map_err(anyhow::Error::from))
            });
        }
        tasks.spawn(async move {
            let result = b.component.run(token).await;
            (name, result)
        });
    }

    let mut failure: Option<anyhow::Error> = None;
    let mut record = |joined: Result<(String, anyhow::Result<()>), tokio::task::JoinError>,
                      stopping: bool| {
        let error = match joined {
            Ok((_, Ok(()))) if stopping => None,
            Ok((name, Ok(()))) => Some(anyhow::anyhow!("{name} stopped unexpectedly")),
            Ok((name, Err(e))) => Some(e.context(format!("{name} failed"))),
            Err(e) => Some(anyhow::anyhow!("a component crashed: {e}")),
        };
        if let Some(e) = error {
            tracing::error!(error = format!("{e:#}"), "component stopped");
            failure.get_or_insert(e);
        }
    };

    tokio::select! {
        why = signals.recv() => tracing::info!("{why} received, shutting down"),
        Some(joined) = tasks.join_next() => record(joined, false),
    }
    shutdown.cancel();

    let drain = async {
        while let Some(joined) = tasks.join_next().await {
            record(joined, true);
        }
    };
    tokio::select! {
        () = drain => tracing::info!("stopped cleanly"),
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tasks.abort_all();
            bail!("components did not stop within {} s; stopped them", SHUTDOWN_GRACE.as_secs());
        }
        why = signals.recv() => {
            tasks.abort_all();
            bail!("{why} received again; stopped without waiting");
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The start-up table: where each component listens, the demo users, what to try next.
fn print_banner(
    settings: &Settings,
    directory: &Directory,
    source: &DirectorySource,
    built: &[Built],
    generated: bool,
    format: Format,
) {
    let config = &settings.config;
    let dev = settings.development();
    if format == Format::Json {
        let components: Vec<_> = built
            .iter()
            .map(|b| {
                let endpoint = directory
                    .agency(&b.name)
                    .map(|a| a.endpoint.clone())
                    .unwrap_or_else(|| format!("https://{}", dial_address(b.listen)));
                let admin = b.admin.as_ref().and_then(|a| a.local_addr().ok()).map(|a| a.to_string());
                json!({"name": b.name, "kind": b.kind, "listen": b.listen.to_string(), "admin": admin, "endpoint": endpoint})
            })
            .collect();
        let users: Vec<_> = if dev {
            directory
                .staff
                .iter()
                .map(|s| json!({"agency": s.agency, "user_id": s.user_id, "role": role_name(s.role()), "full_name": s.full_name}))
                .collect()
        } else {
            Vec::new()
        };
        print_json(&json!({
            "mode": if dev { "development" } else { "production" },
            "data_dir": config.data_dir.display().to_string(),
            "directory": source.to_string(),
            "pki_dir": config.pki_dir().display().to_string(),
            "components": components,
            "demo_users": users,
        }));
        return;
    }

    let mut out = String::new();
    out.push_str(&format!(
        "referral-hub is up ({} mode) — data in {}, agencies from {source}\n",
        if dev { "development" } else { "production" },
        config.data_dir.display()
    ));
    if generated {
        out.push_str(&format!(
            "Created the development PKI, token issuer keys and payload key in {}\n",
            config.pki_dir().display()
        ));
    }
    out.push('\n');
    let mut components = Table::new(["COMPONENT", "KIND", "LISTENS ON", "ADMIN", "NAME"]);
    for b in built {
        let name = directory
            .agency(&b.name)
            .map(|a| a.name_ru.clone())
            .unwrap_or_else(|| "Шлюз / Gateway".into());
        let admin = b
            .admin
            .as_ref()
            .and_then(|a| a.local_addr().ok())
            .map_or_else(|| "-".to_owned(), |a| format!("http://{a}"));
        components.row([
            b.name.clone(),
            b.kind.clone(),
            b.listen.to_string(),
            admin,
            name,
        ]);
    }
    out.push_str(&components.render());

    if dev {
        out.push_str("\nDemo users (development tokens):\n");
        let mut users = Table::new(["AGENCY", "USER ID", "ROLE", "NAME"]);
        for s in &directory.staff {
            users.row([
                s.agency.clone(),
                s.user_id.clone(),
                role_name(s.role()),
                s.full_name.clone(),
            ]);
        }
        out.push_str(&users.render());
        let hub = settings.hint_prefix();
        out.push_str("\nTry, from another terminal:\n");
        for line in [
            format!("{hub} login --agency school-1 --user director"),
            format!("{hub} submit-k --demo"),
            format!("{hub} login --agency commission --user secretary"),
            format!("{hub} inbox"),
            format!("{hub} show <message-id>"),
            format!("{hub} decide <message-id> --open-case --curator curator-1"),
            format!("{hub} sent-status <message-id> --as school-1/director"),
            format!("{hub} audit verify"),
        ] {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out.push_str("\nPress Ctrl-C to stop.\n");
    // The server must not stop because nobody reads its banner: a failed write is ignored.
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_listen_on_the_port_of_their_endpoint() {
        assert_eq!(
            listen_address("https://127.0.0.1:7402").unwrap(),
            "127.0.0.1:7402".parse().unwrap()
        );
        assert_eq!(
            listen_address("https://localhost:7403").unwrap(),
            "127.0.0.1:7403".parse().unwrap()
        );
        assert_eq!(
            listen_address("https://school-1.example.kz:7443").unwrap(),
            "0.0.0.0:7443".parse().unwrap()
        );
        assert_eq!(
            listen_address("https://[::1]:7404").unwrap(),
            "[::1]:7404".parse().unwrap()
        );
        assert!(listen_address("https://127.0.0.1").is_err());
    }

    #[test]
    fn development_creates_a_private_payload_key_once_and_production_needs_one() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::load(crate::settings::Overrides {
            data_dir: Some(dir.path().to_owned()),
            ..Default::default()
        })
        .unwrap();
        settings.config.mode = referral_core::config::Mode::Development;
        let (directory, _) = settings.directory().unwrap();
        assert!(prepare_credentials(&settings, &directory).unwrap());
        let file = dev_payload_key_file(&settings);
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let first = payload_sealer(&settings).unwrap();
        assert_eq!(first.active_key_id(), "dev-1");
        let sealed = first.seal("m-1", b"form").unwrap();
        // A second start keeps the key it created.
        assert!(!prepare_credentials(&settings, &directory).unwrap());
        let again = payload_sealer(&settings).unwrap();
        assert_eq!(again.open("m-1", &sealed.bytes).unwrap(), b"form");

        settings.config.mode = referral_core::config::Mode::Production;
        let refused = format!("{:#}", payload_sealer(&settings).unwrap_err());
        assert!(
            refused.contains("REFERRAL_HUB__GATEWAY__PAYLOAD_KEY_FILE"),
            "{refused}"
        );
        settings.config.gateway.payload_key_file = Some(file);
        assert_eq!(
            payload_sealer(&settings)
                .unwrap()
                .open("m-1", &sealed.bytes)
                .unwrap(),
            b"form"
        );
    }

    #[test]
    fn up_gives_agencies_the_admin_ports_after_the_gateways() {
        let base: SocketAddr = "127.0.0.1:9400".parse().unwrap();
        assert_eq!(nth_admin_port(base, 0).unwrap(), base);
        assert_eq!(
            nth_admin_port(base, 3).unwrap(),
            "127.0.0.1:9403".parse().unwrap()
        );
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(nth_admin_port(any, 5).unwrap(), any);
        assert!(nth_admin_port("127.0.0.1:65535".parse().unwrap(), 1).is_err());
    }

    #[test]
    fn unspecified_addresses_are_dialled_on_loopback() {
        assert_eq!(
            dial_address("0.0.0.0:7400".parse().unwrap()),
            "127.0.0.1:7400".parse().unwrap()
        );
        assert_eq!(
            dial_address("10.0.0.5:7400".parse().unwrap()),
            "10.0.0.5:7400".parse().unwrap()
        );
    }
}
