//! The stored shape of a deadline: states and kinds as stored, the row, its protobuf form, and
//! the two writes every rule is built from (create by key, end by key or by query).

use jiff::{Timestamp, civil::Date};
use referral_core::{directory::role_name, time};
use referral_deadlines::Schedule;
use referral_proto::v1::{Deadline, DeadlineKind, DeadlineState, Role};
use sqlx::{Any, Row as _, Transaction, any::AnyRow};

/// The states a deadline can still leave (or, for escalated, that still take a meeting event).
pub(crate) const OPEN_STATES: [DeadlineState; 5] = [
    DeadlineState::Pending,
    DeadlineState::Warned,
    DeadlineState::Due,
    DeadlineState::Overdue,
    DeadlineState::Escalated,
];

/// The SQL list of the open states, for `state IN (…)` (constants, never input).
pub(crate) const OPEN_STATES_SQL: &str = "('DEADLINE_STATE_PENDING', 'DEADLINE_STATE_WARNED', \
    'DEADLINE_STATE_DUE', 'DEADLINE_STATE_OVERDUE', 'DEADLINE_STATE_ESCALATED')";

/// A state as stored: its protobuf name (`DEADLINE_STATE_WARNED`), as form kinds are stored.
pub(crate) fn state_name(state: DeadlineState) -> &'static str {
    state.as_str_name()
}

pub(crate) fn parse_state(name: &str) -> DeadlineState {
    DeadlineState::from_str_name(name).unwrap_or(DeadlineState::Unspecified)
}

/// A kind as stored: its protobuf name (`DEADLINE_KIND_ACTION`).
pub(crate) fn kind_name(kind: DeadlineKind) -> &'static str {
    kind.as_str_name()
}

pub(crate) fn parse_kind(name: &str) -> DeadlineKind {
    DeadlineKind::from_str_name(name).unwrap_or(DeadlineKind::Unspecified)
}

/// Every column of `deadlines`, in the order [`DeadlineRow::from_row`] reads them.
pub(crate) const COLUMNS: &str = "deadline_id, key, kind, case_reference, cycle, district_id, \
    responsible_agency_id, responsible_user_id, responsible_role, action_number, \
    help_request_message_id, warn_at, due_day_starts_at, due_at, escalate_at, due_on, state, \
    next_transition_at, met_at, created_at, subject_reference, related_agency_id";

/// One stored deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadlineRow {
    pub id: String,
    pub key: String,
    pub kind: DeadlineKind,
    pub case_reference: String,
    pub cycle: i64,
    pub district_id: String,
    pub responsible_agency_id: String,
    pub responsible_user_id: String,
    pub responsible_role: String,
    pub action_number: i64,
    pub help_request_message_id: Option<String>,
    pub schedule: Schedule,
    pub state: DeadlineState,
    pub next_transition_at: Option<i64>,
    pub met_at: Option<i64>,
    pub created_at: i64,
    /// An agency clock's matter (empty for the case clocks).
    pub subject_reference: String,
    /// The agency that referred a service (weekly progress), else empty.
    pub related_agency_id: String,
}

