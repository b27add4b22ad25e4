//! The `SchoolIncidents` service: reports D, their investigation clocks and the summary E, for
//! the staff of the school (or residential institution), behind the staff API's bearer-token
//! check. Every member of the agency's staff may use it; the staff interceptor admits no one
//! else.
//!
//! Each change is one statement or one transaction: a report is validated whole before anything
//! is written, a step of the investigation is a conditional `UPDATE` (so a second start, or a
//! finish before the start, changes nothing and answers `FAILED_PRECONDITION`), and a summary
//! sent is queued with its own row in one transaction before it is handed to the gateway.
//! Recording a report, starting and finishing its investigation each queue a clock event
//! (INCIDENT_RECORDED, urgent when anyone is injured or at risk of injury; INVESTIGATION_STARTED;
//! INVESTIGATION_FINISHED; the incident id as subject) in the same transaction, pushed to the
//! gateway's deadline engine after the commit (the agency's retry loop pushes it otherwise).

use jiff::civil::Date;
use prost::Message as _;
use referral_agency::{AgencyHost, GatewayFailure, PushOutcome, acting_user};
use referral_core::{
    FieldViolations, ServiceError, ServiceResult,
    db::Row as _,
    time,
    validate::{self, to_calendar_date},
};
use referral_deadlines::DistrictCalendar;
use referral_proto::v1::{
    AgencyClockEvent, AgencyClockEventKind, AgencyKind, ConfidentialityLabel, Envelope,
    ExportFormat, ExportMonthlySummaryRequest, ExportedFile, FormKind, GetIncidentRequest,
    Incident, IncidentReport, IncidentSummary, InvestigationState, InvestigationStepRequest,
    ListIncidentsRequest, ListIncidentsResponse, MonthlySummaryRequest, Payload, PurposeOfUse,
    RecordIncidentRequest, Role, SendMonthlySummaryRequest, SendMonthlySummaryResponse,
    payload::Form, school_incidents_server::SchoolIncidents,
};
use sqlx::AnyConnection;
use tonic::{Request, Response, Status};

use crate::{
    clocks,
    idempotency::{replayed, sha_of},
    summary::{self, MonthReport},
    validation,
};

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 500;

/// The `SchoolIncidents` service of one agency.
#[derive(Debug, Clone)]
pub struct SchoolIncidentsApi {
    host: AgencyHost,
    calendar: DistrictCalendar,
}

/// The idempotency key of an incident's clock event: one per incident and step.
fn clock_key(incident_id: &str, step: &str) -> String {
    format!("incident:{incident_id}:{step}")
}

/// `,1,5,`: a list of codes one of which `LIKE '%,5,%'` finds.
fn codes(values: impl IntoIterator<Item = i32>) -> String {
    let mut out = String::from(",");
    for v in values {
        out.push_str(&v.to_string());
        out.push(',');
    }
    out
}

fn not_found() -> ServiceError {
    ServiceError::NotFound("no incident with this id at this agency".into())
}

/// A stored incident row, as read back.
struct Row {
    incident_id: String,
    report: IncidentReport,
    risk_of_injury: bool,
    urgent: bool,
    start_by: Date,
    recorded_at: i64,
    recorded_by: String,
    started_at: Option<i64>,
    started_by: Option<String>,
    finished_at: Option<i64>,
    finished_by: Option<String>,
}

/// The columns [`read_row`] reads.
macro_rules! columns {
    () => {
        "incident_id, report, risk_of_injury, urgent, start_by, recorded_at, \
    recorded_by_name, investigation_started_at, investigation_started_by, \
    investigation_finished_at, investigation_finished_by"
    };
}

