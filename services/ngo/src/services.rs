//! The NGO's services: created on a referral or an assignment received, moved step by step by the
//! case manager, every step sent back to whoever asked.
//!
//! A step is one transaction: the service's new state (a conditional `UPDATE … WHERE version =`,
//! after the step was found possible from the state read), the step row with what it replaced,
//! the SERVICE_UPDATE or ACTION_PROGRESS queued in `sent_messages`, and the clock event for the
//! gateway's deadline engine, *held* in `ngo_step_clock_events`. Then the message is handed to the
//! gateway. If the gateway refuses it, the step is undone (its held clock event with it); if the
//! gateway cannot be reached, the message stays queued and the background task pushes it again.
//!
//! The clock event waits for the message: it is released into the agency's clock-event outbox
//! ([`AgencyHost::queue_clock_event`], which the agency's retry loop pushes on its own) only once
//! the gateway has acknowledged the step's message ([`release_clock_events`], after a push and on
//! every round of the retry loop). So the engine never hears of a step the gateway refused: a
//! service ended or a report made there is final (met, cancelled), while the step is undone here.
//! Releasing goes in the order of the steps, and stops for a service at its first step whose
//! message is not acknowledged yet, so a service's events reach the engine in order.

use jiff::{Timestamp, civil::Date};
use prost::Message as _;
use referral_agency::{AgencyHost, PushOutcome, acting_user, forms::form};
use referral_core::{
    FieldViolations, ServiceError, ServiceResult,
    db::Row as _,
    time,
    validate::{self, LONG_TEXT, LONG_TEXT_MAX, REQUIRED_LONG_TEXT, Text},
};
use referral_proto::v1::{
    ActingUser, ActionProgress, ActionProgressState, AgencyClockEvent, AgencyClockEventKind,
    CalendarDate, ConfidentialityLabel, Envelope, FormKind, GetServiceRequest,
    ListMeetingNoticesRequest, ListMeetingNoticesResponse, ListServicesRequest,
    ListServicesResponse, MeetingNoticeView, NgoService, Payload, PurposeOfUse, ReferralStatus,
    Role, SafetyMeetingNotice, ServiceBusinessStatus, ServiceEvent, ServiceSource, ServiceUpdate,
    UpdateServiceRequest, UpdateServiceResponse, ngo_services_server, payload::Form,
};
use sha2::{Digest as _, Sha256};
use sqlx::AnyConnection;
use tonic::{Request, Response, Status};

const COLUMNS: &str = "service_id, source, referrer_agency_id, received_message_id, \
    referral_reference, case_reference, action_number, child_name, requested, status, \
    business_status, session_on, support_received, reason, version, received_at, \
    last_progress_at";

/// The state a step leads to from (`status`, `business`), or `None` when the step is not
/// possible from there.
pub fn next_state(
    status: ReferralStatus,
    business: ServiceBusinessStatus,
    event: ServiceEvent,
) -> Option<(ReferralStatus, ServiceBusinessStatus)> {
    use ReferralStatus as R;
    use ServiceBusinessStatus as B;
    use ServiceEvent as E;
    let active = matches!(status, R::Accepted | R::InProgress);
    match event {
        E::Accepted if status == R::Received && business == B::Created => {
            Some((R::Accepted, B::Accepted))
        }
        E::Declined if status == R::Received => Some((R::Rejected, B::Declined)),
        E::SessionScheduled if active => Some((R::InProgress, B::Scheduled)),
        E::SessionHeld if active && business == B::Scheduled => {
            Some((R::InProgress, B::EventCompleted))
        }
        E::ChildUnattended if active && business == B::Scheduled => {
            Some((R::InProgress, B::Unattended))
        }
        E::WeeklyProgress if active => Some((status, business)),
        E::Completed if active => Some((R::Completed, B::FulfilmentCompleted)),
        E::Cancelled if active => Some((R::Cancelled, B::FulfilmentCancelled)),
        _ => None,
    }
}

