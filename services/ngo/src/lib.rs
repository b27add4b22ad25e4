//! The ngo agency service (үкіметтік емес ұйым, ҮЕҰ).
//!
//! An NGO or support-service provider: it serves referred children and reports progress; its case
//! managers can send a help request (form K) to the district's commission (M:2247-2255,
//! M:3115-3125).
//!
//! What every agency does is shared and lives in [`referral_agency`]: the staff API (submit K,
//! inbox, sent messages with the commission's decision; answering the commission's information
//! requests; its deadlines, overdue list and alerts from the gateway's deadline engine), the
//! inbox only the gateway may call, and the agency's own store.
//!
//! The NGO's own work is [`NgoExtension`], an [`AgencyExtension`] adding the `NgoServices`
//! service ([`services`]): a service is created, in the same transaction as the receipt, for each
//! SERVICE_REFERRAL a school sends and each ACTION_ASSIGNMENT (a support-plan row) the commission
//! assigns. The case manager accepts or declines it (with a reason), schedules sessions and
//! records them held or the child unattended, reports progress weekly, and completes or cancels
//! it (with a reason): each step is a conditional update (an impossible one is
//! `FAILED_PRECONDITION` and changes nothing), sent back through the gateway as a SERVICE_UPDATE
//! to the school or an ACTION_PROGRESS to the commission, and reported to the gateway's deadline
//! engine (service started, progress reported, service ended: the weekly progress deadline).
//! The safety-team meeting notices schools send about the pupils it serves are kept and listed.
//!
//! There is no `main` here: the single `referral-hub` binary runs this service, alone or beside
//! the others, through [`build`].

#![forbid(unsafe_code)]

pub mod services;

use std::{
    sync::{Arc, LazyLock},
    time::Duration,
};

use jiff::Timestamp;
pub use referral_agency::{AgencyConfig, AgencyService};
use referral_agency::{AgencyExtension, AgencyHost};
use referral_core::server::Router;
use referral_core::{ServiceResult, db::EmbeddedMigration};
use referral_proto::v1::{AgencyKind, Envelope, ngo_services_server::NgoServicesServer};
use sqlx::AnyConnection;
use tokio_util::sync::CancellationToken;
use tonic::{server::NamedService, service::interceptor::InterceptedService};

/// The kind of agency this service runs.
pub const KIND: AgencyKind = AgencyKind::Ngo;

/// How often updates the gateway could not take yet are pushed again.
pub const RETRY_TICK: Duration = Duration::from_secs(10);

/// The NGO's own migrations, numbered from 1000 (after the agency's).
const OWN_MIGRATIONS: &[EmbeddedMigration] = &[
    (
        1001,
        "ngo services",
        include_str!("../migrations/1001_services.sql"),
    ),
    (
        1002,
        "clock events held until a step's message is acknowledged",
        include_str!("../migrations/1002_held_clock_events.sql"),
    ),
];

/// The NGO store's whole migration list: the agency's, then the NGO's own.
pub static MIGRATIONS: LazyLock<Vec<EmbeddedMigration>> = LazyLock::new(|| {
    referral_agency::MIGRATIONS
        .iter()
        .chain(OWN_MIGRATIONS)
        .copied()
        .collect()
});

/// Builds the service of the ngo agency `config.agency_id`: binds its listener and opens its
/// store. Fails if the directory lists that agency with another kind.
pub async fn build(config: AgencyConfig) -> anyhow::Result<AgencyService> {
    AgencyService::build_with(config, KIND, Arc::new(NgoExtension)).await
}

/// What the NGO adds to the shared agency service: its services table, the `NgoServices`
/// service and the hook that creates a service on a referral or an assignment received.
#[derive(Debug, Default)]
pub struct NgoExtension;

#[tonic::async_trait]
impl AgencyExtension for NgoExtension {
    fn migrations(&self) -> &'static [EmbeddedMigration] {
        MIGRATIONS.as_slice()
    }

    fn service_names(&self) -> Vec<&'static str> {
        vec![<NgoServicesServer<services::NgoServicesApi> as NamedService>::NAME]
    }

    fn add_services(&self, host: &AgencyHost, router: Router) -> Router {
        let service = NgoServicesServer::new(services::NgoServicesApi::new(host.clone()));
        router.add_service(InterceptedService::new(service, host.staff_auth()))
    }

    async fn on_received(
        &self,
        host: &AgencyHost,
        conn: &mut AnyConnection,
        envelope: &Envelope,
        now: Timestamp,
    ) -> ServiceResult<()> {
        services::on_received(host, conn, envelope, now).await
    }

    async fn run(&self, host: AgencyHost, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RETRY_TICK) => {}
            }
            services::push_pending(&host).await;
        }
    }
}
