//! The need-to-know policy engine (issue 4): Cedar policies and schema from `gateway/policy/`,
//! validated against the schema when the gateway starts (an invalid policy stops it), and one
//! decision per principal, action and case.
//!
//! The gateway builds the entities of every decision from its own store (see `access`): who is
//! asking (from the certificate, the acting user and the directory), the case (its team, the
//! agencies related to it, the grants active now, the agencies it must never reach) and the
//! situation (purpose of use, whether a reason was written, the section read). The policy
//! text, not this module, says what is allowed.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    str::FromStr,
};

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, Policy, PolicySet, PrincipalConstraint, Request, RestrictedExpression, Schema,
    ValidationMode, Validator,
};
use referral_core::directory::role_name;
use referral_proto::v1::{AgencyKind, PurposeOfUse, Role, Sensitivity};

/// The schema and policies shipped with the gateway.
pub const BUILTIN_SCHEMA: &str = include_str!("../policy/need_to_know.cedarschema");
pub const BUILTIN_POLICIES: &str = include_str!("../policy/need_to_know.cedar");
const SCHEMA_FILE: &str = "need_to_know.cedarschema";
const POLICY_FILE: &str = "need_to_know.cedar";

/// Every section a case can be read in, in a fixed order.
pub const SECTIONS: [Sensitivity; 12] = [
    Sensitivity::CaseStatus,
    Sensitivity::Contact,
    Sensitivity::ChildBasic,
    Sensitivity::ChildIdentity,
    Sensitivity::Family,
    Sensitivity::Concern,
    Sensitivity::Incident,
    Sensitivity::Health,
    Sensitivity::Assessment,
    Sensitivity::Plan,
    Sensitivity::AssignedWork,
    Sensitivity::CaseRecord,
];

/// A set of sections, as a bit set indexed by the protobuf enum value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Sections(u32);

impl Sections {
    pub const NONE: Sections = Sections(0);

    pub fn all() -> Self {
        SECTIONS.iter().copied().collect()
    }
    pub fn insert(&mut self, s: Sensitivity) {
        self.0 |= 1 << (s as i32);
    }
    pub fn contains(self, s: Sensitivity) -> bool {
        self.0 & (1 << (s as i32)) != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = Sensitivity> {
        SECTIONS.into_iter().filter(move |s| self.contains(*s))
    }
    /// The sections of `SECTIONS` not in this set.
    pub fn complement(self) -> Self {
        SECTIONS
            .iter()
            .copied()
            .filter(|s| !self.contains(*s))
            .collect()
    }
    /// Comma-separated names, for the ledger.
    pub fn names(self) -> String {
        self.iter().map(section_name).collect::<Vec<_>>().join(",")
    }
}

impl FromIterator<Sensitivity> for Sections {
    fn from_iter<I: IntoIterator<Item = Sensitivity>>(iter: I) -> Self {
        let mut s = Sections::NONE;
        for x in iter {
            s.insert(x);
        }
        s
    }
}

/// A section's name as the policy and the ledger spell it (the enum name without its prefix).
pub fn section_name(s: Sensitivity) -> &'static str {
    s.as_str_name()
        .strip_prefix("SENSITIVITY_")
        .unwrap_or("UNSPECIFIED")
}

/// A section from its ledger name.
pub fn section_from_name(name: &str) -> Option<Sensitivity> {
    Sensitivity::from_str_name(&format!("SENSITIVITY_{name}")).filter(|s| SECTIONS.contains(s))
}

fn purpose_name(p: PurposeOfUse) -> &'static str {
    p.as_str_name()
        .strip_prefix("PURPOSE_OF_USE_")
        .unwrap_or("UNSPECIFIED")
}

