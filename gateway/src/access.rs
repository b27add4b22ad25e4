//! Need to know (issue 4), the gateway's side: what it remembers of each report and case (no
//! names: ids, relations, the keyed hash of the IIN), the facts and principals it hands to the
//! policy engine, the checks every case message passes at `Send`, the reads through the hub,
//! the commission's grants and the disclosure history.
//!
//! Every decision here is the policy's (`policy`); every read and every denial is appended to
//! the ledger as an audit event.

use hmac::{KeyInit as _, Mac as _};
use prost::Message as _;
use referral_core::{
    FieldViolations, ServiceError, ServiceResult,
    directory::{AgencyEntry, Directory, role_fits_kind, role_name},
    time, validate,
};
use referral_proto::v1::{
    ActingUser, AgencyKind, CaseEvent, CaseEventKind, CaseFile, CaseView, ConfidentialityLabel,
    DisclosureAlert, DisclosureGrant, DisclosureRecord, Envelope, ExportCaseRequest,
    FilterCaseReadRequest, FormKind, GrantDisclosureRequest, HelpRequest, IncidentRole,
    LinkedReferral, ListDisclosureGrantsRequest, ListDisclosureGrantsResponse,
    ListDisclosuresRequest, ListDisclosuresResponse, Payload, PurposeOfUse, ReadCaseRequest,
    ReportCircumstances, RevokeDisclosureRequest, Role, Sensitivity,
    case_source_client::CaseSourceClient, payload,
};
use sha2::Sha256;
use sqlx::{Any, Row as _, Transaction};

use crate::{
    Shared,
    ledger::{self, EntryFields},
    policy::{Action, CaseFacts, Principal, PrincipalUser, Sections, Situation, section_name},
};

/// Relations of an agency to a case, as stored.
pub(crate) const REFERRER: &str = "referrer";
pub(crate) const ASSIGNEE: &str = "assignee";
pub(crate) const INFORMANT: &str = "informant";
pub(crate) const PARTICIPANT: &str = "participant";

/// Audit events.
pub(crate) const EVENT_READ: &str = "case.read";
pub(crate) const EVENT_DENIED: &str = "access.denied";
pub(crate) const EVENT_GRANTED: &str = "grant.created";
pub(crate) const EVENT_REVOKED: &str = "grant.revoked";
pub(crate) const EVENT_WITHHELD: &str = "message.withheld";
pub(crate) const OUTCOME_ALLOWED: &str = "allowed";
pub(crate) const OUTCOME_DENIED: &str = "denied";

/// The longest a grant may run.
const MAX_GRANT_MICROS: i64 = 366 * 24 * 3600 * 1_000_000;

/// The state of a message kept from its recipient.
pub(crate) const STATE_WITHHELD: &str = "withheld";

/// Keeps a just-stored message from its recipient: no outbox row, its state `withheld`, and a
/// ledger entry saying so.
pub(crate) async fn withhold(
    tx: &mut Transaction<'static, Any>,
    head: &mut ledger::LockedHead,
    env: &Envelope,
    now_us: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM outbox WHERE message_id = $1")
        .bind(&env.message_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE messages SET state = $1 WHERE message_id = $2")
        .bind(STATE_WITHHELD)
        .bind(&env.message_id)
        .execute(&mut **tx)
        .await?;
    let mut fields = EntryFields::for_envelope(ledger::LedgerEvent::Accepted, env, "");
    fields.event = EVENT_WITHHELD.to_owned();
    fields.outcome = OUTCOME_DENIED.to_owned();
    head.append(tx, now_us, &fields).await?;
    Ok(())
}

/// The keyed hash that links referrals of one child without keeping the IIN.
pub fn child_pseudonym(secret: &[u8], iin: &str) -> Option<String> {
    let iin = iin.trim();
    if iin.is_empty() {
        return None;
    }
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret).ok()?;
    mac.update(b"referral-hub child v1\0");
    mac.update(iin.as_bytes());
    Some(hex::encode(mac.finalize().into_bytes()))
}

fn role_of(user: &ActingUser) -> Role {
    Role::try_from(user.role).unwrap_or(Role::Unspecified)
}

fn purpose_of(value: i32) -> PurposeOfUse {
    PurposeOfUse::try_from(value).unwrap_or(PurposeOfUse::Unspecified)
}

/// The incident roles whose cases the curator of a case with `role` may not hold.
fn opposite_parties(incident: &str, role: &str) -> Vec<String> {
    let others: &[&str] = match role {
        "VICTIM" => &["PERPETRATOR", "BOTH"],
        "PERPETRATOR" => &["VICTIM", "BOTH"],
        "BOTH" => &["VICTIM", "PERPETRATOR", "BOTH"],
        _ => &[],
    };
    others.iter().map(|o| format!("{incident}|{o}")).collect()
}

fn incident_role_name(role: i32) -> String {
    IncidentRole::try_from(role)
        .ok()
        .filter(|r| *r != IncidentRole::Unspecified)
        .map(|r| {
            r.as_str_name()
                .trim_start_matches("INCIDENT_ROLE_")
                .to_owned()
        })
        .unwrap_or_default()
}

/// One stored referral (a help request the gateway accepted).
#[derive(Debug, Clone)]
pub(crate) struct Referral {
    pub help_request_message_id: String,
    pub district_id: String,
    pub referring_agency_id: String,
    pub commission_agency_id: String,
    pub child_pseudonym: Option<String>,
    pub residence_agency_id: String,
    pub implicated_agency_id: String,
    pub incident_reference: String,
    pub incident_role: String,
    pub case_reference: Option<String>,
}

fn referral_row(r: &sqlx::any::AnyRow) -> Result<Referral, sqlx::Error> {
    Ok(Referral {
        help_request_message_id: r.try_get("help_request_message_id")?,
        district_id: r.try_get("district_id")?,
        referring_agency_id: r.try_get("referring_agency_id")?,
        commission_agency_id: r.try_get("commission_agency_id")?,
        child_pseudonym: r.try_get("child_pseudonym")?,
        residence_agency_id: r.try_get("residence_agency_id")?,
        implicated_agency_id: r.try_get("implicated_agency_id")?,
        incident_reference: r.try_get("incident_reference")?,
        incident_role: r.try_get("incident_role")?,
        case_reference: r.try_get("case_reference")?,
    })
}

const REFERRAL_COLUMNS: &str = "help_request_message_id, district_id, referring_agency_id, \
    commission_agency_id, child_pseudonym, residence_agency_id, implicated_agency_id, \
    incident_reference, incident_role, case_reference, referred_at";

pub(crate) async fn referral_by_message<'e, E>(
    exec: E,
    message_id: &str,
) -> Result<Option<Referral>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {REFERRAL_COLUMNS} FROM referrals WHERE help_request_message_id = $1"
    )))
    .bind(message_id)
    .fetch_optional(exec)
    .await?
    .as_ref()
    .map(referral_row)
    .transpose()
}

async fn referral_by_case(
    conn: &mut sqlx::AnyConnection,
    case_reference: &str,
) -> Result<Option<Referral>, sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {REFERRAL_COLUMNS} FROM referrals WHERE case_reference = $1 \
         ORDER BY referred_at LIMIT 1"
    )))
    .bind(case_reference)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(referral_row)
    .transpose()
}

/// The rows of a case's facts, one kind per branch of a `UNION ALL`, so that the facts cost
/// one round trip to the store (every read through the hub and every case message asks for
/// them): the case itself, its relations, the grants active at `$2`, its reports and the
/// circumstances of their incidents (see `fold_incident_circumstances`). Every column is text.
const CASE_FACT_ROWS: &str = "\
    SELECT 'case' AS kind, district_id AS a, commission_agency_id AS b, curator_user_id AS c, \
        '' AS d FROM access_cases WHERE case_reference = $1 \
    UNION ALL SELECT 'relation', agency_id, relation, '', '' FROM case_relations \
        WHERE case_reference = $1 \
    UNION ALL SELECT 'grant', grantee_agency_id, grantee_user_id, section, '' \
        FROM disclosure_grants WHERE case_reference = $1 AND expires_at > $2 \
        AND revoked_at IS NULL \
    UNION ALL SELECT 'report', residence_agency_id, implicated_agency_id, incident_reference, \
        incident_role FROM referrals WHERE case_reference = $1 \
    UNION ALL SELECT 'circumstance', i.implicated_agency_id, i.residence_agency_id, '', '' \
        FROM referrals r JOIN incident_referrals i \
        ON i.district_id = r.district_id AND i.referring_agency_id = r.referring_agency_id \
        AND i.incident_reference = r.incident_reference \
        WHERE r.case_reference = $1 AND r.incident_reference <> ''";

/// The kinds of `CASE_FACT_ROWS`, in the order they are folded: a report's own exclusions
/// before its incident's circumstances, which are added only when not already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum FactRow {
    Case,
    Relation,
    Grant,
    Report,
    Circumstance,
}

impl FactRow {
    fn from_kind(kind: &str) -> Option<Self> {
        Some(match kind {
            "case" => Self::Case,
            "relation" => Self::Relation,
            "grant" => Self::Grant,
            "report" => Self::Report,
            "circumstance" => Self::Circumstance,
            _ => return None,
        })
    }
}

