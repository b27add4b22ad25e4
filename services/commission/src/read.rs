//! Reading the case file: the list of cases and one case whole (the help request K it was opened
//! on, every cycle with its L, M, action rows and their reported progress, and closure, the
//! contact log, the documents' metadata and the information exchanges).

use referral_agency::forms::form;
use referral_core::{ServiceError, ServiceResult, db::Row as _, directory::Directory, time};
use referral_proto::v1::{
    ActionProgressState, ActionStatus, CaseCycle, CaseFile, CaseStage, CaseSummary, Contact,
    Envelope, FormKind, HealthNotice, InformationExchange, InvestigationUpdate, PlanAction,
    RiskLevel, payload::Form,
};
use sqlx::AnyConnection;

use crate::{
    case::{self, CASE_COLUMNS, CASE_FROM, CaseRow},
    documents,
};

fn decode<M: prost::Message + Default>(bytes: &[u8]) -> ServiceResult<M> {
    M::decode(bytes).map_err(ServiceError::internal)
}

fn decode_opt<M: prost::Message + Default>(bytes: Option<Vec<u8>>) -> ServiceResult<Option<M>> {
    bytes.as_deref().map(decode).transpose()
}

/// The help request K a case was opened on.
pub async fn help_request(
    conn: &mut AnyConnection,
    message_id: &str,
) -> ServiceResult<Option<Envelope>> {
    sqlx::query("SELECT envelope FROM received_messages WHERE message_id = $1")
        .bind(message_id)
        .fetch_optional(&mut *conn)
        .await?
        .map(|row| decode::<Envelope>(&row.try_get::<Vec<u8>, _>(0)?))
        .transpose()
}

/// The child's full name in a help request K.
pub fn child_name(k: Option<&Envelope>) -> String {
    match k.and_then(form) {
        Some(Form::HelpRequest(k)) => k
            .child
            .as_ref()
            .map(|c| c.full_name.clone())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// The summary of a case.
pub fn summary(
    row: &CaseRow,
    directory: &Directory,
    agency_id: &str,
    k: Option<&Envelope>,
) -> CaseSummary {
    CaseSummary {
        case_reference: row.case_reference.clone(),
        stage: row.stage as i32,
        curator_user_id: row.curator_user_id.clone(),
        curator_name: directory
            .user(agency_id, &row.curator_user_id)
            .map(|s| s.full_name.clone())
            .unwrap_or_default(),
        opened_at: Some(time::to_proto(row.opened_at)),
        risk_level: row.risk_level as i32,
        version: row.version,
        cycle: row.cycle,
        child_full_name: child_name(k),
        curator_contact: directory
            .user(agency_id, &row.curator_user_id)
            .map(|s| s.contact.clone())
            .unwrap_or_default(),
        // The gateway fills it from its deadline engine in the views it answers.
        next_review_on: None,
    }
}

/// Cases, newest first: one curator's (or everyone's, for an empty `curator_user_id`), closed
/// ones only when asked.
pub async fn list(
    conn: &mut AnyConnection,
    curator_user_id: &str,
    include_closed: bool,
) -> ServiceResult<Vec<(CaseRow, Option<Envelope>)>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {CASE_COLUMNS}, r.envelope FROM {CASE_FROM} \
         LEFT JOIN received_messages r ON r.message_id = c.help_request_message_id \
         WHERE ($1 = '' OR f.curator_user_id = $1) AND ($2 = 1 OR f.stage <> $3) \
         ORDER BY f.opened_at DESC, f.case_reference DESC"
    )))
    .bind(curator_user_id)
    .bind(i64::from(include_closed))
    .bind(CaseStage::Closed.as_str_name())
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            let k: Option<Vec<u8>> = row.try_get(9)?;
            Ok((case::from_row(row)?, decode_opt(k)?))
        })
        .collect()
}

