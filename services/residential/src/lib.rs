//! The residential agency service (интернаттық мекеме).
//!
//! A residential institution (children's home, boarding or special school): its director and staff
//! send help requests (form K) to the district's commission; moderate and severe incidents go to
//! the commission and the police (M:2855-2932).
//!
//! Everything it does is shared by every agency service and lives in [`referral_agency`]: the
//! staff API (submit K, inbox, sent messages with the commission's decision; answering the
//! commission's information requests and reporting progress on the support-plan rows assigned to
//! it; its deadlines, overdue list and alerts from the gateway's deadline engine), the inbox only
//! the gateway may call (which also receives action assignments, review minutes and deadline
//! alerts), and the agency's own store. Its incident reports D (kept for every incident,
//! M:2882-2890), their investigation clocks and the monthly summary E are the school's
//! extension, [`referral_school::IncidentsExtension`], served as `referral.v1.SchoolIncidents`.
//!
//! There is no `main` here: the single `referral-hub` binary runs this service, alone or beside
//! the others, through [`build`].

#![forbid(unsafe_code)]

use std::sync::Arc;

pub use referral_agency::{AgencyConfig, AgencyService};
use referral_proto::v1::AgencyKind;

/// The kind of agency this service runs.
pub const KIND: AgencyKind = AgencyKind::Residential;

/// Builds the service of the residential agency `config.agency_id`: binds its listener and opens its
/// store. Fails if the directory lists that agency with another kind.
pub async fn build(config: AgencyConfig) -> anyhow::Result<AgencyService> {
    // Incident reports D for every incident (M:2882-2890) and the summary E: the school's
    // extension, with the same tables and the same `SchoolIncidents` service.
    AgencyService::build_with(
        config,
        KIND,
        Arc::new(referral_school::IncidentsExtension::default()),
    )
    .await
}
