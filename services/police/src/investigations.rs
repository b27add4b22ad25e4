//! Investigations: one per incident, opened when the commission asks the police about a case (an
//! information request or an action assignment received) or when an institution refers an
//! incident directly (INCIDENT_REFERRAL); linked to the case of every child involved, each with
//! its child's role; moved through their lifecycle by inspectors.
//!
//! Every accepted change is one transaction: the investigation's new state, the change row with
//! what it replaced, and one INVESTIGATION_UPDATE per linked case queued in `sent_messages` (a
//! delivery row each), each naming only its own case and its child's role, so the victim's curator
//! and the offender's curator each get their own and neither learns of the other child. The
//! deliveries are then handed to the gateway. A change made before any case is linked (an
//! institution's referral the commission has not opened a case for yet) is kept, and a case linked
//! later gets every earlier change, oldest first. If the gateway refuses every delivery of a new
//! change, the change is undone; a single refused delivery is marked REFUSED and the others stand.
//! A delivery the gateway cannot take yet stays queued and is pushed again by the background task.

use std::collections::HashMap;

use jiff::{Timestamp, civil::Date};
use prost::Message as _;
use referral_agency::{AgencyHost, GatewayFailure, PushOutcome, acting_user, forms::form};
use referral_core::{
    FieldViolations, ServiceError, ServiceResult,
    db::Row as _,
    time,
    validate::{self, LONG_TEXT_MAX, Text},
};
use referral_proto::v1::{
    ActingUser, CalendarDate, CaseDeliveryState, ConfidentialityLabel, Envelope, FormKind,
    GetInvestigationRequest, IncidentReferral, IncidentReferralPurpose, IncidentRole,
    Investigation, InvestigationCase, InvestigationChange, InvestigationDelivery,
    InvestigationStatus, InvestigationUpdate, LinkCaseRequest, LinkCaseResponse,
    ListInvestigationsRequest, ListInvestigationsResponse, Payload, PurposeOfUse, Role,
    UpdateInvestigationRequest, UpdateInvestigationResponse, payload::Form,
};
use sha2::{Digest as _, Sha256};
use sqlx::AnyConnection;
use tonic::{Request, Response, Status};

const COLUMNS: &str = "i.investigation_id, i.referred_by_agency_id, i.received_message_id, \
    i.incident_reference, i.incident_referral, i.status, i.status_on, i.hearing_on, i.summary, \
    i.version, i.received_at";

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

/// Whether a child with this role is an offender (and so may be registered for prevention).
pub(crate) fn offender(role: IncidentRole) -> bool {
    matches!(role, IncidentRole::Perpetrator | IncidentRole::Both)
}

/// Opens what a received message asks for, inside the inbox's transaction: an investigation with
/// the case linked, once per case, for the commission's request or assignment; an investigation
/// of the incident, once per incident, for an institution's referral.
pub(crate) async fn on_received(
    host: &AgencyHost,
    conn: &mut AnyConnection,
    envelope: &Envelope,
    now: Timestamp,
) -> ServiceResult<()> {
    match form(envelope) {
        Some(Form::InformationRequest(r)) => {
            on_case(host, conn, envelope, &r.case_reference, now).await
        }
        Some(Form::ActionAssignment(a)) => {
            on_case(host, conn, envelope, &a.case_reference, now).await
        }
        Some(Form::IncidentReferral(r)) => on_incident(host, conn, envelope, r, now).await,
        _ => Ok(()),
    }
}

fn new_id() -> String {
    format!("INV-{}", uuid::Uuid::now_v7().simple())
}

