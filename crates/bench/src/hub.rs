//! The all-in-one process under test: `referral-hub up` from `target/release`, started as a child
//! process in a temporary data directory, every component on a free loopback port, configured
//! the way an operator does (environment variables), and the clients the benchmarks call it with.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use referral_core::{
    auth::DevIssuer,
    db::{Database, StorageConfig},
    directory::{Directory, parse_role},
    pki::{ComponentIdentity, TlsFiles, TlsMaterial},
    tls,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// The demo district; its endpoints are rewritten to free ports.
const DEMO_DISTRICT: &str = include_str!("../../../deploy/demo-district.toml");

/// Where `referral-hub` is: `$REFERRAL_HUB_BIN`, else the workspace's `target/release`.
pub fn hub_binary() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("REFERRAL_HUB_BIN") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/referral-hub"),
    };
    if !path.exists() {
        bail!(
            "{} not found: build it first with `cargo build --release -p referral-hub` \
             (crates/bench/run.sh does)",
            path.display()
        );
    }
    Ok(path)
}

/// A free port on loopback (the kernel's choice, released for the child to bind).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `count` consecutive free ports (`up` gives the admin port to the gateway and the next ones to
/// the agencies in directory order).
fn free_port_run(count: u16) -> anyhow::Result<u16> {
    for _ in 0..200 {
        let base = free_port()?;
        if base > 65_535 - count {
            continue;
        }
        let all_free =
            (base..base + count).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return Ok(base);
        }
    }
    bail!("no run of {count} free ports")
}

/// One hub's data directory, directory file and ports: spawned once or several times (a restart
/// finds its store and credentials as it left them).
pub struct HubSetup {
    dir: tempfile::TempDir,
    pub directory: Directory,
    pub gateway_port: u16,
    /// The first admin port (the gateway's); agencies follow in directory order.
    pub admin_base: u16,
    database_url: Option<String>,
}

impl HubSetup {
    /// A fresh data directory; `database_url` a PostgreSQL database, or SQLite files when none.
    pub fn new(database_url: Option<String>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("referral-bench-")
            .tempdir()?;
        let mut text = String::new();
        for line in DEMO_DISTRICT.lines() {
            if line.starts_with("endpoint = ") {
                text.push_str(&format!(
                    "endpoint = \"https://127.0.0.1:{}\"\n",
                    free_port()?
                ));
            } else {
                text.push_str(line);
                text.push('\n');
            }
        }
        std::fs::write(dir.path().join("district.toml"), &text)?;
        let directory = Directory::parse(&text)?;
        let admin_base = free_port_run(1 + directory.agencies.len() as u16)?;
        Ok(Self {
            dir,
            directory,
            gateway_port: free_port()?,
            admin_base,
            database_url,
        })
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pki_dir(&self) -> PathBuf {
        self.data_dir().join("pki")
    }

    /// Starts `referral-hub up` (its output goes to `hub.log` in the data directory).
    pub fn spawn(&self) -> anyhow::Result<HubProcess> {
        let binary = hub_binary()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("hub.log"))?;
        let mut command = Command::new(binary);
        command
            .arg("up")
            .env("REFERRAL_HUB__DATA_DIR", self.data_dir())
            .env(
                "REFERRAL_HUB__DIRECTORY_FILE",
                self.dir.path().join("district.toml"),
            )
            .env(
                "REFERRAL_HUB__GATEWAY__LISTEN",
                format!("127.0.0.1:{}", self.gateway_port),
            )
            .env(
                "REFERRAL_HUB__GATEWAY__ENDPOINT",
                format!("https://127.0.0.1:{}", self.gateway_port),
            )
            .env(
                "REFERRAL_HUB__ADMIN_LISTEN",
                format!("127.0.0.1:{}", self.admin_base),
            )
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            // One school stands in for a whole district's load: its rate limit per calling
            // agency (2,000 calls a second by default) would refuse part of it, and the refused
            // calls would be measured as well. Every other limit stays as operators have it.
            .env("REFERRAL_HUB__LIMITS__AGENCY_RATE_PER_SECOND", "1000000")
            .env("REFERRAL_HUB__LIMITS__AGENCY_BURST", "1000000")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        match &self.database_url {
            Some(url) => command.env("REFERRAL_HUB__DATABASE_URL", url),
            None => command.env_remove("REFERRAL_HUB__DATABASE_URL"),
        };
        let spawned_at = Instant::now();
        let child = command.spawn().context("cannot start referral-hub up")?;
        Ok(HubProcess { child, spawned_at })
    }

