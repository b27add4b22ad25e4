//! The `CaseFiles` service: the commission's case file for its curators, secretary and chair,
//! behind the same bearer-token check as the staff API.
//!
//! Every change follows one path: the caller's role, then every field ([`crate::validation`]),
//! then the case and the caller's right to it ([`crate::access`]), then, for changes with an
//! idempotency key, a replay of the same request; then one transaction that claims the case's
//! version ([`crate::case::claim`]: a stale `base_version` is `ABORTED` with the current version),
//! checks the stage (`FAILED_PRECONDITION`), writes the change's rows, its case event and its
//! messages to other agencies, and commits. After the commit the outbox is pushed
//! ([`crate::outbox`]); a gateway that is not reachable delays the event and the messages, never
//! the change.

use std::sync::Arc;

use jiff::{Timestamp, civil::Date};
use prost::Message as _;
use referral_agency::{AgencyHost, acting_user, forms::form};
use referral_core::{
    FieldViolations, ServiceError, ServiceResult,
    db::Row as _,
    time,
    validate::{age_years, calendar_date},
};
use referral_proto::v1::{
    ActingUser, ActionAssignment, ActionDeadline, ActionProgressState, CaseChange, CaseEventKind,
    CaseFile, CaseStage, CloseCaseRequest, ClosureRecord, ConfidentialityLabel, DisclosureGrant,
    DocumentChunk, DocumentInfo, DownloadDocumentRequest, Envelope, FileAssessmentRequest,
    FileSupportPlanRequest, FormKind, GetCaseRequest, GrantDisclosureRequest, InformationRequest,
    ListCasesRequest, ListCasesResponse, ListDisclosureGrantsRequest, ListDisclosureGrantsResponse,
    ListDisclosuresRequest, ListDisclosuresResponse, Payload, PlanAction, PurposeOfUse,
    RecordContactRequest, RecordReviewRequest, ReopenCaseRequest, RequestInformationRequest,
    ReviewDecision, ReviewMinutes, RevokeDisclosureRequest, RiskLevel, UploadDocumentChunk,
    case_files_server::CaseFiles, payload::Form, upload_document_chunk::Part,
};
use sqlx::AnyConnection;
use tokio_stream::Iter;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    access::{self, Access},
    case::{self, CaseError, CaseRow, RecordedChange},
    documents,
    outbox::Outbox,
    read,
    validation::{self, District},
};

/// The `CaseFiles` service of one commission.
#[derive(Debug, Clone)]
pub struct CaseFilesApi {
    pub(crate) host: AgencyHost,
    outbox: Arc<Outbox>,
}

/// The stream `DownloadDocument` answers with.
pub type ChunkStream = Iter<std::vec::IntoIter<Result<DocumentChunk, Status>>>;

/// What the curator and the case's child look like to a message.
struct CaseParties {
    curator_name: String,
    curator_contact: String,
    child_full_name: String,
    child_date_of_birth: Option<Date>,
}

impl CaseParties {
    /// The child's first name: the first word of the name as form K gives it (given name first).
    fn child_first_name(&self) -> String {
        self.child_full_name
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    fn child_age(&self, today: Date) -> u32 {
        self.child_date_of_birth
            .map(|born| u32::try_from(age_years(born, today)).unwrap_or_default())
            .unwrap_or_default()
    }
}

fn sha_of<M: prost::Message>(request: &M) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(request.encode_to_vec()))
}

fn change(row: &CaseRow, stage: CaseStage) -> CaseChange {
    CaseChange {
        case_reference: row.case_reference.clone(),
        version: row.version,
        stage: stage as i32,
    }
}

impl CaseFilesApi {
    pub fn new(host: AgencyHost, outbox: Arc<Outbox>) -> Self {
        Self { host, outbox }
    }

