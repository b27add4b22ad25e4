//! A commission store for unit tests: SQLite in a temporary directory (or a schema of its own in
//! the PostgreSQL database named by `REFERRAL_TEST_DATABASE_URL`), with the agency's and the
//! commission's migrations, and the agency rows a case hangs from (the help request K, the case,
//! the decision).

use jiff::Timestamp;
use prost::Message as _;
use referral_agency::OpenedCase;
use referral_core::db::{Database, StorageConfig};
use referral_proto::v1::{
    ActingUser, CalendarDate, ChildReferred, Envelope, FormKind, HelpRequest, Payload, Role,
    payload::Form,
};

use crate::MIGRATIONS;

pub const CASE: &str = "KTIZhK-2026-000001";
pub const K_ID: &str = "0195f0e2-0000-7000-8000-00000000000k";
pub const CURATOR: &str = "curator-1";

pub fn now() -> Timestamp {
    "2026-03-02T05:00:00Z".parse().unwrap()
}

pub fn secretary() -> ActingUser {
    ActingUser {
        user_id: "secretary-1".into(),
        agency_id: "commission".into(),
        role: Role::CommissionSecretary as i32,
        display_name: "Хатшы".into(),
    }
}

pub async fn store() -> (Database, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let storage = StorageConfig {
        data_dir: dir.path().to_owned(),
        database_url: std::env::var("REFERRAL_TEST_DATABASE_URL")
            .ok()
            .map(Into::into),
    };
    let component = format!("commission-test-{}", uuid::Uuid::new_v4().simple());
    let db = Database::open(&storage, &component, MIGRATIONS.as_slice())
        .await
        .unwrap();
    (db, dir)
}

/// The help request K the test case is opened on.
pub fn k() -> Envelope {
    Envelope {
        message_id: K_ID.into(),
        sender_agency_id: "school-1".into(),
        recipient_agency_id: "commission".into(),
        form_kind: FormKind::HelpRequest as i32,
        payload: Some(Payload {
            form: Some(Form::HelpRequest(HelpRequest {
                child: Some(ChildReferred {
                    full_name: "Әлия Серікқызы Нұрланова".into(),
                    date_of_birth: Some(CalendarDate {
                        year: 2013,
                        month: 11,
                        day: 22,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        }),
        ..Default::default()
    }
}

/// Receives K, opens the test case (through the decision's hook) and records the decision, sent
/// to the gateway when `decision_sent`.
pub async fn open_case(db: &Database, decision_sent: bool) {
    let mut tx = db.begin().await.unwrap();
    let at = referral_core::time::to_micros(now());
    sqlx::query(
        "INSERT INTO received_messages (message_id, sender_agency_id, form_kind, in_reply_to, \
         case_reference, envelope, received_at, referral_status, updated_at) \
         VALUES ($1, 'school-1', 'FORM_KIND_HELP_REQUEST', NULL, '', $2, $3, \
         'REFERRAL_STATUS_ACCEPTED', $3)",
    )
    .bind(K_ID)
    .bind(k().encode_to_vec())
    .bind(at)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO cases (case_reference, case_year, case_number, help_request_message_id, \
         curator_user_id, opened_by, opened_at) VALUES ($1, 2026, 1, $2, $3, 'secretary-1', $4)",
    )
    .bind(CASE)
    .bind(K_ID)
    .bind(CURATOR)
    .bind(at)
    .execute(&mut *tx)
    .await
    .unwrap();
    let user = secretary();
    crate::case::open(
        &mut tx,
        &OpenedCase {
            case_reference: CASE,
            help_request_message_id: K_ID,
            curator_user_id: CURATOR,
            decided_by: &user,
            opened_at: now(),
        },
    )
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO sent_messages (idempotency_key, message_id, status, recipient_agency_id, \
         form_kind, in_reply_to, acting_user_id, request_sha256, envelope, created_at, sent_at, \
         delivery_state, referral_status, answer_message_id, answer_envelope, updated_at) \
         VALUES ('decision-key', $1, 'sent', 'school-1', 'FORM_KIND_HELP_REQUEST_DECISION', $2, \
         'secretary-1', 'x', $3, $4, $4, 'DELIVERY_STATE_QUEUED', 'REFERRAL_STATUS_ACCEPTED', \
         NULL, NULL, $4)",
    )
    .bind(decision_sent.then_some("decision-message-1"))
    .bind(K_ID)
    .bind(Vec::<u8>::new())
    .bind(at)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO decisions (help_request_message_id, idempotency_key, outcome, case_reference, \
         decided_by, decided_at, decision, outgoing_key, state, decision_message_id) \
         VALUES ($1, 'secretary-key', 'case_opened', $2, 'secretary-1', $3, $4, 'decision-key', \
         $5, NULL)",
    )
    .bind(K_ID)
    .bind(CASE)
    .bind(at)
    .bind(Vec::<u8>::new())
    .bind(if decision_sent {
        "decision_sent"
    } else {
        "decision_pending_send"
    })
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// A message this commission sent, acknowledged by the gateway as `message_id`.
pub async fn sent(
    db: &Database,
    key: &str,
    message_id: Option<&str>,
    kind: FormKind,
    recipient: &str,
) {
    let at = referral_core::time::to_micros(now());
    sqlx::query(
        "INSERT INTO sent_messages (idempotency_key, message_id, status, recipient_agency_id, \
         form_kind, in_reply_to, acting_user_id, request_sha256, envelope, created_at, sent_at, \
         delivery_state, referral_status, answer_message_id, answer_envelope, updated_at) \
         VALUES ($1, $2, 'sent', $3, $4, NULL, 'curator-1', 'x', $5, $6, $6, \
         'DELIVERY_STATE_QUEUED', 'REFERRAL_STATUS_REQUESTED', NULL, NULL, $6)",
    )
    .bind(key)
    .bind(message_id)
    .bind(recipient)
    .bind(kind.as_str_name())
    .bind(Vec::<u8>::new())
    .bind(at)
    .execute(db.pool())
    .await
    .unwrap();
}
