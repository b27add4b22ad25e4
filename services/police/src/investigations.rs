//! Investigations: created on a request or assignment received, moved through their lifecycle by
//! inspectors, every accepted change sent to the commission as an INVESTIGATION_UPDATE.
//!
//! A change is one transaction (the investigation's new state, the change row with what it
//! replaced, and the update queued in `sent_messages`), then handed to the gateway. If the gateway
//! refuses it (it never should: the police work on the case), the change is undone, so a refused
//! update leaves nothing behind; if the gateway cannot be reached, the update stays queued and is
//! pushed again by the background task.

use jiff::{Timestamp, civil::Date};
use prost::Message as _;
use referral_agency::{AgencyHost, PushOutcome, acting_user, forms::form};
use referral_core::{
    FieldViolations, ServiceError, ServiceResult,
    db::Row as _,
    time,
    validate::{self, LONG_TEXT_MAX, Text},
};
use referral_proto::v1::{
    ActingUser, CalendarDate, ConfidentialityLabel, Envelope, FormKind, GetInvestigationRequest,
    Investigation, InvestigationChange, InvestigationStatus, InvestigationUpdate,
    ListInvestigationsRequest, ListInvestigationsResponse, Payload, PurposeOfUse, Role,
    UpdateInvestigationRequest, UpdateInvestigationResponse, investigations_server, payload::Form,
};
use sha2::{Digest as _, Sha256};
use sqlx::AnyConnection;
use tonic::{Request, Response, Status};

const COLUMNS: &str = "investigation_id, case_reference, commission_agency_id, \
    received_message_id, status, status_on, hearing_on, summary, version, received_at";

/// Whether an investigation may move from `from` to `to` (M:3215-3220).
pub fn may_move(from: InvestigationStatus, to: InvestigationStatus) -> bool {
    use InvestigationStatus as S;
    matches!(
        (from, to),
        (S::Received, S::Opened)
            | (S::Opened, S::ReferredToProsecutor)
            | (S::Opened, S::Closed)
            | (S::ReferredToProsecutor, S::HearingScheduled)
            | (S::HearingScheduled, S::Decided)
            | (S::Decided, S::Closed)
    )
}

/// Creates the investigation of a case the commission asks the police about, RECEIVED, once per
/// case; inside the inbox's transaction.
pub(crate) async fn on_received(
    host: &AgencyHost,
    conn: &mut AnyConnection,
    envelope: &Envelope,
    now: Timestamp,
) -> ServiceResult<()> {
    let case_reference = match form(envelope) {
        Some(Form::InformationRequest(r)) => r.case_reference.as_str(),
        Some(Form::ActionAssignment(a)) => a.case_reference.as_str(),
        _ => return Ok(()),
    };
    if case_reference.is_empty() {
        return Ok(());
    }
    let today = now.to_zoned(host.time_zone().clone()).date();
    let created = sqlx::query(
        "INSERT INTO investigations (investigation_id, case_reference, commission_agency_id, \
         received_message_id, status, status_on, hearing_on, summary, version, received_at, \
         updated_at) VALUES ($1, $2, $3, $4, $5, $6, NULL, '', 1, $7, $7) \
         ON CONFLICT (case_reference) DO NOTHING",
    )
    .bind(format!("INV-{}", uuid::Uuid::now_v7().simple()))
    .bind(case_reference)
    .bind(envelope.sender_agency_id.as_str())
    .bind(envelope.message_id.as_str())
    .bind(InvestigationStatus::Received.as_str_name())
    .bind(today.to_string())
    .bind(time::to_micros(now))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    tracing::info!(message_id = %envelope.message_id, created = created == 1, "investigation received");
    Ok(())
}

/// One investigation row.
#[derive(Debug, Clone)]
struct Row {
    id: String,
    case_reference: String,
    commission: String,
    received_message_id: String,
    status: InvestigationStatus,
    status_on: String,
    hearing_on: Option<String>,
    summary: String,
    version: i64,
    received_at: i64,
}

