//! Every field of the institution's requests, checked before anything is written. Violations
//! name the request's fields and say what is expected, never what was sent. The gateway checks
//! the referral it builds again (`gateway/src/protection_forms.rs`).

use std::collections::BTreeSet;

use jiff::civil::Date;
use referral_agency::checks;
use referral_core::{
    FieldViolations, iin,
    validate::{self, LONG_TEXT_MAX, PERSON_NAME, SHORT_TEXT, Text},
};
use referral_proto::v1::{
    IncidentChild, IncidentRole, IncidentSeverity, MandatoryReportGround, ReferrerDetails,
};

/// Most children one referral may name (as the gateway accepts).
pub const MAX_CHILDREN: usize = 50;
const PHONE: Text = Text::required(3, 50);
const REQUIRED_LONG: Text = Text::required(1, LONG_TEXT_MAX).multiline();

/// A severity: required and known.
pub fn severity(v: &mut FieldViolations, field: &str, value: i32) -> Option<IncidentSeverity> {
    checks::required_enum::<IncidentSeverity>(v, field, value)
}

/// The mandatory-report grounds: known, each once, "other" described (and only then); at least
/// one when `required` (a moderate or severe incident, or a referral).
pub fn grounds(v: &mut FieldViolations, prefix: &str, list: &[i32], other: &str, required: bool) {
    let field = |name: &str| {
        if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}.{name}")
        }
    };
    let mut seen = BTreeSet::new();
    let bad = list.iter().any(|g| {
        MandatoryReportGround::try_from(*g)
            .ok()
            .filter(|g| *g != MandatoryReportGround::Unspecified)
            .is_none()
            || !seen.insert(*g)
    });
    if bad {
        v.add(
            field("grounds"),
            "each must be a known mandatory-report ground, listed once",
        );
    } else if required && list.is_empty() {
        v.add(
            field("grounds"),
            "required for a moderate or severe incident: at least one ground (M:2932-2940), or \
             other",
        );
    }
    if seen.contains(&(MandatoryReportGround::Other as i32)) {
        validate::text(v, &field("grounds_other"), other, Text::required(3, 500));
    } else if !other.is_empty() {
        v.add(field("grounds_other"), "only with the ground other");
    }
}

/// Whether a severity obliges the institution to refer to the commission and the police.
pub fn severity_requires_referral(severity: IncidentSeverity) -> bool {
    matches!(
        severity,
        IncidentSeverity::Moderate | IncidentSeverity::Severe
    )
}

/// Whether an assessed incident must go to the commission and the police before it is closed:
/// moderate and severe incidents must (M:2932-2933), and the grounds listed there (M:2934-2940)
/// are what makes an incident one of those, whatever severity it was labelled with. A "light"
/// incident carrying a weapon or an injury is still referred.
pub fn must_refer(severity: IncidentSeverity, grounds: &[i32]) -> bool {
    severity_requires_referral(severity) || !grounds.is_empty()
}

pub fn referrer(v: &mut FieldViolations, field: &str, r: Option<&ReferrerDetails>) {
    match r {
        None => v.add(field, "required: position and phone"),
        Some(r) => {
            validate::text(v, &format!("{field}.position"), &r.position, SHORT_TEXT);
            validate::text(v, &format!("{field}.phone"), &r.phone, PHONE);
        }
    }
}

/// One child of a referral to the commission and the police: identity, role, injuries.
pub fn involved_child(v: &mut FieldViolations, field: &str, c: &IncidentChild, today: Date) {
    identity(v, field, c, today);
    checks::required_enum::<IncidentRole>(v, &format!("{field}.role"), c.role);
    if c.injured {
        validate::text(v, &format!("{field}.injuries"), &c.injuries, REQUIRED_LONG);
    } else {
        if !c.injuries.is_empty() {
            v.add(format!("{field}.injuries"), "only for an injured child");
        }
        if c.referred_for_medical_care {
            v.add(
                format!("{field}.referred_for_medical_care"),
                "only for an injured child",
            );
        }
    }
}

/// The injured child referred to health: identity and injuries; nothing of the incident.
pub fn injured_child(v: &mut FieldViolations, field: &str, c: Option<&IncidentChild>, today: Date) {
    let Some(c) = c else {
        v.add(field, "required: the injured child");
        return;
    };
    identity(v, field, c, today);
    validate::text(v, &format!("{field}.injuries"), &c.injuries, REQUIRED_LONG);
    if c.role != 0 {
        v.add(
            format!("{field}.role"),
            "must be empty: health is not told the child's part in the incident",
        );
    }
}

fn identity(v: &mut FieldViolations, field: &str, c: &IncidentChild, today: Date) {
    validate::text(v, &format!("{field}.full_name"), &c.full_name, PERSON_NAME);
    if !c.iin.is_empty() && iin::parse(&c.iin).is_err() {
        v.add(
            format!("{field}.iin"),
            "must be a valid IIN of 12 digits, or empty when unknown",
        );
    }
    if !checks::is_unset(c.date_of_birth.as_ref()) {
        checks::past_date(
            v,
            &format!("{field}.date_of_birth"),
            c.date_of_birth.as_ref(),
            today,
        );
    }
}

/// The children of a referral: at least one, at most [`MAX_CHILDREN`], each complete.
pub fn children(
    v: &mut FieldViolations,
    field: &str,
    list: &[IncidentChild],
    today: Date,
    required: bool,
) {
    if list.is_empty() {
        if required {
            v.add(field, "required: at least one child");
        }
        return;
    }
    if list.len() > MAX_CHILDREN {
        v.add(field, format!("at most {MAX_CHILDREN}"));
        return;
    }
    for (i, c) in list.iter().enumerate() {
        involved_child(v, &format!("{field}[{i}]"), c, today);
    }
}

pub fn description(v: &mut FieldViolations, field: &str, value: &str) {
    validate::text(v, field, value, REQUIRED_LONG);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grounds_are_known_unique_and_other_is_described() {
        let mut v = FieldViolations::new();
        grounds(&mut v, "", &[], "", true);
        assert!(v.contains("grounds"));
        let mut v = FieldViolations::new();
        grounds(&mut v, "", &[1, 1], "", false);
        assert!(v.contains("grounds"));
        let mut v = FieldViolations::new();
        grounds(&mut v, "", &[MandatoryReportGround::Other as i32], "", true);
        assert!(v.contains("grounds_other") && !v.contains("grounds"));
        let mut v = FieldViolations::new();
        grounds(&mut v, "", &[2], "described", true);
        assert!(v.contains("grounds_other"));
        let mut v = FieldViolations::new();
        grounds(&mut v, "", &[], "", false);
        assert!(v.is_empty());
    }

    #[test]
    fn only_moderate_and_severe_must_be_referred() {
        assert!(!must_refer(IncidentSeverity::Light, &[]));
        assert!(must_refer(IncidentSeverity::Moderate, &[]));
        assert!(must_refer(IncidentSeverity::Severe, &[]));
        let weapon = [MandatoryReportGround::PhysicalViolenceWithWeapon as i32];
        assert!(must_refer(IncidentSeverity::Light, &weapon));
    }
}
