//! The investigation clocks of a reported incident (M:1588-1622): with an injury, or a risk of
//! one, the safety team starts investigating on the day it was reported; otherwise within 1-2
//! days of the report (taken as 2 working days); the investigation takes no more than 1-2 days
//! (taken as 2 working days after the start). The rule lives once, in `referral-deadlines`
//! (`investigation_start_due`, `investigation_finish_due`); this module shows its dates on each
//! incident (`start_by`, `finish_by`, and whether either is overdue by the service's clock) with
//! the default periods. The gateway's deadline engine keeps the same clocks as deadlines
//! (INVESTIGATION_START, INVESTIGATION_FINISH), fed by the clock events the service queues with
//! each step ([`crate::api`]), and alerts the safety team and the director when one is missed.

use jiff::{Timestamp, civil::Date};
use referral_deadlines::{
    DeadlineSettings, DistrictCalendar, investigation_finish_due, investigation_start_due,
};

/// The last day to start investigating an incident reported on `reported_on`.
pub fn start_by(cal: &DistrictCalendar, reported_on: Date, urgent: bool) -> Date {
    investigation_start_due(reported_on, urgent, &DeadlineSettings::default(), cal)
}

/// The last day to finish: counted from the day it started, or, until it starts, from the last
/// day to start.
pub fn finish_by(cal: &DistrictCalendar, start_by: Date, started_at: Option<Timestamp>) -> Date {
    let from = started_at.map_or(start_by, |t| cal.local_date(t));
    investigation_finish_due(from, &DeadlineSettings::default(), cal)
}

/// Whether a step due on `due` and not done is overdue at `now`: after the end of its day.
pub fn overdue(cal: &DistrictCalendar, due: Date, now: Timestamp) -> bool {
    cal.local_date(now) > due
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use jiff::civil::date;
    use referral_deadlines::HolidayCalendar;

    use super::*;

    fn almaty() -> DistrictCalendar {
        DistrictCalendar::new(
            "Asia/Almaty",
            Arc::new(HolidayCalendar::embedded_kazakhstan()),
        )
        .unwrap()
    }

    #[test]
    fn an_injury_starts_the_same_day_even_before_a_holiday_weekend() {
        let cal = almaty();
        // Friday 5 March 2027; Monday 8 March is a holiday.
        let friday = date(2027, 3, 5);
        assert_eq!(start_by(&cal, friday, true), friday);
        // Started that Friday: two working days are Tuesday and Wednesday.
        let started: Timestamp = "2027-03-05T10:00:00+05:00[Asia/Almaty]"
            .parse::<jiff::Zoned>()
            .unwrap()
            .timestamp();
        assert_eq!(finish_by(&cal, friday, Some(started)), date(2027, 3, 10));
    }

    #[test]
    fn without_injury_two_working_days_to_start_and_two_to_finish() {
        let cal = almaty();
        let friday = date(2027, 3, 5);
        let start = start_by(&cal, friday, false);
        assert_eq!(start, date(2027, 3, 10));
        assert_eq!(finish_by(&cal, start, None), date(2027, 3, 12));
    }

    #[test]
    fn the_start_is_the_local_date_in_the_district() {
        let cal = almaty();
        // 20:00 UTC on Thursday 4 March is already Friday 5 March in Almaty.
        let started: Timestamp = "2027-03-04T20:00:00Z".parse().unwrap();
        assert_eq!(
            finish_by(&cal, date(2027, 3, 4), Some(started)),
            date(2027, 3, 10)
        );
    }

    #[test]
    fn overdue_only_after_the_end_of_the_due_day() {
        let cal = almaty();
        let due = date(2027, 3, 5);
        let late_evening: Timestamp = "2027-03-05T18:59:00Z".parse().unwrap();
        let next_morning: Timestamp = "2027-03-05T19:01:00Z".parse().unwrap();
        assert!(!overdue(&cal, due, late_evening));
        assert!(overdue(&cal, due, next_morning));
    }
}
