//! The agency services' staff API through the real hub: who may call what, what staff see, and
//! how a service behaves when the gateway is down or refuses. Real components on port 0 over real
//! mTLS, each scenario on SQLite and on PostgreSQL.

use jiff::{SignedDuration, tz::TimeZone};
use referral_agency::{AgencyKind, AgencyService, BuildError};
use referral_core::{error::field_violations, pki::ComponentIdentity, validate};
use referral_proto::v1::{
    DeliverRequest, DeliveryState, Envelope, FormKind, GetMessageRequest, GetSentMessageRequest,
    HelpRequest, ListStaffRequest, NoFurtherAction, OpenCase, ReceivedMessage, ReferralStatus,
    Role, SendRequest, SentMessage, WhoAmIRequest, decide_help_request_request::Outcome,
    help_request_decision, payload,
};
use referral_tests::{Backend, StaffClient, TestHub, both_backends};
use tokio_util::sync::CancellationToken;
use tonic::Code;

fn sample_k(hub: &TestHub) -> HelpRequest {
    let today = hub
        .clock
        .now()
        .to_zoned(TimeZone::get("Asia/Almaty").unwrap())
        .date();
    validate::sample_help_request(today)
}

/// The same staff client, calling with another bearer token.
fn with_token(staff: &StaffClient, token: impl Into<String>) -> StaffClient {
    staff.with_token(token)
}

fn open_case(curator: &str) -> Outcome {
    Outcome::OpenCase(OpenCase {
        curator_user_id: curator.into(),
    })
}

fn no_further_action(reason: &str) -> Outcome {
    Outcome::NoFurtherAction(NoFurtherAction {
        reason: reason.into(),
    })
}

async fn get_message(
    staff: &StaffClient,
    message_id: &str,
) -> Result<ReceivedMessage, tonic::Status> {
    staff
        .client
        .clone()
        .get_message(staff.req(GetMessageRequest {
            message_id: message_id.into(),
        }))
        .await
        .map(|r| r.into_inner())
}

async fn get_sent(staff: &StaffClient, message_id: &str) -> Result<SentMessage, tonic::Status> {
    staff
        .client
        .clone()
        .get_sent_message(staff.req(GetSentMessageRequest {
            message_id: message_id.into(),
        }))
        .await
        .map(|r| r.into_inner())
}

async fn who_am_i(
    staff: &StaffClient,
) -> Result<referral_proto::v1::WhoAmIResponse, tonic::Status> {
    staff
        .client
        .clone()
        .who_am_i(staff.req(WhoAmIRequest {}))
        .await
        .map(|r| r.into_inner())
}

async fn list_staff(staff: &StaffClient, role: i32) -> Result<Vec<String>, tonic::Status> {
    staff
        .client
        .clone()
        .list_staff(staff.req(ListStaffRequest { role }))
        .await
        .map(|r| {
            let mut ids: Vec<String> = r
                .into_inner()
                .staff
                .into_iter()
                .map(|s| s.user_id)
                .collect();
            ids.sort();
            ids
        })
}

fn fields(status: &tonic::Status) -> Vec<String> {
    field_violations(status)
        .into_iter()
        .map(|v| v.field)
        .collect()
}

/// A school submits K and the gateway delivers it to the commission; returns its message id.
async fn delivered_k(hub: &TestHub, agency: &str, user: &str, key: &str) -> String {
    let staff = hub.staff(agency, user).await;
    let k_id = staff
        .submit_k(key, "", sample_k(hub))
        .await
        .expect("the K is submitted");
    hub.delivered(&k_id).await;
    k_id
}

