//! The sweep: moves open deadlines through the states whose instants have come, and raises one
//! alert per deadline and state entered.
//!
//! It reads only the deadlines whose `next_transition_at` has come (an index range, earliest
//! first, in batches), so its cost follows the number of deadlines changing state, not the
//! number stored. Each deadline is advanced in its own transaction: an optimistic
//! `UPDATE … WHERE id = $ AND state = $old` (states only move forward, so a replica that lost
//! the race changes nothing), then for each state entered one `deadline_alerts` row
//! (`UNIQUE (deadline_id, state)`) and its DEADLINE_ALERT messages, stored with outbox row and
//! ledger entry exactly as a sent form is. After the commit the alerts go to `WatchDeadlines`.

use jiff::Timestamp;
use referral_core::{
    directory::{AgencyEntry, Directory},
    time,
};
use referral_deadlines::next_transition;
use referral_proto::v1::{
    ActingUser, AgencyKind, ConfidentialityLabel, DeadlineAlert, DeadlineKind, DeadlineState,
    Envelope, FormKind, Payload, PurposeOfUse, Role, payload,
};

use super::{
    EngineError,
    agency_clocks::head_role,
    ingest::partner_role,
    model::{self, DeadlineRow},
};
use crate::{Shared, ledger, store};

/// How many due deadlines one query reads.
const BATCH: i64 = 128;

/// The sender of every alert: the gateway's deadline engine.
pub(crate) const ENGINE_SENDER: &str = "gateway";
/// The acting user the ledger names for alerts.
pub(crate) const ENGINE_USER: &str = "deadline-engine";

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Swept {
    /// Deadlines moved to a later state.
    pub deadlines: u64,
    /// States entered (one alert each).
    pub alerts: u64,
    /// Alert messages queued for delivery.
    pub messages: u64,
}

/// Advances every deadline whose next transition is at or before `now`.
pub(crate) async fn sweep(shared: &Shared, now: Timestamp) -> Result<Swept, EngineError> {
    let now_us = time::to_micros(now);
    let mut swept = Swept::default();
    loop {
        let due = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM deadlines WHERE next_transition_at <= $1 \
             ORDER BY next_transition_at LIMIT $2",
            model::COLUMNS
        )))
        .bind(now_us)
        .bind(BATCH)
        .fetch_all(shared.db.pool())
        .await?
        .iter()
        .map(DeadlineRow::from_row)
        .collect::<Result<Vec<_>, _>>()?;
        let full = i64::try_from(due.len()).unwrap_or(i64::MAX) >= BATCH;
        let mut progressed = false;
        for d in due {
            let (moved, alerts, messages) = advance(shared, &d, now).await?;
            progressed |= moved;
            swept.deadlines += u64::from(moved);
            swept.alerts += alerts;
            swept.messages += messages;
        }
        // A full batch may leave more behind; a batch in which nothing moved (every row taken
        // by another replica) is read again only if it was full, and then holds new rows.
        if !full || !progressed {
            break;
        }
    }
    if swept.messages > 0 {
        shared.ledger_appended();
    }
    Ok(swept)
}

