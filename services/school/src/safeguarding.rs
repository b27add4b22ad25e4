//! The `Safeguarding` service: the school's safeguarding lead and deputy, the concerns staff
//! report to them, and allegations against staff (the school group's safeguarding policy,
//! P:66-80, P:130-178).
//!
//! * **Who receives a concern.** The lead (Қорғаушы), or the deputy while a recorded absence of
//!   the lead covers the district's today (P:80). The directory names them (roles
//!   `safeguarding_lead`, `safeguarding_deputy`); a school whose directory names neither sends
//!   concerns to its director, who appoints the lead (P:68-70), rather than refusing to record
//!   them.
//! * **A concern's steps** (each one conditional `UPDATE`, so an impossible step changes nothing
//!   and answers `FAILED_PRECONDITION`): reported → consulted (optional: a consultation without
//!   the child's name this school sent, P:154-156) → phoned (first reported to the service by
//!   phone, P:159) → referred in writing (a help request K this school sent) → answered (the
//!   commission's decision on that K, recorded when it arrives in the inbox; or an answer the
//!   lead records) → closed. Closing is for a concern that needs no referral or was answered.
//! * **Who sees what.** The lead, the deputy and the director see every concern; anyone else
//!   only the concerns they reported. The lead and the deputy take the steps.
//! * **Allegations against staff** (P:170-178) go to the director. The policy is silent on an
//!   allegation against the director; the methodology's rule for institutions (M:2876-2882:
//!   staff bypass a director who committed or supported violence) is followed by sending it to
//!   the lead (the deputy while the lead is absent), who reports to outside bodies. An allegation
//!   is seen by the one who recorded it and the one it went to, never by the accused; only the
//!   one it went to acknowledges it.
//! * **Clocks.** Each step that starts or stops one of the policy's clocks queues a clock event
//!   in the step's transaction (`AgencyHost::queue_clock_event`, key `concern:{id}:{step}` or
//!   `allegation:{id}:{step}`) and pushes it after the commit; the gateway's deadline engine keeps
//!   the deadlines: the written report within 24 hours of a phone report
//!   (WRITTEN_CONFIRMATION), the service's answer within 3 working days of the written report
//!   (PROTECTION_SERVICE_ANSWER, whose alert reminds the lead to contact the service again), the
//!   allegation at the director within 1 working day (ALLEGATION_TO_DIRECTOR). Clock events
//!   carry ids only.
//!
//! Safeguarding is a school's: a residential institution (which shares this crate's extension)
//! has no lead or deputy; its staff report to its director (M:2876-2882), and this service
//! answers `UNIMPLEMENTED` there.

mod store;
pub mod validation;

use jiff::Timestamp;
use referral_agency::{AgencyHost, acting_user, checks};
use referral_core::{
    FieldViolations, ServiceError, ServiceResult, time, validate::REQUIRED_LONG_TEXT,
};
use referral_proto::v1::{
    AcknowledgeAllegationRequest, ActingUser, AgencyClockEvent, AgencyClockEventKind, AgencyKind,
    Allegation, AllegationState, CancelLeadAbsenceRequest, CloseConcernRequest, Concern,
    ConcernState, Envelope, FormKind, GetConcernRequest, LeadAbsence, LinkWrittenReportRequest,
    ListAllegationsRequest, ListAllegationsResponse, ListConcernsRequest, ListConcernsResponse,
    ListLeadAbsencesRequest, ListLeadAbsencesResponse, RecordAllegationRequest,
    RecordAnswerRequest, RecordConsultationRequest, RecordPhoneReportRequest, ReportConcernRequest,
    Role, SetLeadAbsenceRequest, safeguarding_server::Safeguarding,
};
use sqlx::AnyConnection;
use tonic::{Request, Response, Status};

use self::store::{allegation_not_found, concern_not_found};
use crate::idempotency::{replayed, sha_of};

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 500;
/// The most allegations one list answers (newest first).
const MAX_ALLEGATIONS: i64 = 500;

/// The `Safeguarding` service of one school.
#[derive(Debug, Clone)]
pub struct SafeguardingApi {
    host: AgencyHost,
}

/// The lead and the deputy take a concern's steps.
fn safeguarder(role: Role) -> bool {
    matches!(role, Role::SafeguardingLead | Role::SafeguardingDeputy)
}

/// The lead, the deputy and the director see every concern.
fn sees_every_concern(role: Role) -> bool {
    safeguarder(role) || role == Role::SchoolDirector
}

fn role_of(user: &ActingUser) -> Role {
    Role::try_from(user.role).unwrap_or(Role::Unspecified)
}

fn concern_id_check(id: &str) -> ServiceResult<()> {
    let mut v = FieldViolations::new();
    checks::message_id(&mut v, "concern_id", id);
    v.into_result()
}

/// A concern's step: the state it moves to, the states it may start from, and the columns it
/// sets (`$1` is the concern id, `$2` the acting user, `$3`... the step's own values).
struct Step {
    name: &'static str,
    to: ConcernState,
    from: &'static [ConcernState],
    set: &'static str,
}

/// A person the directory names.
#[derive(Debug, Clone)]
struct Person {
    user_id: String,
    role: Role,
}

impl SafeguardingApi {
    pub fn new(host: AgencyHost) -> Self {
        Self { host }
    }