// WhoAmI names the caller as their token does and the agency the service runs.
async fn who_am_i_names_the_caller_and_their_agency(backend: Backend) {
    let hub = TestHub::start(backend).await;
    for (agency, user, role, kind) in [
        (
            "school-1",
            "director",
            Role::SchoolDirector,
            AgencyKind::School,
        ),
        (
            "commission",
            "curator-2",
            Role::CommissionCurator,
            AgencyKind::Commission,
        ),
        (
            "ngo-2",
            "case-manager",
            Role::NgoCaseManager,
            AgencyKind::Ngo,
        ),
    ] {
        let staff = hub.staff(agency, user).await;
        let me = who_am_i(&staff)
            .await
            .expect("a staff member knows who they are");
        let person = me.user.expect("the acting user");
        assert_eq!(person.user_id, user);
        assert_eq!(person.agency_id, agency);
        assert_eq!(person.role, role as i32);
        assert_eq!(
            person.display_name,
            hub.directory.user(agency, user).unwrap().full_name
        );
        let entry = hub.directory.agency(agency).unwrap();
        let info = me.agency.expect("the agency");
        assert_eq!(info.agency_id, agency);
        assert_eq!(info.kind, kind as i32);
        assert_eq!(info.district_id, "demo-district");
        assert_eq!(info.name_kk, entry.name_kk);
        assert_eq!(info.name_ru, entry.name_ru);
    }
    hub.shutdown().await;
}