fn read_action(s: Sensitivity) -> &'static str {
    match s {
        Sensitivity::CaseStatus => "readCaseStatus",
        Sensitivity::Contact => "readContact",
        Sensitivity::ChildBasic => "readChildBasic",
        Sensitivity::ChildIdentity => "readChildIdentity",
        Sensitivity::Family => "readFamily",
        Sensitivity::Concern => "readConcern",
        Sensitivity::Incident => "readIncident",
        Sensitivity::Health => "readHealth",
        Sensitivity::Assessment => "readAssessment",
        Sensitivity::Plan => "readPlan",
        Sensitivity::AssignedWork => "readAssignedWork",
        Sensitivity::CaseRecord | Sensitivity::Unspecified => "readCaseRecord",
    }
}

/// What is being done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Reading or receiving one section of a case.
    Read(Sensitivity),
    /// Sending a message that belongs to a case.
    SendCaseMessage,
    /// Being appointed curator of the case.
    HoldCase,
    /// Granting, revoking and listing grants.
    ManageGrants,
    /// Listing the child's disclosure history.
    ListDisclosures,
    /// An agency receiving the commission's protection instruction about the case (only the
    /// instruction: it may be excluded from everything else of the case).
    ReceiveInstruction,
}

impl Action {
    pub fn cedar_name(self) -> &'static str {
        match self {
            Action::Read(s) => read_action(s),
            Action::SendCaseMessage => "sendCaseMessage",
            Action::HoldCase => "holdCase",
            Action::ManageGrants => "manageGrants",
            Action::ListDisclosures => "listDisclosures",
            Action::ReceiveInstruction => "receiveInstruction",
        }
    }

    /// Every action, for the authorization matrix.
    pub fn all() -> Vec<Action> {
        let mut all: Vec<Action> = SECTIONS.iter().map(|s| Action::Read(*s)).collect();
        all.extend([
            Action::SendCaseMessage,
            Action::HoldCase,
            Action::ManageGrants,
            Action::ListDisclosures,
            Action::ReceiveInstruction,
        ]);
        all
    }
}

/// Who is asking: an agency as a whole (its inbox receiving a message) or one of its users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub agency_id: String,
    pub kind: AgencyKind,
    pub district: String,
    /// `None` for the agency as a whole.
    pub user: Option<PrincipalUser>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalUser {
    pub user_id: String,
    pub role: Role,
    /// "incident|role" of the open cases this user is curator of.
    pub incident_parties: Vec<String>,
}

/// What the gateway knows of a case (or of a report before it becomes one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaseFacts {
    /// The case reference, or the help request's message id for a report without a case yet.
    pub id: String,
    pub district: String,
    pub commission: String,
    pub team: Vec<String>,
    pub referrers: Vec<String>,
    pub assignees: Vec<String>,
    pub informants: Vec<String>,
    pub participants: Vec<String>,
    /// (agency, section) grants active now.
    pub agency_grants: Vec<(String, Sensitivity)>,
    /// (agency, user, section) grants active now.
    pub user_grants: Vec<(String, String, Sensitivity)>,
    pub excluded_agencies: Vec<String>,
    /// The institutions whose director a report of the case implicates (also excluded).
    pub implicated_agencies: Vec<String>,
    pub conflicting_parties: Vec<String>,
    /// The residential institutions the case's reports say the child lives in: the only ones
    /// its protection instruction may go to.
    pub residences: Vec<String>,
}

/// Why the information is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Situation {
    pub purpose: PurposeOfUse,
    pub reason_given: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read the policy file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("the policy schema {file} is invalid: {error}")]
    Schema { file: String, error: String },
    #[error("the policy file {file} does not parse: {error}")]
    Parse { file: String, error: String },
    #[error("the policy file {file} does not validate against the schema: {errors}")]
    Invalid { file: String, errors: String },
    #[error("cannot build the entities of a decision: {0}")]
    Entities(String),
}

impl From<PolicyError> for referral_core::ServiceError {
    fn from(e: PolicyError) -> Self {
        referral_core::ServiceError::internal(e)
    }
}

