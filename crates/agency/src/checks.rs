//! Field checks for the forms agency services validate themselves (the answers and progress
//! reports of this crate, the commission's case file): text, dates, enumerations, agency ids.
//!
//! The rules are those of `referral_core::validate` (which covers K and the decision): at most
//! one violation per field, named by its path in the request; "required" is trim-aware; lengths
//! count characters, not bytes, so Kazakh and Russian Cyrillic count like Latin; control
//! characters are refused except line feed, tab and CR-LF in multi-line text; bidirectional
//! overrides are refused; a person's name contains a letter. Descriptions say what is expected,
//! never what was sent, so no personal data reaches an error message or a log line.

use jiff::civil::Date;
use referral_core::{FieldViolations, directory::Directory, validate::calendar_date};
use referral_proto::v1::{AgencyKind, CalendarDate};

pub use referral_core::validate::{
    LONG_TEXT, LONG_TEXT_MAX, OPTIONAL_PERSON_NAME, PERSON_NAME, REQUIRED_LONG_TEXT, SHORT_TEXT,
    Text, text,
};

/// Checks each entry of a list of short texts (names, participants): at most `max_items`
/// entries, each under `rule`, named `field[i]`. With `at_least_one`, an empty list is refused.
pub fn text_list(
    v: &mut FieldViolations,
    field: &str,
    values: &[String],
    rule: Text,
    at_least_one: bool,
    max_items: usize,
) {
    if values.is_empty() {
        if at_least_one {
            v.add(field, "at least one is required");
        }
        return;
    }
    if values.len() > max_items {
        v.add(field, format!("must have at most {max_items} entries"));
        return;
    }
    for (i, value) in values.iter().enumerate() {
        text(v, &format!("{field}[{i}]"), value, rule);
    }
}

/// Whether a calendar date is unset (absent, or all zero).
pub fn is_unset(date: Option<&CalendarDate>) -> bool {
    date.is_none_or(|d| *d == CalendarDate::default())
}

/// A date that must be given and real; `None` (with a violation) otherwise.
pub fn required_date(
    v: &mut FieldViolations,
    field: &str,
    date: Option<&CalendarDate>,
) -> Option<Date> {
    match date {
        _ if is_unset(date) => {
            v.add(field, "required");
            None
        }
        Some(d) => real_date(v, field, d),
        None => None,
    }
}

/// A date that may be left unset; when set it must be real.
pub fn optional_date(
    v: &mut FieldViolations,
    field: &str,
    date: Option<&CalendarDate>,
) -> Option<Date> {
    match date {
        _ if is_unset(date) => None,
        Some(d) => real_date(v, field, d),
        None => None,
    }
}

fn real_date(v: &mut FieldViolations, field: &str, d: &CalendarDate) -> Option<Date> {
    let date = calendar_date(d);
    if date.is_none() {
        v.add(field, "must be a real calendar date");
    }
    date
}

/// A required, real date that is not after `today` (the district's date).
pub fn past_date(
    v: &mut FieldViolations,
    field: &str,
    date: Option<&CalendarDate>,
    today: Date,
) -> Option<Date> {
    let date = required_date(v, field, date)?;
    if date > today {
        v.add(field, "must not be in the future");
        return None;
    }
    Some(date)
}

/// Checks an enumeration value: known and not the `_UNSPECIFIED` zero. Returns the value when it
/// passes.
pub fn required_enum<E>(v: &mut FieldViolations, field: &str, value: i32) -> Option<E>
where
    E: TryFrom<i32>,
{
    match E::try_from(value) {
        // Every enumeration of the API starts with `_UNSPECIFIED = 0`.
        Ok(_) if value == 0 => {
            v.add(field, "required");
            None
        }
        Ok(e) => Some(e),
        Err(_) => {
            v.add(field, "unknown value");
            None
        }
    }
}

/// Checks a message id naming a message of this agency's store: required, at most 100
/// characters, printable ASCII.
pub fn message_id(v: &mut FieldViolations, field: &str, value: &str) {
    if value.trim().is_empty() {
        v.add(field, "required");
    } else if value.len() > 100 || !value.chars().all(|c| c.is_ascii_graphic()) {
        v.add(field, "must be a message id");
    }
}

/// Checks that `agency_id` names an agency of `district` in the directory, of one of `kinds` (any
/// kind when empty). `what` says what is expected, for the description.
pub fn district_agency(
    v: &mut FieldViolations,
    field: &str,
    agency_id: &str,
    directory: &Directory,
    district: &str,
    kinds: &[AgencyKind],
    what: &str,
) -> bool {
    if agency_id.trim().is_empty() {
        v.add(field, "required");
        return false;
    }
    let fits = directory
        .agency(agency_id)
        .is_some_and(|a| a.district == district && (kinds.is_empty() || kinds.contains(&a.kind())));
    if !fits {
        v.add(field, format!("must be {what}"));
    }
    fits
}

#[cfg(test)]
mod tests {
    use referral_proto::v1::ActionProgressState;

    use super::*;

    #[test]
    fn text_rules_count_characters_and_refuse_controls() {
        let mut v = FieldViolations::new();
        text(&mut v, "a", "   ", SHORT_TEXT);
        text(&mut v, "b", &"ә".repeat(200), SHORT_TEXT);
        text(&mut v, "c", &"ә".repeat(201), SHORT_TEXT);
        text(&mut v, "d", "line\nbreak", SHORT_TEXT);
        text(&mut v, "e", "line\r\nbreak\tand tab", LONG_TEXT);
        text(&mut v, "f", "12345", PERSON_NAME);
        text(&mut v, "g", "", LONG_TEXT);
        text(&mut v, "h", "evil\u{202E}name", PERSON_NAME);
        let fields: Vec<_> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["a", "c", "d", "f", "h"]);
        assert!(v.iter().all(|f| !f.description.contains("ә")));
    }

    #[test]
    fn dates_must_be_real_and_not_in_the_future() {
        let today = Date::constant(2026, 3, 2);
        let mut v = FieldViolations::new();
        let d = |y, m, d| CalendarDate {
            year: y,
            month: m,
            day: d,
        };
        assert_eq!(
            past_date(&mut v, "a", Some(&d(2026, 3, 2)), today),
            Some(today)
        );
        assert_eq!(past_date(&mut v, "b", Some(&d(2026, 3, 3)), today), None);
        assert_eq!(past_date(&mut v, "c", Some(&d(2026, 2, 30)), today), None);
        assert_eq!(past_date(&mut v, "d", None, today), None);
        assert_eq!(
            optional_date(&mut v, "e", Some(&CalendarDate::default())),
            None
        );
        let fields: Vec<_> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["b", "c", "d"]);
    }

    #[test]
    fn enumerations_must_be_known_and_specified() {
        let mut v = FieldViolations::new();
        assert_eq!(
            required_enum::<ActionProgressState>(&mut v, "a", 2),
            Some(ActionProgressState::Completed)
        );
        assert_eq!(required_enum::<ActionProgressState>(&mut v, "b", 0), None);
        assert_eq!(required_enum::<ActionProgressState>(&mut v, "c", 99), None);
        let fields: Vec<_> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["b", "c"]);
    }
}
