//! The school agency service (мектеп).
//!
//! A school's safety team registers incidents and refers at-risk pupils; its director, safety-team
//! members and safeguarding lead and deputy send help requests (form K) to the district's
//! commission (M:2211-2271, M:2377-2379).
//!
//! What every agency service shares lives in [`referral_agency`]: the staff API (submit K, inbox,
//! sent messages with the commission's decision; answering the commission's information requests
//! and reporting progress on the support-plan rows assigned to it; its deadlines, overdue list and
//! alerts from the gateway's deadline engine), the inbox only the gateway may call (which also
//! receives action assignments, review minutes and deadline alerts), and the agency's own store.
//!
//! The school's own work is [`IncidentsExtension`], an [`AgencyExtension`] that adds the
//! `referral.v1.SchoolIncidents` service beside the staff API, with the same bearer-token
//! authentication, and its tables to the agency's store (migrations from 1000):
//!
//! * incident reports D (M:3457-3568), every field validated ([`validation`]), recorded
//!   idempotently, with the investigation clocks of M:1588-1622 ([`clocks`]): start the same day
//!   when anyone is injured or at risk of injury, otherwise within 2 working days; finish within
//!   2 working days of the start; a second start, or a finish before the start, is refused;
//! * the monthly summary E (M:3569-3624) computed from the month's reports ([`summary`]), with no
//!   child's identity, exported as CSV or XLSX with Kazakh and Russian headings, and sent to the
//!   district's commission through the gateway (purpose AGGREGATE_REPORTING).
//!
//! * referrals of at-risk and high-risk pupils to an NGO of the district ([`referrals`],
//!   M:2247-2271): each a SERVICE_REFERRAL through the gateway and a row of the monthly log J
//!   (M:4757-4796), updated by the NGO's SERVICE_UPDATEs (received in `on_received`), with the
//!   follow-up check, cancellation requests, the safety team's fortnightly meetings (a
//!   SAFETY_MEETING_NOTICE to the NGO) and the NGO's attendance; J is exported as CSV or XLSX with
//!   the form's Kazakh headings and Russian ones, and sent to the commission (REFERRAL_LOG).
//!
//! The residential institution keeps D for every incident too (M:2882-2890) and uses the same
//! extension (`referral-residential`).
//!
//! There is no `main` here: the single `referral-hub` binary runs this service, alone or beside
//! the others, through [`build`].

#![forbid(unsafe_code)]

mod api;
pub mod clocks;
mod idempotency;
pub mod referrals;
pub mod safeguarding;
pub mod summary;
pub mod validation;

use std::{
    sync::{Arc, LazyLock},
    time::Duration,
};

pub use referral_agency::{AgencyConfig, AgencyService};
use referral_agency::{AgencyExtension, AgencyHost};
use referral_core::db::EmbeddedMigration;
use referral_core::server::Router;
use referral_deadlines::{DistrictCalendar, HolidayCalendar};
use referral_proto::v1::{
    AgencyKind, safeguarding_server::SafeguardingServer,
    school_incidents_server::SchoolIncidentsServer, school_referrals_server::SchoolReferralsServer,
};
use tokio_util::sync::CancellationToken;
use tonic::{server::NamedService, service::interceptor::InterceptedService};

pub use crate::api::SchoolIncidentsApi;
pub use crate::referrals::SchoolReferralsApi;
pub use crate::safeguarding::SafeguardingApi;

/// The kind of agency this service runs.
pub const KIND: AgencyKind = AgencyKind::School;

/// How often [`IncidentsExtension`]'s retry loop pushes the messages the gateway could not take.
pub const RETRY_TICK: Duration = Duration::from_secs(10);

/// The incident tables, numbered from 1000 (after the agency's).
const OWN_MIGRATIONS: &[EmbeddedMigration] = &[
    (
        1001,
        "incident reports D and summaries E",
        include_str!("../migrations/1001_incidents.sql"),
    ),
    (
        1002,
        "referrals of pupils to services outside education (log J)",
        include_str!("../migrations/1002_service_referrals.sql"),
    ),
    (
        1003,
        "safeguarding: the lead's absences, concerns, allegations against staff",
        include_str!("../migrations/1003_safeguarding.sql"),
    ),
];

