//! The gateway's tables: migrations, the directory kept in the store, and message rows.
//!
//! A message row keeps its envelope without payload (metadata) in `envelope`, and the payload
//! sealed apart (`sealed_payload`, see [`crate::sealing`]) until it is removed after delivery.
//! [`open_envelope`] is the one way to get a stored message's envelope with its payload.

use prost::Message as _;
use referral_core::{
    db::{Database, EmbeddedMigration},
    directory::{AgencyEntry, Directory, District},
};
use referral_proto::v1::{Envelope, FormKind, Payload, payload};
use sqlx::{Any, AnyPool, Row as _, Transaction};

use crate::{
    ledger::{self, EntryFields, LedgerEvent},
    sealing::{PayloadSealer, SealError},
};

/// Numbered, commented migrations; never edited once landed.
pub const MIGRATIONS: &[EmbeddedMigration] = &[
    (
        1,
        "gateway directory, messages, outbox and ledger",
        include_str!("../migrations/0001_gateway.sql"),
    ),
    (
        2,
        "case events, deadline engine cursor, case clocks, deadlines and alerts",
        include_str!("../migrations/0002_deadlines.sql"),
    ),
    (
        3,
        "need to know: referrals, cases, relations, disclosure grants, audit columns",
        include_str!("../migrations/0003_confidentiality.sql"),
    ),
    (
        4,
        "payloads sealed at rest and removed after delivery",
        include_str!("../migrations/0004_sealed_payloads.sql"),
    ),
    (
        5,
        "agency clocks: clock events, deadlines' subject and referring agency",
        include_str!("../migrations/0005_agency_clocks.sql"),
    ),
    (
        6,
        "need to know: incident referrals' circumstances, the police's word on a child's role",
        include_str!("../migrations/0006_incident_circumstances.sql"),
    ),
    (
        7,
        "the trace context of the Send call that accepted a message",
        include_str!("../migrations/0007_trace_context.sql"),
    ),
    (
        8,
        "delivery order: outbox rows know their recipient, case and acceptance sequence",
        include_str!("../migrations/0008_delivery_order.sql"),
    ),
];

/// Delivery state of a message as stored.
pub const STATE_QUEUED: &str = "queued";
pub const STATE_DELIVERED: &str = "delivered";
pub const STATE_ANSWERED: &str = "answered";

