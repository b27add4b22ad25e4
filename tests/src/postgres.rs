//! A throwaway PostgreSQL cluster for the test process, started from the system's `initdb` and
//! `pg_ctl`, in a temporary directory, on a free port. Each test gets its own fresh database.
//!
//! The cluster is stopped and its directory removed when the test process exits: a small shell
//! watchdog reads our stdin, which closes when we exit, and then stops the server.
//!
//! Without the PostgreSQL server binaries the PostgreSQL variants of the tests are skipped with
//! a loud message, unless `REQUIRE_POSTGRES=1`, which turns that into a failure (CI sets it).
//!
//! [`DedicatedCluster`] is a cluster of one test's own, which it can stop and start again (the
//! database-outage test). [`Installation`] is what they are made of, and what the benchmarks'
//! durable cluster (`referral-bench`) is made of too.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock},
};

use anyhow::{Context as _, bail};
use sqlx::Connection as _;

struct Cluster {
    port: u16,
    /// Held for the life of the process; dropping the watchdog's stdin stops the cluster.
    _watchdog: Mutex<Child>,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// Where the PostgreSQL server binaries are, if anywhere.
fn bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BIN_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root (the server refuses root).
fn pg_command(bin: &Path, tool: &str, as_root: bool) -> Command {
    if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    }
}

/// How much a cluster keeps of what it acknowledged if the machine stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// PostgreSQL's defaults (`fsync`, `synchronous_commit` and `full_page_writes` on): an
    /// acknowledged commit is on disk. The benchmarks measure this.
    Durable,
    /// All three off, and `initdb --no-sync`: fast, and lost with the machine. The test suite's.
    Throwaway,
}

/// A cluster's files and how to run its tools: what starting, stopping and the watchdog need.
#[derive(Debug)]
pub struct Installation {
    bin: PathBuf,
    as_root: bool,
    /// The temporary directory: `data/`, the socket and `server.log`.
    dir: PathBuf,
    port: u16,
    durability: Durability,
}