/// Moves one deadline through every state whose instant has come, in one transaction.
/// Returns whether it moved, how many alerts and how many messages it raised.
async fn advance(
    shared: &Shared,
    d: &DeadlineRow,
    now: Timestamp,
) -> Result<(bool, u64, u64), EngineError> {
    let mut state = d.state;
    let mut entered = Vec::new();
    let mut next = None;
    while let Some((to, at)) = next_transition(&d.schedule, state) {
        if at > now {
            next = Some(at);
            break;
        }
        state = to;
        entered.push(to);
    }
    let next_us = next.map(time::to_micros);
    let mut tx = shared.db.begin().await?;
    // Optimistic: only from the state read. Whoever moved it first raised its alerts.
    let updated = sqlx::query(
        "UPDATE deadlines SET state = $1, next_transition_at = $2 WHERE deadline_id = $3 \
         AND state = $4",
    )
    .bind(model::state_name(state))
    .bind(next_us)
    .bind(&d.id)
    .bind(model::state_name(d.state))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        tx.rollback().await?;
        return Ok((false, 0, 0));
    }
    let now_us = time::to_micros(now);
    let directory = shared.directory();
    let mut raised = Vec::new();
    let mut messages = 0;
    let mut current = d.clone();
    // The ledger's lock, taken at the first alert message (where its first append took it).
    let mut head: Option<ledger::LockedHead> = None;
    for to in entered {
        current.state = to;
        let alert_id = uuid::Uuid::now_v7().to_string();
        let inserted = sqlx::query(
            "INSERT INTO deadline_alerts (alert_id, deadline_id, state, raised_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (deadline_id, state) DO NOTHING",
        )
        .bind(&alert_id)
        .bind(&d.id)
        .bind(model::state_name(to))
        .bind(now_us)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            continue;
        }
        let recipients = addressees(&directory, &current, to);
        let mut first = None;
        for (n, (agency, role, user)) in recipients.into_iter().enumerate() {
            let alert = DeadlineAlert {
                deadline: Some(current.to_proto()),
                state: to as i32,
                raised_at: Some(time::to_proto(now)),
                addressed_to_role: role as i32,
                addressed_to_user_id: user,
                alert_id: alert_id.clone(),
            };
            if directory.agency(&agency).is_none() {
                tracing::warn!(deadline_id = %d.id, agency = %agency, "alert for an agency the directory no longer lists");
            } else {
                let env = alert_envelope(&alert_id, n, &agency, &current, alert.clone(), now);
                let hash = ledger::payload_sha256(&prost::Message::encode_to_vec(
                    env.payload.as_ref().unwrap_or(&Payload::default()),
                ));
                let head = match &mut head {
                    Some(head) => head,
                    None => head.insert(ledger::lock_head(&mut tx).await?),
                };
                store::enqueue_message(&mut tx, head, &shared.sealer, &env, &hash, now_us).await?;
                messages += 1;
            }
            first.get_or_insert(alert);
        }
        if let Some(alert) = first {
            raised.push(alert);
        }
    }
    // Noted before the commit, so that this replica's alert feed, which can see the alert only
    // after it, never relays what is broadcast below.
    for alert in &raised {
        shared.local_alerts.note(&alert.alert_id);
    }
    if let Some(head) = head {
        head.store(&mut tx).await?;
    }
    tx.commit().await?;
    for alert in &raised {
        tracing::info!(
            deadline_id = %d.id,
            alert_id = %alert.alert_id,
            state = model::state_name(DeadlineState::try_from(alert.state).unwrap_or_default()),
            "deadline alert raised"
        );
        shared.gateway_metrics.alert_raised(
            d.kind,
            DeadlineState::try_from(alert.state).unwrap_or_default(),
        );
        let _ = shared.alerts.send(alert.clone());
    }
    Ok((true, u64::try_from(raised.len()).unwrap_or(0), messages))
}

/// Who is told that `d` (an agency clock or a case clock) entered `state`, in order: (agency,
/// role, user). The first is the addressee of the alert `WatchDeadlines` streams.
pub(crate) fn addressees(
    directory: &Directory,
    d: &DeadlineRow,
    state: DeadlineState,
) -> Vec<(String, Role, String)> {
    if model::is_agency_clock(d.kind) {
        let kind_of = |id: &str| directory.agency(id).map(|a| a.kind());
        agency_clock_recipients(
            d,
            state,
            kind_of(&d.responsible_agency_id),
            kind_of(&d.related_agency_id),
        )
    } else {
        let commission = directory
            .agencies
            .iter()
            .find(|a| a.district == d.district_id && a.kind() == AgencyKind::Commission);
        recipients(d, state, commission)
    }
}

/// Who is told that `d` entered `state`: (agency, role, user). Warned and due go to the
/// responsible agency (its responsible person); overdue to it and to the district's commission
/// secretary; escalated to the commission chair. The same addressee is never told twice.
fn recipients(
    d: &DeadlineRow,
    state: DeadlineState,
    commission: Option<&AgencyEntry>,
) -> Vec<(String, Role, String)> {
    let responsible = (
        d.responsible_agency_id.clone(),
        d.responsible_role(),
        d.responsible_user_id.clone(),
    );
    let commission_role = |role| commission.map(|c| (c.id.clone(), role, String::new()));
    let mut to: Vec<(String, Role, String)> = match state {
        DeadlineState::Warned | DeadlineState::Due => vec![responsible],
        DeadlineState::Overdue => std::iter::once(responsible)
            .chain(commission_role(Role::CommissionSecretary))
            .collect(),
        DeadlineState::Escalated => commission_role(Role::CommissionChair).into_iter().collect(),
        _ => Vec::new(),
    };
    let mut seen = std::collections::BTreeSet::new();
    to.retain(|(agency, role, user)| seen.insert((agency.clone(), *role as i32, user.clone())));
    to
}