/// The facts of a case at `now_us`, or `None` when the gateway knows no such case.
pub(crate) async fn case_facts(
    conn: &mut sqlx::AnyConnection,
    case_reference: &str,
    now_us: i64,
) -> Result<Option<CaseFacts>, sqlx::Error> {
    let rows = sqlx::query(CASE_FACT_ROWS)
        .bind(case_reference)
        .bind(now_us)
        .fetch_all(&mut *conn)
        .await?;
    let mut rows = rows
        .iter()
        .map(|row| {
            let Some(kind) = FactRow::from_kind(&row.try_get::<String, _>("kind")?) else {
                return Ok(None);
            };
            let text = |column: &str| row.try_get::<String, _>(column);
            Ok(Some((
                kind,
                [text("a")?, text("b")?, text("c")?, text("d")?],
            )))
        })
        .filter_map(Result::transpose)
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    rows.sort_by_key(|(kind, _)| *kind);
    let mut rows = rows.into_iter();
    let Some((FactRow::Case, [district, commission, curator, _])) = rows.next() else {
        return Ok(None);
    };
    let mut facts = CaseFacts {
        id: case_reference.to_owned(),
        district,
        commission,
        team: vec![curator],
        ..CaseFacts::default()
    };
    for (kind, [a, b, c, d]) in rows {
        match kind {
            FactRow::Relation => match b.as_str() {
                REFERRER => facts.referrers.push(a),
                ASSIGNEE => facts.assignees.push(a),
                INFORMANT => facts.informants.push(a),
                PARTICIPANT => facts.participants.push(a),
                _ => {}
            },
            FactRow::Grant => {
                let Some(section) = crate::policy::section_from_name(&c) else {
                    continue;
                };
                if b.is_empty() {
                    facts.agency_grants.push((a, section));
                } else {
                    facts.user_grants.push((a, b, section));
                }
            }
            FactRow::Report => fold_report(&mut facts, &a, &b, &c, &d),
            FactRow::Circumstance => fold_circumstance(a, b, &mut facts),
            // A second case row cannot be: the reference is the key.
            FactRow::Case => {}
        }
    }
    Ok(Some(facts))
}

/// Folds into `facts` the circumstances of the incident referrals of the same incident as the
/// report `r` (`protection_forms::remember_incident_referral`): an institution a report
/// bypassing its director implicates, or the residence an institution named, stays excluded
/// from a case opened on a K that left them out. Matched by district, referring agency and
/// incident reference: an incident reference is the referring agency's own id, so the same
/// string from another agency names another incident, and matching it would exclude an unrelated
/// institution (and refuse it the child's protection instruction) by coincidence.
pub(crate) async fn fold_incident_circumstances(
    conn: &mut sqlx::AnyConnection,
    r: &Referral,
    facts: &mut CaseFacts,
) -> Result<(), sqlx::Error> {
    if r.incident_reference.is_empty() {
        return Ok(());
    }
    let rows = sqlx::query(
        "SELECT implicated_agency_id, residence_agency_id FROM incident_referrals \
         WHERE district_id = $1 AND referring_agency_id = $2 AND incident_reference = $3",
    )
    .bind(&r.district_id)
    .bind(&r.referring_agency_id)
    .bind(&r.incident_reference)
    .fetch_all(&mut *conn)
    .await?;
    fold_circumstance_rows(&rows, facts)
}

/// Folds rows of `incident_referrals` (implicated and residence agency ids) into `facts`.
fn fold_circumstance_rows(
    rows: &[sqlx::any::AnyRow],
    facts: &mut CaseFacts,
) -> Result<(), sqlx::Error> {
    for row in rows {
        fold_circumstance(
            row.try_get("implicated_agency_id")?,
            row.try_get("residence_agency_id")?,
            facts,
        );
    }
    Ok(())
}

/// Folds one incident referral's implicated and residence agency ids into `facts`.
fn fold_circumstance(implicated: String, residence: String, facts: &mut CaseFacts) {
    for agency in [&implicated, &residence] {
        if !agency.is_empty() && !facts.excluded_agencies.contains(agency) {
            facts.excluded_agencies.push(agency.clone());
        }
    }
    if !implicated.is_empty() && !facts.implicated_agencies.contains(&implicated) {
        facts.implicated_agencies.push(implicated);
    }
}

/// Checks a report's circumstances (a K's or an incident referral's) against the directory: the
/// residence a child lives in is another residential institution of the caller's district, an
/// implicated director's agency a school or residential institution of it. Returns both ids,
/// trimmed (empty when not named).
pub(crate) fn check_circumstances<'a>(
    directory: &Directory,
    caller: &AgencyEntry,
    circumstances: &'a ReportCircumstances,
    prefix: &str,
    v: &mut FieldViolations,
) -> (&'a str, &'a str) {
    let residence = circumstances.child_residence_agency_id.trim();
    if !residence.is_empty() {
        match directory.agency(residence) {
            Some(a) if a.kind() == AgencyKind::Residential && a.district == caller.district => {
                if a.id == caller.id {
                    v.add(
                        format!("{prefix}.child_residence_agency_id"),
                        "cannot be the referring agency itself",
                    );
                }
            }
            _ => v.add(
                format!("{prefix}.child_residence_agency_id"),
                "must be a residential institution of the district",
            ),
        }
    }
    let implicated = circumstances.implicated_director_agency_id.trim();
    if !implicated.is_empty() {
        match directory.agency(implicated) {
            Some(a)
                if matches!(a.kind(), AgencyKind::Residential | AgencyKind::School)
                    && a.district == caller.district => {}
            _ => v.add(
                format!("{prefix}.implicated_director_agency_id"),
                "must be a school or residential institution of the district",
            ),
        }
    }
    (residence, implicated)
}

/// Remembers a case; false when one with this reference exists already.
async fn insert_case(
    tx: &mut Transaction<'static, Any>,
    case_reference: &str,
    commission: &AgencyEntry,
    help_request_message_id: &str,
    curator_user_id: &str,
    now_us: i64,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO access_cases (case_reference, district_id, commission_agency_id, \
         help_request_message_id, curator_user_id, is_open, opened_at) \
         VALUES ($1, $2, $3, $4, $5, 1, $6) ON CONFLICT (case_reference) DO NOTHING",
    )
    .bind(case_reference)
    .bind(&commission.district)
    .bind(&commission.id)
    .bind(help_request_message_id)
    .bind(curator_user_id)
    .bind(now_us)
    .execute(&mut **tx)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Remembers a message that carries (or answers) a report without belonging to a case: a copy
