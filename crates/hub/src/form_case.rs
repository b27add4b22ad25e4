//! The commission's long forms as people write them: the assessment L (`file-l --file`), the
//! support plan M (`file-m --file`) and a review meeting (`review --file`), each a serde struct
//! that mirrors its protobuf message, read from TOML or JSON, and mapped onto the message the
//! commission validates. `case --json` prints filed forms in the same shapes.
//!
//! Dates may be written relative to today (`today`, `+30d`, `-7d`, see [`crate::dates`]), so the
//! example files in `crates/hub/examples/` stay valid whatever day they are used on. Nothing is
//! validated here beyond the shape: the service checks every field and names each bad one.

use std::path::Path;

use anyhow::anyhow;
use clap::ValueEnum;
use jiff::{Timestamp, civil::Date};
use referral_core::validate::{calendar_date, to_calendar_date};
use referral_proto::v1::{
    ActionProgressState, Assessment, CalendarDate, ChronologyEntry, ClosureCriterion,
    ContactMethod, DeadlineState, FamilyMember, PlanAction, PlanChild, PlanParent, PlanReview,
    ReviewDecision, RiskLevel, Sex, Signature, Specialist, SupportPlan,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    dates::{DateSpec, SignedAt},
    form_k::SexArg,
};

/// Reads a form from a `.json` file, or TOML otherwise. `what` names the form in errors, which
/// name the line and the field but never echo a value.
pub fn read_form<T: DeserializeOwned>(path: &Path, what: &str) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
    parse_form(&text, path, what)
}

/// Parses a form; the format follows the file's extension (`.json`, otherwise TOML).
pub fn parse_form<T: DeserializeOwned>(text: &str, path: &Path, what: &str) -> anyhow::Result<T> {
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if is_json {
        serde_json::from_str(text)
            .map_err(|e| anyhow!("{} is not a valid {what}: {e}", path.display()))
    } else {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|span| format!(" (line {})", text[..span.start].matches('\n').count() + 1))
                .unwrap_or_default();
            anyhow!(
                "{} is not a valid {what}{line}: {}",
                path.display(),
                e.message().trim()
            )
        })
    }
}

fn date(spec: Option<DateSpec>, today: Date) -> Option<CalendarDate> {
    spec.map(|s| to_calendar_date(s.resolve(today)))
}

fn spec(date: Option<&CalendarDate>) -> Option<DateSpec> {
    date.and_then(calendar_date).map(DateSpec::On)
}

fn timestamp(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    }
}

// ---------------------------------------------------------------------------------------------
// Enumerations, as flags and file values.
// ---------------------------------------------------------------------------------------------

/// The level of risk to the child (M:2972-3017).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskArg {
    None,
    Low,
    Medium,
    High,
}

impl RiskArg {
    pub fn to_proto(self) -> RiskLevel {
        match self {
            Self::None => RiskLevel::None,
            Self::Low => RiskLevel::Low,
            Self::Medium => RiskLevel::Medium,
            Self::High => RiskLevel::High,
        }
    }
}

/// How a contact took place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum ContactMethodArg {
    Phone,
    InPerson,
    HomeVisit,
    Letter,
    Meeting,
    Other,
}

impl ContactMethodArg {
    pub fn to_proto(self) -> ContactMethod {
        match self {
            Self::Phone => ContactMethod::Phone,
            Self::InPerson => ContactMethod::InPerson,
            Self::HomeVisit => ContactMethod::HomeVisit,
            Self::Letter => ContactMethod::Letter,
            Self::Meeting => ContactMethod::Meeting,
            Self::Other => ContactMethod::Other,
        }
    }
}

/// A criterion for closing a case (M:2540-2555).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum ClosureArg {
    RiskReduced,
    SituationStable,
    MinimalNeedsMet,
    ParentsAbleToCare,
    FamilyRelationsImproved,
}

impl ClosureArg {
    pub fn to_proto(self) -> ClosureCriterion {
        match self {
            Self::RiskReduced => ClosureCriterion::RiskReduced,
            Self::SituationStable => ClosureCriterion::SituationStable,
            Self::MinimalNeedsMet => ClosureCriterion::MinimalNeedsMet,
            Self::ParentsAbleToCare => ClosureCriterion::ParentsAbleToCare,
            Self::FamilyRelationsImproved => ClosureCriterion::FamilyRelationsImproved,
        }
    }
}

