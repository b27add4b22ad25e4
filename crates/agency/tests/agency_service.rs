//! The agency service end to end, against a stand-in gateway: real servers on port 0, real mutual
//! TLS, real SQLite stores, tokens from the development issuer.
//!
//! The stand-in gateway (`FakeGateway`) keeps messages in memory and delivers each one at once to
//! the recipient's inbox with the gateway's certificate; it can be switched to answer
//! `UNAVAILABLE` or `PERMISSION_DENIED`. The real gateway and the whole hub are tested in the
//! workspace's `tests/` crate.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use jiff::{SignedDuration, tz::TimeZone};
use referral_agency::{AgencyConfig, AgencyKind, AgencyService};
use referral_core::{
    Clock,
    auth::{DEV_ISSUER, DevIssuer, TokenVerifier},
    db::StorageConfig,
    directory::Directory,
    error::field_violations,
    pki::{CertificateAuthority, ComponentIdentity, TlsMaterial},
    server,
    tls::{
        client_tls, client_tls_without_identity, install_crypto_provider, peer_identity, server_tls,
    },
    validate,
};
use referral_proto::v1::{
    DecideHelpRequestRequest, DeliverRequest, DeliveryState, DeliveryStatus, Envelope, FormKind,
    GetDeliveryStatusRequest, GetMessageRequest, GetSentMessageRequest, HelpRequest,
    ListAgenciesRequest, ListAgenciesResponse, ListInboxRequest, ListSentRequest, ListStaffRequest,
    NoFurtherAction, OpenCase, ReferralStatus, Role, SendRequest, SendResponse,
    SubmitHelpRequestRequest, WhoAmIRequest,
    agency_inbox_client::AgencyInboxClient,
    agency_staff_client::AgencyStaffClient,
    decide_help_request_request::Outcome,
    gateway_server::{Gateway, GatewayServer},
    help_request_decision,
};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, transport::Channel};

// ---------------------------------------------------------------------------------------------
// A stand-in gateway
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Up,
    Down,
    Refusing,
}

struct Stored {
    envelope: Envelope,
    state: DeliveryState,
    answer: Option<Envelope>,
}

struct GatewayState {
    mode: Mode,
    by_key: HashMap<(String, String), String>,
    messages: HashMap<String, Stored>,
    /// Agency id → port of its service.
    ports: HashMap<String, u16>,
    /// Message id → how many times the recipient accepted it as new.
    deliveries: HashMap<String, u32>,
}

#[derive(Clone)]
struct FakeGateway {
    state: Arc<Mutex<GatewayState>>,
    tls: TlsMaterial,
}

impl FakeGateway {
    async fn deliver(&self, envelope: &Envelope) -> Result<bool, Status> {
        let port = self.state.lock().unwrap().ports[&envelope.recipient_agency_id];
        let recipient = ComponentIdentity::agency(envelope.recipient_agency_id.clone()).unwrap();
        let channel = Channel::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .tls_config(client_tls(&self.tls, &recipient))
            .unwrap()
            .connect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let reply = AgencyInboxClient::new(channel)
            .deliver(DeliverRequest {
                envelope: Some(envelope.clone()),
            })
            .await?;
        Ok(reply.into_inner().duplicate)
    }
}

