//! Acceptance tests of the hub foundation (issue 2): a help request K travels from a school
//! through the gateway to the commission, the decision travels back; each on SQLite and on
//! PostgreSQL, with real components on port 0 over real mTLS.

use jiff::{SignedDuration, tz::TimeZone};
use referral_core::{error::field_violations, validate};
use referral_proto::v1::{
    DeliveryState, FormKind, GetMessageRequest, GetSentMessageRequest, HelpRequest,
    NoFurtherAction, OpenCase, ReferralStatus, decide_help_request_request, help_request_decision,
    payload,
};
use referral_tests::{Backend, TestHub, both_backends};
use tonic::Code;

fn today(hub: &TestHub) -> jiff::civil::Date {
    hub.clock
        .now()
        .to_zoned(TimeZone::get("Asia/Almaty").unwrap())
        .date()
}

fn sample_k(hub: &TestHub) -> HelpRequest {
    validate::sample_help_request(today(hub))
}

// Acceptance 1: school sends K; the commission receives it exactly once; the secretary opens a
// case with a curator; the school sees the decision.
async fn school_k_reaches_commission_and_school_sees_case_opened(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let director = hub.staff("school-1", "director").await;
    let k = sample_k(&hub);
    let k_id = director
        .submit_k("school-1-k-0001", "", k.clone())
        .await
        .expect("the school submits K");
    hub.delivered(&k_id).await;

    let secretary = hub.staff("commission", "secretary").await;
    let items = secretary.inbox().await;
    assert_eq!(items.len(), 1, "the commission receives the K exactly once");
    assert_eq!(items[0].message_id, k_id);
    assert_eq!(items[0].sender_agency_id, "school-1");
    assert_eq!(items[0].form_kind, FormKind::HelpRequest as i32);
    assert_eq!(items[0].status, ReferralStatus::Received as i32);

    let received = secretary
        .client
        .clone()
        .get_message(secretary.req(GetMessageRequest {
            message_id: k_id.clone(),
        }))
        .await
        .expect("the secretary reads the K")
        .into_inner();
    let envelope = received.envelope.expect("an envelope");
    assert_eq!(envelope.sender_agency_id, "school-1");
    assert_eq!(envelope.acting_user.as_ref().unwrap().user_id, "director");
    match envelope.payload.and_then(|p| p.form) {
        Some(payload::Form::HelpRequest(got)) => assert_eq!(got, k, "the K arrives unchanged"),
        other => panic!("expected a help request, got {other:?}"),
    }

    let decision = secretary
        .decide(
            &k_id,
            "decision-0001",
            decide_help_request_request::Outcome::OpenCase(OpenCase {
                curator_user_id: "curator-1".into(),
            }),
        )
        .await
        .expect("the secretary opens a case");
    let case = match decision.decision.as_ref().and_then(|d| d.outcome.clone()) {
        Some(help_request_decision::Outcome::CaseOpened(c)) => c,
        other => panic!("expected a case, got {other:?}"),
    };
    assert!(!case.case_reference.is_empty());
    assert_eq!(case.curator_user_id, "curator-1");
    hub.delivered(&decision.decision_message_id).await;
    assert_eq!(hub.gateway_state(&k_id).await.as_deref(), Some("answered"));

    let seen = director
        .client
        .clone()
        .get_sent_message(director.req(GetSentMessageRequest {
            message_id: k_id.clone(),
        }))
        .await
        .expect("the school reads its sent K")
        .into_inner();
    assert_eq!(seen.state, DeliveryState::Answered as i32);
    assert_eq!(seen.status, ReferralStatus::Accepted as i32);
    let answer = seen.answer.expect("the decision is visible to the school");
    match answer.payload.and_then(|p| p.form) {
        Some(payload::Form::HelpRequestDecision(d)) => match d.outcome {
            Some(help_request_decision::Outcome::CaseOpened(c)) => {
                assert_eq!(c.case_reference, case.case_reference);
                assert_eq!(c.curator_name, "Дана Ерланқызы Омарова");
            }
            other => panic!("expected a case, got {other:?}"),
        },
        other => panic!("expected a decision, got {other:?}"),
    }
    let school_inbox = director.inbox().await;
    assert_eq!(
        school_inbox.len(),
        1,
        "the decision reaches the school once"
    );
    assert_eq!(
        school_inbox[0].form_kind,
        FormKind::HelpRequestDecision as i32
    );
    assert_eq!(secretary.inbox().await.len(), 1);

    hub.gateway()
        .verify_ledger()
        .await
        .expect("the ledger verifies");
    let message_entries: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM ledger WHERE event LIKE 'message.%'")
            .fetch_one(hub.gateway().database().pool())
            .await
            .unwrap();
    assert_eq!(
        message_entries, 4,
        "two messages, each accepted and delivered"
    );
    hub.shutdown().await;
}

