//! Acceptance 6 of issue 4: tampering with one ledger entry, or deleting one, is detected by
//! `referral-hub audit verify`. Each test runs a real exchange (a K submitted, delivered and
//! decided, the decision delivered), stops the gateway, changes the gateway's store behind its
//! back, and runs the command's own check, `referral_hub::audit::verify`, on the gateway's
//! storage settings; on SQLite and on PostgreSQL. (The binary itself is run against a tampered
//! SQLite store by `crates/hub/tests/audit_verify_cli.rs`.)

use jiff::tz::TimeZone;
use referral_core::{db::Database, validate};
use referral_gateway::ledger::ChainBroken;
use referral_hub::audit::{self, AuditError};
use referral_proto::v1::{OpenCase, decide_help_request_request};
use referral_tests::{Backend, TestHub, both_backends};

/// A hub whose ledger holds a whole exchange, with its gateway stopped; and the number of
/// entries the ledger then holds.
async fn stopped_hub_after_an_exchange(backend: Backend) -> (TestHub, i64) {
    let hub = TestHub::start(backend).await;
    let today = hub
        .clock
        .now()
        .to_zoned(TimeZone::get("Asia/Almaty").unwrap())
        .date();
    let director = hub.staff("school-1", "director").await;
    let k_id = director
        .submit_k("audit-k-1", "", validate::sample_help_request(today))
        .await
        .expect("the school submits K");
    hub.delivered(&k_id).await;
    let secretary = hub.staff("commission", "secretary").await;
    let decision = secretary
        .decide(
            &k_id,
            "audit-decision-1",
            decide_help_request_request::Outcome::OpenCase(OpenCase {
                curator_user_id: "curator-1".into(),
            }),
        )
        .await
        .expect("the secretary opens a case");
    hub.delivered(&decision.decision_message_id).await;
    hub.stop_gateway().await;

    let entries = ledger_rows(&hub).await;
    assert!(
        entries >= 4,
        "K and decision, each accepted and delivered: {entries} entries"
    );
    (hub, entries)
}

/// The gateway's store, opened as the audit opens it (as it is, no migrations).
async fn gateway_store(hub: &TestHub) -> Database {
    Database::connect(&hub.storage, "gateway")
        .await
        .expect("the gateway store opens")
}

async fn ledger_rows(hub: &TestHub) -> i64 {
    let db = gateway_store(hub).await;
    let rows = sqlx::query_scalar("SELECT COUNT(*) FROM ledger")
        .fetch_one(db.pool())
        .await
        .unwrap();
    db.close().await;
    rows
}

async fn change_store(hub: &TestHub, sql: &'static str, seq: i64) {
    let db = gateway_store(hub).await;
    let changed = sqlx::query(sql)
        .bind(seq)
        .execute(db.pool())
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(changed, 1, "{sql} with seq {seq}");
    db.close().await;
}

/// Runs the check `audit verify` runs and expects it to fail on a broken chain; returns the
/// broken link and the line the command prints.
async fn broken(hub: &TestHub) -> (ChainBroken, String) {
    let err = audit::verify(&hub.storage)
        .await
        .expect_err("the audit detects the change");
    let line = err.to_string();
    match err {
        AuditError::Broken(broken) => (broken, line),
        other => panic!("expected a broken chain, got: {other}"),
    }
}

// (d) and (a): an untouched ledger verifies with its entry count; one changed field of one entry
// in the middle is named, exactly that entry.
async fn a_changed_entry_is_named(backend: Backend) {
    let (hub, entries) = stopped_hub_after_an_exchange(backend).await;
    let verified = audit::verify(&hub.storage)
        .await
        .expect("an untouched ledger verifies");
    assert_eq!(verified.entries, entries, "the audit counts every entry");
    println!(
        "{backend:?}: ledger verified, {} entries, head {}",
        verified.entries, verified.head_hash
    );
    assert_eq!(verified.head_hash.len(), 64, "a SHA-256 head");

    let middle = entries / 2;
    change_store(
        &hub,
        "UPDATE ledger SET recipient_agency_id = 'school-2' WHERE seq = $1",
        middle,
    )
    .await;
    let (broken, line) = broken(&hub).await;
    assert_eq!(broken, ChainBroken::Tampered { seq: middle });
    assert!(
        line.contains(&format!(
            "ledger entry {middle}: its contents do not match its hash"
        )),
        "{line}"
    );
    hub.shutdown().await;
}

// (b): a deleted entry in the middle is named as missing.
async fn a_deleted_entry_is_named_missing(backend: Backend) {
    let (hub, entries) = stopped_hub_after_an_exchange(backend).await;
    let middle = entries / 2;
    change_store(&hub, "DELETE FROM ledger WHERE seq = $1", middle).await;
    let (broken, line) = broken(&hub).await;
    assert_eq!(
        broken,
        ChainBroken::Gap {
            expected: middle,
            found: middle + 1
        }
    );
    assert!(
        line.contains(&format!("ledger entry {middle} is missing")),
        "{line}"
    );
    hub.shutdown().await;
}

// (c): deleting the last entry leaves a chain that holds by itself, but the head names an entry
// that is gone.
async fn a_deleted_last_entry_is_a_head_mismatch(backend: Backend) {
    let (hub, entries) = stopped_hub_after_an_exchange(backend).await;
    change_store(&hub, "DELETE FROM ledger WHERE seq = $1", entries).await;
    let (broken, line) = broken(&hub).await;
    assert_eq!(
        broken,
        ChainBroken::HeadMismatch {
            head_seq: entries,
            last_seq: entries - 1
        }
    );
    assert!(
        line.contains(&format!(
            "the ledger head names entry {entries}, but the last entry is {}",
            entries - 1
        )),
        "{line}"
    );
    hub.shutdown().await;
}

both_backends!(
    a_changed_entry_is_named,
    a_deleted_entry_is_named_missing,
    a_deleted_last_entry_is_a_head_mismatch,
);
