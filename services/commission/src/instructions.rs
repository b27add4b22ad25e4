//! Protection instructions (issue 5, M:3010-3040): the commission's decision to protect a child
//! of a residential institution (a move to another institution or a family-type setting, or
//! another measure), sent to the institution told to act as a PROTECTION_INSTRUCTION through the
//! gateway, and the institution's acknowledgements filed back in the case.
//!
//! * Who: the case's curator, the secretary or the chair (`access::check_case`), like every
//!   change of a case.
//! * Confidentiality first (DOMAIN.md section 5 rule 2, M:3030-3040): before telling an
//!   institution anything of a case, the commission weighs whether it helps the child or breaks
//!   confidentiality or endangers the victim or witnesses. The request must say so
//!   (`confidentiality_weighed`) with the written reason, kept in the case file.
//! * To whom: the residential institution the case's report says the child lives in (the
//!   instruction names the child; no other institution of the district needs it), even when it
//!   is the institution the child disclosed violence about (no back-flow): it receives only the
//!   instruction, without its reason (the gateway stores for it only the instruction's own
//!   sections); the institution whose director the report implicates never. Both refused here
//!   at once, before anything is stored, and by the gateway's policy, which also knows the
//!   incident referrals of the same incident: a refusal there leaves the instruction in the case
//!   as REFUSED, never pending, and nothing goes out.
//! * How: like the case's other messages, a change of the case (its version rises) that writes
//!   the instruction, the queued message and its outbox entry in one transaction, pushed after the
//!   commit ([`crate::outbox`]).
//! * Back: each INSTRUCTION_ACKNOWLEDGEMENT (acknowledged, then carried out), a reply to the
//!   instruction from the institution it went to, is filed in the case
//!   ([`file_acknowledgement`], inside the inbox's transaction) and shown in the `CaseFile`
//!   ([`records`]).

use std::{collections::HashMap, sync::Arc};

use jiff::Timestamp;
use prost::Message as _;
use referral_agency::{AgencyHost, acting_user, checks, forms::form};
use referral_core::{
    FieldViolations, ServiceError, ServiceResult,
    db::Row as _,
    time,
    validate::{self, LONG_TEXT_MAX, Text},
};
use referral_proto::v1::{
    ActingUser, AgencyKind, ConfidentialityLabel, Envelope, FormKind, InstructionAcknowledgement,
    InstructionAcknowledgementKind, InstructionState, Payload, ProtectionInstruction,
    ProtectionInstructionRecord, ProtectionMeasure, PurposeOfUse, SendProtectionInstructionRequest,
    SendProtectionInstructionResponse, payload::Form,
    protection_instructions_server::ProtectionInstructions,
};
use sqlx::AnyConnection;
use tonic::{Request, Response, Status};

use crate::{
    access,
    case::{self, RecordedChange},
    outbox::Outbox,
    read, validation,
};

/// The `ProtectionInstructions` service of one commission.
#[derive(Debug, Clone)]
pub struct ProtectionInstructionsApi {
    host: AgencyHost,
    outbox: Arc<Outbox>,
}

const REFERENCE: Text = Text::required(1, 100);
const REQUIRED_LONG: Text = Text::required(1, LONG_TEXT_MAX).multiline();

