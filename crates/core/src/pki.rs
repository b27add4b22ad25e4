//! Component identities and the development PKI: one CA, one leaf certificate per component.
//!
//! # Identity scheme
//!
//! Every component of the hub (the gateway and each agency service) has exactly one
//! [`ComponentIdentity`], and every certificate our CA issues names it twice:
//!
//! * as a **DNS SAN**, [`ComponentIdentity::server_name`]: `gateway.referral-hub.internal` or
//!   `<agency-id>.agency.referral-hub.internal`. This is the name a *client* verifies when it
//!   connects to that component (whatever address it dials, see [`crate::tls::client_tls`]);
//! * as a **URI SAN**, [`ComponentIdentity::spiffe_uri`]: `spiffe://referral-hub.internal/gateway`
//!   or `spiffe://referral-hub.internal/agency/<agency-id>`. This is what a *server* reads from the
//!   client certificate of a verified mutual-TLS connection to learn who is calling
//!   (see [`crate::tls::peer_identity`]).
//!
//! Both live under the trust domain [`TRUST_DOMAIN`]. Leaf certificates also carry the SANs
//! `DNS:localhost` and `IP:127.0.0.1` so that a development setup can be reached locally, and the
//! extended key usages serverAuth *and* clientAuth: each component is a server to some peers and
//! a client of others, with the same certificate.
//!
//! Agency ids are lowercase ASCII letters, digits and `-`, 1 to 63 characters, not starting or
//! ending with `-` (they are one DNS label of the server name), and neither `gateway` nor `ca`
//! (those names are taken in the [`PkiPaths`] file layout).
//!
//! # Development PKI
//!
//! [`ensure_dev_pki`] creates (or completes) a directory laid out as described by [`PkiPaths`]:
//! the CA certificate and key, and a certificate and key per component. Key files are written
//! with mode 0600 and a directory it creates gets mode 0700. Production deployments can provide
//! their own files in the same layout; components only read them through [`TlsFiles`] and
//! [`TlsMaterial::load`].

use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType,
};
use x509_parser::asn1_rs::Tag;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;

/// The SPIFFE trust domain of the hub: every identity and server name lives under it.
pub const TRUST_DOMAIN: &str = "referral-hub.internal";

/// Common name of the CA created by [`ensure_dev_pki`].
pub const DEV_CA_COMMON_NAME: &str = "referral-hub development CA";

/// Longest agency id: one DNS label.
const MAX_AGENCY_ID_LEN: usize = 63;
/// Agency ids that would collide with other files of the [`PkiPaths`] layout.
const RESERVED_AGENCY_IDS: [&str; 2] = ["gateway", "ca"];

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// Certificates are back-dated by a day to tolerate clock skew between machines.
const BACKDATE: Duration = DAY;
/// Validity of a leaf certificate, from now.
const LEAF_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 60 * 60);
/// Validity of a CA certificate, from now.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// [`ensure_dev_pki`] re-issues a leaf certificate that expires within this margin.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Everything that can go wrong while creating, loading or using certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// An agency id that does not follow the rules of the identity scheme (see the module docs).
    #[error(
        "invalid agency id {id:?}: {reason} (expected 1 to 63 lowercase ASCII letters, digits or \
         '-', not starting or ending with '-')"
    )]
    InvalidAgencyId { id: String, reason: &'static str },

    /// A component name that is neither `gateway` nor a valid agency id.
    #[error("invalid component name {0:?}: expected \"gateway\" or an agency id")]
    InvalidComponentName(String),

    /// rcgen failed to generate a key or to build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),

    /// A PEM certificate that cannot be used (bad PEM, bad DER, not a CA, ...).
    #[error("invalid certificate {what}: {reason}")]
    InvalidCertificate { what: String, reason: String },

    /// A PEM private key that cannot be parsed or does not belong to its certificate.
    #[error("invalid private key {what}: {reason}")]
    InvalidKey { what: String, reason: String },

    /// A file that must exist for TLS is missing.
    #[error("missing {what} file {}", path.display())]
    MissingFile { what: &'static str, path: PathBuf },

    /// Only one of the CA certificate and the CA key exists; refusing to guess.
    #[error(
        "incomplete CA in {}: {} exists but {} does not (restore it, or delete the directory to \
         start a new development PKI)",
        dir.display(),
        present.display(),
        missing.display()
    )]
    IncompleteCa {
        dir: PathBuf,
        present: PathBuf,
        missing: PathBuf,
    },

    /// Any other I/O failure, with what was being done and on which path.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The system clock is before 1970.
    #[error("system clock is before the Unix epoch")]
    Clock,
}