    /// The caller, when this agency is a school.
    fn school_staff<T>(&self, request: &Request<T>) -> Result<ActingUser, Status> {
        if self.host.kind() != AgencyKind::School {
            return Err(Status::unimplemented(
                "safeguarding leads are a school's; an institution's staff report to its director",
            ));
        }
        Ok(acting_user(request)?)
    }

    fn first_of(&self, role: Role) -> Option<Person> {
        self.host
            .directory()
            .staff_of(self.host.agency_id())
            .find(|s| s.role() == role)
            .map(|s| Person {
                user_id: s.user_id.clone(),
                role,
            })
    }

    /// Who receives a concern now: the lead, the deputy while the lead is absent (or when the
    /// directory names no lead), the director when it names neither.
    async fn safeguarder_now(&self, conn: &mut AnyConnection) -> ServiceResult<Person> {
        let lead = self.first_of(Role::SafeguardingLead);
        let absent = lead.is_some() && store::lead_absent_on(conn, self.host.today()).await?;
        let chosen = match lead {
            Some(lead) if !absent => Some(lead),
            _ => self
                .first_of(Role::SafeguardingDeputy)
                .or_else(|| self.first_of(Role::SchoolDirector)),
        };
        chosen.ok_or_else(|| {
            ServiceError::FailedPrecondition(
                "the directory names no safeguarding lead, deputy or director for this school"
                    .into(),
            )
        })
    }

    /// Queues a clock event about `subject` in the caller's transaction.
    #[allow(clippy::too_many_arguments)]
    async fn queue_clock(
        &self,
        conn: &mut AnyConnection,
        key: &str,
        user: &ActingUser,
        kind: AgencyClockEventKind,
        subject: &str,
        at: Timestamp,
        responsible: &Person,
        related_message_id: &str,
    ) -> ServiceResult<()> {
        self.host
            .queue_clock_event(
                conn,
                key,
                user,
                AgencyClockEvent {
                    kind: kind as i32,
                    subject_reference: subject.to_owned(),
                    occurred_at: Some(time::to_proto(at)),
                    urgent: false,
                    responsible_user_id: responsible.user_id.clone(),
                    responsible_role: responsible.role as i32,
                    related_message_id: related_message_id.to_owned(),
                },
            )
            .await
    }

    // ---- the lead's absences ----

