//! Dates as people write them in case-file forms and flags: `2026-03-10`, or relative to today
//! in the district (`today`, `+30d`, `-7d`), so that an example file stays valid whatever day it
//! is used on. Today is the date in the agency's district (Asia/Almaty for the demo district) by
//! the system clock; the service judges the dates by its own clock in the same time zone.
//!
//! Signature times are RFC 3339 instants, or `now`; an absent one is the time of sending.

use std::{fmt, str::FromStr};

use jiff::{Timestamp, ToSpan as _, civil::Date};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The largest offset in days a relative date may have (about 100 years).
const MAX_OFFSET_DAYS: i64 = 36_600;

/// A calendar date: a fixed one, or a number of days from today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateSpec {
    On(Date),
    /// `today` is `FromToday(0)`, `+30d` is `FromToday(30)`, `-7d` is `FromToday(-7)`.
    FromToday(i32),
}

impl DateSpec {
    pub const TODAY: Self = Self::FromToday(0);

    /// The date this names, on `today`.
    pub fn resolve(self, today: Date) -> Date {
        match self {
            Self::On(date) => date,
            Self::FromToday(days) => today
                .checked_add(i64::from(days).days())
                .unwrap_or(if days < 0 { Date::MIN } else { Date::MAX }),
        }
    }
}

/// Why a date could not be read (the value itself is not repeated: it may be personal data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a date must be YYYY-MM-DD, \"today\", or days from today such as \"+30d\" or \"-7d\"")]
pub struct DateSpecError;

impl FromStr for DateSpec {
    type Err = DateSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("today") {
            return Ok(Self::TODAY);
        }
        if let Some(rest) = s.strip_prefix(['+', '-']) {
            let negative = s.starts_with('-');
            let digits = rest
                .strip_suffix(['d', 'D'])
                .filter(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
                .ok_or(DateSpecError)?;
            let days: i64 = digits.parse().map_err(|_| DateSpecError)?;
            if days > MAX_OFFSET_DAYS {
                return Err(DateSpecError);
            }
            let days =
                i32::try_from(if negative { -days } else { days }).map_err(|_| DateSpecError)?;
            return Ok(Self::FromToday(days));
        }
        // Only the strict form: `2026-3-1` or `01.03.2026` are refused rather than guessed.
        if s.len() != 10 {
            return Err(DateSpecError);
        }
        s.parse::<Date>().map(Self::On).map_err(|_| DateSpecError)
    }
}

impl fmt::Display for DateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::On(date) => write!(f, "{date}"),
            Self::FromToday(0) => f.write_str("today"),
            Self::FromToday(days) => write!(f, "{days:+}d"),
        }
    }
}

impl Serialize for DateSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DateSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // TOML may hold a bare date (`assessed_on = 2026-03-10`), which is not a string.
        let value = toml::Value::deserialize(deserializer)?;
        let text = match &value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Datetime(d) => d.to_string(),
            _ => return Err(serde::de::Error::custom(DateSpecError)),
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The instant of a signature: a fixed one, or the time of sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignedAt {
    #[default]
    Now,
    At(Timestamp),
}

impl SignedAt {
    pub fn resolve(self, now: Timestamp) -> Timestamp {
        match self {
            Self::Now => now,
            Self::At(at) => at,
        }
    }
}

impl FromStr for SignedAt {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("now") {
            return Ok(Self::Now);
        }
        s.parse::<Timestamp>().map(Self::At).map_err(|_| {
            "a signature time must be an RFC 3339 instant such as 2026-03-10T09:00:00+05:00, or \"now\""
                .to_owned()
        })
    }
}

impl fmt::Display for SignedAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Now => f.write_str("now"),
            Self::At(at) => write!(f, "{at}"),
        }
    }
}

impl Serialize for SignedAt {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SignedAt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = toml::Value::deserialize(deserializer)?;
        let text = match &value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Datetime(d) => d.to_string(),
            _ => {
                return Err(serde::de::Error::custom(
                    "a signature time must be a string",
                ));
            }
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use jiff::civil::date;

    use super::*;

    #[test]
    fn dates_are_fixed_or_relative_to_today() {
        let today = date(2026, 2, 27);
        let resolve = |s: &str| s.parse::<DateSpec>().unwrap().resolve(today);
        assert_eq!(resolve("today"), today);
        assert_eq!(resolve(" Today "), today);
        assert_eq!(resolve("+30d"), date(2026, 3, 29));
        assert_eq!(resolve("+2d"), date(2026, 3, 1));
        assert_eq!(resolve("-30d"), date(2026, 1, 28));
        assert_eq!(resolve("2025-08-31"), date(2025, 8, 31));
        for bad in [
            "",
            "tomorrow",
            "30d",
            "+30",
            "+d",
            "+3w",
            "2026-2-1",
            "01.03.2026",
            "2026-02-30",
            "+99999999d",
        ] {
            assert!(bad.parse::<DateSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn dates_print_as_they_are_written() {
        for s in ["today", "+30d", "-7d", "2026-03-10"] {
            assert_eq!(s.parse::<DateSpec>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn files_may_hold_dates_as_strings_or_toml_dates() {
        #[derive(Deserialize)]
        struct F {
            a: DateSpec,
            b: DateSpec,
            s: SignedAt,
            t: SignedAt,
        }
        let f: F = toml::from_str(
            "a = \"+7d\"\nb = 2026-03-10\ns = \"now\"\nt = 2026-03-10T09:00:00+05:00\n",
        )
        .unwrap();
        assert_eq!(f.a, DateSpec::FromToday(7));
        assert_eq!(f.b, DateSpec::On(date(2026, 3, 10)));
        assert_eq!(f.s, SignedAt::Now);
        assert_eq!(f.t, SignedAt::At("2026-03-10T04:00:00Z".parse().unwrap()));
        let f: F = serde_json::from_str(
            r#"{"a":"today","b":"2026-03-10","s":"2026-03-10T04:00:00Z","t":"now"}"#,
        )
        .unwrap();
        assert_eq!(f.a, DateSpec::TODAY);
        assert!(toml::from_str::<F>("a = 3\nb = \"today\"\ns = \"now\"\nt = \"now\"\n").is_err());
    }
}