    /// The hub's log so far (for a failure message).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("hub.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Every component's endpoint and identity: the gateway first, then the agencies.
    fn components(&self) -> Vec<(String, ComponentIdentity)> {
        let mut all = vec![(
            format!("https://127.0.0.1:{}", self.gateway_port),
            ComponentIdentity::Gateway,
        )];
        for agency in &self.directory.agencies {
            all.push((
                agency.endpoint.clone(),
                ComponentIdentity::Agency(agency.id.clone()),
            ));
        }
        all
    }

    /// The endpoint of an agency's service.
    pub fn endpoint(&self, agency: &str) -> anyhow::Result<String> {
        Ok(self
            .directory
            .agency(agency)
            .with_context(|| format!("no agency {agency}"))?
            .endpoint
            .clone())
    }

    /// The PEM files of a component's certificate, key and CA, as the hub generated them.
    pub fn tls_files(&self, identity: &ComponentIdentity) -> TlsFiles {
        TlsFiles::in_dir(&self.pki_dir(), identity)
    }

    /// A channel presenting `as_identity`'s certificate to the server `to` at `endpoint`.
    pub async fn mtls_channel(
        &self,
        as_identity: &ComponentIdentity,
        to: &ComponentIdentity,
        endpoint: &str,
    ) -> anyhow::Result<Channel> {
        let material = TlsMaterial::load(&self.tls_files(as_identity))?;
        Ok(Endpoint::from_shared(endpoint.to_owned())?
            .tls_config(tls::client_tls(&material, to))?
            .connect()
            .await?)
    }

    /// A channel to the gateway presenting school 1's certificate, as school 1's service calls it.
    pub async fn school_1_gateway_channel(&self) -> anyhow::Result<Channel> {
        self.mtls_channel(
            &ComponentIdentity::Agency("school-1".into()),
            &ComponentIdentity::Gateway,
            &format!("https://127.0.0.1:{}", self.gateway_port),
        )
        .await
    }

    /// School 1's director, as the school's service names them acting on a call to the gateway.
    pub fn school_director(&self) -> anyhow::Result<referral_proto::v1::ActingUser> {
        let director = self
            .directory
            .user("school-1", "director")
            .context("school 1's director")?;
        Ok(referral_proto::v1::ActingUser {
            user_id: director.user_id.clone(),
            agency_id: "school-1".into(),
            role: referral_proto::v1::Role::SchoolDirector as i32,
            display_name: director.full_name.clone(),
        })
    }

    /// A staff member's channel to their agency's service (TLS, no client certificate).
    pub async fn staff_channel(&self, agency: &str) -> anyhow::Result<Channel> {
        let ca = std::fs::read_to_string(self.tls_files(&ComponentIdentity::Gateway).ca)?;
        Ok(Endpoint::from_shared(self.endpoint(agency)?)?
            .tls_config(tls::client_tls_without_identity(
                &ca,
                &ComponentIdentity::Agency(agency.to_owned()),
            ))?
            .connect()
            .await?)
    }

    /// A development bearer token for a user of the directory, valid for a day.
    pub fn token(&self, agency: &str, user_id: &str) -> anyhow::Result<String> {
        let user = self
            .directory
            .user(agency, user_id)
            .with_context(|| format!("no user {user_id} in {agency}"))?;
        let ids: Vec<&str> = self
            .directory
            .agencies
            .iter()
            .map(|a| a.id.as_str())
            .collect();
        let issuer = DevIssuer::ensure(&self.pki_dir().join("issuer"), &ids)?;
        Ok(issuer.mint(
            agency,
            user_id,
            parse_role(&user.role).context("a known role")?,
            &user.full_name,
            jiff::SignedDuration::from_hours(24),
            jiff::Timestamp::now(),
        )?)
    }

