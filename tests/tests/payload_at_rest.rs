//! Acceptance 7 of issue 4 (payload protection in the gateway): a message's payload waiting in
//! the gateway's outbox is sealed at rest, so the forms' personal data is on the gateway's disk
//! only as ciphertext, which does not open without the key; it is delivered intact; and once it
//! has been delivered and its retention has passed (on the test's clock), the payload is removed
//! while the metadata, `GetDeliveryStatus`, the ledger's digests and the reply rules still work.
//! Each on SQLite and on PostgreSQL, through the real services and the real gateway.

use jiff::{SignedDuration, ToSpan as _, civil::Date, tz::TimeZone};
use prost::Message as _;
use referral_core::{error::field_violations, validate};
use referral_gateway::{PayloadSealer, SealError, sealing};
use referral_proto::v1::{
    ActingUser, ActionProgress, ActionProgressState, ConfidentialityLabel, DeliveryState, Envelope,
    FileAssessmentRequest, FileSupportPlanRequest, FormKind, GetCaseRequest,
    GetDeliveryStatusRequest, GetMessageRequest, OpenCase, Payload, PurposeOfUse,
    ReportActionProgressRequest, RiskLevel, Role, SendRequest, decide_help_request_request,
    payload,
};
use referral_tests::{
    Backend, TestHub, both_backends,
    samples::{cd, row, sample_assessment, sample_plan},
};
use sqlx::Row as _;
use tonic::Code;

/// The default retention of a delivered payload (the harness keeps the gateway's default).
const RETENTION: SignedDuration = SignedDuration::from_hours(7 * 24);

fn today(hub: &TestHub) -> Date {
    hub.clock
        .now()
        .to_zoned(TimeZone::get("Asia/Almaty").unwrap())
        .date()
}

/// Every text and blob value of every table of the gateway's store, as (table, column, bytes).
async fn gateway_values(hub: &TestHub) -> Vec<(String, String, Vec<u8>)> {
    let pool = hub.gateway().database().pool().clone();
    let tables: Vec<String> = match hub.backend {
        Backend::Sqlite => {
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
                .fetch_all(&pool)
                .await
        }
        Backend::Postgres => {
            sqlx::query_scalar(
                "SELECT CAST(table_name AS TEXT) FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
            )
            .fetch_all(&pool)
            .await
        }
    }
    .expect("the tables list");
    assert!(tables.iter().any(|t| t == "messages"));
    let mut values = Vec::new();
    // sqlx's own bookkeeping holds the migrations' text (and types the Any driver cannot read).
    for table in tables.iter().filter(|t| !t.starts_with("_sqlx")) {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT * FROM {table}")))
            .fetch_all(&pool)
            .await
            .unwrap_or_else(|e| panic!("{table} reads: {e}"));
        for r in &rows {
            for (i, column) in r.columns().iter().enumerate() {
                let name = sqlx::Column::name(column).to_owned();
                if let Ok(Some(bytes)) = r.try_get::<Option<Vec<u8>>, _>(i) {
                    values.push((table.clone(), name, bytes));
                } else if let Ok(Some(text)) = r.try_get::<Option<String>, _>(i) {
                    values.push((table.clone(), name, text.into_bytes()));
                }
            }
        }
    }
    values
}