/// What an agency reports on an action row assigned to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum ProgressArg {
    InProgress,
    Completed,
    CannotComplete,
}

impl ProgressArg {
    pub fn to_proto(self) -> ActionProgressState {
        match self {
            Self::InProgress => ActionProgressState::InProgress,
            Self::Completed => ActionProgressState::Completed,
            Self::CannotComplete => ActionProgressState::CannotComplete,
        }
    }
}

/// The state of a deadline, for `deadlines --state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum DeadlineStateArg {
    Pending,
    Warned,
    Due,
    Overdue,
    Escalated,
    Met,
    Cancelled,
}

impl DeadlineStateArg {
    pub fn to_proto(self) -> DeadlineState {
        match self {
            Self::Pending => DeadlineState::Pending,
            Self::Warned => DeadlineState::Warned,
            Self::Due => DeadlineState::Due,
            Self::Overdue => DeadlineState::Overdue,
            Self::Escalated => DeadlineState::Escalated,
            Self::Met => DeadlineState::Met,
            Self::Cancelled => DeadlineState::Cancelled,
        }
    }
}

/// The decision of a review meeting (M:2508-2525).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewDecisionArg {
    ContinueWithChanges,
    /// Only at a commission meeting: the secretary or the chair records it.
    RecommendPlacementOrSeparation,
    ContinueResidentialCare,
    EndSupport,
}

impl ReviewDecisionArg {
    pub fn to_proto(self) -> ReviewDecision {
        match self {
            Self::ContinueWithChanges => ReviewDecision::ContinueWithChanges,
            Self::RecommendPlacementOrSeparation => ReviewDecision::RecommendPlacementOrSeparation,
            Self::ContinueResidentialCare => ReviewDecision::ContinueResidentialCare,
            Self::EndSupport => ReviewDecision::EndSupport,
        }
    }

