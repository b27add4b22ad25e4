//! The deadline queries of the staff API (`ListDeadlines`, `DeadlineOverview`, `ListOverdue`,
//! `WatchDeadlines`), forwarded with the caller's filters to the gateway's deadline engine
//! (`referral.v1.Deadlines`) over this agency's mutual-TLS channel. The gateway knows the agency
//! from the certificate and answers with that agency's deadlines (a commission's: its district's).
//!
//! What this side decides is who may ask for whose deadlines:
//! * a person's own deadlines: `responsible_user_id` set to the caller's own user id;
//! * another person's, or everyone's (an empty `responsible_user_id`, and `ListOverdue`): only
//!   the commission's secretary or chair, or the agency's director (school or institution
//!   director). Anyone else asking for another person is `PERMISSION_DENIED`; their empty filter
//!   means their own deadlines (and `ListOverdue` answers with their own only);
//! * the district overview: the commission's staff only;
//! * a deadline of an allegation against a member of staff (ALLEGATION_TO_DIRECTOR) is its
//!   responsible person's alone, whoever asks ([`private_to_responsible`]): the director may be
//!   the accused, and then the allegation, its deadline and its alerts are the safeguarding
//!   lead's. Lists, the overdue list and the watch stream drop it for everyone else.
//!
//! A watch stream ends when the caller goes away, when the gateway ends it, or when this service
//! begins to stop (so that shutdown never waits for a stream).

use std::sync::Arc;