#[tonic::async_trait]
impl Gateway for FakeGateway {
    async fn send(&self, request: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        let Some(ComponentIdentity::Agency(sender)) = peer_identity(&request) else {
            return Err(Status::unauthenticated("agencies only"));
        };
        let mut envelope = request.into_inner().envelope.unwrap();
        {
            let state = self.state.lock().unwrap();
            match state.mode {
                Mode::Up => {}
                Mode::Down => return Err(Status::unavailable("down for the test")),
                Mode::Refusing => return Err(Status::permission_denied("routing refuses it")),
            }
            if let Some(id) = state
                .by_key
                .get(&(sender.clone(), envelope.idempotency_key.clone()))
            {
                return Ok(Response::new(SendResponse {
                    message_id: id.clone(),
                    state: state.messages[id].state as i32,
                    duplicate: true,
                    created_at: state.messages[id].envelope.created_at,
                }));
            }
        }
        assert_eq!(envelope.sender_agency_id, sender);
        envelope.message_id = uuid::Uuid::now_v7().to_string();
        envelope.created_at = Some(prost_types::Timestamp {
            seconds: 1_772_000_000,
            nanos: 0,
        });
        let id = envelope.message_id.clone();
        {
            let mut state = self.state.lock().unwrap();
            state
                .by_key
                .insert((sender, envelope.idempotency_key.clone()), id.clone());
            state.messages.insert(
                id.clone(),
                Stored {
                    envelope: envelope.clone(),
                    state: DeliveryState::Queued,
                    answer: None,
                },
            );
        }
        let duplicate = self.deliver(&envelope).await?;
        let mut state = self.state.lock().unwrap();
        if !duplicate {
            *state.deliveries.entry(id.clone()).or_default() += 1;
        }
        state.messages.get_mut(&id).unwrap().state = DeliveryState::Delivered;
        if let Some(original) = state.messages.get_mut(&envelope.in_reply_to) {
            original.state = DeliveryState::Answered;
            original.answer = Some(envelope.clone());
        }
        Ok(Response::new(SendResponse {
            message_id: id,
            state: DeliveryState::Delivered as i32,
            duplicate: false,
            created_at: envelope.created_at,
        }))
    }

    async fn get_delivery_status(
        &self,
        request: Request<GetDeliveryStatusRequest>,
    ) -> Result<Response<DeliveryStatus>, Status> {
        let state = self.state.lock().unwrap();
        if state.mode == Mode::Down {
            return Err(Status::unavailable("down for the test"));
        }
        let id = request.into_inner().message_id;
        let stored = state
            .messages
            .get(&id)
            .ok_or_else(|| Status::not_found("unknown"))?;
        Ok(Response::new(DeliveryStatus {
            message_id: id,
            state: stored.state as i32,
            answer: stored.answer.clone(),
            ..Default::default()
        }))
    }

    async fn list_agencies(
        &self,
        _request: Request<ListAgenciesRequest>,
    ) -> Result<Response<ListAgenciesResponse>, Status> {
        Err(Status::unimplemented("not in the stand-in"))
    }
}

// ---------------------------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------------------------

struct Hub {
    dir: tempfile::TempDir,
    ca: CertificateAuthority,
    gateway: Arc<Mutex<GatewayState>>,
    gateway_port: u16,
    issuer: DevIssuer,
    clock: Clock,
    directory: Directory,
    shutdown: CancellationToken,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

const AGENCIES: &[&str] = &["commission", "school-1", "school-2", "ngo-1"];

fn directory() -> Directory {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/demo-district.toml");
    Directory::load(&path).unwrap()
}

impl Hub {
    async fn start() -> Self {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("agency test CA").unwrap();
        let gateway_tls = TlsMaterial::new(&ca, &ComponentIdentity::Gateway).unwrap();
        let state = Arc::new(Mutex::new(GatewayState {
            mode: Mode::Up,
            by_key: HashMap::new(),
            messages: HashMap::new(),
            ports: HashMap::new(),
            deliveries: HashMap::new(),
        }));
        let shutdown = CancellationToken::new();
        let listener = server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let gateway_port = listener.local_addr().unwrap().port();
        let router = server::builder(server_tls(&gateway_tls))
            .unwrap()
            .add_service(GatewayServer::new(FakeGateway {
                state: state.clone(),
                tls: gateway_tls,
            }));
        tokio::spawn(server::serve(router, listener, shutdown.clone()));

        let issuer = DevIssuer::ensure(&dir.path().join("issuer"), AGENCIES).unwrap();
        let hub = Self {
            ca,
            gateway: state,
            gateway_port,
            issuer,
            clock: Clock::manual("2026-03-02T05:00:00Z".parse().unwrap()),
            directory: directory(),
            shutdown,
            dir,
        };
        for agency in AGENCIES {
            let kind = hub.directory.agency(agency).unwrap().kind();
            let service = AgencyService::build(hub.config(agency, hub.gateway_port), kind)
                .await
                .unwrap();
            hub.gateway
                .lock()
                .unwrap()
                .ports
                .insert((*agency).to_owned(), service.port());
            tokio::spawn(service.run_until_stopped(hub.shutdown.clone()));
        }
        hub
    }

