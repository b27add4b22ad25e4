//! The real `referral-hub audit verify` binary against a SQLite data directory: it exits 0 and
//! counts the entries of an intact ledger, and exits non-zero naming the entry when one was
//! changed. `ledger verify` is the same command. (The end-to-end tests in
//! `tests/tests/audit_verify.rs` prove the check itself on both back ends through
//! `referral_hub::audit::verify`; this proves the command line around it.)

use std::{path::Path, process::Command};

use referral_core::db::{Database, StorageConfig};
use referral_gateway::ledger::{self, EntryFields};

fn entry(n: u32) -> EntryFields {
    EntryFields {
        event: "message.accepted".into(),
        message_id: format!("0193a3c4-0000-7000-8000-00000000000{n}"),
        sender_agency_id: "school-1".into(),
        recipient_agency_id: "commission".into(),
        acting_user_id: "director".into(),
        acting_role: "school_director".into(),
        purpose_of_use: "PURPOSE_OF_USE_COORDINATION_OF_CARE".into(),
        form_kind: "FORM_KIND_HELP_REQUEST".into(),
        case_reference: String::new(),
        confidentiality: "CONFIDENTIALITY_LABEL_RESTRICTED".into(),
        payload_sha256: ledger::payload_sha256(format!("payload {n}").as_bytes()),
        sections: String::new(),
        outcome: String::new(),
    }
}

/// A gateway store in `data_dir` whose ledger holds three chained entries.
async fn gateway_store_with_three_entries(data_dir: &Path) -> Database {
    let storage = StorageConfig {
        data_dir: data_dir.to_owned(),
        database_url: None,
    };
    let db = Database::open(&storage, "gateway", referral_gateway::store::MIGRATIONS)
        .await
        .expect("the gateway store opens");
    for n in 1..=3 {
        let mut tx = db.begin().await.unwrap();
        ledger::append(&mut tx, 1_790_000_000_000_000 + i64::from(n), &entry(n))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    db
}

/// The binary in `cwd` with only the data directory configured.
fn hub_command(cwd: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_referral-hub"));
    command.current_dir(cwd).args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("REFERRAL_HUB__") {
            command.env_remove(key);
        }
    }
    command
}

/// Runs the binary in `cwd` with only the data directory configured; (exit code, stdout, stderr).
fn hub(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let out = hub_command(cwd, args).output().expect("the binary runs");
    (
        out.status.code().expect("an exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn audit_verify_passes_an_intact_ledger_and_names_a_changed_entry() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let db = gateway_store_with_three_entries(&data).await;

    let (code, stdout, stderr) = hub(dir.path(), &["audit", "verify", "--data-dir", data_arg]);
    assert_eq!(code, 0, "an intact ledger verifies: {stdout}{stderr}");
    assert!(stdout.contains("ledger verified: 3 entries"), "{stdout}");

    // The old spelling is an alias of the same command.
    let (code, stdout, stderr) = hub(
        dir.path(),
        &["ledger", "verify", "--json", "--data-dir", data_arg],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(json["verified"], true);
    assert_eq!(json["entries"], 3);

    sqlx::query("UPDATE ledger SET acting_user_id = 'someone-else' WHERE seq = 2")
        .execute(db.pool())
        .await
        .unwrap();
    db.close().await;

    let (code, stdout, stderr) = hub(dir.path(), &["audit", "verify", "--data-dir", data_arg]);
    assert_eq!(code, 1, "a changed ledger fails: {stdout}{stderr}");
    assert!(
        stderr.contains("ledger entry 2: its contents do not match its hash"),
        "names the changed entry: {stderr}"
    );
    let (code, stdout, _) = hub(
        dir.path(),
        &["audit", "verify", "--json", "--data-dir", data_arg],
    );
    assert_eq!(code, 1);
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(json["verified"], false);
    assert_eq!(json["broken"]["problem"], "tampered");
    assert_eq!(json["broken"]["seq"], 2);

    // No store at all is a failure too, not an empty success.
    let (code, _, stderr) = hub(
        dir.path(),
        &[
            "audit",
            "verify",
            "--data-dir",
            dir.path().join("nowhere").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("no gateway store"), "{stderr}");
}

/// A reader that went away (`referral-hub audit verify | head -0`): the command ends quietly with
/// status 0, as a command killed by SIGPIPE would, not with a panic ("internal error", 101).
#[tokio::test]
async fn a_closed_pipe_on_stdout_ends_the_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    gateway_store_with_three_entries(&data).await.close().await;
    for format in [None, Some("--json")] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut args = vec!["audit", "verify", "--data-dir", data.to_str().unwrap()];
        args.extend(format);
        let out = hub_command(dir.path(), &args)
            .stdout(writer)
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{format:?}: {stderr}");
        assert!(stderr.is_empty(), "{format:?}: nothing on stderr: {stderr}");
    }
}
