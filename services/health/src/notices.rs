//! Referrals and notices: a referral is recorded when the commission asks the facility about a
//! case; every notice a health worker sends is checked against the referral's life, stored, and
//! sent to the commission as a HEALTH_NOTICE.
//!
//! A notice is one transaction (the referral's new state, the notice row with what it replaced,
//! the message queued in `sent_messages`), then handed to the gateway; a notice the gateway
//! refuses is undone, one it cannot take yet is pushed again by the background task.

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
    ActingUser, ConfidentialityLabel, Envelope, FormKind, HealthNotice, HealthNoticeKind,
    HealthReferral, ListReferralsRequest, ListReferralsResponse, Payload, PurposeOfUse, Role,
    SendNoticeRequest, SendNoticeResponse, health_notices_server, payload::Form,
};
use sha2::{Digest as _, Sha256};
use sqlx::AnyConnection;
use tonic::{Request, Response, Status};

const COLUMNS: &str = "case_reference, commission_agency_id, received_message_id, \
    received_form_kind, received_at, last_notice, admitted, version";

/// Whether a notice of kind `next` may follow the referral's `last` notice, `admitted` telling
/// whether the child was admitted. `Err` says why not.
pub fn may_send(
    last: HealthNoticeKind,
    admitted: bool,
    next: HealthNoticeKind,
) -> Result<(), &'static str> {
    use HealthNoticeKind as K;
    if matches!(last, K::Discharged | K::ReferralDeclined) {
        return Err("the referral has ended (discharged or declined): nothing follows");
    }
    match next {
        K::Admitted if admitted => Err("the child was admitted already"),
        K::Treatment | K::Rehabilitation | K::Discharged if !admitted => {
            Err("the child has not been admitted")
        }
        K::ReferralDeclined if last != K::Unspecified => {
            Err("a referral is declined before any other notice, or not at all")
        }
        K::Unspecified => Err("a known notice kind is required"),
        _ => Ok(()),
    }
}

/// Records the referral of a case the commission asks the facility about, once per case; inside
/// the inbox's transaction.
pub(crate) async fn on_received(
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
    let kind = FormKind::try_from(envelope.form_kind).unwrap_or_default();
    sqlx::query(
        "INSERT INTO health_referrals (case_reference, commission_agency_id, \
         received_message_id, received_form_kind, received_at, last_notice, admitted, version) \
         VALUES ($1, $2, $3, $4, $5, $6, 0, 1) ON CONFLICT (case_reference) DO NOTHING",
    )
    .bind(case_reference)
    .bind(envelope.sender_agency_id.as_str())
    .bind(envelope.message_id.as_str())
    .bind(kind.as_str_name())
    .bind(time::to_micros(now))
    .bind(HealthNoticeKind::Unspecified.as_str_name())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[derive(Debug, Clone)]
struct Row {
    case_reference: String,
    commission: String,
    received_message_id: String,
    received_form_kind: FormKind,
    received_at: i64,
    last: HealthNoticeKind,
    admitted: bool,
    version: i64,
}

fn from_row(r: &sqlx::any::AnyRow) -> ServiceResult<Row> {
    Ok(Row {
        case_reference: r.try_get(0)?,
        commission: r.try_get(1)?,
        received_message_id: r.try_get(2)?,
        received_form_kind: FormKind::from_str_name(&r.try_get::<String, _>(3)?)
            .unwrap_or_default(),
        received_at: r.try_get(4)?,
        last: HealthNoticeKind::from_str_name(&r.try_get::<String, _>(5)?).unwrap_or_default(),
        admitted: r.try_get::<i64, _>(6)? == 1,
        version: r.try_get(7)?,
    })
}

async fn load(conn: &mut AnyConnection, case: &str) -> ServiceResult<Option<Row>> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM health_referrals WHERE case_reference = $1"
    )))
    .bind(case)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(from_row)
    .transpose()
}

async fn view(conn: &mut AnyConnection, row: &Row) -> ServiceResult<HealthReferral> {
    let notices =
        sqlx::query("SELECT notice FROM health_notices WHERE case_reference = $1 ORDER BY version")
            .bind(row.case_reference.as_str())
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| {
                HealthNotice::decode(r.try_get::<Vec<u8>, _>(0)?.as_slice())
                    .map_err(ServiceError::internal)
            })
            .collect::<ServiceResult<Vec<_>>>()?;
    Ok(HealthReferral {
        case_reference: row.case_reference.clone(),
        commission_agency_id: row.commission.clone(),
        received_message_id: row.received_message_id.clone(),
        received_form_kind: row.received_form_kind as i32,
        received_at: Some(time::micros_to_proto(row.received_at)),
        last_notice: row.last as i32,
        notices,
    })
}

