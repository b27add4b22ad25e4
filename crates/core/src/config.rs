//! Typed settings of the hub: an optional TOML file, then environment variables
//! `REFERRAL_HUB__SECTION__KEY` (e.g. `REFERRAL_HUB__GATEWAY__LISTEN=0.0.0.0:7400`).
//! Secrets (the database URL, inline payload keys) are held in a type that never prints.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use figment::{
    Figment,
    providers::{Env, Format as _, Toml},
};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;

use crate::{db::StorageConfig, telemetry::TelemetryConfig};

/// Development mode runs its own PKI and token issuer and lets the CLI mint demo tokens.
/// Production mode refuses both: certificates and tokens come from the deployment.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Development,
    Production,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HubConfig {
    #[serde(default)]
    pub mode: Mode,
    /// SQLite files, the development PKI and issuer keys live here.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// A `postgres://` URL: when set, every component keeps its tables in its own schema there.
    #[serde(default)]
    pub database_url: Option<SecretString>,
    /// The agency directory (districts, agencies, staff).
    #[serde(default = "default_directory_file")]
    pub directory_file: PathBuf,
    /// Where certificates are read from; defaults to `<data_dir>/pki`.
    #[serde(default)]
    pub pki_dir: Option<PathBuf>,
    /// The plain-HTTP admin port (`/healthz`, `/readyz`, `/metrics`) of a component run alone
    /// (`REFERRAL_HUB__ADMIN_LISTEN=0.0.0.0:9400`); none serves no admin port. `up` gives the
    /// gateway this address and each agency the next ports in directory order.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    #[serde(default)]
    pub gateway: GatewaySection,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub delivery: DeliverySettings,
    /// Every gRPC server's limits (`[limits]`, `REFERRAL_HUB__LIMITS__…`): per-call timeout,
    /// concurrency, rate per calling agency, message size (`crate::limits`).
    #[serde(default)]
    pub limits: crate::limits::ServerLimits,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The deadline engine's periods and the holiday calendar file.
    #[serde(default)]
    pub deadlines: referral_deadlines::DeadlineSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GatewaySection {
    /// Where the gateway listens.
    #[serde(default = "default_gateway_listen")]
    pub listen: SocketAddr,
    /// How agency services reach the gateway.
    #[serde(default = "default_gateway_endpoint")]
    pub endpoint: String,
    /// The file of keys that seal message payloads at rest: one key per line,
    /// `<key id> <base64 of 32 random bytes>`, readable only by its owner (mode 0600). In
    /// development mode it defaults to `<pki_dir>/payload-keys`, generated on first start; in
    /// production it (or `payload_keys`) must be set.
    #[serde(default)]
    pub payload_key_file: Option<PathBuf>,
    /// Payload keys given as a secret (`REFERRAL_HUB__GATEWAY__PAYLOAD_KEYS`): the key file's
    /// lines, separated by newlines or `;`. May be given beside the file.
    #[serde(default)]
    pub payload_keys: Option<SecretString>,
    /// The id of the key new payloads are sealed with; may be left out when there is one key.
    #[serde(default)]
    pub payload_active_key: Option<String>,
    /// Days a delivered message's payload is kept before it is removed (0: at delivery).
    #[serde(default = "default_payload_retention_days")]
    pub payload_retention_days: u32,
    /// The file holding the secret the children's pseudonyms are keyed with (HMAC-SHA-256 of the
    /// IIN): base64 of at least 32 random bytes, readable only by its owner. Every replica needs
    /// the same secret, and it must outlive restarts. In development mode it defaults to
    /// `<pki_dir>/child-link-secret`, generated on first start; in production it (or
    /// `child_link_secret`) must be set.
    #[serde(default)]
    pub child_link_secret_file: Option<PathBuf>,
    /// The same secret given directly (`REFERRAL_HUB__GATEWAY__CHILD_LINK_SECRET`, base64).
    #[serde(default)]
    pub child_link_secret: Option<SecretString>,
    /// A directory with the need-to-know policy (`need_to_know.cedarschema`,
    /// `need_to_know.cedar`) to use instead of the one built into the gateway.
    #[serde(default)]
    pub policy_dir: Option<PathBuf>,
}

impl GatewaySection {
    /// The inline child-link secret, exposed to be decoded by the gateway's launcher.
    pub fn inline_child_link_secret(&self) -> Option<&str> {
        self.child_link_secret.as_ref().map(|k| k.expose_secret())
    }

    /// The inline payload keys, exposed to be loaded into the gateway's keyring.
    pub fn inline_payload_keys(&self) -> Option<&str> {
        self.payload_keys.as_ref().map(|k| k.expose_secret())
    }
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            listen: default_gateway_listen(),
            endpoint: default_gateway_endpoint(),
            payload_key_file: None,
            payload_keys: None,
            payload_active_key: None,
            payload_retention_days: default_payload_retention_days(),
            child_link_secret_file: None,
            child_link_secret: None,
            policy_dir: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSection {
    /// The `iss` staff tokens must carry.
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// Directory holding `<agency-id>.jwks.json` key sets; defaults to `<pki_dir>/issuer`.
    #[serde(default)]
    pub jwks_dir: Option<PathBuf>,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            issuer: default_issuer(),
            jwks_dir: None,
        }
    }
}

/// How the gateway's delivery worker retries a recipient that is down.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct DeliverySettings {
    /// First retry delay; each further retry doubles it, with full jitter.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// The longest delay between two attempts.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// How long one attempt may take before it counts as failed.
    #[serde(default = "default_attempt_timeout_ms")]
    pub attempt_timeout_ms: u64,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            attempt_timeout_ms: default_attempt_timeout_ms(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}
fn default_directory_file() -> PathBuf {
    PathBuf::from("deploy/demo-district.toml")
}
fn default_gateway_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7400))
}
fn default_gateway_endpoint() -> String {
    "https://127.0.0.1:7400".into()
}
fn default_payload_retention_days() -> u32 {
    7
}
fn default_issuer() -> String {
    crate::auth::DEV_ISSUER.into()
}
fn default_initial_backoff_ms() -> u64 {
    500
}
fn default_max_backoff_ms() -> u64 {
    5 * 60 * 1000
}
fn default_attempt_timeout_ms() -> u64 {
    10_000
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl HubConfig {
    /// Reads `file` when given (it must exist then), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError(format!(
                    "the configuration file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(Env::prefixed("REFERRAL_HUB__").split("__"));
        let config: HubConfig = figment.extract().map_err(|e| ConfigError(e.to_string()))?;
        Ok(config)
    }

    pub fn pki_dir(&self) -> PathBuf {
        self.pki_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("pki"))
    }

    pub fn jwks_dir(&self) -> PathBuf {
        self.auth
            .jwks_dir
            .clone()
            .unwrap_or_else(|| self.pki_dir().join("issuer"))
    }

    pub fn storage(&self) -> StorageConfig {
        StorageConfig {
            data_dir: self.data_dir.clone(),
            database_url: self.database_url.clone(),
        }
    }
}
