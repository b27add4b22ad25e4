//! Every field of an incident report D (M:3457-3568), with the rules of every form
//! ([`referral_agency::checks`], which are `referral_core::validate`'s): at most one violation
//! per field, named by its path in the request (`incident.children[1].risk_tier`), saying what
//! is expected and never what was sent.

use std::collections::BTreeSet;

use jiff::civil::Date;
use referral_agency::checks::{
    LONG_TEXT, PERSON_NAME, REQUIRED_LONG_TEXT, SHORT_TEXT, Text, past_date, required_enum, text,
    text_list,
};
use referral_core::{FieldViolations, iin};
use referral_proto::v1::{
    IncidentReport, IncidentRole, ProblemBehaviour, ReporterStatus, RiskTier,
};

/// The most children, injured people or witnesses one report lists.
pub const MAX_PEOPLE: usize = 100;
/// A description of injuries.
const INJURIES: Text = Text::required(1, 1000).multiline();

/// Checks a report D recorded on `today` (the district's date) under `prefix` (`incident`).
pub fn incident_report(d: &IncidentReport, today: Date, v: &mut FieldViolations, prefix: &str) {
    let f = |name: &str| format!("{prefix}.{name}");
    let report_date = past_date(v, &f("report_date"), d.report_date.as_ref(), today);
    text(v, &f("reporter_name"), &d.reporter_name, PERSON_NAME);
    required_enum::<ReporterStatus>(v, &f("reporter_status"), d.reporter_status);
    let incident_date = past_date(v, &f("incident_date"), d.incident_date.as_ref(), today);
    if let (Some(reported), Some(happened)) = (report_date, incident_date)
        && happened > reported
    {
        v.add(f("incident_date"), "must not be after the report date");
    }
    text(v, &f("description"), &d.description, REQUIRED_LONG_TEXT);

    // Problem behaviours: at least one, each known and listed once; OTHER is described.
    let mut other = false;
    if d.behaviours.is_empty() {
        v.add(f("behaviours"), "at least one is required");
    } else {
        let mut seen = BTreeSet::new();
        for (i, &b) in d.behaviours.iter().enumerate() {
            let field = format!("{prefix}.behaviours[{i}]");
            if let Some(behaviour) = required_enum::<ProblemBehaviour>(v, &field, b) {
                if !seen.insert(b) {
                    v.add(field, "each behaviour at most once");
                }
                other |= behaviour == ProblemBehaviour::Other;
            }
        }
    }
    if other {
        text(v, &f("behaviour_other"), &d.behaviour_other, SHORT_TEXT);
    } else if !d.behaviour_other.is_empty() {
        v.add(
            f("behaviour_other"),
            "only with the behaviour PROBLEM_BEHAVIOUR_OTHER",
        );
    }

    // Harm: the number harmed is the number of injured people listed, and nobody is listed or
    // sent for medical help when nobody was harmed.
    if d.injured.len() > MAX_PEOPLE {
        v.add(
            f("injured"),
            format!("must have at most {MAX_PEOPLE} entries"),
        );
    } else {
        for (i, person) in d.injured.iter().enumerate() {
            let p = format!("{prefix}.injured[{i}]");
            text(v, &format!("{p}.full_name"), &person.full_name, PERSON_NAME);
            text(v, &format!("{p}.injuries"), &person.injuries, INJURIES);
        }
    }
    if d.anyone_harmed {
        if d.injured.is_empty() {
            v.add(f("injured"), "at least one when anyone was harmed");
        }
        if d.number_harmed as usize != d.injured.len() {
            v.add(
                f("number_harmed"),
                "must equal the number of injured people listed",
            );
        }
    } else {
        if d.number_harmed != 0 {
            v.add(f("number_harmed"), "must be 0 when nobody was harmed");
        }
        if !d.injured.is_empty() {
            v.add(f("injured"), "must be empty when nobody was harmed");
        }
        if d.sent_for_medical_help {
            v.add(f("sent_for_medical_help"), "only when someone was harmed");
        }
    }

    // The children directly involved: each with a role and a risk tier (M:3535-3550).
    if d.children.is_empty() {
        v.add(f("children"), "at least one child involved is required");
    } else if d.children.len() > MAX_PEOPLE {
        v.add(
            f("children"),
            format!("must have at most {MAX_PEOPLE} entries"),
        );
    } else {
        let mut iins = BTreeSet::new();
        for (i, child) in d.children.iter().enumerate() {
            let p = format!("{prefix}.children[{i}]");
            text(v, &format!("{p}.full_name"), &child.full_name, PERSON_NAME);
            required_enum::<IncidentRole>(v, &format!("{p}.role"), child.role);
            required_enum::<RiskTier>(v, &format!("{p}.risk_tier"), child.risk_tier);
            if !child.iin.is_empty() {
                if iin::parse(&child.iin).is_err() {
                    v.add(format!("{p}.iin"), "a valid 12-digit IIN, or empty");
                } else if !iins.insert(child.iin.as_str()) {
                    v.add(format!("{p}.iin"), "each child at most once");
                }
            }
        }
    }
    text_list(
        v,
        &f("pupil_witnesses"),
        &d.pupil_witnesses,
        PERSON_NAME,
        false,
        MAX_PEOPLE,
    );
    text_list(
        v,
        &f("staff_witnesses"),
        &d.staff_witnesses,
        PERSON_NAME,
        false,
        MAX_PEOPLE,
    );
    text(
        v,
        &f("additional_information"),
        &d.additional_information,
        LONG_TEXT,
    );
}