async fn on_case(
    host: &AgencyHost,
    conn: &mut AnyConnection,
    envelope: &Envelope,
    case_reference: &str,
    now: Timestamp,
) -> ServiceResult<()> {
    if case_reference.is_empty() {
        return Ok(());
    }
    let known = sqlx::query("SELECT 1 FROM investigation_cases WHERE case_reference = $1")
        .bind(case_reference)
        .fetch_optional(&mut *conn)
        .await?
        .is_some();
    if known {
        tracing::info!(message_id = %envelope.message_id, "a request on a case already linked");
        return Ok(());
    }
    let id = new_id();
    let today = now.to_zoned(host.time_zone().clone()).date();
    insert_investigation(conn, &id, envelope, None, today, now).await?;
    sqlx::query(
        "INSERT INTO investigation_cases (case_reference, investigation_id, \
         commission_agency_id, received_message_id, child_role, linked_at, linked_by) \
         VALUES ($1, $2, $3, $4, $5, $6, '')",
    )
    .bind(case_reference)
    .bind(id.as_str())
    .bind(envelope.sender_agency_id.as_str())
    .bind(envelope.message_id.as_str())
    .bind(IncidentRole::Unspecified.as_str_name())
    .bind(time::to_micros(now))
    .execute(&mut *conn)
    .await?;
    tracing::info!(message_id = %envelope.message_id, investigation = %id, "investigation received");
    Ok(())
}

async fn on_incident(
    host: &AgencyHost,
    conn: &mut AnyConnection,
    envelope: &Envelope,
    referral: &IncidentReferral,
    now: Timestamp,
) -> ServiceResult<()> {
    // A medical-care referral is a health facility's; the gateway routes none here.
    let purpose = IncidentReferralPurpose::try_from(referral.purpose).unwrap_or_default();
    if referral.incident_reference.is_empty() || purpose == IncidentReferralPurpose::MedicalCare {
        return Ok(());
    }
    let id = new_id();
    let today = now.to_zoned(host.time_zone().clone()).date();
    let created = insert_investigation(conn, &id, envelope, Some(referral), today, now).await?;
    tracing::info!(
        message_id = %envelope.message_id,
        investigation = %id,
        created,
        "incident referral received"
    );
    Ok(())
}

/// Inserts a RECEIVED investigation; false when the institution's incident has one already.
async fn insert_investigation(
    conn: &mut AnyConnection,
    id: &str,
    envelope: &Envelope,
    referral: Option<&IncidentReferral>,
    today: Date,
    now: Timestamp,
) -> ServiceResult<bool> {
    Ok(sqlx::query(
        "INSERT INTO investigations (investigation_id, referred_by_agency_id, \
         received_message_id, incident_reference, incident_referral, status, status_on, \
         hearing_on, summary, version, received_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, '', 1, $8, $8) \
         ON CONFLICT (referred_by_agency_id, incident_reference) DO NOTHING",
    )
    .bind(id)
    .bind(envelope.sender_agency_id.as_str())
    .bind(envelope.message_id.as_str())
    .bind(referral.map(|r| r.incident_reference.clone()))
    .bind(referral.map(prost::Message::encode_to_vec))
    .bind(InvestigationStatus::Received.as_str_name())
    .bind(today.to_string())
    .bind(time::to_micros(now))
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1)
}

/// One investigation row.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub id: String,
    referred_by: String,
    received_message_id: String,
    incident_reference: Option<String>,
    referral: Option<IncidentReferral>,
    pub status: InvestigationStatus,
    status_on: String,
    hearing_on: Option<String>,
    summary: String,
    version: i64,
    received_at: i64,
}

fn from_row(r: &sqlx::any::AnyRow) -> ServiceResult<Row> {
    Ok(Row {
        id: r.try_get(0)?,
        referred_by: r.try_get(1)?,
        received_message_id: r.try_get(2)?,
        incident_reference: r.try_get(3)?,
        referral: r
            .try_get::<Option<Vec<u8>>, _>(4)?
            .map(|b| IncidentReferral::decode(b.as_slice()))
            .transpose()
            .map_err(ServiceError::internal)?,
        status: InvestigationStatus::from_str_name(&r.try_get::<String, _>(5)?).unwrap_or_default(),
        status_on: r.try_get(6)?,
        hearing_on: r.try_get(7)?,
        summary: r.try_get(8)?,
        version: r.try_get(9)?,
        received_at: r.try_get(10)?,
    })
}