/// The loaded, validated policy.
pub struct PolicyEngine {
    /// The schema's action entities (the `readCase` group), built once; every decision's
    /// entities start from a copy.
    actions_only: Entities,
    policies: PolicySet,
    /// For each action and kind of principal (a user or an agency), the policies whose scope
    /// can match it. Cedar's authorizer evaluates every policy of the set it is given, each
    /// from its whole condition, and a policy whose scope does not match is not satisfied and
    /// cannot err, so a decision over its slice is the decision over the whole set, at about
    /// half the cost (`the_slices_decide_as_the_whole_policy` checks it, and the authorization
    /// matrix runs through the slices).
    slices: HashMap<(&'static str, bool), PolicySet>,
    authorizer: Authorizer,
    actions: HashMap<&'static str, EntityUid>,
    types: EntityTypes,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("policies", &self.policies.policies().count())
            .finish()
    }
}

struct EntityTypes {
    agency: EntityTypeName,
    user: EntityTypeName,
    case: EntityTypeName,
}

/// The entities of one principal and one case, built once and reused for every action asked.
pub struct Prepared {
    principal: EntityUid,
    resource: EntityUid,
    entities: Entities,
}

impl PolicyEngine {
    /// The policy shipped with the gateway.
    pub fn builtin() -> Result<Self, PolicyError> {
        Self::from_sources(BUILTIN_SCHEMA, SCHEMA_FILE, BUILTIN_POLICIES, POLICY_FILE)
    }

