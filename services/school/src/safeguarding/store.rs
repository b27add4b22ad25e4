//! The safeguarding tables as rows: reading them back into their protobuf shape, and the
//! statements several calls share. Every step of a concern or an allegation is one conditional
//! `UPDATE` in the caller's transaction.

use jiff::civil::Date;
use referral_core::{ServiceError, ServiceResult, db::Row as _, time, validate::to_calendar_date};
use referral_proto::v1::{Allegation, AllegationState, Concern, ConcernState, LeadAbsence, Role};
use sqlx::AnyConnection;

pub(super) fn concern_not_found() -> ServiceError {
    ServiceError::NotFound("no concern with this id that you may see".into())
}

pub(super) fn allegation_not_found() -> ServiceError {
    ServiceError::NotFound("no allegation with this id that you may see".into())
}

fn date(text: &str) -> ServiceResult<Date> {
    text.parse().map_err(ServiceError::internal)
}

fn role(name: &str) -> i32 {
    Role::from_str_name(name).unwrap_or(Role::Unspecified) as i32
}

/// The columns [`concern`] reads.
pub(super) const CONCERN_COLUMNS: &str = "concern_id, pupil_name, pupil_class, what_happened, \
    observed_on, at_risk_now, state, reported_by_user_id, reported_by_name, reported_at, \
    assigned_to_user_id, assigned_to_role, consultation_message_id, phoned_at, \
    written_message_id, written_at, answered_at, answer_message_id, answer_note, closed_at, \
    close_reason, last_step_by_user_id";

pub(super) fn concern(row: &sqlx::any::AnyRow) -> ServiceResult<Concern> {
    let state: String = row.try_get("state")?;
    let observed_on: String = row.try_get("observed_on")?;
    let micros = |column: &str| -> ServiceResult<Option<referral_proto::Timestamp>> {
        Ok(row
            .try_get::<Option<i64>, _>(column)?
            .map(time::micros_to_proto))
    };
    let text = |column: &str| -> ServiceResult<String> {
        Ok(row
            .try_get::<Option<String>, _>(column)?
            .unwrap_or_default())
    };
    Ok(Concern {
        concern_id: row.try_get("concern_id")?,
        pupil_name: row.try_get("pupil_name")?,
        pupil_class: row.try_get("pupil_class")?,
        what_happened: row.try_get("what_happened")?,
        observed_on: Some(to_calendar_date(date(&observed_on)?)),
        at_risk_now: row.try_get::<i64, _>("at_risk_now")? != 0,
        state: ConcernState::from_str_name(&state).unwrap_or(ConcernState::Unspecified) as i32,
        reported_by_user_id: row.try_get("reported_by_user_id")?,
        reported_by_name: row.try_get("reported_by_name")?,
        reported_at: micros("reported_at")?,
        assigned_to_user_id: row.try_get("assigned_to_user_id")?,
        assigned_to_role: role(&row.try_get::<String, _>("assigned_to_role")?),
        consultation_message_id: text("consultation_message_id")?,
        phoned_at: micros("phoned_at")?,
        written_message_id: text("written_message_id")?,
        written_at: micros("written_at")?,
        answered_at: micros("answered_at")?,
        answer_message_id: text("answer_message_id")?,
        answer_note: text("answer_note")?,
        closed_at: micros("closed_at")?,
        close_reason: text("close_reason")?,
        last_step_by_user_id: row.try_get("last_step_by_user_id")?,
    })
}

pub(super) async fn load_concern(
    conn: &mut AnyConnection,
    concern_id: &str,
) -> ServiceResult<Option<Concern>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {CONCERN_COLUMNS} FROM safeguarding_concerns WHERE concern_id = $1"
    )))
    .bind(concern_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(concern).transpose()
}

/// The columns [`allegation`] reads.
pub(super) const ALLEGATION_COLUMNS: &str = "allegation_id, accused_user_id, accused_name, \
    allegation, happened_on, state, recorded_by_user_id, recorded_by_name, recorded_at, \
    assigned_to_user_id, assigned_to_role, received_at";

