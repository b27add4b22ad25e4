//! Acceptance 1 of issue 4: the authorization matrix.
//!
//! Every agency kind × every principal of it (each role that fits the kind, and the agency as a
//! whole) × every action × every relation to the case × every purpose of use × every forbid
//! condition is asked of the gateway's policy engine (`PolicyEngine::builtin()`, the Cedar files
//! in `gateway/policy/`), and each decision is compared with `SPEC` below. `SPEC` is the
//! specification, written from issue 4 and DOMAIN.md section 5, not from the Cedar text: when the
//! two disagree, this test fails and lists the disagreeing cells.
//!
//! Run: `cargo test -p referral-gateway --test authorization_matrix` (the count of decisions is
//! printed even without `--nocapture`).

use std::{collections::BTreeMap, fmt, io::Write as _};

use referral_core::directory::{role_fits_kind, role_name};
use referral_gateway::policy::{
    Action, CaseFacts, PolicyEngine, Principal, PrincipalUser, SECTIONS, Situation,
    section_from_name, section_name,
};
use referral_proto::v1::{AgencyKind, PurposeOfUse, Role, Sensitivity};

/// The line of this file on which `SPEC` starts, so that messages name the file's lines.
const SPEC_LINE: usize = line!() as usize + 2;
/// The specification. Read it line by line; `#` starts a comment.
const SPEC: &str = r#"
# ==============================================================================================
# RELATIONS: how the case of each check is built around the principal (agency "<kind>-1", user
# "<role>-1"). Each case also has other parties (a curator "curator-9", referrer "school-9",
# assignee "ngo-9", informant "police-9", participant "health-9", grants to "ngo-9" and to a user
# of "police-9", an excluded "residential-9", an implicated "residential-8", the child's residence
# "residential-7"), so no set is empty; none of them is the principal.
#
#  team               the case's team (its curator) lists the principal's user id. The case is
#                     held by "commission-1": for a commission principal that is its own agency,
#                     for any other kind the same user id at another agency (it must get nothing).
#                     For the agency as a whole: its agency holds the case.
#  commission         the case is held by "commission-1" and the principal's user is not in the
#                     team (for any other kind than commission: no relation at all).
#  referrer           the principal's agency referred the child. (Below here, the case is held by
#                     "commission-2", so a commission principal is not the holding commission.)
#  assignee           the principal's agency carries a row of the plan.
#  informant          the principal's agency was asked for information.
#  participant        the principal's agency receives the review minutes.
#  agency-granted     an active agency grant (principal's agency, ASSESSMENT).
#  user-granted       an active user grant (principal's agency, principal's user, ASSESSMENT); for
#                     the agency as a whole, a grant to one of its users.
#  colleague-granted  an active user grant (principal's agency, another user of it, ASSESSMENT).
#  residence          the child lives there: the case's reports name the principal's agency as
#                     the residential institution the child lives in (and nothing else relates it).
#  none               no relation.
#
# PURPOSES: COC (coordination of care), CAREMGT (care management), AGGREGATE (aggregate
# reporting), BTG (break the glass, a written reason given), BTG-NOREASON (break the glass, no
# reason).
#
# CONDITIONS (the forbid dimensions; every check is made under each):
#  plain              none of the below.
#  excluded           the principal's agency is in the case's excluded agencies.
#  implicated         the principal's agency is in the case's excluded agencies as the
#                     institution whose director the report implicates.
#  other-district     the principal is of district "d2", the case of "d1".
#  conflict           the user curates "inc-7|offender" and the case lists "inc-7|offender" among
#                     its conflicting parties (otherwise it lists "inc-8|offender").
#
# ==============================================================================================
# A. PERMITS. A principal may do the union of the actions of every row that matches it; what no
#    row allows is refused (deny by default).
#
#  principal  <agency kind>:<who>. kind: school, residential, commission, police, health, ngo, or
#             * for any kind. who: agency (the agency as a whole: its inbox receiving a message),
#             a role (commission_chair, ...), user (a user of any role that fits the kind), or *
#             (the agency as a whole or any of its users).
#  purpose    any, or one of the PURPOSES above.
#  allowed    read:<SECTION>,<SECTION>,... or read:ALL (the 12 sections); send (a case message);
#             hold (be appointed curator); grants (manage grants); disclosures (list the child's
#             disclosure history); instruct (receive the commission's protection instruction).
#  relation   one of RELATIONS, or * for every relation.
# ----------------------------------------------------------------------------------------------
# relation          principal                          purpose  allowed
# ----------------------------------------------------------------------------------------------
# The case team, the curator at the holding commission, has the whole case file.
permit team         commission:user                    any      read:ALL send grants disclosures
# The holding commission's inbox receives every section.
permit team         commission:agency                  any      read:ALL
permit commission   commission:agency                  any      read:ALL
# The secretary and the chair keep the register: who the child is, what was reported, where the
# case stands, who the curator is. Not the family, incident, health, assessment, plan, assigned
# work or case record.
permit commission   commission:commission_secretary    any      read:CASE_STATUS,CONTACT,CHILD_BASIC,CHILD_IDENTITY,CONCERN send grants disclosures
permit commission   commission:commission_chair        any      read:CASE_STATUS,CONTACT,CHILD_BASIC,CHILD_IDENTITY,CONCERN send grants disclosures
# Any curator of the holding commission may be appointed to the case (in the team or not); a
# curator not in the team gets nothing else.
permit team         commission:commission_curator      any      hold
permit commission   commission:commission_curator      any      hold
# Break the glass: the chair of the holding commission, with a written reason, reads everything.
permit commission   commission:commission_chair        BTG      read:ALL
# The referrer sees where the case stands and how to reach the curator.
permit referrer     *:*                                any      read:CASE_STATUS,CONTACT
# An agency carrying out a row of the plan: the child's first name and age, the curator's
# contact, its own rows; its users answer.
permit assignee     *:*                                any      read:CASE_STATUS,CONTACT,CHILD_BASIC,ASSIGNED_WORK
permit assignee     *:user                             any      send
# An agency asked for information: who the child is and what it is asked; its users answer.
permit informant    *:*                                any      read:CASE_STATUS,CONTACT,CHILD_IDENTITY,ASSIGNED_WORK
permit informant    *:user                             any      send
# Police working on the case (assignee or informant): the incident and the children's identities.
permit assignee     police:*                           any      read:INCIDENT,CHILD_IDENTITY
permit informant    police:*                           any      read:INCIDENT,CHILD_IDENTITY
# Health working on the case (assignee or informant): what treatment needs.
permit assignee     health:*                           any      read:HEALTH,CHILD_IDENTITY
permit informant    health:*                           any      read:HEALTH,CHILD_IDENTITY
# A participant of the reviews receives their minutes: status and contacts.
permit participant  *:*                                any      read:CASE_STATUS,CONTACT
# Grants: an agency grant gives its section to the agency and to any of its users; a user grant
# to that user only (not to the agency as a whole, not to a colleague).
permit agency-granted  *:*                             any      read:ASSESSMENT
permit user-granted    *:user                          any      read:ASSESSMENT
# none, colleague-granted: nothing (no row).
# The residential institution the child lives in, which the commission instructs to protect the
# child (a move, M:3010-3017), receives the instruction; the gateway stores for it only the
# instruction's own sections (CASE_STATUS, ASSIGNED_WORK of that message). No other institution
# of the district receives it: it names the child.
permit residence    residential:agency                 any      instruct