/// of the report to the police, the decision on it. The child's disclosure history lists them.
async fn remember_report_message(
    tx: &mut Transaction<'static, Any>,
    help_request_message_id: &str,
    message_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO report_messages (help_request_message_id, message_id) VALUES ($1, $2) \
         ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(help_request_message_id)
    .bind(message_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records how an agency relates to a case (once).
async fn add_relation(
    tx: &mut Transaction<'static, Any>,
    case_reference: &str,
    agency_id: &str,
    relation: &str,
    now_us: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO case_relations (case_reference, agency_id, relation, since) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (case_reference, agency_id, relation) DO NOTHING",
    )
    .bind(case_reference)
    .bind(agency_id)
    .bind(relation)
    .bind(now_us)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The facts of a report that has no case yet: its referrer and the commission it went to.
pub(crate) fn referral_facts(r: &Referral) -> CaseFacts {
    let mut facts = CaseFacts {
        id: r.help_request_message_id.clone(),
        district: r.district_id.clone(),
        commission: r.commission_agency_id.clone(),
        referrers: vec![r.referring_agency_id.clone()],
        ..CaseFacts::default()
    };
    fold_report(
        &mut facts,
        &r.residence_agency_id,
        &r.implicated_agency_id,
        &r.incident_reference,
        &r.incident_role,
    );
    facts
}

/// Folds into `facts` what one report (a referral) says: the residence it names and the
/// institution whose director it implicates never receive the case (the implicated one is
/// also kept apart), the residence is where a protection instruction may go, and an
/// incident's other parties may not hold the case.
fn fold_report(
    facts: &mut CaseFacts,
    residence: &str,
    implicated: &str,
    incident: &str,
    role: &str,
) {
    for agency in [residence, implicated] {
        if !agency.is_empty() {
            facts.excluded_agencies.push(agency.to_owned());
        }
    }
    if !implicated.is_empty() {
        facts.implicated_agencies.push(implicated.to_owned());
    }
    if !residence.is_empty() {
        facts.residences.push(residence.to_owned());
    }
    if !incident.is_empty() {
        facts
            .conflicting_parties
            .extend(opposite_parties(incident, role));
    }
}

/// Remembers the child's role an INVESTIGATION_UPDATE of `police` gives on its case (the
/// latest update's word stands), inside the send's transaction.
async fn record_police_role(
    tx: &mut Transaction<'static, Any>,
    police: &AgencyEntry,
    env: &Envelope,
    child_role: i32,
    now_us: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO case_police_roles (case_reference, police_agency_id, child_role, \
         message_id, recorded_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (case_reference, police_agency_id) DO UPDATE SET \
         child_role = excluded.child_role, message_id = excluded.message_id, \
         recorded_at = excluded.recorded_at",
    )
    .bind(&env.case_reference)
    .bind(&police.id)
    .bind(incident_role_name(child_role))
    .bind(&env.message_id)
    .bind(now_us)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Whether a case is known to be an offender's, for `police`'s preventive registration: the
/// latest INVESTIGATION_UPDATE of that police on the case says PERPETRATOR or BOTH; or, before
/// it said any role, a report of the case does. What nobody said is not known (an allow-list).
async fn known_offender(
    tx: &mut Transaction<'static, Any>,
    police: &str,
    case_reference: &str,
) -> Result<bool, sqlx::Error> {
    let offender = |role: &str| matches!(role, "PERPETRATOR" | "BOTH");
    let said: Option<String> = sqlx::query(
        "SELECT child_role FROM case_police_roles \
         WHERE case_reference = $1 AND police_agency_id = $2",
    )
    .bind(case_reference)
    .bind(police)
    .fetch_optional(&mut **tx)
    .await?
    .map(|r| r.try_get("child_role"))
    .transpose()?
    .filter(|role: &String| !role.is_empty());
    if let Some(role) = said {
        return Ok(offender(&role));
    }
    let reported = sqlx::query("SELECT incident_role FROM referrals WHERE case_reference = $1")
        .bind(case_reference)
        .fetch_all(&mut **tx)
        .await?;
    for r in &reported {
        if offender(&r.try_get::<String, _>("incident_role")?) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// "incident|role" of every open case, other than `except_case`, the user is curator of.
async fn incident_parties(
    conn: &mut sqlx::AnyConnection,
    commission: &str,
    user_id: &str,
    except_case: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT r.incident_reference, r.incident_role FROM access_cases c \
         JOIN referrals r ON r.case_reference = c.case_reference \
         WHERE c.commission_agency_id = $1 AND c.curator_user_id = $2 AND c.is_open = 1 \
         AND r.incident_reference <> '' AND c.case_reference <> $3",
    )
    .bind(commission)
    .bind(user_id)
    .bind(except_case)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            let incident: String = r.try_get("incident_reference")?;
            let role: String = r.try_get("incident_role")?;
            Ok(format!("{incident}|{role}"))
        })
        .collect()
}

/// An agency as a whole (its inbox receiving a message).
pub(crate) fn agency_principal(agency: &AgencyEntry) -> Principal {
    Principal {
        agency_id: agency.id.clone(),
        kind: agency.kind(),
        district: agency.district.clone(),
        user: None,
    }
}

/// A user of the calling agency. The acting user must belong to the caller and hold a role
/// that exists in an agency of its kind.
pub(crate) fn user_principal(
    caller: &AgencyEntry,
    acting: &ActingUser,
) -> ServiceResult<Principal> {
    let mut v = FieldViolations::new();
    if acting.user_id.trim().is_empty() || acting.user_id.chars().count() > 200 {
        v.add("acting_user.user_id", "required, at most 200 characters");
    }
    if role_of(acting) == Role::Unspecified {
        v.add("acting_user.role", "required: a known role");
    }
    v.into_result()?;
    if acting.agency_id != caller.id {
        return Err(ServiceError::PermissionDenied(
            "the calling agency cannot act for a user of another agency".into(),
        ));
    }
    if !role_fits_kind(role_of(acting), caller.kind()) {
        return Err(ServiceError::PermissionDenied(
            "the acting role does not exist in the calling agency".into(),
        ));
    }
    Ok(Principal {
        agency_id: caller.id.clone(),
        kind: caller.kind(),
        district: caller.district.clone(),
        user: Some(PrincipalUser {
            user_id: acting.user_id.clone(),
            role: role_of(acting),
            incident_parties: Vec::new(),
        }),
    })
}

/// An audit entry of the ledger (a read, a denial, a grant).
pub(crate) struct Audit<'a> {
    pub event: &'a str,
    pub agency_id: &'a str,
    pub acting: Option<&'a ActingUser>,
    pub purpose: PurposeOfUse,
    pub case_reference: &'a str,
    pub message_id: &'a str,
    pub recipient_agency_id: &'a str,
    pub form_kind: &'a str,
    pub sections: Sections,
    pub outcome: &'a str,
    /// Digest of what the entry stands for (a reason, a grant), never the text itself.
    pub digest: String,
}

impl Audit<'_> {
    fn fields(&self) -> EntryFields {
        EntryFields {
            event: self.event.to_owned(),
            message_id: self.message_id.to_owned(),
            sender_agency_id: self.agency_id.to_owned(),
            recipient_agency_id: self.recipient_agency_id.to_owned(),
            acting_user_id: self.acting.map(|a| a.user_id.clone()).unwrap_or_default(),
            acting_role: self
                .acting
                .map(role_of)
                .filter(|r| *r != Role::Unspecified)
                .map(role_name)
                .unwrap_or_default(),
            purpose_of_use: self.purpose.as_str_name().to_owned(),
            form_kind: self.form_kind.to_owned(),
            case_reference: self.case_reference.to_owned(),
            confidentiality: ConfidentialityLabel::Restricted.as_str_name().to_owned(),
            payload_sha256: self.digest.clone(),
            sections: self.sections.names(),
            outcome: self.outcome.to_owned(),
        }
    }
}

pub(crate) async fn append_audit(
    tx: &mut Transaction<'static, Any>,
    now_us: i64,
    audit: &Audit<'_>,
) -> Result<i64, sqlx::Error> {
    ledger::append(tx, now_us, &audit.fields()).await
}

/// Records a denial in its own transaction (the refused change itself stored nothing).
pub(crate) async fn record_denial(shared: &Shared, audit: Audit<'_>) -> ServiceResult<()> {
    let now_us = time::to_micros(shared.clock.now());
    let mut tx = shared.db.begin().await?;
    append_audit(&mut tx, now_us, &audit).await?;
    tx.commit().await?;
    shared.ledger_appended();
    shared.gateway_metrics.policy_denied(audit.form_kind);
    tracing::info!(
        event = audit.event,
        agency = %audit.agency_id,
        case = %audit.case_reference,
        "access denied and recorded"
    );
    Ok(())
}

/// What `Send` learned about a message's case, for the checks and the view.
pub(crate) struct SendAccess {
    /// The recipient's view of the message.
    pub sections: Sections,
    /// Other messages to store with this one (a report bypassing an implicated director goes to
    /// the district's police too).
    pub copies: Vec<Envelope>,
    /// The message is kept from its recipient (stored and recorded, never delivered).
    pub withheld: bool,
}

fn denied(why: &str) -> ServiceError {
    ServiceError::PermissionDenied(why.to_owned())
}

impl Shared {
    pub(crate) fn pseudonym(&self, iin: &str) -> Option<String> {
        child_pseudonym(&self.child_link_secret, iin)
    }