/// Result type of this module.
pub type Result<T, E = PkiError> = std::result::Result<T, E>;

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PkiError {
    let path = path.to_path_buf();
    move |source| PkiError::Io {
        action,
        path,
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// Identities
// ---------------------------------------------------------------------------------------------

/// Who a component is: the gateway, or one agency service.
///
/// See the [module documentation](self) for how an identity appears in certificates. Build agency
/// identities with [`ComponentIdentity::agency`] (or [`FromStr`]), which validate the id;
/// identities read from certificates ([`crate::tls::peer_identity`]) are always validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ComponentIdentity {
    /// The gateway: `gateway.referral-hub.internal`, `spiffe://referral-hub.internal/gateway`.
    Gateway,
    /// An agency service, by agency id (like `school-1`):
    /// `<id>.agency.referral-hub.internal`, `spiffe://referral-hub.internal/agency/<id>`.
    Agency(String),
}

impl ComponentIdentity {
    /// The identity of agency `id`, after checking that `id` is a valid agency id.
    pub fn agency(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        validate_agency_id(&id)?;
        Ok(Self::Agency(id))
    }

    /// The DNS name in this component's certificate, which clients verify when they connect to
    /// it: `gateway.referral-hub.internal` or `<agency-id>.agency.referral-hub.internal`.
    pub fn server_name(&self) -> String {
        match self {
            Self::Gateway => format!("gateway.{TRUST_DOMAIN}"),
            Self::Agency(id) => format!("{id}.agency.{TRUST_DOMAIN}"),
        }
    }

    /// The SPIFFE ID in this component's certificate (a URI SAN), which servers read from client
    /// certificates: `spiffe://referral-hub.internal/gateway` or
    /// `spiffe://referral-hub.internal/agency/<agency-id>`.
    pub fn spiffe_uri(&self) -> String {
        format!("spiffe://{TRUST_DOMAIN}/{}", self.path())
    }

    /// Parses a SPIFFE ID of our trust domain back into an identity; `None` for anything else
    /// (another trust domain, another path, an invalid agency id).
    pub fn from_spiffe_uri(uri: &str) -> Option<Self> {
        let path = uri
            .strip_prefix("spiffe://")?
            .strip_prefix(TRUST_DOMAIN)?
            .strip_prefix('/')?;
        if path == "gateway" {
            return Some(Self::Gateway);
        }
        let id = path.strip_prefix("agency/")?;
        Self::agency(id).ok()
    }

    /// The agency id, for an agency.
    pub fn agency_id(&self) -> Option<&str> {
        match self {
            Self::Gateway => None,
            Self::Agency(id) => Some(id),
        }
    }

    /// The base name of this component's files in a [`PkiPaths`] directory: `gateway` or the
    /// agency id.
    pub fn file_stem(&self) -> &str {
        match self {
            Self::Gateway => "gateway",
            Self::Agency(id) => id,
        }
    }

    /// The path of the SPIFFE ID: `gateway` or `agency/<id>`.
    fn path(&self) -> String {
        match self {
            Self::Gateway => "gateway".to_owned(),
            Self::Agency(id) => format!("agency/{id}"),
        }
    }
}

/// Displays the path of the SPIFFE ID: `gateway` or `agency/<agency-id>`.
impl fmt::Display for ComponentIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Gateway => f.write_str("gateway"),
            Self::Agency(id) => write!(f, "agency/{id}"),
        }
    }
}

/// Parses a component name as used on command lines and in file names: `gateway`, an agency id
/// (`school-1`), or the [`Display`](fmt::Display) form `agency/<id>`.
impl FromStr for ComponentIdentity {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self> {
        if s == "gateway" {
            return Ok(Self::Gateway);
        }
        let id = s.strip_prefix("agency/").unwrap_or(s);
        Self::agency(id).map_err(|_| PkiError::InvalidComponentName(s.to_owned()))
    }
}