/// Creates the service of a referral or an assignment received, and keeps what a school sends
/// about one (a cancellation request, a meeting notice); inside the inbox's transaction.
pub(crate) async fn on_received(
    host: &AgencyHost,
    conn: &mut AnyConnection,
    envelope: &Envelope,
    now: Timestamp,
) -> ServiceResult<()> {
    let created = match form(envelope) {
        Some(Form::ServiceReferral(r)) => Some((
            ServiceSource::Referral,
            r.referral_reference.clone(),
            String::new(),
            0_u32,
            r.pupil_full_name.clone(),
            r.support_requested.clone(),
        )),
        Some(Form::ActionAssignment(a)) => {
            let action = a.action.clone().unwrap_or_default();
            Some((
                ServiceSource::ActionAssignment,
                String::new(),
                a.case_reference.clone(),
                action.number,
                a.child_first_name.clone(),
                action.action,
            ))
        }
        Some(Form::ServiceUpdate(u)) => {
            return cancellation_requested(conn, envelope, u, now).await;
        }
        Some(Form::SafetyMeetingNotice(n)) => {
            return meeting_notice(conn, envelope, n, now).await;
        }
        _ => None,
    };
    let Some((source, referral, case, number, child, requested)) = created else {
        return Ok(());
    };
    let service_id = format!("SVC-{}", uuid::Uuid::now_v7().simple());
    let inserted = sqlx::query(
        "INSERT INTO ngo_services (service_id, source, referrer_agency_id, received_message_id, \
         referral_reference, case_reference, action_number, child_name, requested, status, \
         business_status, session_on, support_received, reason, version, received_at, \
         last_progress_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
         NULL, '', '', 1, $12, NULL, $12) ON CONFLICT (received_message_id) DO NOTHING",
    )
    .bind(service_id.as_str())
    .bind(source.as_str_name())
    .bind(envelope.sender_agency_id.as_str())
    .bind(envelope.message_id.as_str())
    .bind(referral)
    .bind(case)
    .bind(i64::from(number))
    .bind(child)
    .bind(requested)
    .bind(ReferralStatus::Received.as_str_name())
    .bind(ServiceBusinessStatus::Created.as_str_name())
    .bind(time::to_micros(now))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    tracing::info!(
        agency = host.agency_id(),
        message_id = %envelope.message_id,
        created = inserted == 1,
        "service received"
    );
    Ok(())
}

/// The referring school asks to cancel: the service, while it runs, says so. The service is the
/// one of the referral the request names by its message id (the gateway checked that the school
/// sent it to this NGO); a request whose `referral_reference` is not that referral's changes
/// nothing (the gateway no longer holds the referral's payload to compare).
async fn cancellation_requested(
    conn: &mut AnyConnection,
    envelope: &Envelope,
    update: &ServiceUpdate,
    now: Timestamp,
) -> ServiceResult<()> {
    let changed = sqlx::query(
        "UPDATE ngo_services SET business_status = $1, reason = $2, version = version + 1, \
         updated_at = $3 WHERE received_message_id = $4 AND referrer_agency_id = $5 \
         AND referral_reference = $6 AND status IN ($7, $8, $9)",
    )
    .bind(ServiceBusinessStatus::CancellationRequested.as_str_name())
    .bind(update.reason.as_str())
    .bind(time::to_micros(now))
    .bind(update.referral_message_id.as_str())
    .bind(envelope.sender_agency_id.as_str())
    .bind(update.referral_reference.as_str())
    .bind(ReferralStatus::Received.as_str_name())
    .bind(ReferralStatus::Accepted.as_str_name())
    .bind(ReferralStatus::InProgress.as_str_name())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    tracing::info!(message_id = %envelope.message_id, applied = changed == 1, "cancellation requested");
    Ok(())
}

