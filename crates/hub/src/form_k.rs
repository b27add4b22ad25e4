//! Form K (help request) as people write it: command-line flags or a JSON/TOML file, both
//! mapped onto one serde struct ([`HelpRequestFile`]) that mirrors the protobuf `HelpRequest`,
//! and from there onto the protobuf message the agency service validates.
//!
//! Nothing is validated here beyond the shape (dates, enum names): the service checks every field
//! and answers with one field violation per bad field, which the CLI lists.
//!
//! The report's circumstances (who must never learn of it, the incident it belongs to) come from
//! the file's `[circumstances]` table or from [`CircumstanceFlags`], which also apply to
//! `--demo` and `--file` and override the file field by field.

use std::path::Path;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use jiff::{Timestamp, civil::Date};
use referral_core::validate::{age_years, calendar_date, to_calendar_date};
use referral_proto::v1::{
    ChildReferred, HelpRequest, IncidentRole, ParentInfo, ReferralDestination, ReferringPerson,
    ReportCircumstances, Sex, Signature,
};
use serde::{Deserialize, Serialize};

/// The child's sex, as form K records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SexArg {
    Female,
    Male,
}

/// Where the child should be referred (form K's list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum DestinationArg {
    Commission,
    MentalHealthDispensary,
    JuvenileAdaptationCentre,
    SocialServices,
    PsychologicalServices,
    Other,
}

/// The child's part in the incident a report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentRoleArg {
    /// The child was harmed.
    Victim,
    /// The child harmed another.
    Perpetrator,
    /// Both harmed and harmed another.
    Both,
    /// The child saw it.
    Witness,
}

impl IncidentRoleArg {
    pub fn to_proto(self) -> IncidentRole {
        match self {
            Self::Victim => IncidentRole::Victim,
            Self::Perpetrator => IncidentRole::Perpetrator,
            Self::Both => IncidentRole::Both,
            Self::Witness => IncidentRole::Witness,
        }
    }

    pub fn from_proto(role: i32) -> Option<Self> {
        Some(match IncidentRole::try_from(role).ok()? {
            IncidentRole::Victim => Self::Victim,
            IncidentRole::Perpetrator => Self::Perpetrator,
            IncidentRole::Both => Self::Both,
            IncidentRole::Witness => Self::Witness,
            IncidentRole::Unspecified => return None,
        })
    }
}

impl SexArg {
    pub fn to_proto(self) -> Sex {
        match self {
            Self::Female => Sex::Female,
            Self::Male => Sex::Male,
        }
    }

    pub fn from_proto(sex: i32) -> Option<Self> {
        match Sex::try_from(sex).ok()? {
            Sex::Female => Some(Self::Female),
            Sex::Male => Some(Self::Male),
            Sex::Unspecified => None,
        }
    }
}

impl DestinationArg {
    pub fn to_proto(self) -> ReferralDestination {
        match self {
            Self::Commission => ReferralDestination::Commission,
            Self::MentalHealthDispensary => ReferralDestination::MentalHealthDispensary,
            Self::JuvenileAdaptationCentre => ReferralDestination::JuvenileAdaptationCentre,
            Self::SocialServices => ReferralDestination::SocialServices,
            Self::PsychologicalServices => ReferralDestination::PsychologicalServices,
            Self::Other => ReferralDestination::Other,
        }
    }

    pub fn from_proto(d: i32) -> Option<Self> {
        Some(match ReferralDestination::try_from(d).ok()? {
            ReferralDestination::Commission => Self::Commission,
            ReferralDestination::MentalHealthDispensary => Self::MentalHealthDispensary,
            ReferralDestination::JuvenileAdaptationCentre => Self::JuvenileAdaptationCentre,
            ReferralDestination::SocialServices => Self::SocialServices,
            ReferralDestination::PsychologicalServices => Self::PsychologicalServices,
            ReferralDestination::Other => Self::Other,
            ReferralDestination::Unspecified => return None,
        })
    }
}

/// Form K in a file (`--file k.toml` or `k.json`) and in `show --json`. Missing text is empty,
/// so the service names every missing field at once. See `k-example.toml` in this crate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HelpRequestFile {
    pub child: ChildFile,
    pub referrer: ReferrerFile,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mother: Option<ParentFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub father: Option<ParentFile>,
    pub problem_description: String,
    pub recurrence: String,
    pub destinations: Vec<DestinationArg>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub destination_other: String,
    pub measures_plan: String,
    pub prevention_effect: String,
    pub signature: SignatureFile,
    /// Who must never learn of the report, and the incident it belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circumstances: Option<CircumstancesFile>,
}