/// Every field of the request. The gateway checks the instruction it carries again.
fn check_request(
    v: &mut FieldViolations,
    request: &SendProtectionInstructionRequest,
    host: &AgencyHost,
) {
    let today = host.today();
    validate::idempotency_key(&request.idempotency_key, "idempotency_key", v);
    validation::case_reference(v, &request.case_reference);
    validation::base_version(v, request.base_version);
    checks::district_agency(
        v,
        "recipient_agency_id",
        &request.recipient_agency_id,
        host.directory(),
        &host.agency().district,
        &[AgencyKind::Residential],
        "a residential institution of the district",
    );
    let measure = checks::required_enum::<ProtectionMeasure>(v, "measure", request.measure);
    match measure {
        Some(ProtectionMeasure::Other) => validate::text(
            v,
            "measure_other",
            &request.measure_other,
            Text::required(3, 2000),
        ),
        _ if !request.measure_other.is_empty() => {
            v.add("measure_other", "only with the measure other")
        }
        _ => {}
    }
    let placement = if matches!(
        measure,
        Some(ProtectionMeasure::MoveToAnotherInstitution | ProtectionMeasure::FamilyTypeSetting)
    ) {
        Text::required(1, 500)
    } else {
        Text::optional(500)
    };
    validate::text(v, "new_placement", &request.new_placement, placement);
    let decided = checks::past_date(v, "decision_date", request.decision_date.as_ref(), today);
    validate::text(
        v,
        "decision_reference",
        &request.decision_reference,
        REFERENCE,
    );
    if let Some(by) = checks::required_date(v, "carry_out_by", request.carry_out_by.as_ref())
        && decided.is_some_and(|d| by < d)
    {
        v.add("carry_out_by", "must not be before the decision date");
    }
    validate::text(v, "reason", &request.reason, REQUIRED_LONG);
    if !request.confidentiality_weighed {
        v.add(
            "confidentiality_weighed",
            "required: weigh first whether telling the institution helps the child or breaks \
             confidentiality or endangers the victim or witnesses (M:3030-3040)",
        );
    }
    validate::text(
        v,
        "weighing_reason",
        &request.weighing_reason,
        Text::required(10, LONG_TEXT_MAX).multiline(),
    );
}

fn sha_of(request: &SendProtectionInstructionRequest) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(request.encode_to_vec()))
}

impl ProtectionInstructionsApi {
    pub fn new(host: AgencyHost, outbox: Arc<Outbox>) -> Self {
        Self { host, outbox }
    }