    async fn set_absence(
        &self,
        user: &ActingUser,
        request: SetLeadAbsenceRequest,
    ) -> ServiceResult<LeadAbsence> {
        let role = role_of(user);
        if !matches!(role, Role::SafeguardingLead | Role::SchoolDirector) {
            return Err(ServiceError::PermissionDenied(
                "only the safeguarding lead or the director records the lead's absence".into(),
            ));
        }
        let mut v = FieldViolations::new();
        let days = validation::absence(&mut v, &request, self.host.today());
        v.into_result()?;
        let (first, last) =
            days.ok_or_else(|| ServiceError::invalid_field("first_day", "required"))?;
        let lead = self.first_of(Role::SafeguardingLead).ok_or_else(|| {
            ServiceError::FailedPrecondition("the directory names no safeguarding lead".into())
        })?;
        let sha = sha_of(&request);
        let mut conn = self.host.pool().acquire().await?;
        let earlier = replayed(
            &mut conn,
            "safeguarding_lead_absences",
            "absence_id",
            &request.idempotency_key,
            &sha,
            "absence",
        )
        .await?;
        let absence_id = match earlier {
            Some(id) => id,
            None => {
                let id = uuid::Uuid::now_v7().to_string();
                let inserted = sqlx::query(
                    "INSERT INTO safeguarding_lead_absences (absence_id, idempotency_key, \
                     request_sha256, lead_user_id, first_day, last_day, note, \
                     recorded_by_user_id, recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
                     $9) ON CONFLICT (idempotency_key) DO NOTHING",
                )
                .bind(&id)
                .bind(&request.idempotency_key)
                .bind(&sha)
                .bind(&lead.user_id)
                .bind(first.to_string())
                .bind(last.to_string())
                .bind(request.note.trim())
                .bind(&user.user_id)
                .bind(time::to_micros(self.host.clock().now()))
                .execute(&mut *conn)
                .await?;
                if inserted.rows_affected() == 0 {
                    return Err(ServiceError::Aborted("recorded concurrently: retry".into()));
                }
                tracing::info!(absence_id = %id, "safeguarding lead's absence recorded");
                id
            }
        };
        store::load_absence(&mut conn, &absence_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound("no such absence".into()))
    }

    async fn cancel_absence(
        &self,
        user: &ActingUser,
        absence_id: &str,
    ) -> ServiceResult<LeadAbsence> {
        if !matches!(role_of(user), Role::SafeguardingLead | Role::SchoolDirector) {
            return Err(ServiceError::PermissionDenied(
                "only the safeguarding lead or the director changes the lead's absence".into(),
            ));
        }
        let mut v = FieldViolations::new();
        checks::message_id(&mut v, "absence_id", absence_id);
        v.into_result()?;
        let mut conn = self.host.pool().acquire().await?;
        let changed = sqlx::query(
            "UPDATE safeguarding_lead_absences SET cancelled_at = $1 WHERE absence_id = $2 \
             AND cancelled_at IS NULL AND last_day >= $3",
        )
        .bind(time::to_micros(self.host.clock().now()))
        .bind(absence_id)
        .bind(self.host.today().to_string())
        .execute(&mut *conn)
        .await?
        .rows_affected();
        let absence = store::load_absence(&mut conn, absence_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound("no such absence".into()))?;
        if changed == 0 {
            return Err(ServiceError::FailedPrecondition(
                "the absence is cancelled or over already".into(),
            ));
        }
        tracing::info!(absence_id, "safeguarding lead's absence cancelled");
        Ok(absence)
    }

    async fn list_absences(&self) -> ServiceResult<ListLeadAbsencesResponse> {
        let mut conn = self.host.pool().acquire().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM safeguarding_lead_absences WHERE last_day >= $1 \
             ORDER BY first_day, absence_id LIMIT 500",
            store::ABSENCE_COLUMNS
        )))
        .bind(self.host.today().to_string())
        .fetch_all(&mut *conn)
        .await?;
        Ok(ListLeadAbsencesResponse {
            absences: rows
                .iter()
                .map(store::absence)
                .collect::<ServiceResult<_>>()?,
        })
    }

    // ---- concerns ----

    async fn report(
        &self,
        user: &ActingUser,
        request: ReportConcernRequest,
    ) -> ServiceResult<Concern> {
        let mut v = FieldViolations::new();
        let observed_on = validation::concern(&mut v, &request, self.host.today());
        v.into_result()?;
        let observed_on =
            observed_on.ok_or_else(|| ServiceError::invalid_field("observed_on", "required"))?;
        let sha = sha_of(&request);
        let mut tx = self.host.begin().await?;
        if let Some(id) = replayed(
            &mut tx,
            "safeguarding_concerns",
            "concern_id",
            &request.idempotency_key,
            &sha,
            "request",
        )
        .await?
        {
            let concern = store::load_concern(&mut tx, &id)
                .await?
                .ok_or_else(concern_not_found)?;
            return self.visible_concern(user, concern);
        }
        let to = self.safeguarder_now(&mut tx).await?;
        let concern_id = uuid::Uuid::now_v7().to_string();
        let now = time::to_micros(self.host.clock().now());
        sqlx::query(
            "INSERT INTO safeguarding_concerns (concern_id, idempotency_key, request_sha256, \
             pupil_name, pupil_class, what_happened, observed_on, at_risk_now, state, \
             reported_by_user_id, reported_by_name, reported_at, assigned_to_user_id, \
             assigned_to_role, last_step_by_user_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
             $10, $11, $12, $13, $14, $10)",
        )
        .bind(&concern_id)
        .bind(&request.idempotency_key)
        .bind(&sha)
        .bind(request.pupil_name.trim())
        .bind(request.pupil_class.trim())
        .bind(&request.what_happened)
        .bind(observed_on.to_string())
        .bind(i64::from(request.at_risk_now))
        .bind(ConcernState::Reported.as_str_name())
        .bind(&user.user_id)
        .bind(&user.display_name)
        .bind(now)
        .bind(&to.user_id)
        .bind(to.role.as_str_name())
        .execute(&mut *tx)
        .await?;
        let concern = store::load_concern(&mut tx, &concern_id)
            .await?
            .ok_or_else(concern_not_found)?;
        tx.commit().await?;
        tracing::info!(
            concern_id = %concern_id,
            assigned_to_role = to.role.as_str_name(),
            at_risk_now = request.at_risk_now,
            "safeguarding concern reported"
        );
        Ok(concern)
    }

    /// The concern, when `user` may see it; NOT_FOUND otherwise (as for an unknown id).
    fn visible_concern(&self, user: &ActingUser, concern: Concern) -> ServiceResult<Concern> {
        if sees_every_concern(role_of(user)) || concern.reported_by_user_id == user.user_id {
            Ok(concern)
        } else {
            Err(concern_not_found())
        }
    }

    async fn get_concern(&self, user: &ActingUser, concern_id: &str) -> ServiceResult<Concern> {
        concern_id_check(concern_id)?;
        let mut conn = self.host.pool().acquire().await?;
        let concern = store::load_concern(&mut conn, concern_id)
            .await?
            .ok_or_else(concern_not_found)?;
        self.visible_concern(user, concern)
    }

    async fn list_concerns(
        &self,
        user: &ActingUser,
        request: ListConcernsRequest,
    ) -> ServiceResult<ListConcernsResponse> {
        let mut v = FieldViolations::new();
        let mut states = String::new();
        for (i, s) in request.states.iter().enumerate() {
            if let Some(state) =
                checks::required_enum::<ConcernState>(&mut v, &format!("states[{i}]"), *s)
            {
                states.push(',');
                states.push_str(state.as_str_name());
            }
        }
        if !states.is_empty() {
            states.push(',');
        }
        if request.page_size > MAX_PAGE {
            v.add("page_size", format!("at most {MAX_PAGE}"));
        }
        if request.page_token.len() > 100
            || !request.page_token.chars().all(|c| c.is_ascii_graphic())
        {
            v.add("page_token", "a token from a previous page");
        }
        v.into_result()?;
        let size = if request.page_size == 0 {
            DEFAULT_PAGE
        } else {
            request.page_size
        };
        let reporter = if sees_every_concern(role_of(user)) {
            ""
        } else {
            user.user_id.as_str()
        };
        let mut conn = self.host.pool().acquire().await?;
        // Newest first: concern ids are UUIDv7.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM safeguarding_concerns WHERE ($1 = '' OR reported_by_user_id = $1) \
             AND ($2 = '' OR $2 LIKE '%,' || state || ',%') AND ($3 = '' OR concern_id < $3) \
             ORDER BY concern_id DESC LIMIT $4",
            store::CONCERN_COLUMNS
        )))
        .bind(reporter)
        .bind(&states)
        .bind(&request.page_token)
        .bind(i64::from(size) + 1)
        .fetch_all(&mut *conn)
        .await?;
        let mut concerns = Vec::with_capacity(rows.len());
        for row in rows.iter().take(size as usize) {
            concerns.push(store::concern(row)?);
        }
        let next_page_token = if rows.len() > size as usize {
            concerns
                .last()
                .map(|c| c.concern_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListConcernsResponse {
            concerns,
            next_page_token,
        })
    }

    /// Applies `step` to a concern with `values` bound from `$3` on, in `tx`: FAILED_PRECONDITION
    /// (nothing changed) when the concern is in another state.
    async fn apply_step(
        &self,
        conn: &mut AnyConnection,
        user: &ActingUser,
        concern_id: &str,
        step: &Step,
        values: &[Value<'_>],
    ) -> ServiceResult<Concern> {
        let from: Vec<String> = step
            .from
            .iter()
            .map(|s| format!("'{}'", s.as_str_name()))
            .collect();
        let sql = format!(
            "UPDATE safeguarding_concerns SET state = '{}', last_step_by_user_id = $2, {} \
             WHERE concern_id = $1 AND state IN ({})",
            step.to.as_str_name(),
            step.set,
            from.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(concern_id)
            .bind(&user.user_id);
        for value in values {
            query = match value {
                Value::Text(t) => query.bind(*t),
                Value::OptText(t) => query.bind(*t),
                Value::Micros(m) => query.bind(*m),
            };
        }
        let changed = query.execute(&mut *conn).await?.rows_affected();
        let concern = store::load_concern(conn, concern_id)
            .await?
            .ok_or_else(concern_not_found)?;
        if changed == 0 {
            let state = ConcernState::try_from(concern.state).unwrap_or(ConcernState::Unspecified);
            return Err(ServiceError::FailedPrecondition(format!(
                "a concern in state {} cannot be {}",
                state.as_str_name(),
                step.name
            )));
        }
        tracing::info!(
            concern_id,
            step = step.name,
            "safeguarding concern step recorded"
        );
        Ok(concern)
    }

    /// Checks that `user` may take a step on `concern_id` and that it exists.
    async fn step_target(
        &self,
        conn: &mut AnyConnection,
        user: &ActingUser,
        concern_id: &str,
    ) -> ServiceResult<Concern> {
        concern_id_check(concern_id)?;
        let concern = store::load_concern(conn, concern_id)
            .await?
            .ok_or_else(concern_not_found)?;
        let concern = self.visible_concern(user, concern)?;
        if !safeguarder(role_of(user)) {
            return Err(ServiceError::PermissionDenied(
                "only the safeguarding lead or deputy takes a concern's steps".into(),
            ));
        }
        Ok(concern)
    }

    async fn consulted(
        &self,
        user: &ActingUser,
        request: RecordConsultationRequest,
    ) -> ServiceResult<Concern> {
        let mut tx = self.host.begin().await?;
        self.step_target(&mut tx, user, &request.concern_id).await?;
        let mut v = FieldViolations::new();
        checks::message_id(
            &mut v,
            "consultation_message_id",
            &request.consultation_message_id,
        );
        v.into_result()?;
        let sent = store::sent_form(
            &mut tx,
            &request.consultation_message_id,
            FormKind::Consultation.as_str_name(),
        )
        .await?;
        if sent.is_none() {
            return Err(ServiceError::invalid_field(
                "consultation_message_id",
                "must be a consultation this school sent",
            ));
        }
        let concern = self
            .apply_step(
                &mut tx,
                user,
                &request.concern_id,
                &Step {
                    name: "marked consulted",
                    to: ConcernState::Consulted,
                    from: &[ConcernState::Reported],
                    set: "consultation_message_id = $3",
                },
                &[Value::Text(&request.consultation_message_id)],
            )
            .await?;
        tx.commit().await?;
        Ok(concern)
    }

    async fn phoned(
        &self,
        user: &ActingUser,
        request: RecordPhoneReportRequest,
    ) -> ServiceResult<Concern> {
        let mut tx = self.host.begin().await?;
        let target = self.step_target(&mut tx, user, &request.concern_id).await?;
        let observed_on = target
            .observed_on
            .as_ref()
            .and_then(referral_core::validate::calendar_date)
            .ok_or_else(|| {
                ServiceError::internal(anyhow::anyhow!("a stored concern without date"))
            })?;
        let now = self.host.clock().now();
        let mut v = FieldViolations::new();
        let at = validation::phoned_at(
            &mut v,
            request.phoned_at.as_ref(),
            now,
            observed_on,
            self.host.time_zone(),
        );
        v.into_result()?;
        let at = at.ok_or_else(|| ServiceError::invalid_field("phoned_at", "required"))?;
        let concern = self
            .apply_step(
                &mut tx,
                user,
                &request.concern_id,
                &Step {
                    name: "reported by phone",
                    to: ConcernState::Phoned,
                    from: &[ConcernState::Reported, ConcernState::Consulted],
                    set: "phoned_at = $3",
                },
                &[Value::Micros(time::to_micros(at))],
            )
            .await?;
        let responsible = self.safeguarder_now(&mut tx).await?;
        self.queue_clock(
            &mut tx,
            &format!("concern:{}:phoned", concern.concern_id),
            user,
            AgencyClockEventKind::ConcernPhoned,
            &concern.concern_id,
            at,
            &responsible,
            "",
        )
        .await?;
        tx.commit().await?;
        self.host.push_clock_events().await;
        Ok(concern)
    }

    async fn written(
        &self,
        user: &ActingUser,
        request: LinkWrittenReportRequest,
    ) -> ServiceResult<Concern> {
        let mut tx = self.host.begin().await?;
        self.step_target(&mut tx, user, &request.concern_id).await?;
        let mut v = FieldViolations::new();
        checks::message_id(
            &mut v,
            "help_request_message_id",
            &request.help_request_message_id,
        );
        v.into_result()?;
        let sent = store::sent_form(
            &mut tx,
            &request.help_request_message_id,
            FormKind::HelpRequest.as_str_name(),
        )
        .await?
        .ok_or_else(|| {
            ServiceError::invalid_field(
                "help_request_message_id",
                "must be a help request K this school sent",
            )
        })?;
        let taken: Option<String> = sqlx::query_scalar(
            "SELECT concern_id FROM safeguarding_concerns WHERE written_message_id = $1",
        )
        .bind(&request.help_request_message_id)
        .fetch_optional(&mut *tx)
        .await?;
        if taken.is_some_and(|id| id != request.concern_id) {
            return Err(ServiceError::FailedPrecondition(
                "this help request is the written report of another concern".into(),
            ));
        }
        let now = self.host.clock().now();
        let micros = time::to_micros(now);
        let step = Step {
            name: "linked to a written report",
            to: ConcernState::ReferredInWriting,
            from: &[
                ConcernState::Reported,
                ConcernState::Consulted,
                ConcernState::Phoned,
            ],
            set: "written_message_id = $3, written_at = $4",
        };
        let mut concern = self
            .apply_step(
                &mut tx,
                user,
                &request.concern_id,
                &step,
                &[
                    Value::Text(&request.help_request_message_id),
                    Value::Micros(micros),
                ],
            )
            .await?;
        let responsible = self.safeguarder_now(&mut tx).await?;
        self.queue_clock(
            &mut tx,
            &format!("concern:{}:written", concern.concern_id),
            user,
            AgencyClockEventKind::ConcernReportedInWriting,
            &concern.concern_id,
            now,
            &responsible,
            &request.help_request_message_id,
        )
        .await?;
        // The commission may have decided on the K already: that was the answer.
        if let Some(answer) = sent.answer_message_id.as_deref() {
            concern = self
                .apply_step(
                    &mut tx,
                    user,
                    &request.concern_id,
                    &ANSWERED_BY_DECISION,
                    &[Value::Micros(micros), Value::OptText(Some(answer))],
                )
                .await?;
            self.queue_clock(
                &mut tx,
                &format!("concern:{}:answered", concern.concern_id),
                user,
                AgencyClockEventKind::ProtectionServiceAnswered,
                &concern.concern_id,
                now,
                &responsible,
                &request.help_request_message_id,
            )
            .await?;
        }
        tx.commit().await?;
        self.host.push_clock_events().await;
        Ok(concern)
    }

    async fn answered(
        &self,
        user: &ActingUser,
        request: RecordAnswerRequest,
    ) -> ServiceResult<Concern> {
        let mut tx = self.host.begin().await?;
        self.step_target(&mut tx, user, &request.concern_id).await?;
        let mut v = FieldViolations::new();
        checks::text(
            &mut v,
            "answer_note",
            &request.answer_note,
            REQUIRED_LONG_TEXT,
        );
        v.into_result()?;
        let now = self.host.clock().now();
        let concern = self
            .apply_step(
                &mut tx,
                user,
                &request.concern_id,
                &Step {
                    name: "answered",
                    to: ConcernState::Answered,
                    from: &[ConcernState::ReferredInWriting],
                    set: "answered_at = $3, answer_note = $4",
                },
                &[
                    Value::Micros(time::to_micros(now)),
                    Value::Text(&request.answer_note),
                ],
            )
            .await?;
        let responsible = self.safeguarder_now(&mut tx).await?;
        self.queue_clock(
            &mut tx,
            &format!("concern:{}:answered", concern.concern_id),
            user,
            AgencyClockEventKind::ProtectionServiceAnswered,
            &concern.concern_id,
            now,
            &responsible,
            &concern.written_message_id,
        )
        .await?;
        tx.commit().await?;
        self.host.push_clock_events().await;
        Ok(concern)
    }

    async fn close(
        &self,
        user: &ActingUser,
        request: CloseConcernRequest,
    ) -> ServiceResult<Concern> {
        let mut tx = self.host.begin().await?;
        self.step_target(&mut tx, user, &request.concern_id).await?;
        let mut v = FieldViolations::new();
        checks::text(&mut v, "reason", &request.reason, REQUIRED_LONG_TEXT);
        v.into_result()?;
        let concern = self
            .apply_step(
                &mut tx,
                user,
                &request.concern_id,
                &Step {
                    name: "closed (only a concern reported, consulted on or answered is)",
                    to: ConcernState::Closed,
                    from: &[
                        ConcernState::Reported,
                        ConcernState::Consulted,
                        ConcernState::Answered,
                    ],
                    set: "closed_at = $3, close_reason = $4",
                },
                &[
                    Value::Micros(time::to_micros(self.host.clock().now())),
                    Value::Text(&request.reason),
                ],
            )
            .await?;
        tx.commit().await?;
        Ok(concern)
    }

    // ---- allegations ----

    async fn record_allegation(
        &self,
        user: &ActingUser,
        request: RecordAllegationRequest,
    ) -> ServiceResult<Allegation> {
        let directory = self.host.directory();
        let agency = self.host.agency_id();
        let mut v = FieldViolations::new();
        let happened_on = validation::allegation(&mut v, &request, self.host.today(), |id| {
            directory.user(agency, id).is_some()
        });
        v.into_result()?;
        let happened_on =
            happened_on.ok_or_else(|| ServiceError::invalid_field("happened_on", "required"))?;
        let sha = sha_of(&request);
        let mut tx = self.host.begin().await?;
        if let Some(id) = replayed(
            &mut tx,
            "safeguarding_allegations",
            "allegation_id",
            &request.idempotency_key,
            &sha,
            "request",
        )
        .await?
        {
            let allegation = store::load_allegation(&mut tx, &id)
                .await?
                .ok_or_else(allegation_not_found)?;
            return visible_allegation(user, allegation);
        }
        // The accused's name as the directory knows it, when listed.
        let accused_name = match directory.user(agency, &request.accused_user_id) {
            Some(staff) if !request.accused_user_id.is_empty() => staff.full_name.clone(),
            _ => request.accused_name.trim().to_owned(),
        };
        let director = self.first_of(Role::SchoolDirector);
        let director_accused = director.as_ref().is_some_and(|d| {
            d.user_id == request.accused_user_id
                || directory
                    .user(agency, &d.user_id)
                    .is_some_and(|s| same_name(&s.full_name, &accused_name))
        });
        let to = match director {
            Some(director) if !director_accused => director,
            _ => self.safeguarder_now(&mut tx).await?,
        };
        let allegation_id = uuid::Uuid::now_v7().to_string();
        let now = self.host.clock().now();
        sqlx::query(
            "INSERT INTO safeguarding_allegations (allegation_id, idempotency_key, \
             request_sha256, accused_user_id, accused_name, allegation, happened_on, state, \
             recorded_by_user_id, recorded_by_name, recorded_at, assigned_to_user_id, \
             assigned_to_role) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&allegation_id)
        .bind(&request.idempotency_key)
        .bind(&sha)
        .bind(&request.accused_user_id)
        .bind(&accused_name)
        .bind(&request.allegation)
        .bind(happened_on.to_string())
        .bind(AllegationState::Recorded.as_str_name())
        .bind(&user.user_id)
        .bind(&user.display_name)
        .bind(time::to_micros(now))
        .bind(&to.user_id)
        .bind(to.role.as_str_name())
        .execute(&mut *tx)
        .await?;
        self.queue_clock(
            &mut tx,
            &format!("allegation:{allegation_id}:recorded"),
            user,
            AgencyClockEventKind::AllegationRecorded,
            &allegation_id,
            now,
            &to,
            "",
        )
        .await?;
        let allegation = store::load_allegation(&mut tx, &allegation_id)
            .await?
            .ok_or_else(allegation_not_found)?;
        tx.commit().await?;
        tracing::info!(
            allegation_id = %allegation_id,
            assigned_to_role = to.role.as_str_name(),
            "allegation against a member of staff recorded"
        );
        self.host.push_clock_events().await;
        Ok(allegation)
    }

    async fn list_allegations(&self, user: &ActingUser) -> ServiceResult<ListAllegationsResponse> {
        let mut conn = self.host.pool().acquire().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM safeguarding_allegations WHERE (recorded_by_user_id = $1 \
             OR assigned_to_user_id = $1) AND accused_user_id <> $1 \
             ORDER BY allegation_id DESC LIMIT {MAX_ALLEGATIONS}",
            store::ALLEGATION_COLUMNS
        )))
        .bind(&user.user_id)
        .fetch_all(&mut *conn)
        .await?;
        Ok(ListAllegationsResponse {
            allegations: rows
                .iter()
                .map(store::allegation)
                .collect::<ServiceResult<_>>()?,
        })
    }

    async fn acknowledge(
        &self,
        user: &ActingUser,
        allegation_id: &str,
    ) -> ServiceResult<Allegation> {
        let mut v = FieldViolations::new();
        checks::message_id(&mut v, "allegation_id", allegation_id);
        v.into_result()?;
        let mut tx = self.host.begin().await?;
        let allegation = store::load_allegation(&mut tx, allegation_id)
            .await?
            .filter(|a| a.accused_user_id != user.user_id)
            .ok_or_else(allegation_not_found)?;
        if allegation.assigned_to_user_id != user.user_id {
            return Err(ServiceError::PermissionDenied(
                "only the one the allegation went to acknowledges it".into(),
            ));
        }
        let now = self.host.clock().now();
        let changed = sqlx::query(
            "UPDATE safeguarding_allegations SET state = $1, received_at = $2 \
             WHERE allegation_id = $3 AND state = $4",
        )
        .bind(AllegationState::Received.as_str_name())
        .bind(time::to_micros(now))
        .bind(allegation_id)
        .bind(AllegationState::Recorded.as_str_name())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(ServiceError::FailedPrecondition(
                "the allegation was acknowledged already".into(),
            ));
        }
        let role = Role::try_from(allegation.assigned_to_role).unwrap_or(Role::Unspecified);
        self.queue_clock(
            &mut tx,
            &format!("allegation:{allegation_id}:received"),
            user,
            AgencyClockEventKind::AllegationReceivedByDirector,
            allegation_id,
            now,
            &Person {
                user_id: allegation.assigned_to_user_id.clone(),
                role,
            },
            "",
        )
        .await?;
        let allegation = store::load_allegation(&mut tx, allegation_id)
            .await?
            .ok_or_else(allegation_not_found)?;
        tx.commit().await?;
        tracing::info!(allegation_id, "allegation acknowledged");
        self.host.push_clock_events().await;
        Ok(allegation)
    }
}

