//! A throwaway PostgreSQL cluster for the test process, started from the system's `initdb` and
//! `pg_ctl`, in a temporary directory, on a free port. Each test gets its own fresh database.
//!
//! The cluster is stopped and its directory removed when the test process exits: a small shell
//! watchdog reads our stdin, which closes when we exit, and then stops the server.
//!
//! Without the PostgreSQL server binaries the PostgreSQL variants of the tests are skipped with
//! a loud message, unless `REQUIRE_POSTGRES=1`, which turns that into a failure (CI sets it).

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

fn start_cluster() -> anyhow::Result<Cluster> {
    let bin = bin_dir().context("PostgreSQL server binaries (initdb, pg_ctl) not found")?;
    let as_root = running_as_root();
    let dir = tempfile::Builder::new()
        .prefix("referral-hub-pg-")
        .tempdir()?
        .keep();
    if as_root {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()?;
        if !status.success() {
            bail!("cannot hand the cluster directory to the postgres user");
        }
    }
    let data = dir.join("data");
    let out = pg_command(&bin, "initdb", as_root)
        .args(["-D"])
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        ])
        .stdout(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
         -c full_page_writes=off -c max_connections=400",
        dir.display()
    );
    // `pg_ctl -w` returns once the server accepts connections: nothing to poll.
    let out = pg_command(&bin, "pg_ctl", as_root)
        .arg("-D")
        .arg(&data)
        .args(["-o", &options, "-l"])
        .arg(dir.join("server.log"))
        .args(["-w", "start"])
        .stdout(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pg_ctl = bin.join("pg_ctl");
    let stop = if as_root {
        format!(
            "runuser -u postgres -- {} -D {} -m immediate stop",
            pg_ctl.display(),
            data.display()
        )
    } else {
        format!(
            "{} -D {} -m immediate stop",
            pg_ctl.display(),
            data.display()
        )
    };
    let script = format!(
        "read _ignored; {stop} >/dev/null 2>&1; rm -rf {}",
        dir.display()
    );
    let watchdog = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Cluster {
        port,
        _watchdog: Mutex::new(watchdog),
    })
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
    sqlx::any::install_default_drivers();
    let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port);
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::AnyConnection::connect(&admin).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(format!(
        "postgres://postgres@127.0.0.1:{}/{name}",
        cluster.port
    ))
}