fn read_row(row: &sqlx::any::AnyRow) -> ServiceResult<Row> {
    let bytes: Vec<u8> = row.try_get("report")?;
    let start_by: String = row.try_get("start_by")?;
    Ok(Row {
        incident_id: row.try_get("incident_id")?,
        report: IncidentReport::decode(bytes.as_slice()).map_err(ServiceError::internal)?,
        risk_of_injury: row.try_get::<i64, _>("risk_of_injury")? != 0,
        urgent: row.try_get::<i64, _>("urgent")? != 0,
        start_by: start_by.parse().map_err(ServiceError::internal)?,
        recorded_at: row.try_get("recorded_at")?,
        recorded_by: row.try_get("recorded_by_name")?,
        started_at: row.try_get("investigation_started_at")?,
        started_by: row.try_get("investigation_started_by")?,
        finished_at: row.try_get("investigation_finished_at")?,
        finished_by: row.try_get("investigation_finished_by")?,
    })
}

async fn load(conn: &mut AnyConnection, incident_id: &str) -> ServiceResult<Option<Row>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM school_incidents WHERE incident_id = $1"
    ))
    .bind(incident_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(read_row).transpose()
}

fn month_key(year: i16, month: i8) -> String {
    format!("{year:04}-{month:02}")
}

impl SchoolIncidentsApi {
    pub fn new(host: AgencyHost, calendar: DistrictCalendar) -> Self {
        Self { host, calendar }
    }

    fn incident(&self, row: Row) -> Incident {
        let now = self.host.clock().now();
        let started = row.started_at.map(time::from_micros);
        let finish_by = clocks::finish_by(&self.calendar, row.start_by, started);
        let state = match (row.started_at, row.finished_at) {
            (_, Some(_)) => InvestigationState::Finished,
            (Some(_), None) => InvestigationState::InProgress,
            (None, None) => InvestigationState::NotStarted,
        };
        Incident {
            incident_id: row.incident_id,
            report: Some(row.report),
            risk_of_injury: row.risk_of_injury,
            recorded_at: Some(time::micros_to_proto(row.recorded_at)),
            recorded_by: row.recorded_by,
            urgent: row.urgent,
            state: state as i32,
            start_by: Some(to_calendar_date(row.start_by)),
            finish_by: Some(to_calendar_date(finish_by)),
            investigation_started_at: row.started_at.map(time::micros_to_proto),
            investigation_started_by: row.started_by.unwrap_or_default(),
            investigation_finished_at: row.finished_at.map(time::micros_to_proto),
            investigation_finished_by: row.finished_by.unwrap_or_default(),
            start_overdue: row.started_at.is_none()
                && clocks::overdue(&self.calendar, row.start_by, now),
            finish_overdue: row.finished_at.is_none()
                && clocks::overdue(&self.calendar, finish_by, now),
        }
    }

    async fn get(&self, incident_id: &str) -> ServiceResult<Incident> {
        let mut conn = self.host.pool().acquire().await?;
        let row = load(&mut conn, incident_id).await?.ok_or_else(not_found)?;
        Ok(self.incident(row))
    }

    fn today(&self) -> Date {
        self.host.today()
    }

