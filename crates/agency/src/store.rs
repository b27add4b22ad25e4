//! The agency's own store: what it sent ([`sent`]), what it received ([`received`]) and, for the
//! commission, its decisions and case files ([`decisions`]).
//!
//! Layout (see `migrations/`): `sent_messages` keyed by idempotency key, `received_messages` keyed
//! by message id, `decisions` and `cases` keyed by the help request's message id, and
//! `case_counters` per year. Envelopes are kept as encoded protobuf; the plain columns hold only
//! what queries need (ids, kinds, states, instants). Every multi-statement write runs in one
//! transaction.

pub(crate) mod decisions;
pub(crate) mod received;
pub(crate) mod replies;
pub(crate) mod sent;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use referral_core::{
    ServiceError, ServiceResult,
    db::{Database, DbError, EmbeddedMigration, StorageConfig},
};
use referral_proto::v1::{DeliveryState, FormKind, ReferralStatus};

use sqlx::{Any, Transaction};
use tokio::sync::oneshot;

use crate::extension::{AgencyExtension, AgencyHost};

/// The agency store's migrations, oldest first. Numbered, commented, never edited once landed.
pub const MIGRATIONS: &[EmbeddedMigration] = &[
    (
        1,
        "sent and received messages",
        include_str!("../migrations/0001_messages.sql"),
    ),
    (
        2,
        "commission decisions and case files",
        include_str!("../migrations/0002_commission.sql"),
    ),
    (
        3,
        "replies found by the message they answer",
        include_str!("../migrations/0003_replies.sql"),
    ),
    (
        4,
        "the outbox of clock events for the gateway's deadline engine",
        include_str!("../migrations/0004_clock_events.sql"),
    ),
    (
        5,
        "clock events ordered by a counter row",
        include_str!("../migrations/0005_clock_event_order.sql"),
    ),
    (
        6,
        "the trace context of a queued message",
        include_str!("../migrations/0006_trace_context.sql"),
    ),
];

/// The component name of an agency's store: `agency-<id>` (a file or a schema of its own).
pub fn component_name(agency_id: &str) -> String {
    format!("agency-{agency_id}")
}

/// Default and largest page of a list.
pub(crate) const DEFAULT_PAGE_SIZE: u32 = 50;
pub(crate) const MAX_PAGE_SIZE: u32 = 500;

/// One agency's store.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    db: Database,
    /// When a batch last found the store unreachable, and why (see [`Store::write_batch`]).
    unreachable: Arc<Mutex<Option<(Instant, String)>>>,
}

/// How long after a batch found the store unreachable the next batches are refused at once.
/// A batch that finds the store down waits out the pool's acquire timeout
/// (`referral_core::db::PG_ACQUIRE_TIMEOUT`, 2 s); without this, a call queued behind it would
/// wait for that batch and then as long again for its own, and not fail fast.
const UNREACHABLE_REFUSAL: Duration = Duration::from_secs(1);

impl Store {
    /// Opens the store of agency `agency_id` and runs its migrations.
    #[cfg(test)]
    pub(crate) async fn open(storage: &StorageConfig, agency_id: &str) -> Result<Self, DbError> {
        Self::open_with(storage, agency_id, MIGRATIONS).await
    }

    /// Opens the store of agency `agency_id` and runs `migrations` (the agency's own, followed
    /// by an extension's).
    pub(crate) async fn open_with(
        storage: &StorageConfig,
        agency_id: &str,
        migrations: &'static [EmbeddedMigration],
    ) -> Result<Self, DbError> {
        let db = Database::open(storage, &component_name(agency_id), migrations).await?;
        Ok(Self {
            db,
            unreachable: Arc::default(),
        })
    }

    pub(crate) async fn close(&self) {
        self.db.close().await;
    }

    /// The pool, for an extension's reads.
    /// The database handle (for the admin port's readiness check).
    pub(crate) fn database(&self) -> Database {
        self.db.clone()
    }

    pub(crate) fn pool(&self) -> &referral_core::db::AnyPool {
        self.db.pool()
    }

    /// Starts a transaction.
    pub(crate) async fn begin(
        &self,
    ) -> Result<referral_core::db::Transaction<'static, referral_core::db::Any>, sqlx::Error> {
        self.db.begin().await
    }
}

/// Where a page of a newest-first list starts: after the item at (`at`, `id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    at: i64,
    id: String,
}

impl Cursor {
    /// Before every item: the first page.
    fn first() -> Self {
        Self {
            at: i64::MAX,
            id: String::new(),
        }
    }

    fn after(at: i64, id: &str) -> Self {
        Self {
            at,
            id: id.to_owned(),
        }
    }

    /// The page token handed to clients. Opaque to them; it is `<instant>.<message id>`.
    pub(crate) fn token(&self) -> String {
        format!("{}.{}", self.at, self.id)
    }
}

/// A page request: how many items, starting after which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Page {
    size: u32,
    after: Cursor,
}

