//! The append-only, hash-chained ledger of every message's metadata.
//!
//! Each entry holds the SHA-256 of the payload (never the payload itself) and the hash of the
//! previous entry; its own hash covers every field plus that previous hash. Changing, removing or
//! reordering any stored entry breaks the chain from that entry on, and [`verify`] names it.

use referral_core::directory::role_name;
use referral_proto::v1::{
    ConfidentialityLabel, Envelope, FormKind, PurposeOfUse, Role, Sensitivity,
};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use sqlx::{Any, AnyPool, Row as _, Transaction};

/// The hash the first entry chains to.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerEvent {
    /// The gateway acknowledged the message (it is stored and queued).
    Accepted,
    /// The recipient's inbox accepted the message.
    Delivered,
}

impl LedgerEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "message.accepted",
            Self::Delivered => "message.delivered",
        }
    }
}

/// The metadata of one ledger entry, before it is chained.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EntryFields {
    pub event: String,
    pub message_id: String,
    pub sender_agency_id: String,
    pub recipient_agency_id: String,
    pub acting_user_id: String,
    pub acting_role: String,
    pub purpose_of_use: String,
    pub form_kind: String,
    pub case_reference: String,
    pub confidentiality: String,
    pub payload_sha256: String,
    /// For audit events: the sections disclosed, or asked for when denied (comma-separated).
    /// Absent from the hash when empty, so entries written before audit events still verify.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sections: String,
    /// For audit events: `allowed` or `denied`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub outcome: String,
}

impl EntryFields {
    /// The ledger's view of an envelope: metadata and the payload's hash, never the payload.
    pub fn for_envelope(event: LedgerEvent, env: &Envelope, payload_hash: &str) -> Self {
        let acting = env.acting_user.clone().unwrap_or_default();
        Self {
            event: event.as_str().to_owned(),
            message_id: env.message_id.clone(),
            sender_agency_id: env.sender_agency_id.clone(),
            recipient_agency_id: env.recipient_agency_id.clone(),
            acting_user_id: acting.user_id,
            acting_role: Role::try_from(acting.role)
                .ok()
                .filter(|r| *r != Role::Unspecified)
                .map(role_name)
                .unwrap_or_default(),
            purpose_of_use: enum_name(env.purpose_of_use, |e: PurposeOfUse| e.as_str_name()),
            form_kind: enum_name(env.form_kind, |e: FormKind| e.as_str_name()),
            case_reference: env.case_reference.clone(),
            confidentiality: enum_name(env.confidentiality, |e: ConfidentialityLabel| {
                e.as_str_name()
            }),
            payload_sha256: payload_hash.to_owned(),
            // The recipient's view, when the gateway's policy filtered the message.
            sections: env
                .view_sections
                .iter()
                .filter_map(|s| Sensitivity::try_from(*s).ok())
                .map(crate::policy::section_name)
                .collect::<Vec<_>>()
                .join(","),
            outcome: String::new(),
        }
    }
}

fn enum_name<E: TryFrom<i32>>(value: i32, name: impl Fn(E) -> &'static str) -> String {
    E::try_from(value).map(name).unwrap_or("UNKNOWN").to_owned()
}

/// The canonical form that is hashed: field order is fixed by this struct.
#[derive(Serialize)]
struct Canonical<'a> {
    seq: i64,
    recorded_at: i64,
    prev_hash: &'a str,
    #[serde(flatten)]
    fields: &'a EntryFields,
}