/// The answer that is the commission's decision on the concern's K: `$3` when, `$4` the
/// decision's message id.
const ANSWERED_BY_DECISION: Step = Step {
    name: "answered",
    to: ConcernState::Answered,
    from: &[ConcernState::ReferredInWriting],
    set: "answered_at = $3, answer_message_id = $4",
};

/// A value bound to a step's `UPDATE`.
enum Value<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Micros(i64),
}

fn visible_allegation(user: &ActingUser, allegation: Allegation) -> ServiceResult<Allegation> {
    let sees = allegation.accused_user_id != user.user_id
        && (allegation.recorded_by_user_id == user.user_id
            || allegation.assigned_to_user_id == user.user_id);
    if sees {
        Ok(allegation)
    } else {
        Err(allegation_not_found())
    }
}

/// Two names are the same person's when they match ignoring case and runs of spaces.
fn same_name(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.split_whitespace()
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
            .join(" ")
    };
    !b.trim().is_empty() && norm(a) == norm(b)
}

/// Whether `user` may see `envelope` among the school's messages: a deadline alert only when it
/// is addressed to them (the person it names, or, naming nobody, a holder of the role it names;
/// an alert naming neither is the whole school's), every other message as for any agency. The
/// gateway addresses an allegation's alerts to the one the allegation went to alone, so the
/// director an allegation accuses, or an accused teacher, never reads them in the inbox.
pub fn shown_to(envelope: &Envelope, user: &ActingUser) -> bool {
    use referral_proto::v1::payload::Form;
    let Some(Form::DeadlineAlert(alert)) = envelope.payload.as_ref().and_then(|p| p.form.as_ref())
    else {
        return true;
    };
    if !alert.addressed_to_user_id.is_empty() {
        return alert.addressed_to_user_id == user.user_id;
    }
    alert.addressed_to_role == Role::Unspecified as i32 || alert.addressed_to_role == user.role
}

