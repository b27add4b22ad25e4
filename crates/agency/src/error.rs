//! Errors of an agency service: [`BuildError`] when it starts, [`AgencyError`] per request.
//!
//! [`AgencyError`] becomes a [`tonic::Status`] in one place (`From<AgencyError> for Status`): most
//! errors are the shared [`ServiceError`] (mapped by `referral_core::error`), and a refusal by the
//! gateway is passed to the caller with the gateway's code, message and error details, so that a
//! client sees the same field violations the gateway named.

use std::net::SocketAddr;

use referral_core::{ServiceError, db::DbError};
use tonic::{Code, Status};

/// Why an agency service could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("agency {0} is not in the agency directory")]
    UnknownAgency(String),
    #[error("agency {id} is a {found} in the agency directory, but this service runs a {expected}")]
    WrongKind {
        id: String,
        found: String,
        expected: String,
    },
    #[error("the district {district} of agency {id} is not in the agency directory")]
    UnknownDistrict { id: String, district: String },
    #[error("the district {district} has an unknown time zone {time_zone}")]
    TimeZone { district: String, time_zone: String },
    #[error("the gateway endpoint {endpoint} is not usable: {source}")]
    GatewayEndpoint {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("cannot configure TLS for the agency service: {0}")]
    Tls(#[source] tonic::transport::Error),
    #[error(
        "the extension's migrations must be the agency's own followed by its own, numbered from 1000"
    )]
    ExtensionMigrations,
    #[error(transparent)]
    Store(#[from] DbError),
}

/// What went wrong in one request.
#[derive(Debug, thiserror::Error)]
pub enum AgencyError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The gateway refused the message for a reason the caller can act on (invalid content, not
    /// allowed, key reused): passed through with the gateway's details.
    #[error("the gateway refused the message ({:?})", .0.code())]
    GatewayRefused(Status),
}

pub type AgencyResult<T> = Result<T, AgencyError>;

impl From<sqlx::Error> for AgencyError {
    fn from(err: sqlx::Error) -> Self {
        Self::Service(err.into())
    }
}

impl From<AgencyError> for ServiceError {
    /// For extensions whose handlers answer `ServiceError`: a gateway refusal passes on as the
    /// gateway gave it (code, message and field details).
    fn from(err: AgencyError) -> Self {
        match err {
            AgencyError::Service(err) => err,
            AgencyError::GatewayRefused(status) => ServiceError::Refused(status),
        }
    }
}

impl From<AgencyError> for Status {
    fn from(err: AgencyError) -> Self {
        match err {
            AgencyError::Service(err) => err.into(),
            // Rebuilt rather than returned as is: only code, message and details cross over,
            // never the gateway's response headers.
            AgencyError::GatewayRefused(status) => Status::with_details(
                status.code(),
                status.message().to_owned(),
                status.details().to_vec().into(),
            ),
        }
    }
}

impl AgencyError {
    /// The gRPC code the caller will see.
    pub fn code(&self) -> Code {
        match self {
            Self::Service(ServiceError::InvalidArgument(_)) => Code::InvalidArgument,
            Self::Service(ServiceError::Unauthenticated(_)) => Code::Unauthenticated,
            Self::Service(ServiceError::PermissionDenied(_)) => Code::PermissionDenied,
            Self::Service(ServiceError::NotFound(_)) => Code::NotFound,
            Self::Service(ServiceError::AlreadyExists(_)) => Code::AlreadyExists,
            Self::Service(ServiceError::FailedPrecondition(_)) => Code::FailedPrecondition,
            Self::Service(ServiceError::Aborted(_)) => Code::Aborted,
            Self::Service(ServiceError::Unavailable(_)) => Code::Unavailable,
            Self::Service(ServiceError::Internal(_)) => Code::Internal,
            Self::GatewayRefused(status) | Self::Service(ServiceError::Refused(status)) => {
                status.code()
            }
        }
    }
}

/// Shorthand constructors for the errors handlers raise most.
pub(crate) fn permission_denied(message: &str) -> AgencyError {
    ServiceError::PermissionDenied(message.to_owned()).into()
}

pub(crate) fn not_found(message: &str) -> AgencyError {
    ServiceError::NotFound(message.to_owned()).into()
}

pub(crate) fn internal(err: impl Into<anyhow::Error>) -> AgencyError {
    ServiceError::internal(err).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_refusal_keeps_its_code_message_and_details() {
        let mut violations = referral_core::FieldViolations::new();
        violations.add("help_request.child.full_name", "required");
        let gateway: Status = ServiceError::InvalidArgument(violations).into();
        let passed: Status = AgencyError::GatewayRefused(gateway.clone()).into();
        assert_eq!(passed.code(), Code::InvalidArgument);
        assert_eq!(passed.message(), gateway.message());
        let fields = referral_core::error::field_violations(&passed);
        assert_eq!(fields.len(), 1);
        assert_eq!(fields[0].field, "help_request.child.full_name");
    }
}