fn health_worker(user: &ActingUser) -> ServiceResult<()> {
    if user.role == Role::HealthWorker as i32 {
        Ok(())
    } else {
        Err(ServiceError::PermissionDenied(
            "notices are the health workers' work".into(),
        ))
    }
}

fn check(request: &SendNoticeRequest, today: Date) -> ServiceResult<()> {
    let mut v = FieldViolations::new();
    validate::text(
        &mut v,
        "case_reference",
        &request.case_reference,
        Text::required(1, 100),
    );
    validate::idempotency_key(&request.idempotency_key, "idempotency_key", &mut v);
    let kind = HealthNoticeKind::try_from(request.kind).unwrap_or_default();
    if kind == HealthNoticeKind::Unspecified {
        v.add("kind", "required: a known health notice kind");
    }
    match request.on.as_ref().and_then(validate::calendar_date) {
        None => v.add("on", "required: a real calendar date"),
        Some(d) if d > today => v.add("on", "must not be in the future"),
        Some(_) => {}
    }
    validate::text(
        &mut v,
        "facility",
        &request.facility,
        Text::required(1, 200),
    );
    let note = if kind == HealthNoticeKind::ReferralDeclined {
        Text::required(1, LONG_TEXT_MAX).multiline()
    } else {
        Text::optional(LONG_TEXT_MAX).multiline()
    };
    validate::text(&mut v, "note", &request.note, note);
    v.into_result()
}

/// The `sent_messages` key of the notice sent for a request's idempotency key: hashed, so that
/// any key the staff API accepts makes a key the gateway accepts.
fn message_key(idempotency_key: &str) -> String {
    format!(
        "health-notice:{}",
        hex::encode(Sha256::digest(idempotency_key.as_bytes()))
    )
}

/// The `HealthNotices` staff service.
#[derive(Debug, Clone)]
pub struct HealthNoticesApi {
    host: AgencyHost,
}

impl HealthNoticesApi {
    pub fn new(host: AgencyHost) -> Self {
        Self { host }
    }

    async fn send(
        &self,
        user: ActingUser,
        request: SendNoticeRequest,
    ) -> ServiceResult<SendNoticeResponse> {
        health_worker(&user)?;
        check(&request, self.host.today())?;
        let key = message_key(&request.idempotency_key);
        let sha = hex::encode(Sha256::digest(request.encode_to_vec()));
        let now = self.host.clock().now();
        let mut tx = self.host.begin().await?;
        let row = load(&mut tx, &request.case_reference)
            .await?
            .ok_or_else(|| ServiceError::NotFound("no referral for this case".into()))?;
        if let Some(seen) =
            sqlx::query("SELECT request_sha256 FROM health_notices WHERE message_key = $1")
                .bind(key.as_str())
                .fetch_optional(&mut *tx)
                .await?
        {
            tx.rollback().await?;
            if seen.try_get::<String, _>(0)? != sha {
                return Err(ServiceError::AlreadyExists(
                    "this idempotency key was already used for another notice".into(),
                ));
            }
            return self.push_and_answer(&row.case_reference, &key).await;
        }
        let kind = HealthNoticeKind::try_from(request.kind).unwrap_or_default();
        may_send(row.last, row.admitted, kind)
            .map_err(|why| ServiceError::FailedPrecondition(why.into()))?;
        let notice = HealthNotice {
            case_reference: row.case_reference.clone(),
            kind: kind as i32,
            on: request.on,
            facility: request.facility.clone(),
            note: request.note.clone(),
            reported_by: user.display_name.clone(),
        };
        let admitted = row.admitted || kind == HealthNoticeKind::Admitted;
        let version = row.version + 1;
        let moved = sqlx::query(
            "UPDATE health_referrals SET last_notice = $1, admitted = $2, version = $3 \
             WHERE case_reference = $4 AND version = $5",
        )
        .bind(kind.as_str_name())
        .bind(i64::from(admitted))
        .bind(version)
        .bind(row.case_reference.as_str())
        .bind(row.version)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved != 1 {
            return Err(ServiceError::Aborted(
                "the referral changed meanwhile: read it again".into(),
            ));
        }
        sqlx::query(
            "INSERT INTO health_notices (message_key, case_reference, version, request_sha256, \
             notice, prev_notice, prev_admitted, recorded_by, recorded_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(key.as_str())
        .bind(row.case_reference.as_str())
        .bind(version)
        .bind(sha.as_str())
        .bind(notice.encode_to_vec())
        .bind(row.last.as_str_name())
        .bind(i64::from(row.admitted))
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
            form_kind: FormKind::HealthNotice as i32,
            confidentiality: ConfidentialityLabel::Restricted as i32,
            payload: Some(Payload {
                form: Some(Form::HealthNotice(notice)),
            }),
            ..Envelope::default()
        };
        self.host
            .queue_message(&mut tx, &key, &user.user_id, &envelope, now)
            .await?;
        tx.commit().await?;
        self.push_and_answer(&row.case_reference, &key).await
    }

