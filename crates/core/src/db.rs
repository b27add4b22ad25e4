//! Storage: one sqlx pool per component, SQLite by default and PostgreSQL when a URL is set.
//!
//! Both back ends run the same SQL through sqlx's `Any` driver. The SQL is kept portable:
//! `$1` placeholders (SQLite accepts them), `BIGINT`, `TEXT` and `BYTEA` columns (SQLite stores
//! a `BYTEA` value as the blob it is given), instants as microseconds in `BIGINT`, and
//! `INSERT … ON CONFLICT … DO NOTHING` for idempotent writes. On SQLite each component has its own
//! file in the data directory; on PostgreSQL each component has its own schema.

use std::{borrow::Cow, path::PathBuf, str::FromStr as _, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use sqlx::{
    AssertSqlSafe, Executor as _,
    any::{AnyPoolOptions, install_default_drivers},
    migrate::{Migration, MigrationType, Migrator},
};

pub use sqlx::{Any, AnyPool, Row, Transaction};

/// Which kind of database a component is using.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where components keep their data.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct StorageConfig {
    /// Directory of the SQLite files (and the development PKI).
    pub data_dir: PathBuf,
    /// A `postgres://` URL; when set, every component uses its own schema in this database.
    #[serde(default)]
    pub database_url: Option<SecretString>,
}

/// How long a PostgreSQL call waits for a pooled connection, connecting included. While the
/// database is unreachable, sqlx retries a refused connection until this passes, then answers
/// `PoolTimedOut`, which callers see as `UNAVAILABLE`: short, so that calls fail fast instead of
/// hanging, and still far longer than a healthy pool makes anyone wait (a wait this long for
/// one of 8 connections means the store is gone or badly overloaded, and the server's concurrency
/// limit sheds load before that).
pub const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a database error means the store cannot be reached right now (a retry later may
/// succeed), not that the statement was wrong: no connection within the acquire timeout, a
/// connection lost mid-call, or PostgreSQL's operator-intervention (`57P01` shutting down, `57P03`
/// starting up…) and connection-exception (`08…`) classes.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("57P") || code.starts_with("08")),
        _ => false,
    }
}

/// A migration embedded in the binary: (version, description, SQL).
pub type EmbeddedMigration = (i64, &'static str, &'static str);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the database URL is not a postgres:// URL")]
    BadUrl,
    #[error("cannot connect to the {component} store: {source}")]
    Connect {
        component: String,
        source: sqlx::Error,
    },
    #[error("cannot migrate the {component} store: {source}")]
    Migrate {
        component: String,
        source: sqlx::migrate::MigrateError,
    },
}

/// A component's store.
#[derive(Clone, Debug)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
    component: String,
    /// The newest migration [`open`](Self::open) ran, which [`check_ready`](Self::check_ready)
    /// looks for; `None` for a store opened without migrating it.
    newest_migration: Option<i64>,
}

/// Why a store is not ready to serve. The text names the component and the reason's kind only:
/// never a connection string or a driver's message.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    #[error("the {component} store is unreachable")]
    Unreachable { component: String },
    #[error("the {component} store's migrations have not run")]
    NotMigrated { component: String },
    #[error("the {component} store did not answer within {READY_TIMEOUT:?}")]
    Timeout { component: String },
}

