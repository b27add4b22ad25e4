//! The periods of every deadline kind, configurable per deployment because the source says
//! "or the period national law sets" (DOMAIN.md section 4). Read from the hub's
//! configuration section `[deadlines]` (or `REFERRAL_HUB__DEADLINES__…`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Periods, each configurable per deployment ("or the period national law sets").
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct DeadlineSettings {
    /// Decision on a help request K: working days from the local date of receipt.
    pub help_request_decision_working_days: u32,
    /// Warn this many working days before the decision is due.
    pub help_request_decision_warn_working_days: u32,
    /// Assessment L: calendar days from the case's opening.
    pub assessment_days: u32,
    pub assessment_warn_days: u32,
    /// Support plan M: calendar days after L is filed.
    pub support_plan_days: u32,
    pub support_plan_warn_days: u32,
    /// A review is never later than this many months after the plan or the last review.
    pub review_max_months: u32,
    /// The default review period when the risk is high.
    pub review_high_risk_months: u32,
    pub review_warn_days: u32,
    /// Warn this many days before an action row of M is due.
    pub action_warn_days: u32,
    /// Overdue for this many days: escalated to the commission chair.
    pub escalation_days: u32,
    /// Agency clocks (issue 5). An incident's investigation starts on the report's day when
    /// anyone is injured or at risk of injury, otherwise within this many working days
    /// (M:1588-1622: "1-2 days", taken as 2 working days).
    pub investigation_start_working_days: u32,
    /// ...and finishes within this many working days of its start (M:1588-1622).
    pub investigation_finish_working_days: u32,
    /// Warn this many working days before an investigation's start or finish is due.
    pub investigation_warn_working_days: u32,
    /// A concern phoned to the child-protection service follows in writing within this many
    /// hours, an instant rather than a day (P:158-160: 24 hours).
    pub written_confirmation_hours: u32,
    /// Warn this many hours before the written confirmation is due.
    pub written_confirmation_warn_hours: u32,
    /// The child-protection service answers a written report within this many working days;
    /// otherwise the lead contacts it again (P:160-162: 3 working days).
    pub protection_service_answer_working_days: u32,
    pub protection_service_answer_warn_working_days: u32,
    /// An allegation against a staff member reaches the director within this many working days
    /// (P:176-178: 1 working day).
    pub allegation_to_director_working_days: u32,
    /// An NGO reports its progress on a service every this many days (M:2251-2255: weekly).
    pub weekly_progress_days: u32,
    pub weekly_progress_warn_days: u32,
    /// An agency clock overdue for this many days is escalated to the agency's head.
    pub agency_escalation_days: u32,
    /// The holiday calendar (TOML), relative to the working directory unless absolute.
    pub holidays_file: PathBuf,
}

impl Default for DeadlineSettings {
    fn default() -> Self {
        Self {
            help_request_decision_working_days: 3,
            help_request_decision_warn_working_days: 1,
            assessment_days: 21,
            assessment_warn_days: 3,
            support_plan_days: 14,
            support_plan_warn_days: 3,
            review_max_months: 6,
            review_high_risk_months: 3,
            review_warn_days: 14,
            action_warn_days: 3,
            escalation_days: 5,
            investigation_start_working_days: 2,
            investigation_finish_working_days: 2,
            investigation_warn_working_days: 1,
            written_confirmation_hours: 24,
            written_confirmation_warn_hours: 6,
            protection_service_answer_working_days: 3,
            protection_service_answer_warn_working_days: 1,
            allegation_to_director_working_days: 1,
            weekly_progress_days: 7,
            weekly_progress_warn_days: 1,
            agency_escalation_days: 2,
            holidays_file: PathBuf::from("deploy/holidays-kz.toml"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_section_keeps_the_other_defaults() {
        let s: DeadlineSettings = toml::from_str("assessment_days = 30").unwrap();
        assert_eq!(s.assessment_days, 30);
        assert_eq!(
            s,
            DeadlineSettings {
                assessment_days: 30,
                ..DeadlineSettings::default()
            }
        );
    }
}