/// The report's circumstances (`[circumstances]` in a file), named as in the protobuf
/// `ReportCircumstances`. Agency ids are the directory's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircumstancesFile {
    /// The residential institution the child lives in: nothing of the report reaches it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub child_residence_agency_id: String,
    /// The institution whose director the report implicates: the report never reaches it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub implicated_director_agency_id: String,
    /// The referring agency's reference of the incident the report is about.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub incident_reference: String,
    /// The child's part in that incident (required with `incident_reference`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incident_role: Option<IncidentRoleArg>,
}

impl CircumstancesFile {
    pub fn to_proto(&self) -> ReportCircumstances {
        ReportCircumstances {
            child_residence_agency_id: self.child_residence_agency_id.clone(),
            implicated_director_agency_id: self.implicated_director_agency_id.clone(),
            incident_reference: self.incident_reference.clone(),
            incident_role: self
                .incident_role
                .map_or(IncidentRole::Unspecified, IncidentRoleArg::to_proto)
                as i32,
        }
    }

    pub fn from_proto(c: &ReportCircumstances) -> Self {
        Self {
            child_residence_agency_id: c.child_residence_agency_id.clone(),
            implicated_director_agency_id: c.implicated_director_agency_id.clone(),
            incident_reference: c.incident_reference.clone(),
            incident_role: IncidentRoleArg::from_proto(c.incident_role),
        }
    }
}

/// The flags of `submit-k` for the report's circumstances. Unlike the form's other flags they
/// also go with `--demo` and `--file` (and win over the file's `[circumstances]`).
#[derive(Debug, Clone, Default, Args)]
pub struct CircumstanceFlags {
    /// The residential institution the child lives in (an agency id, e.g. residential-1): the
    /// gateway never lets anything of this report reach it, nor anyone there read the case.
    #[arg(
        long,
        value_name = "AGENCY",
        help_heading = "Form K: who must never learn of it, and the incident"
    )]
    pub child_lives_in: Option<String>,
    /// The institution whose director the report implicates (an agency id, e.g. school-2): the
    /// report goes to the commission and never reaches that institution.
    #[arg(
        long,
        value_name = "AGENCY",
        help_heading = "Form K: who must never learn of it, and the incident"
    )]
    pub implicates_director_of: Option<String>,
    /// Your reference of the incident the report is about (with --incident-role): the cases of
    /// the two sides of one incident never share a curator.
    #[arg(
        long,
        value_name = "REFERENCE",
        requires = "incident_role",
        help_heading = "Form K: who must never learn of it, and the incident"
    )]
    pub incident: Option<String>,
    /// The child's part in that incident.
    #[arg(
        long,
        value_enum,
        requires = "incident",
        help_heading = "Form K: who must never learn of it, and the incident"
    )]
    pub incident_role: Option<IncidentRoleArg>,
}

impl CircumstanceFlags {
    pub fn is_empty(&self) -> bool {
        self.child_lives_in.is_none()
            && self.implicates_director_of.is_none()
            && self.incident.is_none()
            && self.incident_role.is_none()
    }

