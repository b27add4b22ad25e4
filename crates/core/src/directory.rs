//! The agency directory: districts, agencies (id, kind, district, names, endpoint) and their
//! staff (user id, role, name, contact). Loaded from a TOML file in `deploy/`.
//!
//! Kinds and roles are written in the file in lower snake case (`school`, `commission_secretary`)
//! and map onto the protobuf enums, so there is one list of kinds and roles: the `.proto` file.

use std::{collections::BTreeSet, path::Path};

use referral_proto::v1::{Agency, AgencyKind, Role};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("cannot read the directory file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the directory file is not valid: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("the directory is inconsistent: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct District {
    pub id: String,
    pub name_kk: String,
    pub name_ru: String,
    /// IANA time zone of the district, e.g. `Asia/Almaty`.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
}

fn default_time_zone() -> String {
    "Asia/Almaty".into()
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct AgencyEntry {
    pub id: String,
    /// `school`, `residential`, `commission`, `police`, `health` or `ngo`.
    pub kind: String,
    pub district: String,
    pub name_kk: String,
    pub name_ru: String,
    /// Where the agency's service listens, e.g. `https://127.0.0.1:7411`.
    pub endpoint: String,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct StaffEntry {
    pub user_id: String,
    pub agency: String,
    /// A role in lower snake case, e.g. `school_director`.
    pub role: String,
    pub full_name: String,
    #[serde(default)]
    pub contact: String,
}

/// The whole directory, as loaded and validated.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq, Default)]
pub struct Directory {
    #[serde(default)]
    pub districts: Vec<District>,
    #[serde(default)]
    pub agencies: Vec<AgencyEntry>,
    #[serde(default)]
    pub staff: Vec<StaffEntry>,
}

/// `school` → `AgencyKind::School`.
pub fn parse_kind(kind: &str) -> Option<AgencyKind> {
    AgencyKind::from_str_name(&format!("AGENCY_KIND_{}", kind.to_ascii_uppercase()))
        .filter(|k| *k != AgencyKind::Unspecified)
}

/// `AgencyKind::School` → `school`.
pub fn kind_name(kind: AgencyKind) -> String {
    kind.as_str_name()
        .trim_start_matches("AGENCY_KIND_")
        .to_ascii_lowercase()
}

/// `school_director` → `Role::SchoolDirector`.
pub fn parse_role(role: &str) -> Option<Role> {
    Role::from_str_name(&format!("ROLE_{}", role.to_ascii_uppercase()))
        .filter(|r| *r != Role::Unspecified)
}

/// `Role::SchoolDirector` → `school_director`.
pub fn role_name(role: Role) -> String {
    role.as_str_name()
        .trim_start_matches("ROLE_")
        .to_ascii_lowercase()
}

/// Which roles people of an agency kind can hold (DOMAIN.md section 1).
pub fn role_fits_kind(role: Role, kind: AgencyKind) -> bool {
    use AgencyKind as K;
    use Role as R;
    match kind {
        K::School => matches!(
            role,
            R::SchoolDirector | R::SafetyTeamMember | R::SafeguardingLead | R::SafeguardingDeputy
        ),
        K::Residential => matches!(role, R::InstitutionDirector | R::InstitutionStaff),
        K::Commission => matches!(
            role,
            R::CommissionSecretary | R::CommissionCurator | R::CommissionChair
        ),
        K::Police => matches!(role, R::PoliceJuvenileInspector),
        K::Health => matches!(role, R::HealthWorker),
        K::Ngo => matches!(role, R::NgoCaseManager),
        K::Unspecified => false,
    }
}

impl AgencyEntry {
    pub fn kind(&self) -> AgencyKind {
        parse_kind(&self.kind).unwrap_or(AgencyKind::Unspecified)
    }

    pub fn to_proto(&self) -> Agency {
        Agency {
            agency_id: self.id.clone(),
            kind: self.kind() as i32,
            district_id: self.district.clone(),
            name_kk: self.name_kk.clone(),
            name_ru: self.name_ru.clone(),
            endpoint: self.endpoint.clone(),
        }
    }
}

impl StaffEntry {
    pub fn role(&self) -> Role {
        parse_role(&self.role).unwrap_or(Role::Unspecified)
    }
}

impl Directory {
    pub fn load(path: &Path) -> Result<Self, DirectoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| DirectoryError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, DirectoryError> {
        let dir: Directory = toml::from_str(text)?;
        dir.validate()?;
        Ok(dir)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks that ids are unique and well formed, kinds and roles known, references resolve,
    /// and every district has exactly one commission.
    pub fn validate(&self) -> Result<(), DirectoryError> {
        let bad = |m: String| Err(DirectoryError::Invalid(m));
        let mut districts = BTreeSet::new();
        for d in &self.districts {
            if !districts.insert(d.id.as_str()) {
                return bad(format!("district {} is listed twice", d.id));
            }
            if jiff::tz::TimeZone::get(&d.time_zone).is_err() {
                return bad(format!(
                    "district {} has an unknown time zone {}",
                    d.id, d.time_zone
                ));
            }
        }
        let mut agencies = BTreeSet::new();
        for a in &self.agencies {
            if a.id.is_empty()
                || a.id.len() > 63
                || !a
                    .id
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return bad(format!(
                    "agency id {:?} must be 1-63 lowercase letters, digits or '-'",
                    a.id
                ));
            }
            if !agencies.insert(a.id.as_str()) {
                return bad(format!("agency {} is listed twice", a.id));
            }
            if parse_kind(&a.kind).is_none() {
                return bad(format!("agency {} has an unknown kind {}", a.id, a.kind));
            }
            if !districts.contains(a.district.as_str()) {
                return bad(format!(
                    "agency {} names an unknown district {}",
                    a.id, a.district
                ));
            }
            if !a.endpoint.starts_with("https://") {
                return bad(format!("agency {} endpoint must start with https://", a.id));
            }
        }
        for d in &self.districts {
            let commissions = self
                .agencies
                .iter()
                .filter(|a| a.district == d.id && a.kind() == AgencyKind::Commission)
                .count();
            if commissions != 1 {
                return bad(format!(
                    "district {} must have exactly one commission, it has {commissions}",
                    d.id
                ));
            }
        }
        let mut users = BTreeSet::new();
        for s in &self.staff {
            let Some(agency) = self.agency(&s.agency) else {
                return bad(format!(
                    "user {} names an unknown agency {}",
                    s.user_id, s.agency
                ));
            };
            let Some(role) = parse_role(&s.role) else {
                return bad(format!("user {} has an unknown role {}", s.user_id, s.role));
            };
            if !role_fits_kind(role, agency.kind()) {
                return bad(format!(
                    "user {} has role {} which a {} cannot have",
                    s.user_id, s.role, agency.kind
                ));
            }
            if !users.insert((s.agency.as_str(), s.user_id.as_str())) {
                return bad(format!(
                    "user {} is listed twice in {}",
                    s.user_id, s.agency
                ));
            }
        }
        Ok(())
    }

    pub fn agency(&self, id: &str) -> Option<&AgencyEntry> {
        self.agencies.iter().find(|a| a.id == id)
    }

    pub fn district(&self, id: &str) -> Option<&District> {
        self.districts.iter().find(|d| d.id == id)
    }

    /// The commission of a district.
    pub fn commission_of(&self, district: &str) -> Option<&AgencyEntry> {
        self.agencies
            .iter()
            .find(|a| a.district == district && a.kind() == AgencyKind::Commission)
    }

    pub fn staff_of<'a>(&'a self, agency: &'a str) -> impl Iterator<Item = &'a StaffEntry> + 'a {
        self.staff.iter().filter(move |s| s.agency == agency)
    }

    pub fn user(&self, agency: &str, user_id: &str) -> Option<&StaffEntry> {
        self.staff
            .iter()
            .find(|s| s.agency == agency && s.user_id == user_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_district_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/demo-district.toml");
        let dir = Directory::load(&path).unwrap();
        assert!(dir.commission_of("demo-district").is_some());
        assert_eq!(parse_kind("school"), Some(AgencyKind::School));
        assert_eq!(role_name(Role::CommissionSecretary), "commission_secretary");
    }

    #[test]
    fn a_role_from_another_kind_is_refused() {
        let text = r#"
            [[districts]]
            id = "d"
            name_kk = "a"
            name_ru = "a"
            [[agencies]]
            id = "c"
            kind = "commission"
            district = "d"
            name_kk = "a"
            name_ru = "a"
            endpoint = "https://127.0.0.1:1"
            [[staff]]
            user_id = "u"
            agency = "c"
            role = "school_director"
            full_name = "x"
        "#;
        assert!(matches!(
            Directory::parse(text),
            Err(DirectoryError::Invalid(_))
        ));
    }
}
