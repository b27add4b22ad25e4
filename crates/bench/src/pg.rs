//! A throwaway PostgreSQL cluster for the benchmarks, from the system's `initdb` and `pg_ctl`, in
//! a temporary directory on a free port, with PostgreSQL's default durability (`fsync` and
//! `synchronous_commit` on, unlike the test suite's cluster): "acknowledged" must mean on disk.
//! It is made as the test suite makes its own ([`Installation`], [`Durability::Durable`]).
//! And pgbench, the reference for what that cluster can commit.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};
use referral_tests::postgres::{Durability, Installation, create_database};
use sqlx::Connection as _;

/// A running cluster; stopped and removed on drop.
pub struct Cluster {
    installation: Installation,
    pub port: u16,
    pub version: String,
}

impl Cluster {
    pub fn start() -> anyhow::Result<Self> {
        let installation = Installation::create("referral-bench-pg-", Durability::Durable)
            .context("cannot create a PostgreSQL cluster (apt-get install postgresql)")?;
        installation.start()?;
        let version = Command::new(installation.bin().join("postgres"))
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        Ok(Self {
            port: installation.port(),
            installation,
            version,
        })
    }

    /// The cluster's data directory (its `postmaster.pid` names the server process).
    pub fn data_dir(&self) -> PathBuf {
        self.installation.dir().join("data")
    }

    /// A new, empty database; its URL.
    pub async fn fresh_database(&self, name: &str) -> anyhow::Result<String> {
        create_database(self.port, name).await
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
        let pgbench = if self.installation.bin().join("pgbench").exists() {
            self.installation.bin().join("pgbench")
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
        let _ = self.installation.stop("fast");
        let _ = std::fs::remove_dir_all(self.installation.dir());
    }
}

/// What pgbench measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PgBench {
    pub tps: f64,
    pub latency_avg_ms: f64,
    /// Transactions committed in the run (`number of transactions actually processed: N`).
    pub transactions: u64,
}

/// Reads `tps = N (without initial connection time)`, `latency average = N ms` and
/// `number of transactions actually processed: N` (`N/M` when pgbench was given a count).
pub fn parse_pgbench(output: &str) -> anyhow::Result<PgBench> {
    let number_after = |prefix: &str| -> Option<f64> {
        output.lines().find_map(|l| {
            l.trim()
                .strip_prefix(prefix)?
                .split(|c: char| c.is_whitespace() || c == '/')
                .next()?
                .parse()
                .ok()
        })
    };
    Ok(PgBench {
        tps: number_after("tps = ").context("no tps in pgbench's output")?,
        latency_avg_ms: number_after("latency average = ").unwrap_or(0.0),
        transactions: number_after("number of transactions actually processed: ")
            .context("no transaction count in pgbench's output")? as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The benchmarks' cluster keeps PostgreSQL's durability (the test suite's turns it off).
    #[tokio::test]
    async fn the_cluster_is_durable() {
        let cluster = match Cluster::start() {
            Ok(cluster) => cluster,
            Err(e) if std::env::var("REQUIRE_POSTGRES").as_deref() != Ok("1") => {
                eprintln!("SKIPPING the durable cluster test: {e:#}");
                return;
            }
            Err(e) => panic!("REQUIRE_POSTGRES=1 but no cluster: {e:#}"),
        };
        let url = cluster.fresh_database("durability").await.unwrap();
        let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
        for setting in ["fsync", "synchronous_commit", "full_page_writes"] {
            let value: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {setting}")))
                .fetch_one(&mut conn)
                .await
                .unwrap();
            assert_eq!(value, "on", "{setting}");
        }
        conn.close().await.unwrap();
        let dir = cluster.installation.dir().to_owned();
        drop(cluster);
        assert!(!dir.exists(), "the cluster's directory is removed on drop");
    }

    #[test]
    fn reads_pgbench_output() {
        let out = "transaction type: k.sql\nscaling factor: 1\nnumber of clients: 16\n\
                   number of transactions actually processed: 46291\n\
                   latency average = 3.456 ms\ninitial connection time = 12.3 ms\n\
                   tps = 4629.123456 (without initial connection time)\n";
        assert_eq!(
            parse_pgbench(out).unwrap(),
            PgBench {
                tps: 4629.123456,
                latency_avg_ms: 3.456,
                transactions: 46291,
            }
        );
        assert!(parse_pgbench("nothing").is_err());
    }
}
