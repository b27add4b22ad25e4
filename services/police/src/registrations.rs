//! Preventive registration (превентивті тіркеу, M:3240-3260) of an offending child: a juvenile
//! inspector registers the child of a case linked to an investigation as the perpetrator (or a
//! child both victim and perpetrator), and later ends the registration. Each is one transaction
//! (the registration row and one PREVENTIVE_REGISTRATION queued for that case only), then handed
//! to the gateway, which admits it only from an agency working on that case; the commission files
//! it in that case and shows it to that case's curator only. A victim's or a witness's case never
//! gets one (FAILED_PRECONDITION). A registration the gateway refuses is undone.

use jiff::civil::Date;
use prost::Message as _;
use referral_agency::{AgencyHost, PushOutcome};
use referral_core::{
    FieldViolations, ServiceError, ServiceResult,
    db::Row as _,
    time,
    validate::{self, Text},
};
use referral_proto::v1::{
    ActingUser, CalendarDate, ConfidentialityLabel, EndPreventiveRegistrationRequest, Envelope,
    FormKind, Payload, PreventiveRegistration, PreventiveRegistrationResponse,
    PreventiveRegistrationStatus, PurposeOfUse, RegisterPreventiveRequest, payload::Form,
};
use sqlx::AnyConnection;

use crate::investigations::{self, inspector, offender, sha256_hex};

const COLUMNS: &str = "registration_id, case_reference, investigation_id, registered_on, grounds, \
    inspector, ended_on, end_reason, register_key, end_key";

/// One registration row.
struct Row {
    id: String,
    case_reference: String,
    investigation_id: String,
    registered_on: String,
    grounds: String,
    inspector: String,
    ended_on: Option<String>,
    end_reason: Option<String>,
    register_key: String,
    end_key: Option<String>,
}

fn from_row(r: &sqlx::any::AnyRow) -> ServiceResult<Row> {
    Ok(Row {
        id: r.try_get(0)?,
        case_reference: r.try_get(1)?,
        investigation_id: r.try_get(2)?,
        registered_on: r.try_get(3)?,
        grounds: r.try_get(4)?,
        inspector: r.try_get(5)?,
        ended_on: r.try_get(6)?,
        end_reason: r.try_get(7)?,
        register_key: r.try_get(8)?,
        end_key: r.try_get(9)?,
    })
}

fn date(text: &str) -> Option<CalendarDate> {
    text.parse::<Date>().ok().map(validate::to_calendar_date)
}

impl Row {
    /// The registration as it is sent (and shown).
    fn message(&self) -> PreventiveRegistration {
        PreventiveRegistration {
            case_reference: self.case_reference.clone(),
            investigation_reference: self.investigation_id.clone(),
            status: if self.ended_on.is_some() {
                PreventiveRegistrationStatus::Ended
            } else {
                PreventiveRegistrationStatus::Registered
            } as i32,
            registered_on: date(&self.registered_on),
            grounds: self.grounds.clone(),
            inspector: self.inspector.clone(),
            ended_on: self.ended_on.as_deref().and_then(date),
            end_reason: self.end_reason.clone().unwrap_or_default(),
        }
    }
}

/// The case's latest registration and the gateway message id of its last message (empty while
/// not acknowledged).
pub(crate) async fn latest(
    conn: &mut AnyConnection,
    case: &str,
) -> ServiceResult<(Option<PreventiveRegistration>, String)> {
    let Some(row) = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM preventive_registrations WHERE case_reference = $1 \
         ORDER BY recorded_at DESC, registration_id DESC LIMIT 1"
    )))
    .bind(case)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(from_row)
    .transpose()?
    else {
        return Ok((None, String::new()));
    };
    let key = row
        .end_key
        .clone()
        .unwrap_or_else(|| row.register_key.clone());
    let message_id: Option<String> =
        sqlx::query_scalar("SELECT message_id FROM sent_messages WHERE idempotency_key = $1")
            .bind(key.as_str())
            .fetch_optional(&mut *conn)
            .await?
            .flatten();
    Ok((Some(row.message()), message_id.unwrap_or_default()))
}

/// Whether the child of `case` is registered now.
pub(crate) async fn current(conn: &mut AnyConnection, case: &str) -> ServiceResult<bool> {
    Ok(current_row(conn, case).await?.is_some())
}

async fn current_row(conn: &mut AnyConnection, case: &str) -> ServiceResult<Option<Row>> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM preventive_registrations \
         WHERE case_reference = $1 AND ended_on IS NULL"
    )))
    .bind(case)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(from_row)
    .transpose()
}

fn check_date(v: &mut FieldViolations, field: &str, d: Option<&CalendarDate>, today: Date) {
    match d.and_then(validate::calendar_date) {
        None => v.add(field, "required: a real calendar date"),
        Some(d) if d > today => v.add(field, "must not be in the future"),
        Some(_) => {}
    }
}

