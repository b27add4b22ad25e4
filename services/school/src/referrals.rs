//! The `SchoolReferrals` service: referrals of at-risk and high-risk pupils to an NGO of the
//! district (M:2247-2271), each a row of the monthly log J (M:4757-4796), for the staff of the
//! school (or residential institution) behind the staff API's bearer-token check.
//!
//! A referral is stored and its SERVICE_REFERRAL queued in one transaction, then handed to the
//! gateway (a refusal undoes both; an unreachable gateway leaves it queued: the same request
//! again pushes it, and so does the extension's retry loop, [`push_pending`]). What the NGO reports (SERVICE_UPDATE, a reply to the referral) is applied
//! by [`on_received`] inside the inbox's transaction: the referral's status, business status,
//! the support received (J) and the reason of a decline or cancellation; an update older than
//! the one applied changes nothing. The school records the follow-up check (J: date checked),
//! may ask the NGO to cancel, schedules the safety team's meeting about the pupil (a
//! SAFETY_MEETING_NOTICE; the NGO attends every two weeks) and records the NGO's attendance.
//! J of a month is listed, exported (CSV, XLSX) and sent to the district's commission.

mod log;

use std::collections::HashMap;

use jiff::{Timestamp, civil::Date};
use prost::Message as _;
use referral_agency::{AgencyHost, PushOutcome, acting_user, forms::form};
use referral_core::{
    FieldViolations, ServiceError, ServiceResult,
    db::Row as _,
    time,
    validate::{self, LONG_TEXT, PERSON_NAME, REQUIRED_LONG_TEXT, Text, to_calendar_date},
};
use referral_proto::v1::{
    ActingUser, AgencyKind, ConfidentialityLabel, Envelope, ExportFormat, ExportReferralLogRequest,
    ExportedFile, FormKind, GetServiceReferralRequest, ListSafetyMeetingsRequest,
    ListSafetyMeetingsResponse, ListServiceReferralsRequest, ListServiceReferralsResponse,
    MonthlyReferralLogRequest, Payload, PurposeOfUse, RecordMeetingAttendanceRequest,
    RecordReferralCheckRequest, ReferPupilRequest, ReferralLog, ReferralLogRow, ReferralStatus,
    RequestServiceCancellationRequest, RiskTier, Role, SafetyMeeting, SafetyMeetingNotice,
    ScheduleSafetyMeetingRequest, SendReferralLogRequest, SendReferralLogResponse,
    ServiceBusinessStatus, ServiceEvent, ServiceReferral, ServiceReferralRecord, ServiceUpdate,
    payload::Form, school_referrals_server::SchoolReferrals,
};
use sha2::{Digest as _, Sha256};
use sqlx::AnyConnection;
use tonic::{Request, Response, Status};

use crate::{
    idempotency::{replayed, sha_of},
    validation,
};

pub use log::HEADINGS as LOG_HEADINGS;

/// A referral's columns, and the id the gateway gave its SERVICE_REFERRAL (none while queued).
const COLUMNS: &str = "referral_id, referral, message_key, ngo_agency_id, service_name, status, \
    business_status, support_received, reason, date_checked, cancellation_key, created_at, \
    created_by_name, (SELECT s.message_id FROM sent_messages s \
    WHERE s.idempotency_key = service_referrals.message_key) AS message_id";

/// The statuses after which a referral takes no more steps.
const ENDED: [ReferralStatus; 3] = [
    ReferralStatus::Rejected,
    ReferralStatus::Completed,
    ReferralStatus::Cancelled,
];

/// A `sent_messages` key for a client's idempotency key: hashed, so that any key the staff API
/// accepts makes a key the gateway accepts, and namespaced by what is sent.
fn key_for(what: &str, idempotency_key: &str) -> String {
    format!(
        "{what}:{}",
        hex::encode(Sha256::digest(idempotency_key.as_bytes()))
    )
}

fn month_key(year: i16, month: i8) -> String {
    format!("{year:04}-{month:02}")
}

/// Whether `role` at an agency of `kind` does the referrals' work (refers pupils, asks to cancel,
/// fixes the safety team's meetings and records them, checks, reads, exports and sends J): the
/// school's director, safety team and safeguarding lead and deputy, or a residential institution's
/// director. Other staff (a residential institution's staff) are refused: the referrals name
/// pupils.
pub fn may_refer(kind: AgencyKind, role: Role) -> bool {
    match kind {
        AgencyKind::School => matches!(
            role,
            Role::SchoolDirector
                | Role::SafetyTeamMember
                | Role::SafeguardingLead
                | Role::SafeguardingDeputy
        ),
        AgencyKind::Residential => role == Role::InstitutionDirector,
        _ => false,
    }
}

fn not_found() -> ServiceError {
    ServiceError::NotFound("no referral with this id at this agency".into())
}

/// Undoes a referral whose SERVICE_REFERRAL (queued under `key`) the gateway refused for good:
/// the referral goes (nothing can refer to it yet: its meetings and cancellation need the
/// referral's message id).
async fn undo_referral(host: &AgencyHost, key: &str) -> ServiceResult<()> {
    sqlx::query("DELETE FROM service_referrals WHERE message_key = $1")
        .bind(key)
        .execute(host.pool())
        .await?;
    Ok(())
}

/// Undoes a cancellation request the gateway refused for good: the referral may be asked again.
async fn undo_cancellation(host: &AgencyHost, key: &str) -> ServiceResult<()> {
    sqlx::query("UPDATE service_referrals SET cancellation_key = NULL WHERE cancellation_key = $1")
        .bind(key)
        .execute(host.pool())
        .await?;
    Ok(())
}