/// Called inside the inbox's transaction for every new message: the commission's decision on a
/// help request that is a concern's written report is the child-protection service's answer.
/// The deadline engine meets the answer's deadline from the decision itself.
pub(crate) async fn on_received(
    conn: &mut AnyConnection,
    envelope: &Envelope,
    now: Timestamp,
) -> ServiceResult<()> {
    if envelope.form_kind != FormKind::HelpRequestDecision as i32 || envelope.in_reply_to.is_empty()
    {
        return Ok(());
    }
    let sql = format!(
        "UPDATE safeguarding_concerns SET state = '{}', answered_at = $1, answer_message_id = $2 \
         WHERE written_message_id = $3 AND state = '{}'",
        ConcernState::Answered.as_str_name(),
        ConcernState::ReferredInWriting.as_str_name()
    );
    let changed = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(time::to_micros(now))
        .bind(&envelope.message_id)
        .bind(&envelope.in_reply_to)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if changed > 0 {
        tracing::info!(
            message_id = %envelope.message_id,
            "the commission's decision answered a safeguarding concern"
        );
    }
    Ok(())
}

#[tonic::async_trait]
impl Safeguarding for SafeguardingApi {
    async fn set_lead_absence(
        &self,
        request: Request<SetLeadAbsenceRequest>,
    ) -> Result<Response<LeadAbsence>, Status> {
        let user = self.school_staff(&request)?;
        Ok(Response::new(
            self.set_absence(&user, request.into_inner()).await?,
        ))
    }

