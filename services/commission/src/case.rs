//! The case row every change goes through, and what a change writes besides its own rows: the
//! case event for the gateway's deadline engine and the messages to other agencies, both into the
//! outbox of the same transaction.
//!
//! A change is one transaction:
//! 1. [`claim`] moves the case's version on with `UPDATE case_files SET version = version + 1
//!    WHERE case_reference = $1 AND version = $base`. A stale base changes nothing and answers
//!    [`CaseError::Stale`] (`ABORTED`, "case changed: current version N"). Being a write, the
//!    claim also serialises concurrent changes of one case (a row lock on PostgreSQL, the write
//!    lock on SQLite) before anything is read.
//! 2. The caller checks the stage on the claimed row (a refusal rolls everything back), writes
//!    its rows, queues its event ([`queue_event`]) and messages ([`queue_message`]), and commits.
//! 3. The outbox is pushed after the commit (see [`crate::outbox`]).

use jiff::Timestamp;
use prost::Message as _;
use referral_agency::{AgencyHost, OpenedCase};
use referral_core::{ServiceError, ServiceResult, db::Row as _, time};
use referral_proto::v1::{
    ActingUser, CaseEvent, CaseEventKind, CaseStage, Envelope, RecordCaseEventRequest, RiskLevel,
};
use sqlx::AnyConnection;

/// Why a change of a case was refused.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error("no case with this reference in this commission")]
    NotFound,
    /// The change was based on an older version: nothing changed.
    #[error("case changed: current version {current}")]
    Stale { current: u64 },
    #[error("the case is closed: only ReopenCase changes it")]
    Closed,
    #[error("{change} needs a case in stage {needed}; this case is in stage {current}")]
    WrongStage {
        change: &'static str,
        needed: &'static str,
        current: &'static str,
    },
    #[error(
        "the decision that opened this case has not reached the gateway yet: send it first \
         (decide again with the same idempotency key)"
    )]
    DecisionPending,
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl From<sqlx::Error> for CaseError {
    fn from(err: sqlx::Error) -> Self {
        Self::Service(err.into())
    }
}

impl From<CaseError> for ServiceError {
    fn from(err: CaseError) -> Self {
        match err {
            CaseError::NotFound => Self::NotFound(err.to_string()),
            CaseError::Stale { .. } => Self::Aborted(err.to_string()),
            CaseError::Closed | CaseError::WrongStage { .. } | CaseError::DecisionPending => {
                Self::FailedPrecondition(err.to_string())
            }
            CaseError::Service(err) => err,
        }
    }
}

impl From<CaseError> for referral_agency::AgencyError {
    fn from(err: CaseError) -> Self {
        ServiceError::from(err).into()
    }
}

/// A stage as users of the API know it: `ASSESSMENT`.
pub fn stage_name(stage: CaseStage) -> &'static str {
    match stage {
        CaseStage::Unspecified => "UNSPECIFIED",
        CaseStage::Assessment => "ASSESSMENT",
        CaseStage::Planning => "PLANNING",
        CaseStage::Support => "SUPPORT",
        CaseStage::Closed => "CLOSED",
    }
}

/// The case row, with what every change needs of the agency's own tables.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseRow {
    pub case_reference: String,
    pub version: u64,
    pub stage: CaseStage,
    pub cycle: u32,
    pub curator_user_id: String,
    pub risk_level: RiskLevel,
    /// The first opening.
    pub opened_at: Timestamp,
    pub help_request_message_id: String,
    /// Whether the decision that opened the case has reached the gateway.
    pub decision_sent: bool,
}

impl CaseRow {
    /// Refuses a change of a closed case.
    pub fn check_open(&self) -> Result<(), CaseError> {
        if self.stage == CaseStage::Closed {
            Err(CaseError::Closed)
        } else {
            Ok(())
        }
    }

    /// Refuses a change that needs stage `needed`.
    pub fn check_stage(&self, change: &'static str, needed: CaseStage) -> Result<(), CaseError> {
        if self.stage == needed {
            return Ok(());
        }
        if self.stage == CaseStage::Closed {
            return Err(CaseError::Closed);
        }
        Err(CaseError::WrongStage {
            change,
            needed: stage_name(needed),
            current: stage_name(self.stage),
        })
    }
}

/// The columns [`from_row`] reads, in its order, over `CASE_FROM`.
pub const CASE_COLUMNS: &str = "f.case_reference, f.version, f.stage, f.cycle, \
     f.curator_user_id, f.risk_level, f.opened_at, c.help_request_message_id, d.state";

