//! A seeded random life of many cases, and an oracle that says which deadline alerts the engine
//! must raise for it.
//!
//! The oracle is written from the rules of the issue (DOMAIN.md section 4 and issue 3), on its
//! own: it does not call the `referral-deadlines` crate or any engine code. If the engine and
//! the oracle disagree, one of them misreads the rules, and the test says where.

use std::collections::BTreeMap;

use jiff::{
    SignedDuration, Timestamp,
    civil::{Date, date},
    tz::TimeZone,
};

/// What the simulation can do to a case, at an instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Open {
        cycle: u32,
    },
    Assessment {
        cycle: u32,
        high_risk: bool,
    },
    Plan {
        cycle: u32,
        first_review_on: Option<Date>,
        rows: Vec<Row>,
    },
    /// The responsible agency reports a row completed.
    Complete {
        cycle: u32,
        number: u32,
    },
    Review {
        cycle: u32,
        next_review_on: Date,
        rows: Vec<Row>,
    },
    Close {
        cycle: u32,
    },
    Reopen {
        cycle: u32,
    },
}

/// An action row of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub number: u32,
    pub due_on: Date,
    /// Index into [`ROW_AGENCIES`].
    pub agency: usize,
}

/// The agencies action rows are assigned to, with a user who reports for each.
pub const ROW_AGENCIES: [(&str, &str); 3] = [
    ("ngo-1", "case-manager"),
    ("school-1", "director"),
    ("health-1", "doctor"),
];

/// One step of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at: Timestamp,
    pub case: usize,
    pub step: Step,
}

/// The deadline kinds the oracle knows, named as the engine names them in the protobuf enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Assessment,
    SupportPlan,
    PlanReview,
    Action,
}

/// The alert-raising states, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlertState {
    Warned,
    Due,
    Overdue,
    Escalated,
}

/// Identifies one deadline across engine and oracle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeadlineId {
    pub case: usize,
    pub cycle: u32,
    pub kind: Kind,
    /// An action row's number; for a review, which meeting fixed it (0 for the plan).
    pub number: u32,
    pub due_on: Date,
}

/// An alert the engine must raise: not before `at_or_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedAlert {
    pub deadline: DeadlineId,
    pub state: AlertState,
    /// The state's instant, or the deadline's creation if that came later.
    pub at_or_after: Timestamp,
}

/// The periods of the rules (the defaults).
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub assessment_days: i64,
    pub assessment_warn_days: i64,
    pub support_plan_days: i64,
    pub support_plan_warn_days: i64,
    pub review_months: i64,
    pub review_high_risk_months: i64,
    pub review_warn_days: i64,
    pub action_warn_days: i64,
    pub escalation_days: i64,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            assessment_days: 21,
            assessment_warn_days: 3,
            support_plan_days: 14,
            support_plan_warn_days: 3,
            review_months: 6,
            review_high_risk_months: 3,
            review_warn_days: 14,
            action_warn_days: 3,
            escalation_days: 5,
        }
    }
}

fn days_in_month(year: i16, month: i8) -> i8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// Calendar month arithmetic written out: the day is kept unless the target month is shorter.
pub fn plus_months(d: Date, months: i64) -> Date {
    let index = i64::from(d.year()) * 12 + i64::from(d.month() - 1) + months;
    let year = (index / 12) as i16;
    let month = (index % 12 + 1) as i8;
    date(year, month, d.day().min(days_in_month(year, month)))
}

fn plus_days(d: Date, days: i64) -> Date {
    d.checked_add(jiff::Span::new().days(days))
        .expect("dates stay in range")
}

/// The oracle's view of time in the district.
#[derive(Debug, Clone)]
pub struct Oracle {
    pub tz: TimeZone,
    pub rules: Rules,
}

struct Open {
    id: DeadlineId,
    created_at: Timestamp,
    instants: [Timestamp; 4],
    ended_at: Option<Timestamp>,
}

impl Oracle {
    pub fn almaty() -> Self {
        Self {
            tz: TimeZone::get("Asia/Almaty").expect("the tz database knows Almaty"),
            rules: Rules::default(),
        }
    }

    fn local_date(&self, t: Timestamp) -> Date {
        t.to_zoned(self.tz.clone()).date()
    }

    fn midnight(&self, d: Date) -> Timestamp {
        d.at(0, 0, 0, 0)
            .to_zoned(self.tz.clone())
            .expect("a local midnight exists")
            .timestamp()
    }

