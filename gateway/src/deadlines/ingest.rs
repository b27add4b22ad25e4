//! Ingestion: the ledger is the engine's feed. Each entry after the cursor is applied once, in
//! ledger order, in a transaction that also advances the cursor; the cursor row is locked first,
//! so two replicas (or a replica and a test's `settle`) never apply the same entry.
//!
//! What each entry does:
//! - `message.delivered` of a HELP_REQUEST: the commission's decision is due (secretary),
//!   counted in working days from the delivery instant (the receipt);
//! - `message.accepted` of a HELP_REQUEST_DECISION: that request's decision deadline is met;
//! - `message.accepted` of an ACTION_ASSIGNMENT: the case's cycle is noted for the assignment;
//! - `message.accepted` of an ACTION_PROGRESS reporting completion: the open action deadline
//!   with that row number, in the assignment's cycle, is met;
//! - `case.case_opened` / `case.case_reopened` (a new cycle): the assessment is due (curator);
//! - `case.assessment_filed`: assessment met, support plan due; the cycle's risk is kept;
//! - `case.support_plan_filed`: plan met, first review due (the fixed date, or the default
//!   period for the risk), one action deadline per row;
//! - `case.review_held`: the open review met, the next one due; open action deadlines whose
//!   row is gone or has another date cancelled, the rows' deadlines created;
//! - `case.case_closed`: every open deadline of the case cancelled.
//!
//! A case deadline is identified by (district, case, cycle, kind, row number, due date) and its
//! key says so: it is created with `INSERT … ON CONFLICT (key) DO NOTHING` and ended only from
//! an open state, so met and cancelled are final, a row re-listed with the same date keeps its
//! deadline, and a replay creates nothing twice. Entries for a cycle the case has left, or for a
//! closed case, change nothing. Only ids reach the logs.

use std::collections::BTreeSet;

use jiff::{Timestamp, civil::Date};
use prost::Message as _;
use referral_core::{directory::AgencyEntry, time, validate};
use referral_deadlines::{
    DistrictCalendar, add_months, assessment_due, help_request_decision_due, lead_for, review_due,
    schedule, support_plan_due,
};
use referral_proto::v1::{
    ActionProgressState, AgencyKind, CaseEvent, CaseEventKind, DeadlineKind, DeadlineState,
    Envelope, FormKind, RiskLevel, Role, payload,
};
use sqlx::{Any, Row as _, Transaction};

use super::{
    EngineError, agency_clocks,
    events::kind_from_ledger_event,
    model::{self, DeadlineRow, NewDeadline},
};
use crate::{Shared, ledger::LedgerEvent, store};

/// How many ledger entries one transaction applies.
const BATCH: i64 = 256;

/// What applying entries changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Applied {
    pub entries: u64,
    pub created: u64,
    pub met: u64,
    pub cancelled: u64,
}

/// One ledger entry, as much of it as the rules read.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    seq: i64,
    recorded_at: Timestamp,
    event: String,
    pub(super) message_id: String,
    sender_agency_id: String,
    recipient_agency_id: String,
    form_kind: String,
}