// ListStaff lists the agency's own staff, filtered by role when asked.
async fn list_staff_filters_by_role(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let secretary = hub.staff("commission", "secretary").await;
    assert_eq!(
        list_staff(&secretary, Role::CommissionCurator as i32)
            .await
            .unwrap(),
        ["curator-1", "curator-2"],
        "the secretary picks a curator from the commission's curators"
    );
    assert_eq!(
        list_staff(&secretary, Role::Unspecified as i32)
            .await
            .unwrap(),
        ["chair", "curator-1", "curator-2", "secretary"],
        "no filter lists everyone of the commission, and no one else"
    );
    assert_eq!(
        list_staff(&secretary, Role::CommissionChair as i32)
            .await
            .unwrap(),
        ["chair"]
    );
    assert!(
        list_staff(&secretary, Role::SchoolDirector as i32)
            .await
            .unwrap()
            .is_empty(),
        "a role the commission does not have lists no one"
    );
    let err = list_staff(&secretary, 9_999)
        .await
        .expect_err("an unknown role is refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(fields(&err), ["role"]);

    let director = hub.staff("school-1", "director").await;
    assert_eq!(
        list_staff(&director, Role::SafeguardingLead as i32)
            .await
            .unwrap(),
        ["safeguarding-lead"]
    );
    assert_eq!(
        list_staff(&director, Role::Unspecified as i32)
            .await
            .unwrap(),
        [
            "director",
            "safeguarding-deputy",
            "safeguarding-lead",
            "safety-team"
        ]
    );
    hub.shutdown().await;
}

// Staff need a valid, unexpired token of their own agency, and a role that may do what they ask.
async fn staff_need_a_token_of_their_own_agency_and_a_role_that_may_act(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let k_id = delivered_k(&hub, "school-1", "director", "roles-k-0001").await;
    let director = hub.staff("school-1", "director").await;

    for (token, what) in [
        ("not-a-token".to_owned(), "garbage"),
        (
            hub.token("school-2", "director"),
            "another school's director",
        ),
        (
            hub.token("commission", "secretary"),
            "the commission's secretary",
        ),
    ] {
        let err = who_am_i(&with_token(&director, token))
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
    }

    // The commission does not submit K.
    let secretary = hub.staff("commission", "secretary").await;
    let err = secretary
        .submit_k("commission-k-0001", "", sample_k(&hub))
        .await
        .expect_err("the commission does not submit K");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(hub.agency_count("commission", "sent_messages").await, 0);

    // Nobody but the commission's secretary or chair decides, on the commission's service.
    let err = director
        .decide(&k_id, "decide-0001", open_case("curator-1"))
        .await
        .expect_err("a school director does not decide");
    assert_eq!(err.code(), Code::PermissionDenied);
    let ngo = hub.staff("ngo-1", "case-manager").await;
    let err = ngo
        .decide(&k_id, "decide-0001", no_further_action("not ours"))
        .await
        .expect_err("an NGO case manager does not decide");
    assert_eq!(err.code(), Code::PermissionDenied);
    for curator in ["curator-1", "curator-2"] {
        let staff = hub.staff("commission", curator).await;
        let err = staff
            .decide(&k_id, "decide-0001", open_case(curator))
            .await
            .expect_err("a curator does not decide");
        assert_eq!(err.code(), Code::PermissionDenied);
    }
    assert_eq!(hub.agency_count("commission", "decisions").await, 0);
    assert_eq!(hub.agency_count("commission", "cases").await, 0);
    assert_eq!(hub.agency_count("commission", "sent_messages").await, 0);
    assert_eq!(hub.agency_count("school-1", "received_messages").await, 0);
    assert_eq!(hub.gateway_count("messages").await, 1, "only the K");
    let copy = get_message(&secretary, &k_id).await.unwrap();
    assert_eq!(
        copy.status,
        ReferralStatus::Received as i32,
        "still undecided"
    );
    assert!(copy.decision.is_none());

    // The secretary, on a help request the commission does not have.
    let unknown = uuid::Uuid::now_v7().to_string();
    let err = secretary
        .decide(&unknown, "decide-0002", open_case("curator-1"))
        .await
        .expect_err("no such help request");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(hub.agency_count("commission", "decisions").await, 0);

    // The chair may decide.
    let chair = hub.staff("commission", "chair").await;
    let decided = chair
        .decide(&k_id, "decide-chair-1", open_case("curator-2"))
        .await
        .expect("the chair decides");
    assert_eq!(decided.decision.unwrap().decided_by, "chair");
    hub.delivered(&decided.decision_message_id).await;
    assert_eq!(hub.agency_count("commission", "decisions").await, 1);

    // A token that has expired is refused; a fresh one of the same person is not.
    hub.clock.advance(SignedDuration::from_hours(9));
    let err = who_am_i(&director)
        .await
        .expect_err("an 8-hour token is expired 9 hours later");
    assert_eq!(err.code(), Code::Unauthenticated);
    let fresh = with_token(&director, hub.token("school-1", "director"));
    who_am_i(&fresh).await.expect("a fresh token works");
    hub.shutdown().await;
}

// Nobody reads a message their agency did not receive (or send): NOT_FOUND, not someone else's
// data.
async fn messages_of_another_agency_or_unknown_ids_are_not_found(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let k_id = delivered_k(&hub, "school-1", "director", "not-found-k-01").await;
    let director = hub.staff("school-1", "director").await;
    let secretary = hub.staff("commission", "secretary").await;
    // The owners see it.
    get_message(&secretary, &k_id)
        .await
        .expect("the commission received it");
    get_sent(&director, &k_id)
        .await
        .expect("the school sent it");

    let police = hub.staff("police-1", "inspector").await;
    let school2 = hub.staff("school-2", "director").await;
    let unknown = uuid::Uuid::now_v7().to_string();
    for (staff, id, what) in [
        (
            &director,
            &k_id,
            "the sender's inbox does not hold its own K",
        ),
        (&police, &k_id, "another agency"),
        (&school2, &k_id, "another school"),
        (&secretary, &unknown, "an unknown id"),
    ] {
        let err = get_message(staff, id).await.expect_err(what);
        assert_eq!(err.code(), Code::NotFound, "GetMessage, {what}: {err:?}");
    }
    for (staff, id, what) in [
        (&school2, &k_id, "another school"),
        (&secretary, &k_id, "the recipient did not send it"),
        (&director, &unknown, "an unknown id"),
    ] {
        let err = get_sent(staff, id).await.expect_err(what);
        assert_eq!(
            err.code(),
            Code::NotFound,
            "GetSentMessage, {what}: {err:?}"
        );
    }
    hub.shutdown().await;
}

// What the commission sees of a K and of its own decision, and what the school sees of it.
async fn commission_and_school_see_names_summaries_and_the_decision(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let k = sample_k(&hub);
    let child_name = k.child.as_ref().unwrap().full_name.clone();
    let director = hub.staff("school-1", "director").await;
    let k_id = director.submit_k("names-k-0001", "", k).await.unwrap();
    hub.delivered(&k_id).await;

    let secretary = hub.staff("commission", "secretary").await;
    let items = secretary.inbox_of(FormKind::HelpRequest).await;
    assert_eq!(items.len(), 1);
    let school = hub.directory.agency("school-1").unwrap();
    assert_eq!(items[0].message_id, k_id);
    assert_eq!(
        items[0].summary, child_name,
        "the child's name is the summary"
    );
    assert_eq!(items[0].sender_name_kk, school.name_kk);
    assert_eq!(items[0].sender_name_ru, school.name_ru);
    assert_eq!(items[0].status, ReferralStatus::Received as i32);
    assert!(
        secretary
            .inbox_of(FormKind::HelpRequestDecision)
            .await
            .is_empty(),
        "the filter by form kind filters"
    );

    let decided = secretary
        .decide(&k_id, "names-decide-1", open_case("curator-1"))
        .await
        .expect("the secretary opens a case");
    let decision = decided.decision.clone().unwrap();
    let Some(help_request_decision::Outcome::CaseOpened(case)) = &decision.outcome else {
        panic!("no case opened: {decision:?}");
    };
    assert_eq!(
        case.case_reference, "KTIZhK-2026-000001",
        "the first case of the year in the district"
    );
    assert_eq!(case.curator_user_id, "curator-1");
    assert_eq!(decision.decided_by, "secretary");
    assert_eq!(decision.help_request_message_id, k_id);
    hub.delivered(&decided.decision_message_id).await;

    // Deciding again with the same key answers the same decision, and sends nothing new.
    let again = secretary
        .decide(&k_id, "names-decide-1", open_case("curator-1"))
        .await
        .expect("the same key is a retry");
    assert_eq!(again.decision_message_id, decided.decision_message_id);
    assert_eq!(again.decision, decided.decision);
    assert_eq!(hub.gateway_count("messages").await, 2);
    assert_eq!(hub.agency_count("commission", "cases").await, 1);

    // The commission's copy of the K shows the decision.
    let copy = get_message(&secretary, &k_id).await.unwrap();
    assert_eq!(copy.status, ReferralStatus::Accepted as i32);
    assert_eq!(copy.decision.as_ref(), Some(&decision));
    assert_eq!(
        secretary.inbox().await[0].status,
        ReferralStatus::Accepted as i32
    );

    // The school sees it on its sent K, in its sent list and in its inbox.
    let mine = get_sent(&director, &k_id).await.unwrap();
    assert_eq!(mine.state, DeliveryState::Answered as i32);
    assert_eq!(mine.status, ReferralStatus::Accepted as i32);
    assert_eq!(mine.answer.unwrap().message_id, decided.decision_message_id);
    let listed = director.sent().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].message_id, k_id);
    assert_eq!(listed[0].summary, child_name);
    assert_eq!(listed[0].recipient_agency_id, "commission");
    assert_eq!(listed[0].status, ReferralStatus::Accepted as i32);
    let decisions = director.inbox_of(FormKind::HelpRequestDecision).await;
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].message_id, decided.decision_message_id);
    assert_eq!(decisions[0].summary, "KTIZhK-2026-000001");
    assert_eq!(decisions[0].sender_agency_id, "commission");
    assert!(director.inbox_of(FormKind::HelpRequest).await.is_empty());
    let received = get_message(&director, &decided.decision_message_id)
        .await
        .expect("the school reads the decision");
    assert_eq!(received.decision.as_ref(), Some(&decision));
    hub.shutdown().await;
}

