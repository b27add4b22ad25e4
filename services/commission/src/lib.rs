//! The commission agency service (КТІЖК, кәмелетке толмағандардың істері және олардың құқықтарын
//! қорғау жөніндегі комиссия).
//!
//! The juvenile affairs commission at the akimat, the centre of the hub. Its secretary (or chair)
//! decides on each help request K: open a case file with a curator, or no further action
//! (M:2393-2418; the decision is shared agency code, [`referral_agency::commission`]). The case
//! file and its life (M:2377-2575) are this crate's, served as `referral.v1.CaseFiles` beside the
//! staff API, with the same bearer-token authentication:
//!
//! * **stage 1**, the case file: the help request K, a contact log, documents (PDF or image,
//!   streamed, type read from the content, 10 MiB at most);
//! * **stage 2**, the assessment L, with information requests to the agencies that know the
//!   child (their answers are filed in the case when they arrive), then the support plan M whose
//!   rows for other agencies reach them as action assignments (their progress reports are filed
//!   on the rows), and reviews at least every six months with minutes to every participating
//!   agency;
//! * **stage 3**, closure with its criteria and the family told how to ask again; **stage 4**,
//!   reopening: a new cycle, every stage again, the history kept.
//!
//! Curators work the cases they are appointed to; the secretary and the chair read and act on
//! every case; nobody else. Every change names the case version it is based on, and a stale one
//! is `ABORTED` with the current version.
//!
//! Every change, and the opening itself, reports a case event to the gateway's deadline engine
//! (`Gateway.RecordCaseEvent`), durably: the event is written to an outbox in the change's own
//! transaction and pushed after the commit, retried on the next change and on a background tick
//! (`outbox`). Messages to other agencies travel the same way.
//!
//! How it plugs in: [`build`] builds the shared agency service with [`CommissionExtension`], an
//! [`AgencyExtension`]: its migrations follow the agency's, its service joins the server, and its
//! hooks run inside the agency's transactions (a case opened by a decision, a decision withdrawn,
//! a reply received), so what the case file derives commits with what caused it.
//!
//! There is no `main` here: the single `referral-hub` binary runs this service, alone or beside
//! the others, through [`build`].

#![forbid(unsafe_code)]

mod access;
mod api;
mod case;
mod disclosure;
mod documents;
mod filing;
mod instructions;
pub mod labels;
mod outbox;
mod read;
pub mod validation;

#[cfg(test)]
mod testing;

use std::sync::{Arc, LazyLock};

use jiff::Timestamp;
pub use referral_agency::{AgencyConfig, AgencyService};
use referral_agency::{AgencyExtension, AgencyHost, OpenedCase};
use referral_core::server::Router;
use referral_core::{ServiceResult, db::EmbeddedMigration, server::MAX_MESSAGE_BYTES};
use referral_proto::v1::{AgencyKind, Envelope, case_files_server::CaseFilesServer};
use sqlx::AnyConnection;
use tokio_util::sync::CancellationToken;
use tonic::{server::NamedService, service::interceptor::InterceptedService};

pub use crate::{
    case::CaseError,
    documents::{DOWNLOAD_CHUNK_BYTES, MAX_DOCUMENT_BYTES},
    outbox::TICK as OUTBOX_TICK,
};

/// The kind of agency this service runs.
pub const KIND: AgencyKind = AgencyKind::Commission;

/// The commission's own migrations, numbered from 1000 (after the agency's).
const OWN_MIGRATIONS: &[EmbeddedMigration] = &[
    (
        1001,
        "commission case files",
        include_str!("../migrations/1001_case_files.sql"),
    ),
    (
        1002,
        "police and health reports on cases",
        include_str!("../migrations/1002_partner_reports.sql"),
    ),
    (
        1003,
        "protection instructions and their acknowledgements",
        include_str!("../migrations/1003_protection_instructions.sql"),
    ),
];

/// The commission store's whole migration list: the agency's, then the commission's own.
pub static MIGRATIONS: LazyLock<Vec<EmbeddedMigration>> = LazyLock::new(|| {
    referral_agency::MIGRATIONS
        .iter()
        .chain(OWN_MIGRATIONS)
        .copied()
        .collect()
});