    async fn push_and_answer(&self, case: &str, key: &str) -> ServiceResult<SendNoticeResponse> {
        let message_id = match self
            .host
            .push_message(key)
            .await
            .map_err(ServiceError::from)?
        {
            PushOutcome::Sent(id) => id,
            PushOutcome::NotNow(failure) => {
                tracing::warn!(?failure, "a health notice waits for the gateway");
                String::new()
            }
            PushOutcome::Refused(failure) => {
                undo(&self.host, key).await?;
                return Err(failure.into_service_error());
            }
            PushOutcome::Unknown => String::new(),
        };
        let mut conn = self.host.pool().acquire().await?;
        let row = load(&mut conn, case)
            .await?
            .ok_or_else(|| ServiceError::NotFound("no referral for this case".into()))?;
        Ok(SendNoticeResponse {
            referral: Some(view(&mut conn, &row).await?),
            message_id,
        })
    }
}

/// Undoes a notice the gateway refused.
async fn undo(host: &AgencyHost, key: &str) -> ServiceResult<()> {
    let mut tx = host.begin().await?;
    let Some(notice) = sqlx::query(
        "SELECT case_reference, version, prev_notice, prev_admitted FROM health_notices \
         WHERE message_key = $1",
    )
    .bind(key)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(());
    };
    let case: String = notice.try_get(0)?;
    let version: i64 = notice.try_get(1)?;
    sqlx::query(
        "UPDATE health_referrals SET last_notice = $1, admitted = $2, version = $3 \
         WHERE case_reference = $4 AND version = $5",
    )
    .bind(notice.try_get::<String, _>(2)?)
    .bind(notice.try_get::<i64, _>(3)?)
    .bind(version - 1)
    .bind(case.as_str())
    .bind(version)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM health_notices WHERE message_key = $1")
        .bind(key)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Pushes the notices the gateway could not take when they were sent.
pub(crate) async fn push_pending(host: &AgencyHost) {
    host.push_pending(
        "SELECT n.message_key FROM health_notices n \
         JOIN sent_messages s ON s.idempotency_key = n.message_key \
         WHERE s.message_id IS NULL ORDER BY n.recorded_at LIMIT 100",
        "health notice",
        |key| async move { undo(host, &key).await },
    )
    .await;
}

#[tonic::async_trait]
impl health_notices_server::HealthNotices for HealthNoticesApi {
    async fn list_referrals(
        &self,
        request: Request<ListReferralsRequest>,
    ) -> Result<Response<ListReferralsResponse>, Status> {
        let user = acting_user(&request)?;
        health_worker(&user)?;
        let mut conn = self
            .host
            .pool()
            .acquire()
            .await
            .map_err(ServiceError::from)?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM health_referrals ORDER BY received_at DESC, case_reference"
        )))
        .fetch_all(&mut *conn)
        .await
        .map_err(ServiceError::from)?;
        let mut referrals = Vec::with_capacity(rows.len());
        for r in &rows {
            referrals.push(view(&mut conn, &from_row(r)?).await?);
        }
        Ok(Response::new(ListReferralsResponse { referrals }))
    }

    async fn send_notice(
        &self,
        request: Request<SendNoticeRequest>,
    ) -> Result<Response<SendNoticeResponse>, Status> {
        let user = acting_user(&request)?;
        Ok(Response::new(self.send(user, request.into_inner()).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthNoticeKind as K;

    #[test]
    fn notices_follow_the_referral() {
        assert!(may_send(K::Unspecified, false, K::Admitted).is_ok());
        assert!(may_send(K::Unspecified, false, K::ReferralDeclined).is_ok());
        assert!(may_send(K::Unspecified, false, K::PsychologicalSupport).is_ok());
        assert!(may_send(K::Unspecified, false, K::Treatment).is_err());
        assert!(may_send(K::Unspecified, false, K::Discharged).is_err());
        assert!(may_send(K::Admitted, true, K::Treatment).is_ok());
        assert!(may_send(K::Treatment, true, K::Rehabilitation).is_ok());
        assert!(may_send(K::Treatment, true, K::Admitted).is_err());
        assert!(may_send(K::Admitted, true, K::ReferralDeclined).is_err());
        assert!(may_send(K::Rehabilitation, true, K::Discharged).is_ok());
        assert!(may_send(K::Discharged, true, K::Treatment).is_err());
        assert!(may_send(K::ReferralDeclined, false, K::Admitted).is_err());
    }
}