    async fn cancel_lead_absence(
        &self,
        request: Request<CancelLeadAbsenceRequest>,
    ) -> Result<Response<LeadAbsence>, Status> {
        let user = self.school_staff(&request)?;
        let id = request.into_inner().absence_id;
        Ok(Response::new(self.cancel_absence(&user, &id).await?))
    }

    async fn list_lead_absences(
        &self,
        request: Request<ListLeadAbsencesRequest>,
    ) -> Result<Response<ListLeadAbsencesResponse>, Status> {
        self.school_staff(&request)?;
        Ok(Response::new(self.list_absences().await?))
    }

    async fn report_concern(
        &self,
        request: Request<ReportConcernRequest>,
    ) -> Result<Response<Concern>, Status> {
        let user = self.school_staff(&request)?;
        Ok(Response::new(
            self.report(&user, request.into_inner()).await?,
        ))
    }

    async fn list_concerns(
        &self,
        request: Request<ListConcernsRequest>,
    ) -> Result<Response<ListConcernsResponse>, Status> {
        let user = self.school_staff(&request)?;
        Ok(Response::new(
            self.list_concerns(&user, request.into_inner()).await?,
        ))
    }

    async fn get_concern(
        &self,
        request: Request<GetConcernRequest>,
    ) -> Result<Response<Concern>, Status> {
        let user = self.school_staff(&request)?;
        let id = request.into_inner().concern_id;
        Ok(Response::new(self.get_concern(&user, &id).await?))
    }

