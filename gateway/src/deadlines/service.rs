//! The `referral.v1.Deadlines` service, behind the same certificate interceptor as `Gateway`:
//! a commission sees its district's deadlines (but not the agencies' own clocks), any other agency
//! those it is responsible for (its agency clocks included).
//!
//! Lists are ordered by lateness (`due_at`, then the deadline's id) and paged by keyset (the page token is the
//! last row's `due_at` and id), one index range per state merged by the database, so a page
//! costs the same whether a district holds a hundred deadlines or a million.

use std::pin::Pin;

use referral_core::{ServiceError, ServiceResult, directory::AgencyEntry};
use referral_proto::v1::{
    AgencyKind, DeadlineAlert, DeadlineCount, DeadlineOverviewRequest, DeadlineOverviewResponse,
    DeadlineState, ListDeadlinesRequest, ListDeadlinesResponse, ListOverdueRequest,
    WatchDeadlinesRequest, deadlines_server,
};
use sqlx::Row as _;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::model::{self, DeadlineRow, OPEN_STATES};
use crate::{
    Shared,
    api::{Caller, caller},
};

/// A page's size when the request names none, and the largest allowed.
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 500;

pub struct DeadlinesApi {
    pub(crate) shared: std::sync::Arc<Shared>,
    /// Ends `WatchDeadlines` streams when the gateway stops, so shutdown does not wait on them.
    pub(crate) shutdown: CancellationToken,
}

type AlertStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<DeadlineAlert, Status>> + Send>>;

#[tonic::async_trait]
impl deadlines_server::Deadlines for DeadlinesApi {
    async fn list_deadlines(
        &self,
        req: Request<ListDeadlinesRequest>,
    ) -> Result<Response<ListDeadlinesResponse>, Status> {
        let Caller(caller) = caller(&req)?;
        let page = list_deadlines(&self.shared, &caller, req.into_inner()).await?;
        Ok(Response::new(page))
    }

    async fn deadline_overview(
        &self,
        req: Request<DeadlineOverviewRequest>,
    ) -> Result<Response<DeadlineOverviewResponse>, Status> {
        let Caller(caller) = caller(&req)?;
        Ok(Response::new(overview(&self.shared, &caller).await?))
    }

    async fn list_overdue(
        &self,
        req: Request<ListOverdueRequest>,
    ) -> Result<Response<ListDeadlinesResponse>, Status> {
        let Caller(caller) = caller(&req)?;
        let page = list_overdue(&self.shared, &caller, req.into_inner()).await?;
        Ok(Response::new(page))
    }

    type WatchDeadlinesStream = AlertStream;