/// Makes the store's directory the file's: inserts and updates its districts and agencies and
/// removes agencies the file no longer lists (their certificates stop being accepted), in one
/// transaction. The store, not the file, is what the running gateway reads.
pub async fn save_directory(db: &Database, directory: &Directory) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    let stored: Vec<String> = sqlx::query_scalar("SELECT agency_id FROM agencies")
        .fetch_all(&mut *tx)
        .await?;
    for gone in stored.iter().filter(|id| directory.agency(id).is_none()) {
        sqlx::query("DELETE FROM agencies WHERE agency_id = $1")
            .bind(gone)
            .execute(&mut *tx)
            .await?;
    }
    for d in &directory.districts {
        sqlx::query(
            "INSERT INTO districts (district_id, name_kk, name_ru, time_zone) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (district_id) DO UPDATE SET name_kk = excluded.name_kk, \
             name_ru = excluded.name_ru, time_zone = excluded.time_zone",
        )
        .bind(&d.id)
        .bind(&d.name_kk)
        .bind(&d.name_ru)
        .bind(&d.time_zone)
        .execute(&mut *tx)
        .await?;
    }
    for a in &directory.agencies {
        sqlx::query(
            "INSERT INTO agencies (agency_id, kind, district_id, name_kk, name_ru, endpoint) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (agency_id) DO UPDATE SET \
             kind = excluded.kind, district_id = excluded.district_id, name_kk = excluded.name_kk, \
             name_ru = excluded.name_ru, endpoint = excluded.endpoint",
        )
        .bind(&a.id)
        .bind(&a.kind)
        .bind(&a.district)
        .bind(&a.name_kk)
        .bind(&a.name_ru)
        .bind(&a.endpoint)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Reads the directory back from the store.
pub async fn load_directory(pool: &AnyPool) -> Result<Directory, sqlx::Error> {
    let districts = sqlx::query(
        "SELECT district_id, name_kk, name_ru, time_zone FROM districts ORDER BY district_id",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok(District {
            id: r.try_get("district_id")?,
            name_kk: r.try_get("name_kk")?,
            name_ru: r.try_get("name_ru")?,
            time_zone: r.try_get("time_zone")?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let agencies = sqlx::query(
        "SELECT agency_id, kind, district_id, name_kk, name_ru, endpoint FROM agencies ORDER BY agency_id",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok(AgencyEntry {
            id: r.try_get("agency_id")?,
            kind: r.try_get("kind")?,
            district: r.try_get("district_id")?,
            name_kk: r.try_get("name_kk")?,
            name_ru: r.try_get("name_ru")?,
            endpoint: r.try_get("endpoint")?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Directory {
        districts,
        agencies,
        staff: Vec::new(),
    })
}

/// `$start, $start+1, …`: `count` numbered placeholders for a statement built at run time (an
/// `IN` list, a multi-row `VALUES`), so that its text never holds a value.
pub(crate) fn placeholders(start: usize, count: usize) -> String {
    (start..start + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Stores an acknowledged message inside the caller's transaction: the message row (its
/// envelope without payload, and the payload sealed with the active key), its outbox row (due at
/// once) and its `message.accepted` ledger entry. The envelope must be complete (message id,
/// sender and creation time set); `payload_sha256` is the digest of its encoded payload. Send and
/// the deadline engine's alerts both store their messages this way ([`QueuedRows`]), so an alert
/// is delivered, de-duplicated and chained exactly like a form. Returns the ledger entry's
/// sequence number.
pub(crate) async fn enqueue_message(
    tx: &mut Transaction<'static, Any>,
    head: &mut ledger::LockedHead,
    sealer: &PayloadSealer,
    env: &Envelope,
    payload_sha256: &str,
    now_us: i64,
) -> Result<i64, sqlx::Error> {
    let mut rows = QueuedRows::default();
    let seq = rows.enqueue(head, sealer, env, payload_sha256, now_us)?;
    rows.write(tx).await?;
    Ok(seq)
}

/// Messages accepted inside a transaction holding the ledger's lock, not yet written: a batch of
/// sends queues each message's ledger entry, message row and outbox row here and writes them
/// together, one `INSERT` per table ([`write`](Self::write)) instead of three round trips per
/// message under the lock. The batch writes them before anything in its transaction reads or
/// changes messages, the outbox or the ledger, and before it stores the head and commits.
#[derive(Default)]
pub(crate) struct QueuedRows {
    ledger: Vec<ledger::ChainedEntry>,
    messages: Vec<MessageInsert>,
    outbox: Vec<OutboxInsert>,
}

struct MessageInsert {
    message_id: String,
    sender_agency_id: String,
    idempotency_key: String,
    recipient_agency_id: String,
    form_kind: &'static str,
    in_reply_to: Option<String>,
    envelope: Vec<u8>,
    payload_sha256: String,
    created_at: i64,
    sealed_payload: Option<Vec<u8>>,
    payload_key_id: Option<String>,
    action_number: Option<i64>,
    accepted_seq: i64,
    trace_context: Option<String>,
}

struct OutboxInsert {
    message_id: String,
    next_attempt_at: i64,
    recipient_agency_id: String,
    case_reference: Option<String>,
    accepted_seq: i64,
}

/// Rows per multi-row `INSERT` (15 columns: far below either back end's limit of parameters).
const ROWS_PER_INSERT: usize = 256;

impl QueuedRows {
    /// Queues a message (see [`enqueue_message`]); returns its ledger entry's sequence number.
    pub(crate) fn enqueue(
        &mut self,
        head: &mut ledger::LockedHead,
        sealer: &PayloadSealer,
        env: &Envelope,
        payload_sha256: &str,
        now_us: i64,
    ) -> Result<i64, sqlx::Error> {
        let form_kind = FormKind::try_from(env.form_kind).unwrap_or(FormKind::Unspecified);
        let mut metadata = env.clone();
        let payload = metadata.payload.take();
        let sealed = payload
            .as_ref()
            .map(|p| sealer.seal(&env.message_id, &p.encode_to_vec()))
            .transpose()
            .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let action_number = match payload.as_ref().and_then(|p| p.form.as_ref()) {
            Some(payload::Form::ActionAssignment(a)) => {
                a.action.as_ref().map(|a| i64::from(a.number))
            }
            _ => None,
        };
        let entry = head.chain(
            now_us,
            EntryFields::for_envelope(LedgerEvent::Accepted, env, payload_sha256),
        );
        let seq = entry.seq;
        self.ledger.push(entry);
        let (sealed_payload, payload_key_id) = match sealed {
            Some(s) => (Some(s.bytes), Some(s.key_id)),
            None => (None, None),
        };
        self.messages.push(MessageInsert {
            message_id: env.message_id.clone(),
            sender_agency_id: env.sender_agency_id.clone(),
            idempotency_key: env.idempotency_key.clone(),
            recipient_agency_id: env.recipient_agency_id.clone(),
            form_kind: form_kind.as_str_name(),
            in_reply_to: (!env.in_reply_to.is_empty()).then(|| env.in_reply_to.clone()),
            envelope: metadata.encode_to_vec(),
            payload_sha256: payload_sha256.to_owned(),
            created_at: now_us,
            sealed_payload,
            payload_key_id,
            action_number,
            accepted_seq: seq,
            // The delivery worker continues the trace of the call that stored the message.
            trace_context: referral_core::trace_context::current_traceparent(),
        });
        // Recipient, case and sequence let the worker keep a case's messages in order (0008).
        self.outbox.push(OutboxInsert {
            message_id: env.message_id.clone(),
            next_attempt_at: now_us,
            recipient_agency_id: env.recipient_agency_id.clone(),
            case_reference: (!env.case_reference.is_empty()).then(|| env.case_reference.clone()),
            accepted_seq: seq,
        });
        Ok(seq)
    }

    /// Writes what is queued (ledger entries, then messages, then their outbox rows, which
    /// refer to them) and empties the queue.
    pub(crate) async fn write(
        &mut self,
        tx: &mut Transaction<'static, Any>,
    ) -> Result<(), sqlx::Error> {
        // Moved into the statements, not copied: a message row holds its sealed payload.
        ledger::insert_chained(tx, std::mem::take(&mut self.ledger)).await?;
        for chunk in owned_chunks(std::mem::take(&mut self.messages), ROWS_PER_INSERT) {
            let mut sql = String::from(
                "INSERT INTO messages (message_id, sender_agency_id, idempotency_key, \
                 recipient_agency_id, form_kind, in_reply_to, envelope, payload_sha256, \
                 created_at, state, sealed_payload, payload_key_id, action_number, accepted_seq, \
                 trace_context) VALUES ",
            );
            push_rows(&mut sql, chunk.len(), 15);
            let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
            for m in chunk {
                insert = insert
                    .bind(m.message_id)
                    .bind(m.sender_agency_id)
                    .bind(m.idempotency_key)
                    .bind(m.recipient_agency_id)
                    .bind(m.form_kind)
                    .bind(m.in_reply_to)
                    .bind(m.envelope)
                    .bind(m.payload_sha256)
                    .bind(m.created_at)
                    .bind(STATE_QUEUED)
                    .bind(m.sealed_payload)
                    .bind(m.payload_key_id)
                    .bind(m.action_number)
                    .bind(m.accepted_seq)
                    .bind(m.trace_context);
            }
            insert.execute(&mut **tx).await?;
        }
        for chunk in owned_chunks(std::mem::take(&mut self.outbox), ROWS_PER_INSERT) {
            let mut sql = String::from(
                "INSERT INTO outbox (message_id, next_attempt_at, recipient_agency_id, \
                 case_reference, accepted_seq) VALUES ",
            );
            push_rows(&mut sql, chunk.len(), 5);
            let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
            for o in chunk {
                insert = insert
                    .bind(o.message_id)
                    .bind(o.next_attempt_at)
                    .bind(o.recipient_agency_id)
                    .bind(o.case_reference)
                    .bind(o.accepted_seq);
            }
            insert.execute(&mut **tx).await?;
        }
        Ok(())
    }
}

/// `items` in owned chunks of at most `size`, for multi-row `INSERT`s that move each row's values
/// into the statement instead of copying them.
pub(crate) fn owned_chunks<T>(items: Vec<T>, size: usize) -> impl Iterator<Item = Vec<T>> {
    let mut items = items.into_iter().peekable();
    std::iter::from_fn(move || {
        items.peek()?;
        Some(items.by_ref().take(size).collect())
    })
}

/// Appends `rows` placeholder tuples of `columns` each to a multi-row `INSERT`.
pub(crate) fn push_rows(sql: &mut String, rows: usize, columns: usize) {
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        sql.push_str(&placeholders(row * columns + 1, columns));
        sql.push(')');
    }
}

/// A stored message as the API and the worker need it. Its envelope is read with
/// [`open_envelope`] (with the payload) or [`metadata_envelope`] (without opening it).
#[derive(Clone)]
pub struct MessageRow {
    pub message_id: String,
    pub sender_agency_id: String,
    pub recipient_agency_id: String,
    pub form_kind: String,
    pub in_reply_to: Option<String>,
    /// The envelope as stored: without payload, or whole on a row written before payloads were
    /// sealed (`payload_key_id` is `None` then).
    stored_envelope: Vec<u8>,
    /// The sealed payload; `None` once removed after delivery (and on rows written before).
    sealed_payload: Option<Vec<u8>>,
    pub payload_key_id: Option<String>,
    pub payload_purged_at: Option<i64>,
    /// The assigned row's number of an ACTION_ASSIGNMENT.
    pub action_number: Option<i64>,
    pub payload_sha256: String,
    pub created_at: i64,
    pub state: String,
    pub delivery_attempts: i64,
    pub delivered_at: Option<i64>,
    pub answered_at: Option<i64>,
    pub answer_message_id: Option<String>,
}

impl std::fmt::Debug for MessageRow {
    /// Ids and states only: the stored envelope of an old row may hold a payload.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageRow")
            .field("message_id", &self.message_id)
            .field("form_kind", &self.form_kind)
            .field("state", &self.state)
            .field("payload_key_id", &self.payload_key_id)
            .field("payload_purged_at", &self.payload_purged_at)
            .finish_non_exhaustive()
    }
}

pub(crate) const MESSAGE_COLUMNS: &str = "message_id, sender_agency_id, recipient_agency_id, form_kind, \
    in_reply_to, envelope, sealed_payload, payload_key_id, payload_purged_at, action_number, \
    payload_sha256, created_at, state, delivery_attempts, delivered_at, answered_at, \
    answer_message_id";

pub(crate) fn message_row(r: &sqlx::any::AnyRow) -> Result<MessageRow, sqlx::Error> {
    Ok(MessageRow {
        message_id: r.try_get("message_id")?,
        sender_agency_id: r.try_get("sender_agency_id")?,
        recipient_agency_id: r.try_get("recipient_agency_id")?,
        form_kind: r.try_get("form_kind")?,
        in_reply_to: r.try_get("in_reply_to")?,
        stored_envelope: r.try_get("envelope")?,
        sealed_payload: r.try_get("sealed_payload")?,
        payload_key_id: r.try_get("payload_key_id")?,
        payload_purged_at: r.try_get("payload_purged_at")?,
        action_number: r.try_get("action_number")?,
        payload_sha256: r.try_get("payload_sha256")?,
        created_at: r.try_get("created_at")?,
        state: r.try_get("state")?,
        delivery_attempts: r.try_get("delivery_attempts")?,
        delivered_at: r.try_get("delivered_at")?,
        answered_at: r.try_get("answered_at")?,
        answer_message_id: r.try_get("answer_message_id")?,
    })
}

pub async fn message_by_id<'e, E>(
    exec: E,
    message_id: &str,
) -> Result<Option<MessageRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE message_id = $1"
    )))
    .bind(message_id)
    .fetch_optional(exec)
    .await?
    .as_ref()
    .map(message_row)
    .transpose()
}

pub async fn message_by_key<'e, E>(
    exec: E,
    sender: &str,
    idempotency_key: &str,
) -> Result<Option<MessageRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender_agency_id = $1 AND idempotency_key = $2"
    )))
    .bind(sender)
    .bind(idempotency_key)
    .fetch_optional(exec)
    .await?
    .as_ref()
    .map(message_row)
    .transpose()
}