impl Row {
    /// Whether `text` names a child of the institution's referral: what goes to every linked
    /// case must not (the victim's curator must not learn the offender's name, nor the reverse).
    pub(crate) fn names_a_child(&self, text: &str) -> bool {
        let text = text.to_lowercase();
        self.referral.iter().flat_map(|r| &r.children).any(|c| {
            let name = c.full_name.trim().to_lowercase();
            !name.is_empty() && text.contains(&name)
        })
    }
}

fn date_of(text: Option<&str>) -> Option<CalendarDate> {
    text.and_then(|t| t.parse::<Date>().ok())
        .map(validate::to_calendar_date)
}

/// Loads one investigation by id or, when `id` is empty, by a case linked to it.
pub(crate) async fn load(
    conn: &mut AnyConnection,
    id: &str,
    case: &str,
) -> ServiceResult<Option<Row>> {
    let (query, value) = if id.is_empty() {
        (
            format!(
                "SELECT {COLUMNS} FROM investigations i JOIN investigation_cases c \
                 ON c.investigation_id = i.investigation_id WHERE c.case_reference = $1"
            ),
            case,
        )
    } else {
        (
            format!("SELECT {COLUMNS} FROM investigations i WHERE i.investigation_id = $1"),
            id,
        )
    };
    sqlx::query(sqlx::AssertSqlSafe(query))
        .bind(value)
        .fetch_optional(&mut *conn)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// A case linked to an investigation.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub case_reference: String,
    pub investigation_id: String,
    pub commission: String,
    pub role: IncidentRole,
    linked_at: i64,
}

const LINK_COLUMNS: &str =
    "case_reference, investigation_id, commission_agency_id, child_role, linked_at";

fn link_of(r: &sqlx::any::AnyRow) -> ServiceResult<Link> {
    Ok(Link {
        case_reference: r.try_get(0)?,
        investigation_id: r.try_get(1)?,
        commission: r.try_get(2)?,
        role: IncidentRole::from_str_name(&r.try_get::<String, _>(3)?).unwrap_or_default(),
        linked_at: r.try_get(4)?,
    })
}

/// The link of one case, if the commission has asked the police about it.
pub(crate) async fn link(conn: &mut AnyConnection, case: &str) -> ServiceResult<Option<Link>> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {LINK_COLUMNS} FROM investigation_cases WHERE case_reference = $1"
    )))
    .bind(case)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(link_of)
    .transpose()
}

/// The cases linked to an investigation, in the order they were linked.
async fn links(conn: &mut AnyConnection, id: &str) -> ServiceResult<Vec<Link>> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {LINK_COLUMNS} FROM investigation_cases WHERE investigation_id = $1 \
         ORDER BY linked_at, case_reference"
    )))
    .bind(id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(link_of)
    .collect()
}

/// The columns [`delivery_of`] reads, of `investigation_deliveries d` joined with `sent_messages s`.
const DELIVERY_COLUMNS: &str = "d.change_key, d.case_reference, d.refused, s.message_id";

/// One delivery from a row of [`DELIVERY_COLUMNS`], with the key of its change.
fn delivery_of(r: &sqlx::any::AnyRow) -> ServiceResult<(String, InvestigationDelivery)> {
    let message_id = r.try_get::<Option<String>, _>(3)?.unwrap_or_default();
    let state = if r.try_get::<i64, _>(2)? == 1 {
        CaseDeliveryState::Refused
    } else if message_id.is_empty() {
        CaseDeliveryState::Queued
    } else {
        CaseDeliveryState::Sent
    };
    Ok((
        r.try_get(0)?,
        InvestigationDelivery {
            case_reference: r.try_get(1)?,
            state: state as i32,
            message_id,
        },
    ))
}