/// Undoes a safety meeting whose notice the gateway refused for good.
async fn undo_meeting(host: &AgencyHost, key: &str) -> ServiceResult<()> {
    sqlx::query("DELETE FROM safety_meetings WHERE message_key = $1")
        .bind(key)
        .execute(host.pool())
        .await?;
    Ok(())
}

/// Forgets a log J the gateway refused for good, so that its key may send the month again.
async fn undo_log(host: &AgencyHost, key: &str) -> ServiceResult<()> {
    sqlx::query("DELETE FROM referral_logs_sent WHERE idempotency_key = $1")
        .bind(key)
        .execute(host.pool())
        .await?;
    Ok(())
}

/// Pushes the messages of referrals, cancellation requests, meetings and logs J that the gateway
/// could not take when they were made (the retry loop of [`crate::IncidentsExtension`]), each
/// undone as its own request would undo it if the gateway refuses it for good. Referrals go
/// first: a cancellation or a meeting names a referral that has reached the gateway.
pub(crate) async fn push_pending(host: &AgencyHost) {
    host.push_pending(
        "SELECT r.message_key FROM service_referrals r \
         JOIN sent_messages s ON s.idempotency_key = r.message_key \
         WHERE s.message_id IS NULL ORDER BY r.created_at LIMIT 100",
        "service referral",
        |key| async move { undo_referral(host, &key).await },
    )
    .await;
    host.push_pending(
        "SELECT r.cancellation_key FROM service_referrals r \
         JOIN sent_messages s ON s.idempotency_key = r.cancellation_key \
         WHERE s.message_id IS NULL ORDER BY r.updated_at LIMIT 100",
        "service cancellation request",
        |key| async move { undo_cancellation(host, &key).await },
    )
    .await;
    host.push_pending(
        "SELECT m.message_key FROM safety_meetings m \
         JOIN sent_messages s ON s.idempotency_key = m.message_key \
         WHERE s.message_id IS NULL ORDER BY m.created_at LIMIT 100",
        "safety meeting notice",
        |key| async move { undo_meeting(host, &key).await },
    )
    .await;
    host.push_pending(
        "SELECT l.idempotency_key FROM referral_logs_sent l \
         JOIN sent_messages s ON s.idempotency_key = l.idempotency_key \
         WHERE s.message_id IS NULL ORDER BY l.created_at LIMIT 100",
        "referral log J",
        |key| async move { undo_log(host, &key).await },
    )
    .await;
}