fn from_row(r: &sqlx::any::AnyRow) -> ServiceResult<Row> {
    Ok(Row {
        id: r.try_get(0)?,
        case_reference: r.try_get(1)?,
        commission: r.try_get(2)?,
        received_message_id: r.try_get(3)?,
        status: InvestigationStatus::from_str_name(&r.try_get::<String, _>(4)?).unwrap_or_default(),
        status_on: r.try_get(5)?,
        hearing_on: r.try_get(6)?,
        summary: r.try_get(7)?,
        version: r.try_get(8)?,
        received_at: r.try_get(9)?,
    })
}

fn date_of(text: Option<&str>) -> Option<CalendarDate> {
    text.and_then(|t| t.parse::<Date>().ok())
        .map(validate::to_calendar_date)
}

/// Loads one investigation by id or, when `id` is empty, by case.
async fn load(conn: &mut AnyConnection, id: &str, case: &str) -> ServiceResult<Option<Row>> {
    let (column, value) = if id.is_empty() {
        ("case_reference", case)
    } else {
        ("investigation_id", id)
    };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM investigations WHERE {column} = $1"
    )))
    .bind(value)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(from_row)
    .transpose()
}

/// The investigation as the staff API shows it, with every update sent.
async fn view(conn: &mut AnyConnection, row: &Row) -> ServiceResult<Investigation> {
    let history = sqlx::query(
        "SELECT c.update_sent, s.message_id, c.recorded_at FROM investigation_changes c \
         LEFT JOIN sent_messages s ON s.idempotency_key = c.message_key \
         WHERE c.investigation_id = $1 ORDER BY c.version",
    )
    .bind(row.id.as_str())
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        Ok(InvestigationChange {
            update: Some(
                InvestigationUpdate::decode(r.try_get::<Vec<u8>, _>(0)?.as_slice())
                    .map_err(ServiceError::internal)?,
            ),
            message_id: r.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
            recorded_at: Some(time::micros_to_proto(r.try_get(2)?)),
        })
    })
    .collect::<ServiceResult<Vec<_>>>()?;
    Ok(Investigation {
        investigation_id: row.id.clone(),
        case_reference: row.case_reference.clone(),
        commission_agency_id: row.commission.clone(),
        status: row.status as i32,
        status_on: date_of(Some(&row.status_on)),
        hearing_on: date_of(row.hearing_on.as_deref()),
        summary: row.summary.clone(),
        version: u64::try_from(row.version).unwrap_or_default(),
        received_at: Some(time::micros_to_proto(row.received_at)),
        received_message_id: row.received_message_id.clone(),
        history,
    })
}

fn inspector(user: &ActingUser) -> ServiceResult<()> {
    if user.role == Role::PoliceJuvenileInspector as i32 {
        Ok(())
    } else {
        Err(ServiceError::PermissionDenied(
            "investigations are the juvenile inspectors' work".into(),
        ))
    }
}

fn name_check(v: &mut FieldViolations, id: &str, case: &str) {
    if id.is_empty() == case.is_empty() {
        v.add(
            "investigation_id",
            "exactly one of investigation_id and case_reference is required",
        );
    }
    validate::text(v, "investigation_id", id, Text::optional(100));
    validate::text(v, "case_reference", case, Text::optional(100));
}