/// Checks the agency id rules of the identity scheme (see the module docs).
pub fn validate_agency_id(id: &str) -> Result<()> {
    let invalid = |reason| {
        Err(PkiError::InvalidAgencyId {
            id: id.to_owned(),
            reason,
        })
    };
    if id.is_empty() {
        return invalid("it is empty");
    }
    if id.len() > MAX_AGENCY_ID_LEN {
        return invalid("it is longer than 63 characters");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return invalid("it contains a character other than a-z, 0-9 and '-'");
    }
    if id.starts_with('-') || id.ends_with('-') {
        return invalid("it starts or ends with '-'");
    }
    if RESERVED_AGENCY_IDS.contains(&id) {
        return invalid("this name is reserved");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Certificate authority
// ---------------------------------------------------------------------------------------------

/// A certificate and its private key, both PEM encoded (the key as PKCS#8).
///
/// `Debug` does not print the key.
#[derive(Clone, PartialEq, Eq)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

/// A certificate authority (ECDSA P-256) that issues component certificates.
///
/// `Debug` does not print the key.
pub struct CertificateAuthority {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Generates a new self-signed CA with a fresh ECDSA P-256 key, valid from a day ago for ten
    /// years, allowed to sign leaf certificates only (path length 0).
    pub fn generate(common_name: &str) -> Result<Self> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY)?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its PEM certificate and PEM (PKCS#8) private key, checking that the
    /// certificate is a CA certificate and that the key belongs to it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let invalid_cert = |reason: String| PkiError::InvalidCertificate {
            what: "(CA)".to_owned(),
            reason,
        };
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::InvalidKey {
            what: "(CA)".to_owned(),
            reason: e.to_string(),
        })?;
        let der = first_pem_der(cert_pem).map_err(invalid_cert)?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| invalid_cert(e.to_string()))?;
        if !cert.is_ca() {
            return Err(invalid_cert(
                "not a CA certificate (basicConstraints cA is not set)".to_owned(),
            ));
        }
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(PkiError::InvalidKey {
                what: "(CA)".to_owned(),
                reason: "the key does not belong to the CA certificate".to_owned(),
            });
        }
        let params = issuer_params(&cert).map_err(invalid_cert)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM encoded: the trust root every component is configured with.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM encoded (PKCS#8). Keep it secret.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a leaf certificate for `identity` with a fresh ECDSA P-256 key.
    ///
    /// The certificate is valid from a day ago for two years, has CN = the server name, the SANs
    /// `DNS:<server name>`, `DNS:localhost`, `IP:127.0.0.1` and `URI:<SPIFFE ID>`, and the
    /// extended key usages serverAuth and clientAuth.
    pub fn issue(&self, identity: &ComponentIdentity) -> Result<CertifiedKey> {
        if let ComponentIdentity::Agency(id) = identity {
            // The enum variant can be built directly: do not sign an unchecked name.
            validate_agency_id(id)?;
        }
        let server_name = identity.server_name();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, server_name.as_str());
        params.subject_alt_names = vec![
            SanType::DnsName(server_name.try_into()?),
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::URI(identity.spiffe_uri().try_into()?),
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, LEAF_VALIDITY)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The subject key identifier of the CA certificate, if it has one.
    fn subject_key_id(&self) -> Option<Vec<u8>> {
        let der = first_pem_der(&self.cert_pem).ok()?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
        subject_key_id(&cert)
    }
}

/// Sets `not_before` to now minus [`BACKDATE`] and `not_after` to now plus `validity`.
fn set_validity(params: &mut CertificateParams, validity: Duration) -> Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| PkiError::Clock)?;
    let now = Duration::from_secs(now.as_secs());
    // rcgen takes `time::OffsetDateTime`, which adds `std::time::Duration`s.
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + now.saturating_sub(BACKDATE);
    params.not_after = epoch + now + validity;
    Ok(())
}

/// The DER of the first `CERTIFICATE` block of a PEM string.
fn first_pem_der(pem: &str) -> Result<Vec<u8>, String> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| format!("bad PEM: {e}"))?;
    if pem.label != "CERTIFICATE" {
        return Err(format!(
            "expected a PEM CERTIFICATE block, found {:?}",
            pem.label
        ));
    }
    Ok(pem.contents)
}

fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
}

fn authority_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|id| id.0.to_vec())
            }
            _ => None,
        })
}

/// The issuer-side parameters (subject name, key identifier, key usages) of an existing CA
/// certificate, so that certificates it signs name it exactly as its own certificate does.
fn issuer_params(cert: &X509Certificate<'_>) -> Result<CertificateParams, String> {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(cert)?;
    if let Some(id) = subject_key_id(cert) {
        params.key_identifier_method = KeyIdMethod::PreSpecified(id);
    }
    params.key_usages = match cert.key_usage() {
        Ok(Some(ku)) => {
            let ku = ku.value;
            let mut usages = Vec::new();
            if ku.digital_signature() {
                usages.push(KeyUsagePurpose::DigitalSignature);
            }
            if ku.key_cert_sign() {
                usages.push(KeyUsagePurpose::KeyCertSign);
            }
            if ku.crl_sign() {
                usages.push(KeyUsagePurpose::CrlSign);
            }
            usages
        }
        Ok(None) => Vec::new(),
        Err(e) => return Err(format!("bad key usage extension: {e}")),
    };
    Ok(params)
}