// Opening a case needs a curator of this commission; anything else names the field and stores
// nothing, not even a case number.
async fn deciding_with_an_unknown_curator_names_the_field_and_stores_nothing(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let k_id = delivered_k(&hub, "school-1", "director", "curator-k-0001").await;
    let secretary = hub.staff("commission", "secretary").await;
    for (curator, what) in [
        ("curator-9", "nobody of that id"),
        ("secretary", "a commission member who is not a curator"),
        ("chair", "the chair, who is not a curator"),
        ("director", "a user of another agency"),
    ] {
        let err = secretary
            .decide(&k_id, "curator-decide-1", open_case(curator))
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert_eq!(fields(&err), ["open_case.curator_user_id"], "{what}");
    }
    assert_eq!(hub.agency_count("commission", "cases").await, 0);
    assert_eq!(hub.agency_count("commission", "case_counters").await, 0);
    assert_eq!(hub.agency_count("commission", "decisions").await, 0);
    assert_eq!(hub.agency_count("commission", "sent_messages").await, 0);
    assert_eq!(hub.gateway_count("messages").await, 1, "only the K");
    let copy = get_message(&secretary, &k_id).await.unwrap();
    assert_eq!(copy.status, ReferralStatus::Received as i32);
    assert!(copy.decision.is_none());

    // The same key then opens the case, with the year's first number.
    let decided = secretary
        .decide(&k_id, "curator-decide-1", open_case("curator-2"))
        .await
        .expect("a curator of the commission");
    match decided.decision.and_then(|d| d.outcome) {
        Some(help_request_decision::Outcome::CaseOpened(case)) => {
            assert_eq!(case.case_reference, "KTIZhK-2026-000001");
            assert_eq!(case.curator_user_id, "curator-2");
        }
        other => panic!("expected a case, got {other:?}"),
    }
    assert_eq!(hub.agency_count("commission", "cases").await, 1);
    hub.delivered(&decided.decision_message_id).await;
    hub.shutdown().await;
}