/// The store's whole migration list: the agency's, then the incident tables.
pub static MIGRATIONS: LazyLock<Vec<EmbeddedMigration>> = LazyLock::new(|| {
    referral_agency::MIGRATIONS
        .iter()
        .chain(OWN_MIGRATIONS)
        .copied()
        .collect()
});

/// Builds the service of the school agency `config.agency_id`: binds its listener and opens its
/// store. Fails if the directory lists that agency with another kind.
pub async fn build(config: AgencyConfig) -> anyhow::Result<AgencyService> {
    AgencyService::build_with(config, KIND, Arc::new(IncidentsExtension::default())).await
}

/// Incident reports D and the monthly summary E, for a school or a residential institution.
#[derive(Debug)]
pub struct IncidentsExtension {
    holidays: Arc<HolidayCalendar>,
}

impl Default for IncidentsExtension {
    /// With the holiday calendar built into `referral-deadlines` (the agency's configuration does
    /// not carry the deployment's holiday file yet).
    fn default() -> Self {
        Self {
            holidays: Arc::new(HolidayCalendar::embedded_kazakhstan()),
        }
    }
}

type IncidentsService = SchoolIncidentsServer<SchoolIncidentsApi>;

#[tonic::async_trait]
impl AgencyExtension for IncidentsExtension {
    fn migrations(&self) -> &'static [EmbeddedMigration] {
        MIGRATIONS.as_slice()
    }

    fn service_names(&self) -> Vec<&'static str> {
        vec![
            <IncidentsService as NamedService>::NAME,
            <SafeguardingServer<SafeguardingApi> as NamedService>::NAME,
            <SchoolReferralsServer<SchoolReferralsApi> as NamedService>::NAME,
        ]
    }

    fn add_services(&self, host: &AgencyHost, router: Router) -> Router {
        let calendar = DistrictCalendar {
            tz: host.time_zone().clone(),
            holidays: self.holidays.clone(),
        };
        let service = SchoolIncidentsServer::new(SchoolIncidentsApi::new(host.clone(), calendar))
            .max_decoding_message_size(referral_core::server::MAX_MESSAGE_BYTES);
        // The staff API's bearer-token check: only this agency's staff.
        let router = router.add_service(InterceptedService::new(service, host.staff_auth()));
        // Safeguarding (a school's; UNIMPLEMENTED at a residential institution), the same check.
        let safeguarding = SafeguardingServer::new(SafeguardingApi::new(host.clone()));
        let router = router.add_service(InterceptedService::new(safeguarding, host.staff_auth()));
        // Referrals of pupils to NGOs and the log J, the same check.
        let referrals = SchoolReferralsServer::new(SchoolReferralsApi::new(host.clone()));
        router.add_service(InterceptedService::new(referrals, host.staff_auth()))
    }

    /// A deadline alert is shown only to whom it is addressed (an allegation's never reaches the
    /// director or teacher it may accuse); every other message to all staff
    /// ([`safeguarding::shown_to`]).
    async fn may_see(
        &self,
        _host: &AgencyHost,
        user: &referral_proto::v1::ActingUser,
        envelope: &referral_proto::v1::Envelope,
    ) -> referral_core::ServiceResult<bool> {
        Ok(safeguarding::shown_to(envelope, user))
    }

    async fn on_received(
        &self,
        _host: &AgencyHost,
        conn: &mut sqlx::AnyConnection,
        envelope: &referral_proto::v1::Envelope,
        now: jiff::Timestamp,
    ) -> referral_core::ServiceResult<()> {
        // The commission's decision on a concern's written report is the service's answer.
        safeguarding::on_received(conn, envelope, now).await?;
        // An NGO's update on a referral of a pupil.
        referrals::on_received(conn, envelope, now).await
    }

    /// Every [`RETRY_TICK`] until shutdown, pushes the messages queued while the gateway was
    /// away (summaries E, referrals, cancellation requests, meeting notices, logs J), each undone
    /// as its own request undoes it if the gateway refuses it for good.
    async fn run(&self, host: AgencyHost, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RETRY_TICK) => {}
            }
            api::push_pending(&host).await;
            referrals::push_pending(&host).await;
        }
    }
}
