//! The one place where errors become gRPC statuses.
//!
//! Libraries return [`ServiceError`]; handlers turn it into a [`tonic::Status`] with `?` (through
//! the `From` impl below). Internal errors are logged with their cause chain and answered with a
//! generic message, so that no internal detail (and no personal data in it) reaches a caller.

use std::fmt;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// One invalid field: its path in the request (`help_request.child.full_name`) and why.
///
/// Descriptions never repeat the submitted value: they say what is expected, not what was sent,
/// so personal data never reaches an error message or a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// Every invalid field of one request, collected so that a client can show all of them at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldViolations(Vec<FieldViolation>);

impl FieldViolations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` is invalid because of `description`.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &FieldViolation> {
        self.0.iter()
    }

    /// Whether `field` is among the violations.
    pub fn contains(&self, field: &str) -> bool {
        self.0.iter().any(|v| v.field == field)
    }

    /// `Ok(())` when nothing was recorded, otherwise the violations as an error.
    pub fn into_result(self) -> Result<(), ServiceError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(ServiceError::InvalidArgument(self))
        }
    }
}

impl fmt::Display for FieldViolations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fields: Vec<&str> = self.0.iter().map(|v| v.field.as_str()).collect();
        write!(f, "invalid fields: {}", fields.join(", "))
    }
}

/// What went wrong in a request, in the terms a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Bad input: answered `INVALID_ARGUMENT` with one field violation per bad field.
    #[error("{0}")]
    InvalidArgument(FieldViolations),
    /// No or bad credentials: `UNAUTHENTICATED`.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// Authenticated, but the rules do not allow it: `PERMISSION_DENIED`.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// The thing exists already in a way that conflicts (an idempotency key reused for other content).
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The request is valid but the state does not allow it (a help request decided twice).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A concurrent change won: the caller should re-read and retry.
    #[error("aborted: {0}")]
    Aborted(String),
    /// A dependency (the gateway, a database) is not reachable right now; retrying may help.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Anything else. The cause is logged, never sent.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
    /// The gateway's refusal of a request this service made for its caller (invalid, not
    /// allowed), passed on as the gateway gave it, with its field details.
    #[error("refused by the gateway: {}", .0.message())]
    Refused(Status),
}

impl ServiceError {
    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        Self::Internal(err.into())
    }

    /// The answer for each request of a batch (`group_commit`) the store failed as a whole: an
    /// unavailable store stays unavailable (the caller tries again); anything else is internal,
    /// its cause logged once by the writer and never sent.
    pub fn shared_by_batch(&self) -> Self {
        match self {
            Self::Unavailable(reason) => Self::Unavailable(reason.clone()),
            _ => Self::internal(anyhow::anyhow!("the batch was not stored")),
        }
    }

    /// A single invalid field.
    pub fn invalid_field(field: impl Into<String>, description: impl Into<String>) -> Self {
        let mut v = FieldViolations::new();
        v.add(field, description);
        Self::InvalidArgument(v)
    }
}

impl From<sqlx::Error> for ServiceError {
    /// Database errors: a unique-constraint violation means the thing already exists; a store
    /// that cannot be reached (`db::is_unavailable`: pool timeout or closed, connection lost,
    /// server shutting down) is unavailable; everything else is internal.
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                Self::AlreadyExists("a record with this key already exists".into())
            }
            err if crate::db::is_unavailable(err) => {
                Self::Unavailable("the store is not available".into())
            }
            _ => Self::Internal(err.into()),
        }
    }
}

impl From<ServiceError> for Status {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::InvalidArgument(violations) => {
                let mut details = ErrorDetails::new();
                for v in violations.iter() {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
                }
                Status::with_error_details(Code::InvalidArgument, violations.to_string(), details)
            }
            ServiceError::Unauthenticated(m) => Status::unauthenticated(m),
            ServiceError::PermissionDenied(m) => Status::permission_denied(m),
            ServiceError::NotFound(m) => Status::not_found(m),
            ServiceError::AlreadyExists(m) => Status::already_exists(m),
            ServiceError::FailedPrecondition(m) => Status::failed_precondition(m),
            ServiceError::Aborted(m) => Status::aborted(m),
            ServiceError::Unavailable(m) => Status::unavailable(m),
            ServiceError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "internal error");
                Status::internal("internal error")
            }
            ServiceError::Refused(status) => status,
        }
    }
}

/// The field violations carried by a status, for clients and tests.
pub fn field_violations(status: &Status) -> Vec<FieldViolation> {
    status
        .get_details_bad_request()
        .map(|bad| {
            bad.field_violations
                .into_iter()
                .map(|v| FieldViolation {
                    field: v.field,
                    description: v.description,
                })
                .collect()
        })
        .unwrap_or_default()
}

pub type ServiceResult<T> = Result<T, ServiceError>;
