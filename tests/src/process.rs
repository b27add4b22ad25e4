//! The all-in-one process, `referral-hub up`, run as a real child process (for the tests that
//! kill it or take its database away): its own data directory, the demo district with every
//! endpoint on a free loopback port, SQLite or a PostgreSQL URL, and staff clients that reach it
//! as people do (the development token issuer's keys in its data directory, its CA).
//!
//! Only a crate that builds the binary knows where it is (`env!("CARGO_BIN_EXE_referral-hub")` in
//! `crates/hub/tests`), so the caller passes its path.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use jiff::{SignedDuration, Timestamp};
use referral_agency::component_name;
use referral_core::{
    auth::DevIssuer,
    db::{Database, StorageConfig},
    directory::Directory,
    pki::ComponentIdentity,
    tls,
};
use referral_proto::v1::agency_staff_client::AgencyStaffClient;
use tonic::transport::Endpoint;

use crate::{DEMO_DISTRICT, StaffClient, free_port};

/// How long the process may take from spawn to serving every component.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The first line `up` prints once every component is bound and serving.
const BANNER: &str = "referral-hub is up";

/// `referral-hub up` in a directory of its own; killed when dropped.
pub struct HubProcess {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub directory: Directory,
    pub gateway_port: u16,
    database_url: Option<String>,
    /// Further `REFERRAL_HUB__…` settings (delivery back-off, for example).
    env: Vec<(String, String)>,
    child: Option<Child>,
    starts: u32,
}

impl HubProcess {
    /// Prepares (does not start) a hub: the demo district with its endpoints moved to free ports.
    ///
    /// The ports come from the harness's `free_port` (bound once to check, then let go, below
    /// the kernel's ephemeral range where possible): between that check and the process binding
    /// them, or while the process is down between a kill and its restart, another process could
    /// take one. That race is small and shows as a start-up failure naming the port, not as a
    /// wrong result.
    pub fn new(bin: &Path, database_url: Option<String>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("referral-hub-process-")
            .tempdir()?;
        let mut text = String::with_capacity(DEMO_DISTRICT.len());
        for line in DEMO_DISTRICT.lines() {
            if line
                .trim_start()
                .starts_with("endpoint = \"https://127.0.0.1:")
            {
                text.push_str(&format!(
                    "endpoint = \"https://127.0.0.1:{}\"\n",
                    free_port()
                ));
            } else {
                text.push_str(line);
                text.push('\n');
            }
        }
        let directory = Directory::parse(&text)?;
        std::fs::write(dir.path().join("district.toml"), &text)?;
        Ok(Self {
            bin: bin.to_owned(),
            dir,
            directory,
            gateway_port: free_port(),
            database_url,
            env: Vec::new(),
            child: None,
            starts: 0,
        })
    }

    /// Sets `REFERRAL_HUB__<key>` for every later start.
    pub fn setting(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.env
            .push((format!("REFERRAL_HUB__{key}"), value.into()));
        self
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The log (stderr) of the `n`th start, from 1.
    pub fn log_path(&self, n: u32) -> PathBuf {
        self.dir.path().join(format!("hub-{n}.log"))
    }

    /// The log of every start so far, for a failure message.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n----- restart -----\n")
    }

    /// Starts the process and returns once it has printed that every component serves (it
    /// binds every port before it prints). Panics if it exits or takes longer than a minute.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        assert!(self.child.is_none(), "the hub is running already");
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts))?;
        let mut command = Command::new(&self.bin);
        // The workspace root: the default holiday calendar path is relative to it.
        command.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("REFERRAL_HUB__") || key.starts_with("OTEL_") {
                command.env_remove(key.as_ref());
            }
        }
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
            // Any free ports for the admin servers (the default 9400… would collide with other
            // tests).
            .env("REFERRAL_HUB__ADMIN_LISTEN", "127.0.0.1:0")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        if let Some(url) = &self.database_url {
            command.env("REFERRAL_HUB__DATABASE_URL", url);
        }
        let mut child = command.spawn().context("cannot spawn referral-hub")?;
        let stdout = child.stdout.take().context("the child's stdout")?;
        // Read the banner on a thread (a blocking pipe), then drain the rest so that the child
        // never blocks writing to a full pipe.
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains(BANNER)
                    && let Some(ready) = ready.take()
                {
                    let _ = ready.send(());
                }
            }
        });
        self.child = Some(child);
        match tokio::time::timeout(START_TIMEOUT, ready_rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => {
                let status = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                self.child = None;
                bail!(
                    "referral-hub exited before serving ({status:?}):\n{}",
                    self.logs()
                )
            }
            Err(_) => bail!("referral-hub did not serve within {START_TIMEOUT:?}"),
        }
    }

    /// Sends SIGKILL (no clean-up of any kind, as `kill -9`) and reaps the process.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("the hub is not running")?;
        // `Child::kill` is SIGKILL on Unix.
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Whether the process is still running (it has not exited, for whatever reason).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Where the stores are (to read them as a test).
    pub fn storage(&self) -> StorageConfig {
        StorageConfig {
            data_dir: self.data_dir(),
            database_url: self.database_url.clone().map(Into::into),
        }
    }

    /// Opens a component's store as it is (`gateway`, or an agency id).
    pub async fn store(&self, component: &str) -> anyhow::Result<Database> {
        let name = if component == "gateway" {
            "gateway".to_owned()
        } else {
            component_name(component)
        };
        Ok(Database::connect(&self.storage(), &name).await?)
    }

    /// A staff member's client of their agency's service, with a development token minted from
    /// the issuer keys the process created (as the CLI's `login` does). The hub must have
    /// started once.
    pub async fn staff(&self, agency_id: &str, user_id: &str) -> anyhow::Result<StaffClient> {
        let pki = self.data_dir().join("pki");
        let user = self
            .directory
            .user(agency_id, user_id)
            .with_context(|| format!("no user {user_id} in {agency_id}"))?;
        let token = DevIssuer::ensure(&pki.join("issuer"), &[agency_id])?.mint(
            agency_id,
            user_id,
            user.role(),
            &user.full_name,
            SignedDuration::from_hours(8),
            Timestamp::now(),
        )?;
        let ca = std::fs::read_to_string(pki.join("ca.pem"))?;
        let endpoint = self
            .directory
            .agency(agency_id)
            .with_context(|| format!("no agency {agency_id}"))?
            .endpoint
            .clone();
        let channel = Endpoint::from_shared(endpoint)?
            .tls_config(tls::client_tls_without_identity(
                &ca,
                &ComponentIdentity::Agency(agency_id.to_owned()),
            ))?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        Ok(StaffClient {
            client: AgencyStaffClient::new(channel.clone()),
            channel,
            token,
        })
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