# ==============================================================================================
# B. FORBIDS. They win over every permit.
#
#  when       condition=<CONDITION>, purpose=<PURPOSE> or principal=<kind>:<who>.
#  forbidden  ALL (every action), "ALL except <actions>", or a list of actions.
# ----------------------------------------------------------------------------------------------
# when                        forbidden
# ----------------------------------------------------------------------------------------------
# No back-flow, nothing to an implicated director's institution: whatever the relation or grant.
# The one exception: the institution a child disclosed about receives the protection instruction
# (M:2900-2930, M:3010-3017); an implicated director's institution not even that (M:2876-2882).
forbid condition=excluded        ALL except instruct
forbid condition=implicated      ALL
# Nothing crosses a district.
forbid condition=other-district  ALL
# Breaking the glass without a written reason is not breaking the glass, for anyone.
forbid purpose=BTG-NOREASON      ALL
# Aggregate reporting allows at most the case status.
forbid purpose=AGGREGATE         ALL except read:CASE_STATUS
# One curator never holds the victim's and the offender's case of the same incident.
forbid condition=conflict        hold
# The agency as a whole only receives: it never sends, holds, grants or lists.
forbid principal=*:agency        send hold grants disclosures
"#;

// ---- The dimensions -------------------------------------------------------------------------