    async fn record(
        &self,
        user: &referral_proto::v1::ActingUser,
        request: RecordIncidentRequest,
    ) -> ServiceResult<Incident> {
        let today = self.today();
        let mut v = FieldViolations::new();
        validate::idempotency_key(&request.idempotency_key, "idempotency_key", &mut v);
        let Some(report) = request.incident.as_ref() else {
            v.add("incident", "required");
            return Err(v.into_result().unwrap_err());
        };
        validation::incident_report(report, today, &mut v, "incident");
        v.into_result()?;
        let sha = sha_of(&request);
        let mut tx = self.host.begin().await?;
        if let Some(existing) = self.replay(&mut tx, &request.idempotency_key, &sha).await? {
            return Ok(existing);
        }
        let reported_on =
            validate::calendar_date(report.report_date.as_ref().unwrap_or(&Default::default()))
                .ok_or_else(|| ServiceError::invalid_field("incident.report_date", "required"))?;
        let happened_on =
            validate::calendar_date(report.incident_date.as_ref().unwrap_or(&Default::default()))
                .ok_or_else(|| ServiceError::invalid_field("incident.incident_date", "required"))?;
        let urgent = report.anyone_harmed || request.risk_of_injury;
        let start_by = clocks::start_by(&self.calendar, reported_on, urgent);
        let incident_id = uuid::Uuid::now_v7().to_string();
        let now = self.host.clock().now();
        let inserted = sqlx::query(
            "INSERT INTO school_incidents (incident_id, idempotency_key, request_sha256, report, \
             report_date, incident_date, month, reporter_status, behaviours, roles, risk_tiers, \
             injured, risk_of_injury, urgent, start_by, recorded_at, recorded_by_user_id, \
             recorded_by_name) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
             $14, $15, $16, $17, $18) ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(&incident_id)
        .bind(&request.idempotency_key)
        .bind(&sha)
        .bind(report.encode_to_vec())
        .bind(reported_on.to_string())
        .bind(happened_on.to_string())
        .bind(month_key(reported_on.year(), reported_on.month()))
        .bind(i64::from(report.reporter_status))
        .bind(codes(report.behaviours.iter().copied()))
        .bind(codes(report.children.iter().map(|c| c.role)))
        .bind(codes(report.children.iter().map(|c| c.risk_tier)))
        .bind(report.injured.len() as i64)
        .bind(i64::from(request.risk_of_injury))
        .bind(i64::from(urgent))
        .bind(start_by.to_string())
        .bind(time::to_micros(now))
        .bind(&user.user_id)
        .bind(&user.display_name)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            // A concurrent call with the same key won.
            return self
                .replay(&mut tx, &request.idempotency_key, &sha)
                .await?
                .ok_or_else(|| ServiceError::Aborted("recorded concurrently: retry".into()));
        }
        // The investigation's clock, for the gateway's deadline engine: from the report's day
        // (now, when it is today's).
        let reported_at = if self.calendar.local_date(now) == reported_on {
            now
        } else {
            self.calendar.start_of_day(reported_on)
        };
        let event = self.clock_event(
            AgencyClockEventKind::IncidentRecorded,
            &incident_id,
            reported_at,
            urgent,
        );
        self.host
            .queue_clock_event(&mut tx, &clock_key(&incident_id, "recorded"), user, event)
            .await?;
        let row = load(&mut tx, &incident_id).await?.ok_or_else(not_found)?;
        tx.commit().await?;
        tracing::info!(incident_id = %incident_id, urgent, "incident report recorded");
        self.host.push_clock_events().await;
        Ok(self.incident(row))
    }

    /// A clock event of one of this agency's incidents, for the safety team (a residential
    /// institution's staff).
    fn clock_event(
        &self,
        kind: AgencyClockEventKind,
        incident_id: &str,
        at: jiff::Timestamp,
        urgent: bool,
    ) -> AgencyClockEvent {
        let role = match self.host.kind() {
            AgencyKind::Residential => Role::InstitutionStaff,
            _ => Role::SafetyTeamMember,
        };
        AgencyClockEvent {
            kind: kind as i32,
            subject_reference: incident_id.to_owned(),
            occurred_at: Some(time::to_proto(at)),
            urgent,
            responsible_user_id: String::new(),
            responsible_role: role as i32,
            related_message_id: String::new(),
        }
    }

    /// The incident recorded under `key` by the same request, if any; ALREADY_EXISTS when the
    /// key was used for another report.
    async fn replay(
        &self,
        conn: &mut AnyConnection,
        key: &str,
        sha: &str,
    ) -> ServiceResult<Option<Incident>> {
        let Some(id) = replayed(
            conn,
            "school_incidents",
            "incident_id",
            key,
            sha,
            "incident report",
        )
        .await?
        else {
            return Ok(None);
        };
        let row = load(conn, &id).await?.ok_or_else(not_found)?;
        Ok(Some(self.incident(row)))
    }

    /// Starts (`finish == false`) or finishes an investigation.
    async fn step(
        &self,
        user: &referral_proto::v1::ActingUser,
        incident_id: &str,
        finish: bool,
    ) -> ServiceResult<Incident> {
        let mut v = FieldViolations::new();
        referral_agency::checks::message_id(&mut v, "incident_id", incident_id);
        v.into_result()?;
        let now_at = self.host.clock().now();
        let now = time::to_micros(now_at);
        let mut tx = self.host.begin().await?;
        let sql = if finish {
            "UPDATE school_incidents SET investigation_finished_at = $1, \
             investigation_finished_by = $2 WHERE incident_id = $3 \
             AND investigation_started_at IS NOT NULL AND investigation_finished_at IS NULL"
        } else {
            "UPDATE school_incidents SET investigation_started_at = $1, \
             investigation_started_by = $2 WHERE incident_id = $3 \
             AND investigation_started_at IS NULL"
        };
        let changed = sqlx::query(sql)
            .bind(now)
            .bind(&user.display_name)
            .bind(incident_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let row = load(&mut tx, incident_id).await?.ok_or_else(not_found)?;
        if changed == 0 {
            let why = match (finish, row.started_at, row.finished_at) {
                (false, _, _) => "the investigation has started already",
                (true, None, _) => "the investigation has not started",
                (true, Some(_), _) => "the investigation has finished already",
            };
            return Err(ServiceError::FailedPrecondition(why.into()));
        }
        let (kind, step) = if finish {
            (AgencyClockEventKind::InvestigationFinished, "finished")
        } else {
            (AgencyClockEventKind::InvestigationStarted, "started")
        };
        let event = self.clock_event(kind, incident_id, now_at, false);
        self.host
            .queue_clock_event(&mut tx, &clock_key(incident_id, step), user, event)
            .await?;
        tx.commit().await?;
        tracing::info!(incident_id, finish, "investigation step recorded");
        self.host.push_clock_events().await;
        Ok(self.incident(row))
    }

    /// The month's reports and E computed from them.
    async fn summary_of(&self, year: i32, month: i32) -> ServiceResult<IncidentSummary> {
        let mut v = FieldViolations::new();
        let checked = validation::month(&mut v, year, month, self.today());
        v.into_result()?;
        let (y, m) = checked.unwrap_or_default();
        let mut conn = self.host.pool().acquire().await?;
        let rows = sqlx::query(
            "SELECT report, investigation_finished_at FROM school_incidents WHERE month = $1",
        )
        .bind(month_key(y, m))
        .fetch_all(&mut *conn)
        .await?;
        let mut reports = Vec::with_capacity(rows.len());
        for row in &rows {
            let bytes: Vec<u8> = row.try_get("report")?;
            let finished: Option<i64> = row.try_get("investigation_finished_at")?;
            reports.push((
                IncidentReport::decode(bytes.as_slice()).map_err(ServiceError::internal)?,
                finished.is_some(),
            ));
        }
        let month_reports: Vec<MonthReport<'_>> = reports
            .iter()
            .map(|(report, finished)| MonthReport {
                report,
                investigation_finished: *finished,
            })
            .collect();
        Ok(summary::compute(
            &self.host.agency().name_kk,
            year,
            month,
            &month_reports,
        ))
    }

    async fn list(&self, request: ListIncidentsRequest) -> ServiceResult<ListIncidentsResponse> {
        let mut v = FieldViolations::new();
        let checked = validation::month(&mut v, request.year, request.month, self.today());
        if request.page_size > MAX_PAGE {
            v.add("page_size", format!("at most {MAX_PAGE}"));
        }
        if request.page_token.len() > 100 {
            v.add("page_token", "a token from a previous page");
        }
        v.into_result()?;
        let (y, m) = checked.unwrap_or_default();
        let size = if request.page_size == 0 {
            DEFAULT_PAGE
        } else {
            request.page_size
        };
        let mut conn = self.host.pool().acquire().await?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM school_incidents WHERE month = $1 AND incident_id > $2 \
             ORDER BY incident_id LIMIT $3"
        ))
        .bind(month_key(y, m))
        .bind(&request.page_token)
        .bind(i64::from(size) + 1)
        .fetch_all(&mut *conn)
        .await?;
        let mut incidents = Vec::with_capacity(rows.len());
        for row in rows.iter().take(size as usize) {
            incidents.push(self.incident(read_row(row)?));
        }
        let next_page_token = if rows.len() > size as usize {
            incidents
                .last()
                .map(|i| i.incident_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListIncidentsResponse {
            incidents,
            next_page_token,
        })
    }

    async fn export(&self, request: ExportMonthlySummaryRequest) -> ServiceResult<ExportedFile> {
        let format = match ExportFormat::try_from(request.format) {
            Ok(ExportFormat::Csv) => ExportFormat::Csv,
            Ok(ExportFormat::Xlsx) => ExportFormat::Xlsx,
            _ => {
                return Err(ServiceError::invalid_field(
                    "format",
                    "EXPORT_FORMAT_CSV or EXPORT_FORMAT_XLSX",
                ));
            }
        };
        let e = self.summary_of(request.year, request.month).await?;
        let agency = self.host.agency_id();
        Ok(match format {
            ExportFormat::Xlsx => ExportedFile {
                content: summary::xlsx(&e).map_err(ServiceError::internal)?,
                content_type: summary::XLSX_CONTENT_TYPE.into(),
                file_name: summary::file_name(agency, &e, "xlsx"),
            },
            _ => ExportedFile {
                content: summary::csv(&e),
                content_type: summary::CSV_CONTENT_TYPE.into(),
                file_name: summary::file_name(agency, &e, "csv"),
            },
        })
    }

    async fn send(
        &self,
        user: &referral_proto::v1::ActingUser,
        request: SendMonthlySummaryRequest,
    ) -> ServiceResult<SendMonthlySummaryResponse> {
        let mut v = FieldViolations::new();
        validate::idempotency_key(&request.idempotency_key, "idempotency_key", &mut v);
        v.into_result()?;
        let today = self.today();
        let e = self.summary_of(request.year, request.month).await?;
        if (e.year, e.month) == (i32::from(today.year()), i32::from(today.month())) {
            return Err(ServiceError::FailedPrecondition(
                "the month has not ended: send its summary from the first day of the next".into(),
            ));
        }
        // Namespaced in the agency's outgoing messages, which other forms share.
        let key = format!("incident-summary:{}", request.idempotency_key);
        let mut tx = self.host.begin().await?;
        let earlier =
            sqlx::query("SELECT year, month FROM school_summaries_sent WHERE idempotency_key = $1")
                .bind(&key)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(earlier) = earlier {
            let month: (i64, i64) = (earlier.try_get("year")?, earlier.try_get("month")?);
            drop(tx);
            if month != (i64::from(e.year), i64::from(e.month)) {
                return Err(ServiceError::AlreadyExists(
                    "this idempotency key was already used for another month".into(),
                ));
            }
            // The same request again: whatever the first call queued goes now.
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
            let envelope = Envelope {
                idempotency_key: key.clone(),
                sender_agency_id: self.host.agency_id().to_owned(),
                recipient_agency_id: commission,
                acting_user: Some(user.clone()),
                purpose_of_use: PurposeOfUse::AggregateReporting as i32,
                form_kind: FormKind::IncidentSummary as i32,
                confidentiality: ConfidentialityLabel::Unrestricted as i32,
                payload: Some(Payload {
                    form: Some(Form::IncidentSummary(e.clone())),
                }),
                ..Envelope::default()
            };
            let now = self.host.clock().now();
            sqlx::query(
                "INSERT INTO school_summaries_sent (idempotency_key, year, month, \
                 sent_by_user_id, created_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&key)
            .bind(i64::from(e.year))
            .bind(i64::from(e.month))
            .bind(&user.user_id)
            .bind(time::to_micros(now))
            .execute(&mut *tx)
            .await?;
            self.host
                .queue_message(&mut tx, &key, &user.user_id, &envelope, now)
                .await?;
            tx.commit().await?;
        }
        let outcome = self
            .host
            .push_message(&key)
            .await
            .map_err(|err| ServiceError::internal(anyhow::anyhow!("{err}")))?;
        match outcome {
            PushOutcome::Sent(message_id) => {
                tracing::info!(message_id = %message_id, "monthly incident summary sent");
                Ok(SendMonthlySummaryResponse { message_id })
            }
            PushOutcome::NotNow(_) => Err(ServiceError::Unavailable(
                "the gateway cannot be reached: send again later with the same idempotency key"
                    .into(),
            )),
            PushOutcome::Refused(failure) => {
                // Refused for good: the queued message is gone, and so is this key's row.
                undo_summary(&self.host, &key).await?;
                Err(match failure {
                    GatewayFailure::Refused(status) => ServiceError::Refused(status),
                    other => ServiceError::internal(anyhow::anyhow!(
                        "the gateway refused this agency ({other:?})"
                    )),
                })
            }
            PushOutcome::Unknown => Err(ServiceError::internal(anyhow::anyhow!(
                "the queued summary is missing"
            ))),
        }
    }
}