/// A month named by year and month: a real month from 2000 to 2100, not after `today`'s.
pub fn month(v: &mut FieldViolations, year: i32, month: i32, today: Date) -> Option<(i16, i8)> {
    if !(2000..=2100).contains(&year) {
        v.add("year", "a year from 2000 to 2100");
        return None;
    }
    if !(1..=12).contains(&month) {
        v.add("month", "a month from 1 to 12");
        return None;
    }
    let (y, m) = (year as i16, month as i8);
    if (y, m) > (today.year(), today.month()) {
        v.add("month", "must not be in the future");
        return None;
    }
    Some((y, m))
}

#[cfg(test)]
pub(crate) mod tests {
    use jiff::civil::date;
    use referral_core::validate::to_calendar_date;
    use referral_proto::v1::{InjuredPerson, InvolvedChild};

    use super::*;

    pub(crate) fn sample(on: Date) -> IncidentReport {
        IncidentReport {
            report_date: Some(to_calendar_date(on)),
            reporter_name: "Асель Нұрова".into(),
            reporter_status: ReporterStatus::Teacher as i32,
            incident_date: Some(to_calendar_date(on)),
            description: "Үзілісте төбелес болды.".into(),
            behaviours: vec![ProblemBehaviour::FightOrPhysicalAggression as i32],
            behaviour_other: String::new(),
            anyone_harmed: true,
            number_harmed: 1,
            injured: vec![InjuredPerson {
                full_name: "Ерасыл Қанатұлы".into(),
                injuries: "мұрнынан қан кетті".into(),
            }],
            sent_for_medical_help: true,
            children: vec![
                InvolvedChild {
                    full_name: "Ерасыл Қанатұлы".into(),
                    role: IncidentRole::Victim as i32,
                    risk_tier: RiskTier::AtRisk as i32,
                    iin: String::new(),
                },
                InvolvedChild {
                    full_name: "Дәурен Серікұлы".into(),
                    role: IncidentRole::Perpetrator as i32,
                    risk_tier: RiskTier::HighRisk as i32,
                    iin: String::new(),
                },
            ],
            pupil_witnesses: vec!["Айым Болатқызы".into()],
            staff_witnesses: vec![],
            repeated_behaviour: false,
            additional_information: String::new(),
        }
    }

    fn fields(d: &IncidentReport, today: Date) -> Vec<String> {
        let mut v = FieldViolations::new();
        incident_report(d, today, &mut v, "incident");
        v.iter().map(|f| f.field.clone()).collect()
    }

    #[test]
    fn a_complete_report_passes() {
        let today = date(2026, 11, 20);
        assert_eq!(fields(&sample(today), today), Vec::<String>::new());
    }