/// A safety-team meeting a school fixed about a pupil the NGO serves: the service of the referral
/// the notice names by its message id. A notice whose `referral_reference` is not that
/// referral's is not kept (logged, ids only): the gateway no longer holds the referral's payload
/// to compare.
async fn meeting_notice(
    conn: &mut AnyConnection,
    envelope: &Envelope,
    notice: &SafetyMeetingNotice,
    now: Timestamp,
) -> ServiceResult<()> {
    let found = sqlx::query(
        "SELECT service_id, referral_reference FROM ngo_services WHERE received_message_id = $1 \
         AND referrer_agency_id = $2",
    )
    .bind(notice.referral_message_id.as_str())
    .bind(envelope.sender_agency_id.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    let service: Option<String> = match found {
        Some(row) if row.try_get::<String, _>(1)? != notice.referral_reference => {
            tracing::warn!(
                message_id = %envelope.message_id,
                "a meeting notice names another referral than the one it is about: not kept"
            );
            return Ok(());
        }
        Some(row) => Some(row.try_get(0)?),
        None => None,
    };
    let meeting_at = notice
        .meeting_at
        .as_ref()
        .and_then(time::from_proto)
        .map_or(0, time::to_micros);
    sqlx::query(
        "INSERT INTO ngo_meeting_notices (message_id, service_id, school_agency_id, notice, \
         meeting_at, received_at) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(envelope.message_id.as_str())
    .bind(service)
    .bind(envelope.sender_agency_id.as_str())
    .bind(notice.encode_to_vec())
    .bind(meeting_at)
    .bind(time::to_micros(now))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// One service row.
#[derive(Debug, Clone)]
struct Row {
    id: String,
    source: ServiceSource,
    referrer: String,
    received_message_id: String,
    referral_reference: String,
    case_reference: String,
    action_number: i64,
    child_name: String,
    requested: String,
    status: ReferralStatus,
    business: ServiceBusinessStatus,
    session_on: Option<String>,
    support_received: String,
    reason: String,
    version: i64,
    received_at: i64,
    last_progress_at: Option<i64>,
}

fn from_row(r: &sqlx::any::AnyRow) -> ServiceResult<Row> {
    Ok(Row {
        id: r.try_get(0)?,
        source: ServiceSource::from_str_name(&r.try_get::<String, _>(1)?).unwrap_or_default(),
        referrer: r.try_get(2)?,
        received_message_id: r.try_get(3)?,
        referral_reference: r.try_get(4)?,
        case_reference: r.try_get(5)?,
        action_number: r.try_get(6)?,
        child_name: r.try_get(7)?,
        requested: r.try_get(8)?,
        status: ReferralStatus::from_str_name(&r.try_get::<String, _>(9)?).unwrap_or_default(),
        business: ServiceBusinessStatus::from_str_name(&r.try_get::<String, _>(10)?)
            .unwrap_or_default(),
        session_on: r.try_get(11)?,
        support_received: r.try_get(12)?,
        reason: r.try_get(13)?,
        version: r.try_get(14)?,
        received_at: r.try_get(15)?,
        last_progress_at: r.try_get(16)?,
    })
}

fn date_of(text: Option<&str>) -> Option<CalendarDate> {
    text.and_then(|t| t.parse::<Date>().ok())
        .map(validate::to_calendar_date)
}

async fn load(conn: &mut AnyConnection, id: &str) -> ServiceResult<Option<Row>> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM ngo_services WHERE service_id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(from_row)
    .transpose()
}

fn view(row: &Row) -> NgoService {
    NgoService {
        service_id: row.id.clone(),
        source: row.source as i32,
        referrer_agency_id: row.referrer.clone(),
        received_message_id: row.received_message_id.clone(),
        referral_reference: row.referral_reference.clone(),
        case_reference: row.case_reference.clone(),
        action_number: u32::try_from(row.action_number).unwrap_or_default(),
        child_name: row.child_name.clone(),
        requested: row.requested.clone(),
        status: row.status as i32,
        business_status: row.business as i32,
        session_on: date_of(row.session_on.as_deref()),
        support_received: row.support_received.clone(),
        reason: row.reason.clone(),
        received_at: Some(time::micros_to_proto(row.received_at)),
        last_progress_at: row.last_progress_at.map(time::micros_to_proto),
        version: u64::try_from(row.version).unwrap_or_default(),
    }
}

/// The acting user of `request`, when a case manager: the services are theirs alone.
fn case_manager<T>(request: &Request<T>) -> ServiceResult<ActingUser> {
    let user = acting_user(request)?;
    if user.role == Role::NgoCaseManager as i32 {
        Ok(user)
    } else {
        Err(ServiceError::PermissionDenied(
            "services are the NGO case managers' work".into(),
        ))
    }
}

fn service_id_check(v: &mut FieldViolations, id: &str) {
    validate::text(v, "service_id", id, Text::required(1, 100));
}

/// Checks a step's fields, independent of the service's state.
fn check_update(request: &UpdateServiceRequest, today: Date) -> ServiceResult<ServiceEvent> {
    let mut v = FieldViolations::new();
    service_id_check(&mut v, &request.service_id);
    validate::idempotency_key(&request.idempotency_key, "idempotency_key", &mut v);
    let event = match ServiceEvent::try_from(request.event) {
        Ok(ServiceEvent::Unspecified | ServiceEvent::CancellationRequested) | Err(_) => {
            v.add(
                "event",
                "required: accepted, declined, session scheduled, session held, child \
                 unattended, weekly progress, completed or cancelled",
            );
            ServiceEvent::Unspecified
        }
        Ok(e) => e,
    };
    let required = |yes: bool| if yes { REQUIRED_LONG_TEXT } else { LONG_TEXT };
    validate::text(
        &mut v,
        "reason",
        &request.reason,
        required(matches!(
            event,
            ServiceEvent::Declined | ServiceEvent::Cancelled
        )),
    );
    validate::text(
        &mut v,
        "note",
        &request.note,
        required(event == ServiceEvent::WeeklyProgress),
    );
    validate::text(
        &mut v,
        "support_received",
        &request.support_received,
        required(false),
    );
    let session = request
        .session_on
        .as_ref()
        .filter(|d| **d != CalendarDate::default());
    match event {
        ServiceEvent::SessionScheduled => match session.and_then(validate::calendar_date) {
            None => v.add("session_on", "required: a real calendar date"),
            Some(d) if d < today => v.add("session_on", "must not be in the past"),
            Some(_) => {}
        },
        ServiceEvent::SessionHeld | ServiceEvent::ChildUnattended => {
            if let Some(d) = session {
                match validate::calendar_date(d) {
                    None => v.add("session_on", "must be a real calendar date"),
                    Some(d) if d > today => v.add("session_on", "must not be in the future"),
                    Some(_) => {}
                }
            }
        }
        _ if session.is_some() => v.add(
            "session_on",
            "only for a session scheduled, held or unattended",
        ),
        _ => {}
    }
    v.into_result()?;
    Ok(event)
}

fn fingerprint(request: &UpdateServiceRequest) -> String {
    hex::encode(Sha256::digest(request.encode_to_vec()))
}

/// The `sent_messages` key of the message sent for a step's idempotency key: hashed, so that any
/// key the staff API accepts makes a key the gateway accepts.
fn message_key(idempotency_key: &str) -> String {
    format!(
        "service-step:{}",
        hex::encode(Sha256::digest(idempotency_key.as_bytes()))
    )
}

/// The progress state an assignment's row is in after a step.
fn progress_state(event: ServiceEvent) -> ActionProgressState {
    match event {
        ServiceEvent::Completed => ActionProgressState::Completed,
        ServiceEvent::Declined | ServiceEvent::Cancelled => ActionProgressState::CannotComplete,
        _ => ActionProgressState::InProgress,
    }
}

/// What a step says to the commission about an assigned row: the event, then what was written.
fn progress_note(event: ServiceEvent, request: &UpdateServiceRequest) -> String {
    let what = event
        .as_str_name()
        .trim_start_matches("SERVICE_EVENT_")
        .to_ascii_lowercase()
        .replace('_', " ");
    let mut note = what;
    for part in [&request.reason, &request.note, &request.support_received] {
        if !part.trim().is_empty() {
            note.push_str(": ");
            note.push_str(part.trim());
        }
    }
    note.chars().take(LONG_TEXT_MAX).collect()
}

/// The clock event a step reports to the deadline engine, if any.
fn clock_kind(event: ServiceEvent) -> Option<AgencyClockEventKind> {
    match event {
        ServiceEvent::Accepted => Some(AgencyClockEventKind::ServiceStarted),
        ServiceEvent::WeeklyProgress => Some(AgencyClockEventKind::ServiceProgressReported),
        ServiceEvent::Completed | ServiceEvent::Cancelled => {
            Some(AgencyClockEventKind::ServiceEnded)
        }
        _ => None,
    }
}

/// The `NgoServices` staff service.
#[derive(Debug, Clone)]
pub struct NgoServicesApi {
    host: AgencyHost,
}

impl NgoServicesApi {
    pub fn new(host: AgencyHost) -> Self {
        Self { host }
    }

    async fn update(
        &self,
        user: ActingUser,
        request: UpdateServiceRequest,
    ) -> ServiceResult<UpdateServiceResponse> {
        let today = self.host.today();
        let event = check_update(&request, today)?;
        let key = message_key(&request.idempotency_key);
        let sha = fingerprint(&request);
        let now = self.host.clock().now();
        let mut tx = self.host.begin().await?;
        let row = load(&mut tx, &request.service_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound("no such service".into()))?;
        // The same request again: the same answer.
        if let Some(seen) =
            sqlx::query("SELECT request_sha256 FROM ngo_service_steps WHERE message_key = $1")
                .bind(key.as_str())
                .fetch_optional(&mut *tx)
                .await?
        {
            tx.rollback().await?;
            if seen.try_get::<String, _>(0)? != sha {
                return Err(ServiceError::AlreadyExists(
                    "this idempotency key was already used for another step".into(),
                ));
            }
            return self.push_and_answer(&row.id, &key).await;
        }
        let Some((status, business)) = next_state(row.status, row.business, event) else {
            return Err(ServiceError::FailedPrecondition(format!(
                "a service that is {} ({}) cannot take {}",
                row.status.as_str_name(),
                row.business.as_str_name(),
                event.as_str_name()
            )));
        };
        let session_on: Option<Date> = match event {
            ServiceEvent::SessionScheduled => request
                .session_on
                .as_ref()
                .and_then(validate::calendar_date),
            ServiceEvent::SessionHeld | ServiceEvent::ChildUnattended => request
                .session_on
                .as_ref()
                .and_then(validate::calendar_date)
                .or_else(|| row.session_on.as_deref().and_then(|d| d.parse().ok())),
            _ => row.session_on.as_deref().and_then(|d| d.parse().ok()),
        };
        if matches!(
            event,
            ServiceEvent::SessionHeld | ServiceEvent::ChildUnattended
        ) && session_on.is_some_and(|d| d > today)
        {
            return Err(ServiceError::FailedPrecondition(
                "the scheduled session has not come yet".into(),
            ));
        }
        let support_received = if request.support_received.trim().is_empty() {
            row.support_received.clone()
        } else {
            request.support_received.trim().to_owned()
        };
        let reason = if request.reason.trim().is_empty() {
            row.reason.clone()
        } else {
            request.reason.trim().to_owned()
        };
        let last_progress_at = if event == ServiceEvent::WeeklyProgress {
            Some(time::to_micros(now))
        } else {
            row.last_progress_at
        };
        let version = row.version + 1;
        let moved = sqlx::query(
            "UPDATE ngo_services SET status = $1, business_status = $2, session_on = $3, \
             support_received = $4, reason = $5, last_progress_at = $6, version = $7, \
             updated_at = $8 WHERE service_id = $9 AND version = $10",
        )
        .bind(status.as_str_name())
        .bind(business.as_str_name())
        .bind(session_on.map(|d| d.to_string()))
        .bind(support_received.as_str())
        .bind(reason.as_str())
        .bind(last_progress_at)
        .bind(version)
        .bind(time::to_micros(now))
        .bind(row.id.as_str())
        .bind(row.version)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved != 1 {
            return Err(ServiceError::Aborted(
                "the service changed meanwhile: read it again".into(),
            ));
        }
        sqlx::query(
            "INSERT INTO ngo_service_steps (message_key, service_id, version, request_sha256, \
             event, prev_status, prev_business_status, prev_session_on, prev_support_received, \
             prev_reason, prev_last_progress_at, recorded_by, recorded_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(key.as_str())
        .bind(row.id.as_str())
        .bind(version)
        .bind(sha.as_str())
        .bind(event.as_str_name())
        .bind(row.status.as_str_name())
        .bind(row.business.as_str_name())
        .bind(row.session_on.as_deref())
        .bind(row.support_received.as_str())
        .bind(row.reason.as_str())
        .bind(row.last_progress_at)
        .bind(user.user_id.as_str())
        .bind(time::to_micros(now))
        .execute(&mut *tx)
        .await?;
        let envelope = self.step_envelope(
            &user,
            &row,
            &request,
            &key,
            StepOutcome {
                event,
                status,
                business,
                session_on,
                support_received: &support_received,
                today,
                now,
            },
        );
        self.host
            .queue_message(&mut tx, &key, &user.user_id, &envelope, now)
            .await?;
        if let Some(kind) = clock_kind(event) {
            // Held until the message is acknowledged (see the module's documentation).
            let clock_event = AgencyClockEvent {
                kind: kind as i32,
                subject_reference: row.id.clone(),
                occurred_at: Some(time::to_proto(now)),
                urgent: false,
                responsible_user_id: user.user_id.clone(),
                responsible_role: Role::NgoCaseManager as i32,
                related_message_id: row.received_message_id.clone(),
            };
            sqlx::query(
                "INSERT INTO ngo_step_clock_events (message_key, acting_user, event) \
                 VALUES ($1, $2, $3)",
            )
            .bind(key.as_str())
            .bind(user.encode_to_vec())
            .bind(clock_event.encode_to_vec())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        tracing::info!(service_id = %row.id, event = event.as_str_name(), "service step recorded");
        self.push_and_answer(&row.id, &key).await
    }

    /// The SERVICE_UPDATE (to the school, a reply to its referral) or ACTION_PROGRESS (to the
    /// commission, a reply to its assignment) a step sends.
    fn step_envelope(
        &self,
        user: &ActingUser,
        row: &Row,
        request: &UpdateServiceRequest,
        key: &str,
        outcome: StepOutcome<'_>,
    ) -> Envelope {
        let (kind, confidentiality, case, form) = match row.source {
            ServiceSource::ActionAssignment => (
                FormKind::ActionProgress,
                ConfidentialityLabel::Normal,
                row.case_reference.clone(),
                Form::ActionProgress(ActionProgress {
                    assignment_message_id: row.received_message_id.clone(),
                    case_reference: row.case_reference.clone(),
                    action_number: u32::try_from(row.action_number).unwrap_or_default(),
                    state: progress_state(outcome.event) as i32,
                    note: progress_note(outcome.event, request),
                    reported_on: Some(validate::to_calendar_date(outcome.today)),
                    reported_by: user.display_name.clone(),
                }),
            ),
            _ => (
                FormKind::ServiceUpdate,
                ConfidentialityLabel::Restricted,
                String::new(),
                Form::ServiceUpdate(ServiceUpdate {
                    referral_reference: row.referral_reference.clone(),
                    status: outcome.status as i32,
                    business_status: outcome.business as i32,
                    reported_at: Some(time::to_proto(outcome.now)),
                    referral_message_id: row.received_message_id.clone(),
                    event: outcome.event as i32,
                    reason: request.reason.trim().to_owned(),
                    note: request.note.trim().to_owned(),
                    support_received: outcome.support_received.to_owned(),
                    session_on: outcome
                        .session_on
                        .filter(|_| {
                            matches!(
                                outcome.event,
                                ServiceEvent::SessionScheduled
                                    | ServiceEvent::SessionHeld
                                    | ServiceEvent::ChildUnattended
                            )
                        })
                        .map(validate::to_calendar_date),
                    service_reference: row.id.clone(),
                    reported_by: user.display_name.clone(),
                }),
            ),
        };
        Envelope {
            idempotency_key: key.to_owned(),
            sender_agency_id: self.host.agency_id().to_owned(),
            recipient_agency_id: row.referrer.clone(),
            acting_user: Some(user.clone()),
            purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
            case_reference: case,
            form_kind: kind as i32,
            confidentiality: confidentiality as i32,
            in_reply_to: row.received_message_id.clone(),
            payload: Some(Payload { form: Some(form) }),
            ..Envelope::default()
        }
    }

    /// Hands the message queued under `key` to the gateway and answers with the service.
    async fn push_and_answer(&self, id: &str, key: &str) -> ServiceResult<UpdateServiceResponse> {
        let message_id = match self
            .host
            .push_message(key)
            .await
            .map_err(ServiceError::from)?
        {
            PushOutcome::Sent(id) => {
                release_clock_events(&self.host).await;
                id
            }
            PushOutcome::NotNow(failure) => {
                tracing::warn!(?failure, "a service update waits for the gateway");
                String::new()
            }
            PushOutcome::Refused(failure) => {
                undo(&self.host, key).await?;
                return Err(failure.into_service_error());
            }
            PushOutcome::Unknown => String::new(),
        };
        let mut conn = self.host.pool().acquire().await?;
        let row = load(&mut conn, id)
            .await?
            .ok_or_else(|| ServiceError::NotFound("no such service".into()))?;
        Ok(UpdateServiceResponse {
            service: Some(view(&row)),
            message_id,
        })
    }
}

/// What a step leads to, for its message.
struct StepOutcome<'a> {
    event: ServiceEvent,
    status: ReferralStatus,
    business: ServiceBusinessStatus,
    session_on: Option<Date>,
    support_received: &'a str,
    today: Date,
    now: Timestamp,
}

/// Undoes the step whose message the gateway refused: the service gets back what the step
/// replaced, and the step row goes with its held clock event (never released: only an
/// acknowledged message releases it, so the engine never heard of the step). When the service
/// has moved on since (a later step was made while this one's message waited), nothing can be
/// restored: the error is logged and returned, and nothing changes.
async fn undo(host: &AgencyHost, key: &str) -> ServiceResult<()> {
    let mut tx = host.begin().await?;
    let Some(step) = sqlx::query(
        "SELECT service_id, version, prev_status, prev_business_status, prev_session_on, \
         prev_support_received, prev_reason, prev_last_progress_at \
         FROM ngo_service_steps WHERE message_key = $1",
    )
    .bind(key)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(());
    };
    let id: String = step.try_get(0)?;
    let version: i64 = step.try_get(1)?;
    let restored = sqlx::query(
        "UPDATE ngo_services SET status = $1, business_status = $2, session_on = $3, \
         support_received = $4, reason = $5, last_progress_at = $6, version = $7 \
         WHERE service_id = $8 AND version = $9",
    )
    .bind(step.try_get::<String, _>(2)?)
    .bind(step.try_get::<String, _>(3)?)
    .bind(step.try_get::<Option<String>, _>(4)?)
    .bind(step.try_get::<String, _>(5)?)
    .bind(step.try_get::<String, _>(6)?)
    .bind(step.try_get::<Option<i64>, _>(7)?)
    .bind(version - 1)
    .bind(id.as_str())
    .bind(version)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if restored != 1 {
        tx.rollback().await?;
        tracing::error!(
            service_id = %id,
            message_key = %key,
            "a refused step cannot be undone: the service has moved on since"
        );
        return Err(ServiceError::internal(anyhow::anyhow!(
            "the refused step of service {id} cannot be undone: the service has moved on since"
        )));
    }
    sqlx::query("DELETE FROM ngo_step_clock_events WHERE message_key = $1")
        .bind(key)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM ngo_service_steps WHERE message_key = $1")
        .bind(key)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Releases into the agency's clock-event outbox the held clock events of the steps whose message
/// the gateway has acknowledged, in the order of the steps, and pushes them. A service's events
/// stop at its first step whose message is still queued. A step whose message is gone (refused,
/// and the step could not be undone: logged then) keeps its event held for ever, and does not
/// hold the service's later ones. Failures are logged (ids only): the next round tries again.
pub(crate) async fn release_clock_events(host: &AgencyHost) {
    let held = sqlx::query(
        "SELECT h.message_key, c.service_id, s.message_id FROM ngo_step_clock_events h \
         JOIN ngo_service_steps c ON c.message_key = h.message_key \
         JOIN sent_messages s ON s.idempotency_key = h.message_key \
         ORDER BY c.recorded_at, c.service_id, c.version LIMIT 100",
    )
    .fetch_all(host.pool())
    .await;
    let held = match held {
        Ok(rows) => rows,
        Err(error) => {
            tracing::warn!(%error, "cannot read the held clock events");
            return;
        }
    };
    let mut waiting = std::collections::HashSet::new();
    let mut released = 0;
    for row in &held {
        let read = (|| -> Result<(String, String, Option<String>), sqlx::Error> {
            Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
        })();
        let (key, service, message_id) = match read {
            Ok(read) => read,
            Err(error) => {
                tracing::warn!(%error, "cannot read a held clock event");
                return;
            }
        };
        if waiting.contains(&service) || message_id.is_none() {
            waiting.insert(service);
            continue;
        }
        match release(host, &key).await {
            Ok(()) => released += 1,
            Err(error) => {
                tracing::error!(%error, message_key = %key, "cannot release a clock event");
                waiting.insert(service);
            }
        }
    }
    if released > 0 {
        host.push_clock_events().await;
    }
}

/// Queues the clock event held for the step under `key` and forgets it, in one transaction.
async fn release(host: &AgencyHost, key: &str) -> ServiceResult<()> {
    let mut tx = host.begin().await?;
    let Some(held) =
        sqlx::query("SELECT acting_user, event FROM ngo_step_clock_events WHERE message_key = $1")
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?
    else {
        return Ok(());
    };
    let acting = ActingUser::decode(held.try_get::<Vec<u8>, _>(0)?.as_slice())
        .map_err(ServiceError::internal)?;
    let event = AgencyClockEvent::decode(held.try_get::<Vec<u8>, _>(1)?.as_slice())
        .map_err(ServiceError::internal)?;
    host.queue_clock_event(&mut tx, &format!("{key}:clock"), &acting, event)
        .await?;
    sqlx::query("DELETE FROM ngo_step_clock_events WHERE message_key = $1")
        .bind(key)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Pushes the messages of the steps the gateway could not take when they were made, then releases
/// the clock events of the steps acknowledged (also those acknowledged before a restart).
pub(crate) async fn push_pending(host: &AgencyHost) {
    host.push_pending(
        "SELECT c.message_key FROM ngo_service_steps c \
         JOIN sent_messages s ON s.idempotency_key = c.message_key \
         WHERE s.message_id IS NULL ORDER BY c.recorded_at LIMIT 100",
        "service update",
        |key| async move { undo(host, &key).await },
    )
    .await;
    release_clock_events(host).await;
}

#[tonic::async_trait]
impl ngo_services_server::NgoServices for NgoServicesApi {
    async fn list_services(
        &self,
        request: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        case_manager(&request)?;
        let include_ended = request.into_inner().include_ended;
        let mut conn = self
            .host
            .pool()
            .acquire()
            .await
            .map_err(ServiceError::from)?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM ngo_services \
             WHERE ($1 = 1 OR status NOT IN ($2, $3, $4)) \
             ORDER BY received_at DESC, service_id DESC"
        )))
        .bind(i64::from(include_ended))
        .bind(ReferralStatus::Rejected.as_str_name())
        .bind(ReferralStatus::Completed.as_str_name())
        .bind(ReferralStatus::Cancelled.as_str_name())
        .fetch_all(&mut *conn)
        .await
        .map_err(ServiceError::from)?;
        let services = rows
            .iter()
            .map(|r| from_row(r).map(|row| view(&row)))
            .collect::<ServiceResult<Vec<_>>>()?;
        Ok(Response::new(ListServicesResponse { services }))
    }

    async fn get_service(
        &self,
        request: Request<GetServiceRequest>,
    ) -> Result<Response<NgoService>, Status> {
        case_manager(&request)?;
        let id = request.into_inner().service_id;
        let mut v = FieldViolations::new();
        service_id_check(&mut v, &id);
        v.into_result()?;
        let mut conn = self
            .host
            .pool()
            .acquire()
            .await
            .map_err(ServiceError::from)?;
        let row = load(&mut conn, &id)
            .await?
            .ok_or_else(|| ServiceError::NotFound("no such service".into()))?;
        Ok(Response::new(view(&row)))
    }

    async fn update_service(
        &self,
        request: Request<UpdateServiceRequest>,
    ) -> Result<Response<UpdateServiceResponse>, Status> {
        let user = case_manager(&request)?;
        Ok(Response::new(
            self.update(user, request.into_inner()).await?,
        ))
    }

    async fn list_meeting_notices(
        &self,
        request: Request<ListMeetingNoticesRequest>,
    ) -> Result<Response<ListMeetingNoticesResponse>, Status> {
        case_manager(&request)?;
        let id = request.into_inner().service_id;
        let mut v = FieldViolations::new();
        validate::text(&mut v, "service_id", &id, Text::optional(100));
        v.into_result()?;
        let rows = sqlx::query(
            "SELECT message_id, service_id, school_agency_id, notice, received_at \
             FROM ngo_meeting_notices WHERE ($1 = '' OR service_id = $1) \
             ORDER BY meeting_at, message_id",
        )
        .bind(id.as_str())
        .fetch_all(self.host.pool())
        .await
        .map_err(ServiceError::from)?;
        let notices = rows
            .iter()
            .map(|r| {
                Ok(MeetingNoticeView {
                    message_id: r.try_get(0)?,
                    service_id: r.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
                    school_agency_id: r.try_get(2)?,
                    notice: Some(
                        SafetyMeetingNotice::decode(r.try_get::<Vec<u8>, _>(3)?.as_slice())
                            .map_err(ServiceError::internal)?,
                    ),
                    received_at: Some(time::micros_to_proto(r.try_get(4)?)),
                })
            })
            .collect::<ServiceResult<Vec<_>>>()?;
        Ok(Response::new(ListMeetingNoticesResponse { notices }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReferralStatus as R;
    use ServiceBusinessStatus as B;
    use ServiceEvent as E;

    #[test]
    fn a_service_moves_only_where_its_state_allows() {
        assert_eq!(
            next_state(R::Received, B::Created, E::Accepted),
            Some((R::Accepted, B::Accepted))
        );
        assert_eq!(
            next_state(R::Received, B::Created, E::Declined),
            Some((R::Rejected, B::Declined))
        );
        assert_eq!(
            next_state(R::Accepted, B::Accepted, E::SessionScheduled),
            Some((R::InProgress, B::Scheduled))
        );
        assert_eq!(
            next_state(R::InProgress, B::Scheduled, E::ChildUnattended),
            Some((R::InProgress, B::Unattended))
        );
        assert_eq!(
            next_state(R::InProgress, B::EventCompleted, E::WeeklyProgress),
            Some((R::InProgress, B::EventCompleted))
        );
        assert_eq!(
            next_state(R::InProgress, B::CancellationRequested, E::Cancelled),
            Some((R::Cancelled, B::FulfilmentCancelled))
        );
        // Impossible steps.
        assert_eq!(next_state(R::Rejected, B::Declined, E::Completed), None);
        assert_eq!(next_state(R::Received, B::Created, E::Completed), None);
        assert_eq!(next_state(R::Received, B::Created, E::WeeklyProgress), None);
        assert_eq!(next_state(R::Accepted, B::Accepted, E::SessionHeld), None);
        assert_eq!(next_state(R::Accepted, B::Accepted, E::Accepted), None);
        assert_eq!(
            next_state(R::Completed, B::FulfilmentCompleted, E::Cancelled),
            None
        );
        assert_eq!(
            next_state(R::Received, B::CancellationRequested, E::Accepted),
            None
        );
    }

    #[test]
    fn a_decline_needs_a_reason_and_a_progress_report_a_note() {
        let today = jiff::civil::date(2026, 11, 20);
        let base = UpdateServiceRequest {
            service_id: "SVC-1".into(),
            idempotency_key: "step-0001".into(),
            event: E::Declined as i32,
            ..Default::default()
        };
        let err = check_update(&base, today).unwrap_err();
        assert!(matches!(err, ServiceError::InvalidArgument(v) if v.contains("reason")));
        let progress = UpdateServiceRequest {
            event: E::WeeklyProgress as i32,
            ..base.clone()
        };
        let err = check_update(&progress, today).unwrap_err();
        assert!(matches!(err, ServiceError::InvalidArgument(v) if v.contains("note")));
        let schedule = UpdateServiceRequest {
            event: E::SessionScheduled as i32,
            session_on: Some(validate::to_calendar_date(jiff::civil::date(2026, 11, 19))),
            ..base
        };
        let err = check_update(&schedule, today).unwrap_err();
        assert!(matches!(err, ServiceError::InvalidArgument(v) if v.contains("session_on")));
    }
}
