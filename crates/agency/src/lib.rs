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
//! * the commission's decision on a help request ([`commission`]): only a commission's secretary
//!   or chair, on a commission service. It stays in this crate because it writes the same store
//!   (the decision, the case file and the message carrying the decision back, in one
//!   transaction) through the same staff API; other kinds answer `PERMISSION_DENIED`;
//! * answering the commission's information requests and reporting progress on the action rows
//!   assigned to the agency ([`replies`]): every kind but the commission, which asks and assigns;
//! * the deadline queries ([`deadlines`]), forwarded to the gateway's deadline engine: the
//!   district overview is the commission's only.
//!
//! ## Extensions: where a kind's own work goes
//!
//! A service crate that needs more than the shared API builds with
//! [`AgencyService::build_with`] and an [`AgencyExtension`] ([`extension`]): its own tables
//! (migrations after the agency's), its own gRPC services (behind the same bearer-token check),
//! and hooks called *inside* the shared transactions (a received message, a case opened by a
//! decision, a refused decision withdrawn) and after them. The commission's case file
//! (`referral-commission`: assessment L, support plan M, reviews, closure, reopening, the case
//! events reported to the gateway) is built that way, so that the case-lifecycle code lives in
//! `services/commission` while what it derives from a received message (an answer filed, an
//! action's progress) commits in the same transaction as the receipt. The alternative, the case
//! file in this crate guarded by kind, would have put every kind's later work here.
//!
//! [`AgencyStaff`]: referral_proto::v1::agency_staff_server::AgencyStaff
//! [`AgencyInbox`]: referral_proto::v1::agency_inbox_server::AgencyInbox

#![forbid(unsafe_code)]

mod auth;
pub mod checks;
pub mod clock_events;
pub mod commission;
mod consult;
pub mod deadlines;
pub mod error;
pub mod extension;
pub mod forms;
// The fuzz targets' entry points (fuzz/), compiled only for them.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod gateway_link;
mod inbox;
mod metrics;
mod outbound;
pub mod replies;
mod service;
pub mod staff;
mod store;

pub use auth::{GatewayOnly, StaffAuth, acting_user};
pub use error::{AgencyError, BuildError};
pub use extension::{AgencyExtension, AgencyHost, OpenedCase, PushOutcome};
pub use gateway_link::GatewayFailure;
pub use referral_proto::v1::AgencyKind;
pub use service::{AgencyConfig, AgencyService};
pub use store::{MIGRATIONS, component_name};