/// The case row joined with the agency's case and decision.
pub const CASE_FROM: &str = "case_files f JOIN cases c ON c.case_reference = f.case_reference \
     LEFT JOIN decisions d ON d.case_reference = f.case_reference";

/// The state of a decision the gateway acknowledged (the agency's `decisions.state`).
const DECISION_SENT: &str = "decision_sent";

pub fn from_row(row: &sqlx::any::AnyRow) -> ServiceResult<CaseRow> {
    let decision: Option<String> = row.try_get(8)?;
    Ok(CaseRow {
        case_reference: row.try_get(0)?,
        version: u64::try_from(row.try_get::<i64, _>(1)?).unwrap_or_default(),
        stage: CaseStage::from_str_name(&row.try_get::<String, _>(2)?)
            .unwrap_or(CaseStage::Unspecified),
        cycle: u32::try_from(row.try_get::<i64, _>(3)?).unwrap_or_default(),
        curator_user_id: row.try_get(4)?,
        risk_level: RiskLevel::from_str_name(&row.try_get::<String, _>(5)?)
            .unwrap_or(RiskLevel::Unspecified),
        opened_at: time::from_micros(row.try_get(6)?),
        help_request_message_id: row.try_get(7)?,
        decision_sent: decision.as_deref() == Some(DECISION_SENT),
    })
}

/// The case `case_reference`, if there is one.
pub async fn load(
    conn: &mut AnyConnection,
    case_reference: &str,
) -> ServiceResult<Option<CaseRow>> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {CASE_COLUMNS} FROM {CASE_FROM} WHERE f.case_reference = $1"
    )))
    .bind(case_reference)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(from_row)
    .transpose()
}

/// Step 1 of a change: moves the case from `base_version` to the next, inside the change's
/// transaction, and returns the case as now claimed. Nothing is written when the base is stale.
pub async fn claim(
    conn: &mut AnyConnection,
    case_reference: &str,
    base_version: u64,
    now: Timestamp,
) -> Result<CaseRow, CaseError> {
    let base = i64::try_from(base_version).unwrap_or(i64::MAX);
    let claimed = sqlx::query(
        "UPDATE case_files SET version = version + 1, updated_at = $1 \
         WHERE case_reference = $2 AND version = $3",
    )
    .bind(time::to_micros(now))
    .bind(case_reference)
    .bind(base)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let row = load(conn, case_reference)
        .await?
        .ok_or(CaseError::NotFound)?;
    if claimed == 0 {
        return Err(CaseError::Stale {
            current: row.version,
        });
    }
    if !row.decision_sent {
        return Err(CaseError::DecisionPending);
    }
    Ok(row)
}