// With the gateway down, a K is answered UNAVAILABLE and kept; submitting again with the same key
// once the gateway is back sends it, as one message the commission receives once.
async fn gateway_down_submit_is_unavailable_and_the_retry_sends_it_once(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let director = hub.staff("school-1", "director").await;
    let k = sample_k(&hub);
    hub.stop_gateway().await;
    let err = director
        .submit_k("retry-key-0001", "", k.clone())
        .await
        .expect_err("the gateway is down");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("same idempotency key"), "{err:?}");
    assert_eq!(
        hub.agency_count("school-1", "sent_messages").await,
        1,
        "the request is kept for the retry"
    );

    hub.start_gateway().await.unwrap();
    assert_eq!(hub.gateway_count("messages").await, 0, "nothing reached it");
    let k_id = director
        .submit_k("retry-key-0001", "", k.clone())
        .await
        .expect("the retry goes through");
    hub.delivered(&k_id).await;
    let again = director
        .submit_k("retry-key-0001", "", k)
        .await
        .expect("and stays the same message");
    assert_eq!(again, k_id);
    assert_eq!(hub.gateway_count("messages").await, 1);
    assert_eq!(hub.agency_count("school-1", "sent_messages").await, 1);
    let secretary = hub.staff("commission", "secretary").await;
    let items = secretary.inbox().await;
    assert_eq!(items.len(), 1, "the commission receives it once");
    assert_eq!(items[0].message_id, k_id);
    assert_eq!(hub.agency_count("commission", "received_messages").await, 1);
    let live = get_sent(&director, &k_id).await.unwrap();
    assert_eq!(live.state, DeliveryState::Delivered as i32);

    // With the gateway down again, the sent K is answered from the school's own store.
    hub.stop_gateway().await;
    let stored = get_sent(&director, &k_id)
        .await
        .expect("answered without the gateway");
    assert_eq!(stored.envelope.unwrap().message_id, k_id);
    assert_eq!(stored.state, DeliveryState::Delivered as i32);
    assert_eq!(stored.status, ReferralStatus::Received as i32);
    hub.start_gateway().await.unwrap();
    hub.shutdown().await;
}