/// The whole case file of `row`.
pub async fn case_file(
    conn: &mut AnyConnection,
    row: &CaseRow,
    directory: &Directory,
    agency_id: &str,
) -> ServiceResult<CaseFile> {
    let reference = row.case_reference.as_str();
    let k = help_request(conn, &row.help_request_message_id).await?;
    let mut cycles = cycles(conn, reference).await?;
    for (cycle_number, status) in actions(conn, reference).await? {
        if let Some(cycle) = cycles.iter_mut().find(|c| c.cycle == cycle_number) {
            cycle.actions.push(status);
        }
    }
    let contacts = sqlx::query(
        "SELECT contact FROM case_contacts WHERE case_reference = $1 ORDER BY case_version",
    )
    .bind(reference)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| decode::<Contact>(&r.try_get::<Vec<u8>, _>(0)?))
    .collect::<ServiceResult<Vec<_>>>()?;
    let documents = documents::list(conn, reference).await?;
    let information = information(conn, reference).await?;
    let (investigation_updates, health_notices) = partner_reports(conn, reference).await?;
    Ok(CaseFile {
        summary: Some(summary(row, directory, agency_id, k.as_ref())),
        help_request: k,
        cycles,
        contacts,
        documents,
        information,
        investigation_updates,
        health_notices,
        protection_instructions: crate::instructions::records(conn, reference).await?,
    })
}

/// The police's investigation updates and the health facilities' notices on a case, oldest
/// first.
async fn partner_reports(
    conn: &mut AnyConnection,
    reference: &str,
) -> ServiceResult<(Vec<InvestigationUpdate>, Vec<HealthNotice>)> {
    let rows = sqlx::query(
        "SELECT form_kind, report FROM case_partner_reports WHERE case_reference = $1 \
         ORDER BY received_at, message_id",
    )
    .bind(reference)
    .fetch_all(&mut *conn)
    .await?;
    let (mut updates, mut notices) = (Vec::new(), Vec::new());
    for row in &rows {
        let report: Vec<u8> = row.try_get(1)?;
        match FormKind::from_str_name(&row.try_get::<String, _>(0)?) {
            Some(FormKind::InvestigationUpdate) => updates.push(decode(&report)?),
            Some(FormKind::HealthNotice) => notices.push(decode(&report)?),
            _ => {}
        }
    }
    Ok((updates, notices))
}

async fn cycles(conn: &mut AnyConnection, reference: &str) -> ServiceResult<Vec<CaseCycle>> {
    let rows = sqlx::query(
        "SELECT cycle, opened_at, reopen_reason, assessment, risk_level, assessment_filed_at, \
         support_plan, support_plan_filed_at, closure FROM case_cycles \
         WHERE case_reference = $1 ORDER BY cycle",
    )
    .bind(reference)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(CaseCycle {
                cycle: u32::try_from(r.try_get::<i64, _>(0)?).unwrap_or_default(),
                opened_at: Some(time::micros_to_proto(r.try_get(1)?)),
                reopen_reason: r.try_get(2)?,
                assessment: decode_opt(r.try_get(3)?)?,
                risk_level: RiskLevel::from_str_name(&r.try_get::<String, _>(4)?)
                    .unwrap_or(RiskLevel::Unspecified) as i32,
                assessment_filed_at: r.try_get::<Option<i64>, _>(5)?.map(time::micros_to_proto),
                support_plan: decode_opt(r.try_get(6)?)?,
                support_plan_filed_at: r.try_get::<Option<i64>, _>(7)?.map(time::micros_to_proto),
                actions: Vec::new(),
                closure: decode_opt(r.try_get(8)?)?,
            })
        })
        .collect()
}