/// Sets the stage (and, when given, the level of risk) of a claimed case.
pub async fn set_stage(
    conn: &mut AnyConnection,
    case_reference: &str,
    stage: CaseStage,
    risk_level: Option<RiskLevel>,
) -> ServiceResult<()> {
    sqlx::query(
        "UPDATE case_files SET stage = $1, risk_level = COALESCE($2, risk_level) \
         WHERE case_reference = $3",
    )
    .bind(stage.as_str_name())
    .bind(risk_level.map(|r| r.as_str_name()))
    .bind(case_reference)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The outbox key of a case's event at `version`: stable, so the gateway de-duplicates a repeat.
pub fn event_key(case_reference: &str, version: u64) -> String {
    format!("case-event-{case_reference}-v{version}")
}

/// The key of a message a change sends: derived from the case, the change's version and what the
/// message is for, so a retried push is the same message.
pub fn message_key(purpose: &str, case_reference: &str, version: u64, part: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{case_reference}\n{version}\n{purpose}\n{part}"));
    format!("case-{purpose}-{}", &hex::encode(digest)[..40])
}

const OUTBOX_PENDING: &str = "pending";

/// Queues the case's event of a change (the event's `case_reference` is the case's).
pub async fn queue_event(
    conn: &mut AnyConnection,
    version: u64,
    user: &ActingUser,
    event: CaseEvent,
) -> ServiceResult<()> {
    let key = event_key(&event.case_reference, version);
    let created_at = event
        .occurred_at
        .as_ref()
        .and_then(time::from_proto)
        .map_or(0, time::to_micros);
    let case_reference = event.case_reference.clone();
    let request = RecordCaseEventRequest {
        idempotency_key: key.clone(),
        acting_user: Some(user.clone()),
        event: Some(event),
    };
    insert_outbox(
        conn,
        &key,
        &case_reference,
        version,
        0,
        "event",
        Some(request.encode_to_vec()),
        created_at,
    )
    .await
}

/// Queues a message of a change: the pending `sent_messages` row (the envelope's idempotency key
/// is the outbox key) and its outbox entry, at `position` among the change's messages.
pub async fn queue_message(
    host: &AgencyHost,
    conn: &mut AnyConnection,
    version: u64,
    position: u64,
    user: &ActingUser,
    envelope: &Envelope,
    now: Timestamp,
) -> ServiceResult<()> {
    let key = envelope.idempotency_key.as_str();
    if !host
        .queue_message(conn, key, &user.user_id, envelope, now)
        .await?
    {
        // Keys are derived from case, version and purpose, and versions never repeat.
        return Err(ServiceError::internal(anyhow::anyhow!(
            "a case message's key is already in use"
        )));
    }
    insert_outbox(
        conn,
        key,
        &envelope.case_reference,
        version,
        position,
        "message",
        None,
        time::to_micros(now),
    )
    .await
}

#[expect(
    clippy::too_many_arguments,
    reason = "one row of the outbox, column by column"
)]
async fn insert_outbox(
    conn: &mut AnyConnection,
    key: &str,
    case_reference: &str,
    version: u64,
    position: u64,
    kind: &str,
    event: Option<Vec<u8>>,
    created_at: i64,
) -> ServiceResult<()> {
    sqlx::query(
        "INSERT INTO case_outbox (outbox_key, case_reference, case_version, position, item_kind, \
         event, state, attempts, last_code, created_at, done_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 0, NULL, $8, NULL)",
    )
    .bind(key)
    .bind(case_reference)
    .bind(i64::try_from(version).unwrap_or(i64::MAX))
    .bind(i64::try_from(position).unwrap_or(i64::MAX))
    .bind(kind)
    .bind(event)
    .bind(OUTBOX_PENDING)
    .bind(created_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A change made with an idempotency key, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedChange {
    pub request_sha256: String,
    pub version: u64,
    pub stage: CaseStage,
}

/// The change recorded under `key` for the case, if any.
pub async fn recorded_change(
    conn: &mut AnyConnection,
    case_reference: &str,
    key: &str,
) -> ServiceResult<Option<RecordedChange>> {
    let row = sqlx::query(
        "SELECT request_sha256, version, stage FROM case_changes \
         WHERE case_reference = $1 AND idempotency_key = $2",
    )
    .bind(case_reference)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|row| {
        Ok(RecordedChange {
            request_sha256: row.try_get(0)?,
            version: u64::try_from(row.try_get::<i64, _>(1)?).unwrap_or_default(),
            stage: CaseStage::from_str_name(&row.try_get::<String, _>(2)?)
                .unwrap_or(CaseStage::Unspecified),
        })
    })
    .transpose()
}

/// Records a keyed change in its own transaction.
pub async fn record_change(
    conn: &mut AnyConnection,
    case_reference: &str,
    key: &str,
    change: &RecordedChange,
) -> ServiceResult<()> {
    sqlx::query(
        "INSERT INTO case_changes (case_reference, idempotency_key, request_sha256, version, stage) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(case_reference)
    .bind(key)
    .bind(change.request_sha256.as_str())
    .bind(i64::try_from(change.version).unwrap_or(i64::MAX))
    .bind(change.stage.as_str_name())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A case event of the claimed case `row`, at `now`, with the fields every kind carries.
pub fn event(row: &CaseRow, kind: CaseEventKind, now: Timestamp) -> CaseEvent {
    CaseEvent {
        case_reference: row.case_reference.clone(),
        kind: kind as i32,
        occurred_at: Some(time::to_proto(now)),
        risk_level: row.risk_level as i32,
        curator_user_id: row.curator_user_id.clone(),
        next_review_on: None,
        actions: Vec::new(),
        help_request_message_id: row.help_request_message_id.clone(),
        cycle: row.cycle,
    }
}

/// The decision's hook: starts the case file (version 1, stage ASSESSMENT, cycle 1) and queues
/// the `CASE_OPENED` event, inside the decision's transaction.
pub async fn open(conn: &mut AnyConnection, case: &OpenedCase<'_>) -> ServiceResult<()> {
    let opened_at = time::to_micros(case.opened_at);
    sqlx::query(
        "INSERT INTO case_files (case_reference, version, stage, cycle, curator_user_id, \
         risk_level, opened_at, updated_at) VALUES ($1, 1, $2, 1, $3, $4, $5, $5)",
    )
    .bind(case.case_reference)
    .bind(CaseStage::Assessment.as_str_name())
    .bind(case.curator_user_id)
    .bind(RiskLevel::Unspecified.as_str_name())
    .bind(opened_at)
    .execute(&mut *conn)
    .await?;
    insert_cycle(conn, case.case_reference, 1, case.opened_at, "").await?;
    let row = CaseRow {
        case_reference: case.case_reference.to_owned(),
        version: 1,
        stage: CaseStage::Assessment,
        cycle: 1,
        curator_user_id: case.curator_user_id.to_owned(),
        risk_level: RiskLevel::Unspecified,
        opened_at: case.opened_at,
        help_request_message_id: case.help_request_message_id.to_owned(),
        decision_sent: false,
    };
    let event = event(&row, CaseEventKind::CaseOpened, case.opened_at);
    queue_event(conn, 1, case.decided_by, event).await
}

/// Starts cycle `cycle` of a case.
pub async fn insert_cycle(
    conn: &mut AnyConnection,
    case_reference: &str,
    cycle: u32,
    opened_at: Timestamp,
    reopen_reason: &str,
) -> ServiceResult<()> {
    sqlx::query(
        "INSERT INTO case_cycles (case_reference, cycle, opened_at, reopen_reason, assessment, \
         risk_level, assessment_filed_at, support_plan, support_plan_filed_at, closure) \
         VALUES ($1, $2, $3, $4, NULL, $5, NULL, NULL, NULL, NULL)",
    )
    .bind(case_reference)
    .bind(i64::from(cycle))
    .bind(time::to_micros(opened_at))
    .bind(reopen_reason)
    .bind(RiskLevel::Unspecified.as_str_name())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The refused decision's hook: removes everything kept about the case, inside the transaction
/// that removes the decision. (Nothing but the opening can exist: changes wait for the decision
/// to reach the gateway, and so does the outbox.)
pub async fn withdraw(conn: &mut AnyConnection, case_reference: &str) -> ServiceResult<()> {
    for table in [
        "case_outbox",
        "case_changes",
        "information_requests",
        "case_documents",
        "case_contacts",
        "case_actions",
        "case_cycles",
        "case_files",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE case_reference = $1"
        )))
        .bind(case_reference)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use referral_core::db::Row as _;
    use referral_proto::v1::RecordCaseEventRequest;

    use super::*;
    use crate::testing::{self, CASE, CURATOR, K_ID, now};

    async fn outbox_events(
        db: &referral_core::db::Database,
    ) -> Vec<(String, RecordCaseEventRequest)> {
        sqlx::query(
            "SELECT outbox_key, event FROM case_outbox WHERE item_kind = 'event' \
             ORDER BY case_version",
        )
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let bytes: Vec<u8> = r.try_get(1).unwrap();
            (
                r.try_get(0).unwrap(),
                RecordCaseEventRequest::decode(bytes.as_slice()).unwrap(),
            )
        })
        .collect()
    }

    #[tokio::test]
    async fn a_case_opens_at_version_one_with_its_event_queued() {
        let (db, _dir) = testing::store().await;
        testing::open_case(&db, true).await;
        let mut conn = db.pool().acquire().await.unwrap();
        let row = load(&mut conn, CASE).await.unwrap().unwrap();
        assert_eq!(row.version, 1);
        assert_eq!(row.stage, CaseStage::Assessment);
        assert_eq!(row.cycle, 1);
        assert_eq!(row.curator_user_id, CURATOR);
        assert_eq!(row.help_request_message_id, K_ID);
        assert!(row.decision_sent);

        let events = outbox_events(&db).await;
        assert_eq!(events.len(), 1);
        let (key, request) = &events[0];
        assert_eq!(key, "case-event-KTIZhK-2026-000001-v1");
        assert_eq!(&request.idempotency_key, key);
        let event = request.event.as_ref().unwrap();
        assert_eq!(event.kind, CaseEventKind::CaseOpened as i32);
        assert_eq!(event.cycle, 1);
        assert_eq!(event.curator_user_id, CURATOR);
        assert_eq!(event.help_request_message_id, K_ID);
        assert_eq!(event.occurred_at, Some(time::to_proto(now())));
        assert_eq!(
            request.acting_user.as_ref().unwrap().user_id,
            testing::secretary().user_id
        );
    }

    #[tokio::test]
    async fn a_stale_base_version_is_refused_and_changes_nothing() {
        let (db, _dir) = testing::store().await;
        testing::open_case(&db, true).await;

        let mut tx = db.begin().await.unwrap();
        let row = claim(&mut tx, CASE, 1, now()).await.unwrap();
        assert_eq!(row.version, 2);
        tx.commit().await.unwrap();

        let mut tx = db.begin().await.unwrap();
        let err = claim(&mut tx, CASE, 1, now()).await.unwrap_err();
        assert!(matches!(err, CaseError::Stale { current: 2 }), "{err:?}");
        let status = ServiceError::from(err);
        assert!(
            matches!(&status, ServiceError::Aborted(m) if m == "case changed: current version 2"),
            "{status:?}"
        );
        drop(tx);

        let mut tx = db.begin().await.unwrap();
        assert!(matches!(
            claim(&mut tx, "KTIZhK-2026-999999", 1, now()).await,
            Err(CaseError::NotFound)
        ));
        drop(tx);

        let mut conn = db.pool().acquire().await.unwrap();
        assert_eq!(load(&mut conn, CASE).await.unwrap().unwrap().version, 2);
    }

    #[tokio::test]
    async fn of_two_changes_on_the_same_version_exactly_one_wins() {
        let (db, _dir) = testing::store().await;
        testing::open_case(&db, true).await;
        let attempt = |db: referral_core::db::Database| async move {
            let mut tx = db.begin().await.unwrap();
            let claimed = claim(&mut tx, CASE, 1, now()).await;
            if claimed.is_ok() {
                tx.commit().await.unwrap();
            }
            claimed.map(|row| row.version)
        };
        let (a, b) = tokio::join!(
            tokio::spawn(attempt(db.clone())),
            tokio::spawn(attempt(db.clone()))
        );
        let results = [a.unwrap(), b.unwrap()];
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
        assert!(
            results
                .iter()
                .any(|r| matches!(r, Err(CaseError::Stale { current: 2 })))
        );
    }

    #[tokio::test]
    async fn changes_wait_for_the_opening_decision_to_reach_the_gateway() {
        let (db, _dir) = testing::store().await;
        testing::open_case(&db, false).await;
        let mut tx = db.begin().await.unwrap();
        assert!(matches!(
            claim(&mut tx, CASE, 1, now()).await,
            Err(CaseError::DecisionPending)
        ));
    }

    #[tokio::test]
    async fn a_withdrawn_case_leaves_nothing_behind() {
        let (db, _dir) = testing::store().await;
        testing::open_case(&db, false).await;
        let mut tx = db.begin().await.unwrap();
        withdraw(&mut tx, CASE).await.unwrap();
        tx.commit().await.unwrap();
        let mut conn = db.pool().acquire().await.unwrap();
        assert!(load(&mut conn, CASE).await.unwrap().is_none());
        assert!(outbox_events(&db).await.is_empty());
    }

    #[test]
    fn stages_are_checked_and_a_closed_case_refuses_changes() {
        let mut row = CaseRow {
            case_reference: CASE.into(),
            version: 3,
            stage: CaseStage::Planning,
            cycle: 1,
            curator_user_id: CURATOR.into(),
            risk_level: RiskLevel::High,
            opened_at: now(),
            help_request_message_id: K_ID.into(),
            decision_sent: true,
        };
        assert!(
            row.check_stage("FileSupportPlan", CaseStage::Planning)
                .is_ok()
        );
        let err = row
            .check_stage("FileAssessment", CaseStage::Assessment)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "FileAssessment needs a case in stage ASSESSMENT; this case is in stage PLANNING"
        );
        row.stage = CaseStage::Closed;
        assert!(matches!(
            row.check_stage("FileAssessment", CaseStage::Assessment),
            Err(CaseError::Closed)
        ));
        assert!(matches!(row.check_open(), Err(CaseError::Closed)));
        assert!(matches!(
            ServiceError::from(CaseError::Closed),
            ServiceError::FailedPrecondition(_)
        ));
        assert!(row.check_stage("ReopenCase", CaseStage::Closed).is_ok());
    }

    #[test]
    fn message_keys_are_stable_valid_and_distinct() {
        let a = message_key("assign", CASE, 4, "1");
        assert_eq!(a, message_key("assign", CASE, 4, "1"));
        assert_ne!(a, message_key("assign", CASE, 4, "2"));
        assert_ne!(a, message_key("assign", CASE, 5, "1"));
        let mut v = referral_core::FieldViolations::new();
        referral_core::validate::idempotency_key(&a, "key", &mut v);
        referral_core::validate::idempotency_key(&event_key(CASE, 12), "key", &mut v);
        assert!(v.is_empty(), "{v}");
    }
}