/// How long a readiness check waits for the store.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The schema (PostgreSQL) or file stem (SQLite) of a component: `school-1` becomes `school_1`.
pub fn store_name(component: &str) -> String {
    component
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

impl Database {
    /// Opens (creating if needed) the store of `component` and runs its migrations.
    pub async fn open(
        storage: &StorageConfig,
        component: &str,
        migrations: &'static [EmbeddedMigration],
    ) -> Result<Self, DbError> {
        let mut db = Self::connect(storage, component).await?;
        db.migrate(migrations).await?;
        db.newest_migration = migrations.iter().map(|(version, _, _)| *version).max();
        Ok(db)
    }

    /// Opens the store of `component` as it is, without migrating it (tools and tests that read
    /// a store another process owns).
    pub async fn connect(storage: &StorageConfig, component: &str) -> Result<Self, DbError> {
        install_default_drivers();
        let name = store_name(component);
        let connect_err = |source| DbError::Connect {
            component: component.to_owned(),
            source,
        };
        let (pool, backend) = match &storage.database_url {
            Some(url) => {
                let url = url.expose_secret();
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(DbError::BadUrl);
                }
                // Create the component's schema once, then pin every pooled connection to it.
                let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(url)
                    .await
                    .map_err(connect_err)?;
                conn.execute(AssertSqlSafe(format!(
                    "CREATE SCHEMA IF NOT EXISTS \"{name}\""
                )))
                .await
                .map_err(connect_err)?;
                let set_path = format!("SET search_path TO \"{name}\"");
                let pool = AnyPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(PG_ACQUIRE_TIMEOUT)
                    .after_connect(move |conn, _| {
                        let set_path = set_path.clone();
                        Box::pin(async move {
                            conn.execute(AssertSqlSafe(set_path)).await?;
                            Ok(())
                        })
                    })
                    .connect(url)
                    .await
                    .map_err(connect_err)?;
                (pool, Backend::Postgres)
            }
            None => {
                std::fs::create_dir_all(&storage.data_dir).map_err(|source| DbError::DataDir {
                    path: storage.data_dir.clone(),
                    source,
                })?;
                let path = storage.data_dir.join(format!("{name}.db"));
                let url = format!("sqlite://{}?mode=rwc", path.display());
                // Validate the URL early so a bad data directory gives one clear error.
                sqlx::any::AnyConnectOptions::from_str(&url).map_err(connect_err)?;
                let pool = AnyPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(Duration::from_secs(30))
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // WAL lets readers run beside the one writer; the busy timeout makes a
                            // second writer wait for the lock instead of failing.
                            conn.execute(sqlx::raw_sql(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                                 PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 30000;",
                            ))
                            .await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await
                    .map_err(connect_err)?;
                (pool, Backend::Sqlite)
            }
        };
        Ok(Self {
            pool,
            backend,
            component: component.to_owned(),
            newest_migration: None,
        })
    }

    async fn migrate(&self, migrations: &'static [EmbeddedMigration]) -> Result<(), DbError> {
        let migrations: Vec<Migration> = migrations
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    sqlx::SqlStr::from_static(sql),
                    false,
                )
            })
            .collect();
        let migrator = Migrator {
            migrations: Cow::Owned(migrations),
            ..Migrator::DEFAULT
        };
        migrator
            .run(&self.pool)
            .await
            .map_err(|source| DbError::Migrate {
                component: self.component.clone(),
                source,
            })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn component(&self) -> &str {
        &self.component
    }

    /// Starts a transaction: every multi-statement write goes through one.
    ///
    /// On SQLite it is `BEGIN IMMEDIATE`, which takes the write lock at once (waiting for it
    /// up to the busy timeout). A deferred transaction that reads and then writes fails with
    /// `database is locked` at once, without waiting, when another connection committed a
    /// write in between (WAL mode cannot upgrade its stale snapshot): under concurrent calls
    /// (tests/tests/overload.rs) that was an `INTERNAL` answer for a message already sent.
    pub async fn begin(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// Whether the store can serve: it answers within [`READY_TIMEOUT`] and the newest
    /// migration this component embeds is recorded as applied (`_sqlx_migrations`). The
    /// admin port's `/readyz` asks this.
    pub async fn check_ready(&self) -> Result<(), NotReady> {
        let component = self.component.clone();
        let check = async {
            match self.newest_migration {
                Some(version) => sqlx::query_scalar::<_, i64>(
                    "SELECT COUNT(*) FROM _sqlx_migrations WHERE version = $1 AND success",
                )
                .bind(version)
                .fetch_one(&self.pool)
                .await
                .map(|applied| applied > 0),
                None => sqlx::query_scalar::<_, i64>("SELECT 1")
                    .fetch_one(&self.pool)
                    .await
                    .map(|_| true),
            }
        };
        match tokio::time::timeout(READY_TIMEOUT, check).await {
            Err(_) => Err(NotReady::Timeout { component }),
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(NotReady::NotMigrated { component }),
            // A missing migrations table (PostgreSQL's undefined_table, SQLite's "no such
            // table") is a store nobody migrated; anything else (a closed pool, a refused
            // connection, a timeout acquiring one) is an unreachable store.
            Ok(Err(sqlx::Error::Database(e)))
                if e.code().as_deref() == Some("42P01")
                    || e.message().contains("no such table") =>
            {
                Err(NotReady::NotMigrated { component })
            }
            Ok(Err(e)) => {
                tracing::warn!(component = %self.component, error = %e, "store unreachable");
                Err(NotReady::Unreachable { component })
            }
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
