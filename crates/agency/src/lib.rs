//! What every agency service shares: the staff API ([`AgencyStaff`]), the inbox only the gateway
//! may call ([`AgencyInbox`]), and the agency's own store.
//!
//! Each agency service (`services/<kind>`) is [`AgencyService::build`] with its [`AgencyKind`]:
//! one tonic server per agency, on its own port, serving the two APIs plus `grpc.health.v1` and
//! server reflection over TLS. The inbox admits only the gateway's client certificate; staff call
//! with a bearer token and no client certificate. Everything the agency sends goes to the gateway
//! over mutual TLS with the agency's own certificate.
//!
//! What differs between kinds is decided here, by kind, in one place each:
//!
//! * who may submit a help request K ([`staff`]): the staff of schools, residential institutions,
//!   health, police and NGOs in their own roles; the commission does not;
//! * the commission's decision on a help request and its case files ([`commission`]): only a
//!   commission's secretary or chair, on a commission service. The logic lives in this crate
//!   rather than in `services/commission`, because it writes the same store (the decision, the
//!   case file and the message carrying the decision back, in one transaction) through the same
//!   staff API; other kinds answer `PERMISSION_DENIED`.
//!
//! [`AgencyStaff`]: referral_proto::v1::agency_staff_server::AgencyStaff
//! [`AgencyInbox`]: referral_proto::v1::agency_inbox_server::AgencyInbox

#![forbid(unsafe_code)]

mod auth;
pub mod commission;
pub mod error;
mod forms;
mod gateway_link;
mod inbox;
mod outbound;
mod service;
pub mod staff;
mod store;

pub use error::{AgencyError, BuildError};
pub use referral_proto::v1::AgencyKind;
pub use service::{AgencyConfig, AgencyService};
pub use store::{MIGRATIONS, component_name};
