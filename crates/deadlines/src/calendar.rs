//! Working days and a district's local time. [`HolidayCalendar`] reads the official days
//! off and the weekend days made working days from a TOML file (`deploy/holidays-kz.toml`
//! ships Kazakhstan's); [`DistrictCalendar`] adds the district's IANA time zone, so that
//! every clock counts local dates and local midnights.

use std::{
    collections::BTreeSet,
    io,
    ops::Bound,
    path::{Path, PathBuf},
    sync::Arc,
};

use jiff::{
    Span, Timestamp,
    civil::{Date, Weekday},
    tz::TimeZone,
};
use serde::Deserialize;

/// Kazakhstan's calendar as shipped in `deploy/holidays-kz.toml`.
const EMBEDDED_KAZAKHSTAN: &str = include_str!("../../../deploy/holidays-kz.toml");

#[derive(Debug, thiserror::Error)]
pub enum CalendarError {
    #[error("cannot read the holiday calendar {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("the holiday calendar {} is not valid: {reason}", path.display())]
    InFile {
        path: PathBuf,
        reason: Box<CalendarError>,
    },
    #[error("the holiday calendar is not valid TOML of the expected shape: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("the holiday calendar is not valid: {0}")]
    Invalid(String),
    #[error("unknown time zone {name:?}: {source}")]
    UnknownTimeZone { name: String, source: jiff::Error },
}

/// Official non-working days (public holidays and the government's transferred days off) and
/// working weekend days (transfers), from a TOML file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolidayCalendar {
    /// The years the file claims to list completely.
    years: BTreeSet<i16>,
    days_off: BTreeSet<Date>,
    working_days: BTreeSet<Date>,
}

/// The file's shape; see the header of `deploy/holidays-kz.toml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CalendarFile {
    years: Vec<i16>,
    #[serde(default)]
    days_off: Vec<Entry>,
    #[serde(default)]
    working_days: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    date: toml::value::Datetime,
    // Required so that the file stays readable by people; the engine needs only the date.
    #[serde(rename = "name_kk")]
    _name_kk: String,
    #[serde(rename = "name_ru")]
    _name_ru: String,
}

impl HolidayCalendar {
    /// Parses and checks a calendar: every date is a plain TOML date in one of `years`, no
    /// date is listed twice, and every working day is a Saturday or a Sunday.
    pub fn parse(text: &str) -> Result<Self, CalendarError> {
        let file: CalendarFile = toml::from_str(text)?;
        if file.years.is_empty() {
            return Err(CalendarError::Invalid("`years` lists no year".into()));
        }
        let years: BTreeSet<i16> = file.years.into_iter().collect();
        let mut calendar = Self {
            years,
            days_off: BTreeSet::new(),
            working_days: BTreeSet::new(),
        };
        for entry in &file.days_off {
            let date = calendar.listed_date(entry)?;
            calendar.days_off.insert(date);
        }
        for entry in &file.working_days {
            let date = calendar.listed_date(entry)?;
            if !is_weekend(date) {
                return Err(CalendarError::Invalid(format!(
                    "working day {date} is a {:?}: only a Saturday or a Sunday can be made a working day",
                    date.weekday()
                )));
            }
            calendar.working_days.insert(date);
        }
        Ok(calendar)
    }

    /// Reads and parses the calendar file at `path`.
    pub fn load(path: &Path) -> Result<Self, CalendarError> {
        let text = std::fs::read_to_string(path).map_err(|source| CalendarError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| CalendarError::InFile {
            path: path.to_path_buf(),
            reason: Box::new(reason),
        })
    }

    /// Kazakhstan's calendar as shipped in `deploy/holidays-kz.toml`, compiled in.
    /// The file is checked by this crate's tests; were it ever invalid, this returns a
    /// calendar of weekends only that covers no year (see [`HolidayCalendar::covers`]).
    pub fn embedded_kazakhstan() -> Self {
        Self::parse(EMBEDDED_KAZAKHSTAN).unwrap_or_else(|_| Self {
            years: BTreeSet::new(),
            days_off: BTreeSet::new(),
            working_days: BTreeSet::new(),
        })
    }

