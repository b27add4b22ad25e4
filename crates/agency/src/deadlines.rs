//! The deadline queries of the staff API (`ListDeadlines`, `DeadlineOverview`, `ListOverdue`,
//! `WatchDeadlines`), forwarded with the caller's filters to the gateway's deadline engine
//! (`referral.v1.Deadlines`) over this agency's mutual-TLS channel. The gateway knows the agency
//! from the certificate and answers with that agency's deadlines (a commission's: its district's).
//!
//! What this side decides is who may ask for whose deadlines:
//! * a person's own deadlines: `responsible_user_id` set to the caller's own user id;
//! * another person's: only the commission's secretary or chair, or the agency's director (school
//!   or institution director); anyone else is `PERMISSION_DENIED`;
//! * the district overview: the commission's staff only.
//!
//! A watch stream ends when the caller goes away, when the gateway ends it, or when this service
//! begins to stop (so that shutdown never waits for a stream).

use std::sync::Arc;

use referral_core::{
    ServiceError,
    directory::{kind_name, role_name},
};
use referral_proto::v1::{
    ActingUser, AgencyKind, DeadlineAlert, DeadlineOverviewRequest, DeadlineOverviewResponse,
    ListDeadlinesRequest, ListDeadlinesResponse, ListOverdueRequest, Role, WatchDeadlinesRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::{
    error::{AgencyResult, permission_denied},
    gateway_link::GatewayFailure,
    outbound::failure_error,
    service::Context,
};

/// The stream `WatchDeadlines` answers with.
pub type AlertStream = ReceiverStream<Result<DeadlineAlert, Status>>;

/// What a caller is told when the gateway's deadline service is not reachable.
const DEADLINES_RETRY_HINT: &str = "the gateway's deadline service is not reachable; try again";

/// How many alerts may wait for a slow watcher before the stream pauses reading the gateway.
const WATCH_BUFFER: usize = 64;

/// Whether someone with `role` in an agency of `kind` may see the deadlines of any person of
/// their agency (or, for the commission, of the district), not only their own.
pub fn may_see_others(kind: AgencyKind, role: Role) -> bool {
    match kind {
        AgencyKind::Commission => {
            matches!(role, Role::CommissionSecretary | Role::CommissionChair)
        }
        AgencyKind::School => role == Role::SchoolDirector,
        AgencyKind::Residential => role == Role::InstitutionDirector,
        _ => false,
    }
}

/// Checks that the caller may ask for the deadlines of `responsible_user_id` (empty: the whole
/// agency's).
fn check_person(
    context: &Context,
    user: &ActingUser,
    responsible_user_id: &str,
) -> AgencyResult<()> {
    if responsible_user_id.is_empty() || responsible_user_id == user.user_id {
        return Ok(());
    }
    let role = Role::try_from(user.role).unwrap_or(Role::Unspecified);
    if may_see_others(context.kind, role) {
        Ok(())
    } else {
        Err(permission_denied(&format!(
            "a {} of a {} may ask only for their own deadlines",
            role_name(role),
            kind_name(context.kind)
        )))
    }
}

fn gateway_error(status: Status) -> crate::AgencyError {
    failure_error(GatewayFailure::classify(status), DEADLINES_RETRY_HINT)
}

/// `ListDeadlines`.
pub(crate) async fn list(
    context: &Context,
    user: &ActingUser,
    request: ListDeadlinesRequest,
) -> AgencyResult<ListDeadlinesResponse> {
    check_person(context, user, &request.responsible_user_id)?;
    context
        .gateway
        .deadlines()
        .list_deadlines(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(gateway_error)
}

/// `DeadlineOverview`: the commission's only.
pub(crate) async fn overview(
    context: &Context,
    request: DeadlineOverviewRequest,
) -> AgencyResult<DeadlineOverviewResponse> {
    if context.kind != AgencyKind::Commission {
        return Err(permission_denied(
            "the deadline overview of a district is the commission's",
        ));
    }
    context
        .gateway
        .deadlines()
        .deadline_overview(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(gateway_error)
}

/// `ListOverdue`.
pub(crate) async fn overdue(
    context: &Context,
    request: ListOverdueRequest,
) -> AgencyResult<ListDeadlinesResponse> {
    context
        .gateway
        .deadlines()
        .list_overdue(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(gateway_error)
}

/// `WatchDeadlines`: the gateway's stream, passed on until one side ends it or the service stops.
pub(crate) async fn watch(
    context: &Arc<Context>,
    user: &ActingUser,
    request: WatchDeadlinesRequest,
) -> AgencyResult<AlertStream> {
    check_person(context, user, &request.responsible_user_id)?;
    let mut upstream = context
        .gateway
        .deadlines()
        .watch_deadlines(request)
        .await
        .map_err(gateway_error)?
        .into_inner();
    let (tx, rx) = mpsc::channel(WATCH_BUFFER);
    let stopping = context.stopping.clone();
    tokio::spawn(async move {
        loop {
            let item = tokio::select! {
                () = stopping.cancelled() => break,
                () = tx.closed() => break,
                item = upstream.message() => item,
            };
            let forwarded = match item {
                Ok(Some(alert)) => Ok(alert),
                Ok(None) => break,
                // Only code and message cross over, never the gateway's headers.
                Err(status) => Err(Status::new(status.code(), status.message().to_owned())),
            };
            let last = forwarded.is_err();
            if tx.send(forwarded).await.is_err() || last {
                break;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// The field checks of a deadline query: the person's id, when given, is an id.
pub(crate) fn check_user_id(value: &str) -> Result<(), ServiceError> {
    if value.len() > 200 || value.chars().any(char::is_control) {
        return Err(ServiceError::invalid_field(
            "responsible_user_id",
            "must be a user id",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secretaries_chairs_and_directors_see_other_peoples_deadlines() {
        assert!(may_see_others(
            AgencyKind::Commission,
            Role::CommissionSecretary
        ));
        assert!(may_see_others(
            AgencyKind::Commission,
            Role::CommissionChair
        ));
        assert!(may_see_others(AgencyKind::School, Role::SchoolDirector));
        assert!(may_see_others(
            AgencyKind::Residential,
            Role::InstitutionDirector
        ));
        assert!(!may_see_others(
            AgencyKind::Commission,
            Role::CommissionCurator
        ));
        assert!(!may_see_others(AgencyKind::School, Role::SafetyTeamMember));
        assert!(!may_see_others(AgencyKind::Ngo, Role::NgoCaseManager));
    }

    #[test]
    fn a_user_id_filter_is_an_id() {
        assert!(check_user_id("").is_ok());
        assert!(check_user_id("curator-1").is_ok());
        assert!(check_user_id(&"x".repeat(201)).is_err());
        assert!(check_user_id("a\nb").is_err());
    }
}