/// The deliveries of one change, in the order they were queued.
async fn deliveries(
    conn: &mut AnyConnection,
    change_key: &str,
) -> ServiceResult<Vec<InvestigationDelivery>> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {DELIVERY_COLUMNS} FROM investigation_deliveries d \
         LEFT JOIN sent_messages s ON s.idempotency_key = d.message_key \
         WHERE d.change_key = $1 ORDER BY d.queued_at, d.case_reference"
    )))
    .bind(change_key)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| Ok(delivery_of(r)?.1))
    .collect()
}

/// The investigation as the staff API shows it: its cases (with their registrations) and every
/// change with its deliveries.
pub(crate) async fn view(conn: &mut AnyConnection, row: &Row) -> ServiceResult<Investigation> {
    let changes = sqlx::query(
        "SELECT message_key, update_sent, recorded_at FROM investigation_changes \
         WHERE investigation_id = $1 ORDER BY version",
    )
    .bind(row.id.as_str())
    .fetch_all(&mut *conn)
    .await?;
    // Every change's deliveries in one query, each change's in the order they were queued.
    let mut by_change: HashMap<String, Vec<InvestigationDelivery>> = HashMap::new();
    for r in &sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {DELIVERY_COLUMNS} FROM investigation_deliveries d \
         JOIN investigation_changes c ON c.message_key = d.change_key \
         LEFT JOIN sent_messages s ON s.idempotency_key = d.message_key \
         WHERE c.investigation_id = $1 ORDER BY d.queued_at, d.case_reference"
    )))
    .bind(row.id.as_str())
    .fetch_all(&mut *conn)
    .await?
    {
        let (change, delivery) = delivery_of(r)?;
        by_change.entry(change).or_default().push(delivery);
    }
    let mut history = Vec::with_capacity(changes.len());
    for r in &changes {
        let key: String = r.try_get(0)?;
        let deliveries = by_change.remove(&key).unwrap_or_default();
        history.push(InvestigationChange {
            update: Some(
                InvestigationUpdate::decode(r.try_get::<Vec<u8>, _>(1)?.as_slice())
                    .map_err(ServiceError::internal)?,
            ),
            message_id: deliveries
                .first()
                .map(|d| d.message_id.clone())
                .unwrap_or_default(),
            recorded_at: Some(time::micros_to_proto(r.try_get(2)?)),
            deliveries,
        });
    }
    let mut cases = Vec::new();
    for l in links(conn, &row.id).await? {
        let (registration, registration_message_id) =
            crate::registrations::latest(conn, &l.case_reference).await?;
        cases.push(InvestigationCase {
            case_reference: l.case_reference,
            commission_agency_id: l.commission,
            child_role: l.role as i32,
            linked_at: Some(time::micros_to_proto(l.linked_at)),
            registration,
            registration_message_id,
        });
    }
    Ok(Investigation {
        investigation_id: row.id.clone(),
        case_reference: cases
            .first()
            .map(|c| c.case_reference.clone())
            .unwrap_or_default(),
        commission_agency_id: cases
            .first()
            .map(|c| c.commission_agency_id.clone())
            .unwrap_or_default(),
        status: row.status as i32,
        status_on: date_of(Some(&row.status_on)),
        hearing_on: date_of(row.hearing_on.as_deref()),
        summary: row.summary.clone(),
        version: u64::try_from(row.version).unwrap_or_default(),
        received_at: Some(time::micros_to_proto(row.received_at)),
        received_message_id: row.received_message_id.clone(),
        history,
        cases,
        incident_reference: row.incident_reference.clone().unwrap_or_default(),
        referred_by_agency_id: if row.incident_reference.is_some() {
            row.referred_by.clone()
        } else {
            String::new()
        },
        incident_referral: row.referral.clone(),
    })
}

pub(crate) fn inspector(user: &ActingUser) -> ServiceResult<()> {
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
    // Every linked case receives the summary: it names no child.
    validate::no_identity(&mut v, "summary", &request.summary);
    v.into_result()
}