/// Who is told that an agency clock `d` entered `state`: its own business, never the
/// commission's. Warned and due go to the responsible agency (its person and role); overdue to it
/// and to the agency's head (a school's director, an institution's director); escalated to the
/// head (to the responsible agency again when the kind of agency has no head). A late weekly
/// progress report is told, overdue and escalated, to the agency that referred the service too.
///
/// An allegation against a member of staff (ALLEGATION_TO_DIRECTOR) is never told to the head:
/// the head may be the accused (the allegation then goes to the safeguarding lead, P:160-178).
/// Every state of it, escalated included, goes to the responsible person alone.
fn agency_clock_recipients(
    d: &DeadlineRow,
    state: DeadlineState,
    responsible_kind: Option<AgencyKind>,
    related_kind: Option<AgencyKind>,
) -> Vec<(String, Role, String)> {
    let responsible = (
        d.responsible_agency_id.clone(),
        d.responsible_role(),
        d.responsible_user_id.clone(),
    );
    let head = responsible_kind
        .and_then(head_role)
        .filter(|_| d.kind != DeadlineKind::AllegationToDirector)
        .map(|role| (d.responsible_agency_id.clone(), role, String::new()));
    let referrer = related_kind
        .filter(|_| d.kind == DeadlineKind::WeeklyProgress && !d.related_agency_id.is_empty())
        .map(|kind| {
            (
                d.related_agency_id.clone(),
                partner_role(kind),
                String::new(),
            )
        });
    let mut to: Vec<(String, Role, String)> = match state {
        DeadlineState::Warned | DeadlineState::Due => vec![responsible],
        DeadlineState::Overdue => std::iter::once(responsible)
            .chain(head)
            .chain(referrer)
            .collect(),
        DeadlineState::Escalated => std::iter::once(head.unwrap_or(responsible))
            .chain(referrer)
            .collect(),
        _ => Vec::new(),
    };
    let mut seen = std::collections::BTreeSet::new();
    to.retain(|(agency, role, user)| seen.insert((agency.clone(), *role as i32, user.clone())));
    to
}

/// A DEADLINE_ALERT message from the engine to `recipient`.
fn alert_envelope(
    alert_id: &str,
    n: usize,
    recipient: &str,
    d: &DeadlineRow,
    alert: DeadlineAlert,
    now: Timestamp,
) -> Envelope {
    Envelope {
        message_id: uuid::Uuid::now_v7().to_string(),
        idempotency_key: format!("deadline-alert:{alert_id}:{n}"),
        sender_agency_id: ENGINE_SENDER.to_owned(),
        recipient_agency_id: recipient.to_owned(),
        acting_user: Some(ActingUser {
            user_id: ENGINE_USER.to_owned(),
            agency_id: ENGINE_SENDER.to_owned(),
            role: Role::Unspecified as i32,
            display_name: "Deadline engine".to_owned(),
        }),
        purpose_of_use: PurposeOfUse::CareManagement as i32,
        case_reference: d.case_reference.clone(),
        form_kind: FormKind::DeadlineAlert as i32,
        confidentiality: ConfidentialityLabel::Normal as i32,
        created_at: Some(time::to_proto(now)),
        in_reply_to: String::new(),
        payload: Some(Payload {
            form: Some(payload::Form::DeadlineAlert(alert)),
        }),
        linked_referrals: Vec::new(),
        view_sections: Vec::new(),
    }
}

/// The earliest instant at which some deadline changes state.
pub(crate) async fn next_transition_at(shared: &Shared) -> Result<Option<Timestamp>, EngineError> {
    let next: Option<i64> = sqlx::query_scalar("SELECT MIN(next_transition_at) FROM deadlines")
        .fetch_one(shared.db.pool())
        .await?;
    Ok(next.map(time::from_micros))
}

#[cfg(test)]
mod tests {
    use jiff::civil::date;
    use referral_deadlines::Schedule;
    use referral_proto::v1::DeadlineKind;

    use super::*;

    fn row(agency: &str, role: &str, user: &str) -> DeadlineRow {
        let t: Timestamp = "2026-03-01T00:00:00Z".parse().unwrap();
        DeadlineRow {
            id: "d".into(),
            key: "k".into(),
            kind: DeadlineKind::Assessment,
            case_reference: "KZ-1".into(),
            cycle: 1,
            district_id: "demo".into(),
            responsible_agency_id: agency.into(),
            responsible_user_id: user.into(),
            responsible_role: role.into(),
            action_number: 0,
            help_request_message_id: None,
            schedule: Schedule {
                warn_at: t,
                due_day_starts_at: t,
                due_at: t,
                escalate_at: t,
                due_on: date(2026, 3, 1),
            },
            state: DeadlineState::Pending,
            next_transition_at: None,
            met_at: None,
            created_at: 0,
            subject_reference: String::new(),
            related_agency_id: String::new(),
        }
    }

    fn commission() -> AgencyEntry {
        AgencyEntry {
            id: "commission".into(),
            kind: "commission".into(),
            district: "demo".into(),
            name_kk: String::new(),
            name_ru: String::new(),
            endpoint: "https://127.0.0.1:1".into(),
        }
    }