/// Applies an NGO's SERVICE_UPDATE to the referral it answers; inside the inbox's transaction.
///
/// The referral is the one whose SERVICE_REFERRAL the envelope replies to (`in_reply_to`, which
/// the gateway checked is a referral this school sent to that NGO), never the one the payload's
/// `referral_reference` names: an update naming another referral is not applied (logged, ids
/// only). The gateway cannot compare the reference itself, as it no longer holds the referral's
/// payload once delivered: this check is the guard.
pub(crate) async fn on_received(
    conn: &mut AnyConnection,
    envelope: &Envelope,
    now: Timestamp,
) -> ServiceResult<()> {
    let Some(Form::ServiceUpdate(update)) = form(envelope) else {
        return Ok(());
    };
    let reported = update
        .reported_at
        .as_ref()
        .and_then(time::from_proto)
        .map_or(time::to_micros(now), time::to_micros);
    let referral: Option<String> = sqlx::query_scalar(
        "SELECT r.referral_id FROM service_referrals r \
         JOIN sent_messages s ON s.idempotency_key = r.message_key \
         WHERE s.message_id = $1 AND r.ngo_agency_id = $2",
    )
    .bind(envelope.in_reply_to.as_str())
    .bind(envelope.sender_agency_id.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(referral) = referral else {
        tracing::warn!(message_id = %envelope.message_id, "a service update answers no referral of ours");
        return Ok(());
    };
    if referral != update.referral_reference {
        tracing::warn!(
            message_id = %envelope.message_id,
            referral_id = %referral,
            "a service update names another referral than the one it answers: not applied"
        );
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO service_referral_updates (message_id, referral_id, update_sent, \
         received_at) VALUES ($1, $2, $3, $4) ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(envelope.message_id.as_str())
    .bind(referral.as_str())
    .bind(update.encode_to_vec())
    .bind(time::to_micros(now))
    .execute(&mut *conn)
    .await?;
    let status = ReferralStatus::try_from(update.status).unwrap_or_default();
    let business = ServiceBusinessStatus::try_from(update.business_status).unwrap_or_default();
    let applied = sqlx::query(
        "UPDATE service_referrals SET status = $1, business_status = $2, \
         support_received = CASE WHEN $3 = '' THEN support_received ELSE $3 END, \
         reason = CASE WHEN $4 = '' THEN reason ELSE $4 END, last_update_at = $5, \
         updated_at = $6 WHERE referral_id = $7 \
         AND (last_update_at IS NULL OR last_update_at <= $5)",
    )
    .bind(status.as_str_name())
    .bind(business.as_str_name())
    .bind(update.support_received.as_str())
    .bind(update.reason.as_str())
    .bind(reported)
    .bind(time::to_micros(now))
    .bind(referral.as_str())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    tracing::info!(
        referral_id = %referral,
        message_id = %envelope.message_id,
        applied = applied == 1,
        "service update received"
    );
    Ok(())
}

/// One referral row.
struct Row {
    id: String,
    referral: ServiceReferral,
    message_key: String,
    ngo: String,
    service_name: String,
    status: ReferralStatus,
    business: ServiceBusinessStatus,
    support_received: String,
    reason: String,
    date_checked: Option<String>,
    cancellation_key: Option<String>,
    created_at: i64,
    created_by: String,
    message_id: Option<String>,
}

fn read_row(r: &sqlx::any::AnyRow) -> ServiceResult<Row> {
    Ok(Row {
        id: r.try_get(0)?,
        referral: ServiceReferral::decode(r.try_get::<Vec<u8>, _>(1)?.as_slice())
            .map_err(ServiceError::internal)?,
        message_key: r.try_get(2)?,
        ngo: r.try_get(3)?,
        service_name: r.try_get(4)?,
        status: ReferralStatus::from_str_name(&r.try_get::<String, _>(5)?).unwrap_or_default(),
        business: ServiceBusinessStatus::from_str_name(&r.try_get::<String, _>(6)?)
            .unwrap_or_default(),
        support_received: r.try_get(7)?,
        reason: r.try_get(8)?,
        date_checked: r.try_get(9)?,
        cancellation_key: r.try_get(10)?,
        created_at: r.try_get(11)?,
        created_by: r.try_get(12)?,
        message_id: r.try_get(13)?,
    })
}

async fn load(conn: &mut AnyConnection, id: &str) -> ServiceResult<Option<Row>> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM service_referrals WHERE referral_id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(read_row)
    .transpose()
}

/// A referral and the updates the NGO sent about it.
async fn load_record(conn: &mut AnyConnection, id: &str) -> ServiceResult<ServiceReferralRecord> {
    let row = load(conn, id).await?.ok_or_else(not_found)?;
    let updates = sqlx::query(
        "SELECT referral_id, update_sent FROM service_referral_updates \
         WHERE referral_id = $1 ORDER BY received_at, message_id",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(record(row, updates_by_referral(&updates)?.remove(id)))
}

/// The updates of `rows` (`referral_id`, `update_sent`), by referral, each in the order read.
fn updates_by_referral(
    rows: &[sqlx::any::AnyRow],
) -> ServiceResult<HashMap<String, Vec<ServiceUpdate>>> {
    let mut by_referral: HashMap<String, Vec<ServiceUpdate>> = HashMap::new();
    for r in rows {
        let update = ServiceUpdate::decode(r.try_get::<Vec<u8>, _>(1)?.as_slice())
            .map_err(ServiceError::internal)?;
        by_referral.entry(r.try_get(0)?).or_default().push(update);
    }
    Ok(by_referral)
}

/// A referral as the staff API shows it, with the updates the NGO sent about it.
fn record(row: Row, updates: Option<Vec<ServiceUpdate>>) -> ServiceReferralRecord {
    ServiceReferralRecord {
        referral_id: row.id,
        referral: Some(row.referral),
        ngo_agency_id: row.ngo,
        service_name: row.service_name,
        message_id: row.message_id.unwrap_or_default(),
        status: row.status as i32,
        business_status: row.business as i32,
        support_received: row.support_received,
        reason: row.reason,
        date_checked: date_of(row.date_checked.as_deref()).map(to_calendar_date),
        cancellation_requested: row.cancellation_key.is_some(),
        updates: updates.unwrap_or_default(),
        created_at: Some(time::micros_to_proto(row.created_at)),
        created_by: row.created_by,
    }
}

fn date_of(text: Option<&str>) -> Option<Date> {
    text.and_then(|t| t.parse().ok())
}

fn reference_check(v: &mut FieldViolations, field: &str, value: &str) {
    if value.trim().is_empty() {
        v.add(field, "required");
    } else if value.len() > 100 || !value.chars().all(|c| c.is_ascii_graphic()) {
        v.add(field, "must be an id this service gave");
    }
}

/// The `SchoolReferrals` service of one school or residential institution.
#[derive(Debug, Clone)]
pub struct SchoolReferralsApi {
    host: AgencyHost,
}

impl SchoolReferralsApi {
    pub fn new(host: AgencyHost) -> Self {
        Self { host }
    }

    /// The acting user of `request`, if their role does the referrals' work ([`may_refer`]).
    fn referrer<T>(&self, request: &Request<T>) -> ServiceResult<ActingUser> {
        let user = acting_user(request)?;
        let role = Role::try_from(user.role).unwrap_or(Role::Unspecified);
        if may_refer(self.host.kind(), role) {
            Ok(user)
        } else {
            Err(ServiceError::PermissionDenied(
                "referrals to services are the work of the director, the safety team and the \
                 safeguarding lead"
                    .into(),
            ))
        }
    }

    async fn get(&self, id: &str) -> ServiceResult<ServiceReferralRecord> {
        let mut conn = self.host.pool().acquire().await?;
        load_record(&mut conn, id).await
    }

    fn check_refer(&self, r: &ReferPupilRequest, today: Date) -> ServiceResult<()> {
        let mut v = FieldViolations::new();
        validate::idempotency_key(&r.idempotency_key, "idempotency_key", &mut v);
        validate::text(&mut v, "pupil_full_name", &r.pupil_full_name, PERSON_NAME);
        validate::text(&mut v, "class_name", &r.class_name, Text::required(1, 20));
        match r.date_of_birth.as_ref().and_then(validate::calendar_date) {
            None => v.add("date_of_birth", "required: a real calendar date"),
            Some(born)
                if born > today
                    || validate::age_years(born, today) >= validate::MAX_CHILD_AGE_YEARS =>
            {
                v.add(
                    "date_of_birth",
                    "must be the birth date of a child under 18",
                )
            }
            Some(_) => {}
        }
        if !matches!(
            RiskTier::try_from(r.risk_tier),
            Ok(RiskTier::AtRisk | RiskTier::HighRisk)
        ) {
            v.add(
                "risk_tier",
                "at risk or high risk: only those pupils are referred outside education",
            );
        }
        referral_agency::checks::district_agency(
            &mut v,
            "ngo_agency_id",
            &r.ngo_agency_id,
            self.host.directory(),
            &self.host.agency().district,
            &[AgencyKind::Ngo],
            "an NGO of this district",
        );
        validate::text(
            &mut v,
            "support_requested",
            &r.support_requested,
            REQUIRED_LONG_TEXT,
        );
        validate::text(&mut v, "reason", &r.reason, REQUIRED_LONG_TEXT);
        validate::text(&mut v, "contact_person", &r.contact_person, PERSON_NAME);
        validate::text(
            &mut v,
            "contact_phone",
            &r.contact_phone,
            Text::optional(50),
        );
        v.into_result()
    }

    async fn refer(
        &self,
        user: &ActingUser,
        request: ReferPupilRequest,
    ) -> ServiceResult<ServiceReferralRecord> {
        let today = self.host.today();
        self.check_refer(&request, today)?;
        let sha = sha_of(&request);
        let key = key_for("service-referral", &request.idempotency_key);
        let mut tx = self.host.begin().await?;
        if let Some(id) = replayed(
            &mut tx,
            "service_referrals",
            "referral_id",
            &request.idempotency_key,
            &sha,
            "referral",
        )
        .await?
        {
            tx.rollback().await?;
            return self.push_referral(&id, &key).await;
        }
        let id = format!("SR-{}", uuid::Uuid::now_v7().simple());
        let ngo = self
            .host
            .directory()
            .agency(&request.ngo_agency_id)
            .ok_or_else(|| {
                ServiceError::invalid_field("ngo_agency_id", "an NGO of this district")
            })?;
        let service_name = ngo.name_kk.clone();
        let referral = ServiceReferral {
            referral_reference: id.clone(),
            pupil_full_name: request.pupil_full_name.trim().to_owned(),
            class_name: request.class_name.trim().to_owned(),
            date_of_birth: request.date_of_birth,
            risk_tier: request.risk_tier,
            support_requested: request.support_requested.trim().to_owned(),
            reason: request.reason.trim().to_owned(),
            contact_person: request.contact_person.trim().to_owned(),
            contact_phone: request.contact_phone.trim().to_owned(),
            referred_on: Some(to_calendar_date(today)),
            school_name: self.host.agency().name_kk.clone(),
        };
        let now = self.host.clock().now();
        sqlx::query(
            "INSERT INTO service_referrals (referral_id, idempotency_key, request_sha256, \
             referral, message_key, ngo_agency_id, service_name, referred_on, month, status, \
             business_status, support_received, reason, last_update_at, date_checked, \
             cancellation_key, created_by_user_id, created_by_name, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, '', '', NULL, NULL, NULL, \
             $12, $13, $14, $14)",
        )
        .bind(id.as_str())
        .bind(request.idempotency_key.as_str())
        .bind(sha.as_str())
        .bind(referral.encode_to_vec())
        .bind(key.as_str())
        .bind(request.ngo_agency_id.as_str())
        .bind(service_name.as_str())
        .bind(today.to_string())
        .bind(month_key(today.year(), today.month()))
        .bind(ReferralStatus::Requested.as_str_name())
        .bind(ServiceBusinessStatus::Created.as_str_name())
        .bind(user.user_id.as_str())
        .bind(user.display_name.as_str())
        .bind(time::to_micros(now))
        .execute(&mut *tx)
        .await?;
        let envelope = Envelope {
            idempotency_key: key.clone(),
            sender_agency_id: self.host.agency_id().to_owned(),
            recipient_agency_id: request.ngo_agency_id.clone(),
            acting_user: Some(user.clone()),
            purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
            form_kind: FormKind::ServiceReferral as i32,
            confidentiality: ConfidentialityLabel::Restricted as i32,
            payload: Some(Payload {
                form: Some(Form::ServiceReferral(referral)),
            }),
            ..Envelope::default()
        };
        self.host
            .queue_message(&mut tx, &key, &user.user_id, &envelope, now)
            .await?;
        tx.commit().await?;
        tracing::info!(referral_id = %id, "pupil referred to a service");
        self.push_referral(&id, &key).await
    }

    /// Hands a referral's queued message to the gateway; a refusal removes the referral.
    async fn push_referral(&self, id: &str, key: &str) -> ServiceResult<ServiceReferralRecord> {
        self.push(key, || undo_referral(&self.host, key)).await?;
        self.get(id).await
    }

    /// Hands the message queued under `key` to the gateway; `undo` removes what it carried when
    /// the gateway refuses it for good. An unreachable gateway leaves it queued.
    async fn push<F, Fut>(&self, key: &str, undo: F) -> ServiceResult<String>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = ServiceResult<()>>,
    {
        match self
            .host
            .push_message(key)
            .await
            .map_err(ServiceError::from)?
        {
            PushOutcome::Sent(id) => Ok(id),
            PushOutcome::NotNow(failure) => {
                tracing::warn!(?failure, "a referral message waits for the gateway");
                Ok(String::new())
            }
            PushOutcome::Refused(failure) => {
                undo().await?;
                Err(failure.into_service_error())
            }
            PushOutcome::Unknown => Ok(String::new()),
        }
    }

    async fn list(&self, year: i32, month: i32) -> ServiceResult<Vec<ServiceReferralRecord>> {
        let mut v = FieldViolations::new();
        let checked = validation::month(&mut v, year, month, self.host.today());
        v.into_result()?;
        let (y, m) = checked.unwrap_or_default();
        let mut conn = self.host.pool().acquire().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM service_referrals WHERE month = $1 \
             ORDER BY referred_on, created_at, referral_id"
        )))
        .bind(month_key(y, m))
        .fetch_all(&mut *conn)
        .await?;
        let updates = sqlx::query(
            "SELECT u.referral_id, u.update_sent FROM service_referral_updates u \
             JOIN service_referrals r ON r.referral_id = u.referral_id \
             WHERE r.month = $1 ORDER BY u.received_at, u.message_id",
        )
        .bind(month_key(y, m))
        .fetch_all(&mut *conn)
        .await?;
        let mut updates = updates_by_referral(&updates)?;
        rows.iter()
            .map(|r| {
                let row = read_row(r)?;
                let updates = updates.remove(&row.id);
                Ok(record(row, updates))
            })
            .collect()
    }

    /// J of a month: its period runs from the first of the month to its end, or to today.
    async fn log(&self, year: i32, month: i32) -> ServiceResult<ReferralLog> {
        let records = self.list(year, month).await?;
        let first = Date::new(year as i16, month as i8, 1).map_err(ServiceError::internal)?;
        let to = first.last_of_month().min(self.host.today());
        let rows = records
            .into_iter()
            .map(|r| {
                let referral = r.referral.unwrap_or_default();
                ReferralLogRow {
                    pupil_name: referral.pupil_full_name,
                    service: r.service_name,
                    support_received: r.support_received,
                    date_referred: referral.referred_on,
                    contact_person: referral.contact_person,
                    date_checked: r.date_checked,
                }
            })
            .collect();
        Ok(ReferralLog {
            school_name: self.host.agency().name_kk.clone(),
            year,
            month,
            period_from: Some(to_calendar_date(first)),
            period_to: Some(to_calendar_date(to)),
            rows,
        })
    }

    async fn check(
        &self,
        request: RecordReferralCheckRequest,
    ) -> ServiceResult<ServiceReferralRecord> {
        let today = self.host.today();
        let mut v = FieldViolations::new();
        reference_check(&mut v, "referral_id", &request.referral_id);
        let checked = referral_agency::checks::past_date(
            &mut v,
            "checked_on",
            request.checked_on.as_ref(),
            today,
        );
        v.into_result()?;
        let checked = checked.unwrap_or(today);
        let mut conn = self.host.pool().acquire().await?;
        let row = load(&mut conn, &request.referral_id)
            .await?
            .ok_or_else(not_found)?;
        let referred = row
            .referral
            .referred_on
            .as_ref()
            .and_then(validate::calendar_date)
            .unwrap_or(today);
        if checked < referred {
            return Err(ServiceError::invalid_field(
                "checked_on",
                "must not be before the date referred",
            ));
        }
        sqlx::query(
            "UPDATE service_referrals SET date_checked = $1, updated_at = $2 WHERE referral_id = $3",
        )
        .bind(checked.to_string())
        .bind(time::to_micros(self.host.clock().now()))
        .bind(row.id.as_str())
        .execute(&mut *conn)
        .await?;
        load_record(&mut conn, &row.id).await
    }

    async fn request_cancellation(
        &self,
        user: &ActingUser,
        request: RequestServiceCancellationRequest,
    ) -> ServiceResult<ServiceReferralRecord> {
        let mut v = FieldViolations::new();
        reference_check(&mut v, "referral_id", &request.referral_id);
        validate::idempotency_key(&request.idempotency_key, "idempotency_key", &mut v);
        validate::text(&mut v, "reason", &request.reason, REQUIRED_LONG_TEXT);
        v.into_result()?;
        let key = key_for("service-cancellation", &request.idempotency_key);
        let mut tx = self.host.begin().await?;
        let row = load(&mut tx, &request.referral_id)
            .await?
            .ok_or_else(not_found)?;
        if row.cancellation_key.as_deref() == Some(key.as_str()) {
            tx.rollback().await?;
            self.push(&key, || undo_cancellation(&self.host, &key))
                .await?;
            return self.get(&row.id).await;
        }
        if row.cancellation_key.is_some() {
            return Err(ServiceError::FailedPrecondition(
                "cancellation has already been requested".into(),
            ));
        }
        if ENDED.contains(&row.status) {
            return Err(ServiceError::FailedPrecondition(
                "the service has ended or was declined: there is nothing to cancel".into(),
            ));
        }
        let Some(referral_message_id) = self.host.sent_message_id(&row.message_key).await? else {
            return Err(ServiceError::FailedPrecondition(
                "the referral has not reached the gateway yet: send it again first".into(),
            ));
        };
        let now = self.host.clock().now();
        let changed = sqlx::query(
            "UPDATE service_referrals SET cancellation_key = $1, updated_at = $2 \
             WHERE referral_id = $3 AND cancellation_key IS NULL AND status = $4",
        )
        .bind(key.as_str())
        .bind(time::to_micros(now))
        .bind(row.id.as_str())
        .bind(row.status.as_str_name())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed != 1 {
            return Err(ServiceError::Aborted(
                "the referral changed meanwhile: read it again".into(),
            ));
        }
        let envelope = Envelope {
            idempotency_key: key.clone(),
            sender_agency_id: self.host.agency_id().to_owned(),
            recipient_agency_id: row.ngo.clone(),
            acting_user: Some(user.clone()),
            purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
            form_kind: FormKind::ServiceUpdate as i32,
            confidentiality: ConfidentialityLabel::Restricted as i32,
            payload: Some(Payload {
                form: Some(Form::ServiceUpdate(ServiceUpdate {
                    referral_reference: row.id.clone(),
                    status: row.status as i32,
                    business_status: ServiceBusinessStatus::CancellationRequested as i32,
                    reported_at: Some(time::to_proto(now)),
                    referral_message_id,
                    event: ServiceEvent::CancellationRequested as i32,
                    reason: request.reason.trim().to_owned(),
                    reported_by: user.display_name.clone(),
                    ..ServiceUpdate::default()
                })),
            }),
            ..Envelope::default()
        };
        self.host
            .queue_message(&mut tx, &key, &user.user_id, &envelope, now)
            .await?;
        tx.commit().await?;
        self.push(&key, || undo_cancellation(&self.host, &key))
            .await?;
        self.get(&row.id).await
    }

    async fn meeting(&self, conn: &mut AnyConnection, id: &str) -> ServiceResult<SafetyMeeting> {
        let r = sqlx::query(
            "SELECT meeting_id, referral_id, meeting_at, place, note, message_key, ngo_attended, \
             attendance_recorded_by FROM safety_meetings WHERE meeting_id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| ServiceError::NotFound("no meeting with this id at this agency".into()))?;
        let key: String = r.try_get(5)?;
        Ok(SafetyMeeting {
            meeting_id: r.try_get(0)?,
            referral_id: r.try_get(1)?,
            meeting_at: Some(time::micros_to_proto(r.try_get(2)?)),
            place: r.try_get(3)?,
            note: r.try_get(4)?,
            message_id: self.host.sent_message_id(&key).await?.unwrap_or_default(),
            ngo_attended: r.try_get::<Option<i64>, _>(6)?.map(|a| a != 0),
            attendance_recorded_by: r.try_get::<Option<String>, _>(7)?.unwrap_or_default(),
        })
    }

    async fn schedule_meeting(
        &self,
        user: &ActingUser,
        request: ScheduleSafetyMeetingRequest,
    ) -> ServiceResult<SafetyMeeting> {
        let now = self.host.clock().now();
        let mut v = FieldViolations::new();
        reference_check(&mut v, "referral_id", &request.referral_id);
        validate::idempotency_key(&request.idempotency_key, "idempotency_key", &mut v);
        let meeting_at = request.meeting_at.as_ref().and_then(time::from_proto);
        match meeting_at {
            None => v.add("meeting_at", "required: an instant"),
            Some(at) if at < now => v.add("meeting_at", "must not be in the past"),
            Some(_) => {}
        }
        validate::text(&mut v, "place", &request.place, Text::required(1, 200));
        validate::text(&mut v, "note", &request.note, LONG_TEXT);
        v.into_result()?;
        let meeting_at = meeting_at.unwrap_or(now);
        let sha = sha_of(&request);
        let key = key_for("safety-meeting", &request.idempotency_key);
        let mut tx = self.host.begin().await?;
        if let Some(id) = replayed(
            &mut tx,
            "safety_meetings",
            "meeting_id",
            &request.idempotency_key,
            &sha,
            "meeting",
        )
        .await?
        {
            tx.rollback().await?;
            return self.push_meeting(&id, &key).await;
        }
        let row = load(&mut tx, &request.referral_id)
            .await?
            .ok_or_else(not_found)?;
        if !matches!(
            row.status,
            ReferralStatus::Accepted | ReferralStatus::InProgress
        ) {
            return Err(ServiceError::FailedPrecondition(
                "the NGO does not serve this pupil: it has not accepted, or the service ended"
                    .into(),
            ));
        }
        let Some(referral_message_id) = self.host.sent_message_id(&row.message_key).await? else {
            return Err(ServiceError::FailedPrecondition(
                "the referral has not reached the gateway yet".into(),
            ));
        };
        let id = format!("SM-{}", uuid::Uuid::now_v7().simple());
        sqlx::query(
            "INSERT INTO safety_meetings (meeting_id, idempotency_key, request_sha256, \
             referral_id, meeting_at, place, note, message_key, ngo_attended, \
             attendance_recorded_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL, $9)",
        )
        .bind(id.as_str())
        .bind(request.idempotency_key.as_str())
        .bind(sha.as_str())
        .bind(row.id.as_str())
        .bind(time::to_micros(meeting_at))
        .bind(request.place.trim())
        .bind(request.note.trim())
        .bind(key.as_str())
        .bind(time::to_micros(now))
        .execute(&mut *tx)
        .await?;
        let envelope = Envelope {
            idempotency_key: key.clone(),
            sender_agency_id: self.host.agency_id().to_owned(),
            recipient_agency_id: row.ngo.clone(),
            acting_user: Some(user.clone()),
            purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
            form_kind: FormKind::SafetyMeetingNotice as i32,
            confidentiality: ConfidentialityLabel::Restricted as i32,
            payload: Some(Payload {
                form: Some(Form::SafetyMeetingNotice(SafetyMeetingNotice {
                    referral_reference: row.id.clone(),
                    referral_message_id,
                    meeting_reference: id.clone(),
                    meeting_at: Some(time::to_proto(meeting_at)),
                    place: request.place.trim().to_owned(),
                    convened_by: user.display_name.clone(),
                    note: request.note.trim().to_owned(),
                })),
            }),
            ..Envelope::default()
        };
        self.host
            .queue_message(&mut tx, &key, &user.user_id, &envelope, now)
            .await?;
        tx.commit().await?;
        self.push_meeting(&id, &key).await
    }

    async fn push_meeting(&self, id: &str, key: &str) -> ServiceResult<SafetyMeeting> {
        self.push(key, || undo_meeting(&self.host, key)).await?;
        let mut conn = self.host.pool().acquire().await?;
        self.meeting(&mut conn, id).await
    }

    async fn attendance(
        &self,
        user: &ActingUser,
        request: RecordMeetingAttendanceRequest,
    ) -> ServiceResult<SafetyMeeting> {
        let mut v = FieldViolations::new();
        reference_check(&mut v, "meeting_id", &request.meeting_id);
        v.into_result()?;
        let now = time::to_micros(self.host.clock().now());
        let mut conn = self.host.pool().acquire().await?;
        let meeting = self.meeting(&mut conn, &request.meeting_id).await?;
        let changed = sqlx::query(
            "UPDATE safety_meetings SET ngo_attended = $1, attendance_recorded_by = $2 \
             WHERE meeting_id = $3 AND ngo_attended IS NULL AND meeting_at <= $4",
        )
        .bind(i64::from(request.ngo_attended))
        .bind(user.display_name.as_str())
        .bind(request.meeting_id.as_str())
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(ServiceError::FailedPrecondition(
                if meeting.ngo_attended.is_some() {
                    "the attendance of this meeting is recorded already"
                } else {
                    "the meeting has not begun"
                }
                .into(),
            ));
        }
        self.meeting(&mut conn, &request.meeting_id).await
    }

    async fn export(&self, request: ExportReferralLogRequest) -> ServiceResult<ExportedFile> {
        let format = match ExportFormat::try_from(request.format) {
            Ok(f @ (ExportFormat::Csv | ExportFormat::Xlsx)) => f,
            _ => {
                return Err(ServiceError::invalid_field(
                    "format",
                    "EXPORT_FORMAT_CSV or EXPORT_FORMAT_XLSX",
                ));
            }
        };
        let j = self.log(request.year, request.month).await?;
        let agency = self.host.agency_id();
        Ok(if format == ExportFormat::Xlsx {
            ExportedFile {
                content: log::xlsx(&j).map_err(ServiceError::internal)?,
                content_type: log::XLSX_CONTENT_TYPE.into(),
                file_name: log::file_name(agency, &j, "xlsx"),
            }
        } else {
            ExportedFile {
                content: log::csv(&j),
                content_type: log::CSV_CONTENT_TYPE.into(),
                file_name: log::file_name(agency, &j, "csv"),
            }
        })
    }

    async fn send_log(
        &self,
        user: &ActingUser,
        request: SendReferralLogRequest,
    ) -> ServiceResult<SendReferralLogResponse> {
        let mut v = FieldViolations::new();
        validate::idempotency_key(&request.idempotency_key, "idempotency_key", &mut v);
        v.into_result()?;
        let today = self.host.today();
        let j = self.log(request.year, request.month).await?;
        if (j.year, j.month) == (i32::from(today.year()), i32::from(today.month())) {
            return Err(ServiceError::FailedPrecondition(
                "the month has not ended: send its log J from the first day of the next".into(),
            ));
        }
        let key = key_for("referral-log", &request.idempotency_key);
        let mut tx = self.host.begin().await?;
        let earlier =
            sqlx::query("SELECT year, month FROM referral_logs_sent WHERE idempotency_key = $1")
                .bind(&key)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(earlier) = earlier {
            let month: (i64, i64) = (earlier.try_get(0)?, earlier.try_get(1)?);
            tx.rollback().await?;
            if month != (i64::from(j.year), i64::from(j.month)) {
                return Err(ServiceError::AlreadyExists(
                    "this idempotency key was already used for another month".into(),
                ));
            }
        } else {
            let commission = self
                .host
                .directory()
                .commission_of(&self.host.agency().district)
                .map(|c| c.id.clone())
                .ok_or_else(|| {
                    ServiceError::internal(anyhow::anyhow!(
                        "the directory has no commission for this agency's district"
                    ))
                })?;
            let now = self.host.clock().now();
            sqlx::query(
                "INSERT INTO referral_logs_sent (idempotency_key, year, month, sent_by_user_id, \
                 created_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&key)
            .bind(i64::from(j.year))
            .bind(i64::from(j.month))
            .bind(&user.user_id)
            .bind(time::to_micros(now))
            .execute(&mut *tx)
            .await?;
            // J names pupils: personal data for the commission, not aggregate reporting.
            let envelope = Envelope {
                idempotency_key: key.clone(),
                sender_agency_id: self.host.agency_id().to_owned(),
                recipient_agency_id: commission,
                acting_user: Some(user.clone()),
                purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
                form_kind: FormKind::ReferralLog as i32,
                confidentiality: ConfidentialityLabel::Restricted as i32,
                payload: Some(Payload {
                    form: Some(Form::ReferralLog(j)),
                }),
                ..Envelope::default()
            };
            self.host
                .queue_message(&mut tx, &key, &user.user_id, &envelope, now)
                .await?;
            tx.commit().await?;
        }
        let message_id = self.push(&key, || undo_log(&self.host, &key)).await?;
        if message_id.is_empty() {
            return Err(ServiceError::Unavailable(
                "the gateway cannot be reached: send again later with the same idempotency key"
                    .into(),
            ));
        }
        tracing::info!(message_id = %message_id, "monthly referral log J sent");
        Ok(SendReferralLogResponse { message_id })
    }
}

