//! The gateway's own checks of the police's forms of issue 5 (the gateway never trusts a client's
//! validation): the PREVENTIVE_REGISTRATION of an offending child, and the child's role an
//! INVESTIGATION_UPDATE carries (the rest of the update is checked in `forms`).
//!
//! A violation names the field and says what is expected, never what was sent. Whether the police
//! work on the case is `access`'s.

use jiff::civil::Date;
use referral_core::{
    FieldViolations,
    validate::{self, Text},
};
use referral_proto::v1::{
    IncidentRole, InvestigationUpdate, PreventiveRegistration, PreventiveRegistrationStatus,
};

use crate::forms;

const REFERENCE: Text = Text::required(1, 100);

/// The child's role an update carries: absent (UNSPECIFIED) or a known role.
pub(crate) fn investigation_child_role(u: &InvestigationUpdate, v: &mut FieldViolations, p: &str) {
    if IncidentRole::try_from(u.child_role).is_err() {
        v.add(
            format!("{p}.child_role"),
            "must be a known role: victim, perpetrator, both or witness",
        );
    }
}

/// A preventive registration: the case, the investigation, a known status; the day registered
/// (real, not in the future), the grounds (no IIN: the case says whose registration it is), the
/// inspector; with ENDED the day it ended (not before the registration) and why, and neither of
/// them otherwise.
pub(crate) fn preventive_registration(
    r: &PreventiveRegistration,
    today: Date,
    v: &mut FieldViolations,
    p: &str,
) {
    let field = |name: &str| format!("{p}.{name}");
    validate::text(v, &field("case_reference"), &r.case_reference, REFERENCE);
    validate::text(
        v,
        &field("investigation_reference"),
        &r.investigation_reference,
        REFERENCE,
    );
    let status = PreventiveRegistrationStatus::try_from(r.status)
        .unwrap_or(PreventiveRegistrationStatus::Unspecified);
    if status == PreventiveRegistrationStatus::Unspecified {
        v.add(field("status"), "required: registered or ended");
    }
    let registered =
        forms::optional_past_date(v, field("registered_on"), r.registered_on.as_ref(), today);
    if registered.is_none() && !v.contains(&field("registered_on")) {
        v.add(field("registered_on"), "required: a real calendar date");
    }
    validate::text(
        v,
        &field("grounds"),
        &r.grounds,
        validate::REQUIRED_LONG_TEXT,
    );
    validate::no_identity(v, &field("grounds"), &r.grounds);
    validate::text(v, &field("inspector"), &r.inspector, validate::PERSON_NAME);
    let ended = forms::optional_past_date(v, field("ended_on"), r.ended_on.as_ref(), today);
    if status == PreventiveRegistrationStatus::Ended {
        match (ended, registered) {
            (None, _) if !v.contains(&field("ended_on")) => {
                v.add(
                    field("ended_on"),
                    "required with ENDED: a real calendar date",
                );
            }
            (Some(end), Some(start)) if end < start => {
                v.add(field("ended_on"), "must not be before registered_on");
            }
            _ => {}
        }
        validate::text(
            v,
            &field("end_reason"),
            &r.end_reason,
            validate::REQUIRED_LONG_TEXT,
        );
        validate::no_identity(v, &field("end_reason"), &r.end_reason);
    } else {
        if ended.is_some() {
            v.add(field("ended_on"), "only when the status is ended");
        }
        if !r.end_reason.is_empty() {
            v.add(field("end_reason"), "only when the status is ended");
        }
    }
}

#[cfg(test)]
mod tests {
    use referral_proto::v1::CalendarDate;

    use super::*;

    fn cd(y: i16, m: i8, d: i8) -> CalendarDate {
        validate::to_calendar_date(Date::new(y, m, d).unwrap())
    }

    fn child_iin() -> String {
        (1..100)
            .find_map(|serial| {
                referral_core::iin::Iin::generate(
                    Date::new(2012, 5, 15).unwrap(),
                    referral_proto::v1::Sex::Male,
                    serial,
                )
            })
            .unwrap()
            .into_string()
    }

    fn fields(r: &PreventiveRegistration) -> Vec<String> {
        let mut v = FieldViolations::new();
        preventive_registration(r, Date::new(2026, 3, 10).unwrap(), &mut v, "p");
        v.iter().map(|f| f.field.clone()).collect()
    }

    fn registered() -> PreventiveRegistration {
        PreventiveRegistration {
            case_reference: "C-1".into(),
            investigation_reference: "INV-1".into(),
            status: PreventiveRegistrationStatus::Registered as i32,
            registered_on: Some(cd(2026, 3, 1)),
            grounds: "Құрдасына дене жарақатын салды / Причинил телесные повреждения".into(),
            inspector: "Ерлан Сапаров".into(),
            ended_on: None,
            end_reason: String::new(),
        }
    }

    #[test]
    fn a_whole_registration_and_its_end_pass() {
        assert!(fields(&registered()).is_empty());
        let ended = PreventiveRegistration {
            status: PreventiveRegistrationStatus::Ended as i32,
            ended_on: Some(cd(2026, 3, 9)),
            end_reason: "Түзелді / Исправился".into(),
            ..registered()
        };
        assert!(fields(&ended).is_empty());
    }

    #[test]
    fn every_bad_field_is_named() {
        let bad = PreventiveRegistration {
            case_reference: String::new(),
            investigation_reference: String::new(),
            status: 0,
            registered_on: Some(cd(2026, 3, 11)),
            grounds: format!("ЖСН {}", child_iin()),
            inspector: String::new(),
            ended_on: Some(cd(2026, 3, 2)),
            end_reason: "x".into(),
        };
        let named = fields(&bad);
        for f in [
            "p.case_reference",
            "p.investigation_reference",
            "p.status",
            "p.registered_on",
            "p.grounds",
            "p.inspector",
            "p.ended_on",
            "p.end_reason",
        ] {
            assert!(named.iter().any(|n| n == f), "{f}: {named:?}");
        }
        let ended_early = PreventiveRegistration {
            status: PreventiveRegistrationStatus::Ended as i32,
            ended_on: Some(cd(2026, 2, 1)),
            end_reason: String::new(),
            ..registered()
        };
        let named = fields(&ended_early);
        assert_eq!(named, ["p.ended_on", "p.end_reason"], "{named:?}");
        let no_date = PreventiveRegistration {
            registered_on: None,
            ..registered()
        };
        assert_eq!(fields(&no_date), ["p.registered_on"]);
    }

    #[test]
    fn an_unknown_child_role_is_named() {
        let mut v = FieldViolations::new();
        let u = InvestigationUpdate {
            child_role: 42,
            ..Default::default()
        };
        investigation_child_role(&u, &mut v, "u");
        assert_eq!(
            v.iter().map(|f| f.field.as_str()).collect::<Vec<_>>(),
            ["u.child_role"]
        );
    }
}
