//! The commission's protection instructions (M:3010-3017): filed when they arrive, inside the
//! inbox's transaction; listed for the institution's staff; acknowledged, then reported carried
//! out, each an INSTRUCTION_ACKNOWLEDGEMENT back to the commission as a reply to the instruction.
//!
//! A step is a conditional `UPDATE` of the instruction's state (acknowledging twice, or carrying
//! out before acknowledging, changes nothing and answers `FAILED_PRECONDITION`), written with its
//! acknowledgement row and the queued message in one transaction, pushed after the commit; one
//! the gateway refuses is undone (the state goes back), one it cannot take yet is pushed later.

use std::collections::HashMap;

use jiff::Timestamp;
use prost::Message as _;
use referral_agency::{AgencyHost, PushOutcome, checks, forms::form};
use referral_core::{FieldViolations, ServiceError, ServiceResult, db::Row as _, time, validate};
use referral_proto::v1::{
    AcknowledgeInstructionRequest, ActingUser, ConfidentialityLabel, Envelope, FormKind,
    InstructionAcknowledgement, InstructionAcknowledgementKind, ListProtectionInstructionsResponse,
    Payload, ProtectionInstruction, PurposeOfUse, ReceivedInstruction, payload::Form,
};
use sqlx::AnyConnection;

const NOT_ACKNOWLEDGED: i64 = 0;

/// Files a protection instruction received (once: the inbox calls this for new messages only).
pub(crate) async fn on_received(
    conn: &mut AnyConnection,
    envelope: &Envelope,
    now: Timestamp,
) -> ServiceResult<()> {
    let Some(Form::ProtectionInstruction(instruction)) = form(envelope) else {
        return Ok(());
    };
    sqlx::query(
        "INSERT INTO residential_instructions (message_id, commission_agency_id, case_reference, \
         instruction, received_at, state) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(&envelope.message_id)
    .bind(&envelope.sender_agency_id)
    .bind(&instruction.case_reference)
    .bind(instruction.encode_to_vec())
    .bind(time::to_micros(now))
    .bind(NOT_ACKNOWLEDGED)
    .execute(&mut *conn)
    .await?;
    tracing::info!(message_id = %envelope.message_id, "protection instruction received");
    Ok(())
}

struct Row {
    message_id: String,
    commission: String,
    case_reference: String,
    instruction: ProtectionInstruction,
    received_at: i64,
    state: i64,
}

const COLUMNS: &str =
    "message_id, commission_agency_id, case_reference, instruction, received_at, state";

fn read_row(r: &sqlx::any::AnyRow) -> ServiceResult<Row> {
    let bytes: Vec<u8> = r.try_get(3)?;
    Ok(Row {
        message_id: r.try_get(0)?,
        commission: r.try_get(1)?,
        case_reference: r.try_get(2)?,
        instruction: ProtectionInstruction::decode(bytes.as_slice())
            .map_err(ServiceError::internal)?,
        received_at: r.try_get(4)?,
        state: r.try_get(5)?,
    })
}

/// The gateway's message ids of the acknowledgements of the instructions `scope` selects (one
/// column: an instruction's message id), by instruction, each instruction's in the order made
/// (empty while queued).
async fn acknowledgement_ids(
    conn: &mut AnyConnection,
    scope: &str,
    bind: Option<&str>,
) -> ServiceResult<HashMap<String, Vec<String>>> {
    let query = format!(
        "SELECT a.instruction_message_id, s.message_id FROM residential_acknowledgements a \
         LEFT JOIN sent_messages s ON s.idempotency_key = a.message_key \
         WHERE a.instruction_message_id IN ({scope}) ORDER BY a.created_at, a.message_key"
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(query));
    if let Some(value) = bind {
        query = query.bind(value.to_owned());
    }
    let mut ids: HashMap<String, Vec<String>> = HashMap::new();
    for r in &query.fetch_all(&mut *conn).await? {
        ids.entry(r.try_get(0)?)
            .or_default()
            .push(r.try_get::<Option<String>, _>(1)?.unwrap_or_default());
    }
    Ok(ids)
}

fn view(row: Row, acknowledgement_message_ids: Vec<String>) -> ReceivedInstruction {
    ReceivedInstruction {
        message_id: row.message_id,
        commission_agency_id: row.commission,
        instruction: Some(row.instruction),
        received_at: Some(time::micros_to_proto(row.received_at)),
        state: i32::try_from(row.state).unwrap_or_default(),
        acknowledgement_message_ids,
    }
}

async fn load(conn: &mut AnyConnection, message_id: &str) -> ServiceResult<Option<Row>> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM residential_instructions WHERE message_id = $1"
    )))
    .bind(message_id)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(read_row)
    .transpose()
}