/// The subject of `cert` as an rcgen name with the same attributes and string types, so that the
/// issuer name of the certificates we sign is byte for byte the CA's subject name.
fn distinguished_name(cert: &X509Certificate<'_>) -> Result<DistinguishedName, String> {
    let unsupported = |what: &str| format!("unsupported subject name: {what}");
    let mut dn = DistinguishedName::new();
    let mut count = 0;
    for rdn in cert.subject().iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err(unsupported("multi-valued or empty RDN"));
        };
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or_else(|| unsupported("attribute type OID"))?
            .collect();
        let value = attr.attr_value();
        let text = || std::str::from_utf8(value.data).map_err(|_| unsupported("non-UTF-8 text"));
        let value = match value.header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text()?.to_owned()),
            Tag::PrintableString => DnValue::PrintableString(
                text()?
                    .try_into()
                    .map_err(|_| unsupported("PrintableString"))?,
            ),
            Tag::Ia5String => {
                DnValue::Ia5String(text()?.try_into().map_err(|_| unsupported("IA5String"))?)
            }
            Tag::T61String => DnValue::TeletexString(
                text()?
                    .try_into()
                    .map_err(|_| unsupported("TeletexString"))?,
            ),
            Tag::BmpString => DnValue::BmpString(
                rcgen::string::BmpString::from_utf16be(value.data.to_vec())
                    .map_err(|_| unsupported("BMPString"))?,
            ),
            Tag::UniversalString => DnValue::UniversalString(
                rcgen::string::UniversalString::from_utf32be(value.data.to_vec())
                    .map_err(|_| unsupported("UniversalString"))?,
            ),
            _ => return Err(unsupported("attribute value type")),
        };
        dn.push(DnType::from_oid(&oid), value);
        count += 1;
    }
    // rcgen keeps one value per attribute type: refuse names it would not reproduce exactly.
    if dn.iter().count() != count {
        return Err(unsupported("repeated attribute type"));
    }
    Ok(dn)
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/// The file layout of a PKI directory:
///
/// ```text
/// <dir>/ca.pem            CA certificate (the trust root of every component)
/// <dir>/ca.key.pem        CA private key (only needed to issue certificates)
/// <dir>/<name>.pem        certificate of a component
/// <dir>/<name>.key.pem    private key of a component
/// ```
///
/// where `<name>` is `gateway` or the agency id ([`ComponentIdentity::file_stem`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiPaths {
    dir: PathBuf,
}