    /// Writes the given flags into the form's circumstances, keeping what the form had for the
    /// others.
    pub fn apply(&self, k: &mut HelpRequest) {
        if self.is_empty() {
            return;
        }
        let c = k
            .circumstances
            .get_or_insert_with(ReportCircumstances::default);
        if let Some(a) = &self.child_lives_in {
            c.child_residence_agency_id = a.clone();
        }
        if let Some(a) = &self.implicates_director_of {
            c.implicated_director_agency_id = a.clone();
        }
        if let Some(r) = &self.incident {
            c.incident_reference = r.clone();
        }
        if let Some(role) = self.incident_role {
            c.incident_role = role.to_proto() as i32;
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChildFile {
    pub full_name: String,
    pub registered_address: String,
    /// `YYYY-MM-DD`.
    pub date_of_birth: Option<Date>,
    /// Computed from the date of birth when absent.
    pub age_years: Option<u32>,
    pub sex: Option<SexArg>,
    pub school_name: String,
    pub class_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub iin: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReferrerFile {
    pub full_name: String,
    pub position: String,
    pub address: String,
    pub phone: String,
    pub workplace: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParentFile {
    pub full_name: String,
    pub address: String,
    pub occupation: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignatureFile {
    pub signer_name: String,
    /// RFC 3339; the time of submission when absent.
    pub signed_at: Option<Timestamp>,
}

/// The flags of `submit-k` that fill form K one field at a time.
#[derive(Debug, Clone, Default, Args)]
#[group(id = "k_fields", multiple = true)]
pub struct KFlags {
    /// Child: full name.
    #[arg(long, value_name = "NAME", help_heading = "Form K: the child")]
    pub child_name: Option<String>,
    /// Child: registered address.
    #[arg(long, value_name = "ADDRESS", help_heading = "Form K: the child")]
    pub child_address: Option<String>,
    /// Child: date of birth, YYYY-MM-DD.
    #[arg(long, value_name = "YYYY-MM-DD", help_heading = "Form K: the child")]
    pub birth_date: Option<Date>,
    /// Child: age in years (computed from the birth date when omitted).
    #[arg(long, value_name = "YEARS", help_heading = "Form K: the child")]
    pub age: Option<u32>,
    /// Child: sex.
    #[arg(long, value_enum, help_heading = "Form K: the child")]
    pub sex: Option<SexArg>,
    /// Child: school.
    #[arg(long, value_name = "SCHOOL", help_heading = "Form K: the child")]
    pub school: Option<String>,
    /// Child: class, e.g. "6 Ә".
    #[arg(
        long = "class",
        value_name = "CLASS",
        help_heading = "Form K: the child"
    )]
    pub class_name: Option<String>,
    /// Child: IIN (12 digits), when known.
    #[arg(long, value_name = "IIN", help_heading = "Form K: the child")]
    pub iin: Option<String>,

    /// Referring person: full name.
    #[arg(
        long,
        value_name = "NAME",
        help_heading = "Form K: the referring person"
    )]
    pub referrer_name: Option<String>,
    /// Referring person: position.
    #[arg(
        long,
        value_name = "POSITION",
        help_heading = "Form K: the referring person"
    )]
    pub referrer_position: Option<String>,
    /// Referring person: phone number.
    #[arg(
        long,
        value_name = "PHONE",
        help_heading = "Form K: the referring person"
    )]
    pub referrer_phone: Option<String>,
    /// Referring person: full name of the workplace.
    #[arg(
        long,
        value_name = "WORKPLACE",
        help_heading = "Form K: the referring person"
    )]
    pub referrer_workplace: Option<String>,
    /// Referring person: address.
    #[arg(
        long,
        value_name = "ADDRESS",
        help_heading = "Form K: the referring person"
    )]
    pub referrer_address: Option<String>,

    /// Mother: full name.
    #[arg(long, value_name = "NAME", help_heading = "Form K: the parents")]
    pub mother_name: Option<String>,
    /// Mother: residence.
    #[arg(long, value_name = "ADDRESS", help_heading = "Form K: the parents")]
    pub mother_address: Option<String>,
    /// Mother: occupation.
    #[arg(long, value_name = "OCCUPATION", help_heading = "Form K: the parents")]
    pub mother_occupation: Option<String>,
    /// Father: full name.
    #[arg(long, value_name = "NAME", help_heading = "Form K: the parents")]
    pub father_name: Option<String>,
    /// Father: residence.
    #[arg(long, value_name = "ADDRESS", help_heading = "Form K: the parents")]
    pub father_address: Option<String>,
    /// Father: occupation.
    #[arg(long, value_name = "OCCUPATION", help_heading = "Form K: the parents")]
    pub father_occupation: Option<String>,

    /// Reason: a short description of the problem.
    #[arg(long, value_name = "TEXT", help_heading = "Form K: the referral")]
    pub problem: Option<String>,
    /// How often the problem behaviour recurs.
    #[arg(long, value_name = "TEXT", help_heading = "Form K: the referral")]
    pub recurrence: Option<String>,
    /// Where the child should be referred, comma separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        value_name = "LIST",
        help_heading = "Form K: the referral"
    )]
    pub destinations: Vec<DestinationArg>,
    /// The other destination, when the list holds `other`.
    #[arg(long, value_name = "TEXT", help_heading = "Form K: the referral")]
    pub destination_other: Option<String>,
    /// Plan of measures needed for the child.
    #[arg(long, value_name = "TEXT", help_heading = "Form K: the referral")]
    pub measures_plan: Option<String>,
    /// Effect of the prevention so far: the concrete measures applied.
    #[arg(long, value_name = "TEXT", help_heading = "Form K: the referral")]
    pub prevention_effect: Option<String>,
    /// Who signs the form (it is signed at the time of submission).
    #[arg(long, value_name = "NAME", help_heading = "Form K: the referral")]
    pub signer: Option<String>,
}