fn check_link(request: &LinkCaseRequest) -> ServiceResult<IncidentRole> {
    let mut v = FieldViolations::new();
    validate::text(
        &mut v,
        "investigation_id",
        &request.investigation_id,
        Text::required(1, 100),
    );
    validate::text(
        &mut v,
        "case_reference",
        &request.case_reference,
        Text::required(1, 100),
    );
    let role = IncidentRole::try_from(request.child_role).unwrap_or(IncidentRole::Unspecified);
    if role == IncidentRole::Unspecified {
        v.add(
            "child_role",
            "required: victim, perpetrator, both or witness",
        );
    }
    v.into_result()?;
    Ok(role)
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The key of the change made for a request's idempotency key: hashed, so that any key the staff
/// API accepts makes a key the gateway accepts.
fn change_key(idempotency_key: &str) -> String {
    format!(
        "investigation-update:{}",
        sha256_hex(idempotency_key.as_bytes())
    )
}

/// The `sent_messages` key of one case's copy of a change.
fn delivery_key(change_key: &str, case: &str) -> String {
    format!(
        "investigation-update:{}",
        sha256_hex(format!("{change_key}\n{case}").as_bytes())
    )
}

/// Queues one case's copy of a change, once (a second call finds it queued).
async fn queue_delivery(
    host: &AgencyHost,
    conn: &mut AnyConnection,
    change_key: &str,
    template: &InvestigationUpdate,
    link: &Link,
    user: &ActingUser,
    now: Timestamp,
) -> ServiceResult<()> {
    let message_key = delivery_key(change_key, &link.case_reference);
    let inserted = sqlx::query(
        "INSERT INTO investigation_deliveries (message_key, change_key, case_reference, \
         refused, queued_at) VALUES ($1, $2, $3, 0, $4) ON CONFLICT (message_key) DO NOTHING",
    )
    .bind(message_key.as_str())
    .bind(change_key)
    .bind(link.case_reference.as_str())
    .bind(time::to_micros(now))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(());
    }
    let update = InvestigationUpdate {
        case_reference: link.case_reference.clone(),
        child_role: link.role as i32,
        ..template.clone()
    };
    let envelope = Envelope {
        idempotency_key: message_key.clone(),
        sender_agency_id: host.agency_id().to_owned(),
        recipient_agency_id: link.commission.clone(),
        acting_user: Some(user.clone()),
        purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
        case_reference: link.case_reference.clone(),
        form_kind: FormKind::InvestigationUpdate as i32,
        confidentiality: ConfidentialityLabel::Restricted as i32,
        payload: Some(Payload {
            form: Some(Form::InvestigationUpdate(update)),
        }),
        ..Envelope::default()
    };
    host.queue_message(conn, &message_key, &user.user_id, &envelope, now)
        .await?;
    Ok(())
}

/// What handing a change's deliveries to the gateway gave.
struct Pushed {
    sent: usize,
    refused: usize,
    total: usize,
    refusal: Option<GatewayFailure>,
}

/// Hands the queued deliveries of `change_key` (of one case only, when `case` is given) to the
/// gateway; a refused one is marked REFUSED.
async fn push_deliveries(
    host: &AgencyHost,
    change_key: &str,
    case: Option<&str>,
) -> ServiceResult<Pushed> {
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT message_key FROM investigation_deliveries \
         WHERE change_key = $1 AND ($2 = '' OR case_reference = $2) AND refused = 0 \
         ORDER BY queued_at, case_reference",
    )
    .bind(change_key)
    .bind(case.unwrap_or_default())
    .fetch_all(host.pool())
    .await?;
    let mut pushed = Pushed {
        sent: 0,
        refused: 0,
        total: keys.len(),
        refusal: None,
    };
    for key in keys {
        match host.push_message(&key).await.map_err(ServiceError::from)? {
            PushOutcome::Sent(_) => pushed.sent += 1,
            PushOutcome::NotNow(failure) => {
                tracing::warn!(?failure, "an investigation update waits for the gateway");
            }
            PushOutcome::Refused(failure) => {
                tracing::error!(?failure, "the gateway refused an investigation update");
                mark_refused(host, &key).await?;
                pushed.refused += 1;
                pushed.refusal = Some(failure);
            }
            PushOutcome::Unknown => {}
        }
    }
    Ok(pushed)
}