impl DeadlineRow {
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        let due_on: String = r.try_get("due_on")?;
        let due_on: Date = due_on.parse().map_err(|e| sqlx::Error::ColumnDecode {
            index: "due_on".into(),
            source: Box::new(e),
        })?;
        Ok(Self {
            id: r.try_get("deadline_id")?,
            key: r.try_get("key")?,
            kind: parse_kind(&r.try_get::<String, _>("kind")?),
            case_reference: r.try_get("case_reference")?,
            cycle: r.try_get("cycle")?,
            district_id: r.try_get("district_id")?,
            responsible_agency_id: r.try_get("responsible_agency_id")?,
            responsible_user_id: r.try_get("responsible_user_id")?,
            responsible_role: r.try_get("responsible_role")?,
            action_number: r.try_get("action_number")?,
            help_request_message_id: r.try_get("help_request_message_id")?,
            schedule: Schedule {
                warn_at: time::from_micros(r.try_get("warn_at")?),
                due_day_starts_at: time::from_micros(r.try_get("due_day_starts_at")?),
                due_at: time::from_micros(r.try_get("due_at")?),
                escalate_at: time::from_micros(r.try_get("escalate_at")?),
                due_on,
            },
            state: parse_state(&r.try_get::<String, _>("state")?),
            next_transition_at: r.try_get("next_transition_at")?,
            met_at: r.try_get("met_at")?,
            created_at: r.try_get("created_at")?,
            subject_reference: r.try_get("subject_reference")?,
            related_agency_id: r.try_get("related_agency_id")?,
        })
    }

    pub(crate) fn to_proto(&self) -> Deadline {
        Deadline {
            deadline_id: self.id.clone(),
            kind: self.kind as i32,
            case_reference: self.case_reference.clone(),
            district_id: self.district_id.clone(),
            responsible_agency_id: self.responsible_agency_id.clone(),
            responsible_user_id: self.responsible_user_id.clone(),
            action_number: u32::try_from(self.action_number).unwrap_or(0),
            warn_at: Some(time::to_proto(self.schedule.warn_at)),
            due_day_starts_at: Some(time::to_proto(self.schedule.due_day_starts_at)),
            due_at: Some(time::to_proto(self.schedule.due_at)),
            escalate_at: Some(time::to_proto(self.schedule.escalate_at)),
            state: self.state as i32,
            met_at: self.met_at.map(time::micros_to_proto),
            help_request_message_id: self.help_request_message_id.clone().unwrap_or_default(),
            cycle: u32::try_from(self.cycle).unwrap_or(0),
            subject_reference: self.subject_reference.clone(),
        }
    }

    /// The responsible person's role as the protobuf enum.
    pub(crate) fn responsible_role(&self) -> Role {
        referral_core::directory::parse_role(&self.responsible_role).unwrap_or(Role::Unspecified)
    }
}

/// A deadline to create.
#[derive(Debug, Clone)]
pub(crate) struct NewDeadline {
    /// Derived from the ledger entry (and what it names) that creates the deadline, so that
    /// applying the same entry again creates nothing.
    pub key: String,
    pub kind: DeadlineKind,
    pub case_reference: String,
    pub cycle: i64,
    pub district_id: String,
    pub responsible_agency_id: String,
    pub responsible_user_id: String,
    pub responsible_role: Role,
    pub action_number: i64,
    pub help_request_message_id: Option<String>,
    pub schedule: Schedule,
    /// An agency clock's matter (empty for the case clocks).
    pub subject_reference: String,
    /// The agency that referred a service (weekly progress), else empty.
    pub related_agency_id: String,
}

/// Creates a deadline in `state` (pending, or met for one whose meeting event came first)
/// unless its key exists: a key, once used, is never used again, so a met or cancelled
/// deadline is never created anew. Returns whether a row was created.
pub(crate) async fn create(
    tx: &mut Transaction<'static, Any>,
    d: &NewDeadline,
    state: DeadlineState,
    now: Timestamp,
) -> Result<bool, sqlx::Error> {
    let next_transition_at = match state {
        DeadlineState::Pending => Some(time::to_micros(d.schedule.warn_at)),
        _ => None,
    };
    let met_at = (state == DeadlineState::Met).then(|| time::to_micros(now));
    let role = match d.responsible_role {
        Role::Unspecified => String::new(),
        role => role_name(role),
    };
    let created = sqlx::query(
        "INSERT INTO deadlines (deadline_id, key, kind, case_reference, cycle, district_id, \
         responsible_agency_id, responsible_user_id, responsible_role, action_number, \
         help_request_message_id, warn_at, due_day_starts_at, due_at, escalate_at, due_on, state, \
         next_transition_at, met_at, created_at, subject_reference, related_agency_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
         $19, $20, $21, $22) ON CONFLICT (key) DO NOTHING",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(&d.key)
    .bind(kind_name(d.kind))
    .bind(&d.case_reference)
    .bind(d.cycle)
    .bind(&d.district_id)
    .bind(&d.responsible_agency_id)
    .bind(&d.responsible_user_id)
    .bind(role)
    .bind(d.action_number)
    .bind(d.help_request_message_id.clone())
    .bind(time::to_micros(d.schedule.warn_at))
    .bind(time::to_micros(d.schedule.due_day_starts_at))
    .bind(time::to_micros(d.schedule.due_at))
    .bind(time::to_micros(d.schedule.escalate_at))
    .bind(d.schedule.due_on.to_string())
    .bind(state_name(state))
    .bind(next_transition_at)
    .bind(met_at)
    .bind(time::to_micros(now))
    .bind(&d.subject_reference)
    .bind(&d.related_agency_id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(created == 1)
}

/// Ends one open deadline (met or cancelled) by id. Returns whether it was still open.
pub(crate) async fn end(
    tx: &mut Transaction<'static, Any>,
    id: &str,
    to: DeadlineState,
    at: Timestamp,
) -> Result<bool, sqlx::Error> {
    let met_at = (to == DeadlineState::Met).then(|| time::to_micros(at));
    let ended = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE deadlines SET state = $1, next_transition_at = NULL, met_at = $2 \
         WHERE deadline_id = $3 AND state IN {OPEN_STATES_SQL}"
    )))
    .bind(state_name(to))
    .bind(met_at)
    .bind(id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(ended == 1)
}