impl KFlags {
    /// The form the flags describe. A parent is included when any of their flags is given.
    pub fn to_file(&self) -> HelpRequestFile {
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        let parent = |name: &Option<String>, address: &Option<String>, job: &Option<String>| {
            (name.is_some() || address.is_some() || job.is_some()).then(|| ParentFile {
                full_name: text(name),
                address: text(address),
                occupation: text(job),
            })
        };
        HelpRequestFile {
            child: ChildFile {
                full_name: text(&self.child_name),
                registered_address: text(&self.child_address),
                date_of_birth: self.birth_date,
                age_years: self.age,
                sex: self.sex,
                school_name: text(&self.school),
                class_name: text(&self.class_name),
                iin: text(&self.iin),
            },
            referrer: ReferrerFile {
                full_name: text(&self.referrer_name),
                position: text(&self.referrer_position),
                address: text(&self.referrer_address),
                phone: text(&self.referrer_phone),
                workplace: text(&self.referrer_workplace),
            },
            mother: parent(
                &self.mother_name,
                &self.mother_address,
                &self.mother_occupation,
            ),
            father: parent(
                &self.father_name,
                &self.father_address,
                &self.father_occupation,
            ),
            problem_description: text(&self.problem),
            recurrence: text(&self.recurrence),
            destinations: self.destinations.clone(),
            destination_other: text(&self.destination_other),
            measures_plan: text(&self.measures_plan),
            prevention_effect: text(&self.prevention_effect),
            signature: SignatureFile {
                signer_name: text(&self.signer),
                signed_at: None,
            },
            circumstances: None,
        }
    }
}