impl Installation {
    /// `initdb` in a new temporary directory named from `prefix`, and a free port for the
    /// server. The port comes from `bind(0)`, then is let go for the server to bind: another
    /// process could take it in between (a small race, as for every port a test hands to a
    /// server it starts).
    pub fn create(prefix: &str, durability: Durability) -> anyhow::Result<Self> {
        let bin = bin_dir().context("PostgreSQL server binaries (initdb, pg_ctl) not found")?;
        let as_root = running_as_root();
        let dir = tempfile::Builder::new().prefix(prefix).tempdir()?.keep();
        if as_root {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()?;
            if !status.success() {
                bail!("cannot hand the cluster directory to the postgres user");
            }
        }
        let out = pg_command(&bin, "initdb", as_root)
            .args(["-D"])
            .arg(dir.join("data"))
            .args(["-U", "postgres", "--auth=trust", "--encoding=UTF8"])
            .args((durability == Durability::Throwaway).then_some("--no-sync"))
            .stdout(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Ok(Self {
            bin,
            as_root,
            dir,
            port,
            durability,
        })
    }

    /// The directory of the server's binaries (`pgbench`, `postgres --version`).
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The temporary directory: `data/`, the socket and `server.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Starts the server (at most 400 connections: 128 benchmark clients, pgbench and the
    /// pools); `pg_ctl -w` returns once it accepts connections: nothing to poll.
    pub fn start(&self) -> anyhow::Result<()> {
        let durability = match self.durability {
            Durability::Durable => "",
            Durability::Throwaway => {
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            }
        };
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=400{durability}",
            self.port,
            self.dir.display()
        );
        let out = pg_command(&self.bin, "pg_ctl", self.as_root)
            .arg("-D")
            .arg(self.data())
            .args(["-o", &options, "-l"])
            .arg(self.dir.join("server.log"))
            .args(["-w", "start"])
            .stdout(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "pg_ctl start failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Stops the server in `mode` (`fast`: sessions are ended with `57P01 admin_shutdown`;
    /// `immediate`: no clean-up, as a crash); `-w` returns once it has stopped.
    pub fn stop(&self, mode: &str) -> anyhow::Result<()> {
        let out = pg_command(&self.bin, "pg_ctl", self.as_root)
            .arg("-D")
            .arg(self.data())
            .args(["-m", mode, "-w", "stop"])
            .stdout(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// A shell that waits for our stdin to close (when this process exits, however it exits),
    /// then stops the server and removes the directory.
    fn watchdog(&self) -> anyhow::Result<Child> {
        let pg_ctl = self.bin.join("pg_ctl");
        let stop = format!(
            "{}{} -D {} -m immediate stop",
            if self.as_root {
                "runuser -u postgres -- "
            } else {
                ""
            },
            pg_ctl.display(),
            self.data().display()
        );
        let script = format!(
            "read _ignored; {stop} >/dev/null 2>&1; rm -rf {}",
            self.dir.display()
        );
        Ok(Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?)
    }
}

/// The prefix of the test suite's cluster directories.
const TEST_PREFIX: &str = "referral-hub-pg-";

fn start_cluster() -> anyhow::Result<Cluster> {
    let installation = Installation::create(TEST_PREFIX, Durability::Throwaway)?;
    installation.start()?;
    Ok(Cluster {
        port: installation.port,
        _watchdog: Mutex::new(installation.watchdog()?),
    })
}

/// A PostgreSQL cluster of one test's own, which the test stops and starts again (on the same
/// port, with the same data) to make the database unreachable for a while. Removed when the test
/// process exits, like the shared one.
pub struct DedicatedCluster {
    installation: Installation,
    _watchdog: Mutex<Child>,
}

impl DedicatedCluster {
    /// Creates and starts a cluster; `None` (after a loud message) where PostgreSQL tests cannot
    /// run, as [`available`] decides.
    pub fn start() -> anyhow::Result<Option<Self>> {
        if !available() {
            return Ok(None);
        }
        let installation = Installation::create(TEST_PREFIX, Durability::Throwaway)?;
        installation.start()?;
        let watchdog = installation.watchdog()?;
        Ok(Some(Self {
            installation,
            _watchdog: Mutex::new(watchdog),
        }))
    }

    /// The URL of the cluster's `postgres` database.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            self.installation.port
        )
    }

    pub fn port(&self) -> u16 {
        self.installation.port
    }

    /// Stops the server, ending every session (`pg_ctl -m fast`): clients see their connections
    /// closed and new ones refused, as when a database host goes away.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.installation.stop("fast")
    }

    /// Starts the server again on the same port, over the same data.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.installation.start()
    }
}

/// Whether PostgreSQL tests can run here. Prints a loud message when they cannot, and panics
/// when `REQUIRE_POSTGRES=1`.
pub fn available() -> bool {
    match CLUSTER.get_or_init(|| start_cluster().map_err(|e| format!("{e:#}"))) {
        Ok(_) => true,
        Err(reason) => {
            if std::env::var("REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("REQUIRE_POSTGRES=1 but no PostgreSQL cluster could be started: {reason}");
            }
            eprintln!(
                "\n!!!!! SKIPPING a PostgreSQL test: {reason}. Install the PostgreSQL server \
                 (apt-get install postgresql) or set PG_BIN_DIR. !!!!!\n"
            );
            false
        }
    }
}

/// A new, empty database in the cluster; returns its URL.
pub async fn fresh_database() -> anyhow::Result<String> {
    let Some(Ok(cluster)) = CLUSTER.get() else {
        bail!("the PostgreSQL cluster is not running");
    };
    create_database(
        cluster.port,
        &format!("t_{}", uuid::Uuid::new_v4().simple()),
    )
    .await
}

/// Creates the empty database `name` in the cluster on `port` (the test suite's or the
/// benchmarks'); returns its URL.
pub async fn create_database(port: u16, name: &str) -> anyhow::Result<String> {
    sqlx::any::install_default_drivers();
    let admin = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let mut conn = sqlx::AnyConnection::connect(&admin).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(format!("postgres://postgres@127.0.0.1:{port}/{name}"))
}