    /// The need-to-know checks of a message at `Send`, inside its transaction (before it is
    /// stored): the policy's word on the sender and on the recipient, what the gateway must
    /// remember of the case, and the recipient's view. A refusal returns the denial to record.
    pub(crate) async fn check_send(
        &self,
        tx: &mut Transaction<'static, Any>,
        caller: &AgencyEntry,
        recipient: &AgencyEntry,
        env: &mut Envelope,
        now_us: i64,
    ) -> ServiceResult<SendAccess> {
        let form = env.payload.as_ref().and_then(|p| p.form.clone());
        let acting = env.acting_user.clone().unwrap_or_default();
        let situation = Situation {
            purpose: purpose_of(env.purpose_of_use),
            reason_given: false,
        };
        let all = SendAccess {
            sections: Sections::all(),
            copies: Vec::new(),
            withheld: false,
        };
        match form {
            Some(payload::Form::HelpRequest(k)) => {
                if !env.case_reference.is_empty() {
                    return Err(ServiceError::invalid_field(
                        "envelope.case_reference",
                        "must be empty: a help request belongs to no case yet",
                    ));
                }
                self.accept_referral(tx, caller, recipient, env, &k, now_us)
                    .await
            }
            Some(payload::Form::HelpRequestDecision(d)) => {
                let referral = referral_by_message(&mut **tx, &env.in_reply_to)
                    .await?
                    .ok_or_else(|| denied("no such help request"))?;
                if let Some(referral_proto::v1::help_request_decision::Outcome::CaseOpened(
                    opened,
                )) = &d.outcome
                {
                    if !env.case_reference.is_empty() && env.case_reference != opened.case_reference
                    {
                        return Err(ServiceError::invalid_field(
                            "envelope.case_reference",
                            "must be the case the decision opens",
                        ));
                    }
                    self.open_case(tx, caller, &referral, opened, now_us)
                        .await?;
                    env.case_reference = opened.case_reference.clone();
                } else if !env.case_reference.is_empty() {
                    return Err(ServiceError::invalid_field(
                        "envelope.case_reference",
                        "must be empty: no case was opened",
                    ));
                }
                remember_report_message(tx, &referral.help_request_message_id, &env.message_id)
                    .await?;
                let mut facts = referral_facts(&referral);
                fold_incident_circumstances(tx, &referral, &mut facts).await?;
                let sections = self.recipient_view(recipient, &facts, situation)?;
                Ok(SendAccess {
                    withheld: sections.is_empty(),
                    sections,
                    copies: Vec::new(),
                })
            }
            Some(
                payload::Form::InformationRequest(_)
                | payload::Form::ActionAssignment(_)
                | payload::Form::ReviewMinutes(_),
            ) => {
                let relation = match env.payload.as_ref().and_then(|p| p.form.as_ref()) {
                    Some(payload::Form::InformationRequest(_)) => INFORMANT,
                    Some(payload::Form::ActionAssignment(_)) => ASSIGNEE,
                    _ => PARTICIPANT,
                };
                let mut facts = case_facts(tx, &env.case_reference, now_us)
                    .await?
                    .ok_or_else(|| denied("the gateway knows no such case"))?;
                if facts.commission != caller.id {
                    // The same answer as for no case at all: a refusal tells nothing.
                    return Err(denied("the gateway knows no such case"));
                }
                let sender = user_principal(caller, &acting)?;
                if !self
                    .policy
                    .decide(&sender, Action::SendCaseMessage, &facts, situation)?
                {
                    return Err(denied(
                        "only the case team, the secretary or the chair send this case's messages",
                    ));
                }
                // The recipient's relation first, so that its view follows from it.
                match relation {
                    INFORMANT => facts.informants.push(recipient.id.clone()),
                    ASSIGNEE => facts.assignees.push(recipient.id.clone()),
                    _ => facts.participants.push(recipient.id.clone()),
                }
                let sections = self.recipient_view(recipient, &facts, situation)?;
                if sections.is_empty() {
                    return Err(denied("nothing of this case may reach that agency"));
                }
                add_relation(tx, &env.case_reference, &recipient.id, relation, now_us).await?;
                Ok(SendAccess {
                    sections,
                    copies: Vec::new(),
                    withheld: false,
                })
            }
            Some(
                payload::Form::InformationResponse(_)
                | payload::Form::ActionProgress(_)
                | payload::Form::InvestigationUpdate(_)
                | payload::Form::PreventiveRegistration(_)
                | payload::Form::HealthNotice(_),
            ) => {
                let facts = case_facts(tx, &env.case_reference, now_us)
                    .await?
                    .ok_or_else(|| denied("the gateway knows no such case"))?;
                let sender = user_principal(caller, &acting)?;
                if !self
                    .policy
                    .decide(&sender, Action::SendCaseMessage, &facts, situation)?
                {
                    return Err(denied("this agency does not work on that case"));
                }
                match env.payload.as_ref().and_then(|p| p.form.as_ref()) {
                    // The police's word on the child's role, for the registration's gate.
                    Some(payload::Form::InvestigationUpdate(u)) => {
                        record_police_role(tx, caller, env, u.child_role, now_us).await?;
                    }
                    // A preventive registration is of an offender: only on a case known to be
                    // the offender's.
                    Some(payload::Form::PreventiveRegistration(_))
                        if !known_offender(tx, &caller.id, &env.case_reference).await? =>
                    {
                        return Err(denied(
                            "a preventive registration goes only to a case known to be the \
                             offender's",
                        ));
                    }
                    _ => {}
                }
                Ok(all)
            }
            Some(payload::Form::Consultation(_) | payload::Form::ConsultationAnswer(_)) => {
                if !env.case_reference.is_empty() {
                    return Err(ServiceError::invalid_field(
                        "envelope.case_reference",
                        "must be empty: a consultation names no case",
                    ));
                }
                Ok(all)
            }
            // Issue 5: an institution's incident referral, the commission's protection
            // instruction and its acknowledgement (`protection_forms`).
            Some(payload::Form::IncidentReferral(r)) => {
                self.check_incident_referral(tx, caller, recipient, env, &r, now_us)
                    .await
            }
            Some(payload::Form::ProtectionInstruction(_)) => {
                self.check_instruction(tx, caller, recipient, env, &acting, situation, now_us)
                    .await
            }
            Some(payload::Form::InstructionAcknowledgement(_)) => {
                self.check_acknowledgement(tx, caller, env, &acting, now_us)
                    .await
            }
            Some(payload::Form::IncidentSummary(_)) => {
                if !env.case_reference.is_empty() {
                    return Err(ServiceError::invalid_field(
                        "envelope.case_reference",
                        "must be empty: an aggregate report names no case",
                    ));
                }
                Ok(all)
            }
            _ => Ok(all),
        }
    }

    /// A case event may not put its curator on both sides of an incident, nor give a row to an
    /// agency the case must never reach.
    pub(crate) async fn check_event_access(
        &self,
        caller: &AgencyEntry,
        acting: &ActingUser,
        event: &CaseEvent,
    ) -> ServiceResult<()> {
        let now_us = time::to_micros(self.clock.now());
        let mut conn = self.db.pool().acquire().await?;
        let facts = match case_facts(&mut conn, &event.case_reference, now_us).await? {
            Some(facts) => Some(facts),
            // A case opened by its event alone: the facts of the report it was opened on.
            None => match referral_by_message(&mut *conn, &event.help_request_message_id)
                .await?
                .filter(|r| r.commission_agency_id == caller.id)
            {
                Some(r) => {
                    let mut facts = CaseFacts {
                        id: event.case_reference.clone(),
                        ..referral_facts(&r)
                    };
                    fold_incident_circumstances(&mut conn, &r, &mut facts).await?;
                    Some(facts)
                }
                None => None,
            },
        };
        let Some(facts) = facts else {
            return Ok(());
        };
        // Whoever the event makes (or keeps) curator must be allowed to hold the case: a case
        // reopened, opened or handed over never puts one curator on both sides of an incident.
        let kind = CaseEventKind::try_from(event.kind).unwrap_or(CaseEventKind::Unspecified);
        let curator = event.curator_user_id.trim();
        let takes_hold = matches!(
            kind,
            CaseEventKind::CaseOpened | CaseEventKind::CaseReopened
        ) || (!curator.is_empty() && !facts.team.iter().any(|t| t == curator));
        let holder_refused = if takes_hold && !curator.is_empty() {
            let holder = Principal {
                agency_id: caller.id.clone(),
                kind: caller.kind(),
                district: caller.district.clone(),
                user: Some(PrincipalUser {
                    user_id: curator.to_owned(),
                    role: Role::CommissionCurator,
                    incident_parties: incident_parties(
                        &mut conn,
                        &caller.id,
                        curator,
                        &event.case_reference,
                    )
                    .await?,
                }),
            };
            let situation = Situation {
                purpose: PurposeOfUse::CareManagement,
                reason_given: false,
            };
            !self
                .policy
                .decide(&holder, Action::HoldCase, &facts, situation)?
        } else {
            false
        };
        drop(conn);
        let reaches_excluded = event
            .actions
            .iter()
            .any(|a| facts.excluded_agencies.contains(&a.responsible_agency_id));
        if !reaches_excluded && !holder_refused {
            return Ok(());
        }
        record_denial(
            self,
            Audit {
                event: EVENT_DENIED,
                agency_id: &caller.id,
                acting: Some(acting),
                purpose: PurposeOfUse::CareManagement,
                case_reference: &event.case_reference,
                message_id: "",
                recipient_agency_id: "",
                form_kind: "CASE_EVENT",
                sections: Sections::NONE,
                outcome: OUTCOME_DENIED,
                digest: String::new(),
            },
        )
        .await?;
        Err(denied(if holder_refused {
            "event.curator_user_id: this curator holds the case of the other side of the same \
             incident"
        } else {
            "event.actions: a row may not be assigned to an agency this case must never reach"
        }))
    }

    /// The agencies a report (a help request, or the decision on one) must never reach.
    pub(crate) async fn excluded_from_report(
        &self,
        row: &crate::store::MessageRow,
    ) -> ServiceResult<Vec<String>> {
        let report = if row.form_kind == FormKind::HelpRequest.as_str_name() {
            Some(row.message_id.as_str())
        } else if row.form_kind == FormKind::HelpRequestDecision.as_str_name() {
            row.in_reply_to.as_deref()
        } else {
            None
        };
        let Some(id) = report else {
            return Ok(Vec::new());
        };
        let mut conn = self.db.pool().acquire().await?;
        let Some(r) = referral_by_message(&mut *conn, id).await? else {
            return Ok(Vec::new());
        };
        let mut facts = referral_facts(&r);
        fold_incident_circumstances(&mut conn, &r, &mut facts).await?;
        Ok(facts.excluded_agencies)
    }

    /// The sections the recipient agency may receive of a case.
    pub(crate) fn recipient_view(
        &self,
        recipient: &AgencyEntry,
        facts: &CaseFacts,
        situation: Situation,
    ) -> ServiceResult<Sections> {
        Ok(self
            .policy
            .readable_sections(&agency_principal(recipient), facts, situation)?)
    }

