//! Routing rules: which agency kind may send which form to which agency kind. Deny by default:
//! a combination that is not listed here is refused and nothing is stored.
//!
//! `FORM_KIND_DEADLINE_ALERT` is deliberately absent: only the gateway's deadline engine creates
//! alerts, so no agency may send one.

use referral_proto::v1::{AgencyKind, FormKind};

/// Whether a reply must answer an earlier message (and to whom it must go).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// A new message; `in_reply_to` must be empty.
    No,
    /// An answer to a message of `answers` that the recipient sent to the sender. When `single`,
    /// the original takes exactly one answer (it is marked answered, and a second answer is
    /// refused); otherwise it takes many (progress reports, then completion).
    To { answers: FormKind, single: bool },
}

/// One allowed flow.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub from: &'static [AgencyKind],
    pub form: FormKind,
    pub to: &'static [AgencyKind],
    /// Sender and recipient must belong to the same district.
    pub same_district: bool,
    pub reply: Reply,
}

/// Every agency kind other than the commission: the agencies that refer children, are asked for
/// information and carry out action rows.
const PARTNERS: &[AgencyKind] = &[
    AgencyKind::School,
    AgencyKind::Residential,
    AgencyKind::Health,
    AgencyKind::Police,
    AgencyKind::Ngo,
];

const COMMISSION: &[AgencyKind] = &[AgencyKind::Commission];

/// Schools and residential institutions: they consult the commission about a concern without
/// naming the child (P:153-157) and send it their monthly incident summaries.
const EDUCATION: &[AgencyKind] = &[AgencyKind::School, AgencyKind::Residential];

