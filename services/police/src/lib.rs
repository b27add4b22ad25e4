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
use referral_core::server::Router;
use referral_core::{ServiceResult, db::EmbeddedMigration};
use referral_proto::v1::{AgencyKind, Envelope, investigations_server::InvestigationsServer};
use sqlx::AnyConnection;
use tokio_util::sync::CancellationToken;
use tonic::{server::NamedService, service::interceptor::InterceptedService};

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

#[cfg(test)]
mod tests {
    use referral_core::db::{Database, Row as _, StorageConfig};

    use super::*;

    /// An investigation and its change from before 1002 keep their case (now a link) and their
    /// update (now a delivery to that case, under the key it was sent with).
    #[tokio::test]
    async fn the_rebuild_keeps_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let storage = StorageConfig {
            data_dir: dir.path().to_owned(),
            database_url: std::env::var("REFERRAL_TEST_DATABASE_URL")
                .ok()
                .map(Into::into),
        };
        let component = format!("police-test-{}", uuid::Uuid::new_v4().simple());
        static BEFORE: LazyLock<Vec<EmbeddedMigration>> = LazyLock::new(|| {
            let mut all = MIGRATIONS.clone();
            all.pop();
            all
        });
        let db = Database::open(&storage, &component, BEFORE.as_slice())
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO investigations (investigation_id, case_reference, commission_agency_id, \
             received_message_id, status, status_on, hearing_on, summary, version, received_at, \
             updated_at) VALUES ('INV-1', 'KT-1', 'commission', 'm-1', \
             'INVESTIGATION_STATUS_OPENED', '2026-03-01', NULL, '', 2, 10, 20)",
        )
        .execute(db.pool())
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO investigation_changes (message_key, investigation_id, version, \
             request_sha256, update_sent, prev_status, prev_status_on, prev_hearing_on, \
             prev_summary, recorded_by, recorded_at) VALUES ('investigation-update:k', 'INV-1', \
             2, 'sha', $1, 'INVESTIGATION_STATUS_RECEIVED', '2026-03-01', NULL, '', 'inspector', \
             20)",
        )
        .bind(vec![0u8])
        .execute(db.pool())
        .await
        .unwrap();
        db.close().await;
        let db = Database::open(&storage, &component, MIGRATIONS.as_slice())
            .await
            .unwrap();
        let link = sqlx::query(
            "SELECT investigation_id, commission_agency_id, child_role FROM investigation_cases \
             WHERE case_reference = 'KT-1'",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert_eq!(link.try_get::<String, _>(0).unwrap(), "INV-1");
        assert_eq!(link.try_get::<String, _>(1).unwrap(), "commission");
        assert_eq!(
            link.try_get::<String, _>(2).unwrap(),
            "INCIDENT_ROLE_UNSPECIFIED"
        );
        let delivery = sqlx::query(
            "SELECT message_key, case_reference FROM investigation_deliveries \
             WHERE change_key = 'investigation-update:k'",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert_eq!(
            delivery.try_get::<String, _>(0).unwrap(),
            "investigation-update:k"
        );
        assert_eq!(delivery.try_get::<String, _>(1).unwrap(), "KT-1");
        let status: String = sqlx::query_scalar(
            "SELECT status FROM investigations WHERE investigation_id = 'INV-1'",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert_eq!(status, "INVESTIGATION_STATUS_OPENED");
        db.close().await;
    }
}
