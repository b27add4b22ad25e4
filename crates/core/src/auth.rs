//! Staff authentication: bearer tokens (signed JWTs) from an issuer the deployment configures,
//! verified against the agency's key set (a JWKS document, as an OIDC provider publishes).
//!
//! In development mode the hub is its own issuer: [`DevIssuer`] keeps one Ed25519 key per agency
//! under `<data-dir>/pki/issuer/` and mints tokens for the demo users. Outside development mode
//! nothing mints tokens; a real identity provider does.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use jiff::{SignedDuration, Timestamp};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, jwk::JwkSet};
use referral_proto::v1::{ActingUser, Role};
use serde::{Deserialize, Serialize};

use crate::{
    Clock,
    directory::{parse_role, role_name},
    error::ServiceError,
};

/// The issuer name of the development identity provider.
pub const DEV_ISSUER: &str = "referral-hub-dev";

/// What a staff token says about its holder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StaffClaims {
    pub iss: String,
    /// The user id within the agency.
    pub sub: String,
    /// The agency the token is for.
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    /// The user's role, in lower snake case (`school_director`).
    pub role: String,
    /// The user's display name.
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the key set {path}: {source}")]
    ReadKeys {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the key set {path} is not a valid JWKS document")]
    BadKeys { path: PathBuf },
    #[error("cannot write the issuer key {path}: {source}")]
    WriteKeys {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate or load an issuer key: {0}")]
    Key(String),
}

/// Installs jsonwebtoken's crypto provider once per process (safe to call repeatedly).
fn install_jwt_provider() {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

/// Verifies staff tokens for one agency.
#[derive(Clone)]
pub struct TokenVerifier {
    issuer: String,
    agency_id: String,
    keys: JwkSet,
    clock: Clock,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("issuer", &self.issuer)
            .field("agency_id", &self.agency_id)
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    pub fn new(issuer: &str, agency_id: &str, keys: JwkSet, clock: Clock) -> Self {
        install_jwt_provider();
        Self {
            issuer: issuer.to_owned(),
            agency_id: agency_id.to_owned(),
            keys,
            clock,
        }
    }

    /// Loads the key set from a JWKS file.
    pub fn from_jwks_file(
        issuer: &str,
        agency_id: &str,
        path: &Path,
        clock: Clock,
    ) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::ReadKeys {
            path: path.to_owned(),
            source,
        })?;
        let keys: JwkSet = serde_json::from_str(&text).map_err(|_| AuthError::BadKeys {
            path: path.to_owned(),
        })?;
        Ok(Self::new(issuer, agency_id, keys, clock))
    }

    /// Checks a bearer token and returns who is acting. Expiry is checked against the injected
    /// clock, not the system's, so that tests can drive it.
    pub fn verify(&self, token: &str) -> Result<ActingUser, ServiceError> {
        let unauthenticated = |m: &str| ServiceError::Unauthenticated(m.to_owned());
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| unauthenticated("malformed token"))?;
        let jwk = match header.kid.as_deref() {
            Some(kid) => self.keys.find(kid),
            None => self.keys.keys.first(),
        }
        .ok_or_else(|| unauthenticated("token signed by an unknown key"))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|_| unauthenticated("unusable key"))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.agency_id]);
        validation.validate_exp = false;
        validation.required_spec_claims = ["iss", "aud", "sub", "exp"]
            .into_iter()
            .map(String::from)
            .collect();
        let data = jsonwebtoken::decode::<StaffClaims>(token, &key, &validation)
            .map_err(|_| unauthenticated("invalid token"))?;
        let claims = data.claims;
        if claims.exp <= self.clock.now().as_second() {
            return Err(unauthenticated("token expired"));
        }
        let role = parse_role(&claims.role).ok_or_else(|| unauthenticated("unknown role"))?;
        Ok(ActingUser {
            user_id: claims.sub,
            agency_id: claims.aud,
            role: role as i32,
            display_name: claims.name,
        })
    }
}

/// The development identity provider: one Ed25519 signing key per agency.
#[derive(Debug, Clone)]
pub struct DevIssuer {
    dir: PathBuf,
}