impl Page {
    /// Reads `page_size` (0 means the default, larger than the maximum means the maximum) and
    /// `page_token` (empty means the first page) of a list request.
    pub(crate) fn from_request(page_size: u32, page_token: &str) -> ServiceResult<Self> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let after = if page_token.is_empty() {
            Cursor::first()
        } else {
            page_token
                .split_once('.')
                .and_then(|(at, id)| Some(Cursor::after(at.parse().ok()?, id)))
                .filter(|c| !c.id.is_empty())
                .ok_or_else(|| {
                    ServiceError::invalid_field(
                        "page_token",
                        "must be a token from a previous page",
                    )
                })?
        };
        Ok(Self { size, after })
    }

    /// The SQL `LIMIT`: one more than the page, to know whether another page follows.
    fn limit(&self) -> i64 {
        i64::from(self.size) + 1
    }

    /// Cuts the extra row off and returns the cursor of the next page, if there is one.
    fn finish<T>(&self, rows: &mut Vec<T>, cursor_of: impl Fn(&T) -> Cursor) -> Option<Cursor> {
        let size = usize::try_from(self.size).unwrap_or(usize::MAX);
        if rows.len() > size {
            rows.truncate(size);
            rows.last().map(cursor_of)
        } else {
            None
        }
    }
}

/// How a form kind filter is bound: empty matches every kind.
fn kind_filter(kind: FormKind) -> &'static str {
    match kind {
        FormKind::Unspecified => "",
        kind => kind.as_str_name(),
    }
}

fn form_kind(text: &str) -> FormKind {
    FormKind::from_str_name(text).unwrap_or(FormKind::Unspecified)
}

fn delivery_state(text: &str) -> DeliveryState {
    DeliveryState::from_str_name(text).unwrap_or(DeliveryState::Unspecified)
}

fn referral_status(text: &str) -> ReferralStatus {
    ReferralStatus::from_str_name(text).unwrap_or(ReferralStatus::Unspecified)
}

/// Decodes a stored protobuf value; a stored value that does not decode is an internal error.
fn decode<M: prost::Message + Default>(bytes: &[u8]) -> ServiceResult<M> {
    M::decode(bytes).map_err(ServiceError::internal)
}

fn encode<M: prost::Message>(message: &M) -> Vec<u8> {
    message.encode_to_vec()
}

/// A request waiting for one of the store's batch writers (`referral_core::group_commit`):
/// answered once its batch committed, or with why it was not stored.
#[derive(Debug)]
pub(crate) struct Waiting<T, R> {
    pub(crate) request: T,
    pub(crate) reply: oneshot::Sender<ServiceResult<R>>,
}

/// Why a batch was not committed ([`Store::write_batch`]).
#[derive(Debug)]
pub(crate) enum BatchFailure {
    /// Writing the request at this index failed (a hook refused it, or the store failed on it);
    /// the others may be written without it.
    Item(usize, ServiceError),
    /// The store failed for the whole batch: it cannot be reached, or the transaction could not
    /// begin or commit.
    Store(ServiceError),
}

/// Answers the requests of a batch from what writing them in one transaction gave; true when
/// every request is answered. A request whose own write failed is answered with its error and
/// taken out of the batch (false: the caller writes the others again without it); a store that
/// failed fails them all, and their callers keep what they asked to store (the gateway delivers
/// again, a pending message stays pending).
pub(crate) fn answer_batch<T, R>(
    batch: &mut Vec<Waiting<T, R>>,
    written: Result<Vec<R>, BatchFailure>,
    what: &'static str,
) -> bool {
    match written {
        Ok(results) => {
            for (waiting, result) in batch.drain(..).zip(results) {
                let _ = waiting.reply.send(Ok(result));
            }
            true
        }
        Err(BatchFailure::Item(index, error)) => {
            let waiting = batch.remove(index);
            let _ = waiting.reply.send(Err(error));
            batch.is_empty()
        }
        Err(BatchFailure::Store(error)) => {
            if !matches!(error, ServiceError::Unavailable(_)) {
                tracing::error!(error = %error, requests = batch.len(), batch = what, "cannot store a batch");
            }
            for waiting in batch.drain(..) {
                let _ = waiting.reply.send(Err(error.shared_by_batch()));
            }
            true
        }
    }
}

/// The extension's hook a batch's writes may call inside its transaction (the inbox's receipts).
pub(crate) type Hook<'a> = Option<(&'a dyn AgencyExtension, &'a AgencyHost)>;

/// A request one of the store's batch writers writes, inside the batch's transaction.
pub(crate) trait BatchWrite: Sync {
    /// What the request's caller is answered with once the batch committed.
    type Written: Send;

    /// Writes this request, seeing the ones before it in the batch.
    fn write<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Any>,
        hook: Hook<'a>,
    ) -> impl Future<Output = ServiceResult<Self::Written>> + Send + 'a;
}

impl Store {
    /// Writes the requests waiting together in one transaction and answers each
    /// ([`answer_batch`]: one that fails alone is answered with its error, and the others are
    /// written again without it).
    pub(crate) async fn write_waiting<T: BatchWrite>(
        &self,
        mut batch: Vec<Waiting<T, T::Written>>,
        what: &'static str,
        hook: Hook<'_>,
    ) {
        loop {
            let requests: Vec<&T> = batch.iter().map(|w| &w.request).collect();
            let written = self.write_batch(&requests, hook).await;
            if answer_batch(&mut batch, written, what) {
                return;
            }
        }
    }