/// The gateway's SQLite files as they are on disk (database and write-ahead log).
fn gateway_files(hub: &TestHub) -> Vec<(String, Vec<u8>)> {
    ["gateway.db", "gateway.db-wal"]
        .iter()
        .filter_map(|name| {
            let path = hub.storage.data_dir.join(name);
            std::fs::read(&path).ok().map(|b| (name.to_string(), b))
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Fails naming the table and column (never the data) where any needle appears.
async fn assert_nowhere_in_the_gateway(hub: &TestHub, needles: &[(&str, &str)]) {
    let values = gateway_values(hub).await;
    for (what, needle) in needles {
        for (table, column, bytes) in &values {
            assert!(
                !contains(bytes, needle.as_bytes()),
                "the {what} is readable in the gateway's {table}.{column}"
            );
        }
        for (file, bytes) in gateway_files(hub) {
            assert!(
                !contains(&bytes, needle.as_bytes()),
                "the {what} is readable in the gateway's file {file}"
            );
        }
    }
}

async fn held_payload(
    hub: &TestHub,
    message_id: &str,
) -> (Option<Vec<u8>>, Option<String>, Option<i64>) {
    let r = sqlx::query(
        "SELECT sealed_payload, payload_key_id, payload_purged_at FROM messages WHERE message_id = $1",
    )
    .bind(message_id)
    .fetch_one(hub.gateway().database().pool())
    .await
    .expect("the message row exists");
    (
        r.try_get("sealed_payload").unwrap(),
        r.try_get("payload_key_id").unwrap(),
        r.try_get("payload_purged_at").unwrap(),
    )
}

/// Waits (real time) until the running gateway's delivery worker has removed the payload.
async fn purged_by_the_worker(hub: &TestHub, message_id: &str) {
    let wait = async {
        loop {
            hub.gateway().wake_worker();
            if held_payload(hub, message_id).await.2.is_some() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("the worker did not remove the payload of {message_id}"));
}

// A K waiting for a recipient that is down is sealed on disk: the child's name, IIN and address
// appear nowhere in the gateway's store, and the sealed payload opens only with the gateway's
// key, for that message. It is delivered intact when the recipient comes up; after the
// retention the payload is gone, and the sender still sees the state and the answer's metadata.
async fn a_waiting_payload_is_sealed_then_delivered_intact_then_removed(backend: Backend) {
    let hub = TestHub::start(backend).await;
    hub.stop_agency("commission").await;
    let mut k = validate::sample_help_request(today(&hub));
    let child = k.child.as_mut().unwrap();
    child.full_name = "Жансая Тестбекқызы Қорғанова".into();
    child.registered_address = "Түркістан қ., Сынақ көшесі, 4242-үй, 17-пәтер".into();
    let iin = child.iin.clone();
    assert_eq!(iin.len(), 12);
    let needles = [
        ("child's name", "Жансая Тестбекқызы Қорғанова"),
        ("child's IIN", iin.as_str()),
        (
            "child's address",
            "Түркістан қ., Сынақ көшесі, 4242-үй, 17-пәтер",
        ),
        ("mother's name", "Сәуле Бекқызы Нұрланова"),
        ("referrer's phone", "+7 (727) 255-14-32"),
    ];

    let director = hub.staff("school-1", "director").await;
    let k_id = director
        .submit_k("at-rest-k-0001", "", k.clone())
        .await
        .expect("the school submits K");
    hub.failed_attempts(&k_id, 1).await;
    assert_eq!(hub.gateway_state(&k_id).await.as_deref(), Some("queued"));
    assert_eq!(
        hub.gateway_count("outbox").await,
        1,
        "the K waits in the outbox"
    );

    // Nothing of the form is readable at rest.
    assert_nowhere_in_the_gateway(&hub, &needles).await;
    let (sealed, key_id, purged_at) = held_payload(&hub, &k_id).await;
    let sealed = sealed.expect("the payload is held, sealed");
    assert_eq!(key_id.as_deref(), Some("test-1"));
    assert_eq!(sealing::sealed_key_id(&sealed).unwrap(), "test-1");
    assert_eq!(purged_at, None);
    // The scan sees what is stored: the message id, the idempotency key and the sealed bytes.
    let values = gateway_values(&hub).await;
    for (table, column, known) in [
        ("messages", "message_id", k_id.as_bytes()),
        ("ledger", "message_id", k_id.as_bytes()),
        ("messages", "idempotency_key", b"at-rest-k-0001".as_slice()),
        ("messages", "sealed_payload", sealed.as_slice()),
    ] {
        assert!(
            values
                .iter()
                .any(|(t, c, b)| t == table && c == column && b == known),
            "the scan reads {table}.{column}"
        );
    }

    // Only the gateway's key opens it, and only for this message.
    let plaintext = hub
        .payload_sealer
        .open(&k_id, &sealed)
        .expect("the gateway's key opens it");
    let stored = Payload::decode(plaintext.as_slice()).expect("the payload decodes");
    assert_eq!(
        stored.form,
        Some(payload::Form::HelpRequest(k.clone())),
        "the sealed payload is the K"
    );
    let same_id_other_key =
        PayloadSealer::from_keys([("test-1".to_owned(), [42_u8; 32])], None).unwrap();
    assert_eq!(
        same_id_other_key.open(&k_id, &sealed),
        Err(SealError::Rejected {
            key_id: "test-1".into()
        })
    );
    let other_keyring = PayloadSealer::ephemeral();
    assert_eq!(
        other_keyring.open(&k_id, &sealed),
        Err(SealError::UnknownKey {
            key_id: "test-1".into()
        })
    );
    assert!(
        hub.payload_sealer.open("another-message", &sealed).is_err(),
        "a sealed payload moved to another row does not open"
    );
    // The key file is private.
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&hub.payload_key_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the key file is readable only by its owner"
        );
    }

    // Delivered intact once the commission is up.
    hub.start_agency("commission").await.unwrap();
    // Past the worker's back-off.
    hub.clock.advance(SignedDuration::from_mins(1));
    hub.delivered(&k_id).await;
    let secretary = hub.staff("commission", "secretary").await;
    let received = secretary
        .client
        .clone()
        .get_message(secretary.req(GetMessageRequest {
            message_id: k_id.clone(),
        }))
        .await
        .expect("the secretary reads the K")
        .into_inner()
        .envelope
        .expect("an envelope");
    assert_eq!(
        received.payload.and_then(|p| p.form),
        Some(payload::Form::HelpRequest(k.clone())),
        "the K arrives unchanged"
    );
    let decision = secretary
        .decide(
            &k_id,
            "at-rest-decision",
            decide_help_request_request::Outcome::OpenCase(OpenCase {
                curator_user_id: "curator-1".into(),
            }),
        )
        .await
        .expect("the secretary opens a case");
    let decision_id = decision.decision_message_id;
    hub.delivered(&decision_id).await;
    assert_nowhere_in_the_gateway(&hub, &needles).await;

    let mut as_school = hub.gateway_client_as("school-1").await;
    let status = |id: &str| GetDeliveryStatusRequest {
        message_id: id.to_owned(),
    };
    let before = as_school
        .get_delivery_status(status(&k_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.state, DeliveryState::Answered as i32);
    assert!(
        before.answer.unwrap().payload.is_some(),
        "the answer comes whole while its payload is held"
    );

    // Not before the retention has passed.
    hub.gateway().settle().await.unwrap();
    hub.clock.advance(RETENTION - SignedDuration::from_mins(1));
    hub.gateway().settle().await.unwrap();
    hub.gateway().purge_payloads().await.unwrap();
    assert!(
        held_payload(&hub, &k_id).await.0.is_some(),
        "kept for the retention"
    );

    // After it, the delivery worker removes both payloads, by the test's clock.
    hub.clock.advance(SignedDuration::from_mins(2));
    hub.gateway().settle().await.unwrap();
    for id in [&k_id, &decision_id] {
        purged_by_the_worker(&hub, id).await;
        let (sealed, key_id, purged_at) = held_payload(&hub, id).await;
        assert_eq!(sealed, None, "the payload is gone");
        assert_eq!(key_id.as_deref(), Some("test-1"), "the metadata stays");
        assert_eq!(
            purged_at,
            Some(referral_core::time::to_micros(hub.clock.now()))
        );
        let kept = hub
            .gateway_envelope(id)
            .await
            .expect("the message's metadata is kept");
        assert_eq!(kept.message_id, *id);
        assert!(kept.payload.is_none());
    }

    // The state and the answer's metadata are still there for the sender.
    let after = as_school
        .get_delivery_status(status(&k_id))
        .await
        .expect("the status still reads")
        .into_inner();
    assert_eq!(after.state, DeliveryState::Answered as i32);
    assert_eq!(after.delivered_at, before.delivered_at);
    assert_eq!(after.answered_at, before.answered_at);
    let answer = after.answer.expect("the answer's metadata is kept");
    assert_eq!(answer.message_id, decision_id);
    assert_eq!(answer.form_kind, FormKind::HelpRequestDecision as i32);
    assert!(answer.payload.is_none(), "the answer's payload is gone");

    // The ledger keeps the digest of the plaintext payload, and still verifies.
    let digests: Vec<String> =
        sqlx::query_scalar("SELECT payload_sha256 FROM ledger WHERE message_id = $1")
            .bind(&k_id)
            .fetch_all(hub.gateway().database().pool())
            .await
            .unwrap();
    assert_eq!(digests.len(), 2, "accepted and delivered");
    for digest in digests {
        assert_eq!(digest, referral_gateway::ledger::payload_sha256(&plaintext));
    }
    hub.gateway()
        .verify_ledger()
        .await
        .expect("the ledger verifies");
    assert_nowhere_in_the_gateway(&hub, &needles).await;
    hub.shutdown().await;
}

// The reply rules need the original's case and row number, which stay in clear metadata: after
// an assignment's payload is removed, a progress report on another row or case is still
// refused, the right one is accepted, and the engine still meets the row's deadline.
async fn replies_are_checked_after_the_original_payload_is_removed(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let case = hub.open_case("at-rest-reply").await;
    let curator = hub.staff("commission", "curator-1").await;
    let version = curator
        .case_files()
        .get_case(curator.req(GetCaseRequest {
            case_reference: case.clone(),
            ..Default::default()
        }))
        .await
        .expect("the case file reads")
        .into_inner()
        .summary
        .expect("a summary")
        .version;
    let changed = curator
        .case_files()
        .file_assessment(curator.req(FileAssessmentRequest {
            case_reference: case.clone(),
            base_version: version,
            assessment: Some(sample_assessment(today(&hub))),
            risk_level: RiskLevel::Medium as i32,
        }))
        .await
        .expect("L filed")
        .into_inner();
    let t = today(&hub);
    curator
        .case_files()
        .file_support_plan(curator.req(FileSupportPlanRequest {
            case_reference: case.clone(),
            base_version: changed.version,
            idempotency_key: "at-rest-plan".into(),
            plan: Some(sample_plan(
                t,
                vec![
                    row(1, t + 30.days(), "ngo-1"),
                    row(2, t + 20.days(), "school-1"),
                ],
            )),
            first_review_on: None,
        }))
        .await
        .expect("M filed");
    hub.deliver_everything().await;
    let assignment = hub
        .staff("ngo-1", "case-manager")
        .await
        .inbox_of(FormKind::ActionAssignment)
        .await
        .into_iter()
        .next()
        .expect("the NGO receives its row")
        .message_id;
    hub.gateway().settle().await.unwrap();
    let open_actions = |rows: Vec<(String, i64)>| {
        rows.iter()
            .filter(|(kind, _)| kind == "DEADLINE_KIND_ACTION")
            .count()
    };
    assert_eq!(open_actions(hub.open_deadlines(&case).await), 2);

    // The assignment's payload is removed after the retention.
    hub.clock.advance(RETENTION + SignedDuration::from_mins(1));
    hub.gateway().settle().await.unwrap();
    purged_by_the_worker(&hub, &assignment).await;
    assert_eq!(held_payload(&hub, &assignment).await.0, None);

    // Straight to the gateway with the NGO's certificate: another row, another case.
    let mut as_ngo = hub.gateway_client_as("ngo-1").await;
    let progress = |key: &str, case: &str, number: u32| SendRequest {
        envelope: Some(Envelope {
            idempotency_key: key.into(),
            recipient_agency_id: "commission".into(),
            acting_user: Some(ActingUser {
                user_id: "case-manager".into(),
                agency_id: "ngo-1".into(),
                role: Role::NgoCaseManager as i32,
                display_name: "Ирина Викторовна Ким".into(),
            }),
            purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
            case_reference: case.into(),
            form_kind: FormKind::ActionProgress as i32,
            confidentiality: ConfidentialityLabel::Normal as i32,
            in_reply_to: assignment.clone(),
            payload: Some(Payload {
                form: Some(payload::Form::ActionProgress(ActionProgress {
                    assignment_message_id: assignment.clone(),
                    case_reference: case.into(),
                    action_number: number,
                    state: ActionProgressState::Completed as i32,
                    note: "Орындалды".into(),
                    reported_on: Some(cd(today(&hub))),
                    reported_by: "Ирина Викторовна Ким".into(),
                })),
            }),
            ..Default::default()
        }),
    };
    let wrong_row = as_ngo
        .send(progress("at-rest-wrong-row", &case, 2))
        .await
        .expect_err("another row is refused");
    assert_eq!(wrong_row.code(), Code::InvalidArgument);
    assert!(
        field_violations(&wrong_row)
            .iter()
            .any(|v| v.field == "envelope.payload.action_progress.action_number"),
        "{wrong_row:?}"
    );
    let wrong_case = as_ngo
        .send(progress("at-rest-wrong-case", "KTIZhK-2026-999999", 1))
        .await
        .expect_err("another case is refused");
    assert_eq!(wrong_case.code(), Code::InvalidArgument);
    assert!(
        field_violations(&wrong_case)
            .iter()
            .any(|v| v.field == "envelope.payload.action_progress.case_reference"),
        "{wrong_case:?}"
    );

    // The NGO's own service reports the row completed: accepted, delivered, deadline met.
    let ngo = hub.staff("ngo-1", "case-manager").await;
    let reported = ngo
        .client
        .clone()
        .report_action_progress(ngo.req(ReportActionProgressRequest {
            message_id: assignment.clone(),
            idempotency_key: "at-rest-progress".into(),
            state: ActionProgressState::Completed as i32,
            note: "8 сессия өтті".into(),
        }))
        .await
        .expect("the right row is accepted after the assignment's payload is gone")
        .into_inner();
    hub.delivered(&reported.progress_message_id).await;
    hub.gateway().settle().await.unwrap();
    assert_eq!(
        open_actions(hub.open_deadlines(&case).await),
        1,
        "the NGO's row is met"
    );
    let mut as_commission = hub.gateway_client_as("commission").await;
    let status = as_commission
        .get_delivery_status(GetDeliveryStatusRequest {
            message_id: assignment.clone(),
        })
        .await
        .expect("the assignment's status still reads")
        .into_inner();
    assert_eq!(status.state, DeliveryState::Delivered as i32);
    hub.shutdown().await;
}

both_backends!(
    a_waiting_payload_is_sealed_then_delivered_intact_then_removed,
    replies_are_checked_after_the_original_payload_is_removed,
);
