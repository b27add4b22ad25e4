//! Acceptance 4 of issue 2: who may not call what. Real certificates, real handshakes.

use jiff::tz::TimeZone;
use referral_core::{
    pki::{CertificateAuthority, ComponentIdentity, TlsMaterial},
    tls, validate,
};
use referral_proto::v1::{
    DeliverRequest, ListAgenciesRequest, ListInboxRequest, Role, SendRequest, WhoAmIRequest,
    gateway_client::GatewayClient,
};
use referral_tests::{Backend, TestHub, both_backends, envelope};
use tonic::{
    Code,
    transport::{Certificate, Endpoint},
};

fn sample_k(hub: &TestHub) -> referral_proto::v1::HelpRequest {
    let today = hub
        .clock
        .now()
        .to_zoned(TimeZone::get("Asia/Almaty").unwrap())
        .date();
    validate::sample_help_request(today)
}

fn gateway_url(hub: &TestHub) -> String {
    format!("https://127.0.0.1:{}", hub.gateway_port)
}

async fn gateway_refuses_a_client_without_a_certificate(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let channel = Endpoint::from_shared(gateway_url(&hub))
        .unwrap()
        .tls_config(tls::client_tls_without_identity(
            hub.ca.cert_pem(),
            &ComponentIdentity::Gateway,
        ))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let err = GatewayClient::new(channel)
        .list_agencies(ListAgenciesRequest::default())
        .await
        .expect_err("no certificate, no answer");
    assert_eq!(err.code(), Code::Unauthenticated);
    hub.shutdown().await;
}

async fn gateway_refuses_a_certificate_from_another_ca(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let other_ca = CertificateAuthority::generate("referral-hub test CA").unwrap();
    let material =
        TlsMaterial::new(&other_ca, &ComponentIdentity::Agency("school-1".into())).unwrap();
    let config = tls::client_tls(&material, &ComponentIdentity::Gateway)
        .ca_certificate(Certificate::from_pem(hub.ca.cert_pem()));
    let outcome = async {
        let channel = Endpoint::from_shared(gateway_url(&hub))?
            .tls_config(config)?
            .connect()
            .await?;
        let mut client = GatewayClient::new(channel);
        client
            .send(SendRequest {
                envelope: Some(envelope(
                    "school-1",
                    "director",
                    Role::SchoolDirector,
                    "commission",
                    "other-ca-0001",
                    sample_k(&hub),
                )),
            })
            .await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    }
    .await;
    assert!(outcome.is_err(), "a certificate from another CA is refused");
    assert_eq!(hub.gateway_count("messages").await, 0);
    hub.shutdown().await;
}

async fn gateway_refuses_an_agency_the_directory_does_not_know(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let material =
        TlsMaterial::new(&hub.ca, &ComponentIdentity::Agency("school-99".into())).unwrap();
    let channel = Endpoint::from_shared(gateway_url(&hub))
        .unwrap()
        .tls_config(tls::client_tls(&material, &ComponentIdentity::Gateway))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let err = GatewayClient::new(channel)
        .list_agencies(ListAgenciesRequest::default())
        .await
        .expect_err("unknown agency");
    assert_eq!(err.code(), Code::Unauthenticated);
    hub.shutdown().await;
}