async fn mark_refused(host: &AgencyHost, message_key: &str) -> ServiceResult<()> {
    sqlx::query("UPDATE investigation_deliveries SET refused = 1 WHERE message_key = $1")
        .bind(message_key)
        .execute(host.pool())
        .await?;
    Ok(())
}

/// The `Investigations` staff service.
#[derive(Debug, Clone)]
pub struct InvestigationsApi {
    pub(crate) host: AgencyHost,
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
        let key = change_key(&request.idempotency_key);
        let sha = sha256_hex(&request.encode_to_vec());
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
            return self.push_and_answer(&row.id, &key, false).await;
        }
        let to = InvestigationStatus::try_from(request.status).unwrap_or_default();
        if !may_move(row.status, to) {
            return Err(ServiceError::FailedPrecondition(format!(
                "an investigation cannot move from {} to {}",
                row.status.as_str_name(),
                to.as_str_name()
            )));
        }
        if row.names_a_child(&request.summary) {
            return Err(ServiceError::invalid_field(
                "summary",
                "must not name a child of the incident: every linked case receives it",
            ));
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
        // The change without a case: each delivery adds its case and its child's role.
        let template = InvestigationUpdate {
            case_reference: String::new(),
            investigation_reference: row.id.clone(),
            status: to as i32,
            status_on: Some(validate::to_calendar_date(status_on)),
            // The hearing's day goes with HEARING_SCHEDULED only (the gateway refuses it with
            // any other status); the investigation keeps it until the decision.
            hearing_on: hearing_on
                .filter(|_| to == InvestigationStatus::HearingScheduled)
                .map(validate::to_calendar_date),
            summary: request.summary.clone(),
            reported_by: user.display_name.clone(),
            child_role: IncidentRole::Unspecified as i32,
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
        .bind(template.encode_to_vec())
        .bind(row.status.as_str_name())
        .bind(row.status_on.as_str())
        .bind(row.hearing_on.as_deref())
        .bind(row.summary.as_str())
        .bind(user.user_id.as_str())
        .bind(time::to_micros(now))
        .execute(&mut *tx)
        .await?;
        for link in links(&mut tx, &row.id).await? {
            queue_delivery(&self.host, &mut tx, &key, &template, &link, &user, now).await?;
        }
        tx.commit().await?;
        self.push_and_answer(&row.id, &key, true).await
    }

    /// Hands the deliveries of the change `key` to the gateway and answers with the
    /// investigation. A new change (`undo_if_refused`) that the gateway refused for every case
    /// is undone, and the refusal passed on.
    async fn push_and_answer(
        &self,
        id: &str,
        key: &str,
        undo_if_refused: bool,
    ) -> ServiceResult<UpdateInvestigationResponse> {
        let pushed = push_deliveries(&self.host, key, None).await?;
        if undo_if_refused && pushed.total > 0 && pushed.refused == pushed.total {
            undo(&self.host, key).await?;
            if let Some(failure) = pushed.refusal {
                return Err(failure.into_service_error());
            }
        }
        tracing::info!(
            investigation = %id,
            sent = pushed.sent,
            refused = pushed.refused,
            cases = pushed.total,
            "investigation change pushed"
        );
        let mut conn = self.host.pool().acquire().await?;
        let row = load(&mut conn, id, "")
            .await?
            .ok_or_else(|| ServiceError::NotFound("no such investigation".into()))?;
        let deliveries = deliveries(&mut conn, key).await?;
        Ok(UpdateInvestigationResponse {
            investigation: Some(view(&mut conn, &row).await?),
            message_id: deliveries
                .first()
                .map(|d| d.message_id.clone())
                .unwrap_or_default(),
            deliveries,
        })
    }

    async fn link_case(
        &self,
        user: ActingUser,
        request: LinkCaseRequest,
    ) -> ServiceResult<LinkCaseResponse> {
        inspector(&user)?;
        let role = check_link(&request)?;
        let now = self.host.clock().now();
        let mut tx = self.host.begin().await?;
        let target = load(&mut tx, &request.investigation_id, "")
            .await?
            .ok_or_else(|| ServiceError::NotFound("no such investigation".into()))?;
        let Some(current) = link(&mut tx, &request.case_reference).await? else {
            return Err(ServiceError::FailedPrecondition(
                "the commission has not asked the police about this case: a case is linked once \
                 its request or assignment has arrived"
                    .into(),
            ));
        };
        if !offender(role)
            && crate::registrations::current(&mut tx, &current.case_reference).await?
        {
            return Err(ServiceError::FailedPrecondition(
                "the child is registered for prevention as an offender: end the registration \
                 before changing the role"
                    .into(),
            ));
        }
        let mut catch_up = Vec::new();
        if current.investigation_id == target.id {
            sqlx::query(
                "UPDATE investigation_cases SET child_role = $1, linked_by = $2 \
                 WHERE case_reference = $3",
            )
            .bind(role.as_str_name())
            .bind(user.user_id.as_str())
            .bind(current.case_reference.as_str())
            .execute(&mut *tx)
            .await?;
        } else {
            if target.status == InvestigationStatus::Closed {
                return Err(ServiceError::FailedPrecondition(
                    "a closed investigation takes no new case".into(),
                ));
            }
            let own = load(&mut tx, &current.investigation_id, "")
                .await?
                .ok_or_else(|| {
                    ServiceError::internal(anyhow::anyhow!("a link without its investigation"))
                })?;
            let others: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM investigation_cases WHERE investigation_id = $1",
            )
            .bind(own.id.as_str())
            .fetch_one(&mut *tx)
            .await?;
            let changes: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM investigation_changes WHERE investigation_id = $1",
            )
            .bind(own.id.as_str())
            .fetch_one(&mut *tx)
            .await?;
            if others > 1 || changes > 0 || own.incident_reference.is_some() {
                return Err(ServiceError::FailedPrecondition(
                    "the case is linked to an investigation with its own history: it cannot be \
                     moved"
                        .into(),
                ));
            }
            sqlx::query(
                "UPDATE investigation_cases SET investigation_id = $1, child_role = $2, \
                 linked_at = $3, linked_by = $4 WHERE case_reference = $5",
            )
            .bind(target.id.as_str())
            .bind(role.as_str_name())
            .bind(time::to_micros(now))
            .bind(user.user_id.as_str())
            .bind(current.case_reference.as_str())
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE preventive_registrations SET investigation_id = $1 \
                 WHERE case_reference = $2",
            )
            .bind(target.id.as_str())
            .bind(current.case_reference.as_str())
            .execute(&mut *tx)
            .await?;
            // The case's own investigation, opened on its request, is absorbed.
            sqlx::query("DELETE FROM investigations WHERE investigation_id = $1")
                .bind(own.id.as_str())
                .execute(&mut *tx)
                .await?;
            // Every earlier change of the investigation reaches the newly linked case.
            let linked = Link {
                investigation_id: target.id.clone(),
                role,
                ..current.clone()
            };
            let changes = sqlx::query(
                "SELECT message_key, update_sent FROM investigation_changes \
                 WHERE investigation_id = $1 ORDER BY version",
            )
            .bind(target.id.as_str())
            .fetch_all(&mut *tx)
            .await?;
            for change in &changes {
                let key: String = change.try_get(0)?;
                let template =
                    InvestigationUpdate::decode(change.try_get::<Vec<u8>, _>(1)?.as_slice())
                        .map_err(ServiceError::internal)?;
                queue_delivery(&self.host, &mut tx, &key, &template, &linked, &user, now).await?;
                catch_up.push(key);
            }
        }
        tx.commit().await?;
        tracing::info!(
            investigation = %target.id,
            earlier_changes = catch_up.len(),
            "case linked"
        );
        for key in &catch_up {
            push_deliveries(&self.host, key, Some(&request.case_reference)).await?;
        }
        let mut conn = self.host.pool().acquire().await?;
        let row = load(&mut conn, &target.id, "")
            .await?
            .ok_or_else(|| ServiceError::NotFound("no such investigation".into()))?;
        Ok(LinkCaseResponse {
            investigation: Some(view(&mut conn, &row).await?),
        })
    }
}