/// The allowed flows. `FORM_KIND_DISCLOSURE_ALERT` is absent like the deadline alert: only the
/// gateway raises it. Issue 2: K from the referring agencies to their district's commission; the
/// commission's decision back to whoever sent the K. Issue 3: the commission's information
/// requests and their single answers, action assignments and their (many) progress reports,
/// and review minutes.
pub const RULES: &[Rule] = &[
    Rule {
        from: PARTNERS,
        form: FormKind::HelpRequest,
        to: COMMISSION,
        same_district: true,
        reply: Reply::No,
    },
    Rule {
        from: COMMISSION,
        form: FormKind::HelpRequestDecision,
        to: PARTNERS,
        same_district: true,
        reply: Reply::To {
            answers: FormKind::HelpRequest,
            single: true,
        },
    },
    Rule {
        from: COMMISSION,
        form: FormKind::InformationRequest,
        to: PARTNERS,
        same_district: true,
        reply: Reply::No,
    },
    Rule {
        from: PARTNERS,
        form: FormKind::InformationResponse,
        to: COMMISSION,
        same_district: true,
        reply: Reply::To {
            answers: FormKind::InformationRequest,
            single: true,
        },
    },
    Rule {
        from: COMMISSION,
        form: FormKind::ActionAssignment,
        to: PARTNERS,
        same_district: true,
        reply: Reply::No,
    },
    Rule {
        from: PARTNERS,
        form: FormKind::ActionProgress,
        to: COMMISSION,
        same_district: true,
        reply: Reply::To {
            answers: FormKind::ActionAssignment,
            single: false,
        },
    },
    Rule {
        from: COMMISSION,
        form: FormKind::ReviewMinutes,
        to: PARTNERS,
        same_district: true,
        reply: Reply::No,
    },
    // Issue 4: a consultation without identity and its single answer; the monthly incident
    // summary E (aggregate: the gateway refuses one that carries an IIN).
    Rule {
        from: EDUCATION,
        form: FormKind::Consultation,
        to: COMMISSION,
        same_district: true,
        reply: Reply::No,
    },
    Rule {
        from: COMMISSION,
        form: FormKind::ConsultationAnswer,
        to: EDUCATION,
        same_district: true,
        reply: Reply::To {
            answers: FormKind::Consultation,
            single: true,
        },
    },
    Rule {
        from: EDUCATION,
        form: FormKind::IncidentSummary,
        to: COMMISSION,
        same_district: true,
        reply: Reply::No,
    },
    // Issue 5: the police's investigation updates (M:3215-3220) and the health facilities'
    // notices (M:2945-2955) to the commission, on cases they take part in (`access`).
    Rule {
        from: &[AgencyKind::Police],
        form: FormKind::InvestigationUpdate,
        to: COMMISSION,
        same_district: true,
        reply: Reply::No,
    },
    // The police's preventive registration of an offending child (M:3240-3260), on the
    // offender's case only (`access`: an agency working on that case).
    Rule {
        from: &[AgencyKind::Police],
        form: FormKind::PreventiveRegistration,
        to: COMMISSION,
        same_district: true,
        reply: Reply::No,
    },
    Rule {
        from: &[AgencyKind::Health],
        form: FormKind::HealthNotice,
        to: COMMISSION,
        same_district: true,
        reply: Reply::No,
    },
    // Issue 5: an institution's incident referral to the commission and the police (purpose
    // investigation) or of an injured child to health (purpose medical care: `access` decides
    // which recipients a purpose allows); the commission's protection instruction to a
    // residential institution, and the institution's acknowledgements of it (acknowledged, then
    // carried out).
    Rule {
        from: EDUCATION,
        form: FormKind::IncidentReferral,
        to: &[
            AgencyKind::Commission,
            AgencyKind::Police,
            AgencyKind::Health,
        ],
        same_district: true,
        reply: Reply::No,
    },
    Rule {
        from: COMMISSION,
        form: FormKind::ProtectionInstruction,
        to: &[AgencyKind::Residential],
        same_district: true,
        reply: Reply::No,
    },
    Rule {
        from: &[AgencyKind::Residential],
        form: FormKind::InstructionAcknowledgement,
        to: COMMISSION,
        same_district: true,
        reply: Reply::To {
            answers: FormKind::ProtectionInstruction,
            single: false,
        },
    },
    // Issue 5: a school refers a pupil to an NGO of its district (M:2247-2271); the NGO answers
    // and reports progress (many updates, each a reply to the referral); the school may ask it
    // to cancel (a new message naming the referral, checked in `service_forms`), fixes the
    // safety team's meetings about the pupil, and sends its monthly log J to the commission.
    Rule {
        from: EDUCATION,
        form: FormKind::ServiceReferral,
        to: NGO,
        same_district: true,
        reply: Reply::No,
    },
    Rule {
        from: NGO,
        form: FormKind::ServiceUpdate,
        to: EDUCATION,
        same_district: true,
        reply: Reply::To {
            answers: FormKind::ServiceReferral,
            single: false,
        },
    },
    Rule {
        from: EDUCATION,
        form: FormKind::ServiceUpdate,
        to: NGO,
        same_district: true,
        reply: Reply::No,
    },
    Rule {
        from: EDUCATION,
        form: FormKind::SafetyMeetingNotice,
        to: NGO,
        same_district: true,
        reply: Reply::No,
    },
    Rule {
        from: EDUCATION,
        form: FormKind::ReferralLog,
        to: COMMISSION,
        same_district: true,
        reply: Reply::No,
    },
];

/// The service providers schools refer pupils to.
const NGO: &[AgencyKind] = &[AgencyKind::Ngo];

