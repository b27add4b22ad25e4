//! Mutual TLS between components: tonic server and client configurations, and who the peer is.
//!
//! Every component presents the certificate issued for its [`ComponentIdentity`] (see
//! [`crate::pki`] for the identity scheme) and trusts only the hub CA:
//!
//! * a **client** verifies the server's certificate against the CA and the server's DNS name
//!   ([`ComponentIdentity::server_name`]), whatever address it dials ([`client_tls`]);
//! * a **server** verifies a client certificate against the CA, if the client presents one
//!   ([`server_tls`]). Client certificates are *optional* at the TLS level so that a call without
//!   one (a person's CLI holding a bearer token, or a misconfigured component) completes the
//!   handshake and is answered `UNAUTHENTICATED` by our interceptors, instead of failing with an
//!   opaque transport error. A certificate that does not chain to the CA still fails the
//!   handshake. Handlers and interceptors learn who is calling with [`peer_identity`], which reads
//!   the SPIFFE ID (URI SAN) of the verified client certificate.
//!
//! rustls needs a process-wide crypto provider: call [`install_crypto_provider`] early in `main`
//! (and in tests) before building a server or a channel.

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use x509_parser::certificate::X509Certificate;

use crate::pki::{ComponentIdentity, TlsMaterial, identity_from_cert};

/// Installs rustls' ring crypto provider as the process default. Safe to call any number of
/// times, from any thread: an already installed provider is kept.
pub fn install_crypto_provider() {
    // `Err` only means a provider is already installed, which is all we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl TlsMaterial {
    /// This component's certificate and key, for tonic.
    pub fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }

    /// The CA certificate, for tonic.
    pub fn ca_certificate(&self) -> Certificate {
        Certificate::from_pem(&self.ca_pem)
    }
}

/// Server configuration: presents our certificate, and verifies client certificates against the
/// CA. Client certificates are optional (see the module docs): a call without one reaches the
/// service, whose interceptor must answer it `UNAUTHENTICATED` when it requires a peer identity.
pub fn server_tls(material: &TlsMaterial) -> ServerTlsConfig {
    ServerTlsConfig::new()
        .identity(material.identity())
        .client_ca_root(material.ca_certificate())
        .client_auth_optional(true)
}

/// Client configuration for calling `server`: trusts only the CA, checks that the server's
/// certificate is for `server.server_name()`, and presents our own certificate.
pub fn client_tls(material: &TlsMaterial, server: &ComponentIdentity) -> ClientTlsConfig {
    client_tls_without_identity(&material.ca_pem, server).identity(material.identity())
}

/// Client configuration without a client certificate, for people's tools that authenticate with
/// a bearer token (the staff API): trusts only the CA given as PEM and checks that the server's
/// certificate is for `server.server_name()`.
pub fn client_tls_without_identity(ca_pem: &str, server: &ComponentIdentity) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(server.server_name())
}

/// The identity of the caller, from the client certificate of this mutual-TLS connection.
///
/// `None` when the caller presented no certificate (or the server does not use TLS), or when its
/// certificate has no SPIFFE ID of our trust domain. The certificate was verified against the CA
/// during the handshake, so the identity can be trusted.
pub fn peer_identity<T>(req: &tonic::Request<T>) -> Option<ComponentIdentity> {
    let certs = req.peer_certs()?;
    // The first certificate is the peer's own (the leaf); any others are its chain.
    let leaf = certs.first()?;
    identity_from_der(leaf.as_ref())
}