const RELATIONS: [&str; 11] = [
    "team",
    "commission",
    "referrer",
    "assignee",
    "informant",
    "participant",
    "agency-granted",
    "user-granted",
    "colleague-granted",
    "residence",
    "none",
];

const PURPOSES: [&str; 5] = ["COC", "CAREMGT", "AGGREGATE", "BTG", "BTG-NOREASON"];

const CONDITIONS: [&str; 5] = [
    "plain",
    "excluded",
    "implicated",
    "other-district",
    "conflict",
];

const GRANTED: Sensitivity = Sensitivity::Assessment;

fn situation(purpose: &str) -> Situation {
    let (purpose, reason_given) = match purpose {
        "COC" => (PurposeOfUse::CoordinationOfCare, false),
        "CAREMGT" => (PurposeOfUse::CareManagement, false),
        "AGGREGATE" => (PurposeOfUse::AggregateReporting, false),
        "BTG" => (PurposeOfUse::BreakTheGlass, true),
        "BTG-NOREASON" => (PurposeOfUse::BreakTheGlass, false),
        other => panic!("unknown purpose {other}"),
    };
    Situation {
        purpose,
        reason_given,
    }
}

fn kind_name(kind: AgencyKind) -> String {
    kind.as_str_name()
        .trim_start_matches("AGENCY_KIND_")
        .to_ascii_lowercase()
}

/// Every agency kind of the protobuf enum (so that a new kind enters the matrix by itself).
fn kinds() -> Vec<AgencyKind> {
    (1..64)
        .filter_map(|i| AgencyKind::try_from(i).ok())
        .collect()
}

/// Every role of the protobuf enum.
fn roles() -> Vec<Role> {
    (1..64).filter_map(|i| Role::try_from(i).ok()).collect()
}

/// One principal of the matrix: an agency as a whole, or a user with a role fitting its kind.
#[derive(Debug, Clone, Copy)]
struct Who {
    kind: AgencyKind,
    role: Option<Role>,
}

impl Who {
    fn agency_id(&self) -> String {
        format!("{}-1", kind_name(self.kind))
    }

    fn user_id(&self) -> Option<String> {
        self.role.map(|r| format!("{}-1", role_name(r)))
    }

    fn principal(&self, condition: &str) -> Principal {
        Principal {
            agency_id: self.agency_id(),
            kind: self.kind,
            district: if condition == "other-district" {
                "d2".into()
            } else {
                "d1".into()
            },
            user: self.role.map(|role| PrincipalUser {
                user_id: self.user_id().unwrap(),
                role,
                incident_parties: vec!["inc-7|offender".into()],
            }),
        }
    }
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.role {
            None => write!(f, "{}:agency", kind_name(self.kind)),
            Some(r) => write!(f, "{}:{}", kind_name(self.kind), role_name(r)),
        }
    }
}

/// Every principal: for each kind, the agency as a whole and a user of each fitting role.
fn principals() -> Vec<Who> {
    let mut all = Vec::new();
    for kind in kinds() {
        all.push(Who { kind, role: None });
        for role in roles() {
            if role_fits_kind(role, kind) {
                all.push(Who {
                    kind,
                    role: Some(role),
                });
            }
        }
    }
    all
}

