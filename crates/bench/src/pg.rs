//! A throwaway PostgreSQL cluster for the benchmarks, from the system's `initdb` and `pg_ctl`, in
//! a temporary directory on a free port, with PostgreSQL's default durability (`fsync` and
//! `synchronous_commit` on, unlike the test suite's cluster): "acknowledged" must mean on disk.
//! And pgbench, the reference for what that cluster can commit.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use sqlx::Connection as _;

/// Where the PostgreSQL binaries are: `$PG_BIN_DIR`, `pg_config --bindir`, or the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no PostgreSQL server binaries (apt-get install postgresql)")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .context("no PostgreSQL server binaries (apt-get install postgresql)")
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A server tool, run as `postgres` when we are root (the server refuses root).
fn tool(bin: &Path, name: &str, as_root: bool) -> Command {
    if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(name));
        c
    } else {
        Command::new(bin.join(name))
    }
}

/// A running cluster; stopped and removed on drop.
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    as_root: bool,
    pub port: u16,
    pub version: String,
}

impl Cluster {
    pub fn start() -> anyhow::Result<Self> {
        let bin = bin_dir()?;
        let as_root = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix("referral-bench-pg-")
            .tempdir()?
            .keep();
        if as_root {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()?
                .success();
            if !ok {
                bail!("cannot hand the cluster directory to the postgres user");
            }
        }
        let data = dir.join("data");
        let out = tool(&bin, "initdb", as_root)
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--encoding=UTF8"])
            .stdout(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = crate::hub::free_port()?;
        // Defaults except the connection limit (128 clients, pgbench and the hub's pools).
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=400",
            dir.display()
        );
        let out = tool(&bin, "pg_ctl", as_root)
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
        let version = Command::new(bin.join("postgres"))
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        Ok(Self {
            bin,
            dir,
            as_root,
            port,
            version,
        })
    }

    fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A new, empty database; its URL.
    pub async fn fresh_database(&self, name: &str) -> anyhow::Result<String> {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.admin_url()).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(format!(
            "postgres://postgres@127.0.0.1:{}/{name}",
            self.port
        ))
    }

    /// pgbench's commit rate of single-row INSERTs (one transaction each, about the size of a
    /// message row) with `clients` connections on 2 threads for `seconds`: transactions per
    /// second and average latency in ms.
    pub async fn pgbench_insert(&self, clients: u32, seconds: u32) -> anyhow::Result<PgBench> {
        let url = self
            .fresh_database(&format!("pgbench_c{clients}_{}", std::process::id()))
            .await?;
        let mut conn = sqlx::AnyConnection::connect(&url).await?;
        sqlx::query(
            "CREATE TABLE k_reference (id BIGSERIAL PRIMARY KEY, key TEXT NOT NULL UNIQUE, \
             body TEXT NOT NULL, created_at BIGINT NOT NULL)",
        )
        .execute(&mut conn)
        .await?;
        conn.close().await?;
        let script = tempfile::Builder::new()
            .prefix("k-insert-")
            .suffix(".sql")
            .tempfile()?;
        std::fs::write(
            script.path(),
            "INSERT INTO k_reference (key, body, created_at) \
             VALUES (md5(random()::text || clock_timestamp()::text), repeat('x', 1000), \
             (extract(epoch from clock_timestamp()) * 1000000)::bigint);\n",
        )?;
        let pgbench = if self.bin.join("pgbench").exists() {
            self.bin.join("pgbench")
        } else {
            PathBuf::from("pgbench")
        };
        let name = url.rsplit('/').next().unwrap_or_default().to_owned();
        let out = tokio::process::Command::new(pgbench)
            .args(["-n", "-c", &clients.to_string(), "-j", "2", "-T"])
            .arg(seconds.to_string())
            .arg("-f")
            .arg(script.path())
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg(&name)
            .output()
            .await
            .context("cannot run pgbench (apt-get install postgresql-client)")?;
        if !out.status.success() {
            bail!("pgbench failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        parse_pgbench(&String::from_utf8_lossy(&out.stdout))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = tool(&self.bin, "pg_ctl", self.as_root)
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What pgbench measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PgBench {
    pub tps: f64,
    pub latency_avg_ms: f64,
}

/// Reads `tps = N (without initial connection time)` and `latency average = N ms`.
pub fn parse_pgbench(output: &str) -> anyhow::Result<PgBench> {
    let number_after = |prefix: &str| -> Option<f64> {
        output.lines().find_map(|l| {
            l.trim()
                .strip_prefix(prefix)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    };
    Ok(PgBench {
        tps: number_after("tps = ").context("no tps in pgbench's output")?,
        latency_avg_ms: number_after("latency average = ").unwrap_or(0.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pgbench_output() {
        let out = "transaction type: k.sql\nscaling factor: 1\nnumber of clients: 16\n\
                   latency average = 3.456 ms\ninitial connection time = 12.3 ms\n\
                   tps = 4629.123456 (without initial connection time)\n";
        assert_eq!(
            parse_pgbench(out).unwrap(),
            PgBench {
                tps: 4629.123456,
                latency_avg_ms: 3.456
            }
        );
        assert!(parse_pgbench("nothing").is_err());
    }
}
