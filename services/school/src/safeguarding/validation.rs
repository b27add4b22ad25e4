//! Field checks of the safeguarding requests: at most one violation per field, named by its path
//! in the request, descriptions that never repeat what was sent (the rules of
//! `referral_agency::checks`).

use jiff::{SignedDuration, Timestamp, civil::Date, tz::TimeZone};
use referral_agency::checks::{self, PERSON_NAME, REQUIRED_LONG_TEXT, Text};
use referral_core::{FieldViolations, time, validate};
use referral_proto::v1::{RecordAllegationRequest, ReportConcernRequest, SetLeadAbsenceRequest};

/// A pupil's class, e.g. `7Б` or `11 «А»`.
const PUPIL_CLASS: Text = Text::required(1, 20);
/// A note on an absence.
const ABSENCE_NOTE: Text = Text::optional(200);
/// How far ahead an absence may be recorded, in days.
pub const ABSENCE_MAX_DAYS_AHEAD: i64 = 366;
/// How far ahead of the service's clock a reported instant may be (clock skew between machines).
const CLOCK_SKEW: SignedDuration = SignedDuration::from_mins(5);

/// A concern as reported; the observed date when it is valid.
pub fn concern(v: &mut FieldViolations, r: &ReportConcernRequest, today: Date) -> Option<Date> {
    validate::idempotency_key(&r.idempotency_key, "idempotency_key", v);
    checks::text(v, "pupil_name", &r.pupil_name, PERSON_NAME);
    checks::text(v, "pupil_class", &r.pupil_class, PUPIL_CLASS);
    checks::text(v, "what_happened", &r.what_happened, REQUIRED_LONG_TEXT);
    checks::past_date(v, "observed_on", r.observed_on.as_ref(), today)
}

/// An absence of the lead: (first day, last day) when valid.
pub fn absence(
    v: &mut FieldViolations,
    r: &SetLeadAbsenceRequest,
    today: Date,
) -> Option<(Date, Date)> {
    validate::idempotency_key(&r.idempotency_key, "idempotency_key", v);
    checks::text(v, "note", &r.note, ABSENCE_NOTE);
    let latest = today
        .checked_add(jiff::Span::new().days(ABSENCE_MAX_DAYS_AHEAD))
        .unwrap_or(today);
    let first = checks::required_date(v, "first_day", r.first_day.as_ref());
    let last = checks::required_date(v, "last_day", r.last_day.as_ref());
    let first = first.filter(|d| {
        let ok = *d >= today && *d <= latest;
        if !ok {
            v.add(
                "first_day",
                format!("must be from today to {ABSENCE_MAX_DAYS_AHEAD} days ahead"),
            );
        }
        ok
    });
    let last = last.filter(|d| {
        let ok = *d >= today && *d <= latest;
        if !ok {
            v.add(
                "last_day",
                format!("must be from today to {ABSENCE_MAX_DAYS_AHEAD} days ahead"),
            );
        }
        ok
    });
    match (first, last) {
        (Some(first), Some(last)) if last < first => {
            v.add("last_day", "must not be before first_day");
            None
        }
        (Some(first), Some(last)) => Some((first, last)),
        _ => None,
    }
}

/// An allegation as recorded; the date it happened when valid. `staff_ids` are the user ids of
/// the school's staff in the directory.
pub fn allegation<'a>(
    v: &mut FieldViolations,
    r: &RecordAllegationRequest,
    today: Date,
    mut is_staff: impl FnMut(&str) -> bool + 'a,
) -> Option<Date> {
    validate::idempotency_key(&r.idempotency_key, "idempotency_key", v);
    match (
        r.accused_user_id.is_empty(),
        r.accused_name.trim().is_empty(),
    ) {
        (true, true) => v.add("accused_user_id", "required, or accused_name"),
        (false, false) => v.add(
            "accused_name",
            "give accused_user_id or accused_name, not both",
        ),
        (false, true) => {
            checks::message_id(v, "accused_user_id", &r.accused_user_id);
            if !v.contains("accused_user_id") && !is_staff(&r.accused_user_id) {
                v.add("accused_user_id", "must be a member of this school's staff");
            }
        }
        (true, false) => checks::text(v, "accused_name", &r.accused_name, PERSON_NAME),
    }
    checks::text(v, "allegation", &r.allegation, REQUIRED_LONG_TEXT);
    checks::past_date(v, "happened_on", r.happened_on.as_ref(), today)
}