    /// Warned at the start of the day `warn_days` before the due day (never after the due day
    /// starts), due when the due day starts, overdue when it ends, escalated `escalation_days`
    /// after that.
    fn instants(&self, due_on: Date, warn_days: i64) -> [Timestamp; 4] {
        let due_starts = self.midnight(due_on);
        let warn = self.midnight(plus_days(due_on, -warn_days)).min(due_starts);
        let overdue = self.midnight(plus_days(due_on, 1));
        let escalated = self.midnight(plus_days(due_on, 1 + self.rules.escalation_days));
        [warn, due_starts, overdue, escalated]
    }

    /// The alerts the engine must raise for `events` (in time order) by `end`.
    pub fn expected(&self, events: &[Event], end: Timestamp) -> Vec<ExpectedAlert> {
        let r = self.rules;
        let mut deadlines: BTreeMap<DeadlineId, Open> = BTreeMap::new();
        let mut high_risk: BTreeMap<(usize, u32), bool> = BTreeMap::new();
        let create = |deadlines: &mut BTreeMap<DeadlineId, Open>, id: DeadlineId, at, warn| {
            deadlines.entry(id).or_insert_with(|| Open {
                id,
                created_at: at,
                instants: self.instants(id.due_on, warn),
                ended_at: None,
            });
        };
        let end_open = |deadlines: &mut BTreeMap<DeadlineId, Open>,
                        at: Timestamp,
                        pick: &dyn Fn(&DeadlineId) -> bool| {
            for d in deadlines.values_mut() {
                if d.ended_at.is_none() && pick(&d.id) {
                    d.ended_at = Some(at);
                }
            }
        };
        for e in events {
            let today = self.local_date(e.at);
            let id = |cycle, kind, number, due_on| DeadlineId {
                case: e.case,
                cycle,
                kind,
                number,
                due_on,
            };
            match &e.step {
                Step::Open { cycle } | Step::Reopen { cycle } => create(
                    &mut deadlines,
                    id(
                        *cycle,
                        Kind::Assessment,
                        0,
                        plus_days(today, r.assessment_days),
                    ),
                    e.at,
                    r.assessment_warn_days,
                ),
                Step::Assessment {
                    cycle,
                    high_risk: high,
                } => {
                    end_open(&mut deadlines, e.at, &|d| {
                        d.case == e.case && d.cycle == *cycle && d.kind == Kind::Assessment
                    });
                    high_risk.insert((e.case, *cycle), *high);
                    create(
                        &mut deadlines,
                        id(
                            *cycle,
                            Kind::SupportPlan,
                            0,
                            plus_days(today, r.support_plan_days),
                        ),
                        e.at,
                        r.support_plan_warn_days,
                    );
                }
                Step::Plan {
                    cycle,
                    first_review_on,
                    rows,
                } => {
                    end_open(&mut deadlines, e.at, &|d| {
                        d.case == e.case && d.cycle == *cycle && d.kind == Kind::SupportPlan
                    });
                    let months = if high_risk.get(&(e.case, *cycle)).copied().unwrap_or(false) {
                        r.review_high_risk_months
                    } else {
                        r.review_months
                    };
                    let review = first_review_on.unwrap_or_else(|| plus_months(today, months));
                    create(
                        &mut deadlines,
                        id(*cycle, Kind::PlanReview, 0, review),
                        e.at,
                        r.review_warn_days,
                    );
                    for row in rows {
                        create(
                            &mut deadlines,
                            id(*cycle, Kind::Action, row.number, row.due_on),
                            e.at,
                            r.action_warn_days,
                        );
                    }
                }
                Step::Complete { cycle, number } => end_open(&mut deadlines, e.at, &|d| {
                    d.case == e.case
                        && d.cycle == *cycle
                        && d.kind == Kind::Action
                        && d.number == *number
                }),
                Step::Review {
                    cycle,
                    next_review_on,
                    rows,
                } => {
                    end_open(&mut deadlines, e.at, &|d| {
                        d.case == e.case && d.cycle == *cycle && d.kind == Kind::PlanReview
                    });
                    // Each meeting fixes a new review; its sequence in the cycle tells them apart.
                    let sequence = deadlines
                        .keys()
                        .filter(|d| {
                            d.case == e.case && d.cycle == *cycle && d.kind == Kind::PlanReview
                        })
                        .count() as u32;
                    create(
                        &mut deadlines,
                        id(*cycle, Kind::PlanReview, sequence, *next_review_on),
                        e.at,
                        r.review_warn_days,
                    );
                    // Rows no longer in force (gone, or with another date) are cancelled.
                    end_open(&mut deadlines, e.at, &|d| {
                        d.case == e.case
                            && d.cycle == *cycle
                            && d.kind == Kind::Action
                            && !rows
                                .iter()
                                .any(|row| row.number == d.number && row.due_on == d.due_on)
                    });
                    for row in rows {
                        create(
                            &mut deadlines,
                            id(*cycle, Kind::Action, row.number, row.due_on),
                            e.at,
                            r.action_warn_days,
                        );
                    }
                }
                Step::Close { .. } => {
                    end_open(&mut deadlines, e.at, &|d| d.case == e.case);
                }
            }
        }
        let states = [
            AlertState::Warned,
            AlertState::Due,
            AlertState::Overdue,
            AlertState::Escalated,
        ];
        let mut alerts = Vec::new();
        for d in deadlines.values() {
            let until = d.ended_at.map_or(end, |t| t.min(end));
            for (state, instant) in states.iter().zip(d.instants) {
                if instant <= until {
                    alerts.push(ExpectedAlert {
                        deadline: d.id,
                        state: *state,
                        at_or_after: instant.max(d.created_at),
                    });
                }
            }
        }
        alerts
    }
}