// The other decision: no further action, with its reason, seen by the sender.
async fn no_further_action_reaches_the_sender_with_its_reason(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let doctor = hub.staff("health-1", "doctor").await;
    let k_id = doctor
        .submit_k("health-k-0001", "", sample_k(&hub))
        .await
        .expect("a health worker submits K");
    hub.delivered(&k_id).await;
    let secretary = hub.staff("commission", "secretary").await;
    let reason = "Мәселе мектеп деңгейінде шешілді / решено на уровне школы";
    let decision = secretary
        .decide(
            &k_id,
            "decision-nfa-1",
            decide_help_request_request::Outcome::NoFurtherAction(NoFurtherAction {
                reason: reason.into(),
            }),
        )
        .await
        .expect("the secretary records no further action");
    hub.delivered(&decision.decision_message_id).await;
    let seen = doctor
        .client
        .clone()
        .get_sent_message(doctor.req(GetSentMessageRequest { message_id: k_id }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.status, ReferralStatus::Rejected as i32);
    match seen.answer.and_then(|a| a.payload).and_then(|p| p.form) {
        Some(payload::Form::HelpRequestDecision(d)) => match d.outcome {
            Some(help_request_decision::Outcome::NoFurtherAction(n)) => {
                assert_eq!(n.reason, reason)
            }
            other => panic!("expected no further action, got {other:?}"),
        },
        other => panic!("expected a decision, got {other:?}"),
    }
    // A second decision on the same K is refused.
    let again = secretary
        .decide(
            &decision.decision.unwrap().help_request_message_id,
            "decision-nfa-2",
            decide_help_request_request::Outcome::OpenCase(OpenCase {
                curator_user_id: "curator-1".into(),
            }),
        )
        .await
        .expect_err("a decided K cannot be decided again");
    assert_eq!(again.code(), Code::FailedPrecondition);
    hub.shutdown().await;
}

// Acceptance 2: the same K re-sent with the same idempotency key returns the same message id
// and is delivered once; the same key with other content is refused.
async fn resending_with_the_same_key_yields_one_message_and_one_delivery(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let director = hub.staff("school-1", "director").await;
    let k = sample_k(&hub);
    let first = director
        .submit_k("same-key-0001", "", k.clone())
        .await
        .unwrap();
    let second = director
        .submit_k("same-key-0001", "", k.clone())
        .await
        .unwrap();
    assert_eq!(first, second, "the same key yields the same message id");
    hub.delivered(&first).await;
    let third = director
        .submit_k("same-key-0001", "", k.clone())
        .await
        .unwrap();
    assert_eq!(first, third, "also after delivery");

    let mut other = k.clone();
    other.problem_description.push_str(" (changed)");
    let conflict = director
        .submit_k("same-key-0001", "", other)
        .await
        .expect_err("a key reused for other content is refused");
    assert_eq!(conflict.code(), Code::AlreadyExists);

    hub.gateway().wake_worker();
    let secretary = hub.staff("commission", "secretary").await;
    assert_eq!(secretary.inbox().await.len(), 1);
    assert_eq!(hub.gateway_count("messages").await, 1);
    assert_eq!(hub.gateway_count("outbox").await, 0);
    assert_eq!(hub.attempts(&first).await, 1, "a single delivery attempt");
    assert_eq!(director.sent().await.len(), 1);

    // The gateway itself keeps the promise, whatever the agency service remembers.
    let mut gateway = hub.gateway_client_as("school-2").await;
    let direct = |key: &str, k: HelpRequest| {
        referral_tests::envelope(
            "school-2",
            "director",
            referral_proto::v1::Role::SchoolDirector,
            "commission",
            key,
            k,
        )
    };
    let a = gateway
        .send(referral_proto::v1::SendRequest {
            envelope: Some(direct("direct-key-0001", k.clone())),
        })
        .await
        .unwrap()
        .into_inner();
    let b = gateway
        .send(referral_proto::v1::SendRequest {
            envelope: Some(direct("direct-key-0001", k.clone())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.message_id, b.message_id);
    assert!(!a.duplicate && b.duplicate);
    let mut changed = k.clone();
    changed.recurrence = "Күнде / ежедневно".into();
    let err = gateway
        .send(referral_proto::v1::SendRequest {
            envelope: Some(direct("direct-key-0001", changed)),
        })
        .await
        .expect_err("same key, other content");
    assert_eq!(err.code(), Code::AlreadyExists);
    hub.delivered(&a.message_id).await;
    assert_eq!(secretary.inbox().await.len(), 2);
    assert_eq!(hub.gateway_count("messages").await, 2);
    assert_eq!(hub.attempts(&a.message_id).await, 1);
    hub.shutdown().await;
}

// Acceptance 3: the commission is down while a school sends K: the send is acknowledged and
// queued; after the commission restarts it is delivered exactly once.
async fn k_sent_while_commission_is_down_is_delivered_once_after_restart(backend: Backend) {
    let hub = TestHub::start(backend).await;
    hub.stop_agency("commission").await;
    let director = hub.staff("school-1", "director").await;
    let k_id = director
        .submit_k("while-down-0001", "", sample_k(&hub))
        .await
        .expect("the gateway acknowledges while the commission is down");
    hub.failed_attempts(&k_id, 1).await;
    hub.clock.advance(SignedDuration::from_secs(5));
    hub.failed_attempts(&k_id, 2).await;
    assert_eq!(hub.gateway_state(&k_id).await.as_deref(), Some("queued"));
    let status = director
        .client
        .clone()
        .get_sent_message(director.req(GetSentMessageRequest {
            message_id: k_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.state, DeliveryState::Queued as i32);

    // Hours later the commission is back; the next retry delivers.
    hub.start_agency("commission").await.unwrap();
    hub.clock.advance(SignedDuration::from_hours(3));
    hub.delivered(&k_id).await;
    let secretary = hub.staff("commission", "secretary").await;
    let items = secretary.inbox().await;
    assert_eq!(items.len(), 1, "delivered exactly once");
    assert_eq!(items[0].message_id, k_id);
    assert_eq!(hub.gateway_count("outbox").await, 0);
    hub.shutdown().await;
}

// Acceptance 5: an NGO sends K to the police: PERMISSION_DENIED, nothing stored anywhere.
async fn ngo_k_to_police_is_refused_and_nothing_is_stored(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let ngo = hub.staff("ngo-1", "case-manager").await;
    let refused = ngo
        .submit_k("ngo-to-police-1", "police-1", sample_k(&hub))
        .await
        .expect_err("no route from an NGO to the police for K");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(hub.gateway_count("messages").await, 0);
    assert_eq!(hub.gateway_count("outbox").await, 0);
    // The ledger records the refusal itself (issue 4: every denial is an audit event), and only
    // that: metadata, no payload digest.
    let entries: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT event, outcome, recipient_agency_id, payload_sha256 FROM ledger ORDER BY seq",
    )
    .fetch_all(hub.gateway().database().pool())
    .await
    .unwrap();
    assert_eq!(
        entries,
        vec![(
            "access.denied".to_owned(),
            "denied".to_owned(),
            "police-1".to_owned(),
            String::new()
        )]
    );
    assert!(ngo.sent().await.is_empty(), "nothing kept by the NGO");
    assert_eq!(hub.agency_count("ngo-1", "sent_messages").await, 0);
    assert_eq!(hub.agency_count("police-1", "received_messages").await, 0);
    let police = hub.staff("police-1", "inspector").await;
    assert!(
        police.inbox().await.is_empty(),
        "nothing reaches the police"
    );

    // Directly at the gateway, with the NGO's own certificate: the same answer.
    let mut gateway = hub.gateway_client_as("ngo-1").await;
    let envelope = referral_tests::envelope(
        "ngo-1",
        "case-manager",
        referral_proto::v1::Role::NgoCaseManager,
        "police-1",
        "direct-ngo-police",
        sample_k(&hub),
    );
    let refused = gateway
        .send(referral_proto::v1::SendRequest {
            envelope: Some(envelope),
        })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(hub.gateway_count("messages").await, 0);
    hub.shutdown().await;
}

// Acceptance 6: invalid K answers INVALID_ARGUMENT naming the fields, and stores nothing.
async fn invalid_k_names_every_bad_field_and_stores_nothing(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let director = hub.staff("school-1", "director").await;
    let mut k = sample_k(&hub);
    let child = k.child.as_mut().unwrap();
    child.full_name = "   ".into();
    let last = child.iin.pop().unwrap().to_digit(10).unwrap();
    child
        .iin
        .push(char::from_digit((last + 1) % 10, 10).unwrap());
    let next_year = today(&hub).year() as i32 + 1;
    child.date_of_birth.as_mut().unwrap().year = next_year;

    let err = director
        .submit_k("invalid-k-0001", "", k.clone())
        .await
        .expect_err("an invalid K is refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<String> = field_violations(&err)
        .into_iter()
        .map(|v| v.field)
        .collect();
    for expected in [
        "help_request.child.full_name",
        "help_request.child.iin",
        "help_request.child.date_of_birth",
    ] {
        assert!(
            fields.iter().any(|f| f == expected),
            "{expected} missing from {fields:?}"
        );
    }
    assert!(director.sent().await.is_empty(), "the school keeps nothing");
    assert_eq!(hub.agency_count("school-1", "sent_messages").await, 0);
    assert_eq!(hub.gateway_count("messages").await, 0);

    // The gateway checks the form too, whatever a client sends.
    let mut gateway = hub.gateway_client_as("school-1").await;
    let err = gateway
        .send(referral_proto::v1::SendRequest {
            envelope: Some(referral_tests::envelope(
                "school-1",
                "director",
                referral_proto::v1::Role::SchoolDirector,
                "commission",
                "invalid-direct-1",
                k,
            )),
        })
        .await
        .expect_err("the gateway refuses an invalid K");
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<String> = field_violations(&err)
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert!(
        fields.contains(&"envelope.payload.help_request.child.iin".to_string()),
        "{fields:?}"
    );
    assert_eq!(hub.gateway_count("messages").await, 0);
    assert_eq!(hub.gateway_count("ledger").await, 0);
    let secretary = hub.staff("commission", "secretary").await;
    assert!(secretary.inbox().await.is_empty());
    assert_eq!(hub.agency_count("commission", "received_messages").await, 0);
    hub.shutdown().await;
}

// Oversized messages are refused by the decoder, not buffered, and change nothing.
async fn oversized_k_is_refused(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let director = hub.staff("school-1", "director").await;
    let mut k = sample_k(&hub);
    k.problem_description = "ә".repeat(1024 * 1024);
    let err = director
        .submit_k("oversized-0001", "", k)
        .await
        .expect_err("an oversized K is refused");
    // tonic refuses from the 5-byte length prefix, before reading the body, with OUT_OF_RANGE.
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(director.sent().await.is_empty());
    assert_eq!(hub.agency_count("school-1", "sent_messages").await, 0);
    assert_eq!(hub.gateway_count("messages").await, 0);
    hub.shutdown().await;
}

// Acceptance 7: the ledger verifies; changing any stored entry makes verification fail and say
// which entry.
async fn tampering_with_the_ledger_is_detected_and_located(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let director = hub.staff("school-1", "director").await;
    let k_id = director
        .submit_k("ledger-k-0001", "", sample_k(&hub))
        .await
        .unwrap();
    hub.delivered(&k_id).await;
    let second = director
        .submit_k("ledger-k-0002", "", {
            let mut k = sample_k(&hub);
            k.recurrence = "Күн сайын / ежедневно".into();
            k
        })
        .await
        .unwrap();
    hub.delivered(&second).await;
    let verified = hub
        .gateway()
        .verify_ledger()
        .await
        .expect("an untouched ledger verifies");
    assert_eq!(verified.entries, 4);

    sqlx::query("UPDATE ledger SET recipient_agency_id = 'school-2' WHERE seq = 2")
        .execute(hub.gateway().database().pool())
        .await
        .unwrap();
    let broken = hub
        .gateway()
        .verify_ledger()
        .await
        .expect_err("tampering is detected");
    let text = broken.to_string();
    assert!(text.contains("ledger entry 2"), "names the entry: {text}");

    // Restoring the field makes it verify again: the check is about content, not about writes.
    sqlx::query("UPDATE ledger SET recipient_agency_id = 'commission' WHERE seq = 2")
        .execute(hub.gateway().database().pool())
        .await
        .unwrap();
    hub.gateway().verify_ledger().await.expect("verifies again");

    sqlx::query("UPDATE ledger SET payload_sha256 = 'ff' WHERE seq = 3")
        .execute(hub.gateway().database().pool())
        .await
        .unwrap();
    let text = hub.gateway().verify_ledger().await.unwrap_err().to_string();
    assert!(text.contains("ledger entry 3"), "names the entry: {text}");
    hub.shutdown().await;
}

// Nothing is lost when the gateway itself dies: a queued message survives a crash of the
// gateway and is delivered once by its successor.
async fn queued_k_survives_a_gateway_crash(backend: Backend) {
    let hub = TestHub::start(backend).await;
    hub.stop_agency("commission").await;
    let director = hub.staff("school-1", "director").await;
    let k_id = director
        .submit_k("crash-k-0001", "", sample_k(&hub))
        .await
        .unwrap();
    hub.failed_attempts(&k_id, 1).await;
    hub.crash_and_restart_gateway().await.unwrap();
    hub.start_agency("commission").await.unwrap();
    hub.clock.advance(SignedDuration::from_hours(1));
    hub.delivered(&k_id).await;
    let secretary = hub.staff("commission", "secretary").await;
    assert_eq!(secretary.inbox().await.len(), 1);
    hub.gateway()
        .verify_ledger()
        .await
        .expect("the ledger survives the crash intact");
    hub.shutdown().await;
}

// A redelivery (the gateway died after the inbox took a message but before it recorded that)
// has no second effect: the inbox de-duplicates by message id.
async fn a_redelivered_message_is_received_once(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let director = hub.staff("school-1", "director").await;
    let k_id = director
        .submit_k("redeliver-0001", "", sample_k(&hub))
        .await
        .unwrap();
    hub.delivered(&k_id).await;
    let stored = hub
        .gateway_envelope(&k_id)
        .await
        .expect("the gateway keeps what it delivered");
    let mut as_gateway = hub
        .inbox_client(
            "commission",
            &hub.ca,
            &referral_core::pki::ComponentIdentity::Gateway,
        )
        .await
        .unwrap();
    let again = as_gateway
        .deliver(referral_proto::v1::DeliverRequest {
            envelope: Some(stored),
        })
        .await
        .expect("a repeat is acknowledged")
        .into_inner();
    assert!(again.duplicate, "the inbox recognises the repeat");
    let secretary = hub.staff("commission", "secretary").await;
    assert_eq!(secretary.inbox().await.len(), 1);
    assert_eq!(hub.agency_count("commission", "received_messages").await, 1);
    hub.shutdown().await;
}

// Two gateway replicas over one store drain the same outbox: every message is delivered once,
// by one of them, never by both.
async fn two_gateway_replicas_deliver_each_message_once(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let replica = hub.start_replica_gateway().await.unwrap();
    hub.stop_agency("commission").await;
    let director = hub.staff("school-1", "director").await;
    let mut ids = Vec::new();
    for n in 0..12 {
        let mut k = sample_k(&hub);
        k.recurrence = format!("{n} рет / раз");
        ids.push(
            director
                .submit_k(&format!("replica-k-{n:04}"), "", k)
                .await
                .unwrap(),
        );
    }
    for id in &ids {
        hub.failed_attempts(id, 1).await;
    }
    hub.start_agency("commission").await.unwrap();
    // Every retry falls due at once, and both replicas are told to look: they race for the rows.
    hub.clock.advance(SignedDuration::from_hours(1));
    hub.gateway().wake_worker();
    replica.wake_worker();
    for id in &ids {
        hub.delivered(id).await;
    }
    let secretary = hub.staff("commission", "secretary").await;
    assert_eq!(secretary.inbox().await.len(), ids.len());
    for id in &ids {
        assert_eq!(
            hub.attempts(id).await,
            2,
            "one failed attempt and one delivery of {id}"
        );
    }
    let delivered: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM ledger WHERE event = 'message.delivered'")
            .fetch_one(hub.gateway().database().pool())
            .await
            .unwrap();
    assert_eq!(delivered, ids.len() as i64);
    hub.gateway()
        .verify_ledger()
        .await
        .expect("one linear chain");
    hub.shutdown().await;
}

both_backends!(
    two_gateway_replicas_deliver_each_message_once,
    a_redelivered_message_is_received_once,
    queued_k_survives_a_gateway_crash,
    school_k_reaches_commission_and_school_sees_case_opened,
    no_further_action_reaches_the_sender_with_its_reason,
    resending_with_the_same_key_yields_one_message_and_one_delivery,
    k_sent_while_commission_is_down_is_delivered_once_after_restart,
    ngo_k_to_police_is_refused_and_nothing_is_stored,
    invalid_k_names_every_bad_field_and_stores_nothing,
    oversized_k_is_refused,
    tampering_with_the_ledger_is_detected_and_located,
);
