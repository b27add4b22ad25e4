//! `referral-hub audit verify` (alias `ledger verify`): checks the gateway's hash-chained ledger
//! offline, straight from the gateway's store, and names the first entry where the chain breaks
//! (changed, missing, out of order, or cut off after the head).
//!
//! [`verify`] is the whole check and is what the command runs; the end-to-end tests call it on
//! SQLite and PostgreSQL stores they tamper with. It opens the store as it is, without running
//! migrations, so that auditing never writes to the store it audits.

use std::path::PathBuf;

use referral_core::db::{Database, StorageConfig, store_name};
use referral_gateway::ledger::{self, ChainBroken, Verified, VerifyError};
use serde_json::json;

use crate::output::{Format, print_json};

/// Why the ledger could not be verified.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The chain does not hold: the first broken entry.
    #[error("the ledger does not verify: {0}")]
    Broken(#[from] ChainBroken),
    /// SQLite storage, and no gateway store in the data directory.
    #[error("no gateway store at {} — has the gateway run with this data directory?", .0.display())]
    NoStore(PathBuf),
    /// The store cannot be opened or its ledger read.
    #[error("cannot read the gateway's ledger: {0}")]
    Store(String),
}

impl AuditError {
    /// The broken link, when the ledger was read and does not verify.
    pub fn broken(&self) -> Option<&ChainBroken> {
        match self {
            Self::Broken(broken) => Some(broken),
            _ => None,
        }
    }
}

/// Verifies the ledger in the gateway's store named by `storage` (the gateway's own storage
/// settings: its data directory, or its PostgreSQL URL). On success, the number of entries and
/// the head hash.
pub async fn verify(storage: &StorageConfig) -> Result<Verified, AuditError> {
    if storage.database_url.is_none() {
        let file = storage
            .data_dir
            .join(format!("{}.db", store_name("gateway")));
        if !file.exists() {
            return Err(AuditError::NoStore(file));
        }
    }
    let db = Database::connect(storage, "gateway")
        .await
        .map_err(|e| AuditError::Store(e.to_string()))?;
    let verified = ledger::verify(db.pool()).await;
    db.close().await;
    verified.map_err(|e| match e {
        VerifyError::Broken(broken) => AuditError::Broken(broken),
        VerifyError::Store(e) => AuditError::Store(e.to_string()),
    })
}

/// The command: prints the result (human or JSON) and fails, so that the process exits
/// non-zero, when the ledger does not verify.
pub async fn run(storage: &StorageConfig, format: Format) -> anyhow::Result<()> {
    let result = verify(storage).await;
    match (&result, format) {
        (Ok(verified), Format::Json) => print_json(&json!({
            "verified": true,
            "entries": verified.entries,
            "head_hash": verified.head_hash,
        })),
        (Ok(verified), Format::Human) => outln!(
            "ledger verified: {} entries, head {}",
            verified.entries,
            if verified.head_hash.is_empty() {
                "(empty)"
            } else {
                &verified.head_hash
            }
        ),
        (Err(AuditError::Broken(broken)), Format::Json) => {
            print_json(&json!({"verified": false, "broken": broken_json(broken)}));
        }
        (Err(_), _) => {}
    }
    result.map(|_| ()).map_err(Into::into)
}

/// A broken link for scripts: what is wrong and at which entry.
fn broken_json(broken: &ChainBroken) -> serde_json::Value {
    let (problem, seq) = match broken {
        ChainBroken::Tampered { seq } => ("tampered", *seq),
        ChainBroken::BadLink { seq } => ("bad_link", *seq),
        ChainBroken::Gap { expected, .. } => ("missing", *expected),
        ChainBroken::HeadMismatch { head_seq, .. } => ("head_mismatch", *head_seq),
    };
    json!({"problem": problem, "seq": seq, "message": broken.to_string()})
}