    fn district(&self, today: Date) -> District<'_> {
        District {
            directory: self.host.directory(),
            district_id: &self.host.agency().district,
            commission_id: self.host.agency_id(),
            today,
        }
    }

    fn today_at(&self, now: Timestamp) -> Date {
        now.to_zoned(self.host.time_zone().clone()).date()
    }

    /// The case, if the caller may work it.
    async fn workable(&self, user: &ActingUser, case_reference: &str) -> ServiceResult<CaseRow> {
        let mut conn = self.host.pool().acquire().await?;
        let row = case::load(&mut conn, case_reference)
            .await?
            .ok_or(CaseError::NotFound)?;
        access::check_case(user, &row.curator_user_id)?;
        Ok(row)
    }

    /// The answer to a keyed change already made with the same request, if there is one.
    async fn replay(
        &self,
        case_reference: &str,
        key: &str,
        request_sha256: &str,
    ) -> ServiceResult<Option<CaseChange>> {
        let mut conn = self.host.pool().acquire().await?;
        match case::recorded_change(&mut conn, case_reference, key).await? {
            None => Ok(None),
            Some(recorded) if recorded.request_sha256 == request_sha256 => {
                drop(conn);
                // Whatever the first call left unpushed goes now.
                self.outbox.flush(&self.host).await;
                Ok(Some(CaseChange {
                    case_reference: case_reference.to_owned(),
                    version: recorded.version,
                    stage: recorded.stage as i32,
                }))
            }
            Some(_) => Err(ServiceError::AlreadyExists(
                "this idempotency key was already used for a different change of this case".into(),
            )),
        }
    }

    /// What the messages of a change say about the curator and the child.
    async fn parties(&self, conn: &mut AnyConnection, row: &CaseRow) -> ServiceResult<CaseParties> {
        let k = read::help_request(conn, &row.help_request_message_id).await?;
        let child = match k.as_ref().and_then(form) {
            Some(Form::HelpRequest(k)) => k.child.clone(),
            _ => None,
        }
        .unwrap_or_default();
        let curator = self
            .host
            .directory()
            .user(self.host.agency_id(), &row.curator_user_id);
        Ok(CaseParties {
            curator_name: curator.map(|c| c.full_name.clone()).unwrap_or_default(),
            curator_contact: curator.map(|c| c.contact.clone()).unwrap_or_default(),
            child_full_name: child.full_name,
            child_date_of_birth: child.date_of_birth.as_ref().and_then(calendar_date),
        })
    }

    /// An envelope of this commission about case `row`.
    fn envelope(&self, row: &CaseRow, user: &ActingUser, out: Outgoing<'_>) -> Envelope {
        Envelope {
            message_id: String::new(),
            idempotency_key: out.key,
            sender_agency_id: self.host.agency_id().to_owned(),
            recipient_agency_id: out.recipient.to_owned(),
            acting_user: Some(user.clone()),
            purpose_of_use: out.purpose as i32,
            case_reference: row.case_reference.clone(),
            form_kind: out.kind as i32,
            confidentiality: out.confidentiality as i32,
            created_at: None,
            in_reply_to: String::new(),
            payload: Some(Payload {
                form: Some(out.payload),
            }),
            linked_referrals: Vec::new(),
            view_sections: Vec::new(),
        }
    }

    /// Queues an action assignment for `action` (a row of another agency).
    #[expect(
        clippy::too_many_arguments,
        reason = "the change's context, passed through"
    )]
    async fn assign(
        &self,
        conn: &mut AnyConnection,
        row: &CaseRow,
        user: &ActingUser,
        parties: &CaseParties,
        action: &PlanAction,
        position: u64,
        today: Date,
        now: Timestamp,
    ) -> ServiceResult<String> {
        let key = case::message_key(
            "assign",
            &row.case_reference,
            row.version,
            &action.number.to_string(),
        );
        let envelope = self.envelope(
            row,
            user,
            Outgoing {
                key: key.clone(),
                recipient: &action.responsible_agency_id,
                kind: FormKind::ActionAssignment,
                purpose: PurposeOfUse::CoordinationOfCare,
                confidentiality: ConfidentialityLabel::Normal,
                payload: Form::ActionAssignment(ActionAssignment {
                    case_reference: row.case_reference.clone(),
                    action: Some(action.clone()),
                    child_first_name: parties.child_first_name(),
                    child_age_years: parties.child_age(today),
                    curator_name: parties.curator_name.clone(),
                    curator_contact: parties.curator_contact.clone(),
                }),
            },
        );
        case::queue_message(
            &self.host,
            conn,
            row.version,
            position,
            user,
            &envelope,
            now,
        )
        .await?;
        Ok(key)
    }

    /// Commits a change and pushes its outbox.
    async fn commit(
        &self,
        tx: sqlx::Transaction<'static, sqlx::Any>,
        result: CaseChange,
        pushes: bool,
    ) -> ServiceResult<CaseChange> {
        tx.commit().await?;
        tracing::info!(
            case_reference = %result.case_reference,
            version = result.version,
            stage = CaseStage::try_from(result.stage).unwrap_or(CaseStage::Unspecified).as_str_name(),
            "case changed"
        );
        if pushes {
            self.outbox.flush(&self.host).await;
        }
        Ok(result)
    }

    async fn list_cases(
        &self,
        user: &ActingUser,
        request: &ListCasesRequest,
    ) -> ServiceResult<ListCasesResponse> {
        let curator = match access::of(user)? {
            Access::Commission => request.curator_user_id.as_str(),
            Access::Curator
                if request.curator_user_id.is_empty()
                    || request.curator_user_id == user.user_id =>
            {
                user.user_id.as_str()
            }
            Access::Curator => {
                return Err(ServiceError::PermissionDenied(
                    "a curator lists only their own cases".into(),
                ));
            }
        };
        let mut conn = self.host.pool().acquire().await?;
        let rows = read::list(&mut conn, curator, request.include_closed).await?;
        let cases = rows
            .iter()
            .map(|(row, k)| {
                let mut summary = read::summary(
                    row,
                    self.host.directory(),
                    self.host.agency_id(),
                    k.as_ref(),
                );
                // The risk level is the assessment's finding: the register shows it to the case's
                // curator only (the gateway's policy keeps L for the team).
                if row.curator_user_id != user.user_id {
                    summary.risk_level = RiskLevel::Unspecified as i32;
                }
                summary
            })
            .collect();
        Ok(ListCasesResponse { cases })
    }

    async fn get_case(
        &self,
        user: &ActingUser,
        request: &GetCaseRequest,
    ) -> ServiceResult<CaseFile> {
        access::of(user)?;
        let mut v = FieldViolations::new();
        validation::case_reference(&mut v, &request.case_reference);
        v.into_result()?;
        let row = self.workable(user, &request.case_reference).await?;
        let mut conn = self.host.pool().acquire().await?;
        let file = read::case_file(
            &mut conn,
            &row,
            self.host.directory(),
            self.host.agency_id(),
        )
        .await?;
        drop(conn);
        // The gateway's policy decides what of the file this person sees, and records the read.
        crate::disclosure::filter_read(&self.host, user, request, file).await
    }

    async fn record_contact(
        &self,
        user: &ActingUser,
        request: RecordContactRequest,
    ) -> ServiceResult<CaseChange> {
        access::of(user)?;
        let now = self.host.clock().now();
        let mut v = FieldViolations::new();
        validation::case_reference(&mut v, &request.case_reference);
        validation::base_version(&mut v, request.base_version);
        validation::contact(&mut v, request.contact.as_ref(), self.today_at(now));
        v.into_result()?;
        self.workable(user, &request.case_reference).await?;

        let mut tx = self.host.begin().await?;
        let row = case::claim(&mut tx, &request.case_reference, request.base_version, now).await?;
        row.check_open()?;
        sqlx::query(
            "INSERT INTO case_contacts (case_reference, case_version, contact, recorded_by, \
             recorded_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(row.case_reference.as_str())
        .bind(i64::try_from(row.version).unwrap_or(i64::MAX))
        .bind(request.contact.unwrap_or_default().encode_to_vec())
        .bind(user.user_id.as_str())
        .bind(time::to_micros(now))
        .execute(&mut *tx)
        .await?;
        self.commit(tx, change(&row, row.stage), false).await
    }

    async fn request_information(
        &self,
        user: &ActingUser,
        request: RequestInformationRequest,
    ) -> ServiceResult<CaseChange> {
        access::of(user)?;
        let now = self.host.clock().now();
        let today = self.today_at(now);
        let mut v = FieldViolations::new();
        validation::case_reference(&mut v, &request.case_reference);
        validation::base_version(&mut v, request.base_version);
        validation::information_request(&mut v, &request, &self.district(today));
        v.into_result()?;
        let row = self.workable(user, &request.case_reference).await?;
        crate::disclosure::check_may_reach(
            &self.host,
            &row,
            [request.recipient_agency_id.as_str()],
            "recipient_agency_id",
        )
        .await?;
        let sha = sha_of(&request);
        if let Some(done) = self
            .replay(&request.case_reference, &request.idempotency_key, &sha)
            .await?
        {
            return Ok(done);
        }

        let mut tx = self.host.begin().await?;
        let row = case::claim(&mut tx, &request.case_reference, request.base_version, now).await?;
        row.check_open()?;
        let parties = self.parties(&mut tx, &row).await?;
        let asked = InformationRequest {
            case_reference: row.case_reference.clone(),
            child_full_name: parties.child_full_name.clone(),
            child_date_of_birth: parties.child_date_of_birth.map(validation::to_calendar),
            questions: request.questions.clone(),
            answer_by: request
                .answer_by
                .filter(|d| !referral_agency::checks::is_unset(Some(d))),
            curator_user_id: row.curator_user_id.clone(),
            curator_name: parties.curator_name.clone(),
            curator_contact: parties.curator_contact.clone(),
        };
        let key = case::message_key(
            "info",
            &row.case_reference,
            row.version,
            &request.idempotency_key,
        );
        let envelope = self.envelope(
            &row,
            user,
            Outgoing {
                key: key.clone(),
                recipient: &request.recipient_agency_id,
                kind: FormKind::InformationRequest,
                purpose: PurposeOfUse::CareManagement,
                confidentiality: ConfidentialityLabel::Restricted,
                payload: Form::InformationRequest(asked.clone()),
            },
        );
        case::queue_message(&self.host, &mut tx, row.version, 1, user, &envelope, now).await?;
        sqlx::query(
            "INSERT INTO information_requests (request_key, case_reference, cycle, \
             recipient_agency_id, request, requested_by, requested_at, response_message_id, \
             response, answered_at) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, NULL)",
        )
        .bind(key.as_str())
        .bind(row.case_reference.as_str())
        .bind(i64::from(row.cycle))
        .bind(request.recipient_agency_id.as_str())
        .bind(asked.encode_to_vec())
        .bind(user.user_id.as_str())
        .bind(time::to_micros(now))
        .execute(&mut *tx)
        .await?;
        let result = change(&row, row.stage);
        case::record_change(
            &mut tx,
            &row.case_reference,
            &request.idempotency_key,
            &RecordedChange {
                request_sha256: sha,
                version: row.version,
                stage: row.stage,
            },
        )
        .await?;
        self.commit(tx, result, true).await
    }

    async fn file_assessment(
        &self,
        user: &ActingUser,
        request: FileAssessmentRequest,
    ) -> ServiceResult<CaseChange> {
        access::of(user)?;
        let now = self.host.clock().now();
        let mut v = FieldViolations::new();
        validation::case_reference(&mut v, &request.case_reference);
        validation::base_version(&mut v, request.base_version);
        validation::assessment(&mut v, &request, self.today_at(now), now);
        v.into_result()?;
        self.workable(user, &request.case_reference).await?;

        let mut tx = self.host.begin().await?;
        let mut row =
            case::claim(&mut tx, &request.case_reference, request.base_version, now).await?;
        row.check_stage("FileAssessment", CaseStage::Assessment)?;
        let risk = RiskLevel::try_from(request.risk_level).unwrap_or(RiskLevel::Unspecified);
        sqlx::query(
            "UPDATE case_cycles SET assessment = $1, risk_level = $2, assessment_filed_at = $3 \
             WHERE case_reference = $4 AND cycle = $5",
        )
        .bind(request.assessment.unwrap_or_default().encode_to_vec())
        .bind(risk.as_str_name())
        .bind(time::to_micros(now))
        .bind(row.case_reference.as_str())
        .bind(i64::from(row.cycle))
        .execute(&mut *tx)
        .await?;
        case::set_stage(
            &mut tx,
            &row.case_reference,
            CaseStage::Planning,
            Some(risk),
        )
        .await?;
        row.risk_level = risk;
        let event = case::event(&row, CaseEventKind::AssessmentFiled, now);
        case::queue_event(&mut tx, row.version, user, event).await?;
        self.commit(tx, change(&row, CaseStage::Planning), true)
            .await
    }

    async fn file_support_plan(
        &self,
        user: &ActingUser,
        request: FileSupportPlanRequest,
    ) -> ServiceResult<CaseChange> {
        access::of(user)?;
        let now = self.host.clock().now();
        let today = self.today_at(now);
        let mut v = FieldViolations::new();
        validation::case_reference(&mut v, &request.case_reference);
        validation::base_version(&mut v, request.base_version);
        validation::support_plan(&mut v, &request, &self.district(today), now);
        v.into_result()?;
        let row = self.workable(user, &request.case_reference).await?;
        crate::disclosure::check_may_reach(
            &self.host,
            &row,
            request
                .plan
                .iter()
                .flat_map(|p| p.actions.iter())
                .map(|a| a.responsible_agency_id.as_str()),
            "plan.actions.responsible_agency_id",
        )
        .await?;
        let sha = sha_of(&request);
        if let Some(done) = self
            .replay(&request.case_reference, &request.idempotency_key, &sha)
            .await?
        {
            return Ok(done);
        }

        let mut tx = self.host.begin().await?;
        let row = case::claim(&mut tx, &request.case_reference, request.base_version, now).await?;
        row.check_stage("FileSupportPlan", CaseStage::Planning)?;
        let plan = request.plan.unwrap_or_default();
        sqlx::query(
            "UPDATE case_cycles SET support_plan = $1, support_plan_filed_at = $2 \
             WHERE case_reference = $3 AND cycle = $4",
        )
        .bind(plan.encode_to_vec())
        .bind(time::to_micros(now))
        .bind(row.case_reference.as_str())
        .bind(i64::from(row.cycle))
        .execute(&mut *tx)
        .await?;
        let parties = self.parties(&mut tx, &row).await?;
        let mut position = 0;
        for action in &plan.actions {
            let assignment_key = if action.responsible_agency_id == self.host.agency_id() {
                None
            } else {
                position += 1;
                Some(
                    self.assign(&mut tx, &row, user, &parties, action, position, today, now)
                        .await?,
                )
            };
            insert_action(
                &mut tx,
                &row,
                0,
                action,
                &Carried {
                    assignment_key,
                    ..Carried::default()
                },
            )
            .await?;
        }
        case::set_stage(&mut tx, &row.case_reference, CaseStage::Support, None).await?;
        let mut event = case::event(&row, CaseEventKind::SupportPlanFiled, now);
        event.actions = plan.actions.iter().map(deadline_of).collect();
        event.next_review_on = request
            .first_review_on
            .filter(|d| !referral_agency::checks::is_unset(Some(d)));
        case::queue_event(&mut tx, row.version, user, event).await?;
        let result = change(&row, CaseStage::Support);
        case::record_change(
            &mut tx,
            &row.case_reference,
            &request.idempotency_key,
            &RecordedChange {
                request_sha256: sha,
                version: row.version,
                stage: CaseStage::Support,
            },
        )
        .await?;
        self.commit(tx, result, true).await
    }

    async fn record_review(
        &self,
        user: &ActingUser,
        request: RecordReviewRequest,
    ) -> ServiceResult<CaseChange> {
        access::of(user)?;
        let now = self.host.clock().now();
        let today = self.today_at(now);
        let mut v = FieldViolations::new();
        validation::case_reference(&mut v, &request.case_reference);
        validation::base_version(&mut v, request.base_version);
        validation::review(&mut v, &request, &self.district(today));
        v.into_result()?;
        let review = request.review.clone().unwrap_or_default();
        if review.decision == ReviewDecision::RecommendPlacementOrSeparation as i32 {
            access::check_placement(user)?;
        }
        let row = self.workable(user, &request.case_reference).await?;
        crate::disclosure::check_may_reach(
            &self.host,
            &row,
            review
                .revised_actions
                .iter()
                .map(|a| a.responsible_agency_id.as_str()),
            "review.revised_actions.responsible_agency_id",
        )
        .await?;
        let sha = sha_of(&request);
        if let Some(done) = self
            .replay(&request.case_reference, &request.idempotency_key, &sha)
            .await?
        {
            return Ok(done);
        }

        let mut tx = self.host.begin().await?;
        let row = case::claim(&mut tx, &request.case_reference, request.base_version, now).await?;
        row.check_stage("RecordReview", CaseStage::Support)?;
        let mut plan = read::cycle_plan(&mut tx, &row.case_reference, row.cycle)
            .await?
            .ok_or_else(|| {
                ServiceError::internal(anyhow::anyhow!("a case in support has no plan"))
            })?;
        plan.reviews.push(review.clone());
        let revision = u32::try_from(plan.reviews.len()).unwrap_or(u32::MAX);
        sqlx::query(
            "UPDATE case_cycles SET support_plan = $1 WHERE case_reference = $2 AND cycle = $3",
        )
        .bind(plan.encode_to_vec())
        .bind(row.case_reference.as_str())
        .bind(i64::from(row.cycle))
        .execute(&mut *tx)
        .await?;

        let parties = self.parties(&mut tx, &row).await?;
        let old = rows_in_force(&mut tx, &row).await?;
        let mut position = 0;
        let in_force: Vec<PlanAction> = if review.revised_actions.is_empty() {
            old.iter().map(|(action, _)| action.clone()).collect()
        } else {
            sqlx::query(
                "UPDATE case_actions SET in_force = 0 \
                 WHERE case_reference = $1 AND cycle = $2 AND in_force = 1",
            )
            .bind(row.case_reference.as_str())
            .bind(i64::from(row.cycle))
            .execute(&mut *tx)
            .await?;
            for action in &review.revised_actions {
                let unchanged = old.iter().find(|(o, _)| o == action);
                let carried = match unchanged {
                    Some((_, carried)) => carried.clone(),
                    None if action.responsible_agency_id == self.host.agency_id() => {
                        Carried::default()
                    }
                    None => {
                        position += 1;
                        let key = self
                            .assign(&mut tx, &row, user, &parties, action, position, today, now)
                            .await?;
                        Carried {
                            assignment_key: Some(key),
                            ..Carried::default()
                        }
                    }
                };
                insert_action(&mut tx, &row, revision, action, &carried).await?;
            }
            review.revised_actions.clone()
        };

        for agency in &request.participating_agency_ids {
            position += 1;
            let key = case::message_key("minutes", &row.case_reference, row.version, agency);
            let envelope = self.envelope(
                &row,
                user,
                Outgoing {
                    key,
                    recipient: agency,
                    kind: FormKind::ReviewMinutes,
                    purpose: PurposeOfUse::CoordinationOfCare,
                    confidentiality: ConfidentialityLabel::Restricted,
                    payload: Form::ReviewMinutes(ReviewMinutes {
                        case_reference: row.case_reference.clone(),
                        review: Some(review.clone()),
                        curator_name: parties.curator_name.clone(),
                        curator_contact: parties.curator_contact.clone(),
                    }),
                },
            );
            case::queue_message(
                &self.host,
                &mut tx,
                row.version,
                position,
                user,
                &envelope,
                now,
            )
            .await?;
        }

        let mut event = case::event(&row, CaseEventKind::ReviewHeld, now);
        event.actions = in_force.iter().map(deadline_of).collect();
        event.next_review_on = review
            .next_review_on
            .filter(|d| !referral_agency::checks::is_unset(Some(d)));
        case::queue_event(&mut tx, row.version, user, event).await?;
        let result = change(&row, CaseStage::Support);
        case::record_change(
            &mut tx,
            &row.case_reference,
            &request.idempotency_key,
            &RecordedChange {
                request_sha256: sha,
                version: row.version,
                stage: CaseStage::Support,
            },
        )
        .await?;
        self.commit(tx, result, true).await
    }

    async fn close_case(
        &self,
        user: &ActingUser,
        request: CloseCaseRequest,
    ) -> ServiceResult<CaseChange> {
        access::of(user)?;
        let now = self.host.clock().now();
        let mut v = FieldViolations::new();
        validation::case_reference(&mut v, &request.case_reference);
        validation::base_version(&mut v, request.base_version);
        validation::close(&mut v, &request);
        v.into_result()?;
        self.workable(user, &request.case_reference).await?;

        let mut tx = self.host.begin().await?;
        let row = case::claim(&mut tx, &request.case_reference, request.base_version, now).await?;
        row.check_open()?;
        let closure = ClosureRecord {
            criteria: request.criteria,
            family_told_how_to_ask_again: request.family_told_how_to_ask_again,
            note: request.note,
            closed_at: Some(time::to_proto(now)),
            closed_by: user.user_id.clone(),
        };
        sqlx::query("UPDATE case_cycles SET closure = $1 WHERE case_reference = $2 AND cycle = $3")
            .bind(closure.encode_to_vec())
            .bind(row.case_reference.as_str())
            .bind(i64::from(row.cycle))
            .execute(&mut *tx)
            .await?;
        case::set_stage(&mut tx, &row.case_reference, CaseStage::Closed, None).await?;
        let event = case::event(&row, CaseEventKind::CaseClosed, now);
        case::queue_event(&mut tx, row.version, user, event).await?;
        self.commit(tx, change(&row, CaseStage::Closed), true).await
    }

    async fn reopen_case(
        &self,
        user: &ActingUser,
        request: ReopenCaseRequest,
    ) -> ServiceResult<CaseChange> {
        access::of(user)?;
        let now = self.host.clock().now();
        let mut v = FieldViolations::new();
        validation::case_reference(&mut v, &request.case_reference);
        validation::base_version(&mut v, request.base_version);
        validation::reopen(&mut v, &request);
        v.into_result()?;
        self.workable(user, &request.case_reference).await?;

        let mut tx = self.host.begin().await?;
        let mut row =
            case::claim(&mut tx, &request.case_reference, request.base_version, now).await?;
        row.check_stage("ReopenCase", CaseStage::Closed)?;
        row.cycle += 1;
        row.risk_level = RiskLevel::Unspecified;
        case::insert_cycle(
            &mut tx,
            &row.case_reference,
            row.cycle,
            now,
            &request.reason,
        )
        .await?;
        sqlx::query(
            "UPDATE case_files SET cycle = $1, stage = $2, risk_level = $3 \
             WHERE case_reference = $4",
        )
        .bind(i64::from(row.cycle))
        .bind(CaseStage::Assessment.as_str_name())
        .bind(RiskLevel::Unspecified.as_str_name())
        .bind(row.case_reference.as_str())
        .execute(&mut *tx)
        .await?;
        let event = case::event(&row, CaseEventKind::CaseReopened, now);
        case::queue_event(&mut tx, row.version, user, event).await?;
        self.commit(tx, change(&row, CaseStage::Assessment), true)
            .await
    }

    async fn upload_document(
        &self,
        user: &ActingUser,
        mut stream: Streaming<UploadDocumentChunk>,
    ) -> Result<DocumentInfo, Status> {
        access::of(user)?;
        let metadata = match stream.message().await?.and_then(|chunk| chunk.part) {
            Some(Part::Metadata(metadata)) => metadata,
            _ => {
                return Err(ServiceError::invalid_field(
                    "metadata",
                    "required: the first chunk carries the metadata",
                )
                .into());
            }
        };
        let mut v = FieldViolations::new();
        validation::document_metadata(&mut v, &metadata);
        v.into_result()?;
        let row = self.workable(user, &metadata.case_reference).await?;
        row.check_open().map_err(ServiceError::from)?;
        if !row.decision_sent {
            return Err(ServiceError::from(CaseError::DecisionPending).into());
        }

        let mut content: Vec<u8> = Vec::new();
        // Until the longest signature has arrived, every chunk is checked against the types.
        let mut type_known = false;
        while let Some(chunk) = stream.message().await? {
            match chunk.part {
                Some(Part::Data(data)) => {
                    if content.len() + data.len() > documents::MAX_DOCUMENT_BYTES {
                        return Err(documents::too_large().into());
                    }
                    content.extend_from_slice(&data);
                    if !type_known {
                        if !documents::may_be_known(&content) {
                            return Err(documents::wrong_type().into());
                        }
                        type_known = content.len() >= documents::SIGNATURE_BYTES;
                    }
                }
                Some(Part::Metadata(_)) => {
                    return Err(ServiceError::invalid_field(
                        "metadata",
                        "only the first chunk carries the metadata",
                    )
                    .into());
                }
                None => {}
            }
        }
        if content.is_empty() {
            return Err(
                ServiceError::invalid_field("data", "required: the document's bytes").into(),
            );
        }
        let content_type = documents::content_type(&content).ok_or_else(documents::wrong_type)?;

        let now = self.host.clock().now();
        let document_id = uuid::Uuid::now_v7().to_string();
        let mut tx = self.host.begin().await.map_err(Status::from)?;
        // A document is a change of the case too: its version moves on (no base: documents are
        // only added), and a case closed meanwhile refuses it.
        let moved = sqlx::query(
            "UPDATE case_files SET version = version + 1, updated_at = $1 \
             WHERE case_reference = $2 AND stage <> $3",
        )
        .bind(time::to_micros(now))
        .bind(row.case_reference.as_str())
        .bind(CaseStage::Closed.as_str_name())
        .execute(&mut *tx)
        .await
        .map_err(|e| Status::from(ServiceError::from(e)))?
        .rows_affected();
        if moved == 0 {
            return Err(ServiceError::from(CaseError::Closed).into());
        }
        let info = documents::insert(
            &mut tx,
            &documents::NewDocument {
                document_id: &document_id,
                case_reference: &row.case_reference,
                title: &metadata.title,
                file_name: &metadata.file_name,
                content_type,
                content: &content,
                uploaded_by: &user.user_id,
                uploaded_at: now,
            },
        )
        .await?;
        tx.commit()
            .await
            .map_err(|e| Status::from(ServiceError::from(e)))?;
        tracing::info!(
            case_reference = %row.case_reference,
            document_id = %document_id,
            size_bytes = info.size_bytes,
            content_type,
            "document added to a case file"
        );
        Ok(info)
    }

    async fn download_document(
        &self,
        user: &ActingUser,
        request: &DownloadDocumentRequest,
    ) -> ServiceResult<Vec<DocumentChunk>> {
        access::of(user)?;
        let mut v = FieldViolations::new();
        validation::case_reference(&mut v, &request.case_reference);
        referral_agency::checks::message_id(&mut v, "document_id", &request.document_id);
        v.into_result()?;
        let row = self.workable(user, &request.case_reference).await?;
        // A document is part of the case record: the gateway's policy decides, and records it.
        crate::disclosure::check_section(
            &self.host,
            user,
            &row.case_reference,
            referral_proto::v1::Sensitivity::CaseRecord,
        )
        .await?;
        let mut conn = self.host.pool().acquire().await?;
        let (info, content) = documents::load(&mut conn, &row.case_reference, &request.document_id)
            .await?
            .ok_or_else(|| {
                ServiceError::NotFound("no document with this id in this case".into())
            })?;
        Ok(documents::chunks(info, &content))
    }
}

