//! Referrals and notices: a referral is recorded when the commission asks the facility about a
//! case, or when an institution refers an injured child (INCIDENT_REFERRAL, purpose medical care:
//! one referral per child referred for care); every notice a health worker sends is checked
//! against the referral's life, stored, and sent to the commission as a HEALTH_NOTICE.
//!
//! A notice is one transaction (the referral's new state, the notice row with what it replaced,
//! the message queued in `sent_messages`), then handed to the gateway; a notice the gateway
//! refuses is undone, one it cannot take yet is pushed again by the background task.
//!
//! An institution's referral has no case yet: the commission has not opened one, or has not
//! asked the facility. Its notices are recorded and held (a HEALTH_NOTICE always names its case:
//! the gateway admits it only from an agency working on that case, and the commission files it
//! there, shown to the curator only); once the commission asks the facility about the child's
//! case, a health worker links the referral to it (`LinkReferral`) and the held notices go, oldest
//! first. Nothing of a case-less referral, not even the child's name, leaves the facility.

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
    HealthReferral, IncidentChild, IncidentReferral, IncidentReferralPurpose, LinkReferralRequest,
    LinkReferralResponse, ListReferralsRequest, ListReferralsResponse, Payload, PurposeOfUse, Role,
    SendNoticeRequest, SendNoticeResponse, health_notices_server, payload::Form,
};
use sha2::{Digest as _, Sha256};
use sqlx::AnyConnection;
use tonic::{Request, Response, Status};

const COLUMNS: &str = "referral_id, case_reference, commission_agency_id, \
    referred_by_agency_id, received_message_id, received_form_kind, received_at, \
    incident_reference, child, last_notice, admitted, version";

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

/// Records, inside the inbox's transaction, the referral of a case the commission asks the
/// facility about (once per case), or one referral per child an institution refers for care.
pub(crate) async fn on_received(
    conn: &mut AnyConnection,
    envelope: &Envelope,
    now: Timestamp,
) -> ServiceResult<()> {
    let case_reference = match form(envelope) {
        Some(Form::InformationRequest(r)) => r.case_reference.as_str(),
        Some(Form::ActionAssignment(a)) => a.case_reference.as_str(),
        Some(Form::IncidentReferral(r)) => return on_incident(conn, envelope, r, now).await,
        _ => return Ok(()),
    };
    if case_reference.is_empty() {
        return Ok(());
    }
    let kind = FormKind::try_from(envelope.form_kind).unwrap_or_default();
    sqlx::query(
        "INSERT INTO health_referrals (referral_id, case_reference, commission_agency_id, \
         referred_by_agency_id, received_message_id, received_form_kind, received_at, \
         incident_reference, child, last_notice, admitted, version) \
         VALUES ($1, $2, $3, $3, $4, $5, $6, NULL, NULL, $7, 0, 1) \
         ON CONFLICT (case_reference) DO NOTHING",
    )
    .bind(new_id())
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

fn new_id() -> String {
    format!("HR-{}", uuid::Uuid::now_v7().simple())
}

/// One referral per child of an institution's referral for medical care (M:2940-2945).
async fn on_incident(
    conn: &mut AnyConnection,
    envelope: &Envelope,
    referral: &IncidentReferral,
    now: Timestamp,
) -> ServiceResult<()> {
    let purpose = IncidentReferralPurpose::try_from(referral.purpose).unwrap_or_default();
    if purpose != IncidentReferralPurpose::MedicalCare {
        return Ok(());
    }
    let mut created = 0;
    for child in referral
        .children
        .iter()
        .filter(|c| c.referred_for_medical_care || c.injured)
    {
        created += sqlx::query(
            "INSERT INTO health_referrals (referral_id, case_reference, commission_agency_id, \
             referred_by_agency_id, received_message_id, received_form_kind, received_at, \
             incident_reference, child, last_notice, admitted, version) \
             VALUES ($1, NULL, NULL, $2, $3, $4, $5, $6, $7, $8, 0, 1)",
        )
        .bind(new_id())
        .bind(envelope.sender_agency_id.as_str())
        .bind(envelope.message_id.as_str())
        .bind(FormKind::IncidentReferral.as_str_name())
        .bind(time::to_micros(now))
        .bind(referral.incident_reference.as_str())
        .bind(child.encode_to_vec())
        .bind(HealthNoticeKind::Unspecified.as_str_name())
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    tracing::info!(message_id = %envelope.message_id, created, "injured children referred");
    Ok(())
}

#[derive(Debug, Clone)]
struct Row {
    id: String,
    case_reference: Option<String>,
    commission: Option<String>,
    referred_by: String,
    received_message_id: String,
    received_form_kind: FormKind,
    received_at: i64,
    incident_reference: Option<String>,
    child: Option<IncidentChild>,
    last: HealthNoticeKind,
    admitted: bool,
    version: i64,
}

fn from_row(r: &sqlx::any::AnyRow) -> ServiceResult<Row> {
    Ok(Row {
        id: r.try_get(0)?,
        case_reference: r.try_get(1)?,
        commission: r.try_get(2)?,
        referred_by: r.try_get(3)?,
        received_message_id: r.try_get(4)?,
        received_form_kind: FormKind::from_str_name(&r.try_get::<String, _>(5)?)
            .unwrap_or_default(),
        received_at: r.try_get(6)?,
        incident_reference: r.try_get(7)?,
        child: r
            .try_get::<Option<Vec<u8>>, _>(8)?
            .map(|b| IncidentChild::decode(b.as_slice()))
            .transpose()
            .map_err(ServiceError::internal)?,
        last: HealthNoticeKind::from_str_name(&r.try_get::<String, _>(9)?).unwrap_or_default(),
        admitted: r.try_get::<i64, _>(10)? == 1,
        version: r.try_get(11)?,
    })
}

/// Loads one referral by id or, when `id` is empty, by its case.
async fn load(conn: &mut AnyConnection, id: &str, case: &str) -> ServiceResult<Option<Row>> {
    let (column, value) = if id.is_empty() {
        ("case_reference", case)
    } else {
        ("referral_id", id)
    };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM health_referrals WHERE {column} = $1"
    )))
    .bind(value)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(from_row)
    .transpose()
}

