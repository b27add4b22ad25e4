//! Shared plumbing for every component of the hub: configuration, the agency directory, TLS and
//! the development PKI, telemetry, storage, error mapping, the injected clock, staff tokens and
//! form validation. Nothing here knows about one agency in particular.

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod clock;
pub mod config;
pub mod db;
pub mod directory;
pub mod error;
pub mod group_commit;
pub mod iin;
pub mod limits;
pub mod metrics;
pub mod pki;
pub mod server;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod trace_context;
pub mod validate;

pub use clock::Clock;
pub use error::{FieldViolations, ServiceError, ServiceResult};