// A decision taken while the gateway is down is recorded and answered UNAVAILABLE; deciding
// again with the same key sends it, and the school sees it exactly once.
async fn decision_while_gateway_is_down_is_sent_on_the_retry_with_the_same_key(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let k_id = delivered_k(&hub, "school-1", "safeguarding-lead", "pending-k-0001").await;
    let secretary = hub.staff("commission", "secretary").await;
    let reason = "the school's measures are enough";

    hub.stop_gateway().await;
    let err = secretary
        .decide(&k_id, "pending-decide-1", no_further_action(reason))
        .await
        .expect_err("the gateway is down");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("same idempotency key"), "{err:?}");
    assert_eq!(
        hub.agency_count("commission", "decisions").await,
        1,
        "recorded"
    );
    assert_eq!(hub.agency_count("commission", "sent_messages").await, 1);
    // Recorded: another key is refused.
    let err = secretary
        .decide(&k_id, "pending-decide-2", open_case("curator-1"))
        .await
        .expect_err("already decided");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(hub.agency_count("commission", "decisions").await, 1);
    assert_eq!(hub.agency_count("commission", "cases").await, 0);

    hub.start_gateway().await.unwrap();
    assert_eq!(hub.gateway_count("messages").await, 1, "only the K so far");
    let decided = secretary
        .decide(&k_id, "pending-decide-1", no_further_action(reason))
        .await
        .expect("the retry sends the decision");
    assert!(!decided.decision_message_id.is_empty());
    hub.delivered(&decided.decision_message_id).await;
    let again = secretary
        .decide(&k_id, "pending-decide-1", no_further_action(reason))
        .await
        .expect("and again answers the same");
    assert_eq!(again.decision_message_id, decided.decision_message_id);
    assert_eq!(hub.gateway_count("messages").await, 2);

    let lead = hub.staff("school-1", "safeguarding-lead").await;
    let decisions = lead.inbox_of(FormKind::HelpRequestDecision).await;
    assert_eq!(decisions.len(), 1, "the school sees the decision once");
    assert_eq!(decisions[0].message_id, decided.decision_message_id);
    assert_eq!(hub.agency_count("school-1", "received_messages").await, 1);
    let mine = get_sent(&lead, &k_id).await.unwrap();
    assert_eq!(mine.status, ReferralStatus::Rejected as i32);
    assert_eq!(mine.state, DeliveryState::Answered as i32);
    match mine.answer.and_then(|a| a.payload).and_then(|p| p.form) {
        Some(payload::Form::HelpRequestDecision(d)) => match d.outcome {
            Some(help_request_decision::Outcome::NoFurtherAction(n)) => {
                assert_eq!(n.reason, reason)
            }
            other => panic!("expected no further action, got {other:?}"),
        },
        other => panic!("expected a decision, got {other:?}"),
    }
    let copy = get_message(&secretary, &k_id).await.unwrap();
    assert_eq!(copy.status, ReferralStatus::Rejected as i32);
    hub.shutdown().await;
}

// The gateway's refusal reaches the caller as the gateway said it, nothing is kept, and the key
// stays free for a request the gateway accepts.
async fn a_refusal_by_the_gateway_is_passed_on_and_nothing_is_kept(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let ngo = hub.staff("ngo-1", "case-manager").await;
    let refused = ngo
        .submit_k("refused-key-01", "police-1", sample_k(&hub))
        .await
        .expect_err("no route from an NGO to the police for K");
    assert_eq!(refused.code(), Code::PermissionDenied);

    // What the gateway itself answers the NGO's certificate for the same flow.
    let direct = hub
        .gateway_client_as("ngo-1")
        .await
        .send(SendRequest {
            envelope: Some(referral_tests::envelope(
                "ngo-1",
                "case-manager",
                Role::NgoCaseManager,
                "police-1",
                "refused-direct-01",
                sample_k(&hub),
            )),
        })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), direct.code());
    assert_eq!(refused.message(), direct.message(), "the gateway's words");
    assert_eq!(hub.agency_count("ngo-1", "sent_messages").await, 0);
    assert_eq!(hub.gateway_count("messages").await, 0);

    // Nothing was kept on either side: the same key now sends a K the gateway accepts.
    let k_id = ngo
        .submit_k("refused-key-01", "", sample_k(&hub))
        .await
        .expect("the key is free");
    hub.delivered(&k_id).await;
    assert_eq!(hub.agency_count("ngo-1", "sent_messages").await, 1);
    let listed = ngo.sent().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].recipient_agency_id, "commission");
    let secretary = hub.staff("commission", "secretary").await;
    let items = secretary.inbox().await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].message_id, k_id);
    assert_eq!(items[0].sender_agency_id, "ngo-1");
    assert_eq!(hub.agency_count("police-1", "received_messages").await, 0);
    hub.shutdown().await;
}