    async fn record_consultation(
        &self,
        request: Request<RecordConsultationRequest>,
    ) -> Result<Response<Concern>, Status> {
        let user = self.school_staff(&request)?;
        Ok(Response::new(
            self.consulted(&user, request.into_inner()).await?,
        ))
    }

    async fn record_phone_report(
        &self,
        request: Request<RecordPhoneReportRequest>,
    ) -> Result<Response<Concern>, Status> {
        let user = self.school_staff(&request)?;
        Ok(Response::new(
            self.phoned(&user, request.into_inner()).await?,
        ))
    }

    async fn link_written_report(
        &self,
        request: Request<LinkWrittenReportRequest>,
    ) -> Result<Response<Concern>, Status> {
        let user = self.school_staff(&request)?;
        Ok(Response::new(
            self.written(&user, request.into_inner()).await?,
        ))
    }

    async fn record_answer(
        &self,
        request: Request<RecordAnswerRequest>,
    ) -> Result<Response<Concern>, Status> {
        let user = self.school_staff(&request)?;
        Ok(Response::new(
            self.answered(&user, request.into_inner()).await?,
        ))
    }

    async fn close_concern(
        &self,
        request: Request<CloseConcernRequest>,
    ) -> Result<Response<Concern>, Status> {
        let user = self.school_staff(&request)?;
        Ok(Response::new(
            self.close(&user, request.into_inner()).await?,
        ))
    }