async fn school_a_cannot_act_for_a_user_of_school_b(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let mut gateway = hub.gateway_client_as("school-1").await;
    let err = gateway
        .send(SendRequest {
            envelope: Some(envelope(
                "school-2",
                "director",
                Role::SchoolDirector,
                "commission",
                "impersonate-0001",
                sample_k(&hub),
            )),
        })
        .await
        .expect_err("school 1 cannot vouch for school 2's director");
    assert_eq!(err.code(), Code::PermissionDenied);

    // Nor claim to be another sender, nor give its staff a role its kind does not have.
    let mut wrong_sender = envelope(
        "school-1",
        "director",
        Role::SchoolDirector,
        "commission",
        "impersonate-0002",
        sample_k(&hub),
    );
    wrong_sender.sender_agency_id = "school-2".into();
    let err = gateway
        .send(SendRequest {
            envelope: Some(wrong_sender),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = gateway
        .send(SendRequest {
            envelope: Some(envelope(
                "school-1",
                "director",
                Role::CommissionSecretary,
                "commission",
                "impersonate-0003",
                sample_k(&hub),
            )),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(hub.gateway_count("messages").await, 0);

    // A token of school 1 is worthless at school 2's service.
    let school2 = hub.staff("school-2", "director").await;
    let mut forged = school2.req(WhoAmIRequest {});
    forged.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", hub.token("school-1", "director"))
            .parse()
            .unwrap(),
    );
    let err = school2.client.clone().who_am_i(forged).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // And no token at all is refused.
    let err = school2
        .client
        .clone()
        .who_am_i(WhoAmIRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    hub.shutdown().await;
}

async fn only_the_gateway_may_call_an_inbox(backend: Backend) {
    let hub = TestHub::start(backend).await;
    let forged = envelope(
        "school-1",
        "director",
        Role::SchoolDirector,
        "commission",
        "forged-inbox-1",
        sample_k(&hub),
    );
    let mut with_id = forged.clone();
    with_id.message_id = uuid::Uuid::now_v7().to_string();
    with_id.sender_agency_id = "school-1".into();

    // Another agency's valid certificate.
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
            envelope: Some(with_id.clone()),
        })
        .await
        .expect_err("a school cannot write into the commission's inbox");
    assert!(
        matches!(err.code(), Code::PermissionDenied | Code::Unauthenticated),
        "{err:?}"
    );

    // A "gateway" certificate from another CA does not get through the handshake.
    let other_ca = CertificateAuthority::generate("referral-hub test CA").unwrap();
    let outcome = async {
        let mut client = hub
            .inbox_client("commission", &other_ca, &ComponentIdentity::Gateway)
            .await?;
        client
            .deliver(DeliverRequest {
                envelope: Some(with_id.clone()),
            })
            .await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    }
    .await;
    assert!(outcome.is_err());

    // No certificate at all.
    let channel =
        Endpoint::from_shared(hub.directory.agency("commission").unwrap().endpoint.clone())
            .unwrap()
            .tls_config(tls::client_tls_without_identity(
                hub.ca.cert_pem(),
                &ComponentIdentity::Agency("commission".into()),
            ))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let err = referral_proto::v1::agency_inbox_client::AgencyInboxClient::new(channel)
        .deliver(DeliverRequest {
            envelope: Some(with_id),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let secretary = hub.staff("commission", "secretary").await;
    let items = secretary
        .client
        .clone()
        .list_inbox(secretary.req(ListInboxRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(items.is_empty(), "nothing forged reached the inbox");

    hub.shutdown().await;
}

both_backends!(
    gateway_refuses_a_client_without_a_certificate,
    gateway_refuses_a_certificate_from_another_ca,
    gateway_refuses_an_agency_the_directory_does_not_know,
    school_a_cannot_act_for_a_user_of_school_b,
    only_the_gateway_may_call_an_inbox,
);

// Every component answers grpc.health.v1, so orchestrators can probe it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_component_reports_its_health() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    referral_tests::init_for_tests();
    let hub = TestHub::start(Backend::Sqlite).await;
    let channel = Endpoint::from_shared(gateway_url(&hub))
        .unwrap()
        .tls_config(tls::client_tls_without_identity(
            hub.ca.cert_pem(),
            &ComponentIdentity::Gateway,
        ))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "referral.v1.Gateway".into(),
        })
        .await
        .expect("the gateway reports its health")
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    for agency in &hub.directory.agencies {
        let channel = Endpoint::from_shared(agency.endpoint.clone())
            .unwrap()
            .tls_config(tls::client_tls_without_identity(
                hub.ca.cert_pem(),
                &ComponentIdentity::Agency(agency.id.clone()),
            ))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("the agency reports its health")
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{}",
            agency.id
        );
    }
    hub.shutdown().await;
}
