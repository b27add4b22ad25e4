//! Agency clocks: the deadlines a school, residential institution or NGO keeps for its own
//! matters (an incident's investigation, a safeguarding concern, an allegation against a staff
//! member, a service it delivers), kept by the engine beside the case clocks.
//!
//! `RecordAgencyClockEvent` ([`Shared::record_agency_clock_event`]) checks an event, stores it
//! in `agency_clock_events` and appends its ledger entry (`clock.<kind>`, e.g.
//! `clock.investigation_started`) in one transaction, idempotent by (agency, key). The engine then
//! applies the entry from the ledger ([`Apply::agency_clock_event`]), like every other entry:
//!
//! | event                          | creates                                   | meets / cancels                |
//! |--------------------------------|-------------------------------------------|--------------------------------|
//! | INCIDENT_RECORDED              | INVESTIGATION_START (report's day if urgent, else 2 working days) | |
//! | INVESTIGATION_STARTED          | INVESTIGATION_FINISH (2 working days)     | INVESTIGATION_START met        |
//! | INVESTIGATION_FINISHED         |                                           | INVESTIGATION_FINISH met       |
//! | CONCERN_PHONED                 | WRITTEN_CONFIRMATION (24 hours, an instant) |                              |
//! | CONCERN_REPORTED_IN_WRITING    | PROTECTION_SERVICE_ANSWER (3 working days) | WRITTEN_CONFIRMATION met      |
//! | PROTECTION_SERVICE_ANSWERED    |                                           | PROTECTION_SERVICE_ANSWER met  |
//! | ALLEGATION_RECORDED            | ALLEGATION_TO_DIRECTOR (1 working day)    |                                |
//! | ALLEGATION_RECEIVED_BY_DIRECTOR|                                           | ALLEGATION_TO_DIRECTOR met     |
//! | SERVICE_STARTED                | WEEKLY_PROGRESS no. 1 (7 days)            |                                |
//! | SERVICE_PROGRESS_REPORTED      | WEEKLY_PROGRESS no. n+1 (7 days on)       | open WEEKLY_PROGRESS met       |
//! | SERVICE_ENDED                  |                                           | open WEEKLY_PROGRESS cancelled |
//!
//! The commission's decision on the K that a written report names also meets its
//! PROTECTION_SERVICE_ANSWER (see `help_request_decided` in `ingest`); a written report applied
//! after the decision's `message.accepted` entry, in the ledger's order, creates it met.
//!
//! A deadline's key is `agency_clock:{agency}:{subject}:{kind}:{n}` (n: the report's number for
//! WEEKLY_PROGRESS, 0 otherwise), created with `INSERT … ON CONFLICT (key) DO NOTHING` and ended
//! only from an open state: met and cancelled are final and a replay creates nothing. A deadline
//! whose meeting (or cancelling) event of the same subject was applied before the event that
//! creates it is created met (cancelled), so events of one subject taken in any order end the
//! same. The responsible agency is the caller; person and role come from the event (by default
//! the role that acts on the kind). Dates come from `referral-deadlines`, in the district's zone.

use jiff::Timestamp;
use prost::Message as _;
use referral_core::{
    FieldViolations, ServiceError, ServiceResult,
    directory::{AgencyEntry, role_fits_kind, role_name},
    time, validate,
};
use referral_deadlines::{
    Schedule, agency_schedule, allegation_to_director_due, investigation_finish_due,
    investigation_start_due, lead_for, protection_service_answer_due, weekly_progress_due,
    written_confirmation_schedule,
};
use referral_proto::v1::{
    AgencyClockEvent, AgencyClockEventKind, AgencyKind, DeadlineKind, DeadlineState, FormKind,
    RecordAgencyClockEventRequest, RecordAgencyClockEventResponse, Role,
};
use sqlx::Row as _;

use super::{
    EngineError,
    events::GATEWAY_RECIPIENT,
    ingest::Apply,
    model::{self, NewDeadline},
};
use crate::{
    Shared,
    ledger::{self, EntryFields, LedgerEvent},
    store,
};