/// The rows in force of every cycle, by number, with the assignment's message id and the
/// progress reported.
async fn actions(
    conn: &mut AnyConnection,
    reference: &str,
) -> ServiceResult<Vec<(u32, ActionStatus)>> {
    let rows = sqlx::query(
        "SELECT a.cycle, a.action, s.message_id, a.progress, a.last_note, a.last_reported_at \
         FROM case_actions a LEFT JOIN sent_messages s ON s.idempotency_key = a.assignment_key \
         WHERE a.case_reference = $1 AND a.in_force = 1 ORDER BY a.cycle, a.number",
    )
    .bind(reference)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            let cycle = u32::try_from(r.try_get::<i64, _>(0)?).unwrap_or_default();
            Ok((
                cycle,
                ActionStatus {
                    action: Some(decode::<PlanAction>(&r.try_get::<Vec<u8>, _>(1)?)?),
                    assignment_message_id: r.try_get::<Option<String>, _>(2)?.unwrap_or_default(),
                    progress: ActionProgressState::from_str_name(&r.try_get::<String, _>(3)?)
                        .unwrap_or(ActionProgressState::Unspecified)
                        as i32,
                    last_note: r.try_get(4)?,
                    last_reported_at: r.try_get::<Option<i64>, _>(5)?.map(time::micros_to_proto),
                },
            ))
        })
        .collect()
}

async fn information(
    conn: &mut AnyConnection,
    reference: &str,
) -> ServiceResult<Vec<InformationExchange>> {
    let rows = sqlx::query(
        "SELECT s.message_id, i.recipient_agency_id, i.request, i.requested_at, i.response, \
         i.answered_at FROM information_requests i \
         LEFT JOIN sent_messages s ON s.idempotency_key = i.request_key \
         WHERE i.case_reference = $1 ORDER BY i.requested_at, i.request_key",
    )
    .bind(reference)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(InformationExchange {
                request_message_id: r.try_get::<Option<String>, _>(0)?.unwrap_or_default(),
                recipient_agency_id: r.try_get(1)?,
                request: Some(decode(&r.try_get::<Vec<u8>, _>(2)?)?),
                requested_at: Some(time::micros_to_proto(r.try_get(3)?)),
                response: decode_opt(r.try_get(4)?)?,
                answered_at: r.try_get::<Option<i64>, _>(5)?.map(time::micros_to_proto),
            })
        })
        .collect()
}

/// The encoded form kept on a cycle, for a change that builds on it.
pub async fn cycle_plan(
    conn: &mut AnyConnection,
    reference: &str,
    cycle: u32,
) -> ServiceResult<Option<referral_proto::v1::SupportPlan>> {
    let row = sqlx::query(
        "SELECT support_plan FROM case_cycles WHERE case_reference = $1 AND cycle = $2",
    )
    .bind(reference)
    .bind(i64::from(cycle))
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        None => Ok(None),
        Some(row) => decode_opt(row.try_get(0)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, CASE, CURATOR};

    #[tokio::test]
    async fn a_new_case_file_holds_its_help_request_and_first_cycle() {
        let (db, _dir) = testing::store().await;
        testing::open_case(&db, true).await;
        let mut conn = db.pool().acquire().await.unwrap();
        let row = case::load(&mut conn, CASE).await.unwrap().unwrap();
        let file = case_file(&mut conn, &row, &Directory::default(), "commission")
            .await
            .unwrap();
        let summary = file.summary.unwrap();
        assert_eq!(summary.case_reference, CASE);
        assert_eq!(summary.version, 1);
        assert_eq!(summary.stage, CaseStage::Assessment as i32);
        assert_eq!(summary.child_full_name, "Әлия Серікқызы Нұрланова");
        assert_eq!(summary.curator_user_id, CURATOR);
        assert_eq!(file.help_request.unwrap().message_id, testing::K_ID);
        assert_eq!(file.cycles.len(), 1);
        assert_eq!(file.cycles[0].cycle, 1);
        assert!(file.cycles[0].assessment.is_none());
        assert!(file.contacts.is_empty() && file.documents.is_empty());

        let listed = list(&mut conn, CURATOR, false).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(
            list(&mut conn, "curator-2", false)
                .await
                .unwrap()
                .is_empty()
        );
        sqlx::query("UPDATE case_files SET stage = 'CASE_STAGE_CLOSED'")
            .execute(db.pool())
            .await
            .unwrap();
        assert!(list(&mut conn, "", false).await.unwrap().is_empty());
        assert_eq!(list(&mut conn, "", true).await.unwrap().len(), 1);
    }
}