    fn config(&self, agency: &str, gateway_port: u16) -> AgencyConfig {
        AgencyConfig {
            agency_id: agency.to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: TlsMaterial::new(&self.ca, &ComponentIdentity::agency(agency).unwrap()).unwrap(),
            storage: StorageConfig {
                data_dir: self.dir.path().join("data"),
                database_url: None,
            },
            gateway_endpoint: format!("https://127.0.0.1:{gateway_port}"),
            directory: self.directory.clone(),
            token_verifier: TokenVerifier::from_jwks_file(
                DEV_ISSUER,
                agency,
                &self.issuer.jwks_path(agency),
                self.clock.clone(),
            )
            .unwrap(),
            clock: self.clock.clone(),
        }
    }

    fn set_mode(&self, mode: Mode) {
        self.gateway.lock().unwrap().mode = mode;
    }

    fn port(&self, agency: &str) -> u16 {
        self.gateway.lock().unwrap().ports[agency]
    }

    fn deliveries(&self, message_id: &str) -> u32 {
        self.gateway
            .lock()
            .unwrap()
            .deliveries
            .get(message_id)
            .copied()
            .unwrap_or_default()
    }

    async fn channel(&self, port: u16, tls: tonic::transport::ClientTlsConfig) -> Channel {
        Channel::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A staff client of `agency` (TLS, no client certificate).
    async fn staff_client(&self, agency: &str) -> AgencyStaffClient<Channel> {
        let server = ComponentIdentity::agency(agency).unwrap();
        let tls = client_tls_without_identity(self.ca.cert_pem(), &server);
        AgencyStaffClient::new(self.channel(self.port(agency), tls).await)
    }

    fn token(&self, agency: &str, user: &str) -> String {
        let staff = self.directory.user(agency, user).unwrap();
        self.issuer
            .mint(
                agency,
                user,
                staff.role(),
                &staff.full_name,
                SignedDuration::from_hours(8),
                self.clock.now(),
            )
            .unwrap()
    }

    fn today(&self) -> jiff::civil::Date {
        self.clock
            .now()
            .to_zoned(TimeZone::get("Asia/Almaty").unwrap())
            .date()
    }

    fn k(&self, key: &str) -> SubmitHelpRequestRequest {
        SubmitHelpRequestRequest {
            idempotency_key: key.to_owned(),
            recipient_agency_id: String::new(),
            help_request: Some(validate::sample_help_request(self.today())),
        }
    }
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn open_case(message_id: &str, key: &str, curator: &str) -> DecideHelpRequestRequest {
    DecideHelpRequestRequest {
        message_id: message_id.to_owned(),
        idempotency_key: key.to_owned(),
        outcome: Some(Outcome::OpenCase(OpenCase {
            curator_user_id: curator.to_owned(),
        })),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn school_sends_k_and_sees_the_commission_decision() {
    let hub = Hub::start().await;
    let mut school = hub.staff_client("school-1").await;
    let mut commission = hub.staff_client("commission").await;
    let director = hub.token("school-1", "director");
    let secretary = hub.token("commission", "secretary");

    let me = school
        .who_am_i(with_token(WhoAmIRequest {}, &director))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.user.unwrap().role, Role::SchoolDirector as i32);
    assert_eq!(me.agency.unwrap().agency_id, "school-1");

    let sent = school
        .submit_help_request(with_token(hub.k("k-school-1-0001"), &director))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hub.deliveries(&sent.message_id), 1);

    // The commission sees it, with the child's name as the summary and the school's names.
    let inbox = commission
        .list_inbox(with_token(ListInboxRequest::default(), &secretary))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inbox.items.len(), 1);
    let item = &inbox.items[0];
    assert_eq!(item.message_id, sent.message_id);
    assert_eq!(item.summary, "Әлия Серікқызы Нұрланова");
    assert_eq!(item.sender_name_ru, "Общеобразовательная школа №1");
    assert_eq!(item.status, ReferralStatus::Received as i32);

    let curators = commission
        .list_staff(with_token(
            ListStaffRequest {
                role: Role::CommissionCurator as i32,
            },
            &secretary,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(curators.staff.len(), 2);

    // A curator of another agency, or someone who is not a curator, is refused.
    let status = commission
        .decide_help_request(with_token(
            open_case(&sent.message_id, "decide-0001", "secretary"),
            &secretary,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        field_violations(&status)[0].field,
        "open_case.curator_user_id"
    );

    let decided = commission
        .decide_help_request(with_token(
            open_case(&sent.message_id, "decide-0001", "curator-1"),
            &secretary,
        ))
        .await
        .unwrap()
        .into_inner();
    let decision = decided.decision.unwrap();
    let Some(help_request_decision::Outcome::CaseOpened(case)) = &decision.outcome else {
        panic!("no case opened: {decision:?}");
    };
    assert_eq!(case.case_reference, "KTIZhK-2026-000001");
    assert_eq!(case.curator_user_id, "curator-1");
    assert_eq!(decision.decided_by, "secretary");
    assert_eq!(hub.deliveries(&decided.decision_message_id), 1);

    // Deciding again: the same answer with the same key, refused with another.
    let again = commission
        .decide_help_request(with_token(
            open_case(&sent.message_id, "decide-0001", "curator-1"),
            &secretary,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.decision_message_id, decided.decision_message_id);
    let status = commission
        .decide_help_request(with_token(
            DecideHelpRequestRequest {
                message_id: sent.message_id.clone(),
                idempotency_key: "decide-0002".into(),
                outcome: Some(Outcome::NoFurtherAction(NoFurtherAction {
                    reason: "changed my mind".into(),
                })),
            },
            &secretary,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    // The commission's copy shows the decision.
    let received = commission
        .get_message(with_token(
            GetMessageRequest {
                message_id: sent.message_id.clone(),
            },
            &secretary,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(received.status, ReferralStatus::Accepted as i32);
    assert_eq!(received.decision.unwrap(), decision);

    // The school sees the decision: on its sent message, and in its inbox.
    let mine = school
        .get_sent_message(with_token(
            GetSentMessageRequest {
                message_id: sent.message_id.clone(),
            },
            &director,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.status, ReferralStatus::Accepted as i32);
    assert_eq!(mine.state, DeliveryState::Answered as i32);
    assert_eq!(mine.answer.unwrap().message_id, decided.decision_message_id);
    let listed = school
        .list_sent(with_token(ListSentRequest::default(), &director))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].status, ReferralStatus::Accepted as i32);
    let school_inbox = school
        .list_inbox(with_token(
            ListInboxRequest {
                form_kind: FormKind::HelpRequestDecision as i32,
                ..Default::default()
            },
            &director,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(school_inbox.items.len(), 1);
    assert_eq!(school_inbox.items[0].summary, "KTIZhK-2026-000001");

    // Another school's staff see none of it.
    let mut other = hub.staff_client("school-2").await;
    let status = other
        .get_sent_message(with_token(
            GetSentMessageRequest {
                message_id: sent.message_id.clone(),
            },
            &hub.token("school-2", "director"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn resubmitting_with_the_same_key_returns_the_same_message() {
    let hub = Hub::start().await;
    let mut school = hub.staff_client("school-1").await;
    let director = hub.token("school-1", "director");
    let first = school
        .submit_help_request(with_token(hub.k("same-key-0001"), &director))
        .await
        .unwrap()
        .into_inner();
    let second = school
        .submit_help_request(with_token(hub.k("same-key-0001"), &director))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.message_id, second.message_id);
    assert_eq!(hub.deliveries(&first.message_id), 1);

    // The same key for something else is refused.
    let mut other = hub.k("same-key-0001");
    other.help_request.as_mut().unwrap().recurrence = "Күн сайын".into();
    let status = school
        .submit_help_request(with_token(other, &director))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn only_the_gateway_may_call_the_inbox() {
    let hub = Hub::start().await;
    let server = ComponentIdentity::agency("commission").unwrap();
    let port = hub.port("commission");
    let deliver = DeliverRequest {
        envelope: Some(Envelope::default()),
    };

    // Another agency's certificate.
    let school_tls =
        TlsMaterial::new(&hub.ca, &ComponentIdentity::agency("school-1").unwrap()).unwrap();
    let channel = hub.channel(port, client_tls(&school_tls, &server)).await;
    let status = AgencyInboxClient::new(channel)
        .deliver(deliver.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // No certificate.
    let channel = hub
        .channel(
            port,
            client_tls_without_identity(hub.ca.cert_pem(), &server),
        )
        .await;
    let status = AgencyInboxClient::new(channel)
        .deliver(deliver.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // The gateway gets through to the envelope checks.
    let gateway_tls = TlsMaterial::new(&hub.ca, &ComponentIdentity::Gateway).unwrap();
    let channel = hub.channel(port, client_tls(&gateway_tls, &server)).await;
    let status = AgencyInboxClient::new(channel)
        .deliver(deliver)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn staff_need_a_token_of_their_own_agency_and_a_role_that_may_act() {
    let hub = Hub::start().await;
    let mut school = hub.staff_client("school-1").await;
    let mut commission = hub.staff_client("commission").await;

    let status = school.who_am_i(WhoAmIRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = school
        .who_am_i(with_token(WhoAmIRequest {}, "not-a-token"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // School 2's director at school 1.
    let status = school
        .who_am_i(with_token(
            WhoAmIRequest {},
            &hub.token("school-2", "director"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // An expired token.
    let director = hub.token("school-1", "director");
    hub.clock.advance(SignedDuration::from_hours(9));
    let status = school
        .who_am_i(with_token(WhoAmIRequest {}, &director))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // The commission does not submit K; a school does not decide.
    let status = commission
        .submit_help_request(with_token(
            hub.k("commission-k-0001"),
            &hub.token("commission", "secretary"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = school
        .decide_help_request(with_token(
            open_case(
                "0195f0e2-0000-7000-8000-000000000001",
                "decide-0001",
                "curator-1",
            ),
            &hub.token("school-1", "director"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // A curator does not decide either.
    let status = commission
        .decide_help_request(with_token(
            open_case(
                "0195f0e2-0000-7000-8000-000000000001",
                "decide-0001",
                "curator-1",
            ),
            &hub.token("commission", "curator-1"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // The secretary, on a message that is not there.
    let status = commission
        .decide_help_request(with_token(
            open_case(
                "0195f0e2-0000-7000-8000-000000000001",
                "decide-0001",
                "curator-1",
            ),
            &hub.token("commission", "secretary"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn an_invalid_help_request_names_its_fields_and_stores_nothing() {
    let hub = Hub::start().await;
    let mut ngo = hub.staff_client("ngo-1").await;
    let manager = hub.token("ngo-1", "case-manager");
    let mut request = hub.k("bad-k-0001");
    let k: &mut HelpRequest = request.help_request.as_mut().unwrap();
    let child = k.child.as_mut().unwrap();
    child.full_name.clear();
    child.iin = "123456789012".into();
    child.date_of_birth.as_mut().unwrap().year = 2030;
    let status = ngo
        .submit_help_request(with_token(request, &manager))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields: Vec<String> = field_violations(&status)
        .into_iter()
        .map(|v| v.field)
        .collect();
    for field in [
        "help_request.child.full_name",
        "help_request.child.iin",
        "help_request.child.date_of_birth",
    ] {
        assert!(
            fields.iter().any(|f| f == field),
            "{field} not in {fields:?}"
        );
    }
    let sent = ngo
        .list_sent(with_token(ListSentRequest::default(), &manager))
        .await
        .unwrap()
        .into_inner();
    assert!(sent.items.is_empty());
    assert!(hub.gateway.lock().unwrap().messages.is_empty());
}

#[tokio::test]
async fn an_unreachable_gateway_keeps_the_request_for_a_retry_with_the_same_key() {
    let hub = Hub::start().await;
    let mut school = hub.staff_client("school-1").await;
    let director = hub.token("school-1", "director");

    hub.set_mode(Mode::Down);
    let status = school
        .submit_help_request(with_token(hub.k("retry-key-0001"), &director))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("same idempotency key"),
        "{status:?}"
    );

    hub.set_mode(Mode::Up);
    let sent = school
        .submit_help_request(with_token(hub.k("retry-key-0001"), &director))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hub.deliveries(&sent.message_id), 1);

    // With the gateway down, the sent message is answered from the store.
    hub.set_mode(Mode::Down);
    let stored = school
        .get_sent_message(with_token(
            GetSentMessageRequest {
                message_id: sent.message_id.clone(),
            },
            &director,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.status, ReferralStatus::Received as i32);
    assert_eq!(stored.envelope.unwrap().message_id, sent.message_id);
}

#[tokio::test]
async fn a_gateway_that_is_not_listening_is_unavailable() {
    let hub = Hub::start().await;
    // Port 1 on localhost: nothing listens there.
    let mut config = hub.config("school-2", 1);
    config.storage.data_dir = hub.dir.path().join("elsewhere");
    let service = AgencyService::build(config, AgencyKind::School)
        .await
        .unwrap();
    let port = service.port();
    tokio::spawn(service.run_until_stopped(hub.shutdown.clone()));
    let server = ComponentIdentity::agency("school-2").unwrap();
    let tls = client_tls_without_identity(hub.ca.cert_pem(), &server);
    let mut school = AgencyStaffClient::new(hub.channel(port, tls).await);
    let status = school
        .submit_help_request(with_token(
            hub.k("nobody-home-01"),
            &hub.token("school-2", "director"),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn a_refusal_by_the_gateway_is_passed_on_and_nothing_is_kept() {
    let hub = Hub::start().await;
    let mut school = hub.staff_client("school-1").await;
    let director = hub.token("school-1", "director");
    hub.set_mode(Mode::Refusing);
    let status = school
        .submit_help_request(with_token(hub.k("refused-key-01"), &director))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "routing refuses it");

    // Nothing was kept: once the gateway accepts, the same key sends anew.
    hub.set_mode(Mode::Up);
    let sent = school
        .submit_help_request(with_token(hub.k("refused-key-01"), &director))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hub.deliveries(&sent.message_id), 1);
}

#[tokio::test]
async fn a_decision_waits_for_the_gateway_and_is_sent_on_the_retry() {
    let hub = Hub::start().await;
    let mut school = hub.staff_client("school-1").await;
    let mut commission = hub.staff_client("commission").await;
    let secretary = hub.token("commission", "secretary");
    let sent = school
        .submit_help_request(with_token(
            hub.k("k-for-pending-1"),
            &hub.token("school-1", "safeguarding-lead"),
        ))
        .await
        .unwrap()
        .into_inner();

    hub.set_mode(Mode::Down);
    let nfa = DecideHelpRequestRequest {
        message_id: sent.message_id.clone(),
        idempotency_key: "decide-pending-1".into(),
        outcome: Some(Outcome::NoFurtherAction(NoFurtherAction {
            reason: "the school's measures are enough".into(),
        })),
    };
    let status = commission
        .decide_help_request(with_token(nfa.clone(), &secretary))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    // Recorded: another key is refused, and the request shows the decision.
    let mut other = nfa.clone();
    other.idempotency_key = "decide-pending-2".into();
    let status = commission
        .decide_help_request(with_token(other, &secretary))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    hub.set_mode(Mode::Up);
    let decided = commission
        .decide_help_request(with_token(nfa, &secretary))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hub.deliveries(&decided.decision_message_id), 1);
    let mine = school
        .get_sent_message(with_token(
            GetSentMessageRequest {
                message_id: sent.message_id.clone(),
            },
            &hub.token("school-1", "director"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.status, ReferralStatus::Rejected as i32);
}

#[tokio::test]
async fn a_service_refuses_to_start_as_another_kind() {
    let hub = Hub::start().await;
    let err = AgencyService::build(
        hub.config("school-2", hub.gateway_port),
        AgencyKind::Commission,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("school"), "{err}");
    let mut unknown = hub.config("school-2", hub.gateway_port);
    unknown.agency_id = "school-9".into();
    let err = AgencyService::build(unknown, AgencyKind::School)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not in the agency directory"),
        "{err}"
    );
}