pub(super) fn allegation(row: &sqlx::any::AnyRow) -> ServiceResult<Allegation> {
    let state: String = row.try_get("state")?;
    let happened_on: String = row.try_get("happened_on")?;
    Ok(Allegation {
        allegation_id: row.try_get("allegation_id")?,
        accused_user_id: row.try_get("accused_user_id")?,
        accused_name: row.try_get("accused_name")?,
        allegation: row.try_get("allegation")?,
        happened_on: Some(to_calendar_date(date(&happened_on)?)),
        state: AllegationState::from_str_name(&state).unwrap_or(AllegationState::Unspecified)
            as i32,
        recorded_by_user_id: row.try_get("recorded_by_user_id")?,
        recorded_by_name: row.try_get("recorded_by_name")?,
        recorded_at: Some(time::micros_to_proto(row.try_get("recorded_at")?)),
        assigned_to_user_id: row.try_get("assigned_to_user_id")?,
        assigned_to_role: role(&row.try_get::<String, _>("assigned_to_role")?),
        received_at: row
            .try_get::<Option<i64>, _>("received_at")?
            .map(time::micros_to_proto),
    })
}

pub(super) async fn load_allegation(
    conn: &mut AnyConnection,
    allegation_id: &str,
) -> ServiceResult<Option<Allegation>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ALLEGATION_COLUMNS} FROM safeguarding_allegations WHERE allegation_id = $1"
    )))
    .bind(allegation_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(allegation).transpose()
}

pub(super) const ABSENCE_COLUMNS: &str = "absence_id, lead_user_id, first_day, last_day, note, \
    recorded_by_user_id, recorded_at, cancelled_at";

pub(super) fn absence(row: &sqlx::any::AnyRow) -> ServiceResult<LeadAbsence> {
    let first: String = row.try_get("first_day")?;
    let last: String = row.try_get("last_day")?;
    Ok(LeadAbsence {
        absence_id: row.try_get("absence_id")?,
        lead_user_id: row.try_get("lead_user_id")?,
        first_day: Some(to_calendar_date(date(&first)?)),
        last_day: Some(to_calendar_date(date(&last)?)),
        note: row.try_get("note")?,
        recorded_by_user_id: row.try_get("recorded_by_user_id")?,
        recorded_at: Some(time::micros_to_proto(row.try_get("recorded_at")?)),
        cancelled_at: row
            .try_get::<Option<i64>, _>("cancelled_at")?
            .map(time::micros_to_proto),
    })
}

pub(super) async fn load_absence(
    conn: &mut AnyConnection,
    absence_id: &str,
) -> ServiceResult<Option<LeadAbsence>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ABSENCE_COLUMNS} FROM safeguarding_lead_absences WHERE absence_id = $1"
    )))
    .bind(absence_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(absence).transpose()
}

/// Whether the lead is away on `day` (a recorded absence, not cancelled, covers it).
pub(super) async fn lead_absent_on(conn: &mut AnyConnection, day: Date) -> ServiceResult<bool> {
    let day = day.to_string();
    let found: Option<String> = sqlx::query_scalar(
        "SELECT absence_id FROM safeguarding_lead_absences WHERE cancelled_at IS NULL \
         AND first_day <= $1 AND last_day >= $1 LIMIT 1",
    )
    .bind(&day)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(found.is_some())
}

/// What this agency sent under `message_id`, if it is a `form_kind` it sent: whether the
/// recipient answered it, and with which message.
pub(super) struct SentForm {
    pub answer_message_id: Option<String>,
}

pub(super) async fn sent_form(
    conn: &mut AnyConnection,
    message_id: &str,
    form_kind: &str,
) -> ServiceResult<Option<SentForm>> {
    let row = sqlx::query(
        "SELECT answer_message_id FROM sent_messages WHERE message_id = $1 AND form_kind = $2 \
         AND status = 'sent'",
    )
    .bind(message_id)
    .bind(form_kind)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|row| {
        Ok(SentForm {
            answer_message_id: row.try_get("answer_message_id")?,
        })
    })
    .transpose()
}