    async fn record_allegation(
        &self,
        request: Request<RecordAllegationRequest>,
    ) -> Result<Response<Allegation>, Status> {
        let user = self.school_staff(&request)?;
        Ok(Response::new(
            self.record_allegation(&user, request.into_inner()).await?,
        ))
    }

    async fn list_allegations(
        &self,
        request: Request<ListAllegationsRequest>,
    ) -> Result<Response<ListAllegationsResponse>, Status> {
        let user = self.school_staff(&request)?;
        Ok(Response::new(self.list_allegations(&user).await?))
    }

    async fn acknowledge_allegation(
        &self,
        request: Request<AcknowledgeAllegationRequest>,
    ) -> Result<Response<Allegation>, Status> {
        let user = self.school_staff(&request)?;
        let id = request.into_inner().allegation_id;
        Ok(Response::new(self.acknowledge(&user, &id).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_ignoring_case_and_spaces() {
        assert!(same_name(
            "Гүлнар Серікқызы Әбенова",
            "  гүлнар  серікқызы ӘБЕНОВА "
        ));
        assert!(!same_name("Гүлнар Серікқызы Әбенова", "Гүлнар Әбенова"));
        assert!(!same_name("", ""));
    }

    #[test]
    fn a_deadline_alert_is_shown_only_to_whom_it_is_addressed() {
        use referral_proto::v1::{DeadlineAlert, Payload, payload::Form};
        let alert = |user: &str, role: Role| Envelope {
            form_kind: FormKind::DeadlineAlert as i32,
            payload: Some(Payload {
                form: Some(Form::DeadlineAlert(DeadlineAlert {
                    addressed_to_user_id: user.into(),
                    addressed_to_role: role as i32,
                    ..DeadlineAlert::default()
                })),
            }),
            ..Envelope::default()
        };
        let staff = |id: &str, role: Role| ActingUser {
            user_id: id.into(),
            role: role as i32,
            ..ActingUser::default()
        };
        let director = staff("director", Role::SchoolDirector);
        let lead = staff("safeguarding-lead", Role::SafeguardingLead);
        let teacher = staff("safety-team", Role::SafetyTeamMember);
        // Named: that person alone, not others of the role.
        let to_lead = alert("safeguarding-lead", Role::SafeguardingLead);
        assert!(shown_to(&to_lead, &lead));
        assert!(!shown_to(&to_lead, &director));
        assert!(!shown_to(&to_lead, &teacher));
        assert!(!shown_to(
            &to_lead,
            &staff("another-lead", Role::SafeguardingLead)
        ));
        // A role: its holders.
        let to_team = alert("", Role::SafetyTeamMember);
        assert!(shown_to(&to_team, &teacher));
        assert!(!shown_to(&to_team, &director));
        // Neither: the whole school's.
        assert!(shown_to(&alert("", Role::Unspecified), &teacher));
        // Any other message: everyone, as before.
        let k = Envelope {
            form_kind: FormKind::HelpRequest as i32,
            ..Envelope::default()
        };
        assert!(shown_to(&k, &teacher));
    }
}