/// Checks an update request's fields; the new status's date must not be in the future.
fn check_update(request: &UpdateInvestigationRequest, today: Date) -> ServiceResult<()> {
    let mut v = FieldViolations::new();
    name_check(&mut v, &request.investigation_id, &request.case_reference);
    validate::idempotency_key(&request.idempotency_key, "idempotency_key", &mut v);
    let status =
        InvestigationStatus::try_from(request.status).unwrap_or(InvestigationStatus::Unspecified);
    if matches!(
        status,
        InvestigationStatus::Unspecified | InvestigationStatus::Received
    ) {
        v.add(
            "status",
            "required: opened, referred to prosecutor, hearing scheduled, decided or closed",
        );
    }
    match request.status_on.as_ref().and_then(validate::calendar_date) {
        None => v.add("status_on", "required: a real calendar date"),
        Some(d) if d > today => v.add("status_on", "must not be in the future"),
        Some(_) => {}
    }
    let hearing = request
        .hearing_on
        .as_ref()
        .filter(|d| **d != CalendarDate::default());
    if status == InvestigationStatus::HearingScheduled {
        if hearing.and_then(validate::calendar_date).is_none() {
            v.add("hearing_on", "required: a real calendar date");
        }
    } else if hearing.is_some() {
        v.add("hearing_on", "only when the status is hearing scheduled");
    }
    // A decision and a closure say what was decided, or why there were no grounds.
    let summary_rule = if matches!(
        status,
        InvestigationStatus::Decided | InvestigationStatus::Closed
    ) {
        Text::required(1, LONG_TEXT_MAX).multiline()
    } else {
        Text::optional(LONG_TEXT_MAX).multiline()
    };
    validate::text(&mut v, "summary", &request.summary, summary_rule);
    v.into_result()
}

fn fingerprint(request: &UpdateInvestigationRequest) -> String {
    hex::encode(Sha256::digest(request.encode_to_vec()))
}

/// The `sent_messages` key of the update sent for a request's idempotency key: hashed, so that
/// any key the staff API accepts makes a key the gateway accepts.
fn message_key(idempotency_key: &str) -> String {
    format!(
        "investigation-update:{}",
        hex::encode(Sha256::digest(idempotency_key.as_bytes()))
    )
}

/// The `Investigations` staff service.
#[derive(Debug, Clone)]
pub struct InvestigationsApi {
    host: AgencyHost,
}

impl InvestigationsApi {
    pub fn new(host: AgencyHost) -> Self {
        Self { host }
    }

