//! The health agency service (денсаулық сақтау).
//!
//! A health facility: it treats injured children at once and gives psychological support; a health
//! worker can send a help request (form K) to the district's commission (M:2940-2955).
//!
//! What every agency does is shared and lives in [`referral_agency`]: the staff API (submit K,
//! inbox, sent messages with the commission's decision; answering the commission's information
//! requests and reporting progress on the support-plan rows assigned to it; its deadlines), the
//! inbox only the gateway may call, and the agency's own store.
//!
//! The facility's own work is [`HealthExtension`], an [`AgencyExtension`]: a child referred by the
//! commission (an information request or an action assignment received about a case), or each
//! injured child an institution refers for care (INCIDENT_REFERRAL, purpose medical care), becomes
//! a referral in the same transaction as the receipt (an institution's one is linked to the
//! child's case once the commission asks about it, its notices held until then); health workers list them and send notices
//! with the `HealthNotices` service (admitted, treatment, psychological support, rehabilitation,
//! discharged, referral declined), each a HEALTH_NOTICE to the commission and so to the case's
//! curator (M:2945-2955, M:3110-3115). No treatment, rehabilitation or discharge before
//! admission, nothing after a discharge or a declined referral.
//!
//! There is no `main` here: the single `referral-hub` binary runs this service, alone or beside
//! the others, through [`build`].

#![forbid(unsafe_code)]

mod notices;

use std::{
    sync::{Arc, LazyLock},
    time::Duration,
};

use jiff::Timestamp;
pub use referral_agency::{AgencyConfig, AgencyService};
use referral_agency::{AgencyExtension, AgencyHost};
use referral_core::server::Router;
use referral_core::{ServiceResult, db::EmbeddedMigration};
use referral_proto::v1::{AgencyKind, Envelope, health_notices_server::HealthNoticesServer};
use sqlx::AnyConnection;
use tokio_util::sync::CancellationToken;
use tonic::{server::NamedService, service::interceptor::InterceptedService};

/// The kind of agency this service runs.
pub const KIND: AgencyKind = AgencyKind::Health;

/// How often notices the gateway could not take yet are pushed again.
pub const RETRY_TICK: Duration = Duration::from_secs(10);

/// The facility's own migrations, numbered from 1000 (after the agency's).
const OWN_MIGRATIONS: &[EmbeddedMigration] = &[
    (
        1001,
        "health referrals and notices",
        include_str!("../migrations/1001_health_referrals.sql"),
    ),
    (
        1002,
        "institutions' referrals of injured children, notices held until linked",
        include_str!("../migrations/1002_incident_referrals.sql"),
    ),
];

/// The health store's whole migration list: the agency's, then the facility's own.
pub static MIGRATIONS: LazyLock<Vec<EmbeddedMigration>> = LazyLock::new(|| {
    referral_agency::MIGRATIONS
        .iter()
        .chain(OWN_MIGRATIONS)
        .copied()
        .collect()
});

/// Builds the service of the health agency `config.agency_id`: binds its listener and opens its
/// store. Fails if the directory lists that agency with another kind.
pub async fn build(config: AgencyConfig) -> anyhow::Result<AgencyService> {
    AgencyService::build_with(config, KIND, Arc::new(HealthExtension)).await
}

/// What a health facility adds to the shared agency service: the referrals table, the
/// `HealthNotices` service and the hook that records a referral.
#[derive(Debug, Default)]
pub struct HealthExtension;

#[tonic::async_trait]
impl AgencyExtension for HealthExtension {
    fn migrations(&self) -> &'static [EmbeddedMigration] {
        MIGRATIONS.as_slice()
    }

    fn service_names(&self) -> Vec<&'static str> {
        vec![<HealthNoticesServer<notices::HealthNoticesApi> as NamedService>::NAME]
    }

    fn add_services(&self, host: &AgencyHost, router: Router) -> Router {
        let service = HealthNoticesServer::new(notices::HealthNoticesApi::new(host.clone()));
        router.add_service(InterceptedService::new(service, host.staff_auth()))
    }

    async fn on_received(
        &self,
        _host: &AgencyHost,
        conn: &mut AnyConnection,
        envelope: &Envelope,
        now: Timestamp,
    ) -> ServiceResult<()> {
        notices::on_received(conn, envelope, now).await
    }

    async fn run(&self, host: AgencyHost, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RETRY_TICK) => {}
            }
            notices::push_pending(&host).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use referral_core::db::{Database, Row as _, StorageConfig};

    use super::*;

    /// A referral and its notice from before 1002 keep their case, and the notice counts as sent.
    #[tokio::test]
    async fn the_rebuild_keeps_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let storage = StorageConfig {
            data_dir: dir.path().to_owned(),
            database_url: std::env::var("REFERRAL_TEST_DATABASE_URL")
                .ok()
                .map(Into::into),
        };
        let component = format!("health-test-{}", uuid::Uuid::new_v4().simple());
        static BEFORE: LazyLock<Vec<EmbeddedMigration>> = LazyLock::new(|| {
            let mut all = MIGRATIONS.clone();
            all.pop();
            all
        });
        let db = Database::open(&storage, &component, BEFORE.as_slice())
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO health_referrals (case_reference, commission_agency_id, \
             received_message_id, received_form_kind, received_at, last_notice, admitted, \
             version) VALUES ('KT-1', 'commission', 'm-1', 'FORM_KIND_INFORMATION_REQUEST', 10, \
             'HEALTH_NOTICE_KIND_ADMITTED', 1, 2)",
        )
        .execute(db.pool())
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO health_notices (message_key, case_reference, version, request_sha256, \
             notice, prev_notice, prev_admitted, recorded_by, recorded_at) VALUES \
             ('health-notice:k', 'KT-1', 2, 'sha', $1, 'HEALTH_NOTICE_KIND_UNSPECIFIED', 0, \
             'doctor', 20)",
        )
        .bind(vec![0u8])
        .execute(db.pool())
        .await
        .unwrap();
        db.close().await;
        let db = Database::open(&storage, &component, MIGRATIONS.as_slice())
            .await
            .unwrap();
        let referral = sqlx::query(
            "SELECT referral_id, commission_agency_id, admitted FROM health_referrals \
             WHERE case_reference = 'KT-1'",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        let id: String = referral.try_get(0).unwrap();
        assert_eq!(referral.try_get::<String, _>(1).unwrap(), "commission");
        assert_eq!(referral.try_get::<i64, _>(2).unwrap(), 1);
        let notice = sqlx::query(
            "SELECT referral_id, queued FROM health_notices WHERE message_key = 'health-notice:k'",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert_eq!(notice.try_get::<String, _>(0).unwrap(), id);
        assert_eq!(notice.try_get::<i64, _>(1).unwrap(), 1);
        db.close().await;
    }
}
