//! The `ResidentialIncidents` service: the institution's work on an incident beside its report D.
//!
//! * **Severity and grounds** (M:2932-2940, M:2964-2970) are set on a report D; a moderate or
//!   severe incident needs at least one mandatory-report ground.
//! * **Referral to the commission and the police in one action** (M:2932): one transaction
//!   queues both INCIDENT_REFERRALs (`AgencyHost::queue_message`) and marks the incident
//!   referred; after the commit they are handed to the gateway, the commission's first. Both carry
//!   the same referral, checked by the same gateway rules, and both recipients are looked up in
//!   the directory before anything is queued, so a refusal of one and not the other can only come
//!   from a change of the directory between the two calls. What happens then:
//!   - the commission's refused: the police's, still queued, is withdrawn and the incident is
//!     not referred (for a report bypassing the director, the report goes too), in one
//!     transaction: nothing half-done, and the refusal (with its fields) is the caller's answer;
//!   - the commission's acknowledged and the police's refused: the commission has it and cannot
//!     be un-told; the incident is `INCOMPLETE`, cannot be closed, and referring again sends the
//!     police's only (the commission's is acknowledged under its key already);
//!   - the gateway unreachable: both wait (`PENDING`); the background task pushes them later,
//!     the police's only once the commission's went.
//! * **An injured child to health at once** (M:2940-2945): an INCIDENT_REFERRAL for medical care
//!   to the district's health facility with only what health needs: the child, the injuries,
//!   whom to call.
//! * **Closing**: refused (`FAILED_PRECONDITION`, nothing changes) while the severity is unset, and
//!   for a moderate or severe incident until both referrals are acknowledged.
//! * **A report bypassing the director** (M:2876-2882): a member of staff (not the director)
//!   reports an incident in which the director is implicated straight to the commission and the
//!   police, with `implicated_director_agency_id` set to this institution. It has no report D
//!   (which every member of staff lists); only its reporter sees it, here and in the sent list.

use jiff::civil::Date;
use prost::Message as _;
use referral_agency::{AgencyHost, PushOutcome, acting_user, checks};
use referral_core::{FieldViolations, ServiceError, ServiceResult, db::Row as _, time, validate};
use referral_proto::v1::{
    ActingUser, AgencyKind, AssessIncidentRequest, CloseIncidentRequest, ConfidentialityLabel,
    Envelope, FormKind, GetResidentialIncidentRequest, IncidentChild, IncidentReferral,
    IncidentReferralPurpose, IncidentReferralState, IncidentReport, IncidentReporter,
    IncidentSeverity, Payload, PurposeOfUse, ReferIncidentRequest, ReferIncidentResponse,
    ReferInjuredChildRequest, ReferInjuredChildResponse, ReferrerDetails,
    ReportBypassingDirectorRequest, ReportCircumstances, ResidentialIncident, Role, payload::Form,
    residential_incidents_server::ResidentialIncidents,
};
use sqlx::AnyConnection;
use tonic::{Request, Response, Status};

use crate::{instructions, validation};

/// The `ResidentialIncidents` service of one institution.
#[derive(Debug, Clone)]
pub struct ResidentialIncidentsApi {
    host: AgencyHost,
}

/// One row of `residential_incident_work`.
struct Work {
    incident_id: String,
    director_implicated: bool,
    created_by: String,
    bypass: Option<IncidentReferral>,
    severity: IncidentSeverity,
    grounds: Vec<i32>,
    grounds_other: String,
    commission_key: Option<String>,
    police_key: Option<String>,
    closed_at: Option<i64>,
    closed_by: Option<String>,
    version: i64,
}

impl Work {
    /// A report bypassing the director is its reporter's alone.
    fn visible_to(&self, user: &ActingUser) -> bool {
        !self.director_implicated || self.created_by == user.user_id
    }
}

const WORK_COLUMNS: &str = "incident_id, director_implicated, created_by_user_id, \
     bypass_referral, severity, grounds, grounds_other, commission_key, police_key, closed_at, \
     closed_by, version";

fn codes(values: &[i32]) -> String {
    let mut out = String::from(",");
    for v in values {
        out.push_str(&v.to_string());
        out.push(',');
    }
    out
}

fn parse_codes(text: &str) -> Vec<i32> {
    text.split(',').filter_map(|c| c.parse().ok()).collect()
}

fn not_found() -> ServiceError {
    ServiceError::NotFound("no incident with this id at this institution".into())
}

async fn load_work(conn: &mut AnyConnection, id: &str) -> ServiceResult<Option<Work>> {
    let Some(r) = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {WORK_COLUMNS} FROM residential_incident_work WHERE incident_id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let bypass: Option<Vec<u8>> = r.try_get(3)?;
    Ok(Some(Work {
        incident_id: r.try_get(0)?,
        director_implicated: r.try_get::<i64, _>(1)? != 0,
        created_by: r.try_get(2)?,
        bypass: bypass
            .map(|b| IncidentReferral::decode(b.as_slice()))
            .transpose()
            .map_err(ServiceError::internal)?,
        severity: IncidentSeverity::try_from(i32::try_from(r.try_get::<i64, _>(4)?).unwrap_or(0))
            .unwrap_or(IncidentSeverity::Unspecified),
        grounds: parse_codes(&r.try_get::<String, _>(5)?),
        grounds_other: r.try_get(6)?,
        commission_key: r.try_get(7)?,
        police_key: r.try_get(8)?,
        closed_at: r.try_get(9)?,
        closed_by: r.try_get(10)?,
        version: r.try_get(11)?,
    }))
}