async fn view(conn: &mut AnyConnection, row: &Row) -> ServiceResult<HealthReferral> {
    let rows = sqlx::query(
        "SELECT notice, queued FROM health_notices WHERE referral_id = $1 ORDER BY version",
    )
    .bind(row.id.as_str())
    .fetch_all(&mut *conn)
    .await?;
    let mut notices = Vec::with_capacity(rows.len());
    let mut held = 0;
    for r in &rows {
        notices.push(
            HealthNotice::decode(r.try_get::<Vec<u8>, _>(0)?.as_slice())
                .map_err(ServiceError::internal)?,
        );
        if r.try_get::<i64, _>(1)? == 0 {
            held += 1;
        }
    }
    Ok(HealthReferral {
        case_reference: row.case_reference.clone().unwrap_or_default(),
        commission_agency_id: row.commission.clone().unwrap_or_default(),
        received_message_id: row.received_message_id.clone(),
        received_form_kind: row.received_form_kind as i32,
        received_at: Some(time::micros_to_proto(row.received_at)),
        last_notice: row.last as i32,
        notices,
        referral_id: row.id.clone(),
        referred_by_agency_id: if row.incident_reference.is_some() {
            row.referred_by.clone()
        } else {
            String::new()
        },
        incident_reference: row.incident_reference.clone().unwrap_or_default(),
        child: row.child.clone(),
        held_notices: held,
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

fn name_check(v: &mut FieldViolations, id: &str, case: &str) {
    if id.is_empty() == case.is_empty() {
        v.add(
            "case_reference",
            "exactly one of case_reference and referral_id is required",
        );
    }
    validate::text(v, "case_reference", case, Text::optional(100));
    validate::text(v, "referral_id", id, Text::optional(100));
}

fn check(request: &SendNoticeRequest, today: Date) -> ServiceResult<()> {
    let mut v = FieldViolations::new();
    name_check(&mut v, &request.referral_id, &request.case_reference);
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

/// The envelope of a notice to the commission about `case`.
fn envelope(
    host: &AgencyHost,
    key: &str,
    user: &ActingUser,
    commission: &str,
    notice: HealthNotice,
) -> Envelope {
    Envelope {
        idempotency_key: key.to_owned(),
        sender_agency_id: host.agency_id().to_owned(),
        recipient_agency_id: commission.to_owned(),
        acting_user: Some(user.clone()),
        purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
        case_reference: notice.case_reference.clone(),
        form_kind: FormKind::HealthNotice as i32,
        confidentiality: ConfidentialityLabel::Restricted as i32,
        payload: Some(Payload {
            form: Some(Form::HealthNotice(notice)),
        }),
        ..Envelope::default()
    }
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
        let row = load(&mut tx, &request.referral_id, &request.case_reference)
            .await?
            .ok_or_else(|| ServiceError::NotFound("no such referral".into()))?;
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
            return self.push_and_answer(&row.id, &[key]).await;
        }
        let kind = HealthNoticeKind::try_from(request.kind).unwrap_or_default();
        may_send(row.last, row.admitted, kind)
            .map_err(|why| ServiceError::FailedPrecondition(why.into()))?;
        let notice = HealthNotice {
            case_reference: row.case_reference.clone().unwrap_or_default(),
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
             WHERE referral_id = $4 AND version = $5",
        )
        .bind(kind.as_str_name())
        .bind(i64::from(admitted))
        .bind(version)
        .bind(row.id.as_str())
        .bind(row.version)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved != 1 {
            return Err(ServiceError::Aborted(
                "the referral changed meanwhile: read it again".into(),
            ));
        }
        // Without a case the notice is held: it goes once the referral is linked.
        let queued = row.case_reference.is_some() && row.commission.is_some();
        sqlx::query(
            "INSERT INTO health_notices (message_key, referral_id, version, request_sha256, \
             notice, prev_notice, prev_admitted, recorded_by, recorded_at, queued) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(key.as_str())
        .bind(row.id.as_str())
        .bind(version)
        .bind(sha.as_str())
        .bind(notice.encode_to_vec())
        .bind(row.last.as_str_name())
        .bind(i64::from(row.admitted))
        .bind(user.user_id.as_str())
        .bind(time::to_micros(now))
        .bind(i64::from(queued))
        .execute(&mut *tx)
        .await?;
        if let (true, Some(commission)) = (queued, row.commission.as_deref()) {
            let envelope = envelope(&self.host, &key, &user, commission, notice);
            self.host
                .queue_message(&mut tx, &key, &user.user_id, &envelope, now)
                .await?;
        }
        tx.commit().await?;
        self.push_and_answer(&row.id, &[key]).await
    }

    /// Hands the notices queued under `keys` to the gateway, in order, and answers with the
    /// referral and the last one's message id. A refused notice is undone, and the refusal passed
    /// on.
    async fn push_and_answer(
        &self,
        id: &str,
        keys: &[String],
    ) -> ServiceResult<SendNoticeResponse> {
        let mut message_id = String::new();
        for key in keys {
            message_id = match self
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
                // Held for the referral's case.
                PushOutcome::Unknown => String::new(),
            };
        }
        let mut conn = self.host.pool().acquire().await?;
        let row = load(&mut conn, id, "")
            .await?
            .ok_or_else(|| ServiceError::NotFound("no such referral".into()))?;
        Ok(SendNoticeResponse {
            referral: Some(view(&mut conn, &row).await?),
            message_id,
        })
    }

    async fn link(
        &self,
        user: ActingUser,
        request: LinkReferralRequest,
    ) -> ServiceResult<LinkReferralResponse> {
        health_worker(&user)?;
        let mut v = FieldViolations::new();
        validate::text(
            &mut v,
            "referral_id",
            &request.referral_id,
            Text::required(1, 100),
        );
        validate::text(
            &mut v,
            "case_reference",
            &request.case_reference,
            Text::required(1, 100),
        );
        v.into_result()?;
        let now = self.host.clock().now();
        let mut tx = self.host.begin().await?;
        let target = load(&mut tx, &request.referral_id, "")
            .await?
            .ok_or_else(|| ServiceError::NotFound("no such referral".into()))?;
        if target.case_reference.as_deref() == Some(request.case_reference.as_str()) {
            tx.rollback().await?;
            return self.answer_link(&target.id).await;
        }
        if target.case_reference.is_some() {
            return Err(ServiceError::FailedPrecondition(
                "the referral is linked to another case already".into(),
            ));
        }
        let Some(own) = load(&mut tx, "", &request.case_reference).await? else {
            return Err(ServiceError::FailedPrecondition(
                "the commission has not asked the facility about this case: a referral is \
                 linked once its request or assignment has arrived"
                    .into(),
            ));
        };
        if own.last != HealthNoticeKind::Unspecified || own.incident_reference.is_some() {
            return Err(ServiceError::FailedPrecondition(
                "the case's referral has notices of its own: it cannot be merged".into(),
            ));
        }
        let commission = own.commission.clone().unwrap_or_default();
        // The case's own referral, recorded on the request, is absorbed.
        sqlx::query("DELETE FROM health_referrals WHERE referral_id = $1")
            .bind(own.id.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE health_referrals SET case_reference = $1, commission_agency_id = $2 \
             WHERE referral_id = $3 AND case_reference IS NULL",
        )
        .bind(request.case_reference.as_str())
        .bind(commission.as_str())
        .bind(target.id.as_str())
        .execute(&mut *tx)
        .await?;
        // The notices held for the child now go, oldest first.
        let held = sqlx::query(
            "SELECT message_key, notice FROM health_notices \
             WHERE referral_id = $1 AND queued = 0 ORDER BY version",
        )
        .bind(target.id.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let mut keys = Vec::with_capacity(held.len());
        for r in &held {
            let key: String = r.try_get(0)?;
            let mut notice = HealthNotice::decode(r.try_get::<Vec<u8>, _>(1)?.as_slice())
                .map_err(ServiceError::internal)?;
            notice.case_reference = request.case_reference.clone();
            sqlx::query("UPDATE health_notices SET notice = $1, queued = 1 WHERE message_key = $2")
                .bind(notice.encode_to_vec())
                .bind(key.as_str())
                .execute(&mut *tx)
                .await?;
            let envelope = envelope(&self.host, &key, &user, &commission, notice);
            self.host
                .queue_message(&mut tx, &key, &user.user_id, &envelope, now)
                .await?;
            keys.push(key);
        }
        tx.commit().await?;
        tracing::info!(referral = %target.id, held = keys.len(), "referral linked to its case");
        let mut refused = Vec::new();
        for key in &keys {
            match self
                .host
                .push_message(key)
                .await
                .map_err(ServiceError::from)?
            {
                PushOutcome::NotNow(failure) => {
                    tracing::warn!(?failure, "a held health notice waits for the gateway");
                }
                PushOutcome::Refused(failure) => refused.push((key, failure)),
                PushOutcome::Sent(_) | PushOutcome::Unknown => {}
            }
        }
        // A held notice the gateway refuses for good is undone, newest first (each undo restores
        // the referral's state before that notice), and the health worker is told why; the
        // referral stays linked and the notices it accepted stand.
        for (key, _) in refused.iter().rev() {
            undo(&self.host, key).await?;
        }
        if let Some((_, first)) = refused.into_iter().next() {
            return Err(first.into_service_error());
        }
        self.answer_link(&target.id).await
    }

    async fn answer_link(&self, id: &str) -> ServiceResult<LinkReferralResponse> {
        let mut conn = self.host.pool().acquire().await?;
        let row = load(&mut conn, id, "")
            .await?
            .ok_or_else(|| ServiceError::NotFound("no such referral".into()))?;
        Ok(LinkReferralResponse {
            referral: Some(view(&mut conn, &row).await?),
        })
    }
}

/// Undoes a notice the gateway refused, if it is still the referral's last.
async fn undo(host: &AgencyHost, key: &str) -> ServiceResult<()> {
    let mut tx = host.begin().await?;
    let Some(notice) = sqlx::query(
        "SELECT referral_id, version, prev_notice, prev_admitted FROM health_notices \
         WHERE message_key = $1",
    )
    .bind(key)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(());
    };
    let id: String = notice.try_get(0)?;
    let version: i64 = notice.try_get(1)?;
    let restored = sqlx::query(
        "UPDATE health_referrals SET last_notice = $1, admitted = $2, version = $3 \
         WHERE referral_id = $4 AND version = $5",
    )
    .bind(notice.try_get::<String, _>(2)?)
    .bind(notice.try_get::<i64, _>(3)?)
    .bind(version - 1)
    .bind(id.as_str())
    .bind(version)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if restored != 1 {
        tracing::error!(referral = %id, "a refused health notice was followed by another; kept");
        tx.rollback().await?;
        return Ok(());
    }
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
            "SELECT {COLUMNS} FROM health_referrals ORDER BY received_at DESC, referral_id"
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

    async fn link_referral(
        &self,
        request: Request<LinkReferralRequest>,
    ) -> Result<Response<LinkReferralResponse>, Status> {
        let user = acting_user(&request)?;
        Ok(Response::new(self.link(user, request.into_inner()).await?))
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
