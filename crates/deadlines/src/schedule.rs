//! Due dates of each deadline kind and the instants at which an open deadline warns, falls
//! due, becomes overdue and escalates, all in the district's local time.

use jiff::{Span, Timestamp, civil::Date};
use referral_proto::v1::{DeadlineKind, DeadlineState};

use crate::{
    calendar::{DistrictCalendar, shift_days},
    settings::DeadlineSettings,
};

/// When a deadline warns, falls due, is overdue and escalates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// The start of the warning day; never after `due_day_starts_at`.
    pub warn_at: Timestamp,
    /// The start of the due day, local time.
    pub due_day_starts_at: Timestamp,
    /// The end of the due day (the start of the next), local time: overdue from here on.
    pub due_at: Timestamp,
    /// Overdue for `escalation_days`: the commission chair is told.
    pub escalate_at: Timestamp,
    /// The local due date.
    pub due_on: Date,
}

/// How long before the due date a deadline warns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lead {
    Days(u32),
    WorkingDays(u32),
}

/// The review date a meeting fixed is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewDateError {
    #[error(
        "the next review date must be on or after {from}, the date of the plan or the last review"
    )]
    BeforeFrom { fixed: Date, from: Date },
    #[error(
        "the next review date must be no later than {latest}, {months} months after the plan or the last review"
    )]
    TooLate {
        fixed: Date,
        latest: Date,
        months: u32,
    },
}

/// `due_day_starts_at` = start of `due_on` in the district's zone; `due_at` = start of the
/// next day (end of the due day); `warn_at` = start of the day `lead` before `due_on`
/// (working days for [`Lead::WorkingDays`]), never after `due_day_starts_at`;
/// `escalate_at` = start of the day `escalation_days` after `due_on + 1` (calendar days,
/// local). Saturates at the ends of jiff's range instead of failing.
pub fn schedule(
    due_on: Date,
    lead: Lead,
    settings: &DeadlineSettings,
    cal: &DistrictCalendar,
) -> Schedule {
    let warn_on = match lead {
        Lead::Days(n) => shift_days(due_on, -i64::from(n)).unwrap_or(Date::MIN),
        Lead::WorkingDays(n) => cal.holidays.sub_working_days(due_on, n),
    };
    let after_due = shift_days(due_on, 1).unwrap_or(Date::MAX);
    let escalate_on =
        shift_days(after_due, i64::from(settings.escalation_days)).unwrap_or(Date::MAX);
    let due_day_starts_at = cal.start_of_day(due_on);
    Schedule {
        warn_at: cal.start_of_day(warn_on).min(due_day_starts_at),
        due_day_starts_at,
        due_at: cal.start_of_day(after_due),
        escalate_at: cal.start_of_day(escalate_on),
        due_on,
    }
}

/// The decision on a help request K: `help_request_decision_working_days` working days after
/// the local date of receipt.
pub fn help_request_decision_due(
    received_at: Timestamp,
    s: &DeadlineSettings,
    cal: &DistrictCalendar,
) -> Date {
    cal.holidays.add_working_days(
        cal.local_date(received_at),
        s.help_request_decision_working_days,
    )
}

/// The assessment L: `assessment_days` calendar days after the local date of opening.
pub fn assessment_due(opened_at: Timestamp, s: &DeadlineSettings, cal: &DistrictCalendar) -> Date {
    add_days(cal.local_date(opened_at), s.assessment_days)
}

/// The support plan M: `support_plan_days` calendar days after the local date L was filed.
pub fn support_plan_due(
    assessment_filed_at: Timestamp,
    s: &DeadlineSettings,
    cal: &DistrictCalendar,
) -> Date {
    add_days(cal.local_date(assessment_filed_at), s.support_plan_days)
}

/// Calendar-correct month arithmetic: 2025-08-31 + 6 months = 2026-02-28 (jiff clamps to the
/// end of the month). Saturates at [`Date::MAX`].
pub fn add_months(d: Date, months: u32) -> Date {
    Span::new()
        .try_months(i64::from(months))
        .ok()
        .and_then(|span| d.checked_add(span).ok())
        .unwrap_or(Date::MAX)
}