fn entry_hash(seq: i64, recorded_at: i64, prev_hash: &str, fields: &EntryFields) -> String {
    let canonical = Canonical {
        seq,
        recorded_at,
        prev_hash,
        fields,
    };
    // Serialising a plain struct of strings and integers cannot fail.
    let bytes = serde_json::to_vec(&canonical).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

/// The hex SHA-256 of a payload.
pub fn payload_sha256(payload: &[u8]) -> String {
    hex::encode(Sha256::digest(payload))
}

/// Takes the ledger's write lock for the rest of the transaction (a row lock on PostgreSQL, the
/// database write lock on SQLite) and reads its head. Call it first in a transaction that reads
/// before it appends.
pub async fn lock_head(tx: &mut Transaction<'static, Any>) -> Result<LockedHead, sqlx::Error> {
    let head = sqlx::query(
        "UPDATE ledger_head SET last_seq = last_seq WHERE id = 1 RETURNING last_seq, last_hash",
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(LockedHead {
        last_seq: head.try_get("last_seq")?,
        last_hash: head.try_get("last_hash")?,
        moved: false,
    })
}

/// The ledger's head as the transaction holding its write lock sees it ([`lock_head`]). While
/// the lock is held nobody else appends, so the head is kept here: each append is one `INSERT`
/// (chained in memory), and the head row is written once, by [`LockedHead::store`], which must
/// run before the transaction commits. (Committed without it, the next append would reuse a
/// sequence number and fail on the ledger's primary key: loudly, never a forked chain.)
#[derive(Debug)]
pub struct LockedHead {
    last_seq: i64,
    last_hash: String,
    /// Entries were appended since the head row was read or written.
    moved: bool,
}

impl LockedHead {
    /// Appends an entry inside the lock's transaction, so that the entry exists exactly when the
    /// change it records does. Returns the entry's sequence number.
    pub async fn append(
        &mut self,
        tx: &mut Transaction<'static, Any>,
        recorded_at: i64,
        fields: &EntryFields,
    ) -> Result<i64, sqlx::Error> {
        self.append_many(tx, recorded_at, std::slice::from_ref(fields))
            .await
    }

    /// Appends `entries`, in order, in one `INSERT` whatever their number; returns the first
    /// entry's sequence number (the others follow it).
    pub async fn append_many(
        &mut self,
        tx: &mut Transaction<'static, Any>,
        recorded_at: i64,
        entries: &[EntryFields],
    ) -> Result<i64, sqlx::Error> {
        if entries.is_empty() {
            return Err(sqlx::Error::Protocol("no ledger entries to append".into()));
        }
        let first_seq = self.last_seq + 1;
        let chained: Vec<ChainedEntry> = entries
            .iter()
            .map(|fields| self.chain(recorded_at, fields.clone()))
            .collect();
        insert_chained(tx, chained).await?;
        Ok(first_seq)
    }

    /// Chains an entry after the head in memory: its sequence number and hashes, the head moved
    /// past it. Nothing is written: the caller inserts it ([`insert_chained`]) in the same
    /// transaction before [`store`](Self::store) (stored without it, the chain has a gap that
    /// `verify` reports).
    pub fn chain(&mut self, recorded_at: i64, fields: EntryFields) -> ChainedEntry {
        let seq = self.last_seq + 1;
        let entry_hash = entry_hash(seq, recorded_at, &self.last_hash, &fields);
        let prev_hash = std::mem::replace(&mut self.last_hash, entry_hash.clone());
        self.last_seq = seq;
        self.moved = true;
        ChainedEntry {
            seq,
            recorded_at,
            prev_hash,
            entry_hash,
            fields,
        }
    }

    /// Writes the head row if entries were appended; call it last before the commit.
    pub async fn store(mut self, tx: &mut Transaction<'static, Any>) -> Result<(), sqlx::Error> {
        if self.moved {
            sqlx::query("UPDATE ledger_head SET last_seq = $1, last_hash = $2 WHERE id = 1")
                .bind(self.last_seq)
                .bind(&self.last_hash)
                .execute(&mut **tx)
                .await?;
            self.moved = false;
        }
        Ok(())
    }
}

/// An entry chained by [`LockedHead::chain`], not yet written.
#[derive(Debug, Clone)]
pub struct ChainedEntry {
    pub seq: i64,
    recorded_at: i64,
    prev_hash: String,
    entry_hash: String,
    fields: EntryFields,
}

/// Writes chained entries (of the transaction holding the lock), in one `INSERT` per 512.
pub async fn insert_chained(
    tx: &mut Transaction<'static, Any>,
    entries: Vec<ChainedEntry>,
) -> Result<(), sqlx::Error> {
    for chunk in crate::store::owned_chunks(entries, 512) {
        // Placeholders only: the statement's text holds no value.
        let mut sql = String::from(
            "INSERT INTO ledger (seq, recorded_at, event, message_id, sender_agency_id, \
             recipient_agency_id, acting_user_id, acting_role, purpose_of_use, form_kind, \
             case_reference, confidentiality, payload_sha256, prev_hash, entry_hash, sections, \
             outcome) VALUES ",
        );
        crate::store::push_rows(&mut sql, chunk.len(), ENTRY_COLUMNS);
        let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
        for entry in chunk {
            let fields = entry.fields;
            insert = insert
                .bind(entry.seq)
                .bind(entry.recorded_at)
                .bind(fields.event)
                .bind(fields.message_id)
                .bind(fields.sender_agency_id)
                .bind(fields.recipient_agency_id)
                .bind(fields.acting_user_id)
                .bind(fields.acting_role)
                .bind(fields.purpose_of_use)
                .bind(fields.form_kind)
                .bind(fields.case_reference)
                .bind(fields.confidentiality)
                .bind(fields.payload_sha256)
                .bind(entry.prev_hash)
                .bind(entry.entry_hash)
                .bind(fields.sections)
                .bind(fields.outcome);
        }
        insert.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Appends an entry in a transaction that does not hold the ledger's lock: takes it, appends and
/// writes the head (three statements). Returns the entry's sequence number.
pub async fn append(
    tx: &mut Transaction<'static, Any>,
    recorded_at: i64,
    fields: &EntryFields,
) -> Result<i64, sqlx::Error> {
    append_many(tx, recorded_at, std::slice::from_ref(fields)).await
}

/// The columns of a ledger row, in the order [`LockedHead::append_many`] binds them.
const ENTRY_COLUMNS: usize = 17;

/// Appends `entries`, in order, in a transaction that does not hold the ledger's lock, in three
/// statements whatever their number. Returns the first entry's sequence number.
pub async fn append_many(
    tx: &mut Transaction<'static, Any>,
    recorded_at: i64,
    entries: &[EntryFields],
) -> Result<i64, sqlx::Error> {
    let mut head = lock_head(tx).await?;
    let first = head.append_many(tx, recorded_at, entries).await?;
    head.store(tx).await?;
    Ok(first)
}

/// The outcome of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub entries: i64,
    pub head_hash: String,
}

/// The first place where the chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBroken {
    #[error("ledger entry {seq}: its contents do not match its hash (the entry was changed)")]
    Tampered { seq: i64 },
    #[error("ledger entry {seq}: it does not chain to the entry before it")]
    BadLink { seq: i64 },
    #[error("ledger entry {expected} is missing (found {found} in its place)")]
    Gap { expected: i64, found: i64 },
    #[error("the ledger head names entry {head_seq}, but the last entry is {last_seq}")]
    HeadMismatch { head_seq: i64, last_seq: i64 },
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Broken(#[from] ChainBroken),
    #[error("cannot read the ledger: {0}")]
    Store(#[from] sqlx::Error),
}

/// Recomputes every entry's hash and link, in order.
pub async fn verify(pool: &AnyPool) -> Result<Verified, VerifyError> {
    let rows = sqlx::query(
        "SELECT seq, recorded_at, event, message_id, sender_agency_id, recipient_agency_id, \
         acting_user_id, acting_role, purpose_of_use, form_kind, case_reference, \
         confidentiality, payload_sha256, prev_hash, entry_hash, sections, outcome \
         FROM ledger ORDER BY seq",
    )
    .fetch_all(pool)
    .await?;
    let mut expected_prev = GENESIS_HASH.to_owned();
    let mut expected_seq = 1_i64;
    for row in &rows {
        let seq: i64 = row.try_get("seq")?;
        if seq != expected_seq {
            return Err(ChainBroken::Gap {
                expected: expected_seq,
                found: seq,
            }
            .into());
        }
        let fields = EntryFields {
            event: row.try_get("event")?,
            message_id: row.try_get("message_id")?,
            sender_agency_id: row.try_get("sender_agency_id")?,
            recipient_agency_id: row.try_get("recipient_agency_id")?,
            acting_user_id: row.try_get("acting_user_id")?,
            acting_role: row.try_get("acting_role")?,
            purpose_of_use: row.try_get("purpose_of_use")?,
            form_kind: row.try_get("form_kind")?,
            case_reference: row.try_get("case_reference")?,
            confidentiality: row.try_get("confidentiality")?,
            payload_sha256: row.try_get("payload_sha256")?,
            sections: row.try_get("sections")?,
            outcome: row.try_get("outcome")?,
        };
        let recorded_at: i64 = row.try_get("recorded_at")?;
        let prev_hash: String = row.try_get("prev_hash")?;
        let stored_hash: String = row.try_get("entry_hash")?;
        if entry_hash(seq, recorded_at, &prev_hash, &fields) != stored_hash {
            return Err(ChainBroken::Tampered { seq }.into());
        }
        if prev_hash != expected_prev {
            return Err(ChainBroken::BadLink { seq }.into());
        }
        expected_prev = stored_hash;
        expected_seq += 1;
    }
    let head = sqlx::query("SELECT last_seq, last_hash FROM ledger_head WHERE id = 1")
        .fetch_one(pool)
        .await?;
    let head_seq: i64 = head.try_get("last_seq")?;
    let head_hash: String = head.try_get("last_hash")?;
    let last_seq = expected_seq - 1;
    if head_seq != last_seq || head_hash != expected_prev {
        return Err(ChainBroken::HeadMismatch { head_seq, last_seq }.into());
    }
    Ok(Verified {
        entries: last_seq,
        head_hash,
    })
}