/// Builds the service of the commission agency `config.agency_id`: binds its listener and opens
/// its store. Fails if the directory lists that agency with another kind.
pub async fn build(config: AgencyConfig) -> anyhow::Result<AgencyService> {
    AgencyService::build_with(config, KIND, Arc::new(CommissionExtension::default())).await
}

/// What the commission adds to the shared agency service: the case-file tables, the `CaseFiles`
/// service, the hooks and the outbox.
#[derive(Debug, Default)]
pub struct CommissionExtension {
    outbox: Arc<outbox::Outbox>,
}

type CaseFilesService = CaseFilesServer<api::CaseFilesApi>;

#[tonic::async_trait]
impl AgencyExtension for CommissionExtension {
    fn migrations(&self) -> &'static [EmbeddedMigration] {
        MIGRATIONS.as_slice()
    }

    fn service_names(&self) -> Vec<&'static str> {
        vec![
            <CaseFilesService as NamedService>::NAME,
            <referral_proto::v1::case_source_server::CaseSourceServer<disclosure::CaseSourceApi> as NamedService>::NAME,
            <referral_proto::v1::protection_instructions_server::ProtectionInstructionsServer<
                instructions::ProtectionInstructionsApi,
            > as NamedService>::NAME,
        ]
    }

    fn add_services(&self, host: &AgencyHost, router: Router) -> Router {
        let case_files =
            CaseFilesServer::new(api::CaseFilesApi::new(host.clone(), self.outbox.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES);
        // Case files: the staff API's bearer-token check; handlers authorise by role and curator.
        let case_source = referral_proto::v1::case_source_server::CaseSourceServer::new(
            disclosure::CaseSourceApi { host: host.clone() },
        );
        // Case files: the staff API's bearer-token check; handlers authorise by role and curator.
        // The case source: the gateway's certificate only.
        // Protection instructions (issue 5): the same check; handlers authorise like case files.
        let instructions =
            referral_proto::v1::protection_instructions_server::ProtectionInstructionsServer::new(
                instructions::ProtectionInstructionsApi::new(host.clone(), self.outbox.clone()),
            );
        router
            .add_service(InterceptedService::new(case_files, host.staff_auth()))
            .add_service(InterceptedService::new(instructions, host.staff_auth()))
            .add_service(InterceptedService::new(case_source, host.gateway_only()))
    }

    /// A case's messages (answers, progress, assignments and minutes sent, requests sent, and
    /// the gateway's break-the-glass alerts) are its curator's: the secretary and the chair keep
    /// the register (help requests, decisions, deadline alerts, consultations), not the case
    /// record, which the gateway's policy keeps for the case team.
    async fn may_see(
        &self,
        host: &AgencyHost,
        user: &referral_proto::v1::ActingUser,
        envelope: &Envelope,
    ) -> ServiceResult<bool> {
        use referral_proto::v1::FormKind;
        let kind = FormKind::try_from(envelope.form_kind).unwrap_or(FormKind::Unspecified);
        if envelope.case_reference.is_empty()
            || matches!(
                kind,
                FormKind::HelpRequest
                    | FormKind::HelpRequestDecision
                    | FormKind::DeadlineAlert
                    | FormKind::Consultation
                    | FormKind::ConsultationAnswer
                    | FormKind::IncidentSummary
            )
        {
            return Ok(true);
        }
        let mut conn = host.pool().acquire().await?;
        Ok(case::load(&mut conn, &envelope.case_reference)
            .await?
            .is_some_and(|row| row.curator_user_id == user.user_id))
    }

    async fn on_received(
        &self,
        _host: &AgencyHost,
        conn: &mut AnyConnection,
        envelope: &Envelope,
        now: Timestamp,
    ) -> ServiceResult<()> {
        filing::file(conn, envelope, now).await
    }

    async fn on_case_opened(
        &self,
        _host: &AgencyHost,
        conn: &mut AnyConnection,
        case: &OpenedCase<'_>,
    ) -> ServiceResult<()> {
        case::open(conn, case).await
    }

    async fn on_case_withdrawn(
        &self,
        _host: &AgencyHost,
        conn: &mut AnyConnection,
        case_reference: &str,
    ) -> ServiceResult<()> {
        case::withdraw(conn, case_reference).await
    }

    async fn after_commit(&self, host: &AgencyHost) {
        self.outbox.flush(host).await;
    }

    async fn run(&self, host: AgencyHost, shutdown: CancellationToken) {
        self.outbox.run(host, shutdown).await;
    }
}
