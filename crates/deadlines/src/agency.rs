//! The agency clocks (issue 5): the deadlines a school, residential institution or NGO keeps for
//! itself, fed to the gateway's engine by the agencies' clock events. Each rule is a pure
//! function of the event's instant, the settings and the district's calendar:
//!
//! * an incident's investigation starts on the report's day when anyone is injured or at risk
//!   of injury, otherwise within `investigation_start_working_days` working days, and finishes
//!   within `investigation_finish_working_days` working days of its start (M:1588-1622);
//! * a concern first phoned to the child-protection service follows in writing within
//!   `written_confirmation_hours` hours, an instant, not a day (P:158-160);
//! * the child-protection service answers the written report within
//!   `protection_service_answer_working_days` working days, or the lead contacts it again
//!   (P:160-162);
//! * an allegation against a staff member reaches the director within
//!   `allegation_to_director_working_days` working days (P:176-178);
//! * an NGO reports progress on a service every `weekly_progress_days` days (M:2251-2255).
//!
//! A school shows the investigation's dates on each incident with the same functions, so the
//! rule exists once.

use jiff::{SignedDuration, Timestamp, civil::Date};

use crate::{
    calendar::{DistrictCalendar, shift_days},
    schedule::{Lead, Schedule, schedule},
    settings::DeadlineSettings,
};

/// The last day to start investigating an incident reported on the local date `reported_on`:
/// that day when `urgent` (injury or risk of injury), otherwise the working days of the settings
/// after it.
pub fn investigation_start_due(
    reported_on: Date,
    urgent: bool,
    s: &DeadlineSettings,
    cal: &DistrictCalendar,
) -> Date {
    if urgent {
        reported_on
    } else {
        cal.holidays
            .add_working_days(reported_on, s.investigation_start_working_days)
    }
}

/// The last day to finish an investigation started (or due to start) on the local date
/// `started_on`.
pub fn investigation_finish_due(
    started_on: Date,
    s: &DeadlineSettings,
    cal: &DistrictCalendar,
) -> Date {
    cal.holidays
        .add_working_days(started_on, s.investigation_finish_working_days)
}

/// The day the child-protection service's answer to a written report sent at `reported_at` is
/// due (at its end the lead is told to contact the service again).
pub fn protection_service_answer_due(
    reported_at: Timestamp,
    s: &DeadlineSettings,
    cal: &DistrictCalendar,
) -> Date {
    cal.holidays.add_working_days(
        cal.local_date(reported_at),
        s.protection_service_answer_working_days,
    )
}

/// The day an allegation recorded at `recorded_at` must have reached the director.
pub fn allegation_to_director_due(
    recorded_at: Timestamp,
    s: &DeadlineSettings,
    cal: &DistrictCalendar,
) -> Date {
    cal.holidays.add_working_days(
        cal.local_date(recorded_at),
        s.allegation_to_director_working_days,
    )
}

/// The day the next weekly progress report on a service is due, counted from the local date of
/// `from` (the service's start or the last report).
pub fn weekly_progress_due(from: Timestamp, s: &DeadlineSettings, cal: &DistrictCalendar) -> Date {
    shift_days(cal.local_date(from), i64::from(s.weekly_progress_days)).unwrap_or(Date::MAX)
}

/// The schedule of a day-based agency clock due on `due_on`: like every deadline's
/// ([`schedule`]), overdue at the end of the due day, but escalated (to the agency's head) after
/// `agency_escalation_days`.
pub fn agency_schedule(
    due_on: Date,
    lead: Lead,
    s: &DeadlineSettings,
    cal: &DistrictCalendar,
) -> Schedule {
    let escalation = DeadlineSettings {
        escalation_days: s.agency_escalation_days,
        ..s.clone()
    };
    schedule(due_on, lead, &escalation, cal)
}