    /// The policy in `dir` (`need_to_know.cedarschema` and `need_to_know.cedar`), or the built-in
    /// one when `dir` is `None`.
    pub fn load(dir: Option<&Path>) -> Result<Self, PolicyError> {
        let Some(dir) = dir else {
            return Self::builtin();
        };
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|error| PolicyError::Read {
                path: path.display().to_string(),
                error,
            })
        };
        let schema_path = dir.join(SCHEMA_FILE).display().to_string();
        let policy_path = dir.join(POLICY_FILE).display().to_string();
        Self::from_sources(
            &read(SCHEMA_FILE)?,
            &schema_path,
            &read(POLICY_FILE)?,
            &policy_path,
        )
    }

    /// Parses and validates (strict mode); any error names the file.
    pub fn from_sources(
        schema_src: &str,
        schema_file: &str,
        policy_src: &str,
        policy_file: &str,
    ) -> Result<Self, PolicyError> {
        let (schema, _warnings) =
            Schema::from_cedarschema_str(schema_src).map_err(|e| PolicyError::Schema {
                file: schema_file.to_owned(),
                error: format!("{e:?}"),
            })?;
        let policies = PolicySet::from_str(policy_src).map_err(|e| PolicyError::Parse {
            file: policy_file.to_owned(),
            error: format!("{e}"),
        })?;
        let result = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        if !result.validation_passed() {
            let errors = result
                .validation_errors()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(PolicyError::Invalid {
                file: policy_file.to_owned(),
                errors,
            });
        }
        let name = |n: &str| {
            EntityTypeName::from_str(n).map_err(|e| PolicyError::Schema {
                file: schema_file.to_owned(),
                error: e.to_string(),
            })
        };
        let action_type = name("Referral::Action")?;
        let mut actions = HashMap::new();
        for action in Action::all()
            .into_iter()
            .map(Action::cedar_name)
            .chain(["readCase"])
        {
            actions.insert(
                action,
                EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(action)),
            );
        }
        let actions_only = schema.action_entities().map_err(|e| PolicyError::Schema {
            file: schema_file.to_owned(),
            error: e.to_string(),
        })?;
        let types = EntityTypes {
            agency: name("Referral::Agency")?,
            user: name("Referral::User")?,
            case: name("Referral::Case")?,
        };
        let mut slices = HashMap::new();
        // Linked templates are left whole: the set is sliced only when it holds static
        // policies alone (the shipped policy has no templates).
        if policies.templates().next().is_none() {
            for (&action, uid) in &actions {
                for (is_user, principal_type) in [(true, &types.user), (false, &types.agency)] {
                    let slice = PolicySet::from_policies(
                        policies
                            .policies()
                            .filter(|p| scope_can_match(p, uid, principal_type, &actions_only))
                            .cloned(),
                    )
                    .map_err(|e| PolicyError::Parse {
                        file: policy_file.to_owned(),
                        error: e.to_string(),
                    })?;
                    slices.insert((action, is_user), slice);
                }
            }
        }
        Ok(Self {
            actions_only,
            types,
            policies,
            slices,
            authorizer: Authorizer::new(),
            actions,
        })
    }

    /// Builds the entities of a principal and a case once.
    pub fn prepare(&self, who: &Principal, case: &CaseFacts) -> Result<Prepared, PolicyError> {
        let agency_uid = EntityUid::from_type_name_and_id(
            self.types.agency.clone(),
            EntityId::new(&who.agency_id),
        );
        let kind = who
            .kind
            .as_str_name()
            .strip_prefix("AGENCY_KIND_")
            .unwrap_or("");
        let common = |user_id: &str, role: &str, parties: &[String]| {
            HashMap::from([
                ("agencyId".to_owned(), string(&who.agency_id)),
                ("kind".to_owned(), string(&kind.to_ascii_lowercase())),
                ("district".to_owned(), string(&who.district)),
                ("userId".to_owned(), string(user_id)),
                ("role".to_owned(), string(role)),
                ("incidentParties".to_owned(), strings(parties)),
            ])
        };
        let err = |e: &dyn std::fmt::Display| PolicyError::Entities(e.to_string());
        let mut entities = Vec::with_capacity(2);
        let principal = match &who.user {
            None => {
                entities.push(
                    Entity::new(agency_uid.clone(), common("", "", &[]), HashSet::new())
                        .map_err(|e| err(&e))?,
                );
                agency_uid
            }
            Some(user) => {
                // The policy reads the principal's attributes only, never its membership in the
                // agency entity, so that entity is left out of a user's decision.
                let uid = EntityUid::from_type_name_and_id(
                    self.types.user.clone(),
                    EntityId::new(format!("{}/{}", who.agency_id, user.user_id)),
                );
                entities.push(
                    Entity::new(
                        uid.clone(),
                        common(&user.user_id, &role_name(user.role), &user.incident_parties),
                        HashSet::new(),
                    )
                    .map_err(|e| err(&e))?,
                );
                uid
            }
        };
        let resource =
            EntityUid::from_type_name_and_id(self.types.case.clone(), EntityId::new(&case.id));
        let agency_grants = case
            .agency_grants
            .iter()
            .map(|(agency, section)| {
                RestrictedExpression::new_record([
                    ("agency".to_owned(), string(agency)),
                    ("section".to_owned(), string(section_name(*section))),
                ])
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(&e))?;
        let user_grants = case
            .user_grants
            .iter()
            .map(|(agency, user, section)| {
                RestrictedExpression::new_record([
                    ("agency".to_owned(), string(agency)),
                    ("user".to_owned(), string(user)),
                    ("section".to_owned(), string(section_name(*section))),
                ])
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(&e))?;
        let attrs = HashMap::from([
            ("district".to_owned(), string(&case.district)),
            ("commission".to_owned(), string(&case.commission)),
            ("team".to_owned(), strings(&case.team)),
            ("referrers".to_owned(), strings(&case.referrers)),
            ("assignees".to_owned(), strings(&case.assignees)),
            ("informants".to_owned(), strings(&case.informants)),
            ("participants".to_owned(), strings(&case.participants)),
            (
                "agencyGrants".to_owned(),
                RestrictedExpression::new_set(agency_grants),
            ),
            (
                "userGrants".to_owned(),
                RestrictedExpression::new_set(user_grants),
            ),
            (
                "excludedAgencies".to_owned(),
                strings(&case.excluded_agencies),
            ),
            (
                "implicatedAgencies".to_owned(),
                strings(&case.implicated_agencies),
            ),
            (
                "conflictingParties".to_owned(),
                strings(&case.conflicting_parties),
            ),
            ("residences".to_owned(), strings(&case.residences)),
        ]);
        entities.push(Entity::new(resource.clone(), attrs, HashSet::new()).map_err(|e| err(&e))?);
        // Not checked against the schema on every decision (that doubles its cost): the entities
        // are built here only, and `the_entities_conform_to_the_schema` checks them once. A value
        // of the wrong type would make a policy error, and an error is a denial.
        let entities = self
            .actions_only
            .clone()
            .add_entities(entities, None)
            .map_err(|e| err(&e))?;
        Ok(Prepared {
            principal,
            resource,
            entities,
        })
    }

    /// One decision. An error building the request (which a valid schema makes impossible) is a
    /// denial.
    pub fn is_allowed(&self, prepared: &Prepared, action: Action, situation: Situation) -> bool {
        let is_user = prepared.principal.type_name() == &self.types.user;
        let policies = self
            .slices
            .get(&(action.cedar_name(), is_user))
            .unwrap_or(&self.policies);
        self.is_allowed_under(policies, prepared, action, situation)
    }

    /// One decision over `policies`.
    fn is_allowed_under(
        &self,
        policies: &PolicySet,
        prepared: &Prepared,
        action: Action,
        situation: Situation,
    ) -> bool {
        let section = match action {
            Action::Read(s) => section_name(s),
            _ => "",
        };
        let Some(action_uid) = self.actions.get(action.cedar_name()) else {
            return false;
        };
        let context = Context::from_pairs([
            (
                "purpose".to_owned(),
                string(purpose_name(situation.purpose)),
            ),
            (
                "reasonGiven".to_owned(),
                RestrictedExpression::new_bool(situation.reason_given),
            ),
            ("section".to_owned(), string(section)),
        ]);
        let Ok(context) = context else {
            return false;
        };
        let Ok(request) = Request::new(
            prepared.principal.clone(),
            action_uid.clone(),
            prepared.resource.clone(),
            context,
            None,
        ) else {
            return false;
        };
        self.authorizer
            .is_authorized(&request, policies, &prepared.entities)
            .decision()
            == Decision::Allow
    }

    /// One decision, building the entities for it.
    pub fn decide(
        &self,
        who: &Principal,
        action: Action,
        case: &CaseFacts,
        situation: Situation,
    ) -> Result<bool, PolicyError> {
        let prepared = self.prepare(who, case)?;
        Ok(self.is_allowed(&prepared, action, situation))
    }

    /// The sections this principal may read of the case in this situation.
    pub fn readable_sections(
        &self,
        who: &Principal,
        case: &CaseFacts,
        situation: Situation,
    ) -> Result<Sections, PolicyError> {
        let prepared = self.prepare(who, case)?;
        Ok(SECTIONS
            .iter()
            .copied()
            .filter(|s| self.is_allowed(&prepared, Action::Read(*s), situation))
            .collect())
    }
}

/// Whether a policy's scope can match requests of this action by a principal of this type:
/// its action constraint admits the action (equal, or in one of its listed groups in the
/// schema's action hierarchy) and its principal constraint admits the type. What this cannot
/// rule out (a principal `in` an entity) is kept, and evaluated as usual.
fn scope_can_match(
    policy: &Policy,
    action: &EntityUid,
    principal_type: &EntityTypeName,
    actions: &Entities,
) -> bool {
    let action_matches = match policy.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(a) => &a == action,
        ActionConstraint::In(groups) => groups
            .iter()
            .any(|g| g == action || actions.is_ancestor_of(g, action)),
    };
    let principal_matches = match policy.principal_constraint() {
        PrincipalConstraint::Is(t) | PrincipalConstraint::IsIn(t, _) => &t == principal_type,
        PrincipalConstraint::Eq(uid) => uid.type_name() == principal_type,
        PrincipalConstraint::Any | PrincipalConstraint::In(_) => true,
    };
    action_matches && principal_matches
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_owned())
}