/// Every instruction received, newest first.
pub(crate) async fn list(host: &AgencyHost) -> ServiceResult<ListProtectionInstructionsResponse> {
    let mut conn = host.pool().acquire().await?;
    let newest = "SELECT message_id FROM residential_instructions \
                  ORDER BY received_at DESC, message_id LIMIT 500";
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM residential_instructions WHERE message_id IN ({newest}) \
         ORDER BY received_at DESC, message_id"
    )))
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(read_row)
    .collect::<ServiceResult<Vec<_>>>()?;
    let mut acknowledged = acknowledgement_ids(&mut conn, newest, None).await?;
    let instructions = rows
        .into_iter()
        .map(|row| {
            let ids = acknowledged.remove(&row.message_id).unwrap_or_default();
            view(row, ids)
        })
        .collect();
    Ok(ListProtectionInstructionsResponse { instructions })
}

fn message_key(idempotency_key: &str) -> String {
    format!("instruction-ack:{idempotency_key}")
}

/// Acknowledges an instruction, or reports it carried out.
pub(crate) async fn acknowledge(
    host: &AgencyHost,
    user: &ActingUser,
    request: AcknowledgeInstructionRequest,
) -> ServiceResult<ReceivedInstruction> {
    let today = host.today();
    let mut v = FieldViolations::new();
    validate::idempotency_key(&request.idempotency_key, "idempotency_key", &mut v);
    checks::message_id(
        &mut v,
        "instruction_message_id",
        &request.instruction_message_id,
    );
    let kind =
        checks::required_enum::<InstructionAcknowledgementKind>(&mut v, "kind", request.kind);
    checks::past_date(&mut v, "on", request.on.as_ref(), today);
    validate::text(&mut v, "note", &request.note, validate::LONG_TEXT);
    v.into_result()?;
    let kind = kind.unwrap_or_default();
    let key = message_key(&request.idempotency_key);
    let sha = crate::incidents::sha_of(&request);
    let now = host.clock().now();
    let mut tx = host.begin().await?;
    if let Some(seen) = sqlx::query(
        "SELECT request_sha256 FROM residential_acknowledgements WHERE message_key = $1",
    )
    .bind(&key)
    .fetch_optional(&mut *tx)
    .await?
    {
        tx.rollback().await?;
        if seen.try_get::<String, _>(0)? != sha {
            return Err(ServiceError::AlreadyExists(
                "this idempotency key was already used for another acknowledgement".into(),
            ));
        }
        return push_and_answer(host, &request.instruction_message_id, &key).await;
    }
    let row = load(&mut tx, &request.instruction_message_id)
        .await?
        .ok_or_else(|| ServiceError::NotFound("no such protection instruction".into()))?;
    let from = match kind {
        InstructionAcknowledgementKind::CarriedOut => {
            InstructionAcknowledgementKind::Acknowledged as i64
        }
        _ => NOT_ACKNOWLEDGED,
    };
    let moved = sqlx::query(
        "UPDATE residential_instructions SET state = $1 WHERE message_id = $2 AND state = $3",
    )
    .bind(kind as i64)
    .bind(&row.message_id)
    .bind(from)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if moved != 1 {
        return Err(ServiceError::FailedPrecondition(
            match (kind, row.state) {
                (InstructionAcknowledgementKind::CarriedOut, NOT_ACKNOWLEDGED) => {
                    "acknowledge the instruction before reporting it carried out"
                }
                (InstructionAcknowledgementKind::CarriedOut, _) => {
                    "the instruction is reported carried out already"
                }
                _ => "the instruction is acknowledged already",
            }
            .into(),
        ));
    }
    sqlx::query(
        "INSERT INTO residential_acknowledgements (message_key, instruction_message_id, kind, \
         prev_state, request_sha256, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&key)
    .bind(&row.message_id)
    .bind(kind as i64)
    .bind(row.state)
    .bind(&sha)
    .bind(time::to_micros(now))
    .execute(&mut *tx)
    .await?;
    let acknowledgement = InstructionAcknowledgement {
        case_reference: row.case_reference.clone(),
        instruction_message_id: row.message_id.clone(),
        kind: kind as i32,
        on: request.on,
        note: request.note.clone(),
        acknowledged_by: user.display_name.clone(),
    };
    let envelope = Envelope {
        idempotency_key: key.clone(),
        sender_agency_id: host.agency_id().to_owned(),
        recipient_agency_id: row.commission.clone(),
        acting_user: Some(user.clone()),
        purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
        case_reference: row.case_reference.clone(),
        form_kind: FormKind::InstructionAcknowledgement as i32,
        confidentiality: ConfidentialityLabel::Restricted as i32,
        in_reply_to: row.message_id.clone(),
        payload: Some(Payload {
            form: Some(Form::InstructionAcknowledgement(acknowledgement)),
        }),
        ..Envelope::default()
    };
    host.queue_message(&mut tx, &key, &user.user_id, &envelope, now)
        .await?;
    tx.commit().await?;
    tracing::info!(
        instruction = %row.message_id,
        kind = kind.as_str_name(),
        "protection instruction acknowledged"
    );
    push_and_answer(host, &request.instruction_message_id, &key).await
}

async fn push_and_answer(
    host: &AgencyHost,
    instruction_id: &str,
    key: &str,
) -> ServiceResult<ReceivedInstruction> {
    if let PushOutcome::Refused(failure) = host.push_message(key).await? {
        undo(host, key).await?;
        return Err(failure.into_service_error());
    }
    let mut conn = host.pool().acquire().await?;
    let row = load(&mut conn, instruction_id)
        .await?
        .ok_or_else(|| ServiceError::NotFound("no such protection instruction".into()))?;
    let ids = acknowledgement_ids(&mut conn, "$1", Some(instruction_id))
        .await?
        .remove(instruction_id)
        .unwrap_or_default();
    Ok(view(row, ids))
}

/// The gateway refused an acknowledgement: the instruction gets back the state it replaced.
async fn undo(host: &AgencyHost, key: &str) -> ServiceResult<()> {
    let mut tx = host.begin().await?;
    let Some(row) = sqlx::query(
        "SELECT instruction_message_id, kind, prev_state FROM residential_acknowledgements \
         WHERE message_key = $1",
    )
    .bind(key)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(());
    };
    sqlx::query(
        "UPDATE residential_instructions SET state = $1 WHERE message_id = $2 AND state = $3",
    )
    .bind(row.try_get::<i64, _>(2)?)
    .bind(row.try_get::<String, _>(0)?)
    .bind(row.try_get::<i64, _>(1)?)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM residential_acknowledgements WHERE message_key = $1")
        .bind(key)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Pushes the acknowledgements the gateway could not take when they were made.
pub(crate) async fn push_pending(host: &AgencyHost) {
    host.push_pending(
        "SELECT a.message_key FROM residential_acknowledgements a \
         JOIN sent_messages s ON s.idempotency_key = a.message_key \
         WHERE s.message_id IS NULL ORDER BY a.created_at LIMIT 100",
        "instruction acknowledgement",
        |key| async move { undo(host, &key).await },
    )
    .await;
}
