//! Need-to-know policy inputs built from arbitrary ids, kinds, roles, purposes and case facts,
//! then every action decided. Besides not panicking, the forbids that must win over every permit
//! are checked: nothing crosses a district, an implicated institution gets nothing, an excluded
//! agency gets nothing but an instruction, aggregate reporting reads the case status only.
#![no_main]

use std::sync::LazyLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use referral_gateway::policy::{
    Action, CaseFacts, PolicyEngine, Principal, PrincipalUser, SECTIONS, Situation,
};
use referral_proto::v1::{AgencyKind, PurposeOfUse, Role, Sensitivity};

static ENGINE: LazyLock<PolicyEngine> =
    LazyLock::new(|| PolicyEngine::builtin().expect("the built-in policy"));

/// An id: one of the demo district's (so that relations match) or anything.
#[derive(Arbitrary, Debug)]
enum Id {
    Known(u8),
    Any(String),
}

const KNOWN: [&str; 8] = [
    "commission",
    "school-1",
    "residential-1",
    "police",
    "district-1",
    "curator-1",
    "incident-1|victim",
    "",
];

impl Id {
    fn get(&self) -> String {
        match self {
            Id::Known(n) => KNOWN[usize::from(*n) % KNOWN.len()].to_owned(),
            Id::Any(s) => s.clone(),
        }
    }
}

fn ids(list: &[Id]) -> Vec<String> {
    list.iter().map(Id::get).collect()
}

fn section(n: u8) -> Sensitivity {
    SECTIONS[usize::from(n) % SECTIONS.len()]
}

#[derive(Arbitrary, Debug)]
struct Input {
    agency: Id,
    kind: i32,
    district: Id,
    user: Option<(Id, i32, Vec<Id>)>,
    case: Id,
    case_district: Id,
    commission: Id,
    team: Vec<Id>,
    referrers: Vec<Id>,
    assignees: Vec<Id>,
    informants: Vec<Id>,
    participants: Vec<Id>,
    agency_grants: Vec<(Id, u8)>,
    user_grants: Vec<(Id, Id, u8)>,
    excluded: Vec<Id>,
    implicated: Vec<Id>,
    conflicting: Vec<Id>,
    residences: Vec<Id>,
    purpose: i32,
    reason_given: bool,
}

fuzz_target!(|input: Input| {
    let who = Principal {
        agency_id: input.agency.get(),
        kind: AgencyKind::try_from(input.kind).unwrap_or_default(),
        district: input.district.get(),
        user: input
            .user
            .as_ref()
            .map(|(id, role, parties)| PrincipalUser {
                user_id: id.get(),
                role: Role::try_from(*role).unwrap_or_default(),
                incident_parties: ids(parties),
            }),
    };
    let case = CaseFacts {
        id: input.case.get(),
        district: input.case_district.get(),
        commission: input.commission.get(),
        team: ids(&input.team),
        referrers: ids(&input.referrers),
        assignees: ids(&input.assignees),
        informants: ids(&input.informants),
        participants: ids(&input.participants),
        agency_grants: input
            .agency_grants
            .iter()
            .map(|(a, s)| (a.get(), section(*s)))
            .collect(),
        user_grants: input
            .user_grants
            .iter()
            .map(|(a, u, s)| (a.get(), u.get(), section(*s)))
            .collect(),
        excluded_agencies: ids(&input.excluded),
        implicated_agencies: ids(&input.implicated),
        conflicting_parties: ids(&input.conflicting),
        residences: ids(&input.residences),
    };
    let situation = Situation {
        purpose: PurposeOfUse::try_from(input.purpose).unwrap_or_default(),
        reason_given: input.reason_given,
    };
    let prepared = ENGINE
        .prepare(&who, &case)
        .expect("any ids and facts make entities");
    let excluded = case.excluded_agencies.contains(&who.agency_id);
    let implicated = case.implicated_agencies.contains(&who.agency_id);
    let other_district = who.district != case.district;
    let mut readable = Vec::new();
    for action in Action::all() {
        let allowed = ENGINE.is_allowed(&prepared, action, situation);
        if allowed {
            assert!(
                !implicated,
                "{action:?} allowed to an implicated institution"
            );
            assert!(!other_district, "{action:?} allowed across districts");
            assert!(
                !excluded || action == Action::ReceiveInstruction,
                "{action:?} allowed to an excluded agency"
            );
            assert!(
                situation.purpose != PurposeOfUse::AggregateReporting
                    || action == Action::Read(Sensitivity::CaseStatus),
                "{action:?} allowed for aggregate reporting"
            );
        }
        if let (Action::Read(s), true) = (action, allowed) {
            readable.push(s);
        }
    }
    let sections = ENGINE
        .readable_sections(&who, &case, situation)
        .expect("the same entities again");
    assert_eq!(sections.iter().collect::<Vec<_>>(), readable);
});