fn strings(values: &[String]) -> RestrictedExpression {
    RestrictedExpression::new_set(values.iter().map(|v| string(v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn situation(purpose: PurposeOfUse) -> Situation {
        Situation {
            purpose,
            reason_given: false,
        }
    }

    fn case() -> CaseFacts {
        CaseFacts {
            id: "C-1".into(),
            district: "d1".into(),
            commission: "commission-1".into(),
            team: vec!["curator-1".into()],
            referrers: vec!["school-1".into()],
            assignees: vec!["ngo-1".into()],
            ..CaseFacts::default()
        }
    }

    fn user(agency: &str, kind: AgencyKind, id: &str, role: Role) -> Principal {
        Principal {
            agency_id: agency.into(),
            kind,
            district: "d1".into(),
            user: Some(PrincipalUser {
                user_id: id.into(),
                role,
                incident_parties: vec![],
            }),
        }
    }

    #[test]
    fn the_builtin_policy_validates_and_the_curator_reads_everything() {
        let engine = PolicyEngine::builtin().unwrap();
        let curator = user(
            "commission-1",
            AgencyKind::Commission,
            "curator-1",
            Role::CommissionCurator,
        );
        let sections = engine
            .readable_sections(&curator, &case(), situation(PurposeOfUse::CareManagement))
            .unwrap();
        assert_eq!(sections, Sections::all());
        let school = user(
            "school-1",
            AgencyKind::School,
            "director",
            Role::SchoolDirector,
        );
        let sections = engine
            .readable_sections(
                &school,
                &case(),
                situation(PurposeOfUse::CoordinationOfCare),
            )
            .unwrap();
        assert_eq!(
            sections,
            [Sensitivity::CaseStatus, Sensitivity::Contact]
                .into_iter()
                .collect()
        );
    }

    #[test]
    fn the_entities_conform_to_the_schema() {
        let engine = PolicyEngine::builtin().unwrap();
        let mut facts = case();
        facts
            .agency_grants
            .push(("ngo-1".into(), Sensitivity::Assessment));
        facts
            .user_grants
            .push(("ngo-1".into(), "m".into(), Sensitivity::Plan));
        facts.conflicting_parties.push("I-1|VICTIM".into());
        for who in [
            user("ngo-1", AgencyKind::Ngo, "m", Role::NgoCaseManager),
            Principal {
                user: None,
                ..user("ngo-1", AgencyKind::Ngo, "m", Role::NgoCaseManager)
            },
        ] {
            let prepared = engine.prepare(&who, &facts).unwrap();
            let entities: Vec<Entity> = prepared
                .entities
                .into_iter()
                .filter(|e| e.uid().type_name().basename() != "Action")
                .collect();
            let (schema, _) = Schema::from_cedarschema_str(BUILTIN_SCHEMA).unwrap();
            Entities::from_entities(entities, Some(&schema))
                .expect("the entities a decision builds conform to the schema");
            for action in Action::all() {
                let context = Context::from_pairs([
                    ("purpose".to_owned(), string("COORDINATION_OF_CARE")),
                    (
                        "reasonGiven".to_owned(),
                        RestrictedExpression::new_bool(false),
                    ),
                    ("section".to_owned(), string("")),
                ])
                .unwrap();
                let principal = prepared.principal.clone();
                // Reads apply to both; receiving an instruction to an agency's inbox only; the
                // rest to users only.
                let applies = match action {
                    Action::Read(_) => true,
                    Action::ReceiveInstruction => who.user.is_none(),
                    _ => who.user.is_some(),
                };
                let request = Request::new(
                    principal,
                    engine.actions[action.cedar_name()].clone(),
                    prepared.resource.clone(),
                    context,
                    Some(&schema),
                );
                assert_eq!(request.is_ok(), applies, "{action:?}");
            }
        }
    }

    #[test]
    fn an_invalid_policy_is_refused_with_the_file_named() {
        let bad = "permit (principal, action, resource) when { resource.nosuch == \"x\" };";
        let err = PolicyEngine::from_sources(BUILTIN_SCHEMA, "s.cedarschema", bad, "p.cedar")
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("p.cedar"), "{text}");
        assert!(matches!(err, PolicyError::Invalid { .. }), "{text}");
        let err =
            PolicyEngine::from_sources(BUILTIN_SCHEMA, "s", "permit (", "p.cedar").unwrap_err();
        assert!(matches!(err, PolicyError::Parse { .. }));
    }

    #[test]
    fn an_excluded_agency_is_refused_whatever_else_allows_it() {
        let engine = PolicyEngine::builtin().unwrap();
        let mut facts = case();
        facts.excluded_agencies.push("ngo-1".into());
        facts
            .agency_grants
            .push(("ngo-1".into(), Sensitivity::Assessment));
        let ngo = user("ngo-1", AgencyKind::Ngo, "m", Role::NgoCaseManager);
        let sections = engine
            .readable_sections(&ngo, &facts, situation(PurposeOfUse::CoordinationOfCare))
            .unwrap();
        assert!(sections.is_empty());
    }

    /// A decision over a slice is the decision over the whole policy set, whoever asks, about
    /// whatever case, for every action, purpose and reason.
    #[test]
    fn the_slices_decide_as_the_whole_policy() {
        let engine = PolicyEngine::builtin().unwrap();
        assert!(!engine.slices.is_empty(), "the built-in policy is sliced");
        let principals = [
            user(
                "commission-1",
                AgencyKind::Commission,
                "curator-1",
                Role::CommissionCurator,
            ),
            user(
                "commission-1",
                AgencyKind::Commission,
                "chair-1",
                Role::CommissionChair,
            ),
            user(
                "commission-1",
                AgencyKind::Commission,
                "secretary-1",
                Role::CommissionSecretary,
            ),
            user(
                "school-1",
                AgencyKind::School,
                "director-1",
                Role::SchoolDirector,
            ),
            user("ngo-1", AgencyKind::Ngo, "manager-1", Role::NgoCaseManager),
            user(
                "police-1",
                AgencyKind::Police,
                "inspector-1",
                Role::PoliceJuvenileInspector,
            ),
            user(
                "residential-1",
                AgencyKind::Residential,
                "director-2",
                Role::InstitutionDirector,
            ),
            Principal {
                user: None,
                ..user(
                    "commission-1",
                    AgencyKind::Commission,
                    "",
                    Role::Unspecified,
                )
            },
            Principal {
                user: None,
                ..user(
                    "residential-1",
                    AgencyKind::Residential,
                    "",
                    Role::Unspecified,
                )
            },
        ];
        let mut cases = vec![case()];
        let mut informed = case();
        informed.informants.push("police-1".into());
        informed
            .agency_grants
            .push(("school-1".into(), Sensitivity::Assessment));
        informed
            .user_grants
            .push(("ngo-1".into(), "manager-1".into(), Sensitivity::Plan));
        informed.residences.push("residential-1".into());
        cases.push(informed);
        let mut barred = case();
        barred.excluded_agencies.push("school-1".into());
        barred.implicated_agencies.push("residential-1".into());
        barred.district = "d2".into();
        cases.push(barred);
        let (mut allowed, mut denied) = (0, 0);
        for who in &principals {
            for facts in &cases {
                let prepared = engine.prepare(who, facts).unwrap();
                for purpose in (0..=7).filter_map(|p| PurposeOfUse::try_from(p).ok()) {
                    for reason_given in [false, true] {
                        let situation = Situation {
                            purpose,
                            reason_given,
                        };
                        for action in Action::all() {
                            let sliced = engine.is_allowed(&prepared, action, situation);
                            let whole = engine.is_allowed_under(
                                &engine.policies,
                                &prepared,
                                action,
                                situation,
                            );
                            assert_eq!(
                                sliced, whole,
                                "{who:?} {action:?} {situation:?} on {facts:?}"
                            );
                            if whole {
                                allowed += 1;
                            } else {
                                denied += 1;
                            }
                        }
                    }
                }
            }
        }
        assert!(
            allowed > 100 && denied > 100,
            "{allowed} allowed, {denied} denied"
        );
    }
}