/// The identity named by the SPIFFE ID (URI SAN) of a DER certificate: `None` if it cannot be
/// parsed, has no SPIFFE ID of our trust domain, or names two different identities.
///
/// This does not verify the certificate: use it on certificates verified by the TLS handshake.
pub fn identity_from_der(der: &[u8]) -> Option<ComponentIdentity> {
    let (_, cert): (_, X509Certificate<'_>) = x509_parser::parse_x509_certificate(der).ok()?;
    identity_from_cert(&cert)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpListener;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::transport::{Channel, Server};
    use tonic::{Code, Request, Status};
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    use super::*;
    use crate::pki::CertificateAuthority;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn der_of(pem: &str) -> Vec<u8> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        pem.contents
    }

    #[test]
    fn identity_from_der_reads_our_spiffe_id() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let school = ComponentIdentity::agency("school-1").unwrap();
        for id in [ComponentIdentity::Gateway, school] {
            let issued = ca.issue(&id).unwrap();
            assert_eq!(identity_from_der(&der_of(&issued.cert_pem)), Some(id));
        }
    }

    #[test]
    fn identity_from_der_ignores_certificates_without_our_san() {
        let plain = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        assert_eq!(identity_from_der(plain.cert.der()), None);

        // A URI SAN of another trust domain is not an identity either.
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://elsewhere.example/gateway".try_into().unwrap(),
        ));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(identity_from_der(cert.der()), None);

        assert_eq!(identity_from_der(b"not a certificate"), None);
    }

    /// Serves the health service behind mutual TLS with `material`, behind an interceptor that
    /// admits only the gateway: no certificate is UNAUTHENTICATED, another identity is
    /// PERMISSION_DENIED (with the identity in the message). Returns the port.
    async fn spawn_server(material: &TlsMaterial) -> (u16, tokio::task::JoinHandle<()>) {
        install_crypto_provider();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let only_gateway = |req: Request<()>| match peer_identity(&req) {
            Some(ComponentIdentity::Gateway) => Ok(req),
            Some(other) => Err(Status::permission_denied(format!("{other} may not call"))),
            None => Err(Status::unauthenticated("no client certificate")),
        };
        let service = tonic::service::interceptor::InterceptedService::new(health, only_gateway);
        let router = Server::builder()
            .tls_config(server_tls(material))
            .unwrap()
            .add_service(service);
        let handle = tokio::spawn(async move {
            router
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        (port, handle)
    }

    /// Connects with `tls` and calls Check; the outer error is a connection failure.
    async fn check(port: u16, tls: ClientTlsConfig) -> Result<Result<(), Status>, String> {
        let call = async {
            let channel = Channel::from_shared(format!("https://127.0.0.1:{port}"))
                .unwrap()
                .tls_config(tls)
                .map_err(|e| format!("tls config: {e}"))?
                .connect()
                .await
                .map_err(|e| format!("connect: {e:?}"))?;
            let reply = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            Ok(reply.map(|_| ()))
        };
        tokio::time::timeout(TIMEOUT, call)
            .await
            .map_err(|_| "timed out".to_owned())?
    }

    #[tokio::test]
    async fn mutual_tls_end_to_end() {
        install_crypto_provider();
        let ca = CertificateAuthority::generate("e2e CA").unwrap();
        let school = ComponentIdentity::agency("school-1").unwrap();
        // The server is the school agency; the gateway calls it.
        let (port, server) = spawn_server(&TlsMaterial::new(&ca, &school).unwrap()).await;
        let gateway = TlsMaterial::new(&ca, &ComponentIdentity::Gateway).unwrap();

        // The gateway, with its certificate: verified both ways, identity read by the server.
        check(port, client_tls(&gateway, &school))
            .await
            .unwrap()
            .unwrap();

        // Another agency's certificate: the handshake succeeds, the server sees who it is.
        let police = TlsMaterial::new(&ca, &ComponentIdentity::agency("police").unwrap()).unwrap();
        let status = check(port, client_tls(&police, &school))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("agency/police"), "{status:?}");

        // No client certificate: the call reaches the interceptor and is UNAUTHENTICATED.
        let status = check(port, client_tls_without_identity(&gateway.ca_pem, &school))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

        // A client certificate from another CA (even one with the same name) fails the
        // handshake: the call never reaches the interceptor. With TLS 1.3 the client learns it
        // from the server's alert after sending its certificate, so this surfaces as a
        // transport error of the call rather than of `connect`.
        let other_ca = CertificateAuthority::generate("e2e CA").unwrap();
        let mut intruder = TlsMaterial::new(&other_ca, &ComponentIdentity::Gateway).unwrap();
        intruder.ca_pem = gateway.ca_pem.clone(); // it does trust the real server
        let result = check(port, client_tls(&intruder, &school)).await;
        match &result {
            Err(_) => {}
            Ok(Err(status)) => assert!(
                !matches!(
                    status.code(),
                    Code::Ok | Code::Unauthenticated | Code::PermissionDenied
                ),
                "{status:?}"
            ),
            Ok(Ok(())) => panic!("a certificate from another CA was accepted"),
        }

        // The server's certificate is checked too: by CA ...
        let stranger = TlsMaterial::new(&other_ca, &ComponentIdentity::Gateway).unwrap();
        let result = check(port, client_tls(&stranger, &school)).await;
        assert!(!matches!(result, Ok(Ok(()))), "{result:?}");
        // ... and by name: the school's certificate is not the police's.
        let police_server = ComponentIdentity::agency("police").unwrap();
        let result = check(port, client_tls(&gateway, &police_server)).await;
        assert!(!matches!(result, Ok(Ok(()))), "{result:?}");

        // The server survived all of that.
        check(port, client_tls(&gateway, &school))
            .await
            .unwrap()
            .unwrap();
        server.abort();
    }

    #[test]
    fn install_crypto_provider_is_idempotent() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