    #[test]
    fn overdue_tells_the_responsible_agency_and_the_secretary_escalated_the_chair() {
        let c = commission();
        let ngo = row("ngo-1", "ngo_case_manager", "");
        assert_eq!(
            recipients(&ngo, DeadlineState::Warned, Some(&c)),
            [("ngo-1".into(), Role::NgoCaseManager, String::new())]
        );
        assert_eq!(
            recipients(&ngo, DeadlineState::Overdue, Some(&c)),
            [
                ("ngo-1".into(), Role::NgoCaseManager, String::new()),
                (
                    "commission".into(),
                    Role::CommissionSecretary,
                    String::new()
                )
            ]
        );
        assert_eq!(
            recipients(&ngo, DeadlineState::Escalated, Some(&c)),
            [("commission".into(), Role::CommissionChair, String::new())]
        );
        // The secretary's own deadline: told once.
        let k = row("commission", "commission_secretary", "");
        assert_eq!(recipients(&k, DeadlineState::Overdue, Some(&c)).len(), 1);
        // The curator's: the curator and the secretary.
        let l = row("commission", "commission_curator", "curator-1");
        assert_eq!(recipients(&l, DeadlineState::Overdue, Some(&c)).len(), 2);
    }

    #[test]
    fn agency_clocks_tell_the_agency_and_its_head_never_the_commission() {
        let mut start = row("school-1", "safety_team_member", "");
        start.kind = DeadlineKind::InvestigationStart;
        let school = Some(AgencyKind::School);
        assert_eq!(
            agency_clock_recipients(&start, DeadlineState::Due, school, None),
            [("school-1".into(), Role::SafetyTeamMember, String::new())]
        );
        assert_eq!(
            agency_clock_recipients(&start, DeadlineState::Overdue, school, None),
            [
                ("school-1".into(), Role::SafetyTeamMember, String::new()),
                ("school-1".into(), Role::SchoolDirector, String::new()),
            ]
        );
        assert_eq!(
            agency_clock_recipients(&start, DeadlineState::Escalated, school, None),
            [("school-1".into(), Role::SchoolDirector, String::new())]
        );
        // The director's own clock: told once.
        let mut allegation = row("school-1", "school_director", "");
        allegation.kind = DeadlineKind::AllegationToDirector;
        assert_eq!(
            agency_clock_recipients(&allegation, DeadlineState::Overdue, school, None).len(),
            1
        );
        // An allegation is never told to the head, who may be the accused: against the
        // director it is the lead's, and every state, escalated too, goes to the lead alone.
        let mut against_director = row("school-1", "safeguarding_lead", "safeguarding-lead");
        against_director.kind = DeadlineKind::AllegationToDirector;
        let lead = (
            "school-1".to_owned(),
            Role::SafeguardingLead,
            "safeguarding-lead".to_owned(),
        );
        for state in [
            DeadlineState::Warned,
            DeadlineState::Due,
            DeadlineState::Overdue,
            DeadlineState::Escalated,
        ] {
            assert_eq!(
                agency_clock_recipients(&against_director, state, school, None),
                std::slice::from_ref(&lead),
                "{state:?}"
            );
            let residential = Some(AgencyKind::Residential);
            let mut institution = against_director.clone();
            institution.responsible_role = "institution_staff".into();
            assert!(
                agency_clock_recipients(&institution, state, residential, None)
                    .iter()
                    .all(|(_, role, _)| *role != Role::InstitutionDirector),
                "{state:?}"
            );
        }
        // The director's own (an ordinary allegation): the director, escalated too.
        assert_eq!(
            agency_clock_recipients(&allegation, DeadlineState::Escalated, school, None),
            [("school-1".into(), Role::SchoolDirector, String::new())]
        );
        // An NGO has no head; a late report is told to the school that referred the service.
        let mut weekly = row("ngo-1", "ngo_case_manager", "case-manager");
        weekly.kind = DeadlineKind::WeeklyProgress;
        weekly.related_agency_id = "school-1".into();
        let ngo = Some(AgencyKind::Ngo);
        assert_eq!(
            agency_clock_recipients(&weekly, DeadlineState::Warned, ngo, school),
            [("ngo-1".into(), Role::NgoCaseManager, "case-manager".into())]
        );
        assert_eq!(
            agency_clock_recipients(&weekly, DeadlineState::Overdue, ngo, school),
            [
                ("ngo-1".into(), Role::NgoCaseManager, "case-manager".into()),
                ("school-1".into(), Role::SafeguardingLead, String::new()),
            ]
        );
        assert_eq!(
            agency_clock_recipients(&weekly, DeadlineState::Escalated, ngo, school),
            [
                ("ngo-1".into(), Role::NgoCaseManager, "case-manager".into()),
                ("school-1".into(), Role::SafeguardingLead, String::new()),
            ]
        );
    }
}