/// Forgets a summary E the gateway refused for good, so that its key may send the month again.
async fn undo_summary(host: &AgencyHost, key: &str) -> ServiceResult<()> {
    sqlx::query("DELETE FROM school_summaries_sent WHERE idempotency_key = $1")
        .bind(key)
        .execute(host.pool())
        .await?;
    Ok(())
}

/// Pushes the summaries E the gateway could not take when they were sent (the retry loop of
/// [`crate::IncidentsExtension`]).
pub(crate) async fn push_pending(host: &AgencyHost) {
    host.push_pending(
        "SELECT e.idempotency_key FROM school_summaries_sent e \
         JOIN sent_messages s ON s.idempotency_key = e.idempotency_key \
         WHERE s.message_id IS NULL ORDER BY e.created_at LIMIT 100",
        "incident summary E",
        |key| async move { undo_summary(host, &key).await },
    )
    .await;
}

#[tonic::async_trait]
impl SchoolIncidents for SchoolIncidentsApi {
    async fn record_incident(
        &self,
        request: Request<RecordIncidentRequest>,
    ) -> Result<Response<Incident>, Status> {
        let user = acting_user(&request)?;
        Ok(Response::new(
            self.record(&user, request.into_inner()).await?,
        ))
    }

    async fn list_incidents(
        &self,
        request: Request<ListIncidentsRequest>,
    ) -> Result<Response<ListIncidentsResponse>, Status> {
        acting_user(&request)?;
        Ok(Response::new(self.list(request.into_inner()).await?))
    }