/// The stored messages of `sender` under any of `keys`, by idempotency key, in one query.
///
/// Each key is its own branch of a `UNION ALL`, an equality on the whole unique key (sender,
/// idempotency key), so each is one probe of that index whatever the planner believes about the
/// table. `sender = $1 AND key IN (…)` let PostgreSQL scan every message of the sender and filter
/// the keys: measured under load, 18 ms a batch and growing with the sender's history, inside the
/// batch's hold of the ledger lock, when the statistics lagged behind a fast-growing table. A
/// batch has at most `api::SEND_BATCH` (64) keys; SQLite takes up to 500 branches.
pub(crate) async fn messages_by_keys<'e, E>(
    exec: E,
    sender: &str,
    keys: &[&str],
) -> Result<std::collections::HashMap<String, MessageRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    if keys.is_empty() {
        return Ok(Default::default());
    }
    let sql = (2..2 + keys.len())
        .map(|n| {
            format!(
                "SELECT idempotency_key, {MESSAGE_COLUMNS} FROM messages \
                 WHERE sender_agency_id = $1 AND idempotency_key = ${n}"
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(sender);
    for key in keys {
        query = query.bind(*key);
    }
    query
        .fetch_all(exec)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("idempotency_key")?, message_row(r)?)))
        .collect()
}