// A service will not run an agency the directory lists as another kind, nor one it does not list.
async fn a_service_refuses_to_start_as_another_kind(backend: Backend) {
    let hub = TestHub::start(backend).await;
    // Port 0: school-2's own service is running on its port.
    let config = || {
        let mut config = hub.agency_config("school-2").expect("a config");
        config.listen.set_port(0);
        config
    };
    let err = AgencyService::build(config(), AgencyKind::Commission)
        .await
        .expect_err("school-2 is not a commission");
    assert!(
        matches!(
            err.downcast_ref::<BuildError>(),
            Some(BuildError::WrongKind { id, found, .. }) if id == "school-2" && found == "school"
        ),
        "{err:#}"
    );
    assert!(err.to_string().contains("school"), "{err}");

    let mut unknown = config();
    unknown.agency_id = "school-9".into();
    let err = AgencyService::build(unknown, AgencyKind::School)
        .await
        .expect_err("school-9 is not in the directory");
    assert!(
        matches!(err.downcast_ref::<BuildError>(), Some(BuildError::UnknownAgency(id)) if id == "school-9"),
        "{err:#}"
    );
    assert!(
        err.to_string().contains("not in the agency directory"),
        "{err}"
    );

    // The same configuration with the right kind starts (as the school's service, whose own
    // migrations the store already has).
    let service = referral_school::build(config())
        .await
        .expect("school-2 is a school");
    assert_eq!(service.kind(), AgencyKind::School);
    assert_eq!(service.agency_id(), "school-2");
    let stop = CancellationToken::new();
    stop.cancel();
    service
        .run_until_stopped(stop)
        .await
        .expect("it stops cleanly");
    hub.shutdown().await;
}

// The inbox admits the gateway's certificate (and then checks the envelope), and refuses another
// agency's with PERMISSION_DENIED.
async fn the_inbox_admits_the_gateway_and_checks_the_envelope(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let mut as_school = hub
        .inbox_client(
            "commission",
            &hub.ca,
            &ComponentIdentity::Agency("school-1".into()),
        )
        .await
        .unwrap();
    let err = as_school
        .deliver(DeliverRequest {
            envelope: Some(Envelope::default()),
        })
        .await
        .expect_err("a school's certificate");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    let mut as_gateway = hub
        .inbox_client("commission", &hub.ca, &ComponentIdentity::Gateway)
        .await
        .unwrap();
    let err = as_gateway
        .deliver(DeliverRequest {
            envelope: Some(Envelope::default()),
        })
        .await
        .expect_err("an empty envelope");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let named = fields(&err);
    for field in [
        "envelope.message_id",
        "envelope.sender_agency_id",
        "envelope.recipient_agency_id",
        "envelope.form_kind",
    ] {
        assert!(named.iter().any(|f| f == field), "{field} not in {named:?}");
    }
    assert_eq!(hub.agency_count("commission", "received_messages").await, 0);
    hub.shutdown().await;
}

both_backends!(
    who_am_i_names_the_caller_and_their_agency,
    list_staff_filters_by_role,
    staff_need_a_token_of_their_own_agency_and_a_role_that_may_act,
    messages_of_another_agency_or_unknown_ids_are_not_found,
    commission_and_school_see_names_summaries_and_the_decision,
    deciding_with_an_unknown_curator_names_the_field_and_stores_nothing,
    gateway_down_submit_is_unavailable_and_the_retry_sends_it_once,
    decision_while_gateway_is_down_is_sent_on_the_retry_with_the_same_key,
    a_refusal_by_the_gateway_is_passed_on_and_nothing_is_kept,
    a_service_refuses_to_start_as_another_kind,
    the_inbox_admits_the_gateway_and_checks_the_envelope,
);