/// The report D recorded under `id` (the school's extension's table, in this store).
async fn load_report(conn: &mut AnyConnection, id: &str) -> ServiceResult<Option<IncidentReport>> {
    sqlx::query("SELECT report FROM school_incidents WHERE incident_id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| {
            let bytes: Vec<u8> = r.try_get(0)?;
            IncidentReport::decode(bytes.as_slice()).map_err(ServiceError::internal)
        })
        .transpose()
}

/// A queued message: `None` when nothing is queued under the key (never, or refused), otherwise
/// the gateway's message id once acknowledged.
async fn sent(
    conn: &mut AnyConnection,
    key: Option<&str>,
) -> ServiceResult<Option<Option<String>>> {
    let Some(key) = key else { return Ok(None) };
    Ok(
        sqlx::query("SELECT message_id FROM sent_messages WHERE idempotency_key = $1")
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?
            .map(|r| r.try_get::<Option<String>, _>(0))
            .transpose()?,
    )
}

/// Where the referral to the commission and the police stands, with their message ids.
async fn referral_state(
    conn: &mut AnyConnection,
    work: &Work,
) -> ServiceResult<(IncidentReferralState, String, String)> {
    if work.commission_key.is_none() {
        return Ok((
            IncidentReferralState::NotReferred,
            String::new(),
            String::new(),
        ));
    }
    let commission = sent(conn, work.commission_key.as_deref()).await?;
    let police = sent(conn, work.police_key.as_deref()).await?;
    let state = match (&commission, &police) {
        (Some(Some(_)), Some(Some(_))) => IncidentReferralState::Referred,
        (Some(Some(_)), None) => IncidentReferralState::Incomplete,
        _ => IncidentReferralState::Pending,
    };
    Ok((
        state,
        commission.flatten().unwrap_or_default(),
        police.flatten().unwrap_or_default(),
    ))
}

async fn view(conn: &mut AnyConnection, work: &Work) -> ServiceResult<ResidentialIncident> {
    let (state, commission, police) = referral_state(conn, work).await?;
    let health = sqlx::query(
        "SELECT s.message_id FROM residential_health_referrals h \
         LEFT JOIN sent_messages s ON s.idempotency_key = h.message_key \
         WHERE h.incident_id = $1 ORDER BY h.created_at, h.message_key",
    )
    .bind(&work.incident_id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| Ok(r.try_get::<Option<String>, _>(0)?.unwrap_or_default()))
    .collect::<ServiceResult<Vec<_>>>()?;
    Ok(ResidentialIncident {
        incident_id: work.incident_id.clone(),
        director_implicated: work.director_implicated,
        severity: work.severity as i32,
        grounds: work.grounds.clone(),
        grounds_other: work.grounds_other.clone(),
        must_refer: validation::must_refer(work.severity, &work.grounds),
        referral_state: state as i32,
        commission_message_id: commission,
        police_message_id: police,
        health_message_ids: health,
        closed: work.closed_at.is_some(),
        closed_at: work.closed_at.map(time::micros_to_proto),
        closed_by: work.closed_by.clone().unwrap_or_default(),
        version: u64::try_from(work.version).unwrap_or_default(),
    })
}

/// A report D nobody has worked on yet.
fn unassessed(incident_id: &str) -> ResidentialIncident {
    ResidentialIncident {
        incident_id: incident_id.to_owned(),
        referral_state: IncidentReferralState::NotReferred as i32,
        ..ResidentialIncident::default()
    }
}

fn referral_keys(incident_id: &str) -> (String, String) {
    (
        format!("incident-referral:{incident_id}:commission"),
        format!("incident-referral:{incident_id}:police"),
    )
}

fn health_key(idempotency_key: &str) -> String {
    format!("incident-health:{idempotency_key}")
}

/// How a request is recognised when its idempotency key comes again.
pub(crate) fn sha_of<M: prost::Message>(m: &M) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(m.encode_to_vec()))
}

/// The children of a report D, as a referral names them: each with its role, injured when the
/// report names them among the injured, referred for care when the report says so.
fn children_of(report: &IncidentReport) -> Vec<IncidentChild> {
    report
        .children
        .iter()
        .map(|c| {
            let injury = report
                .injured
                .iter()
                .find(|i| i.full_name.trim() == c.full_name.trim());
            IncidentChild {
                full_name: c.full_name.clone(),
                iin: c.iin.clone(),
                date_of_birth: None,
                role: c.role,
                injured: injury.is_some(),
                injuries: injury.map(|i| i.injuries.clone()).unwrap_or_default(),
                referred_for_medical_care: injury.is_some() && report.sent_for_medical_help,
            }
        })
        .collect()
}