/// Why a stored message's envelope could not be read. Names the message and the key id, never
/// what the payload holds.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("the payload of message {message_id} cannot be opened: {source}")]
    Seal {
        message_id: String,
        #[source]
        source: SealError,
    },
    #[error("the stored envelope of message {message_id} does not decode")]
    Decode { message_id: String },
}

impl PayloadError {
    /// An operator's error (a key missing from the keyring) rather than a damaged row: it goes
    /// away once the key is added back.
    pub fn is_missing_key(&self) -> bool {
        matches!(
            self,
            Self::Seal {
                source: SealError::UnknownKey { .. },
                ..
            }
        )
    }
}

/// The stored envelope without opening its payload: metadata only, or, on a row written before
/// payloads were sealed, the whole envelope.
pub fn metadata_envelope(row: &MessageRow) -> Result<Envelope, PayloadError> {
    Envelope::decode(row.stored_envelope.as_slice()).map_err(|_| {
        tracing::error!(message_id = %row.message_id, "a stored envelope does not decode");
        PayloadError::Decode {
            message_id: row.message_id.clone(),
        }
    })
}

/// The envelope of a stored message with its payload opened: the one way consumers read a
/// message's payload. Once the payload has been removed after delivery, the envelope comes
/// without payload. A failure is logged with the message id and key id only.
pub fn open_envelope(sealer: &PayloadSealer, row: &MessageRow) -> Result<Envelope, PayloadError> {
    let mut env = metadata_envelope(row)?;
    let Some(sealed) = &row.sealed_payload else {
        return Ok(env);
    };
    let plaintext = sealer.open(&row.message_id, sealed).map_err(|source| {
        tracing::error!(
            message_id = %row.message_id,
            key_id = row.payload_key_id.as_deref().unwrap_or_default(),
            error = %source,
            "a stored payload cannot be opened"
        );
        PayloadError::Seal {
            message_id: row.message_id.clone(),
            source,
        }
    })?;
    let payload = Payload::decode(plaintext.as_slice()).map_err(|_| {
        tracing::error!(message_id = %row.message_id, "an opened payload does not decode");
        PayloadError::Decode {
            message_id: row.message_id.clone(),
        }
    })?;
    env.payload = Some(payload);
    Ok(env)
}