/// The case in which `who` has exactly `relation`, under `condition`.
fn case_facts(who: &Who, relation: &str, condition: &str) -> CaseFacts {
    let agency = who.agency_id();
    let holding = matches!(relation, "team" | "commission");
    let mut case = CaseFacts {
        id: "C-42".into(),
        district: "d1".into(),
        commission: if holding {
            "commission-1".into()
        } else {
            "commission-2".into()
        },
        team: vec!["curator-9".into()],
        referrers: vec!["school-9".into()],
        assignees: vec!["ngo-9".into()],
        informants: vec!["police-9".into()],
        participants: vec!["health-9".into()],
        agency_grants: vec![("ngo-9".into(), Sensitivity::Plan)],
        user_grants: vec![(
            "police-9".into(),
            "police_juvenile_inspector-9".into(),
            Sensitivity::Family,
        )],
        excluded_agencies: vec!["residential-9".into()],
        implicated_agencies: vec!["residential-8".into()],
        conflicting_parties: vec!["inc-8|offender".into()],
        residences: vec!["residential-7".into()],
    };
    match relation {
        "team" => {
            if let Some(user) = who.user_id() {
                case.team = vec![user];
            }
        }
        "commission" | "none" => {}
        "referrer" => case.referrers.push(agency.clone()),
        "assignee" => case.assignees.push(agency.clone()),
        "informant" => case.informants.push(agency.clone()),
        "participant" => case.participants.push(agency.clone()),
        "agency-granted" => case.agency_grants.push((agency.clone(), GRANTED)),
        "user-granted" => {
            let user = who.user_id().unwrap_or_else(|| "someone-1".into());
            case.user_grants.push((agency.clone(), user, GRANTED));
        }
        "colleague-granted" => {
            case.user_grants
                .push((agency.clone(), "colleague-1".into(), GRANTED));
        }
        "residence" => case.residences.push(agency.clone()),
        other => panic!("unknown relation {other}"),
    }
    match condition {
        "plain" | "other-district" => {}
        "excluded" => case.excluded_agencies.push(agency),
        "implicated" => {
            case.excluded_agencies.push(agency.clone());
            case.implicated_agencies.push(agency);
        }
        "conflict" => case.conflicting_parties.push("inc-7|offender".into()),
        other => panic!("unknown condition {other}"),
    }
    case
}

fn action_name(action: Action) -> String {
    match action {
        Action::Read(s) => format!("read:{}", section_name(s)),
        Action::SendCaseMessage => "send".into(),
        Action::HoldCase => "hold".into(),
        Action::ManageGrants => "grants".into(),
        Action::ListDisclosures => "disclosures".into(),
        Action::ReceiveInstruction => "instruct".into(),
    }
}

// ---- The specification, parsed ----------------------------------------------------------------

/// `<kind>:<who>`.
#[derive(Debug, Clone)]
struct PrincipalPattern {
    /// `None` for any kind.
    kind: Option<AgencyKind>,
    who: WhoPattern,
}

#[derive(Debug, Clone)]
enum WhoPattern {
    Any,
    Agency,
    User,
    Role(Role),
}

impl PrincipalPattern {
    fn matches(&self, who: &Who) -> bool {
        if self.kind.is_some_and(|k| k != who.kind) {
            return false;
        }
        match (&self.who, who.role) {
            (WhoPattern::Any, _) => true,
            (WhoPattern::Agency, None) => true,
            (WhoPattern::User, Some(_)) => true,
            (WhoPattern::Role(r), Some(role)) => *r == role,
            _ => false,
        }
    }
}

#[derive(Debug)]
struct Permit {
    line: usize,
    relation: String,
    principal: PrincipalPattern,
    /// `None` for any purpose.
    purpose: Option<String>,
    allowed: Vec<Action>,
}

#[derive(Debug)]
enum When {
    Condition(String),
    Purpose(String),
    Principal(PrincipalPattern),
}