    /// The gateway's store, opened beside the running hub (to count deliveries).
    pub async fn gateway_store(&self) -> anyhow::Result<Database> {
        let storage = StorageConfig {
            data_dir: self.data_dir(),
            database_url: self.database_url.clone().map(Into::into),
        };
        Ok(Database::connect(&storage, "gateway").await?)
    }

    /// Waits until every component is ready, polling (another process: no event to await), for
    /// at most `limit`. Ready means every admin `/readyz` answers 200 when the hub serves admin
    /// ports; when none listens (a build without them) every gRPC health check says SERVING.
    pub async fn wait_ready(&self, hub: &mut HubProcess, limit: Duration) -> anyhow::Result<Ready> {
        let deadline = hub.spawned_at + limit;
        let components = self.components();
        let admin_ports: Vec<u16> = (0..components.len() as u16)
            .map(|i| self.admin_base + i)
            .collect();
        let mut health: Vec<Option<HealthClient<Channel>>> = vec![None; components.len()];
        let ca = loop {
            if let Ok(ca) = std::fs::read_to_string(self.tls_files(&ComponentIdentity::Gateway).ca)
            {
                break ca;
            }
            self.check_alive(hub, deadline)?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        loop {
            self.check_alive(hub, deadline)?;
            let mut serving = 0;
            for (i, (endpoint, identity)) in components.iter().enumerate() {
                if health[i].is_none() {
                    let channel = Endpoint::from_shared(endpoint.clone())?
                        .tls_config(tls::client_tls_without_identity(&ca, identity))?
                        .connect_timeout(Duration::from_millis(200))
                        .timeout(Duration::from_millis(500))
                        .connect()
                        .await;
                    health[i] = channel.ok().map(HealthClient::new);
                }
                if let Some(client) = &mut health[i] {
                    match client.check(HealthCheckRequest::default()).await {
                        Ok(r) if r.get_ref().status == 1 => serving += 1,
                        Ok(_) => {}
                        Err(_) => health[i] = None,
                    }
                }
            }
            let mut admin_listening = 0;
            let mut admin_ready = 0;
            for port in &admin_ports {
                match readyz(*port).await {
                    Some(200) => {
                        admin_listening += 1;
                        admin_ready += 1;
                    }
                    Some(_) => admin_listening += 1,
                    None => {}
                }
            }
            let all = components.len();
            if admin_ready == all || (serving == all && admin_listening == 0) {
                return Ok(Ready {
                    after: hub.spawned_at.elapsed(),
                    by_admin_port: admin_ready == all,
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn check_alive(&self, hub: &mut HubProcess, deadline: Instant) -> anyhow::Result<()> {
        if let Some(status) = hub.child.try_wait()? {
            bail!(
                "referral-hub up exited ({status}) before it was ready:\n{}",
                self.log_tail()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "referral-hub up was not ready in time:\n{}",
                self.log_tail()
            );
        }
        Ok(())
    }
}

/// How the hub became ready.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    /// From spawn to ready.
    pub after: Duration,
    /// Ready by every admin port's `/readyz` (else by the gRPC health checks).
    pub by_admin_port: bool,
}

/// The status code of `GET /readyz` on a plain-HTTP admin port; `None` when nothing listens.
async fn readyz(port: u16) -> Option<u16> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        stream
            .write_all(b"GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0_u8; 32];
        let n = stream.read(&mut head).await.ok()?;
        let line = std::str::from_utf8(&head[..n]).ok()?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_millis(200), attempt)
        .await
        .ok()
        .flatten()
}

/// A running `referral-hub up`.
pub struct HubProcess {
    child: Child,
    pub spawned_at: Instant,
}

impl HubProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now and at its peak, from `/proc/<pid>/status` (VmRSS, VmHWM), in KiB.
    pub fn memory_kib(&self) -> anyhow::Result<(u64, u64)> {
        memory_kib(self.pid())
    }

    /// Stops the hub as an operator does (SIGTERM), waiting up to 20 s before killing it.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        self.child.wait()?;
        bail!("referral-hub did not stop within 20 s of SIGTERM; killed it")
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// VmRSS and VmHWM of a process, in KiB.
pub fn memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}