/// The longest subject reference.
pub(crate) const SUBJECT_REFERENCE_MAX: usize = 128;
/// How far ahead of the gateway's clock an event's instant may be (clocks drift).
const FUTURE_SKEW: jiff::SignedDuration = jiff::SignedDuration::from_mins(5);

/// The ledger's event name of a clock event: `clock.` and the kind in lower snake case
/// (`clock.investigation_started`).
pub(crate) fn ledger_event_name(kind: AgencyClockEventKind) -> String {
    format!(
        "clock.{}",
        kind.as_str_name()
            .trim_start_matches("AGENCY_CLOCK_EVENT_KIND_")
            .to_ascii_lowercase()
    )
}

/// The clock event kind a ledger event name stands for.
pub(crate) fn kind_from_ledger_event(event: &str) -> Option<AgencyClockEventKind> {
    let kind = event.strip_prefix("clock.")?;
    AgencyClockEventKind::from_str_name(&format!(
        "AGENCY_CLOCK_EVENT_KIND_{}",
        kind.to_ascii_uppercase()
    ))
    .filter(|k| *k != AgencyClockEventKind::Unspecified)
}

/// Which agency kinds may record an event kind: incidents, concerns and allegations are a
/// school's or residential institution's; services an NGO's.
fn may_record(agency: AgencyKind, kind: AgencyClockEventKind) -> bool {
    use AgencyClockEventKind as E;
    match kind {
        E::IncidentRecorded
        | E::InvestigationStarted
        | E::InvestigationFinished
        | E::ConcernPhoned
        | E::ConcernReportedInWriting
        | E::ProtectionServiceAnswered
        | E::AllegationRecorded
        | E::AllegationReceivedByDirector => {
            matches!(agency, AgencyKind::School | AgencyKind::Residential)
        }
        E::ServiceStarted | E::ServiceProgressReported | E::ServiceEnded => {
            agency == AgencyKind::Ngo
        }
        E::Unspecified => false,
    }
}

/// What `related_message_id` must be for an event kind: `Some((form kinds, sent by the caller))`
/// when required, `None` when it is optional (then any message the caller sent or received).
fn related_message_rule(kind: AgencyClockEventKind) -> Option<(&'static [FormKind], bool)> {
    match kind {
        AgencyClockEventKind::ConcernReportedInWriting => Some((&[FormKind::HelpRequest], true)),
        AgencyClockEventKind::ServiceStarted => Some((
            &[FormKind::ServiceReferral, FormKind::ActionAssignment],
            false,
        )),
        _ => None,
    }
}

/// The role that acts on a deadline kind when the event names none.
fn default_role(agency: AgencyKind, kind: DeadlineKind) -> Role {
    match (agency, kind) {
        (AgencyKind::Ngo, _) => Role::NgoCaseManager,
        (AgencyKind::Residential, DeadlineKind::AllegationToDirector) => Role::InstitutionDirector,
        (AgencyKind::Residential, _) => Role::InstitutionStaff,
        (_, DeadlineKind::InvestigationStart | DeadlineKind::InvestigationFinish) => {
            Role::SafetyTeamMember
        }
        (_, DeadlineKind::AllegationToDirector) => Role::SchoolDirector,
        _ => Role::SafeguardingLead,
    }
}

/// Who heads an agency: its overdue and escalated agency clocks are addressed to them too.
pub(crate) fn head_role(kind: AgencyKind) -> Option<Role> {
    match kind {
        AgencyKind::School => Some(Role::SchoolDirector),
        AgencyKind::Residential => Some(Role::InstitutionDirector),
        _ => None,
    }
}

/// Whether a subject reference is acceptable: 1 to 128 printable ASCII characters, no IIN.
fn check_subject_reference(subject: &str, field: &str, v: &mut FieldViolations) {
    if subject.is_empty()
        || subject.len() > SUBJECT_REFERENCE_MAX
        || !subject.bytes().all(|b| b.is_ascii_graphic())
    {
        v.add(
            field,
            "must be 1 to 128 printable ASCII characters (the agency's own reference)",
        );
    } else if validate::holds_iin(subject) {
        v.add(
            field,
            "must not hold an IIN: use the agency's own reference of the matter",
        );
    }
}