/// The deadline with this key, if any.
pub(crate) async fn by_key(
    tx: &mut Transaction<'static, Any>,
    key: &str,
) -> Result<Option<DeadlineRow>, sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM deadlines WHERE key = $1"
    )))
    .bind(key)
    .fetch_optional(&mut **tx)
    .await?
    .as_ref()
    .map(DeadlineRow::from_row)
    .transpose()
}

/// Every deadline of one case and kind (any cycle, any state), oldest first.
pub(crate) async fn of_case(
    tx: &mut Transaction<'static, Any>,
    district_id: &str,
    case_reference: &str,
    kind: Option<DeadlineKind>,
) -> Result<Vec<DeadlineRow>, sqlx::Error> {
    let rows = match kind {
        Some(kind) => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM deadlines \
                 WHERE district_id = $1 AND case_reference = $2 AND kind = $3 \
                 ORDER BY created_at, deadline_id"
            )))
            .bind(district_id)
            .bind(case_reference)
            .bind(kind_name(kind))
            .fetch_all(&mut **tx)
            .await?
        }
        None => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM deadlines \
                 WHERE district_id = $1 AND case_reference = $2 \
                 ORDER BY created_at, deadline_id"
            )))
            .bind(district_id)
            .bind(case_reference)
            .fetch_all(&mut **tx)
            .await?
        }
    };
    rows.iter().map(DeadlineRow::from_row).collect()
}

/// Every deadline of one agency's subject and kind (any state), oldest first.
pub(crate) async fn of_subject(
    tx: &mut Transaction<'static, Any>,
    agency_id: &str,
    subject_reference: &str,
    kind: DeadlineKind,
) -> Result<Vec<DeadlineRow>, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM deadlines \
         WHERE responsible_agency_id = $1 AND subject_reference = $2 AND kind = $3 \
         ORDER BY created_at, deadline_id"
    )))
    .bind(agency_id)
    .bind(subject_reference)
    .bind(kind_name(kind))
    .fetch_all(&mut **tx)
    .await?;
    rows.iter().map(DeadlineRow::from_row).collect()
}

/// The deadlines that name help request `k` (its decision, and the child-protection service's
/// answer to a written report that is this K).
pub(crate) async fn naming_help_request(
    tx: &mut Transaction<'static, Any>,
    k: &str,
) -> Result<Vec<DeadlineRow>, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM deadlines WHERE help_request_message_id = $1 \
         ORDER BY created_at, deadline_id"
    )))
    .bind(k)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter().map(DeadlineRow::from_row).collect()
}

/// Whether a kind is an agency clock (fed by agency clock events, not by case events).
pub(crate) fn is_agency_clock(kind: DeadlineKind) -> bool {
    matches!(
        kind,
        DeadlineKind::InvestigationStart
            | DeadlineKind::InvestigationFinish
            | DeadlineKind::WrittenConfirmation
            | DeadlineKind::ProtectionServiceAnswer
            | DeadlineKind::AllegationToDirector
            | DeadlineKind::WeeklyProgress
    )
}

/// Whether a state can still change.
pub(crate) fn is_open(state: DeadlineState) -> bool {
    OPEN_STATES.contains(&state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_kinds_round_trip_through_their_stored_names() {
        for state in OPEN_STATES
            .into_iter()
            .chain([DeadlineState::Met, DeadlineState::Cancelled])
        {
            assert_eq!(parse_state(state_name(state)), state);
            assert!(OPEN_STATES_SQL.contains(state_name(state)) == is_open(state));
        }
        for kind in [
            DeadlineKind::HelpRequestDecision,
            DeadlineKind::Assessment,
            DeadlineKind::SupportPlan,
            DeadlineKind::PlanReview,
            DeadlineKind::Action,
            DeadlineKind::InvestigationStart,
            DeadlineKind::WeeklyProgress,
        ] {
            assert_eq!(parse_kind(kind_name(kind)), kind);
        }
    }
}