    async fn update(
        &self,
        user: ActingUser,
        request: UpdateInvestigationRequest,
    ) -> ServiceResult<UpdateInvestigationResponse> {
        inspector(&user)?;
        check_update(&request, self.host.today())?;
        let key = message_key(&request.idempotency_key);
        let sha = fingerprint(&request);
        let now = self.host.clock().now();
        let mut tx = self.host.begin().await?;
        let row = load(&mut tx, &request.investigation_id, &request.case_reference)
            .await?
            .ok_or_else(|| ServiceError::NotFound("no such investigation".into()))?;
        // The same request again: the same answer.
        if let Some(seen) =
            sqlx::query("SELECT request_sha256 FROM investigation_changes WHERE message_key = $1")
                .bind(key.as_str())
                .fetch_optional(&mut *tx)
                .await?
        {
            tx.rollback().await?;
            if seen.try_get::<String, _>(0)? != sha {
                return Err(ServiceError::AlreadyExists(
                    "this idempotency key was already used for another update".into(),
                ));
            }
            return self.push_and_answer(&row.id, &key).await;
        }
        let to = InvestigationStatus::try_from(request.status).unwrap_or_default();
        if !may_move(row.status, to) {
            return Err(ServiceError::FailedPrecondition(format!(
                "an investigation cannot move from {} to {}",
                row.status.as_str_name(),
                to.as_str_name()
            )));
        }
        let status_on = request
            .status_on
            .as_ref()
            .and_then(validate::calendar_date)
            .unwrap_or_default();
        if status_on < row.status_on.parse::<Date>().unwrap_or_default() {
            return Err(ServiceError::invalid_field(
                "status_on",
                "must not be before the date of the current status",
            ));
        }
        let hearing_on = request
            .hearing_on
            .as_ref()
            .and_then(validate::calendar_date)
            .filter(|_| to == InvestigationStatus::HearingScheduled)
            // A hearing keeps its date until the decision.
            .or_else(|| {
                row.hearing_on
                    .as_deref()
                    .and_then(|d| d.parse().ok())
                    .filter(|_| to == InvestigationStatus::Decided)
            });
        let update = InvestigationUpdate {
            case_reference: row.case_reference.clone(),
            investigation_reference: row.id.clone(),
            status: to as i32,
            status_on: Some(validate::to_calendar_date(status_on)),
            hearing_on: hearing_on.map(validate::to_calendar_date),
            summary: request.summary.clone(),
            reported_by: user.display_name.clone(),
        };
        let version = row.version + 1;
        let moved = sqlx::query(
            "UPDATE investigations SET status = $1, status_on = $2, hearing_on = $3, \
             summary = $4, version = $5, updated_at = $6 \
             WHERE investigation_id = $7 AND version = $8",
        )
        .bind(to.as_str_name())
        .bind(status_on.to_string())
        .bind(hearing_on.map(|d| d.to_string()))
        .bind(request.summary.as_str())
        .bind(version)
        .bind(time::to_micros(now))
        .bind(row.id.as_str())
        .bind(row.version)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved != 1 {
            return Err(ServiceError::Aborted(
                "the investigation changed meanwhile: read it again".into(),
            ));
        }
        sqlx::query(
            "INSERT INTO investigation_changes (message_key, investigation_id, version, \
             request_sha256, update_sent, prev_status, prev_status_on, prev_hearing_on, \
             prev_summary, recorded_by, recorded_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(key.as_str())
        .bind(row.id.as_str())
        .bind(version)
        .bind(sha.as_str())
        .bind(update.encode_to_vec())
        .bind(row.status.as_str_name())
        .bind(row.status_on.as_str())
        .bind(row.hearing_on.as_deref())
        .bind(row.summary.as_str())
        .bind(user.user_id.as_str())
        .bind(time::to_micros(now))
        .execute(&mut *tx)
        .await?;
        let envelope = Envelope {
            idempotency_key: key.clone(),
            sender_agency_id: self.host.agency_id().to_owned(),
            recipient_agency_id: row.commission.clone(),
            acting_user: Some(user.clone()),
            purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
            case_reference: row.case_reference.clone(),
            form_kind: FormKind::InvestigationUpdate as i32,
            confidentiality: ConfidentialityLabel::Restricted as i32,
            payload: Some(Payload {
                form: Some(Form::InvestigationUpdate(update)),
            }),
            ..Envelope::default()
        };
        self.host
            .queue_message(&mut tx, &key, &user.user_id, &envelope, now)
            .await?;
        tx.commit().await?;
        self.push_and_answer(&row.id, &key).await
    }

    /// Hands the update queued under `key` to the gateway and answers with the investigation.
    async fn push_and_answer(
        &self,
        id: &str,
        key: &str,
    ) -> ServiceResult<UpdateInvestigationResponse> {
        let message_id = match self
            .host
            .push_message(key)
            .await
            .map_err(ServiceError::from)?
        {
            PushOutcome::Sent(id) => id,
            PushOutcome::NotNow(failure) => {
                tracing::warn!(?failure, "an investigation update waits for the gateway");
                String::new()
            }
            PushOutcome::Refused(failure) => {
                undo(&self.host, key).await?;
                return Err(failure.into_service_error());
            }
            PushOutcome::Unknown => String::new(),
        };
        let mut conn = self.host.pool().acquire().await?;
        let row = load(&mut conn, id, "")
            .await?
            .ok_or_else(|| ServiceError::NotFound("no such investigation".into()))?;
        Ok(UpdateInvestigationResponse {
            investigation: Some(view(&mut conn, &row).await?),
            message_id,
        })
    }
}

/// Undoes the change whose update the gateway refused: the investigation gets back what the
/// change replaced, and the change row goes.
async fn undo(host: &AgencyHost, key: &str) -> ServiceResult<()> {
    let mut tx = host.begin().await?;
    let Some(change) = sqlx::query(
        "SELECT investigation_id, version, prev_status, prev_status_on, prev_hearing_on, \
         prev_summary FROM investigation_changes WHERE message_key = $1",
    )
    .bind(key)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(());
    };
    let id: String = change.try_get(0)?;
    let version: i64 = change.try_get(1)?;
    sqlx::query(
        "UPDATE investigations SET status = $1, status_on = $2, hearing_on = $3, summary = $4, \
         version = $5 WHERE investigation_id = $6 AND version = $7",
    )
    .bind(change.try_get::<String, _>(2)?)
    .bind(change.try_get::<String, _>(3)?)
    .bind(change.try_get::<Option<String>, _>(4)?)
    .bind(change.try_get::<String, _>(5)?)
    .bind(version - 1)
    .bind(id.as_str())
    .bind(version)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM investigation_changes WHERE message_key = $1")
        .bind(key)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Pushes the updates the gateway could not take when they were made.
pub(crate) async fn push_pending(host: &AgencyHost) {
    host.push_pending(
        "SELECT c.message_key FROM investigation_changes c \
         JOIN sent_messages s ON s.idempotency_key = c.message_key \
         WHERE s.message_id IS NULL ORDER BY c.recorded_at LIMIT 100",
        "investigation update",
        |key| async move { undo(host, &key).await },
    )
    .await;
}

#[tonic::async_trait]
impl investigations_server::Investigations for InvestigationsApi {
    async fn list_investigations(
        &self,
        request: Request<ListInvestigationsRequest>,
    ) -> Result<Response<ListInvestigationsResponse>, Status> {
        let user = acting_user(&request)?;
        inspector(&user)?;
        let include_closed = request.into_inner().include_closed;
        let mut conn = self
            .host
            .pool()
            .acquire()
            .await
            .map_err(ServiceError::from)?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM investigations WHERE ($1 = 1 OR status <> $2) \
             ORDER BY received_at DESC, investigation_id DESC"
        )))
        .bind(i64::from(include_closed))
        .bind(InvestigationStatus::Closed.as_str_name())
        .fetch_all(&mut *conn)
        .await
        .map_err(ServiceError::from)?;
        let mut investigations = Vec::with_capacity(rows.len());
        for r in &rows {
            investigations.push(view(&mut conn, &from_row(r)?).await?);
        }
        Ok(Response::new(ListInvestigationsResponse { investigations }))
    }

    async fn get_investigation(
        &self,
        request: Request<GetInvestigationRequest>,
    ) -> Result<Response<Investigation>, Status> {
        let user = acting_user(&request)?;
        inspector(&user)?;
        let request = request.into_inner();
        let mut v = FieldViolations::new();
        name_check(&mut v, &request.investigation_id, &request.case_reference);
        v.into_result()?;
        let mut conn = self
            .host
            .pool()
            .acquire()
            .await
            .map_err(ServiceError::from)?;
        let row = load(
            &mut conn,
            &request.investigation_id,
            &request.case_reference,
        )
        .await?
        .ok_or_else(|| ServiceError::NotFound("no such investigation".into()))?;
        Ok(Response::new(view(&mut conn, &row).await?))
    }

    async fn update_investigation(
        &self,
        request: Request<UpdateInvestigationRequest>,
    ) -> Result<Response<UpdateInvestigationResponse>, Status> {
        let user = acting_user(&request)?;
        Ok(Response::new(
            self.update(user, request.into_inner()).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use InvestigationStatus as S;

    #[test]
    fn the_lifecycle_moves_forward_only() {
        assert!(may_move(S::Received, S::Opened));
        assert!(may_move(S::Opened, S::ReferredToProsecutor));
        assert!(may_move(S::Opened, S::Closed));
        assert!(may_move(S::ReferredToProsecutor, S::HearingScheduled));
        assert!(may_move(S::HearingScheduled, S::Decided));
        assert!(may_move(S::Decided, S::Closed));
        assert!(!may_move(S::Received, S::Closed));
        assert!(!may_move(S::Received, S::Decided));
        assert!(!may_move(S::Opened, S::Opened));
        assert!(!may_move(S::Closed, S::Opened));
        assert!(!may_move(S::HearingScheduled, S::Closed));
        assert!(!may_move(S::Decided, S::HearingScheduled));
    }
}