/// Every message of one form kind, oldest first.
pub async fn messages_of_kind(
    pool: &AnyPool,
    form_kind: FormKind,
) -> Result<Vec<MessageRow>, sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE form_kind = $1 ORDER BY created_at, message_id"
    )))
    .bind(form_kind.as_str_name())
    .fetch_all(pool)
    .await?
    .iter()
    .map(message_row)
    .collect()
}

/// Refuses to start with a keyring that lacks a key some stored payload is sealed with: those
/// messages could be neither delivered nor read.
pub async fn check_payload_keys(pool: &AnyPool, sealer: &PayloadSealer) -> anyhow::Result<()> {
    let held: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT payload_key_id, COUNT(*) FROM messages WHERE sealed_payload IS NOT NULL \
         GROUP BY payload_key_id",
    )
    .fetch_all(pool)
    .await?;
    for (key_id, count) in held {
        let key_id = key_id.unwrap_or_default();
        if !sealer.has_key(&key_id) {
            anyhow::bail!(
                "{count} stored message payload(s) are sealed with payload key {key_id}, which the \
                 keyring does not hold: add that key back to the payload key file (keep a key \
                 until no payload sealed with it is stored)"
            );
        }
    }
    tracing::info!(
        active_key = sealer.active_key_id(),
        keys = sealer.key_ids().count(),
        "payload keys loaded"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use referral_core::db::StorageConfig;

    use super::*;

    #[tokio::test]
    async fn the_stored_directory_follows_the_file_including_removals() {
        let dir = tempfile::tempdir().unwrap();
        let storage = StorageConfig {
            data_dir: dir.path().to_owned(),
            database_url: None,
        };
        let db = Database::open(&storage, "gateway", MIGRATIONS)
            .await
            .unwrap();
        let file =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/demo-district.toml");
        let mut directory = Directory::load(&file).unwrap();
        save_directory(&db, &directory).await.unwrap();
        assert!(
            load_directory(db.pool())
                .await
                .unwrap()
                .agency("ngo-2")
                .is_some()
        );

        directory.agencies.retain(|a| a.id != "ngo-2");
        directory.agencies[0].name_ru = "Новое имя".into();
        save_directory(&db, &directory).await.unwrap();
        let stored = load_directory(db.pool()).await.unwrap();
        assert!(
            stored.agency("ngo-2").is_none(),
            "a removed agency is no longer known"
        );
        assert_eq!(stored.agencies.len(), directory.agencies.len());
        assert_eq!(
            stored.agency(&directory.agencies[0].id).unwrap().name_ru,
            "Новое имя"
        );
    }
}