    async fn send(
        &self,
        user: &ActingUser,
        request: SendProtectionInstructionRequest,
    ) -> ServiceResult<SendProtectionInstructionResponse> {
        access::of(user)?;
        let mut v = FieldViolations::new();
        check_request(&mut v, &request, &self.host);
        v.into_result()?;
        let mut conn = self.host.pool().acquire().await?;
        let row = case::load(&mut conn, &request.case_reference)
            .await?
            .ok_or(case::CaseError::NotFound)?;
        access::check_case(user, &row.curator_user_id)?;
        let k = read::help_request(&mut conn, &row.help_request_message_id).await?;
        let k = match k.as_ref().and_then(form) {
            Some(Form::HelpRequest(k)) => k.clone(),
            _ => Default::default(),
        };
        // The institution whose director the report implicates is never told anything of it;
        // an instruction names the child, so it goes only to the institution the report says
        // the child lives in. Refused before anything is stored (the gateway refuses both too).
        let circumstances = k.circumstances.clone().unwrap_or_default();
        if circumstances.implicated_director_agency_id == request.recipient_agency_id {
            return Err(ServiceError::PermissionDenied(
                "recipient_agency_id: nothing of this case may reach the institution whose \
                 director the report implicates"
                    .into(),
            ));
        }
        if circumstances.child_residence_agency_id != request.recipient_agency_id {
            return Err(ServiceError::PermissionDenied(
                "recipient_agency_id: a protection instruction goes only to the institution the \
                 report says the child lives in"
                    .into(),
            ));
        }
        let sha = sha_of(&request);
        if let Some(done) =
            case::recorded_change(&mut conn, &request.case_reference, &request.idempotency_key)
                .await?
        {
            drop(conn);
            if done.request_sha256 != sha {
                return Err(ServiceError::AlreadyExists(
                    "this idempotency key was already used for a different change of this case"
                        .into(),
                ));
            }
            self.outbox.flush(&self.host).await;
            let key = message_key(&request, done.version);
            self.check_not_refused(&key).await?;
            return Ok(SendProtectionInstructionResponse {
                version: done.version,
                message_id: self.host.sent_message_id(&key).await?.unwrap_or_default(),
            });
        }
        drop(conn);

        let now = self.host.clock().now();
        let mut tx = self.host.begin().await?;
        let row = case::claim(&mut tx, &request.case_reference, request.base_version, now).await?;
        row.check_open()?;
        let child = k.child.unwrap_or_default();
        let contact = self
            .host
            .directory()
            .user(self.host.agency_id(), &user.user_id)
            .map(|u| u.contact.clone())
            .unwrap_or_default();
        let instruction = ProtectionInstruction {
            case_reference: row.case_reference.clone(),
            child_full_name: child.full_name,
            child_date_of_birth: child.date_of_birth,
            measure: request.measure,
            measure_other: request.measure_other.clone(),
            new_placement: request.new_placement.clone(),
            carry_out_by: request.carry_out_by,
            decision_reference: request.decision_reference.clone(),
            decision_date: request.decision_date,
            reason: request.reason.clone(),
            instructed_by: user.display_name.clone(),
            contact,
        };
        let key = message_key(&request, row.version);
        let envelope = Envelope {
            idempotency_key: key.clone(),
            sender_agency_id: self.host.agency_id().to_owned(),
            recipient_agency_id: request.recipient_agency_id.clone(),
            acting_user: Some(user.clone()),
            purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
            case_reference: row.case_reference.clone(),
            form_kind: FormKind::ProtectionInstruction as i32,
            confidentiality: ConfidentialityLabel::Restricted as i32,
            payload: Some(Payload {
                form: Some(Form::ProtectionInstruction(instruction.clone())),
            }),
            ..Envelope::default()
        };
        case::queue_message(&self.host, &mut tx, row.version, 1, user, &envelope, now).await?;
        sqlx::query(
            "INSERT INTO case_instructions (instruction_key, case_reference, recipient_agency_id, \
             instruction, weighing_reason, sent_by_user_id, sent_by_name, sent_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&key)
        .bind(&row.case_reference)
        .bind(&request.recipient_agency_id)
        .bind(instruction.encode_to_vec())
        .bind(&request.weighing_reason)
        .bind(&user.user_id)
        .bind(&user.display_name)
        .bind(time::to_micros(now))
        .execute(&mut *tx)
        .await?;
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
        tx.commit().await?;
        tracing::info!(
            case_reference = %row.case_reference,
            version = row.version,
            "protection instruction queued"
        );
        self.outbox.flush(&self.host).await;
        self.check_not_refused(&key).await?;
        Ok(SendProtectionInstructionResponse {
            version: row.version,
            message_id: self.host.sent_message_id(&key).await?.unwrap_or_default(),
        })
    }
}

impl ProtectionInstructionsApi {
    /// The gateway's refusal of the instruction queued under `key`, as the answer: its policy
    /// knows more than this commission (the incident referrals of the same incident), so it may
    /// refuse what passed here. Nothing of the instruction went out; it stays in the case file
    /// as REFUSED (never pending, never retried), with the weighing that led to it.
    async fn check_not_refused(&self, key: &str) -> ServiceResult<()> {
        let refused = sqlx::query(
            "SELECT last_code FROM case_outbox WHERE outbox_key = $1 AND state = 'refused'",
        )
        .bind(key)
        .fetch_optional(self.host.pool())
        .await?;
        let Some(refused) = refused else {
            return Ok(());
        };
        let code: Option<String> = refused.try_get(0)?;
        tracing::warn!(outbox_key = %key, code = ?code, "the gateway refused a protection instruction");
        Err(if code.as_deref() == Some("PermissionDenied") {
            ServiceError::PermissionDenied(
                "recipient_agency_id: the gateway refused the instruction to this institution \
                 (nothing went out; the case file shows it refused)"
                    .into(),
            )
        } else {
            ServiceError::FailedPrecondition(
                "the gateway refused the instruction (nothing went out; the case file shows it \
                 refused)"
                    .into(),
            )
        })
    }
}

fn message_key(request: &SendProtectionInstructionRequest, version: u64) -> String {
    case::message_key(
        "instruct",
        &request.case_reference,
        version,
        &request.idempotency_key,
    )
}

/// Files an INSTRUCTION_ACKNOWLEDGEMENT in its case, if it answers an instruction this commission
/// sent to the acknowledging institution; otherwise it stays in the inbox as received. Once per
/// message.
pub async fn file_acknowledgement(
    conn: &mut AnyConnection,
    envelope: &Envelope,
    acknowledgement: &InstructionAcknowledgement,
    at: Timestamp,
) -> ServiceResult<()> {
    let found = sqlx::query(
        "SELECT i.instruction_key, i.case_reference FROM sent_messages s \
         JOIN case_instructions i ON i.instruction_key = s.idempotency_key \
         WHERE s.message_id = $1 AND i.recipient_agency_id = $2",
    )
    .bind(&envelope.in_reply_to)
    .bind(&envelope.sender_agency_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(found) = found else {
        tracing::info!(
            message_id = %envelope.message_id,
            "an acknowledgement of no known instruction; kept in the inbox"
        );
        return Ok(());
    };
    let key: String = found.try_get(0)?;
    let case_reference: String = found.try_get(1)?;
    if case_reference != acknowledgement.case_reference {
        tracing::info!(
            message_id = %envelope.message_id,
            "an acknowledgement naming another case; kept in the inbox"
        );
        return Ok(());
    }
    let filed = sqlx::query(
        "INSERT INTO case_instruction_acknowledgements (message_id, instruction_key, \
         case_reference, acknowledgement, received_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(&envelope.message_id)
    .bind(&key)
    .bind(&case_reference)
    .bind(acknowledgement.encode_to_vec())
    .bind(time::to_micros(at))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    tracing::info!(
        message_id = %envelope.message_id,
        filed = filed == 1,
        "instruction acknowledgement received"
    );
    Ok(())
}

/// The case's instructions with their acknowledgements and state, oldest first.
pub async fn records(
    conn: &mut AnyConnection,
    case_reference: &str,
) -> ServiceResult<Vec<ProtectionInstructionRecord>> {
    let rows = sqlx::query(
        "SELECT i.instruction_key, i.recipient_agency_id, i.instruction, i.weighing_reason, \
         i.sent_by_name, i.sent_at, s.idempotency_key, s.message_id FROM case_instructions i \
         LEFT JOIN sent_messages s ON s.idempotency_key = i.instruction_key \
         WHERE i.case_reference = $1 ORDER BY i.sent_at, i.instruction_key",
    )
    .bind(case_reference)
    .fetch_all(&mut *conn)
    .await?;
    // Every instruction's acknowledgements in one query, each's in the order received.
    let mut filed: HashMap<String, Vec<InstructionAcknowledgement>> = HashMap::new();
    for a in &sqlx::query(
        "SELECT a.instruction_key, a.acknowledgement FROM case_instructions i \
         JOIN case_instruction_acknowledgements a ON a.instruction_key = i.instruction_key \
         WHERE i.case_reference = $1 ORDER BY a.received_at, a.message_id",
    )
    .bind(case_reference)
    .fetch_all(&mut *conn)
    .await?
    {
        filed.entry(a.try_get(0)?).or_default().push(
            InstructionAcknowledgement::decode(a.try_get::<Vec<u8>, _>(1)?.as_slice())
                .map_err(ServiceError::internal)?,
        );
    }
    let mut records = Vec::with_capacity(rows.len());
    for r in &rows {
        let key: String = r.try_get(0)?;
        let queued: Option<String> = r.try_get(6)?;
        let message_id: Option<String> = r.try_get(7)?;
        let acknowledgements = filed.remove(&key).unwrap_or_default();
        let reported = |kind: InstructionAcknowledgementKind| {
            acknowledgements.iter().any(|a| a.kind == kind as i32)
        };
        let state = if reported(InstructionAcknowledgementKind::CarriedOut) {
            InstructionState::CarriedOut
        } else if reported(InstructionAcknowledgementKind::Acknowledged) {
            InstructionState::Acknowledged
        } else if message_id.is_some() {
            InstructionState::Sent
        } else if queued.is_some() {
            InstructionState::Pending
        } else {
            // A refused message leaves the queue.
            InstructionState::Refused
        };
        records.push(ProtectionInstructionRecord {
            instruction_message_id: message_id.unwrap_or_default(),
            recipient_agency_id: r.try_get(1)?,
            instruction: Some(
                ProtectionInstruction::decode(r.try_get::<Vec<u8>, _>(2)?.as_slice())
                    .map_err(ServiceError::internal)?,
            ),
            weighing_reason: r.try_get(3)?,
            sent_by: r.try_get(4)?,
            sent_at: Some(time::micros_to_proto(r.try_get(5)?)),
            state: state as i32,
            acknowledgements,
        });
    }
    Ok(records)
}

#[tonic::async_trait]
impl ProtectionInstructions for ProtectionInstructionsApi {
    async fn send_protection_instruction(
        &self,
        request: Request<SendProtectionInstructionRequest>,
    ) -> Result<Response<SendProtectionInstructionResponse>, Status> {
        let user = acting_user(&request)?;
        Ok(Response::new(self.send(&user, request.into_inner()).await?))
    }
}