    async fn get_incident(
        &self,
        request: Request<GetIncidentRequest>,
    ) -> Result<Response<Incident>, Status> {
        acting_user(&request)?;
        let id = request.into_inner().incident_id;
        let mut v = FieldViolations::new();
        referral_agency::checks::message_id(&mut v, "incident_id", &id);
        v.into_result()?;
        Ok(Response::new(self.get(&id).await?))
    }

    async fn start_investigation(
        &self,
        request: Request<InvestigationStepRequest>,
    ) -> Result<Response<Incident>, Status> {
        let user = acting_user(&request)?;
        let id = request.into_inner().incident_id;
        Ok(Response::new(self.step(&user, &id, false).await?))
    }

    async fn finish_investigation(
        &self,
        request: Request<InvestigationStepRequest>,
    ) -> Result<Response<Incident>, Status> {
        let user = acting_user(&request)?;
        let id = request.into_inner().incident_id;
        Ok(Response::new(self.step(&user, &id, true).await?))
    }

    async fn monthly_summary(
        &self,
        request: Request<MonthlySummaryRequest>,
    ) -> Result<Response<IncidentSummary>, Status> {
        acting_user(&request)?;
        let r = request.into_inner();
        Ok(Response::new(self.summary_of(r.year, r.month).await?))
    }

    async fn export_monthly_summary(
        &self,
        request: Request<ExportMonthlySummaryRequest>,
    ) -> Result<Response<ExportedFile>, Status> {
        acting_user(&request)?;
        Ok(Response::new(self.export(request.into_inner()).await?))
    }

    async fn send_monthly_summary(
        &self,
        request: Request<SendMonthlySummaryRequest>,
    ) -> Result<Response<SendMonthlySummaryResponse>, Status> {
        let user = acting_user(&request)?;
        Ok(Response::new(self.send(&user, request.into_inner()).await?))
    }
}