/// The instant of a phone call: given, real, not in the future, not before the first moment of
/// the day the concern was observed (in the district's zone).
pub fn phoned_at(
    v: &mut FieldViolations,
    value: Option<&referral_proto::Timestamp>,
    now: Timestamp,
    observed_on: Date,
    tz: &TimeZone,
) -> Option<Timestamp> {
    let Some(value) = value else {
        v.add("phoned_at", "required");
        return None;
    };
    let Some(at) = time::from_proto(value) else {
        v.add("phoned_at", "must be a real instant");
        return None;
    };
    if at > now + CLOCK_SKEW {
        v.add("phoned_at", "must not be in the future");
        return None;
    }
    let day_starts = observed_on
        .to_zoned(tz.clone())
        .map(|z| z.timestamp())
        .unwrap_or(Timestamp::UNIX_EPOCH);
    if at < day_starts {
        v.add(
            "phoned_at",
            "must not be before the day the concern was observed",
        );
        return None;
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use referral_proto::v1::CalendarDate;

    use super::*;

    fn date(y: i32, m: i32, d: i32) -> Option<CalendarDate> {
        Some(CalendarDate {
            year: y,
            month: m,
            day: d,
        })
    }

    fn today() -> Date {
        "2026-11-20".parse().unwrap()
    }

    #[test]
    fn an_absence_must_not_start_in_the_past_nor_end_before_it_starts() {
        let mut v = FieldViolations::new();
        let r = SetLeadAbsenceRequest {
            idempotency_key: "absence-0001".into(),
            first_day: date(2026, 11, 19),
            last_day: date(2026, 11, 25),
            note: String::new(),
        };
        assert_eq!(absence(&mut v, &r, today()), None);
        assert!(v.contains("first_day"));
        let mut v = FieldViolations::new();
        let r = SetLeadAbsenceRequest {
            first_day: date(2026, 11, 25),
            last_day: date(2026, 11, 21),
            ..r
        };
        assert_eq!(absence(&mut v, &r, today()), None);
        assert!(v.contains("last_day"));
        let mut v = FieldViolations::new();
        let r = SetLeadAbsenceRequest {
            first_day: date(2026, 11, 20),
            last_day: date(2026, 11, 20),
            ..r
        };
        assert_eq!(absence(&mut v, &r, today()), Some((today(), today())));
        assert!(v.is_empty());
    }

    #[test]
    fn a_concern_names_every_bad_field() {
        let mut v = FieldViolations::new();
        let r = ReportConcernRequest {
            idempotency_key: "short".into(),
            pupil_name: "  ".into(),
            pupil_class: "x".repeat(21),
            what_happened: String::new(),
            observed_on: date(2026, 11, 21),
            at_risk_now: false,
        };
        assert_eq!(concern(&mut v, &r, today()), None);
        for field in [
            "idempotency_key",
            "pupil_name",
            "pupil_class",
            "what_happened",
            "observed_on",
        ] {
            assert!(v.contains(field), "{field}");
        }
    }

    #[test]
    fn an_allegation_names_one_accused() {
        let base = RecordAllegationRequest {
            idempotency_key: "allegation-01".into(),
            accused_user_id: String::new(),
            accused_name: String::new(),
            allegation: "Сынып жетекшісі оқушыны итеріп жіберді".into(),
            happened_on: date(2026, 11, 20),
        };
        let mut v = FieldViolations::new();
        allegation(&mut v, &base, today(), |_| true);
        assert!(v.contains("accused_user_id"));
        let mut v = FieldViolations::new();
        let r = RecordAllegationRequest {
            accused_user_id: "nobody".into(),
            ..base.clone()
        };
        allegation(&mut v, &r, today(), |id| id == "director");
        assert!(v.contains("accused_user_id"));
        let mut v = FieldViolations::new();
        let r = RecordAllegationRequest {
            accused_name: "Иван Иванов".into(),
            ..base
        };
        assert_eq!(allegation(&mut v, &r, today(), |_| false), Some(today()));
        assert!(v.is_empty());
    }

    #[test]
    fn a_phone_call_is_not_in_the_future_nor_before_the_observed_day() {
        let tz = TimeZone::get("Asia/Almaty").unwrap();
        let now: Timestamp = "2026-11-20T06:00:00Z".parse().unwrap();
        let mut v = FieldViolations::new();
        let future = time::to_proto(now + SignedDuration::from_hours(1));
        assert_eq!(phoned_at(&mut v, Some(&future), now, today(), &tz), None);
        assert!(v.contains("phoned_at"));
        let mut v = FieldViolations::new();
        let before = time::to_proto("2026-11-19T17:00:00Z".parse().unwrap());
        assert_eq!(phoned_at(&mut v, Some(&before), now, today(), &tz), None);
        let mut v = FieldViolations::new();
        let ok = time::to_proto(now);
        assert_eq!(phoned_at(&mut v, Some(&ok), now, today(), &tz), Some(now));
    }
}
