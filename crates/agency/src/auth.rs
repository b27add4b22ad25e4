//! Who is calling: one interceptor per service of the agency, so no handler reads credentials.
//!
//! * [`GatewayOnly`] guards the inbox: only a client certificate with the gateway's identity
//!   passes. No certificate is `UNAUTHENTICATED`; another component's certificate is
//!   `PERMISSION_DENIED`.
//! * [`StaffAuth`] guards the staff API: the bearer token is verified with the agency's
//!   [`TokenVerifier`], and the [`ActingUser`] it names is attached to the request, where handlers
//!   read it with [`acting_user`]. A missing or invalid token, or one issued for another agency,
//!   is `UNAUTHENTICATED`. Staff connect with TLS but without a client certificate.

use std::sync::Arc;

use referral_core::{
    ServiceError,
    auth::{TokenVerifier, bearer_token},
    pki::ComponentIdentity,
    tls::peer_identity,
};
use referral_proto::v1::ActingUser;
use tonic::{Request, Status, service::Interceptor};

/// Admits only calls carrying the gateway's client certificate.
#[derive(Debug, Clone, Copy, Default)]
pub struct GatewayOnly;

impl Interceptor for GatewayOnly {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match peer_identity(&request) {
            Some(ComponentIdentity::Gateway) => Ok(request),
            Some(other) => {
                tracing::warn!(peer = %other, "inbox call from a component other than the gateway");
                Err(Status::permission_denied(format!(
                    "only the gateway may deliver to this inbox, not {other}"
                )))
            }
            None => Err(Status::unauthenticated(
                "the inbox requires the gateway's client certificate",
            )),
        }
    }
}

/// The verified staff member of a request, attached by [`StaffAuth`].
#[derive(Debug, Clone)]
struct Staff(ActingUser);

/// Verifies the bearer token of every staff API call (and of an extension's services, see
/// [`crate::AgencyHost::staff_auth`]).
#[derive(Debug, Clone)]
pub struct StaffAuth {
    agency_id: Arc<str>,
    verifier: TokenVerifier,
}

impl StaffAuth {
    pub(crate) fn new(agency_id: &str, verifier: TokenVerifier) -> Self {
        Self {
            agency_id: agency_id.into(),
            verifier,
        }
    }
}

impl Interceptor for StaffAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let token = bearer_token(request.metadata())
            .ok_or_else(|| Status::unauthenticated("a bearer token is required"))?;
        let user = self.verifier.verify(token).map_err(Status::from)?;
        // The verifier checks the audience already; this keeps the rule visible where it matters.
        if user.agency_id != *self.agency_id {
            return Err(Status::unauthenticated("the token is for another agency"));
        }
        request.extensions_mut().insert(Staff(user));
        Ok(request)
    }
}

/// The staff member [`StaffAuth`] verified for this request.
pub fn acting_user<T>(request: &Request<T>) -> Result<ActingUser, ServiceError> {
    request
        .extensions()
        .get::<Staff>()
        .map(|staff| staff.0.clone())
        // Only reachable if the service were mounted without its interceptor.
        .ok_or_else(|| ServiceError::Unauthenticated("no verified staff member".into()))
}
