//! The police agency service (полиция, кәмелетке толмағандар істері жөніндегі инспекция).
//!
//! The police and their juvenile inspectors: they investigate moderate and severe incidents, and a
//! juvenile inspector can send a help request (form K) to the district's commission (M:2932-2940).
//!
//! What every agency does is shared and lives in [`referral_agency`]: the staff API (submit K,
//! inbox, sent messages with the commission's decision; answering the commission's information
//! requests and reporting progress on the support-plan rows assigned to it; its deadlines), the
//! inbox only the gateway may call, and the agency's own store.
//!
//! The police's own work is [`PoliceExtension`], an [`AgencyExtension`]: when the commission asks
//! the police about a case (an information request or an action assignment received), or an
//! institution refers a moderate or severe incident directly (INCIDENT_REFERRAL), an investigation
//! is created, RECEIVED, in the same transaction as the receipt. An investigation is about an
//! incident: the inspector links to it the case of every child involved, with the child's role
//! (`LinkCase`). Inspectors move it through its lifecycle with the `Investigations` service
//! (RECEIVED → OPENED → REFERRED_TO_PROSECUTOR → HEARING_SCHEDULED → DECIDED → CLOSED, or
//! OPENED → CLOSED when there are no grounds); every accepted change is stored and sent to the
//! commission as one INVESTIGATION_UPDATE per linked case through the gateway, because the
//! curators of the victim, the witnesses and the offender must each stay informed of the
//! investigation, the hearings and the sentence (M:3215-3220). A child linked as the offender may
//! be registered for prevention (M:3240-3260), which only that child's case learns.
//!
//! There is no `main` here: the single `referral-hub` binary runs this service, alone or beside
//! the others, through [`build`].

#![forbid(unsafe_code)]

mod investigations;
mod registrations;

use std::{
    sync::{Arc, LazyLock},
    time::Duration,
};

use jiff::Timestamp;
pub use referral_agency::{AgencyConfig, AgencyService};
use referral_agency::{AgencyExtension, AgencyHost};
use referral_core::{ServiceResult, db::EmbeddedMigration};
use referral_proto::v1::{AgencyKind, Envelope, investigations_server::InvestigationsServer};
use sqlx::AnyConnection;
use tokio_util::sync::CancellationToken;
use tonic::{
    server::NamedService, service::interceptor::InterceptedService, transport::server::Router,
};

/// The kind of agency this service runs.
pub const KIND: AgencyKind = AgencyKind::Police;

/// How often updates the gateway could not take yet are pushed again.
pub const RETRY_TICK: Duration = Duration::from_secs(10);

/// The police's own migrations, numbered from 1000 (after the agency's).
const OWN_MIGRATIONS: &[EmbeddedMigration] = &[
    (
        1001,
        "police investigations",
        include_str!("../migrations/1001_investigations.sql"),
    ),
    (
        1002,
        "incident investigations, linked cases, preventive registrations",
        include_str!("../migrations/1002_incident_investigations.sql"),
    ),
];

/// The police store's whole migration list: the agency's, then the police's own.
pub static MIGRATIONS: LazyLock<Vec<EmbeddedMigration>> = LazyLock::new(|| {
    referral_agency::MIGRATIONS
        .iter()
        .chain(OWN_MIGRATIONS)
        .copied()
        .collect()
});

/// Builds the service of the police agency `config.agency_id`: binds its listener and opens its
/// store. Fails if the directory lists that agency with another kind.
pub async fn build(config: AgencyConfig) -> anyhow::Result<AgencyService> {
    AgencyService::build_with(config, KIND, Arc::new(PoliceExtension)).await
}

/// What the police add to the shared agency service: the investigations table, the
/// `Investigations` service and the hook that creates an investigation.
#[derive(Debug, Default)]
pub struct PoliceExtension;

#[tonic::async_trait]
impl AgencyExtension for PoliceExtension {
    fn migrations(&self) -> &'static [EmbeddedMigration] {
        MIGRATIONS.as_slice()
    }

    fn service_names(&self) -> Vec<&'static str> {
        vec![<InvestigationsServer<investigations::InvestigationsApi> as NamedService>::NAME]
    }

    fn add_services(&self, host: &AgencyHost, router: Router) -> Router {
        let service =
            InvestigationsServer::new(investigations::InvestigationsApi::new(host.clone()));
        router.add_service(InterceptedService::new(service, host.staff_auth()))
    }

    async fn on_received(
        &self,
        host: &AgencyHost,
        conn: &mut AnyConnection,
        envelope: &Envelope,
        now: Timestamp,
    ) -> ServiceResult<()> {
        investigations::on_received(host, conn, envelope, now).await
    }

    async fn run(&self, host: AgencyHost, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RETRY_TICK) => {}
            }
            investigations::push_pending(&host).await;
            registrations::push_pending(&host).await;
        }
    }
}