/// A message a change sends.
struct Outgoing<'a> {
    key: String,
    recipient: &'a str,
    kind: FormKind,
    purpose: PurposeOfUse,
    confidentiality: ConfidentialityLabel,
    payload: Form,
}

/// What a row keeps from the row it replaces when a review leaves it unchanged.
#[derive(Debug, Clone, Default)]
struct Carried {
    assignment_key: Option<String>,
    progress: Option<String>,
    last_note: String,
    last_reported_at: Option<i64>,
}

async fn insert_action(
    conn: &mut AnyConnection,
    row: &CaseRow,
    revision: u32,
    action: &PlanAction,
    carried: &Carried,
) -> ServiceResult<()> {
    sqlx::query(
        "INSERT INTO case_actions (case_reference, cycle, revision, number, action, \
         responsible_agency_id, in_force, assignment_key, progress, last_note, last_reported_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $8, $9, $10)",
    )
    .bind(row.case_reference.as_str())
    .bind(i64::from(row.cycle))
    .bind(i64::from(revision))
    .bind(i64::from(action.number))
    .bind(action.encode_to_vec())
    .bind(action.responsible_agency_id.as_str())
    .bind(carried.assignment_key.as_deref())
    .bind(
        carried
            .progress
            .as_deref()
            .unwrap_or(ActionProgressState::Unspecified.as_str_name()),
    )
    .bind(carried.last_note.as_str())
    .bind(carried.last_reported_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The rows in force of the case's current cycle, with what they carry.
async fn rows_in_force(
    conn: &mut AnyConnection,
    row: &CaseRow,
) -> ServiceResult<Vec<(PlanAction, Carried)>> {
    let rows = sqlx::query(
        "SELECT action, assignment_key, progress, last_note, last_reported_at FROM case_actions \
         WHERE case_reference = $1 AND cycle = $2 AND in_force = 1 ORDER BY number",
    )
    .bind(row.case_reference.as_str())
    .bind(i64::from(row.cycle))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            let action = PlanAction::decode(r.try_get::<Vec<u8>, _>(0)?.as_slice())
                .map_err(ServiceError::internal)?;
            Ok((
                action,
                Carried {
                    assignment_key: r.try_get(1)?,
                    progress: Some(r.try_get(2)?),
                    last_note: r.try_get(3)?,
                    last_reported_at: r.try_get(4)?,
                },
            ))
        })
        .collect()
}