#[derive(Debug)]
struct Forbid {
    line: usize,
    when: When,
    forbidden: Vec<Action>,
}

#[derive(Debug)]
struct Spec {
    permits: Vec<Permit>,
    forbids: Vec<Forbid>,
}

fn parse_actions(line: usize, words: &[&str]) -> Vec<Action> {
    let mut actions = Vec::new();
    for word in words {
        match *word {
            "send" => actions.push(Action::SendCaseMessage),
            "hold" => actions.push(Action::HoldCase),
            "grants" => actions.push(Action::ManageGrants),
            "disclosures" => actions.push(Action::ListDisclosures),
            "instruct" => actions.push(Action::ReceiveInstruction),
            "read:ALL" => actions.extend(SECTIONS.iter().map(|s| Action::Read(*s))),
            w if w.starts_with("read:") => {
                for name in w["read:".len()..].split(',') {
                    let section = section_from_name(name)
                        .unwrap_or_else(|| panic!("spec line {line}: unknown section {name:?}"));
                    actions.push(Action::Read(section));
                }
            }
            w => panic!("spec line {line}: unknown action {w:?}"),
        }
    }
    assert!(!actions.is_empty(), "spec line {line}: no action");
    actions
}

fn parse_principal(line: usize, text: &str) -> PrincipalPattern {
    let (kind, who) = text
        .split_once(':')
        .unwrap_or_else(|| panic!("spec line {line}: principal {text:?} is not <kind>:<who>"));
    let kind = match kind {
        "*" => None,
        k => Some(
            kinds()
                .into_iter()
                .find(|x| kind_name(*x) == k)
                .unwrap_or_else(|| panic!("spec line {line}: unknown agency kind {k:?}")),
        ),
    };
    let who = match who {
        "*" => WhoPattern::Any,
        "agency" => WhoPattern::Agency,
        "user" => WhoPattern::User,
        r => {
            let role = roles()
                .into_iter()
                .find(|x| role_name(*x) == r)
                .unwrap_or_else(|| panic!("spec line {line}: unknown role {r:?}"));
            if let Some(kind) = kind {
                assert!(
                    role_fits_kind(role, kind),
                    "spec line {line}: a {} cannot have role {r}",
                    kind_name(kind)
                );
            }
            WhoPattern::Role(role)
        }
    };
    PrincipalPattern { kind, who }
}

fn parse_spec(text: &str) -> Spec {
    let mut spec = Spec {
        permits: Vec::new(),
        forbids: Vec::new(),
    };
    for (i, raw) in text.lines().enumerate() {
        let line = SPEC_LINE + i;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let words: Vec<&str> = content.split_whitespace().collect();
        match words[0] {
            "permit" => {
                assert!(
                    words.len() >= 5,
                    "spec line {line}: permit <relation> <principal> <purpose> <actions>"
                );
                let relation = words[1].to_owned();
                assert!(
                    relation == "*" || RELATIONS.contains(&relation.as_str()),
                    "spec line {line}: unknown relation {relation:?}"
                );
                let purpose = match words[3] {
                    "any" => None,
                    p if PURPOSES.contains(&p) => Some(p.to_owned()),
                    p => panic!("spec line {line}: unknown purpose {p:?}"),
                };
                spec.permits.push(Permit {
                    line,
                    relation,
                    principal: parse_principal(line, words[2]),
                    purpose,
                    allowed: parse_actions(line, &words[4..]),
                });
            }
            "forbid" => {
                assert!(
                    words.len() >= 3,
                    "spec line {line}: forbid <when> <actions>"
                );
                let (key, value) = words[1]
                    .split_once('=')
                    .unwrap_or_else(|| panic!("spec line {line}: <when> is key=value"));
                let when = match key {
                    "condition" if CONDITIONS.contains(&value) => When::Condition(value.to_owned()),
                    "purpose" if PURPOSES.contains(&value) => When::Purpose(value.to_owned()),
                    "principal" => When::Principal(parse_principal(line, value)),
                    _ => panic!("spec line {line}: unknown forbid condition {}", words[1]),
                };
                let forbidden = match &words[2..] {
                    ["ALL"] => Action::all(),
                    ["ALL", "except", rest @ ..] => {
                        let except = parse_actions(line, rest);
                        Action::all()
                            .into_iter()
                            .filter(|a| !except.contains(a))
                            .collect()
                    }
                    rest => parse_actions(line, rest),
                };
                spec.forbids.push(Forbid {
                    line,
                    when,
                    forbidden,
                });
            }
            w => panic!("spec line {line}: a row starts with permit or forbid, not {w:?}"),
        }
    }
    spec
}