impl Shared {
    /// Checks, stores and chains an agency clock event; idempotent by (agency, key).
    pub(crate) async fn record_agency_clock_event(
        &self,
        caller: &AgencyEntry,
        req: RecordAgencyClockEventRequest,
    ) -> ServiceResult<RecordAgencyClockEventResponse> {
        // 1. Who may record what: the acting user is of the calling agency, in one of its roles,
        //    and the kind is the agency kind's.
        let acting = req.acting_user.clone().unwrap_or_default();
        if req.acting_user.is_some() && acting.agency_id != caller.id {
            return Err(ServiceError::PermissionDenied(
                "the calling agency cannot act for a user of another agency".into(),
            ));
        }
        let acting_role = Role::try_from(acting.role).unwrap_or(Role::Unspecified);
        if req.acting_user.is_some() && !role_fits_kind(acting_role, caller.kind()) {
            return Err(ServiceError::PermissionDenied(
                "the acting user's role is not one of the calling agency's".into(),
            ));
        }
        let kind = req
            .event
            .as_ref()
            .and_then(|e| AgencyClockEventKind::try_from(e.kind).ok())
            .unwrap_or(AgencyClockEventKind::Unspecified);
        if kind != AgencyClockEventKind::Unspecified && !may_record(caller.kind(), kind) {
            return Err(ServiceError::PermissionDenied(
                "this kind of agency does not record this kind of clock event".into(),
            ));
        }

        // 2. Every field.
        let now = self.clock.now();
        let mut v = FieldViolations::new();
        validate::idempotency_key(&req.idempotency_key, "idempotency_key", &mut v);
        if req.acting_user.is_none() {
            v.add("acting_user", "required");
        } else if acting.user_id.trim().is_empty() || acting.user_id.chars().count() > 200 {
            v.add("acting_user.user_id", "required, at most 200 characters");
        }
        let Some(event) = req.event.as_ref() else {
            v.add("event", "required");
            return Err(ServiceError::InvalidArgument(v));
        };
        self.check_clock_event(caller, event, kind, now, &mut v);
        v.into_result()?;

        // 3. Store: idempotency, the related message, the event and its ledger entry, together.
        let bytes = event.encode_to_vec();
        let sha = ledger::payload_sha256(&bytes);
        let now_us = time::to_micros(now);
        let mut tx = self.db.begin().await?;
        // The ledger's lock first: concurrent recordings with one key then see each other.
        let mut head = ledger::lock_head(&mut tx).await?;
        // A key stands for the event and who recorded it: the same event under the key from
        // another user, or in another role, is another request (its ledger entry would name
        // someone else).
        if let Some(existing) = sqlx::query(
            "SELECT e.event_id, e.event_sha256, e.acting_user_id, l.acting_role \
             FROM agency_clock_events e JOIN ledger l ON l.seq = e.ledger_seq \
             WHERE e.agency_id = $1 AND e.idempotency_key = $2",
        )
        .bind(&caller.id)
        .bind(&req.idempotency_key)
        .fetch_optional(&mut *tx)
        .await?
        {
            tx.rollback().await?;
            let stored_sha: String = existing.try_get("event_sha256")?;
            let stored_user: String = existing.try_get("acting_user_id")?;
            let stored_role: String = existing.try_get("acting_role")?;
            if stored_sha != sha
                || stored_user != acting.user_id
                || stored_role != role_name(acting_role)
            {
                return Err(ServiceError::AlreadyExists(
                    "this idempotency key was used for a different clock event".into(),
                ));
            }
            return Ok(RecordAgencyClockEventResponse {
                event_id: existing.try_get("event_id")?,
                duplicate: true,
            });
        }
        if !event.related_message_id.is_empty() {
            let message = store::message_by_id(&mut *tx, &event.related_message_id).await?;
            let fits = message
                .as_ref()
                .is_some_and(|m| match related_message_rule(kind) {
                    Some((forms, sent)) => {
                        forms.iter().any(|f| f.as_str_name() == m.form_kind)
                            && if sent {
                                m.sender_agency_id == caller.id
                            } else {
                                m.recipient_agency_id == caller.id
                            }
                    }
                    None => m.sender_agency_id == caller.id || m.recipient_agency_id == caller.id,
                });
            if !fits {
                tx.rollback().await?;
                return Err(ServiceError::invalid_field(
                    "event.related_message_id",
                    match kind {
                        AgencyClockEventKind::ConcernReportedInWriting => {
                            "must be a help request K this agency sent"
                        }
                        AgencyClockEventKind::ServiceStarted => {
                            "must be a service referral or action assignment this agency received"
                        }
                        _ => "must be a message this agency sent or received",
                    },
                ));
            }
        }
        let event_id = uuid::Uuid::now_v7().to_string();
        let fields = EntryFields {
            event: ledger_event_name(kind),
            message_id: event_id.clone(),
            sender_agency_id: caller.id.clone(),
            recipient_agency_id: GATEWAY_RECIPIENT.to_owned(),
            acting_user_id: acting.user_id.clone(),
            acting_role: role_name(acting_role),
            purpose_of_use: "PURPOSE_OF_USE_CARE_MANAGEMENT".to_owned(),
            form_kind: String::new(),
            case_reference: String::new(),
            confidentiality: "CONFIDENTIALITY_LABEL_RESTRICTED".to_owned(),
            payload_sha256: sha,
            sections: String::new(),
            outcome: String::new(),
        };
        let seq = head.append(&mut tx, now_us, &fields).await?;
        head.store(&mut tx).await?;
        sqlx::query(
            "INSERT INTO agency_clock_events (event_id, agency_id, district_id, idempotency_key, \
             subject_reference, kind, event, event_sha256, acting_user_id, recorded_at, \
             ledger_seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&event_id)
        .bind(&caller.id)
        .bind(&caller.district)
        .bind(&req.idempotency_key)
        .bind(&event.subject_reference)
        .bind(kind.as_str_name())
        .bind(bytes)
        .bind(&fields.payload_sha256)
        .bind(&acting.user_id)
        .bind(now_us)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(
            event_id = %event_id,
            agency = %caller.id,
            kind = kind.as_str_name(),
            "agency clock event recorded"
        );
        self.ledger_appended();
        Ok(RecordAgencyClockEventResponse {
            event_id,
            duplicate: false,
        })
    }

    /// The event's own fields (the related message is checked against the store later).
    fn check_clock_event(
        &self,
        caller: &AgencyEntry,
        event: &AgencyClockEvent,
        kind: AgencyClockEventKind,
        now: Timestamp,
        v: &mut FieldViolations,
    ) {
        if kind == AgencyClockEventKind::Unspecified {
            v.add("event.kind", "must be a known clock event kind");
        }
        check_subject_reference(&event.subject_reference, "event.subject_reference", v);
        match event.occurred_at.as_ref().map(time::from_proto) {
            None => v.add("event.occurred_at", "required"),
            Some(None) => v.add("event.occurred_at", "must be a valid instant"),
            Some(Some(at)) if at > now + FUTURE_SKEW => {
                v.add("event.occurred_at", "must not be in the future");
            }
            Some(Some(_)) => {}
        }
        if event.urgent && kind != AgencyClockEventKind::IncidentRecorded {
            v.add("event.urgent", "only an INCIDENT_RECORDED event is urgent");
        }
        // A user id of the agency's identity provider (the gateway keeps no staff list, as for
        // the acting user): an id, never a name or an IIN.
        let user = &event.responsible_user_id;
        if !user.is_empty()
            && (user.len() > 200
                || !user.bytes().all(|b| b.is_ascii_graphic())
                || validate::holds_iin(user))
        {
            v.add(
                "event.responsible_user_id",
                "must be a user id of the calling agency: up to 200 printable ASCII characters \
                 (or empty)",
            );
        }
        match Role::try_from(event.responsible_role) {
            Ok(Role::Unspecified) => {}
            Ok(role) if role_fits_kind(role, caller.kind()) => {}
            _ => v.add(
                "event.responsible_role",
                "must be one of the calling agency's roles (or unspecified)",
            ),
        }
        let related = &event.related_message_id;
        if related.is_empty() {
            if related_message_rule(kind).is_some() {
                v.add(
                    "event.related_message_id",
                    "required for this kind of event",
                );
            }
        } else if uuid::Uuid::parse_str(related).is_err() {
            v.add("event.related_message_id", "must be a message id");
        }
    }
}

/// The rules: how a clock event changes deadlines (see the module's table).
impl Apply<'_> {
    pub(super) async fn agency_clock_event(
        &mut self,
        kind: AgencyClockEventKind,
    ) -> Result<(), EngineError> {
        use AgencyClockEventKind as E;
        use DeadlineKind as D;
        let row = sqlx::query(
            "SELECT agency_id, district_id, subject_reference, event, ledger_seq \
             FROM agency_clock_events WHERE event_id = $1",
        )
        .bind(&self.entry.message_id)
        .fetch_optional(&mut **self.tx)
        .await?
        .ok_or(EngineError::Corrupt("the clock event's row is missing"))?;
        let bytes: Vec<u8> = row.try_get("event")?;
        let event = AgencyClockEvent::decode(bytes.as_slice())
            .map_err(|_| EngineError::Corrupt("a stored clock event does not decode"))?;
        let Some(occurred_at) = event.occurred_at.as_ref().and_then(time::from_proto) else {
            return Err(EngineError::Corrupt("a stored clock event has no instant"));
        };
        let district: String = row.try_get("district_id")?;
        let Some(calendar) = self.shared.calendar(&district) else {
            tracing::warn!(event_id = %self.entry.message_id, district = %district, "clock event of a district the directory no longer lists");
            return Ok(());
        };
        let agency_id: String = row.try_get("agency_id")?;
        let agency_kind = self
            .shared
            .directory()
            .agency(&agency_id)
            .map(|a| a.kind())
            .unwrap_or(AgencyKind::Unspecified);
        let ctx = ClockCtx {
            agency_id,
            agency_kind,
            district,
            subject: row.try_get("subject_reference")?,
            seq: row.try_get("ledger_seq")?,
            event,
        };
        let s = &self.shared.deadlines;
        let day =
            |kind: DeadlineKind, due_on| agency_schedule(due_on, lead_for(kind, s), s, calendar);
        match kind {
            E::IncidentRecorded => {
                let reported_on = calendar.local_date(occurred_at);
                let due = investigation_start_due(reported_on, ctx.event.urgent, s, calendar);
                self.create_clock(
                    &ctx,
                    D::InvestigationStart,
                    0,
                    day(D::InvestigationStart, due),
                    None,
                    &[E::InvestigationStarted],
                    &[],
                )
                .await
            }
            E::InvestigationStarted => {
                self.end_clock(&ctx, D::InvestigationStart, DeadlineState::Met)
                    .await?;
                let due = investigation_finish_due(calendar.local_date(occurred_at), s, calendar);
                self.create_clock(
                    &ctx,
                    D::InvestigationFinish,
                    0,
                    day(D::InvestigationFinish, due),
                    None,
                    &[E::InvestigationFinished],
                    &[],
                )
                .await
            }
            E::InvestigationFinished => {
                self.end_clock(&ctx, D::InvestigationFinish, DeadlineState::Met)
                    .await
            }
            E::ConcernPhoned => {
                let schedule = written_confirmation_schedule(occurred_at, s, calendar);
                self.create_clock(
                    &ctx,
                    D::WrittenConfirmation,
                    0,
                    schedule,
                    None,
                    &[E::ConcernReportedInWriting],
                    &[],
                )
                .await
            }
            E::ConcernReportedInWriting => {
                self.end_clock(&ctx, D::WrittenConfirmation, DeadlineState::Met)
                    .await?;
                let k = ctx.event.related_message_id.clone();
                let due = protection_service_answer_due(occurred_at, s, calendar);
                // Decided already (the decision's entry came first): created met.
                let decided = self.decided_before(&ctx, &k).await?;
                let schedule = day(D::ProtectionServiceAnswer, due);
                if decided {
                    let d = self.clock_deadline(
                        &ctx,
                        D::ProtectionServiceAnswer,
                        0,
                        schedule,
                        Some(k),
                        String::new(),
                    );
                    return self.create(d, DeadlineState::Met).await;
                }
                self.create_clock(
                    &ctx,
                    D::ProtectionServiceAnswer,
                    0,
                    schedule,
                    Some(k),
                    &[E::ProtectionServiceAnswered],
                    &[],
                )
                .await
            }
            E::ProtectionServiceAnswered => {
                self.end_clock(&ctx, D::ProtectionServiceAnswer, DeadlineState::Met)
                    .await
            }
            E::AllegationRecorded => {
                let due = allegation_to_director_due(occurred_at, s, calendar);
                self.create_clock(
                    &ctx,
                    D::AllegationToDirector,
                    0,
                    day(D::AllegationToDirector, due),
                    None,
                    &[E::AllegationReceivedByDirector],
                    &[],
                )
                .await
            }
            E::AllegationReceivedByDirector => {
                self.end_clock(&ctx, D::AllegationToDirector, DeadlineState::Met)
                    .await
            }
            E::ServiceStarted => {
                let due = weekly_progress_due(occurred_at, s, calendar);
                // Late reports are also told to the referring school or institution (routing lets
                // only them send a SERVICE_REFERRAL), never to the commission for an assigned plan
                // row: with no case reference, every commission member would see the alert, and
                // the commission has its own deadlines for plan rows.
                let referrer = store::message_by_id(&mut **self.tx, &ctx.event.related_message_id)
                    .await?
                    .filter(|m| m.form_kind == FormKind::ServiceReferral.as_str_name())
                    .map(|m| m.sender_agency_id)
                    .unwrap_or_default();
                let d = self.clock_deadline(
                    &ctx,
                    D::WeeklyProgress,
                    1,
                    day(D::WeeklyProgress, due),
                    None,
                    referrer,
                );
                self.create_unless(&ctx, d, &[], &[E::ServiceEnded]).await
            }
            E::ServiceProgressReported => {
                self.end_clock(&ctx, D::WeeklyProgress, DeadlineState::Met)
                    .await?;
                // The next report is due a week on, unless the service never started or ended.
                if self.earlier(&ctx, &[E::ServiceEnded]).await? {
                    return Ok(());
                }
                let existing =
                    model::of_subject(self.tx, &ctx.agency_id, &ctx.subject, D::WeeklyProgress)
                        .await?;
                let Some(first) = existing.first() else {
                    return Ok(());
                };
                let referrer = first.related_agency_id.clone();
                let reports: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM agency_clock_events WHERE agency_id = $1 \
                     AND subject_reference = $2 AND kind = $3 AND ledger_seq <= $4",
                )
                .bind(&ctx.agency_id)
                .bind(&ctx.subject)
                .bind(E::ServiceProgressReported.as_str_name())
                .bind(ctx.seq)
                .fetch_one(&mut **self.tx)
                .await?;
                let due = weekly_progress_due(occurred_at, s, calendar);
                let mut d = self.clock_deadline(
                    &ctx,
                    D::WeeklyProgress,
                    reports + 1,
                    day(D::WeeklyProgress, due),
                    None,
                    referrer,
                );
                // Whoever the service's start named stays responsible, unless the report names
                // someone else.
                if ctx.event.responsible_user_id.is_empty() {
                    d.responsible_user_id = first.responsible_user_id.clone();
                }
                if ctx.event.responsible_role == Role::Unspecified as i32 {
                    d.responsible_role = first.responsible_role();
                }
                self.create(d, DeadlineState::Pending).await
            }
            E::ServiceEnded => {
                self.end_clock(&ctx, D::WeeklyProgress, DeadlineState::Cancelled)
                    .await
            }
            E::Unspecified => Ok(()),
        }
    }

    /// The deadline an agency clock event creates.
    fn clock_deadline(
        &self,
        ctx: &ClockCtx,
        kind: DeadlineKind,
        number: i64,
        schedule: Schedule,
        help_request: Option<String>,
        related_agency_id: String,
    ) -> NewDeadline {
        let role = match Role::try_from(ctx.event.responsible_role) {
            Ok(Role::Unspecified) | Err(_) => default_role(ctx.agency_kind, kind),
            Ok(role) => role,
        };
        NewDeadline {
            key: clock_key(&ctx.agency_id, &ctx.subject, kind, number),
            kind,
            case_reference: String::new(),
            cycle: 0,
            district_id: ctx.district.clone(),
            responsible_agency_id: ctx.agency_id.clone(),
            responsible_user_id: ctx.event.responsible_user_id.clone(),
            responsible_role: role,
            action_number: number,
            help_request_message_id: help_request,
            schedule,
            subject_reference: ctx.subject.clone(),
            related_agency_id,
        }
    }

    /// Creates a deadline of the subject, met when one of `met_by` came earlier.
    #[allow(clippy::too_many_arguments)]
    async fn create_clock(
        &mut self,
        ctx: &ClockCtx,
        kind: DeadlineKind,
        number: i64,
        schedule: Schedule,
        help_request: Option<String>,
        met_by: &[AgencyClockEventKind],
        cancelled_by: &[AgencyClockEventKind],
    ) -> Result<(), EngineError> {
        let d = self.clock_deadline(ctx, kind, number, schedule, help_request, String::new());
        self.create_unless(ctx, d, met_by, cancelled_by).await
    }

    /// Creates `d` pending, or met (cancelled) when an event of `met_by` (`cancelled_by`) of the
    /// same subject was applied before this one.
    async fn create_unless(
        &mut self,
        ctx: &ClockCtx,
        d: NewDeadline,
        met_by: &[AgencyClockEventKind],
        cancelled_by: &[AgencyClockEventKind],
    ) -> Result<(), EngineError> {
        let state = if self.earlier(ctx, cancelled_by).await? {
            DeadlineState::Cancelled
        } else if self.earlier(ctx, met_by).await? {
            DeadlineState::Met
        } else {
            DeadlineState::Pending
        };
        self.create(d, state).await
    }

    /// Whether an event of one of `kinds` of the same subject came before this one.
    async fn earlier(
        &mut self,
        ctx: &ClockCtx,
        kinds: &[AgencyClockEventKind],
    ) -> Result<bool, EngineError> {
        for kind in kinds {
            let found: Option<i64> = sqlx::query_scalar(
                "SELECT ledger_seq FROM agency_clock_events WHERE agency_id = $1 \
                 AND subject_reference = $2 AND kind = $3 AND ledger_seq < $4 LIMIT 1",
            )
            .bind(&ctx.agency_id)
            .bind(&ctx.subject)
            .bind(kind.as_str_name())
            .bind(ctx.seq)
            .fetch_optional(&mut **self.tx)
            .await?;
            if found.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether the commission's decision on the K `k` was accepted before this entry, in the
    /// ledger's order: its `message.accepted` entry has a lower seq. The K's row says whether it
    /// is answered now, not when, so read alone it would end the deadline differently depending
    /// on when the engine ran; the ledger's order makes a replay end as the first run did (a
    /// decision accepted later meets the deadline when its own entry is applied).
    async fn decided_before(&mut self, ctx: &ClockCtx, k: &str) -> Result<bool, EngineError> {
        let Some(answer) = store::message_by_id(&mut **self.tx, k)
            .await?
            .and_then(|m| m.answer_message_id)
        else {
            return Ok(false);
        };
        let is_decision = store::message_by_id(&mut **self.tx, &answer)
            .await?
            .is_some_and(|m| {
                m.form_kind == FormKind::HelpRequestDecision.as_str_name()
                    && m.recipient_agency_id == ctx.agency_id
            });
        if !is_decision {
            return Ok(false);
        }
        let accepted: Option<i64> = sqlx::query_scalar(
            "SELECT seq FROM ledger WHERE message_id = $1 AND event = $2 AND seq < $3 LIMIT 1",
        )
        .bind(&answer)
        .bind(LedgerEvent::Accepted.as_str())
        .bind(ctx.seq)
        .fetch_optional(&mut **self.tx)
        .await?;
        Ok(accepted.is_some())
    }

    /// Ends every open deadline of the subject and kind.
    async fn end_clock(
        &mut self,
        ctx: &ClockCtx,
        kind: DeadlineKind,
        to: DeadlineState,
    ) -> Result<(), EngineError> {
        let rows = model::of_subject(self.tx, &ctx.agency_id, &ctx.subject, kind).await?;
        for d in rows.iter().filter(|d| model::is_open(d.state)) {
            self.end(d, to).await?;
        }
        Ok(())
    }
}

/// One clock event, with where and when it applies.
struct ClockCtx {
    agency_id: String,
    agency_kind: AgencyKind,
    district: String,
    subject: String,
    /// The event's ledger entry.
    seq: i64,
    event: AgencyClockEvent,
}

/// What an agency clock is: the agency, its subject, the kind and the number.
pub(crate) fn clock_key(agency: &str, subject: &str, kind: DeadlineKind, number: i64) -> String {
    format!(
        "agency_clock:{agency}:{subject}:{}:{number}",
        kind.as_str_name()
            .trim_start_matches("DEADLINE_KIND_")
            .to_ascii_lowercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_event_names_are_lower_snake_and_round_trip() {
        assert_eq!(
            ledger_event_name(AgencyClockEventKind::InvestigationStarted),
            "clock.investigation_started"
        );
        for n in 1..=11 {
            let kind = AgencyClockEventKind::try_from(n).unwrap();
            assert_eq!(kind_from_ledger_event(&ledger_event_name(kind)), Some(kind));
        }
        assert_eq!(kind_from_ledger_event("case.case_opened"), None);
        assert_eq!(kind_from_ledger_event("clock.unspecified"), None);
    }

    #[test]
    fn schools_and_institutions_record_incidents_concerns_and_allegations_ngos_services() {
        use AgencyClockEventKind as E;
        for n in 1..=11 {
            let kind = E::try_from(n).unwrap();
            let service = matches!(
                kind,
                E::ServiceStarted | E::ServiceProgressReported | E::ServiceEnded
            );
            assert_eq!(may_record(AgencyKind::School, kind), !service, "{kind:?}");
            assert_eq!(
                may_record(AgencyKind::Residential, kind),
                !service,
                "{kind:?}"
            );
            assert_eq!(may_record(AgencyKind::Ngo, kind), service, "{kind:?}");
            for other in [
                AgencyKind::Commission,
                AgencyKind::Police,
                AgencyKind::Health,
            ] {
                assert!(!may_record(other, kind), "{other:?} {kind:?}");
            }
        }
    }

    #[test]
    fn subject_references_are_short_printable_ascii_without_an_iin() {
        let check = |s: &str| {
            let mut v = FieldViolations::new();
            check_subject_reference(s, "event.subject_reference", &mut v);
            v.is_empty()
        };
        assert!(check("incident-0195a3b4"));
        assert!(check(&"x".repeat(128)));
        assert!(!check(&"x".repeat(129)));
        assert!(!check(""));
        assert!(!check("with space"));
        assert!(!check("Айгүл"));
        let iin = (0..100)
            .find_map(|serial| {
                referral_core::iin::Iin::generate(
                    jiff::civil::date(2015, 3, 14),
                    referral_proto::v1::Sex::Female,
                    serial,
                )
            })
            .unwrap();
        assert!(!check(iin.as_str()));
        assert!(!check(&format!("pupil-{}", iin.as_str())));
        // Twelve digits that are no IIN are an ordinary number.
        assert!(check("000000000000"));
    }

    #[test]
    fn keys_say_what_the_deadline_is() {
        assert_eq!(
            clock_key("school-1", "inc-7", DeadlineKind::WeeklyProgress, 3),
            "agency_clock:school-1:inc-7:weekly_progress:3"
        );
    }
}