/// Applies the next batch of entries after the cursor, in one transaction with the cursor's
/// advance. Returns what changed (`entries == 0`: the engine has caught up with the ledger).
pub(crate) async fn ingest_batch(shared: &Shared) -> Result<Applied, EngineError> {
    let mut tx = shared.db.begin().await?;
    // Lock the cursor first (a row lock on PostgreSQL, the write lock on SQLite): whoever holds
    // it is the only one applying entries until it commits.
    let last: i64 = sqlx::query_scalar(
        "UPDATE deadline_cursor SET last_seq = last_seq WHERE id = 1 RETURNING last_seq",
    )
    .fetch_one(&mut *tx)
    .await?;
    let entries = sqlx::query(
        "SELECT seq, recorded_at, event, message_id, sender_agency_id, recipient_agency_id, \
         form_kind FROM ledger WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(last)
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|r| {
        Ok(Entry {
            seq: r.try_get("seq")?,
            recorded_at: time::from_micros(r.try_get("recorded_at")?),
            event: r.try_get("event")?,
            message_id: r.try_get("message_id")?,
            sender_agency_id: r.try_get("sender_agency_id")?,
            recipient_agency_id: r.try_get("recipient_agency_id")?,
            form_kind: r.try_get("form_kind")?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let Some(newest) = entries.last().map(|e| e.seq) else {
        tx.rollback().await?;
        return Ok(Applied::default());
    };
    let mut applied = Applied::default();
    for entry in &entries {
        let mut apply = Apply {
            shared,
            tx: &mut tx,
            entry,
            applied: &mut applied,
        };
        match apply.entry().await {
            Ok(()) => {}
            // A stored row that does not decode cannot become decodable by retrying: the entry
            // is skipped (and said so), so that one bad row does not stop every clock.
            Err(EngineError::Corrupt(what)) => tracing::error!(
                seq = entry.seq,
                message_id = %entry.message_id,
                what,
                "deadline engine skips a ledger entry it cannot read"
            ),
            Err(e) => return Err(e),
        }
        applied.entries += 1;
    }
    sqlx::query("UPDATE deadline_cursor SET last_seq = $1 WHERE id = 1")
        .bind(newest)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(applied)
}

/// What the clocks of one case remember between events.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CaseClock {
    cycle: i64,
    closed: bool,
    curator_user_id: String,
    risk: RiskLevel,
}

/// Applying one entry inside the batch's transaction (the agency clocks' rules are in
/// `agency_clocks`).
pub(super) struct Apply<'a> {
    pub(super) shared: &'a Shared,
    pub(super) tx: &'a mut Transaction<'static, Any>,
    pub(super) entry: &'a Entry,
    applied: &'a mut Applied,
}

/// One case event, with where and when it applies.
struct CaseCtx<'c> {
    district: String,
    commission: String,
    case_reference: String,
    cycle: i64,
    calendar: &'c DistrictCalendar,
}

impl Apply<'_> {
    async fn entry(&mut self) -> Result<(), EngineError> {
        let e = self.entry;
        let form = FormKind::from_str_name(&e.form_kind).unwrap_or(FormKind::Unspecified);
        if e.event == LedgerEvent::Delivered.as_str() && form == FormKind::HelpRequest {
            return self.help_request_received().await;
        }
        if e.event == LedgerEvent::Accepted.as_str() {
            return match form {
                FormKind::HelpRequestDecision => self.help_request_decided().await,
                FormKind::ActionAssignment => self.action_assigned().await,
                FormKind::ActionProgress => self.action_progress().await,
                _ => Ok(()),
            };
        }
        if let Some(kind) = kind_from_ledger_event(&e.event) {
            return self.case_event(kind).await;
        }
        if let Some(kind) = agency_clocks::kind_from_ledger_event(&e.event) {
            return self.agency_clock_event(kind).await;
        }
        Ok(())
    }

    fn agency(&self, id: &str) -> Option<AgencyEntry> {
        self.shared.directory().agency(id).cloned()
    }

    pub(super) async fn create(
        &mut self,
        d: NewDeadline,
        state: DeadlineState,
    ) -> Result<(), EngineError> {
        if model::create(self.tx, &d, state, self.entry.recorded_at).await? {
            self.applied.created += 1;
            if state == DeadlineState::Met {
                self.applied.met += 1;
            }
        }
        Ok(())
    }

    pub(super) async fn end(
        &mut self,
        d: &DeadlineRow,
        to: DeadlineState,
    ) -> Result<(), EngineError> {
        if model::end(self.tx, &d.id, to, self.entry.recorded_at).await? {
            match to {
                DeadlineState::Met => self.applied.met += 1,
                _ => self.applied.cancelled += 1,
            }
        }
        Ok(())
    }

    // ---- help requests ------------------------------------------------------------------

    fn help_request_deadline(
        &self,
        message_id: &str,
        commission: &AgencyEntry,
        received_at: Timestamp,
    ) -> Option<NewDeadline> {
        let calendar = self.shared.calendar(&commission.district)?;
        let s = &self.shared.deadlines;
        let due_on = help_request_decision_due(received_at, s, calendar);
        Some(NewDeadline {
            key: format!("help_request_decision:{message_id}"),
            kind: DeadlineKind::HelpRequestDecision,
            case_reference: String::new(),
            cycle: 0,
            district_id: commission.district.clone(),
            responsible_agency_id: commission.id.clone(),
            responsible_user_id: String::new(),
            responsible_role: Role::CommissionSecretary,
            action_number: 0,
            help_request_message_id: Some(message_id.to_owned()),
            subject_reference: String::new(),
            related_agency_id: String::new(),
            schedule: schedule(
                due_on,
                lead_for(DeadlineKind::HelpRequestDecision, s),
                s,
                calendar,
            ),
        })
    }

    /// A K reached its commission: the decision is due.
    async fn help_request_received(&mut self) -> Result<(), EngineError> {
        let e = self.entry;
        let Some(commission) = self
            .agency(&e.recipient_agency_id)
            .filter(|a| a.kind() == AgencyKind::Commission)
        else {
            return Ok(());
        };
        if let Some(d) = self.help_request_deadline(&e.message_id, &commission, e.recorded_at) {
            self.create(d, DeadlineState::Pending).await?;
        }
        Ok(())
    }

    /// The decision on a K was sent: its deadline is met, and so is the child-protection
    /// service's answer to the written report that is this K (an agency clock of the K's sender).
    async fn help_request_decided(&mut self) -> Result<(), EngineError> {
        let Some(decision) = store::message_by_id(&mut **self.tx, &self.entry.message_id).await?
        else {
            return Err(EngineError::Corrupt(
                "the decision's message row is missing",
            ));
        };
        let Some(k) = decision.in_reply_to else {
            return Ok(());
        };
        for d in model::naming_help_request(self.tx, &k).await? {
            if d.kind == DeadlineKind::ProtectionServiceAnswer
                && d.responsible_agency_id == decision.recipient_agency_id
                && model::is_open(d.state)
            {
                self.end(&d, DeadlineState::Met).await?;
            }
        }
        self.meet_help_request(&k, &decision.sender_agency_id).await
    }

    /// Meets the decision deadline of help request `k`, when `commission` received it. When the
    /// decision (or the case opened on it) is applied before the K's delivery, the deadline is
    /// created met, from the K's acceptance, so that the delivery creates nothing later.
    async fn meet_help_request(&mut self, k: &str, commission: &str) -> Result<(), EngineError> {
        let key = format!("help_request_decision:{k}");
        if let Some(d) = model::by_key(self.tx, &key).await? {
            if d.responsible_agency_id == commission {
                self.end(&d, DeadlineState::Met).await?;
            }
            return Ok(());
        }
        let Some(request) = store::message_by_id(&mut **self.tx, k).await? else {
            return Ok(());
        };
        let Some(commission) = self.agency(&request.recipient_agency_id).filter(|a| {
            a.id == commission && request.form_kind == FormKind::HelpRequest.as_str_name()
        }) else {
            return Ok(());
        };
        if let Some(d) =
            self.help_request_deadline(k, &commission, time::from_micros(request.created_at))
        {
            self.create(d, DeadlineState::Met).await?;
        }
        Ok(())
    }

    // ---- action rows ----------------------------------------------------------------------

    /// The envelope of this entry's message, its payload opened (payloads are removed only
    /// after the engine has applied the message's `message.accepted` entry). A key missing from
    /// the keyring stops the engine until it is added back (skipping would lose deadlines); a
    /// payload that does not open or decode is skipped like any unreadable row.
    async fn envelope(&mut self) -> Result<(Envelope, store::MessageRow), EngineError> {
        let Some(message) = store::message_by_id(&mut **self.tx, &self.entry.message_id).await?
        else {
            return Err(EngineError::Corrupt("an accepted message's row is missing"));
        };
        let envelope = match store::open_envelope(&self.shared.sealer, &message) {
            Ok(envelope) => envelope,
            Err(e) if e.is_missing_key() => return Err(EngineError::PayloadKey(e)),
            Err(_) => {
                return Err(EngineError::Corrupt(
                    "a stored envelope or payload cannot be read",
                ));
            }
        };
        Ok((envelope, message))
    }

    /// An action row was assigned: note the case's cycle, which its completion will meet.
    async fn action_assigned(&mut self) -> Result<(), EngineError> {
        let (envelope, message) = self.envelope().await?;
        let Some(payload::Form::ActionAssignment(assignment)) =
            envelope.payload.and_then(|p| p.form)
        else {
            return Err(EngineError::Corrupt(
                "an ACTION_ASSIGNMENT carries another form",
            ));
        };
        let Some(commission) = self.agency(&message.sender_agency_id) else {
            return Ok(());
        };
        let Some(clock) =
            load_clock(self.tx, &commission.district, &assignment.case_reference).await?
        else {
            return Ok(());
        };
        let number = assignment.action.map(|a| a.number).unwrap_or(0);
        sqlx::query(
            "INSERT INTO action_assignments (message_id, district_id, case_reference, cycle, \
             action_number) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(&message.message_id)
        .bind(&commission.district)
        .bind(&assignment.case_reference)
        .bind(clock.cycle)
        .bind(i64::from(number))
        .execute(&mut **self.tx)
        .await?;
        Ok(())
    }

    /// An agency reported an action row completed: the open deadline of that row, in the cycle
    /// the assignment was sent in, is met.
    async fn action_progress(&mut self) -> Result<(), EngineError> {
        let (envelope, message) = self.envelope().await?;
        let Some(payload::Form::ActionProgress(progress)) = envelope.payload.and_then(|p| p.form)
        else {
            return Err(EngineError::Corrupt(
                "an ACTION_PROGRESS carries another form",
            ));
        };
        if progress.state != ActionProgressState::Completed as i32 {
            return Ok(());
        }
        let Some(commission) = self.agency(&message.recipient_agency_id) else {
            return Ok(());
        };
        let district = commission.district.clone();
        let assigned_in: Option<i64> =
            sqlx::query_scalar("SELECT cycle FROM action_assignments WHERE message_id = $1")
                .bind(message.in_reply_to.unwrap_or_default())
                .fetch_optional(&mut **self.tx)
                .await?;
        let cycle = match assigned_in {
            Some(cycle) => cycle,
            None => match load_clock(self.tx, &district, &progress.case_reference).await? {
                Some(clock) => clock.cycle,
                None => return Ok(()),
            },
        };
        let rows = model::of_case(
            self.tx,
            &district,
            &progress.case_reference,
            Some(DeadlineKind::Action),
        )
        .await?;
        // Only the agency that holds the row can meet it.
        for d in rows.iter().filter(|d| {
            d.cycle == cycle
                && d.action_number == i64::from(progress.action_number)
                && d.responsible_agency_id == message.sender_agency_id
                && model::is_open(d.state)
        }) {
            self.end(d, DeadlineState::Met).await?;
        }
        Ok(())
    }

    // ---- case events --------------------------------------------------------------------

    async fn case_event(&mut self, kind: CaseEventKind) -> Result<(), EngineError> {
        let row = sqlx::query("SELECT district_id, event FROM case_events WHERE event_id = $1")
            .bind(&self.entry.message_id)
            .fetch_optional(&mut **self.tx)
            .await?
            .ok_or(EngineError::Corrupt("the case event's row is missing"))?;
        let district: String = row.try_get("district_id")?;
        let bytes: Vec<u8> = row.try_get("event")?;
        let event = CaseEvent::decode(bytes.as_slice())
            .map_err(|_| EngineError::Corrupt("a stored case event does not decode"))?;
        let Some(calendar) = self.shared.calendar(&district) else {
            tracing::warn!(event_id = %self.entry.message_id, district = %district, "case event of a district the directory no longer lists");
            return Ok(());
        };
        let Some(occurred_at) = event.occurred_at.as_ref().and_then(time::from_proto) else {
            return Err(EngineError::Corrupt("a stored case event has no instant"));
        };
        let ctx = CaseCtx {
            district,
            commission: self.entry.sender_agency_id.clone(),
            case_reference: event.case_reference.clone(),
            cycle: i64::from(event.cycle),
            calendar,
        };
        let clock = load_clock(self.tx, &ctx.district, &ctx.case_reference).await?;
        if clock.as_ref().is_some_and(|c| ctx.cycle < c.cycle) {
            // An event of a cycle the case has left.
            return Ok(());
        }
        if matches!(
            kind,
            CaseEventKind::CaseOpened | CaseEventKind::CaseReopened
        ) {
            return self
                .start_cycle(&ctx, kind, &event, occurred_at, clock)
                .await;
        }
        // Every other event belongs to the open cycle in force.
        let Some(mut clock) = clock.filter(|c| c.cycle == ctx.cycle && !c.closed) else {
            return Ok(());
        };
        match kind {
            CaseEventKind::AssessmentFiled => {
                clock.risk =
                    RiskLevel::try_from(event.risk_level).unwrap_or(RiskLevel::Unspecified);
                save_clock(self.tx, &ctx, &clock).await?;
                self.end_kind(&ctx, DeadlineKind::Assessment, DeadlineState::Met)
                    .await?;
                let due_on = support_plan_due(occurred_at, &self.shared.deadlines, ctx.calendar);
                self.create_case_deadline(&ctx, &clock, DeadlineKind::SupportPlan, 0, due_on, None)
                    .await
            }
            CaseEventKind::SupportPlanFiled => {
                self.end_kind(&ctx, DeadlineKind::SupportPlan, DeadlineState::Met)
                    .await?;
                let from = ctx.calendar.local_date(occurred_at);
                let s = &self.shared.deadlines;
                let fixed = event
                    .next_review_on
                    .as_ref()
                    .and_then(validate::calendar_date);
                let due_on = review_due(from, fixed, clock.risk == RiskLevel::High, s)
                    .unwrap_or_else(|_| add_months(from, s.review_max_months));
                self.create_case_deadline(&ctx, &clock, DeadlineKind::PlanReview, 0, due_on, None)
                    .await?;
                self.create_actions(&ctx, &clock, &event).await
            }
            CaseEventKind::ReviewHeld => {
                self.end_kind(&ctx, DeadlineKind::PlanReview, DeadlineState::Met)
                    .await?;
                // Each review fixes a new review, even on a date an earlier one had: the
                // review's sequence in the cycle (0 for the plan's) is part of its identity.
                let sequence = model::of_case(
                    self.tx,
                    &ctx.district,
                    &ctx.case_reference,
                    Some(DeadlineKind::PlanReview),
                )
                .await?
                .iter()
                .filter(|d| d.cycle == ctx.cycle)
                .count() as i64;
                if let Some(due_on) = event
                    .next_review_on
                    .as_ref()
                    .and_then(validate::calendar_date)
                {
                    self.create_case_deadline(
                        &ctx,
                        &clock,
                        DeadlineKind::PlanReview,
                        sequence,
                        due_on,
                        None,
                    )
                    .await?;
                }
                // The rows in force are the review's: a row gone, or with another date, no
                // longer applies, and neither does a row moved to another agency.
                let commission = ctx.commission.clone();
                let in_force: BTreeSet<(i64, Date, String)> = event
                    .actions
                    .iter()
                    .filter_map(|r| {
                        let due_on = r.due_on.as_ref().and_then(validate::calendar_date)?;
                        let agency = if r.responsible_agency_id.is_empty() {
                            commission.clone()
                        } else {
                            r.responsible_agency_id.clone()
                        };
                        Some((i64::from(r.number), due_on, agency))
                    })
                    .collect();
                let cycle = ctx.cycle;
                self.cancel_open(&ctx, |d| {
                    d.kind == DeadlineKind::Action
                        && d.cycle == cycle
                        && !in_force.contains(&(
                            d.action_number,
                            d.schedule.due_on,
                            d.responsible_agency_id.clone(),
                        ))
                })
                .await?;
                self.create_actions(&ctx, &clock, &event).await
            }
            CaseEventKind::CaseClosed => {
                clock.closed = true;
                save_clock(self.tx, &ctx, &clock).await?;
                self.cancel_open(&ctx, |_| true).await
            }
            _ => Ok(()),
        }
    }

    /// Opening (cycle 1) or reopening (a later cycle): every stage again, so the assessment's
    /// clock starts from the event's instant. Deadlines a previous cycle left open are cancelled.
    async fn start_cycle(
        &mut self,
        ctx: &CaseCtx<'_>,
        kind: CaseEventKind,
        event: &CaseEvent,
        occurred_at: Timestamp,
        clock: Option<CaseClock>,
    ) -> Result<(), EngineError> {
        let new_cycle = clock.as_ref().is_none_or(|c| ctx.cycle > c.cycle);
        if !new_cycle
            && (kind == CaseEventKind::CaseReopened || clock.as_ref().is_some_and(|c| c.closed))
        {
            return Ok(());
        }
        let previous = clock.unwrap_or(CaseClock {
            cycle: 0,
            closed: false,
            curator_user_id: String::new(),
            risk: RiskLevel::Unspecified,
        });
        let clock = CaseClock {
            cycle: ctx.cycle,
            closed: false,
            curator_user_id: if event.curator_user_id.is_empty() {
                previous.curator_user_id.clone()
            } else {
                event.curator_user_id.clone()
            },
            risk: if new_cycle {
                RiskLevel::Unspecified
            } else {
                previous.risk
            },
        };
        if new_cycle && previous.cycle > 0 {
            let cycle = ctx.cycle;
            self.cancel_open(ctx, |d| d.cycle < cycle).await?;
        }
        save_clock(self.tx, ctx, &clock).await?;
        if !event.help_request_message_id.is_empty() {
            self.meet_help_request(&event.help_request_message_id, &ctx.commission)
                .await?;
        }
        let due_on = assessment_due(occurred_at, &self.shared.deadlines, ctx.calendar);
        self.create_case_deadline(ctx, &clock, DeadlineKind::Assessment, 0, due_on, None)
            .await
    }

    /// Creates a case deadline, identified by (district, case, cycle, kind, row number, due
    /// date). `responsible` is the agency of an action row carried out by another agency; the
    /// commission's curator is responsible otherwise.
    async fn create_case_deadline(
        &mut self,
        ctx: &CaseCtx<'_>,
        clock: &CaseClock,
        kind: DeadlineKind,
        number: i64,
        due_on: Date,
        responsible: Option<&str>,
    ) -> Result<(), EngineError> {
        let (agency, user, role) = match responsible {
            Some(agency) if agency != ctx.commission => {
                let kind = self
                    .agency(agency)
                    .map(|a| a.kind())
                    .unwrap_or(AgencyKind::Unspecified);
                (agency.to_owned(), String::new(), partner_role(kind))
            }
            _ => (
                ctx.commission.clone(),
                clock.curator_user_id.clone(),
                Role::CommissionCurator,
            ),
        };
        let s = &self.shared.deadlines;
        // What the deadline is, including who must meet it: a row moved to another agency is
        // another obligation, with its own clock and alerts.
        let d = NewDeadline {
            key: format!(
                "{}:{}:{}:{}:{number}:{due_on}:{agency}",
                model::kind_name(kind),
                ctx.district,
                ctx.case_reference,
                ctx.cycle
            ),
            kind,
            case_reference: ctx.case_reference.clone(),
            cycle: ctx.cycle,
            district_id: ctx.district.clone(),
            responsible_agency_id: agency,
            responsible_user_id: user,
            responsible_role: role,
            action_number: number,
            help_request_message_id: None,
            subject_reference: String::new(),
            related_agency_id: String::new(),
            schedule: schedule(due_on, lead_for(kind, s), s, ctx.calendar),
        };
        self.create(d, DeadlineState::Pending).await
    }

    /// One action deadline per row of a plan or review (a row whose deadline exists keeps it).
    async fn create_actions(
        &mut self,
        ctx: &CaseCtx<'_>,
        clock: &CaseClock,
        event: &CaseEvent,
    ) -> Result<(), EngineError> {
        for row in &event.actions {
            let Some(due_on) = row.due_on.as_ref().and_then(validate::calendar_date) else {
                continue;
            };
            let responsible = (!row.responsible_agency_id.is_empty())
                .then_some(row.responsible_agency_id.as_str());
            self.create_case_deadline(
                ctx,
                clock,
                DeadlineKind::Action,
                i64::from(row.number),
                due_on,
                responsible,
            )
            .await?;
        }
        Ok(())
    }

    /// Ends every open deadline of `kind` in the event's cycle.
    async fn end_kind(
        &mut self,
        ctx: &CaseCtx<'_>,
        kind: DeadlineKind,
        to: DeadlineState,
    ) -> Result<(), EngineError> {
        let rows = model::of_case(self.tx, &ctx.district, &ctx.case_reference, Some(kind)).await?;
        for d in rows
            .iter()
            .filter(|d| d.cycle == ctx.cycle && model::is_open(d.state))
        {
            self.end(d, to).await?;
        }
        Ok(())
    }

    /// Cancels the case's open deadlines that `which` selects.
    async fn cancel_open(
        &mut self,
        ctx: &CaseCtx<'_>,
        which: impl Fn(&DeadlineRow) -> bool,
    ) -> Result<(), EngineError> {
        let rows = model::of_case(self.tx, &ctx.district, &ctx.case_reference, None).await?;
        for d in rows.iter().filter(|d| model::is_open(d.state) && which(d)) {
            self.end(d, DeadlineState::Cancelled).await?;
        }
        Ok(())
    }
}

/// Whom an agency's action-row alerts (and a referring agency's late-report alerts) are
/// addressed to.
pub(super) fn partner_role(kind: AgencyKind) -> Role {
    match kind {
        AgencyKind::School => Role::SafeguardingLead,
        AgencyKind::Residential => Role::InstitutionDirector,
        AgencyKind::Police => Role::PoliceJuvenileInspector,
        AgencyKind::Health => Role::HealthWorker,
        AgencyKind::Ngo => Role::NgoCaseManager,
        AgencyKind::Commission => Role::CommissionCurator,
        AgencyKind::Unspecified => Role::Unspecified,
    }
}

async fn load_clock(
    tx: &mut Transaction<'static, Any>,
    district: &str,
    case_reference: &str,
) -> Result<Option<CaseClock>, sqlx::Error> {
    sqlx::query(
        "SELECT cycle, closed, curator_user_id, risk_level FROM case_clocks \
         WHERE district_id = $1 AND case_reference = $2",
    )
    .bind(district)
    .bind(case_reference)
    .fetch_optional(&mut **tx)
    .await?
    .map(|r| {
        Ok(CaseClock {
            cycle: r.try_get("cycle")?,
            closed: r.try_get::<i64, _>("closed")? != 0,
            curator_user_id: r.try_get("curator_user_id")?,
            risk: RiskLevel::from_str_name(&r.try_get::<String, _>("risk_level")?)
                .unwrap_or(RiskLevel::Unspecified),
        })
    })
    .transpose()
}

async fn save_clock(
    tx: &mut Transaction<'static, Any>,
    ctx: &CaseCtx<'_>,
    clock: &CaseClock,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO case_clocks (district_id, case_reference, cycle, closed, curator_user_id, \
         risk_level) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (district_id, case_reference) DO UPDATE SET cycle = excluded.cycle, \
         closed = excluded.closed, curator_user_id = excluded.curator_user_id, \
         risk_level = excluded.risk_level",
    )
    .bind(&ctx.district)
    .bind(&ctx.case_reference)
    .bind(clock.cycle)
    .bind(i64::from(clock.closed))
    .bind(&clock.curator_user_id)
    .bind(clock.risk.as_str_name())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