impl DevIssuer {
    /// Uses (and creates when missing) the keys under `dir` for the given agencies.
    pub fn ensure(dir: &Path, agency_ids: &[&str]) -> Result<Self, AuthError> {
        install_jwt_provider();
        std::fs::create_dir_all(dir).map_err(|source| AuthError::WriteKeys {
            path: dir.to_owned(),
            source,
        })?;
        let issuer = Self {
            dir: dir.to_owned(),
        };
        for agency in agency_ids {
            let key_path = issuer.key_path(agency);
            if key_path.exists() {
                continue;
            }
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
                .map_err(|e| AuthError::Key(e.to_string()))?;
            let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.public_key_raw());
            let jwks = serde_json::json!({
                "keys": [{
                    "kty": "OKP", "crv": "Ed25519", "x": x,
                    "kid": format!("{agency}-1"), "alg": "EdDSA", "use": "sig"
                }]
            });
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            let jwks_path = issuer.jwks_path(agency);
            std::fs::write(&jwks_path, jwks.to_string()).map_err(|source| {
                AuthError::WriteKeys {
                    path: jwks_path,
                    source,
                }
            })?;
        }
        Ok(issuer)
    }

    fn key_path(&self, agency: &str) -> PathBuf {
        self.dir.join(format!("{agency}.key.pem"))
    }

    /// The public key set of an agency, as its services verify tokens with.
    pub fn jwks_path(&self, agency: &str) -> PathBuf {
        self.dir.join(format!("{agency}.jwks.json"))
    }

    /// Mints a token for a user of `agency`, valid for `ttl` from the clock's now.
    pub fn mint(
        &self,
        agency: &str,
        user_id: &str,
        role: Role,
        name: &str,
        ttl: SignedDuration,
        now: Timestamp,
    ) -> Result<String, AuthError> {
        let pem = std::fs::read(self.key_path(agency)).map_err(|source| AuthError::ReadKeys {
            path: self.key_path(agency),
            source,
        })?;
        let key = EncodingKey::from_ed_pem(&pem).map_err(|e| AuthError::Key(e.to_string()))?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(format!("{agency}-1"));
        let claims = StaffClaims {
            iss: DEV_ISSUER.to_owned(),
            sub: user_id.to_owned(),
            aud: agency.to_owned(),
            exp: (now + ttl).as_second(),
            iat: now.as_second(),
            role: role_name(role),
            name: name.to_owned(),
        };
        jsonwebtoken::encode(&header, &claims, &key).map_err(|e| AuthError::Key(e.to_string()))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AuthError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, bytes)
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)))
        .map_err(|source| AuthError::WriteKeys {
            path: path.to_owned(),
            source,
        })
}

/// Reads the bearer token of a request's `authorization` metadata.
pub fn bearer_token(metadata: &tonic::metadata::MetadataMap) -> Option<&str> {
    metadata
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_verify_only_for_their_agency_and_until_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = DevIssuer::ensure(dir.path(), &["school-1", "school-2"]).unwrap();
        let now: Timestamp = "2026-11-20T09:00:00Z".parse().unwrap();
        let clock = Clock::manual(now);
        let token = issuer
            .mint(
                "school-1",
                "director",
                Role::SchoolDirector,
                "Director",
                SignedDuration::from_hours(8),
                now,
            )
            .unwrap();
        let verifier = TokenVerifier::from_jwks_file(
            DEV_ISSUER,
            "school-1",
            &issuer.jwks_path("school-1"),
            clock.clone(),
        )
        .unwrap();
        let user = verifier.verify(&token).unwrap();
        assert_eq!(user.user_id, "director");
        assert_eq!(user.role, Role::SchoolDirector as i32);

        // School 2's service does not accept school 1's token.
        let other = TokenVerifier::from_jwks_file(
            DEV_ISSUER,
            "school-2",
            &issuer.jwks_path("school-2"),
            clock.clone(),
        )
        .unwrap();
        assert!(other.verify(&token).is_err());

        clock.advance(SignedDuration::from_hours(9));
        assert!(verifier.verify(&token).is_err());
    }
}