    /// Monday to Friday unless listed as a day off; Saturday and Sunday only when listed as a
    /// working day.
    pub fn is_working_day(&self, d: Date) -> bool {
        if self.days_off.contains(&d) {
            return false;
        }
        !is_weekend(d) || self.working_days.contains(&d)
    }

    /// The `n`-th working day after `from` (`from` itself is not counted; `n = 0` gives
    /// `from`). Saturates at [`Date::MAX`].
    pub fn add_working_days(&self, from: Date, n: u32) -> Date {
        self.walk(from, n, Direction::Forward)
    }

    /// The `n`-th working day before `from` (`from` itself is not counted; `n = 0` gives
    /// `from`). Saturates at [`Date::MIN`].
    pub fn sub_working_days(&self, from: Date, n: u32) -> Date {
        self.walk(from, n, Direction::Backward)
    }

    /// Whether the file lists that year (and so claims to know all its days off).
    pub fn covers(&self, year: i16) -> bool {
        self.years.contains(&year)
    }

    fn listed_date(&self, entry: &Entry) -> Result<Date, CalendarError> {
        let date = toml_date(&entry.date)?;
        if !self.covers(date.year()) {
            return Err(CalendarError::Invalid(format!(
                "{date} is in a year that `years` does not list"
            )));
        }
        if self.days_off.contains(&date) || self.working_days.contains(&date) {
            return Err(CalendarError::Invalid(format!("{date} is listed twice")));
        }
        Ok(date)
    }

    fn walk(&self, from: Date, n: u32, direction: Direction) -> Date {
        let limit = match direction {
            Direction::Forward => Date::MAX,
            Direction::Backward => Date::MIN,
        };
        let mut d = from;
        let mut left = n;
        while left > 0 {
            // Where no date is listed, each 7 calendar days hold exactly 5 working days: skip
            // whole weeks there, so that a long walk costs little.
            let free_weeks = u32::try_from(self.free_days(d, direction) / 7).unwrap_or(u32::MAX);
            let weeks = ((left - 1) / 5).min(free_weeks);
            let (days, counted) = if weeks > 0 {
                (i64::from(weeks) * 7, weeks * 5)
            } else {
                (1, 0)
            };
            let Some(next) = shift_days(d, direction.sign() * days) else {
                return limit;
            };
            d = next;
            left -= counted;
            if weeks == 0 && self.is_working_day(d) {
                left -= 1;
            }
        }
        d
    }

    /// How many days next to `d`, in `direction`, no date is listed (`i64::MAX`: none further).
    fn free_days(&self, d: Date, direction: Direction) -> i64 {
        let nearest = |set: &BTreeSet<Date>| match direction {
            Direction::Forward => set
                .range((Bound::Excluded(d), Bound::Unbounded))
                .next()
                .copied(),
            Direction::Backward => set.range(..d).next_back().copied(),
        };
        let nearest = match (nearest(&self.days_off), nearest(&self.working_days)) {
            (Some(a), Some(b)) => match direction {
                Direction::Forward => a.min(b),
                Direction::Backward => a.max(b),
            },
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return i64::MAX,
        };
        d.until(nearest)
            .map_or(0, |span| i64::from(span.get_days()).abs() - 1)
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Forward,
    Backward,
}

impl Direction {
    fn sign(self) -> i64 {
        match self {
            Direction::Forward => 1,
            Direction::Backward => -1,
        }
    }
}

fn is_weekend(d: Date) -> bool {
    matches!(d.weekday(), Weekday::Saturday | Weekday::Sunday)
}

/// `d` moved by `days` calendar days; `None` outside jiff's range of dates.
pub(crate) fn shift_days(d: Date, days: i64) -> Option<Date> {
    let span = Span::new().try_days(days).ok()?;
    d.checked_add(span).ok()
}

fn toml_date(value: &toml::value::Datetime) -> Result<Date, CalendarError> {
    let invalid = || {
        CalendarError::Invalid(format!(
            "{value} is not a plain date: write it like 2026-03-23, without quotes, time or offset"
        ))
    };
    let (Some(d), None, None) = (value.date, value.time, value.offset) else {
        return Err(invalid());
    };
    let year = i16::try_from(d.year).map_err(|_| invalid())?;
    let month = i8::try_from(d.month).map_err(|_| invalid())?;
    let day = i8::try_from(d.day).map_err(|_| invalid())?;
    Date::new(year, month, day).map_err(|_| invalid())
}

/// A district's calendar: its IANA time zone plus the holidays.
#[derive(Debug, Clone)]
pub struct DistrictCalendar {
    pub tz: TimeZone,
    pub holidays: Arc<HolidayCalendar>,
}

impl DistrictCalendar {
    /// `tz_name` is an IANA name such as `Asia/Almaty`, looked up in the time-zone database.
    pub fn new(tz_name: &str, holidays: Arc<HolidayCalendar>) -> Result<Self, CalendarError> {
        let tz = TimeZone::get(tz_name).map_err(|source| CalendarError::UnknownTimeZone {
            name: tz_name.to_owned(),
            source,
        })?;
        Ok(Self { tz, holidays })
    }