/// What the deadline engine needs of an action row.
fn deadline_of(action: &PlanAction) -> ActionDeadline {
    ActionDeadline {
        number: action.number,
        due_on: action.due_on,
        responsible_agency_id: action.responsible_agency_id.clone(),
        // The engine needs no name: a plan row may name a family member, and the gateway's
        // store must not hold personal data it does not need.
        responsible_person: String::new(),
    }
}

fn into_status<T>(result: ServiceResult<T>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl CaseFiles for CaseFilesApi {
    async fn list_cases(
        &self,
        request: Request<ListCasesRequest>,
    ) -> Result<Response<ListCasesResponse>, Status> {
        let user = acting_user(&request)?;
        into_status(self.list_cases(&user, request.get_ref()).await)
    }

    async fn get_case(
        &self,
        request: Request<GetCaseRequest>,
    ) -> Result<Response<CaseFile>, Status> {
        let user = acting_user(&request)?;
        into_status(self.get_case(&user, request.get_ref()).await)
    }

    async fn grant_disclosure(
        &self,
        request: Request<GrantDisclosureRequest>,
    ) -> Result<Response<DisclosureGrant>, Status> {
        let user = acting_user(&request)?;
        into_status(crate::disclosure::grant(&self.host, user, request.into_inner()).await)
    }

    async fn revoke_disclosure(
        &self,
        request: Request<RevokeDisclosureRequest>,
    ) -> Result<Response<DisclosureGrant>, Status> {
        let user = acting_user(&request)?;
        into_status(crate::disclosure::revoke(&self.host, user, request.into_inner()).await)
    }

    async fn list_disclosure_grants(
        &self,
        request: Request<ListDisclosureGrantsRequest>,
    ) -> Result<Response<ListDisclosureGrantsResponse>, Status> {
        let user = acting_user(&request)?;
        into_status(crate::disclosure::list_grants(&self.host, user, request.into_inner()).await)
    }

    async fn list_disclosures(
        &self,
        request: Request<ListDisclosuresRequest>,
    ) -> Result<Response<ListDisclosuresResponse>, Status> {
        let user = acting_user(&request)?;
        into_status(
            crate::disclosure::list_disclosures(&self.host, user, request.into_inner()).await,
        )
    }

    async fn record_contact(
        &self,
        request: Request<RecordContactRequest>,
    ) -> Result<Response<CaseChange>, Status> {
        let user = acting_user(&request)?;
        into_status(self.record_contact(&user, request.into_inner()).await)
    }

    async fn upload_document(
        &self,
        request: Request<Streaming<UploadDocumentChunk>>,
    ) -> Result<Response<DocumentInfo>, Status> {
        let user = acting_user(&request)?;
        self.upload_document(&user, request.into_inner())
            .await
            .map(Response::new)
    }

    type DownloadDocumentStream = ChunkStream;

    async fn download_document(
        &self,
        request: Request<DownloadDocumentRequest>,
    ) -> Result<Response<Self::DownloadDocumentStream>, Status> {
        let user = acting_user(&request)?;
        let chunks = self.download_document(&user, request.get_ref()).await?;
        Ok(Response::new(tokio_stream::iter(
            chunks.into_iter().map(Ok).collect::<Vec<_>>(),
        )))
    }

    async fn request_information(
        &self,
        request: Request<RequestInformationRequest>,
    ) -> Result<Response<CaseChange>, Status> {
        let user = acting_user(&request)?;
        into_status(self.request_information(&user, request.into_inner()).await)
    }

    async fn file_assessment(
        &self,
        request: Request<FileAssessmentRequest>,
    ) -> Result<Response<CaseChange>, Status> {
        let user = acting_user(&request)?;
        into_status(self.file_assessment(&user, request.into_inner()).await)
    }

    async fn file_support_plan(
        &self,
        request: Request<FileSupportPlanRequest>,
    ) -> Result<Response<CaseChange>, Status> {
        let user = acting_user(&request)?;
        into_status(self.file_support_plan(&user, request.into_inner()).await)
    }

    async fn record_review(
        &self,
        request: Request<RecordReviewRequest>,
    ) -> Result<Response<CaseChange>, Status> {
        let user = acting_user(&request)?;
        into_status(self.record_review(&user, request.into_inner()).await)
    }

    async fn close_case(
        &self,
        request: Request<CloseCaseRequest>,
    ) -> Result<Response<CaseChange>, Status> {
        let user = acting_user(&request)?;
        into_status(self.close_case(&user, request.into_inner()).await)
    }

    async fn reopen_case(
        &self,
        request: Request<ReopenCaseRequest>,
    ) -> Result<Response<CaseChange>, Status> {
        let user = acting_user(&request)?;
        into_status(self.reopen_case(&user, request.into_inner()).await)
    }
}