fn reporter(user: &ActingUser, details: Option<&ReferrerDetails>) -> IncidentReporter {
    let details = details.cloned().unwrap_or_default();
    IncidentReporter {
        full_name: user.display_name.clone(),
        position: details.position,
        phone: details.phone,
    }
}

fn is_director(user: &ActingUser) -> bool {
    Role::try_from(user.role).ok() == Some(Role::InstitutionDirector)
}

impl ResidentialIncidentsApi {
    pub fn new(host: AgencyHost) -> Self {
        Self { host }
    }

    fn today(&self) -> Date {
        self.host.today()
    }

    /// The district's agency of `kind` (the first the directory lists).
    fn district_agency(&self, kind: AgencyKind, what: &str) -> ServiceResult<String> {
        let district = &self.host.agency().district;
        self.host
            .directory()
            .agencies
            .iter()
            .find(|a| a.kind() == kind && &a.district == district)
            .map(|a| a.id.clone())
            .ok_or_else(|| {
                ServiceError::FailedPrecondition(format!(
                    "the directory lists no {what} in this institution's district"
                ))
            })
    }

    fn envelope(
        &self,
        key: &str,
        recipient: &str,
        user: &ActingUser,
        purpose: PurposeOfUse,
        referral: IncidentReferral,
    ) -> Envelope {
        Envelope {
            idempotency_key: key.to_owned(),
            sender_agency_id: self.host.agency_id().to_owned(),
            recipient_agency_id: recipient.to_owned(),
            acting_user: Some(user.clone()),
            purpose_of_use: purpose as i32,
            form_kind: FormKind::IncidentReferral as i32,
            confidentiality: ConfidentialityLabel::Restricted as i32,
            payload: Some(Payload {
                form: Some(Form::IncidentReferral(referral)),
            }),
            ..Envelope::default()
        }
    }

    /// The work on `id` as `user` may see it: `None` for an unassessed report D; NOT_FOUND for
    /// neither, or for someone else's report bypassing the director.
    async fn visible_work(
        &self,
        conn: &mut AnyConnection,
        user: &ActingUser,
        id: &str,
    ) -> ServiceResult<Option<Work>> {
        match load_work(conn, id).await? {
            Some(work) if work.visible_to(user) => Ok(Some(work)),
            Some(_) => Err(not_found()),
            None if load_report(conn, id).await?.is_some() => Ok(None),
            None => Err(not_found()),
        }
    }

    async fn answer(&self, incident_id: &str) -> ServiceResult<ResidentialIncident> {
        let mut conn = self.host.pool().acquire().await?;
        let work = load_work(&mut conn, incident_id)
            .await?
            .ok_or_else(not_found)?;
        view(&mut conn, &work).await
    }