impl PkiPaths {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/ca.pem`
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// `<dir>/ca.key.pem`
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key.pem")
    }

    /// `<dir>/<name>.pem`
    pub fn cert(&self, identity: &ComponentIdentity) -> PathBuf {
        self.dir.join(format!("{}.pem", identity.file_stem()))
    }

    /// `<dir>/<name>.key.pem`
    pub fn key(&self, identity: &ComponentIdentity) -> PathBuf {
        self.dir.join(format!("{}.key.pem", identity.file_stem()))
    }

    /// The files a component needs for mutual TLS.
    pub fn tls_files(&self, identity: &ComponentIdentity) -> TlsFiles {
        TlsFiles {
            ca: self.ca_cert(),
            cert: self.cert(identity),
            key: self.key(identity),
        }
    }
}

/// What [`ensure_dev_pki`] wrote, in order. Empty when everything was already in place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DevPkiReport {
    /// Whether a new CA was generated (then every component certificate was issued anew).
    pub ca_created: bool,
    /// Every file written: new files, and component files re-issued because they were incomplete,
    /// from another CA, or about to expire.
    pub created: Vec<PathBuf>,
}

impl DevPkiReport {
    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.created.is_empty()
    }
}

/// Makes sure `dir` holds a development PKI for `identities` (layout: [`PkiPaths`]). Idempotent.
///
/// * Creates `dir` (mode 0700) if it does not exist; an existing directory keeps its mode.
/// * Loads the CA from `ca.pem` and `ca.key.pem`, or generates one if both are missing (an error
///   if only one exists).
/// * Issues a certificate and key for each identity whose files are missing, incomplete, not
///   issued by this CA, for another identity, or expiring within 30 days.
///
/// Key files are written with mode 0600, certificates with mode 0644.
pub fn ensure_dev_pki(dir: &Path, identities: &[ComponentIdentity]) -> Result<DevPkiReport> {
    let paths = PkiPaths::new(dir);
    let mut report = DevPkiReport::default();

    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_error("create directory", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(io_error("set permissions of", dir))?;
    }

    let (ca_cert, ca_key) = (paths.ca_cert(), paths.ca_key());
    let ca = match (ca_cert.exists(), ca_key.exists()) {
        (true, true) => {
            let cert_pem = read_file(&ca_cert)?;
            let key_pem = read_file(&ca_key)?;
            CertificateAuthority::from_pem(&cert_pem, &key_pem).map_err(|e| match e {
                PkiError::InvalidCertificate { reason, .. } => PkiError::InvalidCertificate {
                    what: ca_cert.display().to_string(),
                    reason,
                },
                PkiError::InvalidKey { reason, .. } => PkiError::InvalidKey {
                    what: ca_key.display().to_string(),
                    reason,
                },
                other => other,
            })?
        }
        (false, false) => {
            let ca = CertificateAuthority::generate(DEV_CA_COMMON_NAME)?;
            write_file(&ca_key, ca.key_pem(), 0o600)?;
            write_file(&ca_cert, ca.cert_pem(), 0o644)?;
            report.ca_created = true;
            report.created.push(ca_key.clone());
            report.created.push(ca_cert.clone());
            ca
        }
        (cert_exists, _) => {
            let (present, missing) = if cert_exists {
                (ca_cert, ca_key)
            } else {
                (ca_key, ca_cert)
            };
            return Err(PkiError::IncompleteCa {
                dir: dir.to_path_buf(),
                present,
                missing,
            });
        }
    };

    let ca_key_id = ca.subject_key_id();
    for identity in identities {
        let (cert_path, key_path) = (paths.cert(identity), paths.key(identity));
        let up_to_date = !report.ca_created
            && leaf_is_current(&cert_path, &key_path, identity, ca_key_id.as_deref());
        if up_to_date {
            continue;
        }
        let issued = ca.issue(identity)?;
        write_file(&key_path, &issued.key_pem, 0o600)?;
        write_file(&cert_path, &issued.cert_pem, 0o644)?;
        tracing::info!(%identity, cert = %cert_path.display(), "issued development certificate");
        report.created.push(key_path);
        report.created.push(cert_path);
    }
    Ok(report)
}

/// Whether the component files exist and hold a certificate for `identity`, issued by the CA
/// with key id `ca_key_id`, not expiring soon, together with its key.
fn leaf_is_current(
    cert_path: &Path,
    key_path: &Path,
    identity: &ComponentIdentity,
    ca_key_id: Option<&[u8]>,
) -> bool {
    let (Ok(cert_pem), Ok(key_pem)) = (fs::read_to_string(cert_path), fs::read_to_string(key_path))
    else {
        return false;
    };
    let Ok(der) = first_pem_der(&cert_pem) else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
        return false;
    };
    if identity_from_cert(&cert).as_ref() != Some(identity) {
        return false;
    }
    if let (Some(ca_id), Some(issuer_id)) = (ca_key_id, authority_key_id(&cert))
        && ca_id != issuer_id.as_slice()
    {
        return false;
    }
    let Ok(now) = SystemTime::now().duration_since(UNIX_EPOCH) else {
        return false;
    };
    let renew_at = now.as_secs().saturating_add(RENEW_BEFORE.as_secs());
    let not_after = cert.validity().not_after.timestamp();
    if not_after < i64::try_from(renew_at).unwrap_or(i64::MAX) {
        return false;
    }
    match KeyPair::from_pem(&key_pem) {
        Ok(key) => cert.public_key().raw == key.subject_public_key_info().as_slice(),
        Err(_) => false,
    }
}

/// The identity named by the SPIFFE URI SAN of `cert`, if it has exactly one of our trust
/// domain.
pub(crate) fn identity_from_cert(cert: &X509Certificate<'_>) -> Option<ComponentIdentity> {
    let san = cert.subject_alternative_name().ok()??;
    let mut found = None;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name
            && let Some(identity) = ComponentIdentity::from_spiffe_uri(uri)
        {
            if found.as_ref().is_some_and(|f| f != &identity) {
                // Two different identities in one certificate: trust neither.
                return None;
            }
            found = Some(identity);
        }
    }
    found
}

fn read_file(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(io_error("read", path))
}

/// Writes `contents` to `path` (replacing it) with permissions `mode`.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io_error("create", path))?;
    // `mode` only applies to new files: also fix the mode of a file that already existed.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_error("set permissions of", path))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", path))
}

/// The three files a component needs for mutual TLS: the CA certificate it trusts, and its own
/// certificate and private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files of `identity` in a [`PkiPaths`] directory.
    pub fn in_dir(dir: &Path, identity: &ComponentIdentity) -> Self {
        PkiPaths::new(dir).tls_files(identity)
    }
}

/// The PEM contents of [`TlsFiles`], ready for [`crate::tls`].
///
/// `Debug` does not print the key.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

impl TlsMaterial {
    /// Reads the three files. A missing file is reported by name ([`PkiError::MissingFile`]);
    /// the CA and component certificates must be PEM certificates.
    pub fn load(files: &TlsFiles) -> Result<Self> {
        let read = |what: &'static str, path: &Path| {
            fs::read_to_string(path).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => PkiError::MissingFile {
                    what,
                    path: path.to_path_buf(),
                },
                _ => PkiError::Io {
                    action: "read",
                    path: path.to_path_buf(),
                    source: e,
                },
            })
        };
        let material = Self {
            ca_pem: read("CA certificate", &files.ca)?,
            cert_pem: read("certificate", &files.cert)?,
            key_pem: read("private key", &files.key)?,
        };
        for (pem, path) in [
            (&material.ca_pem, &files.ca),
            (&material.cert_pem, &files.cert),
        ] {
            let invalid = |reason| PkiError::InvalidCertificate {
                what: path.display().to_string(),
                reason,
            };
            let der = first_pem_der(pem).map_err(invalid)?;
            x509_parser::parse_x509_certificate(&der)
                .map_err(|e| invalid(format!("bad certificate: {e}")))?;
        }
        if !material.key_pem.contains("PRIVATE KEY-----") {
            return Err(PkiError::InvalidKey {
                what: files.key.display().to_string(),
                reason: "no PEM PRIVATE KEY block".to_owned(),
            });
        }
        Ok(material)
    }

    /// Issues a fresh certificate for `identity` from `ca`, in memory (for tests).
    pub fn new(ca: &CertificateAuthority, identity: &ComponentIdentity) -> Result<Self> {
        let issued = ca.issue(identity)?;
        Ok(Self {
            ca_pem: ca.cert_pem().to_owned(),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_der(pem: &str) -> Vec<u8> {
        first_pem_der(pem).unwrap()
    }

    #[test]
    fn identities_follow_the_scheme() {
        let gateway = ComponentIdentity::Gateway;
        assert_eq!(gateway.server_name(), "gateway.referral-hub.internal");
        assert_eq!(
            gateway.spiffe_uri(),
            "spiffe://referral-hub.internal/gateway"
        );
        assert_eq!(gateway.to_string(), "gateway");

        let school = ComponentIdentity::agency("school-1").unwrap();
        assert_eq!(school, ComponentIdentity::Agency("school-1".into()));
        assert_eq!(
            school.server_name(),
            "school-1.agency.referral-hub.internal"
        );
        assert_eq!(
            school.spiffe_uri(),
            "spiffe://referral-hub.internal/agency/school-1"
        );
        assert_eq!(school.to_string(), "agency/school-1");
        assert_eq!(school.file_stem(), "school-1");

        for id in [&gateway, &school] {
            assert_eq!(
                ComponentIdentity::from_spiffe_uri(&id.spiffe_uri()).as_ref(),
                Some(id)
            );
            assert_eq!(&id.to_string().parse::<ComponentIdentity>().unwrap(), id);
        }
        assert_eq!("school-1".parse::<ComponentIdentity>().unwrap(), school);
    }

    #[test]
    fn agency_ids_are_validated() {
        for ok in ["a", "school-1", "police-42", "0", &"a".repeat(63)] {
            assert!(ComponentIdentity::agency(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "School-1",
            "school_1",
            "school.1",
            "-school",
            "school-",
            "école",
            "gateway",
            "ca",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(
                    ComponentIdentity::agency(bad),
                    Err(PkiError::InvalidAgencyId { .. })
                ),
                "{bad}"
            );
        }
        for bad in [
            "spiffe://other.example/gateway",
            "spiffe://referral-hub.internal/gateway/",
            "spiffe://referral-hub.internal/agency/",
            "spiffe://referral-hub.internal/agency/School",
            "spiffe://referral-hub.internal/agency/a/b",
            "spiffe://referral-hub.internal.evil/gateway",
            "https://referral-hub.internal/gateway",
        ] {
            assert_eq!(ComponentIdentity::from_spiffe_uri(bad), None, "{bad}");
        }
    }

    #[test]
    fn generated_ca_issues_certificates_with_the_scheme() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(ca.key_pem().contains("PRIVATE KEY-----"));
        let ca_der = cert_der(ca.cert_pem());
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert!(ca_cert.is_ca());

        let school = ComponentIdentity::agency("school-1").unwrap();
        let issued = ca.issue(&school).unwrap();
        let der = cert_der(&issued.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();

        assert!(!cert.is_ca());
        assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw());
        assert_eq!(authority_key_id(&cert), subject_key_id(&ca_cert));
        let cn: Vec<_> = cert
            .subject()
            .iter_common_name()
            .map(|cn| cn.as_str().unwrap())
            .collect();
        assert_eq!(cn, ["school-1.agency.referral-hub.internal"]);

        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        let names: Vec<String> = san.general_names.iter().map(|n| format!("{n}")).collect();
        assert!(
            names.contains(&"DNSName(school-1.agency.referral-hub.internal)".to_owned()),
            "{names:?}"
        );
        assert!(
            names.contains(&"DNSName(localhost)".to_owned()),
            "{names:?}"
        );
        assert!(
            names.contains(&"URI(spiffe://referral-hub.internal/agency/school-1)".to_owned()),
            "{names:?}"
        );
        assert!(
            san.general_names.iter().any(|n| matches!(
                n,
                x509_parser::extensions::GeneralName::IPAddress([127, 0, 0, 1])
            )),
            "{names:?}"
        );

        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);

        let now = i64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap();
        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        assert!((now - 86_400 - not_before).abs() <= 5, "{not_before}");
        assert!(
            (not_after - (now + 2 * 365 * 86_400)).abs() <= 5,
            "{not_after}"
        );

        // The key is PKCS#8 and belongs to the certificate.
        let key = KeyPair::from_pem(&issued.key_pem).unwrap();
        assert_eq!(cert.public_key().raw, key.subject_public_key_info());

        assert_eq!(identity_from_cert(&cert), Some(school));
    }

    #[test]
    fn ca_round_trips_through_pem() {
        let ca = CertificateAuthority::generate("round trip CA").unwrap();
        let loaded = CertificateAuthority::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert_eq!(loaded.key_pem(), ca.key_pem());

        // Certificates from the loaded CA name it exactly like those from the original.
        let ca_der = cert_der(ca.cert_pem());
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let issued = loaded.issue(&ComponentIdentity::Gateway).unwrap();
        let der = cert_der(&issued.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw());
        assert_eq!(authority_key_id(&cert), subject_key_id(&ca_cert));
        assert_eq!(identity_from_cert(&cert), Some(ComponentIdentity::Gateway));
    }

    #[test]
    fn from_pem_rejects_mismatched_or_non_ca_material() {
        let ca = CertificateAuthority::generate("one").unwrap();
        let other = CertificateAuthority::generate("two").unwrap();
        assert!(matches!(
            CertificateAuthority::from_pem(ca.cert_pem(), other.key_pem()),
            Err(PkiError::InvalidKey { .. })
        ));
        let leaf = ca.issue(&ComponentIdentity::Gateway).unwrap();
        assert!(matches!(
            CertificateAuthority::from_pem(&leaf.cert_pem, &leaf.key_pem),
            Err(PkiError::InvalidCertificate { .. })
        ));
        assert!(CertificateAuthority::from_pem("not pem", ca.key_pem()).is_err());
    }

    #[test]
    fn debug_output_hides_keys() {
        let ca = CertificateAuthority::generate("debug CA").unwrap();
        let material = TlsMaterial::new(&ca, &ComponentIdentity::Gateway).unwrap();
        let issued = ca.issue(&ComponentIdentity::Gateway).unwrap();
        for debug in [
            format!("{ca:?}"),
            format!("{material:?}"),
            format!("{issued:?}"),
        ] {
            assert!(!debug.contains("PRIVATE KEY"), "{debug}");
            assert!(debug.contains("[redacted]"), "{debug}");
        }
    }

    #[test]
    fn issue_refuses_unvalidated_agency_ids() {
        let ca = CertificateAuthority::generate("strict CA").unwrap();
        let bad = ComponentIdentity::Agency("Not.Valid".into());
        assert!(matches!(
            ca.issue(&bad),
            Err(PkiError::InvalidAgencyId { .. })
        ));
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn ensure_dev_pki_creates_everything_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let ids = [
            ComponentIdentity::Gateway,
            ComponentIdentity::agency("school-1").unwrap(),
        ];

        let first = ensure_dev_pki(&dir, &ids).unwrap();
        assert!(first.ca_created);
        let paths = PkiPaths::new(&dir);
        let mut expected = vec![paths.ca_key(), paths.ca_cert()];
        for id in &ids {
            expected.push(paths.key(id));
            expected.push(paths.cert(id));
        }
        assert_eq!(first.created, expected);
        assert_eq!(
            paths.cert(&ids[1]),
            dir.join("school-1.pem"),
            "layout: <dir>/<agency-id>.pem"
        );
        assert_eq!(paths.key(&ids[0]), dir.join("gateway.key.pem"));

        assert_eq!(mode(&dir), 0o700);
        for id in &ids {
            assert_eq!(mode(&paths.key(id)), 0o600);
        }
        assert_eq!(mode(&paths.ca_key()), 0o600);

        let before = fs::read_to_string(paths.cert(&ids[0])).unwrap();
        let second = ensure_dev_pki(&dir, &ids).unwrap();
        assert!(second.is_empty(), "{second:?}");
        assert!(!second.ca_created);
        assert_eq!(fs::read_to_string(paths.cert(&ids[0])).unwrap(), before);

        // A new component gets a certificate from the existing CA; nothing else changes.
        let police = ComponentIdentity::agency("police").unwrap();
        let third = ensure_dev_pki(&dir, &[ids[0].clone(), police.clone()]).unwrap();
        assert_eq!(third.created, vec![paths.key(&police), paths.cert(&police)]);

        // Every component's files load, and chain to the CA on disk.
        let ca = CertificateAuthority::from_pem(
            &fs::read_to_string(paths.ca_cert()).unwrap(),
            &fs::read_to_string(paths.ca_key()).unwrap(),
        )
        .unwrap();
        let ca_key_id = ca.subject_key_id();
        for id in ids.iter().chain([&police]) {
            let material = TlsMaterial::load(&TlsFiles::in_dir(&dir, id)).unwrap();
            assert_eq!(material.ca_pem, ca.cert_pem());
            assert!(leaf_is_current(
                &paths.cert(id),
                &paths.key(id),
                id,
                ca_key_id.as_deref()
            ));
        }
    }

    #[test]
    fn ensure_dev_pki_repairs_stale_component_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let gateway = ComponentIdentity::Gateway;
        let paths = PkiPaths::new(dir);
        ensure_dev_pki(dir, std::slice::from_ref(&gateway)).unwrap();

        // A key file missing: both files are issued again.
        fs::remove_file(paths.key(&gateway)).unwrap();
        let report = ensure_dev_pki(dir, std::slice::from_ref(&gateway)).unwrap();
        assert_eq!(
            report.created,
            vec![paths.key(&gateway), paths.cert(&gateway)]
        );

        // A certificate from another CA is replaced.
        let foreign = CertificateAuthority::generate(DEV_CA_COMMON_NAME)
            .unwrap()
            .issue(&gateway)
            .unwrap();
        fs::write(paths.cert(&gateway), &foreign.cert_pem).unwrap();
        fs::write(paths.key(&gateway), &foreign.key_pem).unwrap();
        fs::set_permissions(paths.key(&gateway), fs::Permissions::from_mode(0o644)).unwrap();
        let report = ensure_dev_pki(dir, std::slice::from_ref(&gateway)).unwrap();
        assert_eq!(report.created.len(), 2);
        assert_eq!(mode(&paths.key(&gateway)), 0o600);
        assert!(ensure_dev_pki(dir, &[gateway]).unwrap().is_empty());
    }

    #[test]
    fn ensure_dev_pki_refuses_an_incomplete_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        ensure_dev_pki(dir, &[]).unwrap();
        fs::remove_file(dir.join("ca.key.pem")).unwrap();
        let err = ensure_dev_pki(dir, &[ComponentIdentity::Gateway]).unwrap_err();
        assert!(matches!(err, PkiError::IncompleteCa { .. }), "{err}");
    }

    #[test]
    fn load_names_the_missing_file() {
        let tmp = tempfile::tempdir().unwrap();
        let files = TlsFiles::in_dir(tmp.path(), &ComponentIdentity::Gateway);
        assert_eq!(files.ca, tmp.path().join("ca.pem"));
        assert_eq!(files.cert, tmp.path().join("gateway.pem"));
        assert_eq!(files.key, tmp.path().join("gateway.key.pem"));
        let err = TlsMaterial::load(&files).unwrap_err();
        assert!(matches!(err, PkiError::MissingFile { .. }));
        assert!(err.to_string().contains("ca.pem"), "{err}");

        ensure_dev_pki(tmp.path(), &[]).unwrap();
        let err = TlsMaterial::load(&files).unwrap_err();
        assert!(err.to_string().contains("gateway.pem"), "{err}");
    }
}