/// A seeded random schedule of `cases` cases, opening over the first 18 months after `start`
/// and running until `start + days`.
pub fn schedule(
    seed: u64,
    cases: usize,
    start: Timestamp,
    days: i64,
    oracle: &Oracle,
) -> Vec<Event> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let end = start + SignedDuration::from_hours(24 * days);
    let mut events = Vec::new();
    let minutes = |rng: &mut fastrand::Rng, lo_days: i64, hi_days: i64| {
        SignedDuration::from_mins(rng.i64(lo_days * 1440..=hi_days * 1440))
    };
    for case in 0..cases {
        let push = |events: &mut Vec<Event>, at: Timestamp, step: Step| -> bool {
            if at < end {
                events.push(Event { at, case, step });
                true
            } else {
                false
            }
        };
        let mut cycle = 1;
        let mut t = start + minutes(&mut rng, 0, 540);
        let mut opened = push(&mut events, t, Step::Open { cycle });
        while opened {
            let mut closed_at = None;
            // Stage 2: most assessments come within the 3 weeks, some late, some never.
            if rng.f64() < 0.92 {
                t += minutes(&mut rng, 2, 30);
                let high = rng.f64() < 0.25;
                if push(
                    &mut events,
                    t,
                    Step::Assessment {
                        cycle,
                        high_risk: high,
                    },
                ) {
                    // The support plan.
                    if rng.f64() < 0.9 {
                        t += minutes(&mut rng, 1, 25);
                        let today = oracle.local_date(t);
                        let rows: Vec<Row> = (1..=rng.u32(1..=3))
                            .map(|number| Row {
                                number,
                                due_on: plus_days(today, rng.i64(7..=120)),
                                agency: rng.usize(0..ROW_AGENCIES.len()),
                            })
                            .collect();
                        let first_review_on =
                            (rng.f64() < 0.5).then(|| plus_days(today, rng.i64(30..=150)));
                        let review_on = first_review_on
                            .unwrap_or_else(|| plus_months(today, if high { 3 } else { 6 }));
                        if push(
                            &mut events,
                            t,
                            Step::Plan {
                                cycle,
                                first_review_on,
                                rows: rows.clone(),
                            },
                        ) {
                            closed_at = run_support(
                                &mut rng,
                                &mut events,
                                case,
                                cycle,
                                t,
                                review_on,
                                rows,
                                end,
                                oracle,
                            );
                        }
                    }
                }
            }
            // Some cases close without a plan (or after their support ends).
            // Never before the case's last event of this cycle.
            let last_at = events
                .iter()
                .filter(|e| e.case == case)
                .map(|e| e.at)
                .max()
                .unwrap_or(t);
            let close_at = closed_at
                .or_else(|| (rng.f64() < 0.3).then(|| last_at + minutes(&mut rng, 10, 200)));
            opened = false;
            if let Some(at) = close_at
                && at < end
            {
                events.push(Event {
                    at,
                    case,
                    step: Step::Close { cycle },
                });
                if rng.f64() < 0.2 && cycle < 3 {
                    cycle += 1;
                    t = at + minutes(&mut rng, 10, 100);
                    opened = t < end;
                    if opened {
                        events.push(Event {
                            at: t,
                            case,
                            step: Step::Reopen { cycle },
                        });
                    }
                }
            }
        }
    }
    events.sort_by_key(|e| (e.at, e.case));
    events
}