    async fn assess(
        &self,
        user: &ActingUser,
        request: AssessIncidentRequest,
    ) -> ServiceResult<ResidentialIncident> {
        let mut v = FieldViolations::new();
        checks::message_id(&mut v, "incident_id", &request.incident_id);
        let severity = validation::severity(&mut v, "severity", request.severity);
        validation::grounds(
            &mut v,
            "",
            &request.grounds,
            &request.grounds_other,
            severity.is_some_and(validation::severity_requires_referral),
        );
        v.into_result()?;
        let severity = severity.unwrap_or_default();
        let now = time::to_micros(self.host.clock().now());
        let mut tx = self.host.begin().await?;
        match self
            .visible_work(&mut tx, user, &request.incident_id)
            .await?
        {
            Some(work) => {
                if work.closed_at.is_some() {
                    return Err(ServiceError::FailedPrecondition(
                        "the incident is closed".into(),
                    ));
                }
                if work.commission_key.is_some() {
                    return Err(ServiceError::FailedPrecondition(
                        "the incident went to the commission and the police: its assessment is \
                         theirs to revise now"
                            .into(),
                    ));
                }
                let changed = sqlx::query(
                    "UPDATE residential_incident_work SET severity = $1, grounds = $2, \
                     grounds_other = $3, version = version + 1, updated_at = $4 \
                     WHERE incident_id = $5 AND version = $6 AND commission_key IS NULL \
                     AND closed_at IS NULL",
                )
                .bind(i64::from(severity as i32))
                .bind(codes(&request.grounds))
                .bind(&request.grounds_other)
                .bind(now)
                .bind(&request.incident_id)
                .bind(work.version)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if changed != 1 {
                    return Err(ServiceError::Aborted(
                        "the incident changed meanwhile: read it again".into(),
                    ));
                }
            }
            None => {
                sqlx::query(
                    "INSERT INTO residential_incident_work (incident_id, director_implicated, \
                     created_by_user_id, severity, grounds, grounds_other, version, updated_at) \
                     VALUES ($1, 0, $2, $3, $4, $5, 1, $6) ON CONFLICT (incident_id) DO NOTHING",
                )
                .bind(&request.incident_id)
                .bind(&user.user_id)
                .bind(i64::from(severity as i32))
                .bind(codes(&request.grounds))
                .bind(&request.grounds_other)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        tracing::info!(incident_id = %request.incident_id, severity = severity.as_str_name(), "incident assessed");
        self.answer(&request.incident_id).await
    }

    async fn refer(
        &self,
        user: &ActingUser,
        request: ReferIncidentRequest,
    ) -> ServiceResult<ReferIncidentResponse> {
        let today = self.today();
        let mut v = FieldViolations::new();
        checks::message_id(&mut v, "incident_id", &request.incident_id);
        validation::referrer(&mut v, "referrer", request.referrer.as_ref());
        validation::children(&mut v, "children", &request.children, today, false);
        v.into_result()?;
        let commission = self.district_agency(AgencyKind::Commission, "commission")?;
        let police = self.district_agency(AgencyKind::Police, "police")?;
        let (commission_key, police_key) = referral_keys(&request.incident_id);
        let now = self.host.clock().now();
        let mut tx = self.host.begin().await?;
        let work = self
            .visible_work(&mut tx, user, &request.incident_id)
            .await?
            .ok_or_else(|| {
                ServiceError::FailedPrecondition(
                    "set the incident's severity and grounds first (AssessIncident)".into(),
                )
            })?;
        if work.closed_at.is_some() {
            return Err(ServiceError::FailedPrecondition(
                "the incident is closed".into(),
            ));
        }
        let (state, _, _) = referral_state(&mut tx, &work).await?;
        match state {
            IncidentReferralState::NotReferred => {
                let referral = match &work.bypass {
                    Some(r) => r.clone(),
                    None => {
                        self.referral_from_report(&mut tx, user, &work, &request, today)
                            .await?
                    }
                };
                for (key, to, purpose) in [
                    (
                        &commission_key,
                        &commission,
                        PurposeOfUse::CoordinationOfCare,
                    ),
                    (&police_key, &police, PurposeOfUse::LawEnforcement),
                ] {
                    let envelope = self.envelope(key, to, user, purpose, referral.clone());
                    self.host
                        .queue_message(&mut tx, key, &user.user_id, &envelope, now)
                        .await?;
                }
                let marked = sqlx::query(
                    "UPDATE residential_incident_work SET commission_key = $1, police_key = $2, \
                     referred_by_user_id = $3, version = version + 1, updated_at = $4 \
                     WHERE incident_id = $5 AND commission_key IS NULL",
                )
                .bind(&commission_key)
                .bind(&police_key)
                .bind(&user.user_id)
                .bind(time::to_micros(now))
                .bind(&work.incident_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if marked != 1 {
                    return Err(ServiceError::Aborted(
                        "the incident was referred meanwhile: read it again".into(),
                    ));
                }
            }
            IncidentReferralState::Incomplete => {
                // The commission has it; the police's was refused: the same referral again.
                let envelope = self.requeue_for_police(&mut tx, &work, &police).await?;
                self.host
                    .queue_message(&mut tx, &police_key, &user.user_id, &envelope, now)
                    .await?;
            }
            // Queued or sent already: whatever is still queued goes now.
            _ => {}
        }
        tx.commit().await?;
        tracing::info!(incident_id = %work.incident_id, "incident referred to the commission and the police");
        push_referral(&self.host, &commission_key, &police_key).await?;
        Ok(ReferIncidentResponse {
            incident: Some(self.answer(&work.incident_id).await?),
        })
    }

    /// The police's copy of the referral the commission acknowledged.
    async fn requeue_for_police(
        &self,
        conn: &mut AnyConnection,
        work: &Work,
        police: &str,
    ) -> ServiceResult<Envelope> {
        let key = work.commission_key.as_deref().unwrap_or_default();
        let bytes: Vec<u8> =
            sqlx::query("SELECT envelope FROM sent_messages WHERE idempotency_key = $1")
                .bind(key)
                .fetch_one(&mut *conn)
                .await?
                .try_get(0)?;
        let mut envelope = Envelope::decode(bytes.as_slice()).map_err(ServiceError::internal)?;
        envelope.message_id.clear();
        envelope.created_at = None;
        envelope.idempotency_key = work.police_key.clone().unwrap_or_default();
        envelope.recipient_agency_id = police.to_owned();
        envelope.purpose_of_use = PurposeOfUse::LawEnforcement as i32;
        Ok(envelope)
    }

    /// The referral of a report D: its date, description and children (or those the request
    /// gives), the assessment's severity and grounds, the referring member of staff.
    async fn referral_from_report(
        &self,
        conn: &mut AnyConnection,
        user: &ActingUser,
        work: &Work,
        request: &ReferIncidentRequest,
        today: Date,
    ) -> ServiceResult<IncidentReferral> {
        if work.severity == IncidentSeverity::Unspecified {
            return Err(ServiceError::FailedPrecondition(
                "set the incident's severity first (AssessIncident)".into(),
            ));
        }
        if work.grounds.is_empty() {
            return Err(ServiceError::FailedPrecondition(
                "set the incident's mandatory-report grounds first (AssessIncident)".into(),
            ));
        }
        let report = load_report(conn, &work.incident_id)
            .await?
            .ok_or_else(not_found)?;
        let children = if request.children.is_empty() {
            children_of(&report)
        } else {
            request.children.clone()
        };
        let mut v = FieldViolations::new();
        validation::children(&mut v, "children", &children, today, true);
        v.into_result()?;
        Ok(IncidentReferral {
            incident_reference: work.incident_id.clone(),
            purpose: IncidentReferralPurpose::Investigation as i32,
            institution: self.host.agency().name_kk.clone(),
            incident_date: report.incident_date,
            referred_on: Some(validate::to_calendar_date(today)),
            severity: work.severity as i32,
            grounds: work.grounds.clone(),
            grounds_other: work.grounds_other.clone(),
            description: report.description.clone(),
            children,
            reporter: Some(reporter(user, request.referrer.as_ref())),
            circumstances: None,
        })
    }

    async fn refer_injured(
        &self,
        user: &ActingUser,
        request: ReferInjuredChildRequest,
    ) -> ServiceResult<ReferInjuredChildResponse> {
        let today = self.today();
        let mut v = FieldViolations::new();
        validate::idempotency_key(&request.idempotency_key, "idempotency_key", &mut v);
        checks::message_id(&mut v, "incident_id", &request.incident_id);
        validation::injured_child(&mut v, "child", request.child.as_ref(), today);
        validation::referrer(&mut v, "referrer", request.referrer.as_ref());
        v.into_result()?;
        let key = health_key(&request.idempotency_key);
        let sha = sha_of(&request);
        let health = self.district_agency(AgencyKind::Health, "health facility")?;
        let now = self.host.clock().now();
        let mut tx = self.host.begin().await?;
        if let Some(seen) = sqlx::query(
            "SELECT request_sha256 FROM residential_health_referrals WHERE message_key = $1",
        )
        .bind(&key)
        .fetch_optional(&mut *tx)
        .await?
        {
            tx.rollback().await?;
            if seen.try_get::<String, _>(0)? != sha {
                return Err(ServiceError::AlreadyExists(
                    "this idempotency key was already used for another referral".into(),
                ));
            }
            return self.push_health(&request.incident_id, &key).await;
        }
        let work = self
            .visible_work(&mut tx, user, &request.incident_id)
            .await?;
        if work.as_ref().is_some_and(|w| w.closed_at.is_some()) {
            return Err(ServiceError::FailedPrecondition(
                "the incident is closed".into(),
            ));
        }
        let incident_date = match work.as_ref().and_then(|w| w.bypass.as_ref()) {
            Some(r) => r.incident_date,
            None => {
                load_report(&mut tx, &request.incident_id)
                    .await?
                    .ok_or_else(not_found)?
                    .incident_date
            }
        };
        let director_implicated = work.as_ref().is_some_and(|w| w.director_implicated);
        let child = request.child.clone().unwrap_or_default();
        let referral = IncidentReferral {
            incident_reference: request.incident_id.clone(),
            purpose: IncidentReferralPurpose::MedicalCare as i32,
            institution: self.host.agency().name_kk.clone(),
            incident_date,
            referred_on: Some(validate::to_calendar_date(today)),
            children: vec![IncidentChild {
                full_name: child.full_name,
                iin: child.iin,
                date_of_birth: child.date_of_birth,
                role: 0,
                injured: true,
                injuries: child.injuries,
                referred_for_medical_care: true,
            }],
            reporter: Some(reporter(user, request.referrer.as_ref())),
            // Keeps a referral of a report bypassing the director from the director here; the
            // gateway gives health none of it.
            circumstances: director_implicated.then(|| ReportCircumstances {
                implicated_director_agency_id: self.host.agency_id().to_owned(),
                ..ReportCircumstances::default()
            }),
            ..IncidentReferral::default()
        };
        let envelope = self.envelope(
            &key,
            &health,
            user,
            PurposeOfUse::EmergencyTreatment,
            referral,
        );
        self.host
            .queue_message(&mut tx, &key, &user.user_id, &envelope, now)
            .await?;
        sqlx::query(
            "INSERT INTO residential_health_referrals (message_key, incident_id, request_sha256, \
             created_by_user_id, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&key)
        .bind(&request.incident_id)
        .bind(&sha)
        .bind(&user.user_id)
        .bind(time::to_micros(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(incident_id = %request.incident_id, "injured child referred to health");
        self.push_health(&request.incident_id, &key).await
    }

    async fn push_health(
        &self,
        incident_id: &str,
        key: &str,
    ) -> ServiceResult<ReferInjuredChildResponse> {
        let message_id = match self.host.push_message(key).await? {
            PushOutcome::Sent(id) => id,
            PushOutcome::Refused(failure) => {
                undo_health(&self.host, key).await?;
                return Err(failure.into_service_error());
            }
            PushOutcome::NotNow(_) | PushOutcome::Unknown => String::new(),
        };
        let mut conn = self.host.pool().acquire().await?;
        let incident = match load_work(&mut conn, incident_id).await? {
            Some(work) => view(&mut conn, &work).await?,
            None => unassessed(incident_id),
        };
        Ok(ReferInjuredChildResponse {
            message_id,
            incident: Some(incident),
        })
    }

    async fn close(
        &self,
        user: &ActingUser,
        request: CloseIncidentRequest,
    ) -> ServiceResult<ResidentialIncident> {
        let mut v = FieldViolations::new();
        checks::message_id(&mut v, "incident_id", &request.incident_id);
        if request.base_version == 0 {
            v.add("base_version", "required: the version read");
        }
        v.into_result()?;
        let mut tx = self.host.begin().await?;
        let work = self
            .visible_work(&mut tx, user, &request.incident_id)
            .await?
            .ok_or_else(|| {
                ServiceError::FailedPrecondition(
                    "set the incident's severity first (AssessIncident)".into(),
                )
            })?;
        if work.closed_at.is_some() {
            return Err(ServiceError::FailedPrecondition(
                "the incident is closed already".into(),
            ));
        }
        let base = i64::try_from(request.base_version).unwrap_or(i64::MAX);
        if work.version != base {
            return Err(ServiceError::Aborted(format!(
                "the incident changed meanwhile: its version is {}",
                work.version
            )));
        }
        if work.severity == IncidentSeverity::Unspecified {
            return Err(ServiceError::FailedPrecondition(
                "set the incident's severity first (AssessIncident)".into(),
            ));
        }
        let (state, _, _) = referral_state(&mut tx, &work).await?;
        if validation::must_refer(work.severity, &work.grounds)
            && state != IncidentReferralState::Referred
        {
            return Err(ServiceError::FailedPrecondition(
                "a moderate or severe incident, or one with a mandatory-report ground, is closed \
                 only after it went to the commission and the police (ReferIncident)"
                    .into(),
            ));
        }
        let closed = sqlx::query(
            "UPDATE residential_incident_work SET closed_at = $1, closed_by = $2, \
             version = version + 1, updated_at = $1 \
             WHERE incident_id = $3 AND version = $4 AND closed_at IS NULL",
        )
        .bind(time::to_micros(self.host.clock().now()))
        .bind(&user.display_name)
        .bind(&work.incident_id)
        .bind(base)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if closed != 1 {
            return Err(ServiceError::Aborted(
                "the incident changed meanwhile: read it again".into(),
            ));
        }
        tx.commit().await?;
        tracing::info!(incident_id = %work.incident_id, "incident closed");
        self.answer(&work.incident_id).await
    }

    async fn bypass(
        &self,
        user: &ActingUser,
        request: ReportBypassingDirectorRequest,
    ) -> ServiceResult<ReferIncidentResponse> {
        if is_director(user) {
            return Err(ServiceError::PermissionDenied(
                "a report bypassing the director is made by the institution's staff".into(),
            ));
        }
        let today = self.today();
        let mut v = FieldViolations::new();
        validate::idempotency_key(&request.idempotency_key, "idempotency_key", &mut v);
        checks::past_date(
            &mut v,
            "incident_date",
            request.incident_date.as_ref(),
            today,
        );
        validation::severity(&mut v, "severity", request.severity);
        validation::grounds(&mut v, "", &request.grounds, &request.grounds_other, true);
        validation::description(&mut v, "description", &request.description);
        validation::children(&mut v, "children", &request.children, today, true);
        validation::referrer(&mut v, "referrer", request.referrer.as_ref());
        v.into_result()?;
        let commission = self.district_agency(AgencyKind::Commission, "commission")?;
        let police = self.district_agency(AgencyKind::Police, "police")?;
        let sha = sha_of(&request);
        let now = self.host.clock().now();
        let mut tx = self.host.begin().await?;
        if let Some(seen) = sqlx::query(
            "SELECT incident_id, request_sha256, created_by_user_id \
             FROM residential_incident_work WHERE idempotency_key = $1",
        )
        .bind(&request.idempotency_key)
        .fetch_optional(&mut *tx)
        .await?
        {
            tx.rollback().await?;
            let id: String = seen.try_get(0)?;
            if seen.try_get::<Option<String>, _>(1)?.as_deref() != Some(sha.as_str())
                || seen.try_get::<String, _>(2)? != user.user_id
            {
                return Err(ServiceError::AlreadyExists(
                    "this idempotency key was already used for another report".into(),
                ));
            }
            let (commission_key, police_key) = referral_keys(&id);
            push_referral(&self.host, &commission_key, &police_key).await?;
            return Ok(ReferIncidentResponse {
                incident: Some(self.answer(&id).await?),
            });
        }
        let incident_id = uuid::Uuid::now_v7().to_string();
        let referral = IncidentReferral {
            incident_reference: incident_id.clone(),
            purpose: IncidentReferralPurpose::Investigation as i32,
            institution: self.host.agency().name_kk.clone(),
            incident_date: request.incident_date,
            referred_on: Some(validate::to_calendar_date(today)),
            severity: request.severity,
            grounds: request.grounds.clone(),
            grounds_other: request.grounds_other.clone(),
            description: request.description.clone(),
            children: request.children.clone(),
            reporter: Some(reporter(user, request.referrer.as_ref())),
            circumstances: Some(ReportCircumstances {
                implicated_director_agency_id: self.host.agency_id().to_owned(),
                ..ReportCircumstances::default()
            }),
        };
        let (commission_key, police_key) = referral_keys(&incident_id);
        sqlx::query(
            "INSERT INTO residential_incident_work (incident_id, director_implicated, \
             created_by_user_id, idempotency_key, request_sha256, bypass_referral, severity, \
             grounds, grounds_other, commission_key, police_key, referred_by_user_id, version, \
             updated_at) VALUES ($1, 1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $2, 1, $11)",
        )
        .bind(&incident_id)
        .bind(&user.user_id)
        .bind(&request.idempotency_key)
        .bind(&sha)
        .bind(referral.encode_to_vec())
        .bind(i64::from(request.severity))
        .bind(codes(&request.grounds))
        .bind(&request.grounds_other)
        .bind(&commission_key)
        .bind(&police_key)
        .bind(time::to_micros(now))
        .execute(&mut *tx)
        .await?;
        for (key, to, purpose) in [
            (
                &commission_key,
                &commission,
                PurposeOfUse::CoordinationOfCare,
            ),
            (&police_key, &police, PurposeOfUse::LawEnforcement),
        ] {
            let envelope = self.envelope(key, to, user, purpose, referral.clone());
            self.host
                .queue_message(&mut tx, key, &user.user_id, &envelope, now)
                .await?;
        }
        tx.commit().await?;
        tracing::info!(incident_id = %incident_id, "incident reported bypassing the director");
        push_referral(&self.host, &commission_key, &police_key).await?;
        Ok(ReferIncidentResponse {
            incident: Some(self.answer(&incident_id).await?),
        })
    }

    async fn get(
        &self,
        user: &ActingUser,
        request: GetResidentialIncidentRequest,
    ) -> ServiceResult<ResidentialIncident> {
        let mut v = FieldViolations::new();
        checks::message_id(&mut v, "incident_id", &request.incident_id);
        v.into_result()?;
        let mut conn = self.host.pool().acquire().await?;
        match self
            .visible_work(&mut conn, user, &request.incident_id)
            .await?
        {
            Some(work) => view(&mut conn, &work).await,
            None => Ok(unassessed(&request.incident_id)),
        }
    }
}

/// Hands the two referrals to the gateway, the commission's first; the police's waits until the
/// commission's is acknowledged. A refusal of the commission's withdraws both.
async fn push_referral(
    host: &AgencyHost,
    commission_key: &str,
    police_key: &str,
) -> ServiceResult<()> {
    match host.push_message(commission_key).await? {
        PushOutcome::Refused(failure) => {
            undo_referral(host, commission_key).await?;
            return Err(failure.into_service_error());
        }
        PushOutcome::NotNow(_) | PushOutcome::Unknown => return Ok(()),
        PushOutcome::Sent(_) => {}
    }
    match host.push_message(police_key).await? {
        PushOutcome::Refused(failure) => {
            tracing::error!(
                "the police's incident referral was refused after the commission's was acknowledged"
            );
            Err(failure.into_service_error())
        }
        _ => Ok(()),
    }
}

/// The commission's referral was refused: the police's (still queued) is withdrawn and the
/// incident is not referred; a report bypassing the director is withdrawn whole. One transaction.
async fn undo_referral(host: &AgencyHost, commission_key: &str) -> ServiceResult<()> {
    let mut tx = host.begin().await?;
    let Some(row) = sqlx::query(
        "SELECT incident_id, police_key, director_implicated FROM residential_incident_work \
         WHERE commission_key = $1",
    )
    .bind(commission_key)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(());
    };
    let incident_id: String = row.try_get(0)?;
    let police_key: Option<String> = row.try_get(1)?;
    sqlx::query("DELETE FROM sent_messages WHERE idempotency_key = $1 AND message_id IS NULL")
        .bind(police_key)
        .execute(&mut *tx)
        .await?;
    if row.try_get::<i64, _>(2)? != 0 {
        sqlx::query("DELETE FROM residential_incident_work WHERE incident_id = $1")
            .bind(&incident_id)
            .execute(&mut *tx)
            .await?;
    } else {
        sqlx::query(
            "UPDATE residential_incident_work SET commission_key = NULL, police_key = NULL, \
             referred_by_user_id = NULL, version = version + 1 WHERE incident_id = $1",
        )
        .bind(&incident_id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    tracing::warn!(incident_id = %incident_id, "incident referral refused by the gateway: withdrawn");
    Ok(())
}

async fn undo_health(host: &AgencyHost, key: &str) -> ServiceResult<()> {
    sqlx::query("DELETE FROM residential_health_referrals WHERE message_key = $1")
        .bind(key)
        .execute(host.pool())
        .await?;
    Ok(())
}

/// Pushes what the gateway could not take when it was made: the commissions' referrals, then the
/// police's whose commission's went, then the health referrals.
pub(crate) async fn push_pending(host: &AgencyHost) {
    host.push_pending(
        "SELECT w.commission_key FROM residential_incident_work w \
         JOIN sent_messages s ON s.idempotency_key = w.commission_key \
         WHERE s.message_id IS NULL ORDER BY w.updated_at LIMIT 100",
        "incident referral to the commission",
        |key| async move { undo_referral(host, &key).await },
    )
    .await;
    host.push_pending(
        "SELECT w.police_key FROM residential_incident_work w \
         JOIN sent_messages s ON s.idempotency_key = w.police_key \
         JOIN sent_messages c ON c.idempotency_key = w.commission_key \
         WHERE s.message_id IS NULL AND c.message_id IS NOT NULL \
         ORDER BY w.updated_at LIMIT 100",
        "incident referral to the police",
        |_key| async { Ok(()) },
    )
    .await;
    host.push_pending(
        "SELECT h.message_key FROM residential_health_referrals h \
         JOIN sent_messages s ON s.idempotency_key = h.message_key \
         WHERE s.message_id IS NULL ORDER BY h.created_at LIMIT 100",
        "health referral",
        |key| async move { undo_health(host, &key).await },
    )
    .await;
}

#[tonic::async_trait]
impl ResidentialIncidents for ResidentialIncidentsApi {
    async fn assess_incident(
        &self,
        request: Request<AssessIncidentRequest>,
    ) -> Result<Response<ResidentialIncident>, Status> {
        let user = acting_user(&request)?;
        Ok(Response::new(
            self.assess(&user, request.into_inner()).await?,
        ))
    }

    async fn refer_incident(
        &self,
        request: Request<ReferIncidentRequest>,
    ) -> Result<Response<ReferIncidentResponse>, Status> {
        let user = acting_user(&request)?;
        Ok(Response::new(
            self.refer(&user, request.into_inner()).await?,
        ))
    }

    async fn refer_injured_child(
        &self,
        request: Request<ReferInjuredChildRequest>,
    ) -> Result<Response<ReferInjuredChildResponse>, Status> {
        let user = acting_user(&request)?;
        Ok(Response::new(
            self.refer_injured(&user, request.into_inner()).await?,
        ))
    }

    async fn close_incident(
        &self,
        request: Request<CloseIncidentRequest>,
    ) -> Result<Response<ResidentialIncident>, Status> {
        let user = acting_user(&request)?;
        Ok(Response::new(
            self.close(&user, request.into_inner()).await?,
        ))
    }

    async fn report_bypassing_director(
        &self,
        request: Request<ReportBypassingDirectorRequest>,
    ) -> Result<Response<ReferIncidentResponse>, Status> {
        let user = acting_user(&request)?;
        Ok(Response::new(
            self.bypass(&user, request.into_inner()).await?,
        ))
    }

    async fn get_residential_incident(
        &self,
        request: Request<GetResidentialIncidentRequest>,
    ) -> Result<Response<ResidentialIncident>, Status> {
        let user = acting_user(&request)?;
        Ok(Response::new(self.get(&user, request.into_inner()).await?))
    }

    async fn list_protection_instructions(
        &self,
        request: Request<referral_proto::v1::ListProtectionInstructionsRequest>,
    ) -> Result<Response<referral_proto::v1::ListProtectionInstructionsResponse>, Status> {
        acting_user(&request)?;
        Ok(Response::new(instructions::list(&self.host).await?))
    }

    async fn acknowledge_instruction(
        &self,
        request: Request<referral_proto::v1::AcknowledgeInstructionRequest>,
    ) -> Result<Response<referral_proto::v1::ReceivedInstruction>, Status> {
        let user = acting_user(&request)?;
        Ok(Response::new(
            instructions::acknowledge(&self.host, &user, request.into_inner()).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use referral_proto::v1::{InjuredPerson, InvolvedChild};

    use super::*;

    #[test]
    fn codes_round_trip() {
        assert_eq!(codes(&[1, 5]), ",1,5,");
        assert_eq!(parse_codes(",1,5,"), vec![1, 5]);
        assert!(parse_codes(",").is_empty());
    }

    #[test]
    fn the_children_of_a_report_carry_their_injuries() {
        let report = IncidentReport {
            children: vec![
                InvolvedChild {
                    full_name: "Асанов Ерлан".into(),
                    role: 2,
                    ..Default::default()
                },
                InvolvedChild {
                    full_name: "Бекова Дана".into(),
                    role: 1,
                    ..Default::default()
                },
            ],
            injured: vec![InjuredPerson {
                full_name: "Асанов Ерлан".into(),
                injuries: "сынық".into(),
            }],
            sent_for_medical_help: true,
            ..Default::default()
        };
        let children = children_of(&report);
        assert!(children[0].injured && children[0].referred_for_medical_care);
        assert_eq!(children[0].injuries, "сынық");
        assert!(!children[1].injured && !children[1].referred_for_medical_care);
    }
}