use referral_core::{
    ServiceError,
    directory::{kind_name, role_name},
};
use referral_proto::v1::{
    ActingUser, AgencyKind, Deadline, DeadlineAlert, DeadlineKind, DeadlineOverviewRequest,
    DeadlineOverviewResponse, ListDeadlinesRequest, ListDeadlinesResponse, ListOverdueRequest,
    Role, WatchDeadlinesRequest,
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

/// Whose deadlines a caller of `kind` and `role` whose user id is `caller_id` gets for the
/// filter `requested` (empty: everyone's they may see): the filter to forward to the gateway, or
/// `None` when they may not ask for it.
///
/// Those who may see others' deadlines ([`may_see_others`]) get what they ask for, the whole
/// agency's (or district's) included. Anyone else gets only their own: an empty filter becomes
/// their own id, and a filter naming someone else is refused.
pub fn responsible_filter(
    kind: AgencyKind,
    role: Role,
    caller_id: &str,
    requested: &str,
) -> Option<String> {
    if may_see_others(kind, role) {
        return Some(requested.to_owned());
    }
    // A caller without an id has no deadlines of their own, and an empty filter means everyone.
    if caller_id.is_empty() || !(requested.is_empty() || requested == caller_id) {
        return None;
    }
    Some(caller_id.to_owned())
}

/// Whether `deadline` is kept for its responsible person alone, and `user` is not that person.
///
/// An allegation's deadline (ALLEGATION_TO_DIRECTOR) is: it names whoever the allegation went
/// to (the director, or the safeguarding lead when the director is accused), and nobody else may
/// see it, not even those who see everyone's deadlines ([`may_see_others`]). One that names no
/// person was left by its agency to the role that acts on it by default, the head, and follows
/// the ordinary rules.
pub fn private_to_responsible(deadline: &Deadline, user: &ActingUser) -> bool {
    deadline.kind == DeadlineKind::AllegationToDirector as i32
        && !deadline.responsible_user_id.is_empty()
        && deadline.responsible_user_id != user.user_id
}

/// Drops from a page the deadlines `user` may not see ([`private_to_responsible`]).
fn drop_private(response: &mut ListDeadlinesResponse, user: &ActingUser) {
    response
        .deadlines
        .retain(|d| !private_to_responsible(d, user));
}

/// The `responsible_user_id` to forward for the caller's filter `requested` (see
/// [`responsible_filter`]), or `PERMISSION_DENIED`.
fn check_person(context: &Context, user: &ActingUser, requested: &str) -> AgencyResult<String> {
    let role = Role::try_from(user.role).unwrap_or(Role::Unspecified);
    responsible_filter(context.kind, role, &user.user_id, requested).ok_or_else(|| {
        permission_denied(&format!(
            "a {} of a {} may ask only for their own deadlines",
            role_name(role),
            kind_name(context.kind)
        ))
    })
}

fn gateway_error(status: Status) -> crate::AgencyError {
    failure_error(GatewayFailure::classify(status), DEADLINES_RETRY_HINT)
}

/// `ListDeadlines`.
pub(crate) async fn list(
    context: &Context,
    user: &ActingUser,
    mut request: ListDeadlinesRequest,
) -> AgencyResult<ListDeadlinesResponse> {
    request.responsible_user_id = check_person(context, user, &request.responsible_user_id)?;
    let mut response = context
        .gateway
        .deadlines()
        .list_deadlines(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(gateway_error)?;
    // A page may come back shorter (the page token still leads on).
    drop_private(&mut response, user);
    Ok(response)
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

/// `ListOverdue`. The request names no person, so for a caller who may see only their own
/// deadlines the gateway's page is narrowed to theirs (the page token still leads on, so a page
/// may come back shorter than asked, or empty, with more to follow).
pub(crate) async fn overdue(
    context: &Context,
    user: &ActingUser,
    request: ListOverdueRequest,
) -> AgencyResult<ListDeadlinesResponse> {
    let only = check_person(context, user, "")?;
    let mut response = context
        .gateway
        .deadlines()
        .list_overdue(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(gateway_error)?;
    if !only.is_empty() {
        response.deadlines.retain(|d| d.responsible_user_id == only);
    }
    drop_private(&mut response, user);
    Ok(response)
}

/// `WatchDeadlines`: the gateway's stream, passed on until one side ends it or the service stops.
pub(crate) async fn watch(
    context: &Arc<Context>,
    user: &ActingUser,
    mut request: WatchDeadlinesRequest,
) -> AgencyResult<AlertStream> {
    request.responsible_user_id = check_person(context, user, &request.responsible_user_id)?;
    let mut upstream = context
        .gateway
        .deadlines()
        .watch_deadlines(request)
        .await
        .map_err(gateway_error)?
        .into_inner();
    let (tx, rx) = mpsc::channel(WATCH_BUFFER);
    let stopping = context.stopping.clone();
    let watcher = user.clone();
    tokio::spawn(async move {
        loop {
            let item = tokio::select! {
                () = stopping.cancelled() => break,
                () = tx.closed() => break,
                item = upstream.message() => item,
            };
            let forwarded = match item {
                Ok(Some(alert))
                    if alert
                        .deadline
                        .as_ref()
                        .is_some_and(|d| private_to_responsible(d, &watcher)) =>
                {
                    continue;
                }
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
    fn only_secretaries_chairs_and_directors_get_everyones_deadlines() {
        use AgencyKind::{Commission, Ngo, Police, School};
        // Those who may see others get what they ask for, everyone's included.
        for (kind, role) in [
            (Commission, Role::CommissionSecretary),
            (Commission, Role::CommissionChair),
            (School, Role::SchoolDirector),
            (AgencyKind::Residential, Role::InstitutionDirector),
        ] {
            assert_eq!(
                responsible_filter(kind, role, "boss", "").as_deref(),
                Some("")
            );
            assert_eq!(
                responsible_filter(kind, role, "boss", "curator-2").as_deref(),
                Some("curator-2")
            );
            assert_eq!(
                responsible_filter(kind, role, "boss", "boss").as_deref(),
                Some("boss")
            );
        }
        // Anyone else: an empty filter is their own id; someone else's is refused.
        for (kind, role) in [
            (Commission, Role::CommissionCurator),
            (School, Role::SafetyTeamMember),
            (Ngo, Role::NgoCaseManager),
            (Police, Role::Unspecified),
        ] {
            assert_eq!(
                responsible_filter(kind, role, "curator-1", "").as_deref(),
                Some("curator-1")
            );
            assert_eq!(
                responsible_filter(kind, role, "curator-1", "curator-1").as_deref(),
                Some("curator-1")
            );
            assert_eq!(
                responsible_filter(kind, role, "curator-1", "curator-2"),
                None
            );
            // Without an id of their own, nothing: an empty filter would be everyone's.
            assert_eq!(responsible_filter(kind, role, "", ""), None);
        }
    }

    #[test]
    fn an_allegations_deadline_is_its_responsible_persons_alone() {
        let user = |id: &str, role: Role| ActingUser {
            user_id: id.into(),
            role: role as i32,
            ..ActingUser::default()
        };
        let director = user("director", Role::SchoolDirector);
        let lead = user("safeguarding-lead", Role::SafeguardingLead);
        // Against the director: the lead's; the director, who sees everyone's, is kept out.
        let against_director = Deadline {
            kind: DeadlineKind::AllegationToDirector as i32,
            responsible_user_id: "safeguarding-lead".into(),
            ..Deadline::default()
        };
        assert!(private_to_responsible(&against_director, &director));
        assert!(!private_to_responsible(&against_director, &lead));
        assert!(private_to_responsible(
            &against_director,
            &user("", Role::SafeguardingLead)
        ));
        // Naming no person: the ordinary rules (the head's, who sees everyone's).
        let unnamed = Deadline {
            responsible_user_id: String::new(),
            ..against_director.clone()
        };
        assert!(!private_to_responsible(&unnamed, &director));
        // Any other kind is not: the director sees the lead's other deadlines.
        let other = Deadline {
            kind: DeadlineKind::ProtectionServiceAnswer as i32,
            ..against_director.clone()
        };
        assert!(!private_to_responsible(&other, &director));
        let mut page = ListDeadlinesResponse {
            deadlines: vec![against_director.clone(), other.clone()],
            next_page_token: "more".into(),
        };
        drop_private(&mut page, &director);
        assert_eq!(page.deadlines, [other]);
        assert_eq!(page.next_page_token, "more");
    }

    #[test]
    fn a_user_id_filter_is_an_id() {
        assert!(check_user_id("").is_ok());
        assert!(check_user_id("curator-1").is_ok());
        assert!(check_user_id(&"x".repeat(201)).is_err());
        assert!(check_user_id("a\nb").is_err());
    }
}