    #[test]
    fn every_bad_field_is_named() {
        let today = date(2026, 11, 20);
        type Spoil = Box<dyn Fn(&mut IncidentReport)>;
        let cases: Vec<(&str, Spoil)> = vec![
            ("incident.report_date", Box::new(|d| d.report_date = None)),
            (
                "incident.report_date",
                Box::new(move |d| d.report_date = Some(to_calendar_date(date(2026, 11, 21)))),
            ),
            (
                "incident.reporter_name",
                Box::new(|d| d.reporter_name = "  ".into()),
            ),
            (
                "incident.reporter_status",
                Box::new(|d| d.reporter_status = 0),
            ),
            (
                "incident.reporter_status",
                Box::new(|d| d.reporter_status = 99),
            ),
            (
                "incident.incident_date",
                Box::new(move |d| d.incident_date = Some(to_calendar_date(date(2026, 11, 21)))),
            ),
            (
                "incident.incident_date",
                Box::new(move |d| {
                    d.report_date = Some(to_calendar_date(date(2026, 11, 18)));
                }),
            ),
            ("incident.description", Box::new(|d| d.description.clear())),
            ("incident.behaviours", Box::new(|d| d.behaviours.clear())),
            ("incident.behaviours[1]", Box::new(|d| d.behaviours.push(5))),
            ("incident.behaviours[0]", Box::new(|d| d.behaviours[0] = 0)),
            (
                "incident.behaviour_other",
                Box::new(|d| d.behaviours.push(ProblemBehaviour::Other as i32)),
            ),
            (
                "incident.behaviour_other",
                Box::new(|d| d.behaviour_other = "x".into()),
            ),
            ("incident.number_harmed", Box::new(|d| d.number_harmed = 2)),
            (
                "incident.number_harmed",
                Box::new(|d| {
                    d.anyone_harmed = false;
                    d.injured.clear();
                    d.sent_for_medical_help = false;
                }),
            ),
            (
                "incident.sent_for_medical_help",
                Box::new(|d| {
                    d.anyone_harmed = false;
                    d.number_harmed = 0;
                    d.injured.clear();
                }),
            ),
            (
                "incident.injured[0].injuries",
                Box::new(|d| d.injured[0].injuries.clear()),
            ),
            (
                "incident.injured[0].full_name",
                Box::new(|d| d.injured[0].full_name = "12".into()),
            ),
            ("incident.children", Box::new(|d| d.children.clear())),
            (
                "incident.children[1].risk_tier",
                Box::new(|d| d.children[1].risk_tier = 0),
            ),
            (
                "incident.children[0].role",
                Box::new(|d| d.children[0].role = 7),
            ),
            (
                "incident.children[1].full_name",
                Box::new(|d| d.children[1].full_name.clear()),
            ),
            (
                "incident.children[0].iin",
                Box::new(|d| d.children[0].iin = "123456789012".into()),
            ),
            (
                "incident.pupil_witnesses[0]",
                Box::new(|d| d.pupil_witnesses[0] = "a\u{202E}b".into()),
            ),
            (
                "incident.staff_witnesses[0]",
                Box::new(|d| d.staff_witnesses.push(String::new())),
            ),
            (
                "incident.additional_information",
                Box::new(|d| d.additional_information = "x".repeat(4001)),
            ),
        ];
        for (field, spoil) in cases {
            let mut d = sample(today);
            spoil(&mut d);
            assert_eq!(fields(&d, today), vec![field.to_owned()], "{field}");
        }
    }

    #[test]
    fn months_are_real_and_not_in_the_future() {
        let today = date(2026, 11, 20);
        let check = |y, m| {
            let mut v = FieldViolations::new();
            month(&mut v, y, m, today);
            v.iter().map(|f| f.field.clone()).collect::<Vec<_>>()
        };
        assert!(check(2026, 11).is_empty());
        assert!(check(2025, 12).is_empty());
        assert_eq!(check(2026, 12), vec!["month"]);
        assert_eq!(check(2026, 13), vec!["month"]);
        assert_eq!(check(1999, 1), vec!["year"]);
    }
}