/// Undoes a new change the gateway refused for every linked case: the investigation gets back
/// what the change replaced, and the change and its deliveries go. A change followed by another
/// stays (its deliveries REFUSED).
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
    let restored = sqlx::query(
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
    .await?
    .rows_affected();
    if restored != 1 {
        tx.rollback().await?;
        return Ok(());
    }
    sqlx::query("DELETE FROM investigation_deliveries WHERE change_key = $1")
        .bind(key)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM investigation_changes WHERE message_key = $1")
        .bind(key)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Pushes the deliveries the gateway could not take when they were queued; one refused for good
/// is marked REFUSED.
pub(crate) async fn push_pending(host: &AgencyHost) {
    host.push_pending(
        "SELECT d.message_key FROM investigation_deliveries d \
         JOIN sent_messages s ON s.idempotency_key = d.message_key \
         WHERE s.message_id IS NULL AND d.refused = 0 ORDER BY d.queued_at LIMIT 100",
        "investigation update",
        |key| async move { mark_refused(host, &key).await },
    )
    .await;
}

#[tonic::async_trait]
impl referral_proto::v1::investigations_server::Investigations for InvestigationsApi {
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
            "SELECT {COLUMNS} FROM investigations i WHERE ($1 = 1 OR i.status <> $2) \
             ORDER BY i.received_at DESC, i.investigation_id DESC"
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

    async fn link_case(
        &self,
        request: Request<LinkCaseRequest>,
    ) -> Result<Response<LinkCaseResponse>, Status> {
        let user = acting_user(&request)?;
        Ok(Response::new(
            self.link_case(user, request.into_inner()).await?,
        ))
    }

    async fn register_preventive(
        &self,
        request: Request<referral_proto::v1::RegisterPreventiveRequest>,
    ) -> Result<Response<referral_proto::v1::PreventiveRegistrationResponse>, Status> {
        let user = acting_user(&request)?;
        Ok(Response::new(
            crate::registrations::register(&self.host, user, request.into_inner()).await?,
        ))
    }

    async fn end_preventive_registration(
        &self,
        request: Request<referral_proto::v1::EndPreventiveRegistrationRequest>,
    ) -> Result<Response<referral_proto::v1::PreventiveRegistrationResponse>, Status> {
        let user = acting_user(&request)?;
        Ok(Response::new(
            crate::registrations::end(&self.host, user, request.into_inner()).await?,
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

    #[test]
    fn each_case_gets_its_own_key_for_a_change() {
        let change = change_key("inspector-key-1");
        let victim = delivery_key(&change, "C-1");
        let offender = delivery_key(&change, "C-2");
        assert_ne!(victim, offender);
        assert_eq!(victim, delivery_key(&change, "C-1"));
        let mut v = FieldViolations::new();
        validate::idempotency_key(&victim, "key", &mut v);
        assert!(v.into_result().is_ok(), "the gateway accepts the key");
    }

    #[test]
    fn a_summary_naming_a_child_of_the_referral_is_caught() {
        let row = Row {
            id: "INV-1".into(),
            referred_by: "residential-1".into(),
            received_message_id: "m".into(),
            incident_reference: Some("D-1".into()),
            referral: Some(IncidentReferral {
                children: vec![referral_proto::v1::IncidentChild {
                    full_name: "Серік Әлиев".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: S::Received,
            status_on: "2026-01-01".into(),
            hearing_on: None,
            summary: String::new(),
            version: 1,
            received_at: 0,
        };
        assert!(row.names_a_child("Іс қозғалды: СЕРІК ӘЛИЕВ"));
        assert!(!row.names_a_child("Іс қозғалды"));
    }
}