/// Row completions and reviews of a case in support; returns when the case closes, if it does.
#[allow(clippy::too_many_arguments)]
fn run_support(
    rng: &mut fastrand::Rng,
    events: &mut Vec<Event>,
    case: usize,
    cycle: u32,
    plan_at: Timestamp,
    mut review_on: Date,
    mut rows: Vec<Row>,
    end: Timestamp,
    oracle: &Oracle,
) -> Option<Timestamp> {
    let mut t = plan_at;
    let mut completions: Vec<(Timestamp, u32, Date)> = Vec::new();
    let plan_completions = |rows: &[Row], after: Timestamp, rng: &mut fastrand::Rng| {
        let mut out = Vec::new();
        for row in rows {
            if rng.f64() < 0.6 {
                let due = oracle.midnight(row.due_on);
                let at = (due + SignedDuration::from_mins(rng.i64(-20 * 1440..=10 * 1440)))
                    .max(after + SignedDuration::from_mins(1));
                out.push((at, row.number, row.due_on));
            }
        }
        out
    };
    completions.extend(plan_completions(&rows, t, rng));
    for _review in 0..rng.u32(0..=3) {
        let held = (oracle.midnight(review_on)
            + SignedDuration::from_mins(rng.i64(-20 * 1440..=10 * 1440)))
        .max(t + SignedDuration::from_mins(1));
        if held >= end {
            break;
        }
        // Completions before the meeting happen; the others are dropped with the old plan.
        for (at, number, due_on) in completions.drain(..) {
            if at < held
                && rows
                    .iter()
                    .any(|r| r.number == number && r.due_on == due_on)
            {
                events.push(Event {
                    at,
                    case,
                    step: Step::Complete { cycle, number },
                });
            }
        }
        let today = oracle.local_date(held);
        let next_review_on = plus_days(today, rng.i64(30..=180)).min(plus_months(today, 6));
        // Revised rows: keep some, move one, add one.
        let mut revised: Vec<Row> = rows.iter().copied().filter(|_| rng.f64() < 0.7).collect();
        if let Some(row) = revised.first_mut()
            && rng.f64() < 0.5
        {
            row.due_on = plus_days(today, rng.i64(10..=90));
        }
        let next_number = rows.iter().map(|r| r.number).max().unwrap_or(0) + 1;
        if rng.f64() < 0.5 {
            revised.push(Row {
                number: next_number,
                due_on: plus_days(today, rng.i64(10..=120)),
                agency: rng.usize(0..ROW_AGENCIES.len()),
            });
        }
        events.push(Event {
            at: held,
            case,
            step: Step::Review {
                cycle,
                next_review_on,
                rows: revised.clone(),
            },
        });
        t = held;
        // Rows kept unchanged that were completed before are already met; the new ones may be.
        completions.extend(plan_completions(&revised, t, rng));
        rows = revised;
        review_on = next_review_on;
    }
    for (at, number, due_on) in completions.drain(..) {
        if at < end
            && rows
                .iter()
                .any(|r| r.number == number && r.due_on == due_on)
        {
            events.push(Event {
                at,
                case,
                step: Step::Complete { cycle, number },
            });
        }
    }
    (rng.f64() < 0.5).then(|| {
        let last = events
            .iter()
            .filter(|e| e.case == case)
            .map(|e| e.at)
            .max()
            .unwrap_or(t);
        last + SignedDuration::from_mins(rng.i64(1440..=90 * 1440))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_arithmetic_clamps_to_the_month_end() {
        assert_eq!(plus_months(date(2026, 8, 31), 6), date(2027, 2, 28));
        assert_eq!(plus_months(date(2027, 8, 31), 6), date(2028, 2, 29));
        assert_eq!(plus_months(date(2026, 1, 15), 3), date(2026, 4, 15));
        assert_eq!(plus_months(date(2026, 11, 30), 3), date(2027, 2, 28));
    }

    #[test]
    fn an_unmet_assessment_raises_all_four_alerts_in_order() {
        let oracle = Oracle::almaty();
        let opened: Timestamp = "2026-01-20T05:00:00Z".parse().unwrap();
        let events = vec![Event {
            at: opened,
            case: 0,
            step: Step::Open { cycle: 1 },
        }];
        let end = opened + SignedDuration::from_hours(24 * 60);
        let alerts = oracle.expected(&events, end);
        assert_eq!(alerts.len(), 4);
        assert_eq!(alerts[0].deadline.due_on, date(2026, 2, 10));
        // Due at local midnight (UTC+5) of 10 February; overdue at the next one.
        assert_eq!(
            alerts[1].at_or_after,
            "2026-02-09T19:00:00Z".parse().unwrap()
        );
        assert_eq!(
            alerts[2].at_or_after,
            "2026-02-10T19:00:00Z".parse().unwrap()
        );
        assert_eq!(
            alerts[3].at_or_after,
            "2026-02-15T19:00:00Z".parse().unwrap()
        );
    }

    #[test]
    fn schedules_are_reproducible() {
        let oracle = Oracle::almaty();
        let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let a = schedule(7, 200, start, 730, &oracle);
        let b = schedule(7, 200, start, 730, &oracle);
        assert_eq!(a, b);
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
    }
}