    pub fn from_proto(decision: i32) -> Option<Self> {
        Some(match ReviewDecision::try_from(decision).ok()? {
            ReviewDecision::ContinueWithChanges => Self::ContinueWithChanges,
            ReviewDecision::RecommendPlacementOrSeparation => Self::RecommendPlacementOrSeparation,
            ReviewDecision::ContinueResidentialCare => Self::ContinueResidentialCare,
            ReviewDecision::EndSupport => Self::EndSupport,
            ReviewDecision::Unspecified => return None,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Parts shared by the forms.
// ---------------------------------------------------------------------------------------------

/// A signature block: who signs, and when (the time of sending when absent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignatureFile {
    pub signer_name: String,
    pub signed_at: SignedAt,
}

impl SignatureFile {
    fn to_proto(&self, now: Timestamp) -> Signature {
        Signature {
            signer_name: self.signer_name.clone(),
            signed_at: Some(timestamp(self.signed_at.resolve(now))),
        }
    }

    fn from_proto(s: &Signature) -> Self {
        Self {
            signer_name: s.signer_name.clone(),
            signed_at: s
                .signed_at
                .as_ref()
                .and_then(|t| Timestamp::new(t.seconds, t.nanos).ok())
                .map_or(SignedAt::Now, SignedAt::At),
        }
    }
}

/// One action row of a plan or a review.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActionFile {
    /// № of the row, unique within the plan, from 1.
    pub number: u32,
    pub action: String,
    /// When: the row's due date, today or later.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_on: Option<DateSpec>,
    pub responsible_person: String,
    /// An agency of the district, or the commission's own id for its own rows.
    pub responsible_agency_id: String,
    /// How it is carried out.
    pub method: String,
}

impl ActionFile {
    pub fn to_proto(&self, today: Date) -> PlanAction {
        PlanAction {
            number: self.number,
            action: self.action.clone(),
            due_on: date(self.due_on, today),
            responsible_person: self.responsible_person.clone(),
            responsible_agency_id: self.responsible_agency_id.clone(),
            method: self.method.clone(),
        }
    }

    pub fn from_proto(a: &PlanAction) -> Self {
        Self {
            number: a.number,
            action: a.action.clone(),
            due_on: spec(a.due_on.as_ref()),
            responsible_person: a.responsible_person.clone(),
            responsible_agency_id: a.responsible_agency_id.clone(),
            method: a.method.clone(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// L: comprehensive assessment of the child's needs (L ҚОСЫМШАСЫ).
// ---------------------------------------------------------------------------------------------

/// Form L in a file. See `crates/hub/examples/l-example.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AssessmentFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assessed_on: Option<DateSpec>,
    pub responsible_person: String,
    pub others_involved: Vec<String>,
    // The child's health and development.
    pub physical_health: String,
    pub emotional_development: String,
    pub behavioural_development: String,
    pub relationships: String,
    pub self_care: String,
    // The parents' care.
    pub ability_to_keep_safe: String,
    pub stability_and_supervision: String,
    pub parents_understanding_and_will_to_change: String,
    // Living conditions.
    pub relatives_and_friends: String,
    pub access_to_local_services: String,
    pub housing: String,
    pub income: String,
    // The social worker's analysis.
    pub family_strengths: String,
    pub family_weaknesses: String,
    pub concerns_and_risks: String,
    pub likely_consequences: String,
    pub effect_on_parents: String,
    pub capacity_to_keep_child_safe: String,
    pub capacity_to_change: String,
    pub help_needed: String,
    pub recommendations: String,
    // The family's comment, and when the results were discussed with them.
    pub family_comment: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discussed_with_family_on: Option<DateSpec>,
    pub discussion_participants: Vec<String>,
    /// The child ("child") and the family members.
    pub family: Vec<FamilyMemberFile>,
    /// Family history and earlier interventions, oldest first.
    pub history: Vec<ChronologyFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family_signature: Option<SignatureFile>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FamilyMemberFile {
    pub full_name: String,
    /// "child" for the child; mother, father, grandmother, sibling...
    pub relation: String,
    pub age_years: u32,
    pub address: String,
    pub occupation: String,
    pub phone: String,
    pub email: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChronologyFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date: Option<DateSpec>,
    pub event: String,
}

impl AssessmentFile {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        read_form(path, "assessment L")
    }

    /// The protobuf form: relative dates resolved on `today`, signatures without a time signed
    /// at `now`.
    pub fn to_proto(&self, today: Date, now: Timestamp) -> Assessment {
        Assessment {
            family: self
                .family
                .iter()
                .map(|m| FamilyMember {
                    full_name: m.full_name.clone(),
                    relation: m.relation.clone(),
                    age_years: m.age_years,
                    address: m.address.clone(),
                    occupation: m.occupation.clone(),
                    phone: m.phone.clone(),
                    email: m.email.clone(),
                })
                .collect(),
            assessed_on: date(self.assessed_on, today),
            responsible_person: self.responsible_person.clone(),
            others_involved: self.others_involved.clone(),
            history: self
                .history
                .iter()
                .map(|h| ChronologyEntry {
                    date: date(h.date, today),
                    event: h.event.clone(),
                })
                .collect(),
            physical_health: self.physical_health.clone(),
            emotional_development: self.emotional_development.clone(),
            behavioural_development: self.behavioural_development.clone(),
            relationships: self.relationships.clone(),
            self_care: self.self_care.clone(),
            ability_to_keep_safe: self.ability_to_keep_safe.clone(),
            stability_and_supervision: self.stability_and_supervision.clone(),
            parents_understanding_and_will_to_change: self
                .parents_understanding_and_will_to_change
                .clone(),
            relatives_and_friends: self.relatives_and_friends.clone(),
            access_to_local_services: self.access_to_local_services.clone(),
            housing: self.housing.clone(),
            income: self.income.clone(),
            family_strengths: self.family_strengths.clone(),
            family_weaknesses: self.family_weaknesses.clone(),
            concerns_and_risks: self.concerns_and_risks.clone(),
            likely_consequences: self.likely_consequences.clone(),
            effect_on_parents: self.effect_on_parents.clone(),
            capacity_to_keep_child_safe: self.capacity_to_keep_child_safe.clone(),
            capacity_to_change: self.capacity_to_change.clone(),
            help_needed: self.help_needed.clone(),
            recommendations: self.recommendations.clone(),
            family_comment: self.family_comment.clone(),
            family_signature: self.family_signature.as_ref().map(|s| s.to_proto(now)),
            discussed_with_family_on: date(self.discussed_with_family_on, today),
            discussion_participants: self.discussion_participants.clone(),
        }
    }

    /// The file form of a filed L (for `case --json`, and to start a new L from an old one).
    pub fn from_proto(l: &Assessment) -> Self {
        Self {
            assessed_on: spec(l.assessed_on.as_ref()),
            responsible_person: l.responsible_person.clone(),
            others_involved: l.others_involved.clone(),
            physical_health: l.physical_health.clone(),
            emotional_development: l.emotional_development.clone(),
            behavioural_development: l.behavioural_development.clone(),
            relationships: l.relationships.clone(),
            self_care: l.self_care.clone(),
            ability_to_keep_safe: l.ability_to_keep_safe.clone(),
            stability_and_supervision: l.stability_and_supervision.clone(),
            parents_understanding_and_will_to_change: l
                .parents_understanding_and_will_to_change
                .clone(),
            relatives_and_friends: l.relatives_and_friends.clone(),
            access_to_local_services: l.access_to_local_services.clone(),
            housing: l.housing.clone(),
            income: l.income.clone(),
            family_strengths: l.family_strengths.clone(),
            family_weaknesses: l.family_weaknesses.clone(),
            concerns_and_risks: l.concerns_and_risks.clone(),
            likely_consequences: l.likely_consequences.clone(),
            effect_on_parents: l.effect_on_parents.clone(),
            capacity_to_keep_child_safe: l.capacity_to_keep_child_safe.clone(),
            capacity_to_change: l.capacity_to_change.clone(),
            help_needed: l.help_needed.clone(),
            recommendations: l.recommendations.clone(),
            family_comment: l.family_comment.clone(),
            discussed_with_family_on: spec(l.discussed_with_family_on.as_ref()),
            discussion_participants: l.discussion_participants.clone(),
            family: l
                .family
                .iter()
                .map(|m| FamilyMemberFile {
                    full_name: m.full_name.clone(),
                    relation: m.relation.clone(),
                    age_years: m.age_years,
                    address: m.address.clone(),
                    occupation: m.occupation.clone(),
                    phone: m.phone.clone(),
                    email: m.email.clone(),
                })
                .collect(),
            history: l
                .history
                .iter()
                .map(|h| ChronologyFile {
                    date: spec(h.date.as_ref()),
                    event: h.event.clone(),
                })
                .collect(),
            family_signature: l.family_signature.as_ref().map(SignatureFile::from_proto),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// M: individual support plan (M ҚОСЫМШАСЫ).
// ---------------------------------------------------------------------------------------------

/// Form M in a file. See `crates/hub/examples/m-example.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupportPlanFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_date: Option<DateSpec>,
    /// Main needs of the child and family, highest priority first.
    pub needs: Vec<String>,
    pub recommendations: String,
    pub child: PlanChildFile,
    pub parents: Vec<PlanParentFile>,
    pub specialists: Vec<SpecialistFile>,
    pub actions: Vec<ActionFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub social_worker_signature: Option<SignatureFile>,
    /// Reviews held on the plan (shown by `case --json`); a new plan has none: reviews are
    /// recorded with `review`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reviews: Vec<ReviewFile>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlanChildFile {
    pub full_name: String,
    pub age_years: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sex: Option<SexArg>,
    pub address: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlanParentFile {
    pub full_name: String,
    pub age_years: u32,
    pub social_status: String,
    pub contacts: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpecialistFile {
    pub full_name: String,
    pub organisation: String,
    pub contacts: String,
}

impl SupportPlanFile {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        read_form(path, "support plan M")
    }

    pub fn to_proto(&self, today: Date, now: Timestamp) -> SupportPlan {
        SupportPlan {
            parents: self
                .parents
                .iter()
                .map(|p| PlanParent {
                    full_name: p.full_name.clone(),
                    age_years: p.age_years,
                    social_status: p.social_status.clone(),
                    contacts: p.contacts.clone(),
                })
                .collect(),
            child: Some(PlanChild {
                full_name: self.child.full_name.clone(),
                age_years: self.child.age_years,
                sex: self.child.sex.map_or(Sex::Unspecified, SexArg::to_proto) as i32,
                address: self.child.address.clone(),
            }),
            report_date: date(self.report_date, today),
            needs: self.needs.clone(),
            specialists: self
                .specialists
                .iter()
                .map(|s| Specialist {
                    full_name: s.full_name.clone(),
                    organisation: s.organisation.clone(),
                    contacts: s.contacts.clone(),
                })
                .collect(),
            actions: self.actions.iter().map(|a| a.to_proto(today)).collect(),
            recommendations: self.recommendations.clone(),
            social_worker_signature: self
                .social_worker_signature
                .as_ref()
                .map(|s| s.to_proto(now)),
            reviews: self.reviews.iter().map(|r| r.to_proto(today)).collect(),
        }
    }

    pub fn from_proto(m: &SupportPlan) -> Self {
        let child = m.child.clone().unwrap_or_default();
        Self {
            report_date: spec(m.report_date.as_ref()),
            needs: m.needs.clone(),
            recommendations: m.recommendations.clone(),
            child: PlanChildFile {
                full_name: child.full_name,
                age_years: child.age_years,
                sex: SexArg::from_proto(child.sex),
                address: child.address,
            },
            parents: m
                .parents
                .iter()
                .map(|p| PlanParentFile {
                    full_name: p.full_name.clone(),
                    age_years: p.age_years,
                    social_status: p.social_status.clone(),
                    contacts: p.contacts.clone(),
                })
                .collect(),
            specialists: m
                .specialists
                .iter()
                .map(|s| SpecialistFile {
                    full_name: s.full_name.clone(),
                    organisation: s.organisation.clone(),
                    contacts: s.contacts.clone(),
                })
                .collect(),
            actions: m.actions.iter().map(ActionFile::from_proto).collect(),
            social_worker_signature: m
                .social_worker_signature
                .as_ref()
                .map(SignatureFile::from_proto),
            reviews: m.reviews.iter().map(ReviewFile::from_proto).collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A review meeting of the plan.
// ---------------------------------------------------------------------------------------------

/// A review meeting in a file. See `crates/hub/examples/review-example.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReviewFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meeting_on: Option<DateSpec>,
    pub participants: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<ReviewDecisionArg>,
    /// Fixed at the meeting: after it, at most 6 months on; may be left out when support ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_review_on: Option<DateSpec>,
    pub signed_by: Vec<String>,
    /// The rows in force from now on, replacing the plan's; leave out to keep the rows as they are.
    pub revised_actions: Vec<ActionFile>,
}

impl ReviewFile {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        read_form(path, "review")
    }

    pub fn to_proto(&self, today: Date) -> PlanReview {
        PlanReview {
            meeting_on: date(self.meeting_on, today),
            participants: self.participants.clone(),
            decision: self
                .decision
                .map_or(ReviewDecision::Unspecified, ReviewDecisionArg::to_proto)
                as i32,
            revised_actions: self
                .revised_actions
                .iter()
                .map(|a| a.to_proto(today))
                .collect(),
            next_review_on: date(self.next_review_on, today),
            signed_by: self.signed_by.clone(),
        }
    }

    pub fn from_proto(r: &PlanReview) -> Self {
        Self {
            meeting_on: spec(r.meeting_on.as_ref()),
            participants: r.participants.clone(),
            decision: ReviewDecisionArg::from_proto(r.decision),
            next_review_on: spec(r.next_review_on.as_ref()),
            signed_by: r.signed_by.clone(),
            revised_actions: r
                .revised_actions
                .iter()
                .map(ActionFile::from_proto)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use jiff::civil::date as civil;
    use referral_commission::validation::{self, District};
    use referral_core::{FieldViolations, directory::Directory};
    use referral_proto::v1::{FileAssessmentRequest, FileSupportPlanRequest, RecordReviewRequest};

    use super::*;

    fn example(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name)
    }

    /// A Monday morning in Almaty, and a day at the end of February (month arithmetic).
    fn days() -> [(Date, Timestamp); 2] {
        [
            (civil(2026, 3, 2), "2026-03-02T04:00:00Z".parse().unwrap()),
            (civil(2027, 2, 27), "2027-02-27T13:00:00Z".parse().unwrap()),
        ]
    }

    fn directory() -> Directory {
        Directory::parse(crate::settings::EMBEDDED_DIRECTORY).unwrap()
    }

    fn district(directory: &Directory, today: Date) -> District<'_> {
        District {
            directory,
            district_id: "demo-district",
            commission_id: "commission",
            today,
        }
    }

    fn cd(d: Date) -> Option<CalendarDate> {
        Some(to_calendar_date(d))
    }

    fn civil_of(d: Option<&CalendarDate>) -> Date {
        d.and_then(calendar_date).expect("a real date")
    }

    #[test]
    fn the_l_example_maps_onto_every_section_and_passes_the_commissions_checks() {
        let file = AssessmentFile::read(&example("l-example.toml")).unwrap();
        for (today, now) in days() {
            let l = file.to_proto(today, now);
            assert_eq!(l.assessed_on, cd(today));
            assert_eq!(l.discussed_with_family_on, cd(today));
            assert!(l.family.iter().any(|m| m.relation == "child"));
            assert!(l.family.len() >= 2);
            assert_eq!(l.history.len(), 2);
            assert!(l.history.iter().all(|h| civil_of(h.date.as_ref()) < today));
            assert!(
                civil_of(l.history[0].date.as_ref()) < civil_of(l.history[1].date.as_ref()),
                "oldest first"
            );
            assert!(!l.discussion_participants.is_empty());
            let signature = l.family_signature.as_ref().unwrap();
            assert_eq!(signature.signed_at, Some(timestamp(now)), "signed now");
            for (field, value) in [
                ("physical_health", &l.physical_health),
                ("emotional_development", &l.emotional_development),
                ("behavioural_development", &l.behavioural_development),
                ("relationships", &l.relationships),
                ("self_care", &l.self_care),
                ("ability_to_keep_safe", &l.ability_to_keep_safe),
                ("stability_and_supervision", &l.stability_and_supervision),
                (
                    "parents_understanding_and_will_to_change",
                    &l.parents_understanding_and_will_to_change,
                ),
                ("relatives_and_friends", &l.relatives_and_friends),
                ("access_to_local_services", &l.access_to_local_services),
                ("housing", &l.housing),
                ("income", &l.income),
                ("family_comment", &l.family_comment),
            ] {
                assert!(!value.trim().is_empty(), "{field} is empty in the example");
            }
            let request = FileAssessmentRequest {
                case_reference: "KTIZhK-2026-000001".into(),
                base_version: 2,
                assessment: Some(l.clone()),
                risk_level: RiskArg::Medium.to_proto() as i32,
            };
            let mut v = FieldViolations::new();
            validation::assessment(&mut v, &request, today, now);
            assert!(v.is_empty(), "on {today}: {v}");
            // And back: the file form of the filed L gives the same L.
            assert_eq!(AssessmentFile::from_proto(&l).to_proto(today, now), l);
        }
    }

    #[test]
    fn the_m_example_has_rows_for_the_ngo_and_the_school_and_passes_the_checks() {
        let file = SupportPlanFile::read(&example("m-example.toml")).unwrap();
        let directory = directory();
        for (today, now) in days() {
            let m = file.to_proto(today, now);
            let agencies: Vec<&str> = m
                .actions
                .iter()
                .map(|a| a.responsible_agency_id.as_str())
                .collect();
            assert!(agencies.contains(&"ngo-1") && agencies.contains(&"school-1"));
            for a in &m.actions {
                assert!(a.number > 0 && !a.action.is_empty() && !a.method.is_empty());
                assert!(!a.responsible_person.is_empty());
                assert!(
                    civil_of(a.due_on.as_ref()) >= today,
                    "row {} is due before today",
                    a.number
                );
            }
            assert_eq!(m.report_date, cd(today));
            let child = m.child.as_ref().unwrap();
            assert_eq!(child.sex, Sex::Female as i32);
            assert!(m.needs.len() >= 2 && m.reviews.is_empty());
            let request = FileSupportPlanRequest {
                case_reference: "KTIZhK-2026-000001".into(),
                base_version: 3,
                idempotency_key: "0b0e7c1e-5d7a-4b7e-9f57-1b8b1c2d3e4f".into(),
                plan: Some(m.clone()),
                first_review_on: Some(to_calendar_date(
                    "+90d".parse::<DateSpec>().unwrap().resolve(today),
                )),
            };
            let mut v = FieldViolations::new();
            validation::support_plan(&mut v, &request, &district(&directory, today), now);
            assert!(v.is_empty(), "on {today}: {v}");
            assert_eq!(SupportPlanFile::from_proto(&m).to_proto(today, now), m);
        }
    }

    #[test]
    fn the_review_example_fixes_the_next_review_and_passes_the_checks() {
        let file = ReviewFile::read(&example("review-example.toml")).unwrap();
        let directory = directory();
        for (today, _) in days() {
            let review = file.to_proto(today);
            assert_eq!(review.meeting_on, cd(today));
            assert!(civil_of(review.next_review_on.as_ref()) > today);
            assert_eq!(review.decision, ReviewDecision::ContinueWithChanges as i32);
            assert!(!review.participants.is_empty() && !review.signed_by.is_empty());
            assert!(!review.revised_actions.is_empty());
            let request = RecordReviewRequest {
                case_reference: "KTIZhK-2026-000001".into(),
                base_version: 5,
                idempotency_key: "0b0e7c1e-5d7a-4b7e-9f57-1b8b1c2d3e50".into(),
                review: Some(review.clone()),
                participating_agency_ids: vec!["ngo-1".into(), "school-1".into()],
            };
            let mut v = FieldViolations::new();
            validation::review(&mut v, &request, &district(&directory, today));
            assert!(v.is_empty(), "on {today}: {v}");
            assert_eq!(ReviewFile::from_proto(&review).to_proto(today), review);
        }
    }

    #[test]
    fn forms_survive_json_and_toml_both_ways() {
        let l = AssessmentFile::read(&example("l-example.toml")).unwrap();
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(
            parse_form::<AssessmentFile>(&json, Path::new("l.json"), "L").unwrap(),
            l
        );
        let m = SupportPlanFile::read(&example("m-example.toml")).unwrap();
        let toml = toml::to_string(&m).unwrap();
        assert_eq!(
            parse_form::<SupportPlanFile>(&toml, Path::new("m.toml"), "M").unwrap(),
            m
        );
    }

    #[test]
    fn unknown_keys_and_bad_dates_are_named_with_their_line() {
        let err = parse_form::<ReviewFile>(
            "participants = [\"a\"]\nmeeting_onn = \"today\"\n",
            Path::new("r.toml"),
            "review",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("meeting_onn") && err.contains("line 2"),
            "{err}"
        );
        let err = parse_form::<ReviewFile>(
            "meeting_on = \"next week\"\n",
            Path::new("r.toml"),
            "review",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("+30d"), "{err}");
        assert!(!err.contains("next week"), "the value is not echoed: {err}");
    }

    #[test]
    fn missing_parts_stay_empty_for_the_service_to_name() {
        let today = civil(2026, 3, 2);
        let now: Timestamp = "2026-03-02T04:00:00Z".parse().unwrap();
        let l = AssessmentFile::default().to_proto(today, now);
        assert!(l.assessed_on.is_none() && l.family_signature.is_none());
        let request = FileAssessmentRequest {
            case_reference: "KTIZhK-2026-000001".into(),
            base_version: 1,
            assessment: Some(l),
            risk_level: RiskLevel::Unspecified as i32,
        };
        let mut v = FieldViolations::new();
        validation::assessment(&mut v, &request, today, now);
        for field in [
            "risk_level",
            "assessment.family",
            "assessment.assessed_on",
            "assessment.discussed_with_family_on",
            "assessment.discussion_participants",
        ] {
            assert!(v.contains(field), "{field}: {v}");
        }
    }
}
