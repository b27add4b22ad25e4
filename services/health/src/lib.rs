//! The health agency service (денсаулық сақтау).
//!
//! A health facility: it treats injured children at once and gives psychological support; a health
//! worker can send a help request (form K) to the district's commission (M:2940-2955).
//!
//! Everything it does is shared by every agency service and lives in [`referral_agency`]: the
//! staff API (submit K, inbox, sent messages with the commission's decision; answering the
//! commission's information requests and reporting progress on the support-plan rows assigned to
//! it; its deadlines, overdue list and alerts from the gateway's deadline engine), the inbox only
//! the gateway may call (which also receives action assignments, review minutes and deadline
//! alerts), and the agency's own store. This crate only names the kind.
//!
//! There is no `main` here: the single `referral-hub` binary runs this service, alone or beside
//! the others, through [`build`].

#![forbid(unsafe_code)]

pub use referral_agency::{AgencyConfig, AgencyService};
use referral_proto::v1::AgencyKind;

/// The kind of agency this service runs.
pub const KIND: AgencyKind = AgencyKind::Health;

/// Builds the service of the health agency `config.agency_id`: binds its listener and opens its
/// store. Fails if the directory lists that agency with another kind.
pub async fn build(config: AgencyConfig) -> anyhow::Result<AgencyService> {
    AgencyService::build(config, KIND).await
}