#[tonic::async_trait]
impl SchoolReferrals for SchoolReferralsApi {
    async fn refer_pupil(
        &self,
        request: Request<ReferPupilRequest>,
    ) -> Result<Response<ServiceReferralRecord>, Status> {
        let user = self.referrer(&request)?;
        Ok(Response::new(
            self.refer(&user, request.into_inner()).await?,
        ))
    }

    async fn list_service_referrals(
        &self,
        request: Request<ListServiceReferralsRequest>,
    ) -> Result<Response<ListServiceReferralsResponse>, Status> {
        self.referrer(&request)?;
        let r = request.into_inner();
        Ok(Response::new(ListServiceReferralsResponse {
            referrals: self.list(r.year, r.month).await?,
        }))
    }

    async fn get_service_referral(
        &self,
        request: Request<GetServiceReferralRequest>,
    ) -> Result<Response<ServiceReferralRecord>, Status> {
        self.referrer(&request)?;
        let id = request.into_inner().referral_id;
        let mut v = FieldViolations::new();
        reference_check(&mut v, "referral_id", &id);
        v.into_result()?;
        Ok(Response::new(self.get(&id).await?))
    }

    async fn record_referral_check(
        &self,
        request: Request<RecordReferralCheckRequest>,
    ) -> Result<Response<ServiceReferralRecord>, Status> {
        self.referrer(&request)?;
        Ok(Response::new(self.check(request.into_inner()).await?))
    }