/// The schedule of the written confirmation of a concern phoned at `phoned_at`: due at the
/// instant `written_confirmation_hours` later, not at the end of a day. It warns (and is due)
/// `written_confirmation_warn_hours` before that instant, never before the call; it is overdue
/// from the instant on, and escalated `agency_escalation_days` days (of 24 hours) later.
/// `due_on` is the local date of the due instant. Saturates instead of failing.
pub fn written_confirmation_schedule(
    phoned_at: Timestamp,
    s: &DeadlineSettings,
    cal: &DistrictCalendar,
) -> Schedule {
    let hours = |n: u32| SignedDuration::from_hours(i64::from(n));
    let due_at = phoned_at
        .checked_add(hours(s.written_confirmation_hours))
        .unwrap_or(Timestamp::MAX);
    let warn_at = due_at
        .checked_sub(hours(s.written_confirmation_warn_hours))
        .unwrap_or(Timestamp::MIN)
        .max(phoned_at)
        .min(due_at);
    let escalate_at = due_at
        .checked_add(hours(s.agency_escalation_days.saturating_mul(24)))
        .unwrap_or(Timestamp::MAX);
    Schedule {
        warn_at,
        due_day_starts_at: warn_at,
        due_at,
        escalate_at,
        due_on: cal.local_date(due_at),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use jiff::civil::date;
    use referral_proto::v1::DeadlineKind;

    use super::*;
    use crate::{HolidayCalendar, lead_for, state_at};

    fn almaty() -> DistrictCalendar {
        DistrictCalendar::new(
            "Asia/Almaty",
            Arc::new(HolidayCalendar::embedded_kazakhstan()),
        )
        .unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn an_urgent_investigation_starts_the_same_day_even_before_a_holiday_weekend() {
        let (s, cal) = (DeadlineSettings::default(), almaty());
        // Friday 5 March 2027; Monday 8 March is a holiday.
        let friday = date(2027, 3, 5);
        assert_eq!(investigation_start_due(friday, true, &s, &cal), friday);
        // Started that Friday: two working days are Tuesday and Wednesday.
        assert_eq!(
            investigation_finish_due(friday, &s, &cal),
            date(2027, 3, 10)
        );
    }

    #[test]
    fn otherwise_two_working_days_to_start_and_two_to_finish_over_weekend_and_holiday() {
        let (s, cal) = (DeadlineSettings::default(), almaty());
        let friday = date(2027, 3, 5);
        let start = investigation_start_due(friday, false, &s, &cal);
        assert_eq!(start, date(2027, 3, 10), "Tuesday 9 and Wednesday 10");
        assert_eq!(investigation_finish_due(start, &s, &cal), date(2027, 3, 12));
        // An ordinary weekend: Friday 20 November 2026 -> Tuesday 24.
        assert_eq!(
            investigation_start_due(date(2026, 11, 20), false, &s, &cal),
            date(2026, 11, 24)
        );
        // Configurable: one working day.
        let one = DeadlineSettings {
            investigation_start_working_days: 1,
            ..s
        };
        assert_eq!(
            investigation_start_due(friday, false, &one, &cal),
            date(2027, 3, 9)
        );
    }

    #[test]
    fn the_written_confirmation_is_due_24_hours_later_to_the_instant() {
        let (s, cal) = (DeadlineSettings::default(), almaty());
        let phoned = ts("2026-11-20T06:15:00Z");
        let sched = written_confirmation_schedule(phoned, &s, &cal);
        assert_eq!(sched.due_at, ts("2026-11-21T06:15:00Z"));
        assert_eq!(sched.warn_at, ts("2026-11-21T00:15:00Z"));
        assert_eq!(sched.due_day_starts_at, sched.warn_at);
        assert_eq!(sched.escalate_at, ts("2026-11-23T06:15:00Z"));
        assert_eq!(sched.due_on, date(2026, 11, 21));
        let second = SignedDuration::from_secs(1);
        assert_eq!(
            state_at(&sched, sched.due_at - second),
            referral_proto::v1::DeadlineState::Due
        );
        assert_eq!(
            state_at(&sched, sched.due_at),
            referral_proto::v1::DeadlineState::Overdue
        );
        // A warning longer than the period warns at the call, never before it.
        let long = DeadlineSettings {
            written_confirmation_warn_hours: 48,
            ..DeadlineSettings::default()
        };
        assert_eq!(
            written_confirmation_schedule(phoned, &long, &cal).warn_at,
            phoned
        );
    }

    #[test]
    fn the_answer_takes_three_working_days_and_the_director_one() {
        let (s, cal) = (DeadlineSettings::default(), almaty());
        // Friday 6 March 2026, 00:30 local; Monday 9 March is the day off for 8 March.
        let friday_night = ts("2026-03-05T19:30:00Z");
        assert_eq!(
            protection_service_answer_due(friday_night, &s, &cal),
            date(2026, 3, 12)
        );
        assert_eq!(
            allegation_to_director_due(friday_night, &s, &cal),
            date(2026, 3, 10)
        );
    }

    #[test]
    fn weekly_progress_is_seven_calendar_days_on() {
        let (s, cal) = (DeadlineSettings::default(), almaty());
        assert_eq!(
            weekly_progress_due(ts("2026-11-27T10:00:00Z"), &s, &cal),
            date(2026, 12, 4)
        );
    }

    #[test]
    fn agency_clocks_escalate_after_their_own_period_and_warn_with_their_lead() {
        let (s, cal) = (DeadlineSettings::default(), almaty());
        let due = date(2026, 11, 24);
        let sched = agency_schedule(
            due,
            lead_for(DeadlineKind::InvestigationStart, &s),
            &s,
            &cal,
        );
        // Overdue from the local midnight after Tuesday 24; escalated two days later.
        assert_eq!(sched.due_at, ts("2026-11-24T19:00:00Z"));
        assert_eq!(sched.escalate_at, ts("2026-11-26T19:00:00Z"));
        // Warned one working day before: Monday 23.
        assert_eq!(sched.warn_at, ts("2026-11-22T19:00:00Z"));
    }
}