/// The review due date: `fixed` when given (it must be on or after `from` and not later than
/// `from + review_max_months`), otherwise `from + review_high_risk_months` when the risk is
/// high and `from + review_max_months` when not (never later than the maximum either way).
pub fn review_due(
    from: Date,
    fixed: Option<Date>,
    high_risk: bool,
    s: &DeadlineSettings,
) -> Result<Date, ReviewDateError> {
    let latest = add_months(from, s.review_max_months);
    match fixed {
        Some(fixed) if fixed < from => Err(ReviewDateError::BeforeFrom { fixed, from }),
        Some(fixed) if fixed > latest => Err(ReviewDateError::TooLate {
            fixed,
            latest,
            months: s.review_max_months,
        }),
        Some(fixed) => Ok(fixed),
        None if high_risk => Ok(add_months(from, s.review_high_risk_months).min(latest)),
        None => Ok(latest),
    }
}

/// The lead each kind warns with.
pub fn lead_for(kind: DeadlineKind, s: &DeadlineSettings) -> Lead {
    match kind {
        DeadlineKind::HelpRequestDecision => {
            Lead::WorkingDays(s.help_request_decision_warn_working_days)
        }
        DeadlineKind::Assessment => Lead::Days(s.assessment_warn_days),
        DeadlineKind::SupportPlan => Lead::Days(s.support_plan_warn_days),
        DeadlineKind::PlanReview => Lead::Days(s.review_warn_days),
        DeadlineKind::Action => Lead::Days(s.action_warn_days),
        // Agency clocks (crate::agency). An urgent investigation, due the day it is reported,
        // warns that day; an allegation warns the day it is recorded.
        DeadlineKind::InvestigationStart | DeadlineKind::InvestigationFinish => {
            Lead::WorkingDays(s.investigation_warn_working_days)
        }
        DeadlineKind::ProtectionServiceAnswer => {
            Lead::WorkingDays(s.protection_service_answer_warn_working_days)
        }
        DeadlineKind::AllegationToDirector => {
            Lead::WorkingDays(s.allegation_to_director_working_days)
        }
        DeadlineKind::WeeklyProgress => Lead::Days(s.weekly_progress_warn_days),
        // An instant, not a day: see crate::agency::written_confirmation_schedule.
        DeadlineKind::WrittenConfirmation | DeadlineKind::Unspecified => Lead::Days(0),
    }
}

/// Time-driven state of an open deadline at `now`: Pending < Warned < Due < Overdue <
/// Escalated. (Met and Cancelled come from events, never from time.)
pub fn state_at(s: &Schedule, now: Timestamp) -> DeadlineState {
    if now >= s.escalate_at {
        DeadlineState::Escalated
    } else if now >= s.due_at {
        DeadlineState::Overdue
    } else if now >= s.due_day_starts_at {
        DeadlineState::Due
    } else if now >= s.warn_at {
        DeadlineState::Warned
    } else {
        DeadlineState::Pending
    }
}

/// The next time-driven state after `state` and the instant it begins; `None` after
/// Escalated and for Met, Cancelled and Unspecified. Instants never decrease along the walk,
/// but two states may begin at the same instant (a zero lead, zero escalation days).
pub fn next_transition(s: &Schedule, state: DeadlineState) -> Option<(DeadlineState, Timestamp)> {
    match state {
        DeadlineState::Pending => Some((DeadlineState::Warned, s.warn_at)),
        DeadlineState::Warned => Some((DeadlineState::Due, s.due_day_starts_at)),
        DeadlineState::Due => Some((DeadlineState::Overdue, s.due_at)),
        DeadlineState::Overdue => Some((DeadlineState::Escalated, s.escalate_at)),
        DeadlineState::Escalated
        | DeadlineState::Met
        | DeadlineState::Cancelled
        | DeadlineState::Unspecified => None,
    }
}

