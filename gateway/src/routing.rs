//! Routing rules: which agency kind may send which form to which agency kind. Deny by default:
//! a combination that is not listed here is refused and nothing is stored.

use referral_proto::v1::{AgencyKind, FormKind};

/// Whether a reply must answer an earlier message (and to whom it must go).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// A new message; `in_reply_to` must be empty.
    No,
    /// An answer to a message of `answers` that the recipient sent to the sender.
    To { answers: FormKind },
}

/// One allowed flow.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub from: &'static [AgencyKind],
    pub form: FormKind,
    pub to: AgencyKind,
    /// Sender and recipient must belong to the same district.
    pub same_district: bool,
    pub reply: Reply,
}

/// The allowed flows (issue 2): K from the referring agencies to their district's commission;
/// the commission's decision back to whoever sent the K.
pub const RULES: &[Rule] = &[
    Rule {
        from: &[
            AgencyKind::School,
            AgencyKind::Residential,
            AgencyKind::Health,
            AgencyKind::Police,
            AgencyKind::Ngo,
        ],
        form: FormKind::HelpRequest,
        to: AgencyKind::Commission,
        same_district: true,
        reply: Reply::No,
    },
    Rule {
        from: &[AgencyKind::Commission],
        form: FormKind::HelpRequestDecision,
        to: AgencyKind::School,
        same_district: true,
        reply: Reply::To {
            answers: FormKind::HelpRequest,
        },
    },
    Rule {
        from: &[AgencyKind::Commission],
        form: FormKind::HelpRequestDecision,
        to: AgencyKind::Residential,
        same_district: true,
        reply: Reply::To {
            answers: FormKind::HelpRequest,
        },
    },
    Rule {
        from: &[AgencyKind::Commission],
        form: FormKind::HelpRequestDecision,
        to: AgencyKind::Health,
        same_district: true,
        reply: Reply::To {
            answers: FormKind::HelpRequest,
        },
    },
    Rule {
        from: &[AgencyKind::Commission],
        form: FormKind::HelpRequestDecision,
        to: AgencyKind::Police,
        same_district: true,
        reply: Reply::To {
            answers: FormKind::HelpRequest,
        },
    },
    Rule {
        from: &[AgencyKind::Commission],
        form: FormKind::HelpRequestDecision,
        to: AgencyKind::Ngo,
        same_district: true,
        reply: Reply::To {
            answers: FormKind::HelpRequest,
        },
    },
];

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
            && r.to == to
            && (same_district || !r.same_district)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn school_may_send_k_to_its_commission_only() {
        use AgencyKind as K;
        assert!(find_rule(K::School, FormKind::HelpRequest, K::Commission, true).is_some());
        assert!(find_rule(K::School, FormKind::HelpRequest, K::Commission, false).is_none());
        assert!(find_rule(K::Ngo, FormKind::HelpRequest, K::Police, true).is_none());
        assert!(find_rule(K::Commission, FormKind::HelpRequest, K::Commission, true).is_none());
        assert!(find_rule(K::School, FormKind::Assessment, K::Commission, true).is_none());
        assert!(find_rule(K::School, FormKind::HelpRequestDecision, K::School, true).is_none());
    }
}