    /// The district's local date at instant `t`.
    pub fn local_date(&self, t: Timestamp) -> Date {
        t.to_zoned(self.tz.clone()).date()
    }

    /// The first instant of local date `d` (midnight, or the end of a gap when a transition
    /// skips midnight). Saturates at [`Timestamp::MIN`] / [`Timestamp::MAX`] for dates at the
    /// ends of jiff's range.
    pub fn start_of_day(&self, d: Date) -> Timestamp {
        d.to_zoned(self.tz.clone())
            .and_then(|z| z.start_of_day())
            .map(|z| z.timestamp())
            .unwrap_or(if d.year() < 0 {
                Timestamp::MIN
            } else {
                Timestamp::MAX
            })
    }
}

#[cfg(test)]
mod tests {
    use jiff::civil::date;

    use super::*;

    fn kz() -> HolidayCalendar {
        HolidayCalendar::embedded_kazakhstan()
    }

    /// Working days counted one by one, as the oracle for the week-skipping walk.
    fn naive_add(cal: &HolidayCalendar, from: Date, n: u32, step: i64) -> Date {
        let mut d = from;
        let mut left = n;
        while left > 0 {
            d = shift_days(d, step).unwrap();
            if cal.is_working_day(d) {
                left -= 1;
            }
        }
        d
    }

    fn working_days_in(cal: &HolidayCalendar, year: i16) -> usize {
        let mut d = date(year, 1, 1);
        let mut count = 0;
        while d.year() == year {
            if cal.is_working_day(d) {
                count += 1;
            }
            d = d.tomorrow().unwrap();
        }
        count
    }

    #[test]
    fn the_embedded_calendar_parses_and_covers_2025_to_2027() {
        let cal = HolidayCalendar::parse(EMBEDDED_KAZAKHSTAN).unwrap();
        assert_eq!(cal, kz());
        for year in 2025..=2027 {
            assert!(cal.covers(year), "{year}");
        }
        assert!(!cal.covers(2024));
        assert!(!cal.covers(2028));
        // Nauryz, a Monday.
        assert!(cal.days_off.contains(&date(2026, 3, 23)));
        assert!(!cal.is_working_day(date(2026, 3, 23)));
        // Kurban Ait 2026, a Wednesday.
        assert!(!cal.is_working_day(date(2026, 5, 27)));
        // 2025: the day off moved from Sunday 5 January to Friday 3 January.
        assert!(!cal.is_working_day(date(2025, 1, 3)));
        assert!(cal.is_working_day(date(2025, 1, 5)));
        // An ordinary Saturday and an ordinary Tuesday.
        assert!(!cal.is_working_day(date(2026, 4, 4)));
        assert!(cal.is_working_day(date(2026, 4, 7)));
    }

    #[test]
    fn working_day_totals_match_the_official_calendars() {
        let cal = kz();
        // egov.kz: 246 working days in 2025 (five-day week).
        assert_eq!(working_days_in(&cal, 2025), 246);
        // egov.kz said 246 for 2026, counting Monday 31 August for Constitution Day, which
        // the new Constitution removed: 247.
        assert_eq!(working_days_in(&cal, 2026), 247);
        assert!(cal.is_working_day(date(2026, 8, 31)));
    }

