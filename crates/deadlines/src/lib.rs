//! Deadline arithmetic for the commission's clocks (DOMAIN.md section 4, issue 3) and the
//! agencies' own clocks (issue 5, the `agency` rules): working days that skip weekends and the official holidays of a calendar file, calendar-correct
//! months, and the instants at which a deadline warns, falls due, becomes overdue and
//! escalates, all in the district's local time zone.
//!
//! Pure: no database, no network, no clock; the only I/O is [`HolidayCalendar::load`]. The
//! gateway's deadline engine stores the [`Schedule`] and drives states with [`state_at`] and
//! [`next_transition`].

#![forbid(unsafe_code)]

mod agency;
mod calendar;
mod schedule;
mod settings;

pub use agency::{
    agency_schedule, allegation_to_director_due, investigation_finish_due, investigation_start_due,
    protection_service_answer_due, weekly_progress_due, written_confirmation_schedule,
};
pub use calendar::{CalendarError, DistrictCalendar, HolidayCalendar};
pub use schedule::{
    Lead, ReviewDateError, Schedule, add_months, assessment_due, help_request_decision_due,
    lead_for, next_transition, review_due, schedule, state_at, support_plan_due,
};
pub use settings::DeadlineSettings;