fn check_register(request: &RegisterPreventiveRequest, today: Date) -> ServiceResult<()> {
    let mut v = FieldViolations::new();
    validate::text(
        &mut v,
        "case_reference",
        &request.case_reference,
        Text::required(1, 100),
    );
    check_date(
        &mut v,
        "registered_on",
        request.registered_on.as_ref(),
        today,
    );
    validate::text(
        &mut v,
        "grounds",
        &request.grounds,
        validate::REQUIRED_LONG_TEXT,
    );
    validate::no_identity(&mut v, "grounds", &request.grounds);
    validate::idempotency_key(&request.idempotency_key, "idempotency_key", &mut v);
    v.into_result()
}

fn check_end(request: &EndPreventiveRegistrationRequest, today: Date) -> ServiceResult<()> {
    let mut v = FieldViolations::new();
    validate::text(
        &mut v,
        "case_reference",
        &request.case_reference,
        Text::required(1, 100),
    );
    check_date(&mut v, "ended_on", request.ended_on.as_ref(), today);
    validate::text(
        &mut v,
        "end_reason",
        &request.end_reason,
        validate::REQUIRED_LONG_TEXT,
    );
    validate::no_identity(&mut v, "end_reason", &request.end_reason);
    validate::idempotency_key(&request.idempotency_key, "idempotency_key", &mut v);
    v.into_result()
}

fn envelope(
    host: &AgencyHost,
    key: &str,
    user: &ActingUser,
    commission: &str,
    registration: PreventiveRegistration,
) -> Envelope {
    Envelope {
        idempotency_key: key.to_owned(),
        sender_agency_id: host.agency_id().to_owned(),
        recipient_agency_id: commission.to_owned(),
        acting_user: Some(user.clone()),
        purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
        case_reference: registration.case_reference.clone(),
        form_kind: FormKind::PreventiveRegistration as i32,
        confidentiality: ConfidentialityLabel::Restricted as i32,
        payload: Some(Payload {
            form: Some(Form::PreventiveRegistration(registration)),
        }),
        ..Envelope::default()
    }
}