/// The rule allowing this flow, if any.
pub fn find_rule(
    from: AgencyKind,
    form: FormKind,
    to: AgencyKind,
    same_district: bool,
) -> Option<&'static Rule> {
    RULES.iter().find(|r| {
        r.from.contains(&from)
            && r.form == form
            && r.to.contains(&to)
            && (same_district || !r.same_district)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use AgencyKind as K;
    use FormKind as F;

    #[test]
    fn school_may_send_k_to_its_commission_only() {
        assert!(find_rule(K::School, F::HelpRequest, K::Commission, true).is_some());
        assert!(find_rule(K::School, F::HelpRequest, K::Commission, false).is_none());
        assert!(find_rule(K::Ngo, F::HelpRequest, K::Police, true).is_none());
        assert!(find_rule(K::Commission, F::HelpRequest, K::Commission, true).is_none());
        assert!(find_rule(K::School, F::Assessment, K::Commission, true).is_none());
        assert!(find_rule(K::School, F::HelpRequestDecision, K::School, true).is_none());
    }

    #[test]
    fn the_commission_asks_partners_and_they_answer_once() {
        for partner in PARTNERS {
            let ask = find_rule(K::Commission, F::InformationRequest, *partner, true).unwrap();
            assert_eq!(ask.reply, Reply::No);
            let answer = find_rule(*partner, F::InformationResponse, K::Commission, true).unwrap();
            assert_eq!(
                answer.reply,
                Reply::To {
                    answers: F::InformationRequest,
                    single: true
                }
            );
            assert!(find_rule(K::Commission, F::InformationRequest, *partner, false).is_none());
        }
        assert!(find_rule(K::School, F::InformationRequest, K::Health, true).is_none());
        assert!(find_rule(K::Commission, F::InformationRequest, K::Commission, true).is_none());
        assert!(find_rule(K::School, F::InformationResponse, K::Police, true).is_none());
    }

    #[test]
    fn action_progress_takes_many_replies_and_goes_to_the_commission_only() {
        for partner in PARTNERS {
            assert!(find_rule(K::Commission, F::ActionAssignment, *partner, true).is_some());
            assert!(find_rule(K::Commission, F::ReviewMinutes, *partner, true).is_some());
            let progress = find_rule(*partner, F::ActionProgress, K::Commission, true).unwrap();
            assert_eq!(
                progress.reply,
                Reply::To {
                    answers: F::ActionAssignment,
                    single: false
                }
            );
        }
        assert!(find_rule(K::Ngo, F::ActionProgress, K::School, true).is_none());
        assert!(find_rule(K::Ngo, F::ActionAssignment, K::School, true).is_none());
        assert!(find_rule(K::Commission, F::ActionAssignment, K::Commission, true).is_none());
        assert!(find_rule(K::School, F::ReviewMinutes, K::Commission, true).is_none());
    }

    #[test]
    fn only_the_police_register_for_prevention_and_only_to_the_commission() {
        let rule = find_rule(K::Police, F::PreventiveRegistration, K::Commission, true).unwrap();
        assert_eq!(rule.reply, Reply::No);
        assert!(find_rule(K::Police, F::PreventiveRegistration, K::Commission, false).is_none());
        for other in [K::School, K::Residential, K::Ngo, K::Commission, K::Health] {
            assert!(find_rule(other, F::PreventiveRegistration, K::Commission, true).is_none());
        }
        for to in [K::School, K::Residential, K::Ngo, K::Health, K::Police] {
            assert!(find_rule(K::Police, F::PreventiveRegistration, to, true).is_none());
        }
    }

    #[test]
    fn only_the_police_update_investigations_and_only_health_sends_notices() {
        let up = find_rule(K::Police, F::InvestigationUpdate, K::Commission, true).unwrap();
        assert_eq!(up.reply, Reply::No);
        let notice = find_rule(K::Health, F::HealthNotice, K::Commission, true).unwrap();
        assert_eq!(notice.reply, Reply::No);
        assert!(find_rule(K::Police, F::InvestigationUpdate, K::Commission, false).is_none());
        assert!(find_rule(K::Health, F::HealthNotice, K::Commission, false).is_none());
        for other in [K::School, K::Residential, K::Ngo, K::Commission, K::Health] {
            assert!(find_rule(other, F::InvestigationUpdate, K::Commission, true).is_none());
        }
        for other in [K::School, K::Residential, K::Ngo, K::Commission, K::Police] {
            assert!(find_rule(other, F::HealthNotice, K::Commission, true).is_none());
        }
        assert!(find_rule(K::Police, F::InvestigationUpdate, K::School, true).is_none());
        assert!(find_rule(K::Health, F::HealthNotice, K::Ngo, true).is_none());
    }

    #[test]
    fn service_referrals_go_between_a_school_and_an_ngo_of_its_district_only() {
        const KINDS: [AgencyKind; 6] = [
            K::School,
            K::Residential,
            K::Commission,
            K::Police,
            K::Health,
            K::Ngo,
        ];
        for school in [K::School, K::Residential] {
            let refer = find_rule(school, F::ServiceReferral, K::Ngo, true).unwrap();
            assert_eq!(refer.reply, Reply::No);
            let update = find_rule(K::Ngo, F::ServiceUpdate, school, true).unwrap();
            assert_eq!(
                update.reply,
                Reply::To {
                    answers: F::ServiceReferral,
                    single: false
                }
            );
            let cancel = find_rule(school, F::ServiceUpdate, K::Ngo, true).unwrap();
            assert_eq!(cancel.reply, Reply::No);
            assert!(find_rule(school, F::SafetyMeetingNotice, K::Ngo, true).is_some());
            assert!(find_rule(school, F::ReferralLog, K::Commission, true).is_some());
            assert!(find_rule(school, F::ServiceReferral, K::Ngo, false).is_none());
            assert!(find_rule(K::Ngo, F::ServiceUpdate, school, false).is_none());
            assert!(find_rule(school, F::ReferralLog, K::Commission, false).is_none());
        }
        for from in KINDS {
            for to in KINDS {
                let school_to_ngo = matches!(from, K::School | K::Residential) && to == K::Ngo;
                assert_eq!(
                    find_rule(from, F::ServiceReferral, to, true).is_some(),
                    school_to_ngo
                );
                assert_eq!(
                    find_rule(from, F::SafetyMeetingNotice, to, true).is_some(),
                    school_to_ngo
                );
                assert_eq!(
                    find_rule(from, F::ServiceUpdate, to, true).is_some(),
                    school_to_ngo || (from == K::Ngo && matches!(to, K::School | K::Residential))
                );
                assert_eq!(
                    find_rule(from, F::ReferralLog, to, true).is_some(),
                    matches!(from, K::School | K::Residential) && to == K::Commission
                );
            }
        }
    }

    #[test]
    fn incident_referrals_go_from_education_to_commission_police_and_health() {
        for from in [K::School, K::Residential] {
            for to in [K::Commission, K::Police, K::Health] {
                let rule = find_rule(from, F::IncidentReferral, to, true).unwrap();
                assert_eq!(rule.reply, Reply::No);
                assert!(find_rule(from, F::IncidentReferral, to, false).is_none());
            }
            for to in [K::School, K::Residential, K::Ngo] {
                assert!(find_rule(from, F::IncidentReferral, to, true).is_none());
            }
        }
        for from in [K::Commission, K::Police, K::Health, K::Ngo] {
            assert!(find_rule(from, F::IncidentReferral, K::Commission, true).is_none());
        }
    }

    #[test]
    fn protection_instructions_go_to_institutions_and_are_acknowledged_many_times() {
        let rule = find_rule(
            K::Commission,
            F::ProtectionInstruction,
            K::Residential,
            true,
        )
        .unwrap();
        assert_eq!(rule.reply, Reply::No);
        assert!(
            find_rule(
                K::Commission,
                F::ProtectionInstruction,
                K::Residential,
                false
            )
            .is_none()
        );
        for to in [K::School, K::Police, K::Health, K::Ngo, K::Commission] {
            assert!(find_rule(K::Commission, F::ProtectionInstruction, to, true).is_none());
        }
        let ack = find_rule(
            K::Residential,
            F::InstructionAcknowledgement,
            K::Commission,
            true,
        )
        .unwrap();
        assert_eq!(
            ack.reply,
            Reply::To {
                answers: F::ProtectionInstruction,
                single: false
            }
        );
        for from in [K::School, K::Police, K::Health, K::Ngo] {
            assert!(find_rule(from, F::InstructionAcknowledgement, K::Commission, true).is_none());
        }
        assert!(
            find_rule(
                K::Residential,
                F::ProtectionInstruction,
                K::Residential,
                true
            )
            .is_none()
        );
    }

    #[test]
    fn no_agency_may_send_a_deadline_alert() {
        let kinds = [
            K::School,
            K::Residential,
            K::Commission,
            K::Police,
            K::Health,
            K::Ngo,
        ];
        for from in kinds {
            for to in kinds {
                for same in [true, false] {
                    assert!(find_rule(from, F::DeadlineAlert, to, same).is_none());
                    assert!(find_rule(from, F::DisclosureAlert, to, same).is_none());
                }
            }
        }
    }
}