/// What the specification says of one cell, and why.
struct Expected {
    allowed: bool,
    /// The permit rows that allow it, and the forbid rows that refuse it.
    permitted_by: Vec<usize>,
    forbidden_by: Vec<usize>,
}

impl Spec {
    fn expect(
        &self,
        who: &Who,
        relation: &str,
        purpose: &str,
        condition: &str,
        action: Action,
    ) -> Expected {
        let permitted_by: Vec<usize> = self
            .permits
            .iter()
            .filter(|p| {
                (p.relation == relation || p.relation == "*")
                    && p.principal.matches(who)
                    && p.purpose.as_deref().is_none_or(|x| x == purpose)
                    && p.allowed.contains(&action)
            })
            .map(|p| p.line)
            .collect();
        let forbidden_by: Vec<usize> = self
            .forbids
            .iter()
            .filter(|f| {
                let applies = match &f.when {
                    When::Condition(c) => c == condition,
                    When::Purpose(p) => p == purpose,
                    When::Principal(pattern) => pattern.matches(who),
                };
                applies && f.forbidden.contains(&action)
            })
            .map(|f| f.line)
            .collect();
        Expected {
            allowed: !permitted_by.is_empty() && forbidden_by.is_empty(),
            permitted_by,
            forbidden_by,
        }
    }
}

fn spec_line(line: usize) -> String {
    let text = SPEC.lines().nth(line - SPEC_LINE).unwrap_or("").trim();
    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    format!("authorization_matrix.rs:{line} \"{text}\"")
}

struct Mismatch {
    who: Who,
    relation: &'static str,
    purpose: &'static str,
    condition: &'static str,
    action: Action,
    policy_allows: bool,
    expected: Expected,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{}] as {} / purpose {} / condition {} / {}: policy {}, spec {}",
            self.who,
            self.who.user_id().map_or_else(
                || self.who.agency_id(),
                |u| format!("{}/{u}", self.who.agency_id())
            ),
            self.relation,
            self.purpose,
            self.condition,
            action_name(self.action),
            if self.policy_allows {
                "ALLOWS"
            } else {
                "DENIES"
            },
            if self.expected.allowed {
                "allows"
            } else {
                "denies"
            },
        )?;
        if !self.expected.forbidden_by.is_empty() {
            let lines: Vec<String> = self
                .expected
                .forbidden_by
                .iter()
                .map(|l| spec_line(*l))
                .collect();
            write!(f, " (forbidden by {})", lines.join(", "))
        } else if !self.expected.permitted_by.is_empty() {
            let lines: Vec<String> = self
                .expected
                .permitted_by
                .iter()
                .map(|l| spec_line(*l))
                .collect();
            write!(f, " (allowed by {})", lines.join(", "))
        } else {
            write!(f, " (no permit row)")
        }
    }
}