    /// A help request: its circumstances checked against the directory, the referral
    /// remembered (with the child's keyed hash), earlier referrals of the same child linked for
    /// the commission, and a copy to the district's police when it implicates a director.
    async fn accept_referral(
        &self,
        tx: &mut Transaction<'static, Any>,
        caller: &AgencyEntry,
        recipient: &AgencyEntry,
        env: &mut Envelope,
        k: &HelpRequest,
        now_us: i64,
    ) -> ServiceResult<SendAccess> {
        let directory = self.directory();
        let circumstances = k.circumstances.clone().unwrap_or_default();
        let mut v = FieldViolations::new();
        let (residence, implicated) = check_circumstances(
            &directory,
            caller,
            &circumstances,
            "envelope.payload.help_request.circumstances",
            &mut v,
        );
        v.into_result()?;
        let pseudonym = k.child.as_ref().and_then(|c| self.pseudonym(&c.iin));
        // Earlier referrals of the same child: only the commission is told.
        if let Some(p) = &pseudonym {
            let earlier = sqlx::query(
                "SELECT help_request_message_id, referring_agency_id, referred_at, case_reference \
                 FROM referrals WHERE child_pseudonym = $1 AND commission_agency_id = $2 \
                 ORDER BY referred_at",
            )
            .bind(p)
            .bind(&recipient.id)
            .fetch_all(&mut **tx)
            .await?;
            env.linked_referrals = earlier
                .iter()
                .map(|r| -> Result<_, sqlx::Error> {
                    Ok(LinkedReferral {
                        help_request_message_id: r.try_get("help_request_message_id")?,
                        referring_agency_id: r.try_get("referring_agency_id")?,
                        referred_at: Some(time::micros_to_proto(r.try_get("referred_at")?)),
                        case_reference: r
                            .try_get::<Option<String>, _>("case_reference")?
                            .unwrap_or_default(),
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        sqlx::query(
            "INSERT INTO referrals (help_request_message_id, district_id, referring_agency_id, \
             commission_agency_id, child_pseudonym, residence_agency_id, implicated_agency_id, \
             incident_reference, incident_role, case_reference, referred_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, $10)",
        )
        .bind(&env.message_id)
        .bind(&caller.district)
        .bind(&caller.id)
        .bind(&recipient.id)
        .bind(&pseudonym)
        .bind(residence)
        .bind(implicated)
        .bind(circumstances.incident_reference.trim())
        .bind(incident_role_name(circumstances.incident_role))
        .bind(now_us)
        .execute(&mut **tx)
        .await?;
        // A report implicating a director reaches the outside bodies directly: the district's
        // police receive it as well as the commission (M:2876-2882).
        let mut copies = Vec::new();
        if !implicated.is_empty() {
            for police in directory
                .agencies
                .iter()
                .filter(|a| a.kind() == AgencyKind::Police && a.district == caller.district)
            {
                let mut copy = env.clone();
                copy.message_id = uuid::Uuid::now_v7().to_string();
                copy.idempotency_key = format!("{}#direct:{}", env.idempotency_key, police.id);
                copy.recipient_agency_id = police.id.clone();
                copy.linked_referrals.clear();
                remember_report_message(tx, &env.message_id, &copy.message_id).await?;
                copies.push(copy);
            }
        }
        Ok(SendAccess {
            sections: Sections::all(),
            copies,
            withheld: false,
        })
    }

    /// A decision opening a case: the curator must be allowed to hold it (never both sides of
    /// one incident); the case and its referrer are remembered.
    async fn open_case(
        &self,
        tx: &mut Transaction<'static, Any>,
        caller: &AgencyEntry,
        referral: &Referral,
        opened: &referral_proto::v1::CaseOpened,
        now_us: i64,
    ) -> ServiceResult<()> {
        let mut facts = referral_facts(referral);
        facts.id = opened.case_reference.clone();
        let curator = Principal {
            agency_id: caller.id.clone(),
            kind: caller.kind(),
            district: caller.district.clone(),
            user: Some(PrincipalUser {
                user_id: opened.curator_user_id.clone(),
                role: Role::CommissionCurator,
                incident_parties: incident_parties(
                    tx,
                    &caller.id,
                    &opened.curator_user_id,
                    &opened.case_reference,
                )
                .await?,
            }),
        };
        let situation = Situation {
            purpose: PurposeOfUse::CareManagement,
            reason_given: false,
        };
        if !self
            .policy
            .decide(&curator, Action::HoldCase, &facts, situation)?
        {
            return Err(denied(
                "this curator holds the case of the other side of the same incident: appoint \
                 another curator",
            ));
        }
        let inserted = insert_case(
            tx,
            &opened.case_reference,
            caller,
            &referral.help_request_message_id,
            &opened.curator_user_id,
            now_us,
        )
        .await?;
        if !inserted {
            return Err(ServiceError::invalid_field(
                "envelope.payload.help_request_decision.case_opened.case_reference",
                "a case with this reference exists",
            ));
        }
        sqlx::query("UPDATE referrals SET case_reference = $1 WHERE help_request_message_id = $2")
            .bind(&opened.case_reference)
            .bind(&referral.help_request_message_id)
            .execute(&mut **tx)
            .await?;
        add_relation(
            tx,
            &opened.case_reference,
            &referral.referring_agency_id,
            REFERRER,
            now_us,
        )
        .await?;
        Ok(())
    }

    /// Reads of another agency's staff: the commission's case file, filtered.
    pub(crate) async fn read_case(
        &self,
        caller: &AgencyEntry,
        req: ReadCaseRequest,
    ) -> ServiceResult<CaseView> {
        let acting = req.acting_user.clone().unwrap_or_default();
        let read = self
            .authorize_read(
                caller,
                &acting,
                &req.case_reference,
                req.purpose_of_use,
                &req.reason,
            )
            .await?;
        let facts = read.facts.clone();
        self.disclose(
            caller,
            &acting,
            read,
            async move { self.export_case(&facts).await },
            &req.reason,
        )
        .await
    }

    /// Reads of the commission's own staff: the file the commission holds, filtered.
    pub(crate) async fn filter_case_read(
        &self,
        caller: &AgencyEntry,
        req: FilterCaseReadRequest,
    ) -> ServiceResult<CaseView> {
        let acting = req.acting_user.clone().unwrap_or_default();
        let file = req.case_file.unwrap_or_default();
        let case_reference = file
            .summary
            .as_ref()
            .map(|s| s.case_reference.clone())
            .unwrap_or_default();
        let purpose = if req.purpose_of_use == 0 {
            PurposeOfUse::CareManagement as i32
        } else {
            req.purpose_of_use
        };
        let read = self
            .authorize_read(caller, &acting, &case_reference, purpose, &req.reason)
            .await?;
        if read.facts.commission != caller.id {
            self.deny_read(caller, &acting, &case_reference, read.situation)
                .await?;
            return Err(denied("no access to that case"));
        }
        self.disclose(
            caller,
            &acting,
            read,
            std::future::ready(Ok(file)),
            &req.reason,
        )
        .await
    }

    /// The policy's word on a read: the case's facts and the sections this person may see, or
    /// (recorded) `PERMISSION_DENIED` when there are none, or no such case (the same answer, so
    /// that a refusal does not tell whether the case exists).
    async fn authorize_read(
        &self,
        caller: &AgencyEntry,
        acting: &ActingUser,
        case_reference: &str,
        purpose: i32,
        reason: &str,
    ) -> ServiceResult<AuthorizedRead> {
        check_read_request(case_reference, purpose, reason)?;
        let principal = user_principal(caller, acting)?;
        let situation = Situation {
            purpose: purpose_of(purpose),
            reason_given: !reason.trim().is_empty(),
        };
        let now_us = time::to_micros(self.clock.now());
        let mut conn = self.db.pool().acquire().await?;
        let facts = case_facts(&mut conn, case_reference, now_us).await?;
        drop(conn);
        let sections = match &facts {
            Some(f) => self.policy.readable_sections(&principal, f, situation)?,
            None => Sections::NONE,
        };
        let Some(facts) = facts.filter(|_| !sections.is_empty()) else {
            self.deny_read(caller, acting, case_reference, situation)
                .await?;
            return Err(denied("no access to that case"));
        };
        let broke_glass = self.broke_glass(&principal, &facts, situation, sections)?;
        Ok(AuthorizedRead {
            facts,
            sections,
            broke_glass,
            situation,
        })
    }

    /// Whether a read with purpose BREAK_THE_GLASS showed more than the same person sees
    /// without it: only then was the glass broken (and the curator is alerted).
    fn broke_glass(
        &self,
        principal: &Principal,
        facts: &CaseFacts,
        situation: Situation,
        sections: Sections,
    ) -> ServiceResult<bool> {
        if situation.purpose != PurposeOfUse::BreakTheGlass {
            return Ok(false);
        }
        let ordinary = self.policy.readable_sections(
            principal,
            facts,
            Situation {
                purpose: PurposeOfUse::CareManagement,
                reason_given: false,
            },
        )?;
        Ok(sections != ordinary)
    }

    async fn deny_read(
        &self,
        caller: &AgencyEntry,
        acting: &ActingUser,
        case_reference: &str,
        situation: Situation,
    ) -> ServiceResult<()> {
        record_denial(
            self,
            Audit {
                event: EVENT_DENIED,
                agency_id: &caller.id,
                acting: Some(acting),
                purpose: situation.purpose,
                case_reference,
                message_id: "",
                recipient_agency_id: "",
                form_kind: "CASE_FILE",
                sections: Sections::NONE,
                outcome: OUTCOME_DENIED,
                digest: String::new(),
            },
        )
        .await
    }

    /// Filters the file to the sections allowed, records the read (and alerts the curator when
    /// the glass was broken), and answers the view.
    ///
    /// The file is fetched (`file`) while the read is recorded: the ledger entry holds the
    /// policy's decision (who, which case, which sections, why), nothing of the file, so neither
    /// waits for the other; the view is returned only once both are done. A fetch that fails
    /// leaves the entry of the read that was allowed and attempted.
    async fn disclose(
        &self,
        caller: &AgencyEntry,
        acting: &ActingUser,
        read: AuthorizedRead,
        file: impl std::future::Future<Output = ServiceResult<CaseFile>>,
        reason: &str,
    ) -> ServiceResult<CaseView> {
        let AuthorizedRead {
            ref facts,
            sections,
            broke_glass,
            ..
        } = read;
        let now = self.clock.now();
        let shown = async {
            let file = file.await?;
            self.views
                .filter(&file, "referral.v1.CaseFile", sections, &caller.id)
                .map_err(ServiceError::internal)
        };
        // The case's next plan review, for a reader who may see the case's status.
        let next_review = async {
            if !sections.contains(Sensitivity::CaseStatus) {
                return Ok(None);
            }
            let next: Option<String> = sqlx::query_scalar(
                "SELECT due_on FROM deadlines WHERE case_reference = $1 AND kind = $2 \
                 AND state NOT IN ('met', 'cancelled') ORDER BY due_at LIMIT 1",
            )
            .bind(&facts.id)
            .bind("DEADLINE_KIND_PLAN_REVIEW")
            .fetch_optional(self.db.pool())
            .await?;
            Ok::<_, ServiceError>(next.and_then(|d| d.parse::<jiff::civil::Date>().ok()).map(
                |date| referral_proto::v1::CalendarDate {
                    year: i32::from(date.year()),
                    month: i32::from(date.month()),
                    day: i32::from(date.day()),
                },
            ))
        };
        let recorded = self.record_read(caller, acting, &read, reason, now);
        let (shown, next_review, seq) = tokio::join!(shown, next_review, recorded);
        let (mut shown, next_review, seq) = (shown?, next_review?, seq?);
        if let (Some(summary), Some(date)) = (shown.summary.as_mut(), next_review) {
            summary.next_review_on = Some(date);
        }
        tracing::info!(
            case = %facts.id,
            agency = %caller.id,
            sections = %sections.names(),
            break_the_glass = broke_glass,
            "case read through the hub"
        );
        Ok(CaseView {
            case_file: Some(shown),
            sections_shown: sections.iter().map(|s| s as i32).collect(),
            sections_withheld: sections.complement().iter().map(|s| s as i32).collect(),
            ledger_seq: seq,
            break_the_glass: broke_glass,
        })
    }

    /// The ledger entry of an allowed read and, when the glass was broken, the alert to each of
    /// the case's curators, in one transaction; returns the entry's sequence number.
    async fn record_read(
        &self,
        caller: &AgencyEntry,
        acting: &ActingUser,
        read: &AuthorizedRead,
        reason: &str,
        now: jiff::Timestamp,
    ) -> ServiceResult<i64> {
        let AuthorizedRead {
            facts,
            sections,
            broke_glass,
            situation,
        } = read;
        let (sections, broke_glass) = (*sections, *broke_glass);
        let now_us = time::to_micros(now);
        let mut tx = self.db.begin().await?;
        let mut head = ledger::lock_head(&mut tx).await?;
        let audit = Audit {
            event: EVENT_READ,
            agency_id: &caller.id,
            acting: Some(acting),
            purpose: situation.purpose,
            case_reference: &facts.id,
            message_id: "",
            recipient_agency_id: "",
            form_kind: "CASE_FILE",
            sections,
            outcome: OUTCOME_ALLOWED,
            digest: if reason.is_empty() {
                String::new()
            } else {
                ledger::payload_sha256(reason.as_bytes())
            },
        };
        let seq = head.append(&mut tx, now_us, &audit.fields()).await?;
        if broke_glass {
            for curator in &facts.team {
                let alert = DisclosureAlert {
                    case_reference: facts.id.clone(),
                    addressed_to_user_id: curator.clone(),
                    opened_by_user_id: acting.user_id.clone(),
                    opened_by_role: acting.role,
                    opened_by_agency_id: caller.id.clone(),
                    purpose_of_use: situation.purpose as i32,
                    reason: reason.to_owned(),
                    opened_at: Some(time::to_proto(now)),
                    ledger_seq: seq,
                };
                let env = Envelope {
                    message_id: uuid::Uuid::now_v7().to_string(),
                    idempotency_key: format!("disclosure-alert:{seq}:{curator}"),
                    sender_agency_id: crate::deadlines::sweep::ENGINE_SENDER.to_owned(),
                    recipient_agency_id: facts.commission.clone(),
                    acting_user: Some(ActingUser {
                        user_id: "gateway".into(),
                        agency_id: crate::deadlines::sweep::ENGINE_SENDER.to_owned(),
                        role: Role::Unspecified as i32,
                        display_name: "Gateway".into(),
                    }),
                    purpose_of_use: PurposeOfUse::CareManagement as i32,
                    case_reference: facts.id.clone(),
                    form_kind: FormKind::DisclosureAlert as i32,
                    confidentiality: ConfidentialityLabel::Restricted as i32,
                    created_at: Some(time::to_proto(now)),
                    in_reply_to: String::new(),
                    payload: Some(Payload {
                        form: Some(payload::Form::DisclosureAlert(alert)),
                    }),
                    linked_referrals: Vec::new(),
                    view_sections: Vec::new(),
                };
                let bytes = env
                    .payload
                    .as_ref()
                    .map(|p| p.encode_to_vec())
                    .unwrap_or_default();
                crate::store::enqueue_message(
                    &mut tx,
                    &mut head,
                    &self.sealer,
                    &env,
                    &ledger::payload_sha256(&bytes),
                    now_us,
                )
                .await?;
            }
        }
        head.store(&mut tx).await?;
        tx.commit().await?;
        self.ledger_appended();
        Ok(seq)
    }

    /// Asks the commission for the case file, with the gateway's own certificate.
    async fn export_case(&self, facts: &CaseFacts) -> ServiceResult<CaseFile> {
        let directory = self.directory();
        let commission = directory.agency(&facts.commission).ok_or_else(|| {
            ServiceError::Unavailable("the case's commission is not listed".into())
        })?;
        let channel = self.agency_channel(&commission.id).ok_or_else(|| {
            ServiceError::Unavailable("the case's commission has no usable endpoint".into())
        })?;
        let mut client = CaseSourceClient::new(referral_core::trace_context::traced(channel));
        client
            // The smaller of our own timeout and what is left of the read being served.
            .export_case(referral_core::limits::outbound_request(
                ExportCaseRequest {
                    case_reference: facts.id.clone(),
                },
                self.attempt_timeout(),
            ))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| {
                tracing::warn!(case = %facts.id, code = ?status.code(), "the commission did not export the case");
                ServiceError::Unavailable(
                    "the commission holding the case cannot be reached; try again".into(),
                )
            })
    }

    /// The facts of a case for a commission's management calls (grants, history), with the
    /// policy's word on the acting user.
    async fn managed_case(
        &self,
        caller: &AgencyEntry,
        acting: &ActingUser,
        case_reference: &str,
        action: Action,
    ) -> ServiceResult<(CaseFacts, Principal)> {
        let principal = user_principal(caller, acting)?;
        let mut v = FieldViolations::new();
        if case_reference.trim().is_empty() || case_reference.chars().count() > 100 {
            v.add("case_reference", "required, at most 100 characters");
        }
        v.into_result()?;
        let now_us = time::to_micros(self.clock.now());
        let mut conn = self.db.pool().acquire().await?;
        let facts = case_facts(&mut conn, case_reference, now_us).await?;
        drop(conn);
        let situation = Situation {
            purpose: PurposeOfUse::CareManagement,
            reason_given: false,
        };
        match facts {
            Some(f) if self.policy.decide(&principal, action, &f, situation)? => Ok((f, principal)),
            _ => {
                self.deny_read(caller, acting, case_reference, situation)
                    .await?;
                Err(denied("no access to that case"))
            }
        }
    }

    pub(crate) async fn grant_disclosure(
        &self,
        caller: &AgencyEntry,
        req: GrantDisclosureRequest,
    ) -> ServiceResult<DisclosureGrant> {
        let acting = req.acting_user.clone().unwrap_or_default();
        let now = self.clock.now();
        let now_us = time::to_micros(now);
        let mut v = FieldViolations::new();
        let directory = self.directory();
        let grantee = directory.agency(&req.grantee_agency_id).cloned();
        match &grantee {
            Some(g) if g.district == caller.district => {}
            _ => v.add("grantee_agency_id", "must be an agency of the district"),
        }
        if req.grantee_user_id.chars().count() > 200 {
            v.add("grantee_user_id", "at most 200 characters");
        }
        let section = Sensitivity::try_from(req.section).unwrap_or(Sensitivity::Unspecified);
        if section == Sensitivity::Unspecified {
            v.add("section", "required: a known section");
        }
        let expires_us = req
            .expires_at
            .as_ref()
            .and_then(time::from_proto)
            .map(time::to_micros);
        match expires_us {
            Some(e) if e > now_us && e - now_us <= MAX_GRANT_MICROS => {}
            _ => v.add(
                "expires_at",
                "required: in the future, at most one year ahead",
            ),
        }
        validate::text(
            &mut v,
            "reason",
            &req.reason,
            validate::Text::required(3, 2000).multiline(),
        );
        v.into_result()?;
        let (facts, _) = self
            .managed_case(caller, &acting, &req.case_reference, Action::ManageGrants)
            .await?;
        if req.grantee_agency_id == facts.commission {
            // Inside the commission a case is read by its team, or by the chair breaking the
            // glass (recorded and alerted); a grant would be a quiet way around both.
            return Err(denied(
                "grants are for other agencies: the commission's own staff read a case as its \
                 team, or the chair by breaking the glass",
            ));
        }
        let grant_id = uuid::Uuid::now_v7().to_string();
        let expires_us = expires_us.unwrap_or(now_us);
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "INSERT INTO disclosure_grants (grant_id, case_reference, grantee_agency_id, \
             grantee_user_id, section, reason, granted_by_user_id, granted_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&grant_id)
        .bind(&facts.id)
        .bind(&req.grantee_agency_id)
        .bind(req.grantee_user_id.trim())
        .bind(section_name(section))
        .bind(&req.reason)
        .bind(&acting.user_id)
        .bind(now_us)
        .bind(expires_us)
        .execute(&mut *tx)
        .await?;
        append_audit(
            &mut tx,
            now_us,
            &Audit {
                event: EVENT_GRANTED,
                agency_id: &caller.id,
                acting: Some(&acting),
                purpose: PurposeOfUse::CareManagement,
                case_reference: &facts.id,
                message_id: &grant_id,
                recipient_agency_id: &req.grantee_agency_id,
                form_kind: "",
                sections: [section].into_iter().collect(),
                outcome: OUTCOME_ALLOWED,
                digest: ledger::payload_sha256(req.reason.as_bytes()),
            },
        )
        .await?;
        tx.commit().await?;
        self.ledger_appended();
        self.grant_by_id(&grant_id).await
    }

    pub(crate) async fn revoke_disclosure(
        &self,
        caller: &AgencyEntry,
        req: RevokeDisclosureRequest,
    ) -> ServiceResult<DisclosureGrant> {
        let acting = req.acting_user.clone().unwrap_or_default();
        if req.grant_id.trim().is_empty() || req.grant_id.len() > 100 {
            return Err(ServiceError::invalid_field(
                "grant_id",
                "required, at most 100 characters",
            ));
        }
        let case_reference: Option<String> =
            sqlx::query_scalar("SELECT case_reference FROM disclosure_grants WHERE grant_id = $1")
                .bind(&req.grant_id)
                .fetch_optional(self.db.pool())
                .await?;
        let Some(case_reference) = case_reference else {
            return Err(ServiceError::NotFound("no such grant".into()));
        };
        let (facts, _) = self
            .managed_case(caller, &acting, &case_reference, Action::ManageGrants)
            .await?;
        let now_us = time::to_micros(self.clock.now());
        let mut tx = self.db.begin().await?;
        let changed = sqlx::query(
            "UPDATE disclosure_grants SET revoked_at = $1, revoked_by_user_id = $2 \
             WHERE grant_id = $3 AND revoked_at IS NULL",
        )
        .bind(now_us)
        .bind(&acting.user_id)
        .bind(&req.grant_id)
        .execute(&mut *tx)
        .await?;
        if changed.rows_affected() == 1 {
            let grantee: String = sqlx::query_scalar(
                "SELECT grantee_agency_id FROM disclosure_grants WHERE grant_id = $1",
            )
            .bind(&req.grant_id)
            .fetch_one(&mut *tx)
            .await?;
            append_audit(
                &mut tx,
                now_us,
                &Audit {
                    event: EVENT_REVOKED,
                    agency_id: &caller.id,
                    acting: Some(&acting),
                    purpose: PurposeOfUse::CareManagement,
                    case_reference: &facts.id,
                    message_id: &req.grant_id,
                    recipient_agency_id: &grantee,
                    form_kind: "",
                    sections: Sections::NONE,
                    outcome: OUTCOME_ALLOWED,
                    digest: String::new(),
                },
            )
            .await?;
        }
        tx.commit().await?;
        self.ledger_appended();
        self.grant_by_id(&req.grant_id).await
    }

    pub(crate) async fn list_grants(
        &self,
        caller: &AgencyEntry,
        req: ListDisclosureGrantsRequest,
    ) -> ServiceResult<ListDisclosureGrantsResponse> {
        let acting = req.acting_user.clone().unwrap_or_default();
        let (facts, _) = self
            .managed_case(caller, &acting, &req.case_reference, Action::ManageGrants)
            .await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT grant_id FROM disclosure_grants WHERE case_reference = $1 ORDER BY granted_at",
        )
        .bind(&facts.id)
        .fetch_all(self.db.pool())
        .await?;
        let mut grants = Vec::with_capacity(ids.len());
        for id in ids {
            grants.push(self.grant_by_id(&id).await?);
        }
        Ok(ListDisclosureGrantsResponse { grants })
    }

    async fn grant_by_id(&self, grant_id: &str) -> ServiceResult<DisclosureGrant> {
        let now_us = time::to_micros(self.clock.now());
        let r = sqlx::query(
            "SELECT grant_id, case_reference, grantee_agency_id, grantee_user_id, section, \
             reason, granted_by_user_id, granted_at, expires_at, revoked_at, revoked_by_user_id \
             FROM disclosure_grants WHERE grant_id = $1",
        )
        .bind(grant_id)
        .fetch_optional(self.db.pool())
        .await?
        .ok_or_else(|| ServiceError::NotFound("no such grant".into()))?;
        let expires_at: i64 = r.try_get("expires_at")?;
        let revoked_at: Option<i64> = r.try_get("revoked_at")?;
        let section: String = r.try_get("section")?;
        Ok(DisclosureGrant {
            grant_id: r.try_get("grant_id")?,
            case_reference: r.try_get("case_reference")?,
            grantee_agency_id: r.try_get("grantee_agency_id")?,
            grantee_user_id: r.try_get("grantee_user_id")?,
            section: crate::policy::section_from_name(&section).unwrap_or_default() as i32,
            granted_at: Some(time::micros_to_proto(r.try_get("granted_at")?)),
            granted_by_user_id: r.try_get("granted_by_user_id")?,
            expires_at: Some(time::micros_to_proto(expires_at)),
            reason: r.try_get("reason")?,
            revoked_at: revoked_at.map(time::micros_to_proto),
            revoked_by_user_id: r
                .try_get::<Option<String>, _>("revoked_by_user_id")?
                .unwrap_or_default(),
            active: revoked_at.is_none() && expires_at > now_us,
        })
    }

    /// The child's disclosure history: the ledger entries of every case and referral of the
    /// child of this case (linked by the keyed hash of the IIN).
    pub(crate) async fn list_disclosures(
        &self,
        caller: &AgencyEntry,
        req: ListDisclosuresRequest,
    ) -> ServiceResult<ListDisclosuresResponse> {
        let acting = req.acting_user.clone().unwrap_or_default();
        let (facts, _) = self
            .managed_case(
                caller,
                &acting,
                &req.case_reference,
                Action::ListDisclosures,
            )
            .await?;
        let mut conn = self.db.pool().acquire().await?;
        let referral = referral_by_case(&mut conn, &facts.id).await?;
        let mut referrals = Vec::new();
        if let Some(r) = &referral {
            match &r.child_pseudonym {
                Some(p) => {
                    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT {REFERRAL_COLUMNS} FROM referrals WHERE child_pseudonym = $1 \
                         AND commission_agency_id = $2"
                    )))
                    .bind(p)
                    .bind(&caller.id)
                    .fetch_all(&mut *conn)
                    .await?;
                    for row in &rows {
                        referrals.push(referral_row(row)?);
                    }
                }
                None => referrals.push(r.clone()),
            }
        }
        let mut cases: Vec<String> = referrals
            .iter()
            .filter_map(|r| r.case_reference.clone())
            .collect();
        if !cases.contains(&facts.id) {
            cases.push(facts.id.clone());
        }
        let mut messages: Vec<String> = referrals
            .iter()
            .map(|r| r.help_request_message_id.clone())
            .collect();
        for r in &referrals {
            let carried: Vec<String> = sqlx::query_scalar(
                "SELECT message_id FROM report_messages WHERE help_request_message_id = $1",
            )
            .bind(&r.help_request_message_id)
            .fetch_all(&mut *conn)
            .await?;
            messages.extend(carried);
        }
        let page = match req.page_size {
            0 => 100,
            n => n.min(1000),
        } as i64;
        // $1 after, $2 limit, then the cases, then the help request message ids.
        let case_params: Vec<String> = (0..cases.len()).map(|i| format!("${}", i + 3)).collect();
        let message_params: Vec<String> = (0..messages.len())
            .map(|i| format!("${}", i + 3 + cases.len()))
            .collect();
        let mut filter = format!("case_reference IN ({})", case_params.join(", "));
        if !messages.is_empty() {
            filter.push_str(&format!(
                " OR message_id IN ({})",
                message_params.join(", ")
            ));
        }
        let sql = format!(
            "SELECT seq, recorded_at, event, message_id, sender_agency_id, recipient_agency_id, \
             acting_user_id, acting_role, purpose_of_use, form_kind, case_reference, sections, \
             outcome FROM ledger WHERE seq > $1 AND ({filter}) ORDER BY seq LIMIT $2"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(req.after_seq)
            .bind(page);
        for c in &cases {
            query = query.bind(c.clone());
        }
        for m in &messages {
            query = query.bind(m.clone());
        }
        let rows = query.fetch_all(&mut *conn).await?;
        let mut records = Vec::with_capacity(rows.len());
        for r in &rows {
            let event: String = r.try_get("event")?;
            let sections: String = r.try_get("sections")?;
            let outcome: String = r.try_get("outcome")?;
            // Deliveries and acknowledgements are disclosures that were allowed.
            let outcome = if outcome.is_empty() {
                OUTCOME_ALLOWED.to_owned()
            } else {
                outcome
            };
            let delivered = event == ledger::LedgerEvent::Delivered.as_str();
            records.push(DisclosureRecord {
                seq: r.try_get("seq")?,
                recorded_at: Some(time::micros_to_proto(r.try_get("recorded_at")?)),
                // For a delivery, the agency that received.
                agency_id: if delivered {
                    r.try_get("recipient_agency_id")?
                } else {
                    r.try_get("sender_agency_id")?
                },
                user_id: r.try_get("acting_user_id")?,
                role: r.try_get("acting_role")?,
                purpose_of_use: r.try_get("purpose_of_use")?,
                case_reference: r.try_get("case_reference")?,
                form_kind: r.try_get("form_kind")?,
                sections: sections
                    .split(',')
                    .filter_map(crate::policy::section_from_name)
                    .map(|s| s as i32)
                    .collect(),
                outcome,
                message_id: r.try_get("message_id")?,
                recipient_agency_id: r.try_get("recipient_agency_id")?,
                event,
            });
        }
        let next_after_seq = if records.len() as i64 == page {
            records.last().map(|r| r.seq).unwrap_or(0)
        } else {
            0
        };
        Ok(ListDisclosuresResponse {
            records,
            next_after_seq,
        })
    }
}

/// A read the policy allows: what it may show.
struct AuthorizedRead {
    facts: CaseFacts,
    sections: Sections,
    broke_glass: bool,
    situation: Situation,
}

/// The checks of a read request's own fields.
fn check_read_request(case_reference: &str, purpose: i32, reason: &str) -> ServiceResult<()> {
    let mut v = FieldViolations::new();
    if case_reference.trim().is_empty() || case_reference.chars().count() > 100 {
        v.add("case_reference", "required, at most 100 characters");
    }
    let purpose = purpose_of(purpose);
    if purpose == PurposeOfUse::Unspecified {
        v.add("purpose_of_use", "required: a known purpose of use");
    }
    if purpose == PurposeOfUse::BreakTheGlass {
        validate::text(
            &mut v,
            "reason",
            reason,
            validate::Text::required(10, 2000).multiline(),
        );
    } else {
        validate::text(
            &mut v,
            "reason",
            reason,
            validate::Text::optional(2000).multiline(),
        );
    }
    v.into_result()
}

/// A case event changes who holds the case and whether it is open.
pub(crate) async fn on_case_event(
    tx: &mut Transaction<'static, Any>,
    event: &CaseEvent,
    commission: &AgencyEntry,
    now_us: i64,
) -> Result<(), sqlx::Error> {
    let kind = CaseEventKind::try_from(event.kind).unwrap_or(CaseEventKind::Unspecified);
    // A case the gateway has not seen opened by a decision (one opened before the gateway knew
    // cases, or recorded by the commission alone) becomes known from its opening event.
    if kind == CaseEventKind::CaseOpened {
        insert_case(
            tx,
            &event.case_reference,
            commission,
            &event.help_request_message_id,
            &event.curator_user_id,
            now_us,
        )
        .await?;
        if !event.help_request_message_id.is_empty() {
            sqlx::query(
                "UPDATE referrals SET case_reference = $1 WHERE help_request_message_id = $2 \
                 AND commission_agency_id = $3 AND case_reference IS NULL",
            )
            .bind(&event.case_reference)
            .bind(&event.help_request_message_id)
            .bind(&commission.id)
            .execute(&mut **tx)
            .await?;
        }
    }
    let commission = commission.id.as_str();
    let open = match kind {
        CaseEventKind::CaseClosed => Some(0_i64),
        CaseEventKind::CaseReopened | CaseEventKind::CaseOpened => Some(1),
        _ => None,
    };
    if let Some(open) = open {
        sqlx::query(
            "UPDATE access_cases SET is_open = $1 WHERE case_reference = $2 \
             AND commission_agency_id = $3",
        )
        .bind(open)
        .bind(&event.case_reference)
        .bind(commission)
        .execute(&mut **tx)
        .await?;
    }
    if !event.curator_user_id.trim().is_empty() {
        sqlx::query(
            "UPDATE access_cases SET curator_user_id = $1 WHERE case_reference = $2 \
             AND commission_agency_id = $3",
        )
        .bind(&event.curator_user_id)
        .bind(&event.case_reference)
        .bind(commission)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reports_circumstances_name_agencies_of_the_callers_district_of_the_right_kind() {
        let agency = |id: &str, kind: &str, district: &str| AgencyEntry {
            id: id.into(),
            kind: kind.into(),
            district: district.into(),
            name_kk: String::new(),
            name_ru: String::new(),
            endpoint: String::new(),
        };
        let directory = Directory {
            districts: Vec::new(),
            agencies: vec![
                agency("residential-1", "residential", "d-1"),
                agency("residential-2", "residential", "d-1"),
                agency("school-1", "school", "d-1"),
                agency("police-1", "police", "d-1"),
                agency("residential-9", "residential", "d-2"),
            ],
            staff: Vec::new(),
        };
        let caller = directory.agency("residential-1").unwrap();
        let check = |residence: &str, implicated: &str| {
            let c = ReportCircumstances {
                child_residence_agency_id: residence.into(),
                implicated_director_agency_id: implicated.into(),
                ..ReportCircumstances::default()
            };
            let mut v = FieldViolations::new();
            let named = check_circumstances(&directory, caller, &c, "c", &mut v);
            let named = (named.0.to_owned(), named.1.to_owned());
            let fields: Vec<String> = v.iter().map(|x| x.field.clone()).collect();
            (named, fields)
        };
        let (named, fields) = check(" residential-2 ", "school-1");
        assert_eq!(named, ("residential-2".into(), "school-1".into()));
        assert!(fields.is_empty(), "{fields:?}");
        assert_eq!(check("", "").1, Vec::<String>::new());
        // The caller itself, another kind, another district, or unknown: named, never accepted.
        for residence in ["residential-1", "school-1", "residential-9", "nobody"] {
            assert_eq!(
                check(residence, "").1,
                ["c.child_residence_agency_id"],
                "{residence}"
            );
        }
        for implicated in ["police-1", "residential-9", "nobody"] {
            assert_eq!(
                check("", implicated).1,
                ["c.implicated_director_agency_id"],
                "{implicated}"
            );
        }
        // The caller's own director may be implicated (a report bypassing them).
        assert!(check("", "residential-1").1.is_empty());
    }

    #[test]
    fn the_pseudonym_is_keyed_and_stable() {
        let a = child_pseudonym(b"secret-a", "120315600123").unwrap();
        assert_eq!(a, child_pseudonym(b"secret-a", " 120315600123 ").unwrap());
        assert_ne!(a, child_pseudonym(b"secret-b", "120315600123").unwrap());
        assert!(!a.contains("120315600123"));
        assert!(child_pseudonym(b"secret-a", "").is_none());
    }

    #[test]
    fn opposite_sides_of_an_incident() {
        assert_eq!(
            opposite_parties("I-1", "VICTIM"),
            vec!["I-1|PERPETRATOR".to_owned(), "I-1|BOTH".to_owned()]
        );
        assert!(opposite_parties("I-1", "WITNESS").is_empty());
    }
}