impl HelpRequestFile {
    /// Reads a form from a `.json` or `.toml` file.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text, path)
    }

    /// Parses a form; the format follows the file's extension (`.json`, otherwise TOML).
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<Self> {
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        // Parse errors name the line and the field; they never echo a whole value back.
        if is_json {
            serde_json::from_str(text)
                .map_err(|e| anyhow::anyhow!("{} is not a valid form K: {e}", path.display()))
        } else {
            toml::from_str(text).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not a valid form K: {}",
                    path.display(),
                    e.message().trim()
                )
            })
        }
    }

    /// The protobuf form. The age defaults to the completed years on `today`, the signature time
    /// to `now`.
    pub fn to_proto(&self, today: Date, now: Timestamp) -> HelpRequest {
        let c = &self.child;
        let age = c.age_years.or_else(|| {
            c.date_of_birth
                .and_then(|born| u32::try_from(age_years(born, today)).ok())
        });
        let parent = |p: &ParentFile| ParentInfo {
            full_name: p.full_name.clone(),
            address: p.address.clone(),
            occupation: p.occupation.clone(),
        };
        let signed_at = self.signature.signed_at.unwrap_or(now);
        HelpRequest {
            circumstances: self.circumstances.as_ref().map(CircumstancesFile::to_proto),
            child: Some(ChildReferred {
                full_name: c.full_name.clone(),
                registered_address: c.registered_address.clone(),
                date_of_birth: c.date_of_birth.map(to_calendar_date),
                age_years: age.unwrap_or_default(),
                sex: c.sex.map(SexArg::to_proto).unwrap_or(Sex::Unspecified) as i32,
                school_name: c.school_name.clone(),
                class_name: c.class_name.clone(),
                iin: c.iin.clone(),
            }),
            referrer: Some(ReferringPerson {
                full_name: self.referrer.full_name.clone(),
                position: self.referrer.position.clone(),
                address: self.referrer.address.clone(),
                phone: self.referrer.phone.clone(),
                workplace: self.referrer.workplace.clone(),
            }),
            mother: self.mother.as_ref().map(parent),
            father: self.father.as_ref().map(parent),
            problem_description: self.problem_description.clone(),
            recurrence: self.recurrence.clone(),
            destinations: self
                .destinations
                .iter()
                .map(|d| d.to_proto() as i32)
                .collect(),
            destination_other: self.destination_other.clone(),
            measures_plan: self.measures_plan.clone(),
            prevention_effect: self.prevention_effect.clone(),
            signature: Some(Signature {
                signer_name: self.signature.signer_name.clone(),
                signed_at: Some(prost_types::Timestamp {
                    seconds: signed_at.as_second(),
                    nanos: signed_at.subsec_nanosecond(),
                }),
            }),
        }
    }

    /// The file form of a protobuf form (for `show --json`, and to start a new form from an old
    /// one). Values that have no file form (an invalid date, an unknown enum value) are left out.
    pub fn from_proto(k: &HelpRequest) -> Self {
        let child = k.child.clone().unwrap_or_default();
        let referrer = k.referrer.clone().unwrap_or_default();
        let signature = k.signature.clone().unwrap_or_default();
        let parent = |p: &ParentInfo| ParentFile {
            full_name: p.full_name.clone(),
            address: p.address.clone(),
            occupation: p.occupation.clone(),
        };
        Self {
            child: ChildFile {
                full_name: child.full_name,
                registered_address: child.registered_address,
                date_of_birth: child.date_of_birth.as_ref().and_then(calendar_date),
                age_years: Some(child.age_years),
                sex: SexArg::from_proto(child.sex),
                school_name: child.school_name,
                class_name: child.class_name,
                iin: child.iin,
            },
            referrer: ReferrerFile {
                full_name: referrer.full_name,
                position: referrer.position,
                address: referrer.address,
                phone: referrer.phone,
                workplace: referrer.workplace,
            },
            mother: k.mother.as_ref().map(parent),
            father: k.father.as_ref().map(parent),
            problem_description: k.problem_description.clone(),
            recurrence: k.recurrence.clone(),
            destinations: k
                .destinations
                .iter()
                .filter_map(|d| DestinationArg::from_proto(*d))
                .collect(),
            destination_other: k.destination_other.clone(),
            measures_plan: k.measures_plan.clone(),
            prevention_effect: k.prevention_effect.clone(),
            signature: SignatureFile {
                signer_name: signature.signer_name,
                signed_at: signature
                    .signed_at
                    .as_ref()
                    .and_then(|t| Timestamp::new(t.seconds, t.nanos).ok()),
            },
            circumstances: k.circumstances.as_ref().map(CircumstancesFile::from_proto),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use clap::Parser;
    use jiff::civil::date;
    use referral_core::validate::sample_help_request;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(flatten)]
        k: KFlags,
        #[command(flatten)]
        circumstances: CircumstanceFlags,
    }

    fn circumstance_flags(args: &[&str]) -> Result<CircumstanceFlags, clap::Error> {
        Cmd::try_parse_from(std::iter::once("submit-k").chain(args.iter().copied()))
            .map(|c| c.circumstances)
    }

    fn flags(args: &[&str]) -> KFlags {
        Cmd::try_parse_from(std::iter::once("submit-k").chain(args.iter().copied()))
            .unwrap()
            .k
    }

    fn today() -> Date {
        date(2025, 3, 10)
    }

    fn now() -> Timestamp {
        "2025-03-10T05:00:00Z".parse().unwrap()
    }

    #[test]
    fn every_flag_lands_in_its_field_of_k() {
        let k = flags(&[
            "--child-name",
            "Әлия Нұрланова",
            "--child-address",
            "Алматы, 14-27",
            "--birth-date",
            "2012-12-01",
            "--sex",
            "female",
            "--school",
            "№1 мектеп",
            "--class",
            "6 Ә",
            "--iin",
            "121201600010",
            "--referrer-name",
            "Гүлнар Төлеуова",
            "--referrer-position",
            "Психолог",
            "--referrer-phone",
            "+7 727 255 14 32",
            "--referrer-workplace",
            "№1 мектеп КММ",
            "--referrer-address",
            "Алматы, 70а",
            "--mother-name",
            "Сәуле Нұрланова",
            "--mother-address",
            "Алматы, 14-27",
            "--mother-occupation",
            "Сатушы",
            "--father-name",
            "Серік Нұрланов",
            "--father-address",
            "Теміртау",
            "--father-occupation",
            "Жұмысшы",
            "--problem",
            "Кешігеді",
            "--recurrence",
            "Аптасына 2-3 рет",
            "--destinations",
            "commission,psychological_services,other",
            "--destination-other",
            "Спорт секциясы",
            "--measures-plan",
            "Кешенді бағалау",
            "--prevention-effect",
            "4 кездесу",
            "--signer",
            "Ержан Сейітов",
        ])
        .to_file()
        .to_proto(today(), now());

        let child = k.child.as_ref().unwrap();
        assert_eq!(child.full_name, "Әлия Нұрланова");
        assert_eq!(child.registered_address, "Алматы, 14-27");
        let born = child.date_of_birth.as_ref().unwrap();
        assert_eq!((born.year, born.month, born.day), (2012, 12, 1));
        assert_eq!(child.age_years, 12, "computed from the birth date");
        assert_eq!(child.sex, Sex::Female as i32);
        assert_eq!(child.school_name, "№1 мектеп");
        assert_eq!(child.class_name, "6 Ә");
        assert_eq!(child.iin, "121201600010");

        let r = k.referrer.as_ref().unwrap();
        assert_eq!(
            (
                r.full_name.as_str(),
                r.position.as_str(),
                r.phone.as_str(),
                r.workplace.as_str(),
                r.address.as_str()
            ),
            (
                "Гүлнар Төлеуова",
                "Психолог",
                "+7 727 255 14 32",
                "№1 мектеп КММ",
                "Алматы, 70а"
            )
        );
        let mother = k.mother.as_ref().unwrap();
        assert_eq!(
            (
                mother.full_name.as_str(),
                mother.address.as_str(),
                mother.occupation.as_str()
            ),
            ("Сәуле Нұрланова", "Алматы, 14-27", "Сатушы")
        );
        let father = k.father.as_ref().unwrap();
        assert_eq!(
            (
                father.full_name.as_str(),
                father.address.as_str(),
                father.occupation.as_str()
            ),
            ("Серік Нұрланов", "Теміртау", "Жұмысшы")
        );
        assert_eq!(k.problem_description, "Кешігеді");
        assert_eq!(k.recurrence, "Аптасына 2-3 рет");
        assert_eq!(
            k.destinations,
            vec![
                ReferralDestination::Commission as i32,
                ReferralDestination::PsychologicalServices as i32,
                ReferralDestination::Other as i32,
            ]
        );
        assert_eq!(k.destination_other, "Спорт секциясы");
        assert_eq!(k.measures_plan, "Кешенді бағалау");
        assert_eq!(k.prevention_effect, "4 кездесу");
        let sig = k.signature.as_ref().unwrap();
        assert_eq!(sig.signer_name, "Ержан Сейітов");
        assert_eq!(
            sig.signed_at.as_ref().unwrap().seconds,
            now().as_second(),
            "signed at the time of submission"
        );
    }

    #[test]
    fn missing_flags_leave_fields_empty_for_the_service_to_name() {
        let k = flags(&["--child-name", "Әлия", "--age", "9"])
            .to_file()
            .to_proto(today(), now());
        let child = k.child.as_ref().unwrap();
        assert_eq!(child.age_years, 9, "an explicit age wins");
        assert_eq!(child.sex, Sex::Unspecified as i32);
        assert!(child.date_of_birth.is_none());
        assert!(k.mother.is_none() && k.father.is_none(), "no parent flags");
        assert!(k.destinations.is_empty());
        assert_eq!(k.referrer.as_ref().unwrap().full_name, "");
    }

    #[test]
    fn one_parent_flag_includes_that_parent_only() {
        let k = flags(&["--father-occupation", "Жүргізуші"]).to_file();
        assert!(k.mother.is_none());
        assert_eq!(k.father.unwrap().occupation, "Жүргізуші");
    }

    #[test]
    fn bad_flag_values_are_usage_errors() {
        for args in [
            &["--birth-date", "01.12.2012"][..],
            &["--sex", "unknown"],
            &["--destinations", "commission,nowhere"],
            &["--age", "-3"],
        ] {
            let err = Cmd::try_parse_from(std::iter::once("submit-k").chain(args.iter().copied()))
                .unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn the_sample_survives_the_file_form_both_ways() {
        let sample = sample_help_request(today());
        let file = HelpRequestFile::from_proto(&sample);
        assert_eq!(file.to_proto(today(), now()), sample);

        let json = serde_json::to_string(&file).unwrap();
        let back = HelpRequestFile::parse(&json, &PathBuf::from("k.json")).unwrap();
        assert_eq!(back, file);
        let toml = toml::to_string(&file).unwrap();
        let back = HelpRequestFile::parse(&toml, &PathBuf::from("k.toml")).unwrap();
        assert_eq!(back, file);
    }

    #[test]
    fn the_example_file_is_a_complete_form() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("k-example.toml");
        let file = HelpRequestFile::read(&path).unwrap();
        assert_eq!(file.destinations.len(), 2);
        assert!(file.mother.is_some() && file.father.is_some());
        let k = file.to_proto(today(), now());
        assert_eq!(k.child.unwrap().age_years, 12);
    }

    #[test]
    fn incident_roles_are_parsed_by_name() {
        for (name, role) in [
            ("victim", IncidentRole::Victim),
            ("perpetrator", IncidentRole::Perpetrator),
            ("both", IncidentRole::Both),
            ("witness", IncidentRole::Witness),
        ] {
            let arg = IncidentRoleArg::from_str(name, false).unwrap();
            assert_eq!(arg.to_proto(), role);
            assert_eq!(IncidentRoleArg::from_proto(role as i32), Some(arg));
        }
        assert!(IncidentRoleArg::from_str("bystander", false).is_err());
        assert_eq!(
            IncidentRoleArg::from_proto(IncidentRole::Unspecified as i32),
            None
        );
        assert_eq!(IncidentRoleArg::from_proto(99), None);
    }

    #[test]
    fn circumstance_flags_fill_the_circumstances_of_any_form() {
        let flags = circumstance_flags(&[
            "--child-lives-in",
            "residential-1",
            "--implicates-director-of",
            "school-2",
            "--incident",
            "INC-7",
            "--incident-role",
            "victim",
        ])
        .unwrap();
        let mut k = sample_help_request(today());
        assert!(k.circumstances.is_none());
        flags.apply(&mut k);
        assert_eq!(
            k.circumstances,
            Some(ReportCircumstances {
                child_residence_agency_id: "residential-1".into(),
                implicated_director_agency_id: "school-2".into(),
                incident_reference: "INC-7".into(),
                incident_role: IncidentRole::Victim as i32,
            })
        );

        // A flag overrides its field of the file and keeps the others.
        let mut k = HelpRequestFile::parse(
            "[circumstances]\nincident_reference = \"INC-1\"\nincident_role = \"witness\"\n",
            Path::new("k.toml"),
        )
        .unwrap()
        .to_proto(today(), now());
        circumstance_flags(&["--child-lives-in", "residential-1"])
            .unwrap()
            .apply(&mut k);
        let c = k.circumstances.unwrap();
        assert_eq!(c.child_residence_agency_id, "residential-1");
        assert_eq!(c.incident_reference, "INC-1");
        assert_eq!(c.incident_role, IncidentRole::Witness as i32);

        // No flag, no circumstances.
        let mut k = sample_help_request(today());
        circumstance_flags(&[]).unwrap().apply(&mut k);
        assert!(k.circumstances.is_none());
    }

    #[test]
    fn an_incident_needs_its_role_and_a_role_its_incident() {
        for bad in [
            &["--incident", "INC-7"][..],
            &["--incident-role", "victim"],
            &["--incident", "INC-7", "--incident-role", "bystander"],
        ] {
            assert_eq!(
                circumstance_flags(bad).unwrap_err().exit_code(),
                2,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn circumstances_survive_the_file_form_both_ways() {
        let mut sample = sample_help_request(today());
        sample.circumstances = Some(ReportCircumstances {
            child_residence_agency_id: "residential-1".into(),
            implicated_director_agency_id: String::new(),
            incident_reference: "INC-7".into(),
            incident_role: IncidentRole::Both as i32,
        });
        let file = HelpRequestFile::from_proto(&sample);
        assert_eq!(file.to_proto(today(), now()), sample);
        let toml = toml::to_string(&file).unwrap();
        assert!(toml.contains("[circumstances]"), "{toml}");
        assert!(
            !toml.contains("implicated_director_agency_id"),
            "empty fields stay out"
        );
        let back = HelpRequestFile::parse(&toml, &PathBuf::from("k.toml")).unwrap();
        assert_eq!(back, file);
    }

    #[test]
    fn unknown_keys_in_a_file_are_refused() {
        let err = HelpRequestFile::parse("[child]\nfull_nmae = \"x\"\n", Path::new("k.toml"))
            .unwrap_err();
        assert!(err.to_string().contains("full_nmae"), "{err}");
    }
}