#[test]
fn every_decision_matches_the_specification() {
    let spec = parse_spec(SPEC);
    let engine = PolicyEngine::builtin().expect("the built-in policy loads and validates");
    let principals = principals();
    let actions = Action::all();

    // The matrix covers every kind, every role (each fits some kind) and every action.
    assert_eq!(kinds().len(), 6, "agency kinds: {:?}", kinds());
    for role in roles() {
        assert!(
            kinds().into_iter().any(|k| role_fits_kind(role, k)),
            "role {role:?} fits no agency kind"
        );
    }
    assert_eq!(actions.len(), SECTIONS.len() + 5);

    let mut checked = 0usize;
    let mut allowed = 0usize;
    let mut mismatches: Vec<Mismatch> = Vec::new();
    let mut used_permits = vec![false; spec.permits.len()];
    let mut used_forbids = vec![false; spec.forbids.len()];

    for condition in CONDITIONS {
        for who in &principals {
            for relation in RELATIONS {
                let facts = case_facts(who, relation, condition);
                let prepared = engine
                    .prepare(&who.principal(condition), &facts)
                    .expect("entities build");
                for purpose in PURPOSES {
                    let situation = situation(purpose);
                    for &action in &actions {
                        let decision = engine.is_allowed(&prepared, action, situation);
                        let expected = spec.expect(who, relation, purpose, condition, action);
                        for (i, p) in spec.permits.iter().enumerate() {
                            if expected.permitted_by.contains(&p.line) {
                                used_permits[i] = true;
                            }
                        }
                        for (i, f) in spec.forbids.iter().enumerate() {
                            if expected.forbidden_by.contains(&f.line) {
                                used_forbids[i] = true;
                            }
                        }
                        checked += 1;
                        allowed += usize::from(decision);
                        if decision != expected.allowed {
                            mismatches.push(Mismatch {
                                who: *who,
                                relation,
                                purpose,
                                condition,
                                action,
                                policy_allows: decision,
                                expected,
                            });
                        }
                    }
                }
            }
        }
    }

    // Written to stdout itself, so that it shows without `--nocapture`.
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "authorization matrix: {checked} decisions checked, {allowed} allowed \
         ({} principals x {} relations x {} purposes x {} conditions x {} actions)",
        principals.len(),
        RELATIONS.len(),
        PURPOSES.len(),
        CONDITIONS.len(),
        actions.len(),
    )
    .unwrap();
    drop(out);

    // A row that no check ever reaches is a typo or a dead rule.
    let dead: Vec<String> = spec
        .permits
        .iter()
        .zip(&used_permits)
        .filter(|(_, used)| !**used)
        .map(|(p, _)| spec_line(p.line))
        .chain(
            spec.forbids
                .iter()
                .zip(&used_forbids)
                .filter(|(_, used)| !**used)
                .map(|(f, _)| spec_line(f.line)),
        )
        .collect();
    assert!(
        dead.is_empty(),
        "spec rows no check reaches:\n{}",
        dead.join("\n")
    );

    if !mismatches.is_empty() {
        let mut report = format!(
            "{} of {checked} decisions disagree with the specification.\n\nFirst {}:\n",
            mismatches.len(),
            mismatches.len().min(30)
        );
        for m in mismatches.iter().take(30) {
            report.push_str(&format!("  {m}\n"));
        }
        // The same, folded over the conditions and principals: one line per disagreeing cell
        // (relation, purpose, action, direction), with the principals it concerns.
        let mut cells: BTreeMap<(String, String, String, String), Vec<String>> = BTreeMap::new();
        for m in &mismatches {
            let key = (
                m.relation.to_owned(),
                m.purpose.to_owned(),
                action_name(m.action),
                if m.policy_allows {
                    "policy ALLOWS, spec denies".to_owned()
                } else {
                    "policy DENIES, spec allows".to_owned()
                },
            );
            let who = format!("{} ({})", m.who, m.condition);
            let list = cells.entry(key).or_default();
            if !list.contains(&who) {
                list.push(who);
            }
        }
        report.push_str(&format!(
            "\nDisagreeing cells (relation / purpose / action), {} in all, first 30:\n",
            cells.len()
        ));
        for ((relation, purpose, action, direction), whos) in cells.iter().take(30) {
            report.push_str(&format!(
                "  {relation} / {purpose} / {action}: {direction}: {}\n",
                whos.join(", ")
            ));
        }
        panic!("{report}");
    }
}
