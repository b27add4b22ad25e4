//! The residential agency service (интернаттық мекеме).
//!
//! A residential institution (children's home, boarding or special school): its director and staff
//! send help requests (form K) to the district's commission; moderate and severe incidents go to
//! the commission and the police (M:2855-2932).
//!
//! Everything it shares with every agency service lives in [`referral_agency`]: the staff API
//! (submit K, inbox, sent messages with the commission's decision; answers to information
//! requests and progress on assigned rows; its deadlines), the inbox only the gateway may call,
//! and the agency's own store.
//!
//! Its own work is [`ResidentialExtension`], which composes the school's
//! [`referral_school::IncidentsExtension`] (the incident reports D kept for every incident,
//! M:2882-2890, their investigation clocks and the summary E, served as `SchoolIncidents` with the
//! school's tables) and adds the `ResidentialIncidents` service and tables of its own
//! (migrations from 1101):
//!
//! * [`incidents`]: an incident's severity and mandatory-report grounds (M:2932-2940,
//!   M:2964-2970); its referral to the district's commission **and** police in one action; an
//!   injured child referred to the district's health facility at once, with only the medical
//!   part (M:2940-2945); closing, refused for a moderate or severe incident that has not gone to
//!   both; and a member of staff's report bypassing an implicated director (M:2876-2882), which
//!   the director never sees ([`ResidentialExtension::may_see`]).
//! * [`instructions`]: the commission's protection instructions received (a move to another
//!   institution or a family-type setting, M:3010-3017), acknowledged and reported carried out.
//!
//! There is no `main` here: the single `referral-hub` binary runs this service, alone or beside
//! the others, through [`build`].

#![forbid(unsafe_code)]

pub mod incidents;
pub mod instructions;
mod validation;

use std::{
    sync::{Arc, LazyLock},
    time::Duration,
};

use jiff::Timestamp;
pub use referral_agency::{AgencyConfig, AgencyService};
use referral_agency::{AgencyExtension, AgencyHost, OpenedCase, forms::form};
use referral_core::server::Router;
use referral_core::{ServiceResult, db::EmbeddedMigration};
use referral_proto::v1::{
    ActingUser, AgencyKind, Envelope, payload::Form,
    residential_incidents_server::ResidentialIncidentsServer,
};
use referral_school::IncidentsExtension;
use sqlx::AnyConnection;
use tokio_util::sync::CancellationToken;
use tonic::{server::NamedService, service::interceptor::InterceptedService};

/// The kind of agency this service runs.
pub const KIND: AgencyKind = AgencyKind::Residential;

/// How often messages the gateway could not take yet are pushed again.
pub const RETRY_TICK: Duration = Duration::from_secs(10);

/// The institution's own migrations, numbered from 1101 so that they never meet the school's
/// (1001-1099), whose tables the institution shares.
const OWN_MIGRATIONS: &[EmbeddedMigration] = &[(
    1101,
    "residential incident work and protection instructions",
    include_str!("../migrations/1101_incident_work.sql"),
)];

/// The store's whole migration list: the agency's and the school's incident tables, then the
/// institution's own.
pub static MIGRATIONS: LazyLock<Vec<EmbeddedMigration>> = LazyLock::new(|| {
    referral_school::MIGRATIONS
        .iter()
        .chain(OWN_MIGRATIONS)
        .copied()
        .collect()
});

/// Builds the service of the residential agency `config.agency_id`: binds its listener and opens its
/// store. Fails if the directory lists that agency with another kind.
pub async fn build(config: AgencyConfig) -> anyhow::Result<AgencyService> {
    AgencyService::build_with(config, KIND, Arc::new(ResidentialExtension::default())).await
}

/// The school's incident reports D and summary E, and the institution's own incident work and
/// protection instructions.
#[derive(Debug, Default)]
pub struct ResidentialExtension {
    incidents: IncidentsExtension,
}

type ResidentialService = ResidentialIncidentsServer<incidents::ResidentialIncidentsApi>;

#[tonic::async_trait]
impl AgencyExtension for ResidentialExtension {
    fn migrations(&self) -> &'static [EmbeddedMigration] {
        MIGRATIONS.as_slice()
    }

    fn service_names(&self) -> Vec<&'static str> {
        let mut names = self.incidents.service_names();
        names.push(<ResidentialService as NamedService>::NAME);
        names
    }

    fn add_services(&self, host: &AgencyHost, router: Router) -> Router {
        let router = self.incidents.add_services(host, router);
        let service =
            ResidentialIncidentsServer::new(incidents::ResidentialIncidentsApi::new(host.clone()));
        // The staff API's bearer-token check: only this institution's staff.
        router.add_service(InterceptedService::new(service, host.staff_auth()))
    }

    async fn on_received(
        &self,
        host: &AgencyHost,
        conn: &mut AnyConnection,
        envelope: &Envelope,
        now: Timestamp,
    ) -> ServiceResult<()> {
        self.incidents
            .on_received(host, conn, envelope, now)
            .await?;
        instructions::on_received(conn, envelope, now).await
    }

    async fn on_case_opened(
        &self,
        host: &AgencyHost,
        conn: &mut AnyConnection,
        case: &OpenedCase<'_>,
    ) -> ServiceResult<()> {
        self.incidents.on_case_opened(host, conn, case).await
    }

    async fn on_case_withdrawn(
        &self,
        host: &AgencyHost,
        conn: &mut AnyConnection,
        case_reference: &str,
    ) -> ServiceResult<()> {
        self.incidents
            .on_case_withdrawn(host, conn, case_reference)
            .await
    }

    /// A referral made bypassing the director (the report implicates this institution's
    /// director, M:2876-2882) is seen by the member of staff who made it and by nobody else of
    /// the institution, the director least of all.
    async fn may_see(
        &self,
        host: &AgencyHost,
        user: &ActingUser,
        envelope: &Envelope,
    ) -> ServiceResult<bool> {
        if let Some(Form::IncidentReferral(r)) = form(envelope)
            && r.circumstances
                .as_ref()
                .is_some_and(|c| c.implicated_director_agency_id == host.agency_id())
        {
            return Ok(envelope
                .acting_user
                .as_ref()
                .is_some_and(|sender| sender.user_id == user.user_id));
        }
        self.incidents.may_see(host, user, envelope).await
    }

    async fn after_commit(&self, host: &AgencyHost) {
        self.incidents.after_commit(host).await;
    }

    async fn run(&self, host: AgencyHost, shutdown: CancellationToken) {
        let incidents = self.incidents.run(host.clone(), shutdown.clone());
        let retries = async {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(RETRY_TICK) => {}
                }
                incidents::push_pending(&host).await;
                instructions::push_pending(&host).await;
            }
        };
        tokio::join!(incidents, retries);
    }
}