    /// Writes one request as a batch of its own (the tests' way in; the service queues them).
    #[cfg(test)]
    pub(crate) async fn write_one<T: BatchWrite>(
        &self,
        request: &T,
        hook: Hook<'_>,
    ) -> ServiceResult<T::Written> {
        match self.write_batch(&[request], hook).await {
            Ok(mut written) => Ok(written.remove(0)),
            Err(BatchFailure::Item(_, e) | BatchFailure::Store(e)) => Err(e),
        }
    }

    /// Writes `requests`, in order, in one transaction (one commit for the lot); a failure
    /// writes none of them and says which one failed, so that the caller can write the others
    /// without it. For a moment after a batch found the store unreachable
    /// ([`UNREACHABLE_REFUSAL`]), a batch is refused as unavailable without trying: the calls
    /// waiting behind a batch that waited out the pool's timeout fail fast too.
    pub(crate) async fn write_batch<T: BatchWrite>(
        &self,
        requests: &[&T],
        hook: Hook<'_>,
    ) -> Result<Vec<T::Written>, BatchFailure> {
        if let Some((at, reason)) = self.unreachable.lock().ok().and_then(|u| u.clone())
            && at.elapsed() < UNREACHABLE_REFUSAL
        {
            return Err(BatchFailure::Store(ServiceError::Unavailable(reason)));
        }
        let written = self.write_batch_in_one_transaction(requests, hook).await;
        if let Ok(mut unreachable) = self.unreachable.lock() {
            *unreachable = match &written {
                Err(BatchFailure::Store(ServiceError::Unavailable(reason))) => {
                    Some((Instant::now(), reason.clone()))
                }
                _ => None,
            };
        }
        written
    }

    async fn write_batch_in_one_transaction<T: BatchWrite>(
        &self,
        requests: &[&T],
        hook: Hook<'_>,
    ) -> Result<Vec<T::Written>, BatchFailure> {
        let mut tx = self
            .db
            .begin()
            .await
            .map_err(|e| BatchFailure::Store(e.into()))?;
        let mut results = Vec::with_capacity(requests.len());
        for (index, request) in requests.iter().enumerate() {
            match request.write(&mut tx, hook).await {
                Ok(result) => results.push(result),
                Err(error) => {
                    let _ = tx.rollback().await;
                    return Err(match error {
                        ServiceError::Unavailable(_) => BatchFailure::Store(error),
                        error => BatchFailure::Item(index, error),
                    });
                }
            }
        }
        tx.commit()
            .await
            .map_err(|e| BatchFailure::Store(e.into()))?;
        Ok(results)
    }
}

/// SHA-256 of some bytes, in hex: how a request is recognised when its idempotency key comes
/// again.
pub(crate) fn fingerprint(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[cfg(test)]
pub(crate) mod testing {
    //! A fresh store for unit tests: SQLite in a temporary directory, or a schema of its own in
    //! the PostgreSQL database named by `REFERRAL_TEST_DATABASE_URL` when that is set.

    use referral_core::db::StorageConfig;

    use super::Store;

    /// Where a test's store lives, and the agency id that names it.
    pub(crate) fn storage() -> (StorageConfig, String, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let storage = StorageConfig {
            data_dir: dir.path().to_owned(),
            database_url: std::env::var("REFERRAL_TEST_DATABASE_URL")
                .ok()
                .map(Into::into),
        };
        let agency_id = format!("test-{}", uuid::Uuid::new_v4().simple());
        (storage, agency_id, dir)
    }

    pub(crate) async fn store() -> (Store, tempfile::TempDir) {
        let (storage, agency_id, dir) = storage();
        (Store::open(&storage, &agency_id).await.unwrap(), dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_default_and_cap() {
        assert_eq!(Page::from_request(0, "").unwrap().size, DEFAULT_PAGE_SIZE);
        assert_eq!(Page::from_request(10_000, "").unwrap().size, MAX_PAGE_SIZE);
        assert_eq!(Page::from_request(7, "").unwrap().size, 7);
    }

    #[test]
    fn page_tokens_round_trip_and_garbage_is_invalid() {
        let cursor = Cursor::after(1_700_000_000_000_000, "0195-abc");
        let page = Page::from_request(5, &cursor.token()).unwrap();
        assert_eq!(page.after, cursor);
        for bad in ["x", "12", "abc.def", "12."] {
            let err = Page::from_request(5, bad).unwrap_err();
            assert!(
                matches!(&err, ServiceError::InvalidArgument(v) if v.contains("page_token")),
                "{bad}: {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn migrations_run_twice_without_harm() {
        let (storage, agency_id, _dir) = testing::storage();
        Store::open(&storage, &agency_id)
            .await
            .unwrap()
            .close()
            .await;
        Store::open(&storage, &agency_id).await.unwrap();
    }
}