    #[test]
    fn working_days_skip_weekends_and_holidays() {
        let cal = kz();
        // Friday before the Nauryz week: Sat 21 to Wed 25 March 2026 are all off.
        assert_eq!(
            cal.add_working_days(date(2026, 3, 20), 1),
            date(2026, 3, 26)
        );
        assert_eq!(
            cal.add_working_days(date(2026, 3, 20), 3),
            date(2026, 3, 30)
        );
        assert_eq!(
            cal.sub_working_days(date(2026, 3, 26), 1),
            date(2026, 3, 20)
        );
        assert_eq!(
            cal.add_working_days(date(2026, 3, 21), 0),
            date(2026, 3, 21)
        );
        // The Sunday made a working day counts.
        assert_eq!(cal.add_working_days(date(2025, 1, 2), 1), date(2025, 1, 5));
    }

    #[test]
    fn skipping_whole_weeks_agrees_with_counting_day_by_day() {
        let cal = kz();
        for from in [
            date(2024, 6, 1),
            date(2025, 8, 1),
            date(2026, 3, 20),
            date(2026, 6, 15),
            date(2027, 12, 30),
            date(2031, 2, 5),
        ] {
            for n in [1, 5, 6, 7, 11, 250, 777] {
                assert_eq!(
                    cal.add_working_days(from, n),
                    naive_add(&cal, from, n, 1),
                    "{from} + {n}"
                );
                assert_eq!(
                    cal.sub_working_days(from, n),
                    naive_add(&cal, from, n, -1),
                    "{from} - {n}"
                );
            }
        }
    }

    #[test]
    fn huge_counts_saturate() {
        let cal = kz();
        assert_eq!(cal.add_working_days(date(2026, 1, 1), u32::MAX), Date::MAX);
        assert_eq!(cal.sub_working_days(date(2026, 1, 1), u32::MAX), Date::MIN);
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let entry = |table: &str, d: &str| {
            format!("[[{table}]]\ndate = {d}\nname_kk = \"x\"\nname_ru = \"x\"\n")
        };
        let years = "years = [2026]\n";
        let cases = [
            (
                format!("{years}{}", entry("working_days", "2026-03-24")),
                "only a Saturday or a Sunday",
            ),
            (
                format!("{years}{}", entry("days_off", "2027-01-01")),
                "does not list",
            ),
            (
                format!(
                    "{years}{}{}",
                    entry("days_off", "2026-01-01"),
                    entry("days_off", "2026-01-01")
                ),
                "listed twice",
            ),
            (
                format!("{years}{}", entry("days_off", "2026-01-01T00:00:00")),
                "not a plain date",
            ),
            ("years = []\n".to_owned(), "no year"),
            (
                format!("{years}[[days_off]]\ndate = 2026-01-01\nname = \"x\"\n"),
                "unknown field",
            ),
        ];
        for (text, expected) in cases {
            let err = HolidayCalendar::parse(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} should say {expected:?}");
        }
    }

    #[test]
    fn load_names_the_file() {
        let err = HolidayCalendar::load(Path::new("/nonexistent/holidays.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/holidays.toml"));
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/holidays-kz.toml"
        ));
        assert_eq!(HolidayCalendar::load(path).unwrap(), kz());
    }

    #[test]
    fn local_dates_and_midnights_in_almaty() {
        let cal = DistrictCalendar::new("Asia/Almaty", Arc::new(kz())).unwrap();
        // Almaty is UTC+5 since 1 March 2024.
        let midnight: Timestamp = "2026-03-10T19:00:00Z".parse().unwrap();
        assert_eq!(cal.start_of_day(date(2026, 3, 11)), midnight);
        let before = midnight - Span::new().seconds(1);
        assert_eq!(cal.local_date(before), date(2026, 3, 10));
        assert_eq!(cal.local_date(midnight), date(2026, 3, 11));
        assert!(DistrictCalendar::new("Asia/Nowhere", Arc::new(kz())).is_err());
    }
}