    async fn request_service_cancellation(
        &self,
        request: Request<RequestServiceCancellationRequest>,
    ) -> Result<Response<ServiceReferralRecord>, Status> {
        let user = self.referrer(&request)?;
        Ok(Response::new(
            self.request_cancellation(&user, request.into_inner())
                .await?,
        ))
    }

    async fn schedule_safety_meeting(
        &self,
        request: Request<ScheduleSafetyMeetingRequest>,
    ) -> Result<Response<SafetyMeeting>, Status> {
        let user = self.referrer(&request)?;
        Ok(Response::new(
            self.schedule_meeting(&user, request.into_inner()).await?,
        ))
    }

    async fn record_meeting_attendance(
        &self,
        request: Request<RecordMeetingAttendanceRequest>,
    ) -> Result<Response<SafetyMeeting>, Status> {
        let user = self.referrer(&request)?;
        Ok(Response::new(
            self.attendance(&user, request.into_inner()).await?,
        ))
    }

    async fn list_safety_meetings(
        &self,
        request: Request<ListSafetyMeetingsRequest>,
    ) -> Result<Response<ListSafetyMeetingsResponse>, Status> {
        self.referrer(&request)?;
        let id = request.into_inner().referral_id;
        let mut v = FieldViolations::new();
        reference_check(&mut v, "referral_id", &id);
        v.into_result()?;
        let mut conn = self
            .host
            .pool()
            .acquire()
            .await
            .map_err(ServiceError::from)?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT meeting_id FROM safety_meetings WHERE referral_id = $1 \
             ORDER BY meeting_at, meeting_id",
        )
        .bind(id.as_str())
        .fetch_all(&mut *conn)
        .await
        .map_err(ServiceError::from)?;
        let mut meetings = Vec::with_capacity(ids.len());
        for id in ids {
            meetings.push(self.meeting(&mut conn, &id).await?);
        }
        Ok(Response::new(ListSafetyMeetingsResponse { meetings }))
    }

    async fn monthly_referral_log(
        &self,
        request: Request<MonthlyReferralLogRequest>,
    ) -> Result<Response<ReferralLog>, Status> {
        self.referrer(&request)?;
        let r = request.into_inner();
        Ok(Response::new(self.log(r.year, r.month).await?))
    }

    async fn export_referral_log(
        &self,
        request: Request<ExportReferralLogRequest>,
    ) -> Result<Response<ExportedFile>, Status> {
        self.referrer(&request)?;
        Ok(Response::new(self.export(request.into_inner()).await?))
    }

    async fn send_referral_log(
        &self,
        request: Request<SendReferralLogRequest>,
    ) -> Result<Response<SendReferralLogResponse>, Status> {
        let user = self.referrer(&request)?;
        Ok(Response::new(
            self.send_log(&user, request.into_inner()).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_director_safety_team_and_safeguarders_do_the_referrals() {
        for role in [
            Role::SchoolDirector,
            Role::SafetyTeamMember,
            Role::SafeguardingLead,
            Role::SafeguardingDeputy,
        ] {
            assert!(may_refer(AgencyKind::School, role), "{role:?}");
        }
        assert!(may_refer(
            AgencyKind::Residential,
            Role::InstitutionDirector
        ));
        assert!(!may_refer(AgencyKind::Residential, Role::InstitutionStaff));
        assert!(!may_refer(AgencyKind::School, Role::InstitutionStaff));
        assert!(!may_refer(AgencyKind::School, Role::Unspecified));
        assert!(!may_refer(AgencyKind::Ngo, Role::NgoCaseManager));
        assert!(!may_refer(AgencyKind::Commission, Role::CommissionCurator));
    }
}