/// Registers the child of an offender's case and sends the registration to that case only.
pub(crate) async fn register(
    host: &AgencyHost,
    user: ActingUser,
    request: RegisterPreventiveRequest,
) -> ServiceResult<PreventiveRegistrationResponse> {
    inspector(&user)?;
    check_register(&request, host.today())?;
    let key = format!(
        "preventive-registration:{}",
        sha256_hex(request.idempotency_key.as_bytes())
    );
    let sha = sha256_hex(&request.encode_to_vec());
    let now = host.clock().now();
    let mut tx = host.begin().await?;
    if let Some(seen) =
        sqlx::query("SELECT register_sha256 FROM preventive_registrations WHERE register_key = $1")
            .bind(key.as_str())
            .fetch_optional(&mut *tx)
            .await?
    {
        tx.rollback().await?;
        if seen.try_get::<String, _>(0)? != sha {
            return Err(ServiceError::AlreadyExists(
                "this idempotency key was already used for another registration".into(),
            ));
        }
        return push_and_answer(host, &request.case_reference, &key).await;
    }
    let link = investigations::link(&mut tx, &request.case_reference)
        .await?
        .ok_or_else(|| ServiceError::NotFound("no investigation for this case".into()))?;
    if !offender(link.role) {
        return Err(ServiceError::FailedPrecondition(
            "only a child linked as the offender (perpetrator, or both) is registered for \
             prevention"
                .into(),
        ));
    }
    if current(&mut tx, &link.case_reference).await? {
        return Err(ServiceError::FailedPrecondition(
            "the child is registered already: end that registration first".into(),
        ));
    }
    let investigation = investigations::load(&mut tx, &link.investigation_id, "")
        .await?
        .ok_or_else(|| ServiceError::NotFound("no investigation for this case".into()))?;
    if investigation.names_a_child(&request.grounds) {
        return Err(ServiceError::invalid_field(
            "grounds",
            "must not name a child of the incident: the case says whose registration it is",
        ));
    }
    let registered_on = request
        .registered_on
        .as_ref()
        .and_then(validate::calendar_date)
        .unwrap_or_default();
    let row = Row {
        id: format!("PR-{}", uuid::Uuid::now_v7().simple()),
        case_reference: link.case_reference.clone(),
        investigation_id: link.investigation_id.clone(),
        registered_on: registered_on.to_string(),
        grounds: request.grounds.clone(),
        inspector: user.display_name.clone(),
        ended_on: None,
        end_reason: None,
        register_key: key.clone(),
        end_key: None,
    };
    sqlx::query(
        "INSERT INTO preventive_registrations (registration_id, case_reference, \
         investigation_id, registered_on, grounds, inspector, registered_by, register_key, \
         register_sha256, recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(row.id.as_str())
    .bind(row.case_reference.as_str())
    .bind(row.investigation_id.as_str())
    .bind(row.registered_on.as_str())
    .bind(row.grounds.as_str())
    .bind(row.inspector.as_str())
    .bind(user.user_id.as_str())
    .bind(key.as_str())
    .bind(sha.as_str())
    .bind(time::to_micros(now))
    .execute(&mut *tx)
    .await?;
    let envelope = envelope(host, &key, &user, &link.commission, row.message());
    host.queue_message(&mut tx, &key, &user.user_id, &envelope, now)
        .await?;
    tx.commit().await?;
    tracing::info!(registration = %row.id, "preventive registration recorded");
    push_and_answer(host, &link.case_reference, &key).await
}

/// Ends the child's current registration and tells that case.
pub(crate) async fn end(
    host: &AgencyHost,
    user: ActingUser,
    request: EndPreventiveRegistrationRequest,
) -> ServiceResult<PreventiveRegistrationResponse> {
    inspector(&user)?;
    check_end(&request, host.today())?;
    let key = format!(
        "preventive-registration-end:{}",
        sha256_hex(request.idempotency_key.as_bytes())
    );
    let sha = sha256_hex(&request.encode_to_vec());
    let now = host.clock().now();
    let mut tx = host.begin().await?;
    if let Some(seen) =
        sqlx::query("SELECT end_sha256 FROM preventive_registrations WHERE end_key = $1")
            .bind(key.as_str())
            .fetch_optional(&mut *tx)
            .await?
    {
        tx.rollback().await?;
        if seen.try_get::<Option<String>, _>(0)?.as_deref() != Some(sha.as_str()) {
            return Err(ServiceError::AlreadyExists(
                "this idempotency key was already used for another end".into(),
            ));
        }
        return push_and_answer(host, &request.case_reference, &key).await;
    }
    let link = investigations::link(&mut tx, &request.case_reference)
        .await?
        .ok_or_else(|| ServiceError::NotFound("no investigation for this case".into()))?;
    let Some(mut row) = current_row(&mut tx, &link.case_reference).await? else {
        return Err(ServiceError::FailedPrecondition(
            "the child is not registered for prevention".into(),
        ));
    };
    let ended_on = request
        .ended_on
        .as_ref()
        .and_then(validate::calendar_date)
        .unwrap_or_default();
    if ended_on < row.registered_on.parse::<Date>().unwrap_or_default() {
        return Err(ServiceError::invalid_field(
            "ended_on",
            "must not be before the day of the registration",
        ));
    }
    let ended = sqlx::query(
        "UPDATE preventive_registrations SET ended_on = $1, end_reason = $2, end_key = $3, \
         end_sha256 = $4, ended_by = $5 WHERE registration_id = $6 AND ended_on IS NULL",
    )
    .bind(ended_on.to_string())
    .bind(request.end_reason.as_str())
    .bind(key.as_str())
    .bind(sha.as_str())
    .bind(user.user_id.as_str())
    .bind(row.id.as_str())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if ended != 1 {
        return Err(ServiceError::Aborted(
            "the registration changed meanwhile: read it again".into(),
        ));
    }
    row.ended_on = Some(ended_on.to_string());
    row.end_reason = Some(request.end_reason.clone());
    let envelope = envelope(host, &key, &user, &link.commission, row.message());
    host.queue_message(&mut tx, &key, &user.user_id, &envelope, now)
        .await?;
    tx.commit().await?;
    tracing::info!(registration = %row.id, "preventive registration ended");
    push_and_answer(host, &link.case_reference, &key).await
}

async fn push_and_answer(
    host: &AgencyHost,
    case: &str,
    key: &str,
) -> ServiceResult<PreventiveRegistrationResponse> {
    let message_id = match host.push_message(key).await.map_err(ServiceError::from)? {
        PushOutcome::Sent(id) => id,
        PushOutcome::NotNow(failure) => {
            tracing::warn!(?failure, "a preventive registration waits for the gateway");
            String::new()
        }
        PushOutcome::Refused(failure) => {
            undo(host, key).await?;
            return Err(failure.into_service_error());
        }
        PushOutcome::Unknown => String::new(),
    };
    let mut conn = host.pool().acquire().await?;
    let row = investigations::load(&mut conn, "", case)
        .await?
        .ok_or_else(|| ServiceError::NotFound("no investigation for this case".into()))?;
    Ok(PreventiveRegistrationResponse {
        investigation: Some(investigations::view(&mut conn, &row).await?),
        message_id,
    })
}

/// Undoes the registration (or the end) whose message the gateway refused.
async fn undo(host: &AgencyHost, key: &str) -> ServiceResult<()> {
    let mut tx = host.begin().await?;
    sqlx::query("DELETE FROM preventive_registrations WHERE register_key = $1 AND end_key IS NULL")
        .bind(key)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE preventive_registrations SET ended_on = NULL, end_reason = NULL, \
         end_key = NULL, end_sha256 = NULL, ended_by = NULL WHERE end_key = $1",
    )
    .bind(key)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Pushes the registration messages the gateway could not take when they were made.
pub(crate) async fn push_pending(host: &AgencyHost) {
    host.push_pending(
        "SELECT s.idempotency_key FROM sent_messages s JOIN preventive_registrations r \
         ON s.idempotency_key = r.register_key OR s.idempotency_key = r.end_key \
         WHERE s.message_id IS NULL ORDER BY r.recorded_at LIMIT 100",
        "preventive registration",
        |key| async move { undo(host, &key).await },
    )
    .await;
}