fn add_days(d: Date, days: u32) -> Date {
    shift_days(d, i64::from(days)).unwrap_or(Date::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use jiff::civil::date;

    use super::*;
    use crate::calendar::HolidayCalendar;

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
    fn a_help_request_on_the_friday_before_a_monday_holiday() {
        let s = DeadlineSettings::default();
        let cal = almaty();
        // Friday 6 March 2026, 00:30 local (Thursday in UTC); Monday 9 March is the day off for
        // 8 March: working days 10, 11, 12 March.
        let received = ts("2026-03-05T19:30:00Z");
        assert_eq!(cal.local_date(received), date(2026, 3, 6));
        assert_eq!(
            help_request_decision_due(received, &s, &cal),
            date(2026, 3, 12)
        );
        // Friday 20 March 2026: Nauryz and its transfers take Saturday to Wednesday; working
        // days 26, 27 and 30 March.
        let received = ts("2026-03-20T10:00:00Z");
        let due = help_request_decision_due(received, &s, &cal);
        assert_eq!(due, date(2026, 3, 30));
        // Warned one working day earlier: Friday 27 March.
        let sched = schedule(
            due,
            lead_for(DeadlineKind::HelpRequestDecision, &s),
            &s,
            &cal,
        );
        assert_eq!(sched.warn_at, ts("2026-03-26T19:00:00Z"));
    }

    #[test]
    fn an_assessment_crossing_a_month_end() {
        let s = DeadlineSettings::default();
        let opened = ts("2026-01-20T04:00:00Z");
        assert_eq!(assessment_due(opened, &s, &almaty()), date(2026, 2, 10));
        assert_eq!(support_plan_due(opened, &s, &almaty()), date(2026, 2, 3));
    }

    #[test]
    fn a_review_from_31_august_is_due_at_the_end_of_february() {
        let s = DeadlineSettings::default();
        assert_eq!(add_months(date(2026, 8, 31), 6), date(2027, 2, 28));
        assert_eq!(add_months(date(2027, 8, 31), 6), date(2028, 2, 29));
        assert_eq!(
            review_due(date(2026, 8, 31), None, false, &s),
            Ok(date(2027, 2, 28))
        );
        assert_eq!(
            review_due(date(2026, 8, 31), None, true, &s),
            Ok(date(2026, 11, 30))
        );
        assert_eq!(
            review_due(date(2027, 8, 31), None, false, &s),
            Ok(date(2028, 2, 29))
        );
    }

    #[test]
    fn a_fixed_review_date_must_lie_within_six_months() {
        let s = DeadlineSettings::default();
        let from = date(2026, 8, 31);
        assert_eq!(
            review_due(from, Some(date(2027, 2, 28)), false, &s),
            Ok(date(2027, 2, 28))
        );
        assert_eq!(review_due(from, Some(from), true, &s), Ok(from));
        let late = review_due(from, Some(date(2027, 3, 1)), false, &s).unwrap_err();
        assert_eq!(
            late,
            ReviewDateError::TooLate {
                fixed: date(2027, 3, 1),
                latest: date(2027, 2, 28),
                months: 6
            }
        );
        assert!(late.to_string().contains("no later than 2027-02-28"));
        let early = review_due(from, Some(date(2026, 8, 30)), false, &s).unwrap_err();
        assert!(matches!(early, ReviewDateError::BeforeFrom { .. }));
        assert!(early.to_string().contains("on or after 2026-08-31"));
    }

    #[test]
    fn the_due_instant_is_the_local_midnight_after_the_due_date() {
        let s = DeadlineSettings::default();
        let sched = schedule(date(2026, 3, 10), Lead::Days(3), &s, &almaty());
        assert_eq!(sched.due_day_starts_at, ts("2026-03-09T19:00:00Z"));
        assert_eq!(sched.due_at, ts("2026-03-10T19:00:00Z"));
        assert_eq!(sched.warn_at, ts("2026-03-06T19:00:00Z"));
        // Overdue from 11 March; escalated 5 days later, on 16 March.
        assert_eq!(sched.escalate_at, ts("2026-03-15T19:00:00Z"));
        let second = Span::new().seconds(1);
        assert_eq!(state_at(&sched, sched.due_at - second), DeadlineState::Due);
        assert_eq!(state_at(&sched, sched.due_at), DeadlineState::Overdue);
        assert_eq!(
            state_at(&sched, sched.due_at + second),
            DeadlineState::Overdue
        );
        assert_eq!(
            state_at(&sched, sched.due_day_starts_at - second),
            DeadlineState::Warned
        );
        assert_eq!(
            state_at(&sched, sched.warn_at - second),
            DeadlineState::Pending
        );
        assert_eq!(
            state_at(&sched, sched.escalate_at),
            DeadlineState::Escalated
        );
    }

    #[test]
    fn days_are_local_days_in_a_zone_with_daylight_saving() {
        // Havana springs forward at midnight: 8 March 2026 starts at 01:00 -04:00.
        let cal = DistrictCalendar::new(
            "America/Havana",
            Arc::new(HolidayCalendar::embedded_kazakhstan()),
        )
        .unwrap();
        let s = DeadlineSettings::default();
        let sched = schedule(date(2026, 3, 8), Lead::Days(1), &s, &cal);
        assert_eq!(sched.warn_at, ts("2026-03-07T05:00:00Z"));
        assert_eq!(sched.due_day_starts_at, ts("2026-03-08T05:00:00Z"));
        assert_eq!(sched.due_at, ts("2026-03-09T04:00:00Z"));
    }

    #[test]
    fn transitions_walk_in_order_to_escalated() {
        let s = DeadlineSettings::default();
        let sched = schedule(date(2026, 3, 10), Lead::Days(3), &s, &almaty());
        let mut state = DeadlineState::Pending;
        let mut at = Timestamp::MIN;
        let mut walked = vec![state];
        while let Some((next, begins)) = next_transition(&sched, state) {
            assert!(begins >= at, "{next:?} begins before {state:?}");
            assert_eq!(state_at(&sched, begins), next);
            state = next;
            at = begins;
            walked.push(state);
        }
        use DeadlineState::*;
        assert_eq!(walked, [Pending, Warned, Due, Overdue, Escalated]);
        assert_eq!(next_transition(&sched, Met), None);
        assert_eq!(next_transition(&sched, Cancelled), None);
    }

    #[test]
    fn zero_periods_give_equal_not_decreasing_instants() {
        let s = DeadlineSettings {
            escalation_days: 0,
            ..DeadlineSettings::default()
        };
        let sched = schedule(date(2026, 3, 10), Lead::Days(0), &s, &almaty());
        assert_eq!(sched.warn_at, sched.due_day_starts_at);
        assert_eq!(sched.escalate_at, sched.due_at);
        assert_eq!(state_at(&sched, sched.due_at), DeadlineState::Escalated);
    }

    #[test]
    fn warning_never_comes_after_the_due_day_starts() {
        let s = DeadlineSettings::default();
        let cal = almaty();
        for lead in [
            Lead::Days(u32::MAX),
            Lead::WorkingDays(u32::MAX),
            Lead::Days(0),
            Lead::WorkingDays(0),
        ] {
            for due in [date(2026, 3, 10), date(2026, 3, 21), Date::MIN, Date::MAX] {
                let sched = schedule(due, lead, &s, &cal);
                assert!(sched.warn_at <= sched.due_day_starts_at, "{lead:?} {due}");
                assert!(sched.due_day_starts_at <= sched.due_at, "{lead:?} {due}");
                assert!(sched.due_at <= sched.escalate_at, "{lead:?} {due}");
            }
        }
        // A due date on a holiday warns a working day before it: Friday 20 March 2026.
        let sched = schedule(date(2026, 3, 23), Lead::WorkingDays(1), &s, &cal);
        assert_eq!(sched.warn_at, ts("2026-03-19T19:00:00Z"));
    }

    #[test]
    fn each_kind_warns_with_its_own_lead() {
        let s = DeadlineSettings::default();
        assert_eq!(
            lead_for(DeadlineKind::HelpRequestDecision, &s),
            Lead::WorkingDays(1)
        );
        assert_eq!(lead_for(DeadlineKind::Assessment, &s), Lead::Days(3));
        assert_eq!(lead_for(DeadlineKind::SupportPlan, &s), Lead::Days(3));
        assert_eq!(lead_for(DeadlineKind::PlanReview, &s), Lead::Days(14));
        assert_eq!(lead_for(DeadlineKind::Action, &s), Lead::Days(3));
        assert_eq!(
            lead_for(DeadlineKind::InvestigationStart, &s),
            Lead::WorkingDays(1)
        );
        assert_eq!(
            lead_for(DeadlineKind::ProtectionServiceAnswer, &s),
            Lead::WorkingDays(1)
        );
        assert_eq!(lead_for(DeadlineKind::WeeklyProgress, &s), Lead::Days(1));
    }
}