    async fn watch_deadlines(
        &self,
        req: Request<WatchDeadlinesRequest>,
    ) -> Result<Response<AlertStream>, Status> {
        let Caller(caller) = caller(&req)?;
        let user = non_empty(req.into_inner().responsible_user_id);
        let mut alerts = self.shared.alerts.subscribe();
        let (tx, rx) = mpsc::channel(64);
        let shutdown = self.shutdown.clone();
        let scope = Scope::of(&caller);
        tokio::spawn(async move {
            loop {
                let alert = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tx.closed() => break,
                    received = alerts.recv() => received,
                };
                match alert {
                    Ok(alert) => {
                        if !visible(&scope, user.as_deref(), &alert) {
                            continue;
                        }
                        if tx.send(Ok(alert)).await.is_err() {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "a deadline watcher fell behind");
                        let _ = tx
                            .send(Err(Status::aborted(
                                "the watcher fell behind: list the deadlines and watch again",
                            )))
                            .await;
                        break;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// `ListDeadlines`: the caller's deadlines (a commission's: its district's), filtered.
pub(crate) async fn list_deadlines(
    shared: &Shared,
    caller: &AgencyEntry,
    req: ListDeadlinesRequest,
) -> ServiceResult<ListDeadlinesResponse> {
    let mut states = Vec::new();
    for (i, s) in req.states.iter().enumerate() {
        match DeadlineState::try_from(*s) {
            Ok(state) if state != DeadlineState::Unspecified => {
                if !states.contains(&state) {
                    states.push(state);
                }
            }
            _ => {
                return Err(ServiceError::invalid_field(
                    format!("states[{i}]"),
                    "a known state",
                ));
            }
        }
    }
    if states.is_empty() {
        states = OPEN_STATES.to_vec();
    }
    if req.case_reference.chars().count() > crate::forms::CASE_REFERENCE_MAX {
        return Err(ServiceError::invalid_field(
            "case_reference",
            "at most 100 characters",
        ));
    }
    let query = ListQuery {
        scope: Scope::of(caller),
        states,
        responsible_user_id: non_empty(req.responsible_user_id),
        case_reference: non_empty(req.case_reference),
        page_size: page_size(req.page_size),
        after: parse_token(&req.page_token)?,
    };
    list(shared, &query).await
}

/// `ListOverdue`: overdue and escalated deadlines the caller sees, most late first.
pub(crate) async fn list_overdue(
    shared: &Shared,
    caller: &AgencyEntry,
    req: ListOverdueRequest,
) -> ServiceResult<ListDeadlinesResponse> {
    let query = ListQuery {
        scope: Scope::of(caller),
        states: vec![DeadlineState::Overdue, DeadlineState::Escalated],
        responsible_user_id: None,
        case_reference: None,
        page_size: page_size(req.page_size),
        after: parse_token(&req.page_token)?,
    };
    list(shared, &query).await
}

/// `DeadlineOverview`: a commission's open deadlines counted per kind and state.
pub(crate) async fn overview(
    shared: &Shared,
    caller: &AgencyEntry,
) -> ServiceResult<DeadlineOverviewResponse> {
    if caller.kind() != AgencyKind::Commission {
        return Err(ServiceError::PermissionDenied(
            "only a commission has a district overview".into(),
        ));
    }
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT kind, state, COUNT(*) AS n FROM deadlines \
         WHERE district_id = $1 AND subject_reference = '' AND state IN {} \
         GROUP BY kind, state",
        model::OPEN_STATES_SQL
    )))
    .bind(&caller.district)
    .fetch_all(shared.db.pool())
    .await?;
    let mut counts = rows
        .iter()
        .map(|r| {
            Ok(DeadlineCount {
                kind: model::parse_kind(&r.try_get::<String, _>("kind")?) as i32,
                state: model::parse_state(&r.try_get::<String, _>("state")?) as i32,
                count: u64::try_from(r.try_get::<i64, _>("n")?).unwrap_or(0),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    counts.sort_by_key(|c| (c.kind, c.state));
    Ok(DeadlineOverviewResponse { counts })
}

/// Which deadlines a caller sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// A commission: its district's, except the agencies' own clocks (a school's investigations,
    /// an NGO's weekly reports), which only their agency sees.
    District(String),
    /// Any other agency: those it is responsible for.
    Agency(String),
}

impl Scope {
    pub(crate) fn of(caller: &AgencyEntry) -> Self {
        if caller.kind() == AgencyKind::Commission {
            Self::District(caller.district.clone())
        } else {
            Self::Agency(caller.id.clone())
        }
    }
}

fn visible(scope: &Scope, user: Option<&str>, alert: &DeadlineAlert) -> bool {
    let Some(d) = alert.deadline.as_ref() else {
        return false;
    };
    let in_scope = match scope {
        Scope::District(district) => d.district_id == *district && d.subject_reference.is_empty(),
        Scope::Agency(agency) => d.responsible_agency_id == *agency,
    };
    in_scope && user.is_none_or(|u| d.responsible_user_id == u)
}

fn non_empty(s: String) -> Option<String> {
    (!s.trim().is_empty()).then_some(s)
}

fn page_size(requested: u32) -> u32 {
    match requested {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

/// `<due_at>.<id>` of the last row of the previous page.
fn page_token(d: &DeadlineRow) -> String {
    format!(
        "{}.{}",
        referral_core::time::to_micros(d.schedule.due_at),
        d.id
    )
}

fn parse_token(token: &str) -> Result<Option<(i64, String)>, ServiceError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || ServiceError::invalid_field("page_token", "a token from a previous page");
    let (due_at, id) = token.split_once('.').ok_or_else(bad)?;
    let due_at = due_at.parse::<i64>().map_err(|_| bad())?;
    if id.is_empty() || id.len() > 64 {
        return Err(bad());
    }
    Ok(Some((due_at, id.to_owned())))
}

/// One list request, after checks.
#[derive(Debug, Clone)]
pub(crate) struct ListQuery {
    pub scope: Scope,
    pub states: Vec<DeadlineState>,
    pub responsible_user_id: Option<String>,
    pub case_reference: Option<String>,
    pub page_size: u32,
    /// Rows strictly after this (due_at, id).
    pub after: Option<(i64, String)>,
}

/// One page, most late first. One sub-query per state reads its own index range
/// (`(district_id | responsible_agency_id, state, due_at, deadline_id)`) up to a page; the union is cut
/// to a page again.
pub(crate) async fn list(shared: &Shared, q: &ListQuery) -> ServiceResult<ListDeadlinesResponse> {
    let mut binds: Vec<Bind> = Vec::new();
    let param = |b: Bind, binds: &mut Vec<Bind>| {
        binds.push(b);
        format!("${}", binds.len())
    };
    let (scope_column, scope_value) = match &q.scope {
        Scope::District(d) => ("district_id", d.clone()),
        Scope::Agency(a) => ("responsible_agency_id", a.clone()),
    };
    let limit = i64::from(q.page_size) + 1;
    let mut parts = Vec::new();
    for state in &q.states {
        let mut sql = format!(
            "SELECT {} FROM deadlines WHERE {scope_column} = {} AND state = {}",
            model::COLUMNS,
            param(Bind::Text(scope_value.clone()), &mut binds),
            param(Bind::Text(model::state_name(*state).to_owned()), &mut binds),
        );
        if matches!(q.scope, Scope::District(_)) {
            // Agencies' own clocks are theirs: a commission's district view leaves them out.
            sql.push_str(" AND subject_reference = ''");
        }
        if let Some(user) = &q.responsible_user_id {
            sql.push_str(&format!(
                " AND responsible_user_id = {}",
                param(Bind::Text(user.clone()), &mut binds)
            ));
        }
        if let Some(case) = &q.case_reference {
            sql.push_str(&format!(
                " AND case_reference = {}",
                param(Bind::Text(case.clone()), &mut binds)
            ));
        }
        if let Some((due_at, id)) = &q.after {
            let a = param(Bind::Int(*due_at), &mut binds);
            let b = param(Bind::Int(*due_at), &mut binds);
            let c = param(Bind::Text(id.clone()), &mut binds);
            sql.push_str(&format!(
                " AND (due_at > {a} OR (due_at = {b} AND deadline_id > {c}))"
            ));
        }
        sql.push_str(&format!(
            " ORDER BY due_at, deadline_id LIMIT {}",
            param(Bind::Int(limit), &mut binds)
        ));
        parts.push(format!("SELECT * FROM ({sql}) AS s{}", parts.len()));
    }
    let sql = format!(
        "{} ORDER BY due_at, deadline_id LIMIT {}",
        parts.join(" UNION ALL "),
        param(Bind::Int(limit), &mut binds)
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for b in binds {
        query = match b {
            Bind::Text(s) => query.bind(s),
            Bind::Int(i) => query.bind(i),
        };
    }
    let mut rows = query
        .fetch_all(shared.db.pool())
        .await?
        .iter()
        .map(DeadlineRow::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let more = rows.len() > q.page_size as usize;
    rows.truncate(q.page_size as usize);
    let next_page_token = match (more, rows.last()) {
        (true, Some(last)) => page_token(last),
        _ => String::new(),
    };
    Ok(ListDeadlinesResponse {
        deadlines: rows.iter().map(DeadlineRow::to_proto).collect(),
        next_page_token,
    })
}

#[derive(Debug, Clone)]
enum Bind {
    Text(String),
    Int(i64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_garbage_is_refused() {
        assert_eq!(parse_token("").unwrap(), None);
        assert_eq!(
            parse_token("1700000000000000.0190-abc").unwrap(),
            Some((1_700_000_000_000_000, "0190-abc".into()))
        );
        assert!(parse_token("x.y").is_err());
        assert!(parse_token("12").is_err());
        assert!(parse_token("12.").is_err());
    }

    #[test]
    fn watchers_see_their_district_or_their_own_deadlines() {
        use referral_proto::v1::Deadline;
        let alert = DeadlineAlert {
            deadline: Some(Deadline {
                district_id: "d-1".into(),
                responsible_agency_id: "ngo-1".into(),
                responsible_user_id: "u-1".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(visible(&Scope::District("d-1".into()), None, &alert));
        assert!(!visible(&Scope::District("d-2".into()), None, &alert));
        assert!(visible(&Scope::Agency("ngo-1".into()), Some("u-1"), &alert));
        assert!(!visible(
            &Scope::Agency("ngo-1".into()),
            Some("u-2"),
            &alert
        ));
        assert!(!visible(&Scope::Agency("school-1".into()), None, &alert));
        // An agency's own clock: the agency sees it, its commission does not.
        let mut own = alert.clone();
        own.deadline.as_mut().unwrap().subject_reference = "incident-1".into();
        assert!(visible(&Scope::Agency("ngo-1".into()), None, &own));
        assert!(!visible(&Scope::District("d-1".into()), None, &own));
    }

    #[test]
    fn page_sizes_default_and_cap() {
        assert_eq!(page_size(0), DEFAULT_PAGE);
        assert_eq!(page_size(10), 10);
        assert_eq!(page_size(10_000), MAX_PAGE);
    }
}
