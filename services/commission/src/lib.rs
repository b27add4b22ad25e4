//! The commission agency service (КТІЖК, кәмелетке толмағандардың істері және олардың құқықтарын
//! қорғау жөніндегі комиссия).
//!
//! The juvenile affairs commission at the akimat, the centre of the hub: its secretary (or chair)
//! reads the help requests (form K) sent to it and decides on each: open a case file with a curator
//! from its staff, or no further action with a reason (M:2393-2418).
//!
//! The commission's own logic (the decision, its case files numbered `KTIZhK-<year>-<nnnnnn>`)
//! lives in [`referral_agency::commission`], guarded by kind: it writes the same store as every
//! agency's staff API, in the same transactions, so it is not a separate layer. This crate only
//! names the kind; a commission service is the one agency service on which `DecideHelpRequest`
//! is allowed.
//!
//! There is no `main` here: the single `referral-hub` binary runs this service, alone or beside
//! the others, through [`build`].

#![forbid(unsafe_code)]

pub use referral_agency::{AgencyConfig, AgencyService};
use referral_proto::v1::AgencyKind;

/// The kind of agency this service runs.
pub const KIND: AgencyKind = AgencyKind::Commission;

/// Builds the service of the commission agency `config.agency_id`: binds its listener and opens its
/// store. Fails if the directory lists that agency with another kind.
pub async fn build(config: AgencyConfig) -> anyhow::Result<AgencyService> {
    AgencyService::build(config, KIND).await
}
