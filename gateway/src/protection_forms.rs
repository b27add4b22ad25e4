//! The gateway's own checks of the protection forms of issue 5 (the gateway never trusts a
//! client's validation): an institution's INCIDENT_REFERRAL, the commission's
//! PROTECTION_INSTRUCTION and the institution's INSTRUCTION_ACKNOWLEDGEMENT.
//!
//! A violation names the field and says what is expected, never what was sent. Who may receive
//! what (a referral of an injured child to health carries only the medical part; nothing reaches
//! an implicated director's institution) is `access`'s; this module checks the shape, including
//! the shape each purpose of a referral demands.

use std::collections::BTreeSet;

use jiff::civil::Date;
use referral_core::{
    FieldViolations, ServiceError, ServiceResult,
    directory::AgencyEntry,
    iin,
    validate::{self, PERSON_NAME, SHORT_TEXT, Text},
};
use referral_proto::v1::{ActingUser, AgencyKind, Envelope, Sensitivity};
use referral_proto::v1::{
    IncidentChild, IncidentReferral, IncidentReferralPurpose, IncidentRole, IncidentSeverity,
    InstructionAcknowledgement, InstructionAcknowledgementKind, MandatoryReportGround,
    ProtectionInstruction, ProtectionMeasure, payload,
};
use sqlx::{Any, Transaction};

use crate::{
    Shared,
    access::{self, SendAccess},
    forms,
    policy::{Action, Sections, Situation},
};

/// Most children one referral may name.
pub(crate) const MAX_CHILDREN: usize = 50;
/// Longest reference (incident, case, decision).
const REFERENCE: Text = Text::required(1, 100);
const PHONE: Text = Text::required(3, 50);
const PLACEMENT: Text = Text::required(1, 500);

/// Checks one of the protection forms of a message; `today` is the sender's district's date.
pub(crate) fn check(form: &payload::Form, in_reply_to: &str, today: Date, v: &mut FieldViolations) {
    match form {
        payload::Form::IncidentReferral(r) => {
            incident_referral(r, today, v, "envelope.payload.incident_referral")
        }
        payload::Form::ProtectionInstruction(i) => {
            protection_instruction(i, today, v, "envelope.payload.protection_instruction")
        }
        payload::Form::InstructionAcknowledgement(a) => instruction_acknowledgement(
            a,
            in_reply_to,
            today,
            v,
            "envelope.payload.instruction_acknowledgement",
        ),
        _ => {}
    }
}

/// One child of a referral. `medical`: the referral of an injured child to health.
fn child(c: &IncidentChild, medical: bool, today: Date, v: &mut FieldViolations, p: &str) {
    validate::text(v, &format!("{p}.full_name"), &c.full_name, PERSON_NAME);
    if !c.iin.is_empty() && iin::parse(&c.iin).is_err() {
        v.add(
            format!("{p}.iin"),
            "must be a valid IIN of 12 digits, or empty when unknown",
        );
    }
    if !forms::is_unset(c.date_of_birth.as_ref()) {
        forms::required_past_date(
            v,
            format!("{p}.date_of_birth"),
            c.date_of_birth.as_ref(),
            today,
        );
    }
    let role = IncidentRole::try_from(c.role).unwrap_or(IncidentRole::Unspecified);
    if medical {
        if c.role != 0 {
            v.add(
                format!("{p}.role"),
                "must be empty: a referral to health carries no role in the incident",
            );
        }
        if !c.injured {
            v.add(
                format!("{p}.injured"),
                "a referral to health names only injured children",
            );
        }
        if !c.referred_for_medical_care {
            v.add(
                format!("{p}.referred_for_medical_care"),
                "a referral to health names only children referred for medical care",
            );
        }
    } else if role == IncidentRole::Unspecified {
        v.add(
            format!("{p}.role"),
            "required: perpetrator, victim, both or witness",
        );
    }
    if c.injured {
        validate::text(
            v,
            &format!("{p}.injuries"),
            &c.injuries,
            validate::REQUIRED_LONG_TEXT,
        );
    } else {
        if !c.injuries.is_empty() {
            v.add(format!("{p}.injuries"), "only for an injured child");
        }
        if c.referred_for_medical_care && !medical {
            v.add(
                format!("{p}.referred_for_medical_care"),
                "only for an injured child",
            );
        }
    }
}

/// INCIDENT_REFERRAL. `today` is the sender's district's date.
pub(crate) fn incident_referral(
    r: &IncidentReferral,
    today: Date,
    v: &mut FieldViolations,
    p: &str,
) {
    validate::text(
        v,
        &format!("{p}.incident_reference"),
        &r.incident_reference,
        REFERENCE,
    );
    let purpose = IncidentReferralPurpose::try_from(r.purpose)
        .unwrap_or(IncidentReferralPurpose::Unspecified);
    if purpose == IncidentReferralPurpose::Unspecified {
        v.add(
            format!("{p}.purpose"),
            "required: investigation or medical care",
        );
    }
    let medical = purpose == IncidentReferralPurpose::MedicalCare;
    validate::text(v, &format!("{p}.institution"), &r.institution, SHORT_TEXT);
    let happened = forms::required_past_date(
        v,
        format!("{p}.incident_date"),
        r.incident_date.as_ref(),
        today,
    );
    let referred =
        forms::required_past_date(v, format!("{p}.referred_on"), r.referred_on.as_ref(), today);
    if let (Some(happened), Some(referred)) = (happened, referred)
        && referred < happened
    {
        v.add(
            format!("{p}.referred_on"),
            "must not be before the incident date",
        );
    }
    let severity = IncidentSeverity::try_from(r.severity).unwrap_or(IncidentSeverity::Unspecified);
    if medical {
        // Health learns only what treatment needs: nothing of the incident's story.
        if r.severity != 0 {
            v.add(
                format!("{p}.severity"),
                "must be empty in a referral to health",
            );
        }
        if !r.grounds.is_empty() {
            v.add(
                format!("{p}.grounds"),
                "must be empty in a referral to health",
            );
        }
        if !r.grounds_other.is_empty() {
            v.add(
                format!("{p}.grounds_other"),
                "must be empty in a referral to health",
            );
        }
        if !r.description.is_empty() {
            v.add(
                format!("{p}.description"),
                "must be empty in a referral to health",
            );
        }
    } else {
        if severity == IncidentSeverity::Unspecified {
            v.add(
                format!("{p}.severity"),
                "required: light, moderate or severe",
            );
        }
        grounds(&r.grounds, &r.grounds_other, v, p, true);
        validate::text(
            v,
            &format!("{p}.description"),
            &r.description,
            validate::REQUIRED_LONG_TEXT,
        );
    }
    if r.children.is_empty() {
        v.add(format!("{p}.children"), "required: at least one child");
    } else if r.children.len() > MAX_CHILDREN {
        v.add(format!("{p}.children"), format!("at most {MAX_CHILDREN}"));
    }
    for (i, c) in r.children.iter().enumerate().take(MAX_CHILDREN) {
        child(c, medical, today, v, &format!("{p}.children[{i}]"));
    }
    match &r.reporter {
        None => v.add(format!("{p}.reporter"), "required"),
        Some(who) => {
            validate::text(
                v,
                &format!("{p}.reporter.full_name"),
                &who.full_name,
                PERSON_NAME,
            );
            validate::text(
                v,
                &format!("{p}.reporter.position"),
                &who.position,
                SHORT_TEXT,
            );
            validate::text(v, &format!("{p}.reporter.phone"), &who.phone, PHONE);
        }
    }
    if let Some(c) = &r.circumstances {
        let cp = format!("{p}.circumstances");
        for (name, value) in [
            ("child_residence_agency_id", &c.child_residence_agency_id),
            (
                "implicated_director_agency_id",
                &c.implicated_director_agency_id,
            ),
        ] {
            validate::text(v, &format!("{cp}.{name}"), value, Text::optional(100));
        }
        if !c.incident_reference.is_empty() {
            v.add(
                format!("{cp}.incident_reference"),
                "must be empty: the referral's incident_reference says it",
            );
        }
        if c.incident_role != 0 {
            v.add(
                format!("{cp}.incident_role"),
                "must be empty: each child's role is in children",
            );
        }
    }
}

/// The mandatory-report grounds: known, each once, "other" described (and only then).
pub fn grounds(list: &[i32], other: &str, v: &mut FieldViolations, p: &str, required: bool) {
    let mut seen = BTreeSet::new();
    let mut bad = false;
    for g in list {
        let known = MandatoryReportGround::try_from(*g)
            .ok()
            .filter(|g| *g != MandatoryReportGround::Unspecified);
        if known.is_none() || !seen.insert(*g) {
            bad = true;
        }
    }
    if bad {
        v.add(
            format!("{p}.grounds"),
            "each must be a known mandatory-report ground, listed once",
        );
    } else if required && list.is_empty() {
        v.add(
            format!("{p}.grounds"),
            "required: at least one ground (M:2932-2940), or other",
        );
    }
    if seen.contains(&(MandatoryReportGround::Other as i32)) {
        validate::text(
            v,
            &format!("{p}.grounds_other"),
            other,
            Text::required(3, 500),
        );
    } else if !other.is_empty() {
        v.add(format!("{p}.grounds_other"), "only with the ground other");
    }
}

/// PROTECTION_INSTRUCTION.
pub(crate) fn protection_instruction(
    i: &ProtectionInstruction,
    today: Date,
    v: &mut FieldViolations,
    p: &str,
) {
    validate::text(
        v,
        &format!("{p}.case_reference"),
        &i.case_reference,
        REFERENCE,
    );
    validate::text(
        v,
        &format!("{p}.child_full_name"),
        &i.child_full_name,
        PERSON_NAME,
    );
    forms::required_past_date(
        v,
        format!("{p}.child_date_of_birth"),
        i.child_date_of_birth.as_ref(),
        today,
    );
    measure(i.measure, &i.measure_other, &i.new_placement, v, p);
    let decided = forms::required_past_date(
        v,
        format!("{p}.decision_date"),
        i.decision_date.as_ref(),
        today,
    );
    validate::text(
        v,
        &format!("{p}.decision_reference"),
        &i.decision_reference,
        REFERENCE,
    );
    match i.carry_out_by.as_ref().and_then(validate::calendar_date) {
        None => v.add(
            format!("{p}.carry_out_by"),
            "required: a real calendar date",
        ),
        Some(by) if decided.is_some_and(|d| by < d) => v.add(
            format!("{p}.carry_out_by"),
            "must not be before the decision date",
        ),
        Some(_) => {}
    }
    validate::text(
        v,
        &format!("{p}.reason"),
        &i.reason,
        validate::REQUIRED_LONG_TEXT,
    );
    validate::text(
        v,
        &format!("{p}.instructed_by"),
        &i.instructed_by,
        PERSON_NAME,
    );
    validate::text(v, &format!("{p}.contact"), &i.contact, Text::optional(200));
}

/// The measure, its description when other, and the new placement (required for a move).
pub fn measure(measure: i32, other: &str, placement: &str, v: &mut FieldViolations, p: &str) {
    let m = ProtectionMeasure::try_from(measure).unwrap_or(ProtectionMeasure::Unspecified);
    match m {
        ProtectionMeasure::Unspecified => v.add(
            format!("{p}.measure"),
            "required: move to another institution, family-type setting or other",
        ),
        ProtectionMeasure::Other => validate::text(
            v,
            &format!("{p}.measure_other"),
            other,
            Text::required(3, 2000),
        ),
        _ => {
            if !other.is_empty() {
                v.add(format!("{p}.measure_other"), "only with the measure other");
            }
        }
    }
    let placement_rule = if matches!(
        m,
        ProtectionMeasure::MoveToAnotherInstitution | ProtectionMeasure::FamilyTypeSetting
    ) {
        PLACEMENT
    } else {
        Text::optional(500)
    };
    validate::text(v, &format!("{p}.new_placement"), placement, placement_rule);
}

/// INSTRUCTION_ACKNOWLEDGEMENT, a reply to the instruction `in_reply_to`.
pub(crate) fn instruction_acknowledgement(
    a: &InstructionAcknowledgement,
    in_reply_to: &str,
    today: Date,
    v: &mut FieldViolations,
    p: &str,
) {
    validate::text(
        v,
        &format!("{p}.case_reference"),
        &a.case_reference,
        REFERENCE,
    );
    if a.instruction_message_id != in_reply_to {
        v.add(
            format!("{p}.instruction_message_id"),
            "must be the instruction the envelope replies to",
        );
    }
    if InstructionAcknowledgementKind::try_from(a.kind)
        .unwrap_or(InstructionAcknowledgementKind::Unspecified)
        == InstructionAcknowledgementKind::Unspecified
    {
        v.add(format!("{p}.kind"), "required: acknowledged or carried out");
    }
    forms::required_past_date(v, format!("{p}.on"), a.on.as_ref(), today);
    validate::text(v, &format!("{p}.note"), &a.note, validate::LONG_TEXT);
    validate::text(
        v,
        &format!("{p}.acknowledged_by"),
        &a.acknowledged_by,
        PERSON_NAME,
    );
}

fn denied(why: &str) -> ServiceError {
    ServiceError::PermissionDenied(why.to_owned())
}

/// What a referral of an injured child to health may carry: the child's identity, the injuries,
/// the reference and dates, and whom to call. Never the incident's story, the roles, the report's
/// circumstances.
fn medical_sections() -> Sections {
    [
        Sensitivity::CaseStatus,
        Sensitivity::Contact,
        Sensitivity::ChildIdentity,
        Sensitivity::Health,
    ]
    .into_iter()
    .collect()
}

/// What the institution told to act receives of a protection instruction.
fn instruction_sections() -> Sections {
    [Sensitivity::CaseStatus, Sensitivity::AssignedWork]
        .into_iter()
        .collect()
}

impl Shared {
    /// An incident referral belongs to no case: its purpose decides its recipients (for
    /// investigation the commission and the police, for medical care health, which receives only
    /// the medical part), and its circumstances are checked against the directory; nothing of it
    /// reaches the institution a child disclosed about or whose director it implicates. Its
    /// circumstances are remembered in the send's transaction, so that they hold for every case
    /// opened on a K naming the same incident (`access::fold_incident_circumstances`).
    pub(crate) async fn check_incident_referral(
        &self,
        tx: &mut Transaction<'static, Any>,
        caller: &AgencyEntry,
        recipient: &AgencyEntry,
        env: &Envelope,
        r: &IncidentReferral,
        now_us: i64,
    ) -> ServiceResult<SendAccess> {
        if !env.case_reference.is_empty() {
            return Err(ServiceError::invalid_field(
                "envelope.case_reference",
                "must be empty: an incident referral belongs to no case",
            ));
        }
        let purpose = IncidentReferralPurpose::try_from(r.purpose)
            .unwrap_or(IncidentReferralPurpose::Unspecified);
        let fits = match purpose {
            IncidentReferralPurpose::Investigation => {
                matches!(
                    recipient.kind(),
                    AgencyKind::Commission | AgencyKind::Police
                )
            }
            IncidentReferralPurpose::MedicalCare => recipient.kind() == AgencyKind::Health,
            IncidentReferralPurpose::Unspecified => false,
        };
        if !fits {
            return Err(denied(
                "an incident referral for investigation goes to the commission and the police; \
                 an injured child's, to health",
            ));
        }
        let circumstances = r.circumstances.clone().unwrap_or_default();
        let mut v = FieldViolations::new();
        let (residence, implicated) = access::check_circumstances(
            &self.directory(),
            caller,
            &circumstances,
            "envelope.payload.incident_referral.circumstances",
            &mut v,
        );
        v.into_result()?;
        if recipient.id == residence || recipient.id == implicated {
            return Err(denied("nothing of this report may reach that agency"));
        }
        sqlx::query(
            "INSERT INTO incident_referrals (message_id, district_id, referring_agency_id, \
             incident_reference, implicated_agency_id, residence_agency_id, referred_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&env.message_id)
        .bind(&caller.district)
        .bind(&caller.id)
        .bind(r.incident_reference.trim())
        .bind(implicated)
        .bind(residence)
        .bind(now_us)
        .execute(&mut **tx)
        .await?;
        Ok(SendAccess {
            sections: if purpose == IncidentReferralPurpose::MedicalCare {
                medical_sections()
            } else {
                Sections::all()
            },
            copies: Vec::new(),
            withheld: false,
        })
    }

    /// A protection instruction is a case message: the sender must be allowed to send the case's
    /// messages, and the recipient to receive its instruction (the policy's
    /// `receiveInstruction`: the residential institution the case's reports say the child lives
    /// in, even when it is excluded from the case as the institution a child disclosed about,
    /// never one whose director a report implicates). It receives only the instruction's own
    /// sections (not the reason, which is the case record).
    #[expect(
        clippy::too_many_arguments,
        reason = "the send's context, passed through"
    )]
    pub(crate) async fn check_instruction(
        &self,
        tx: &mut Transaction<'static, Any>,
        caller: &AgencyEntry,
        recipient: &AgencyEntry,
        env: &Envelope,
        acting: &ActingUser,
        situation: Situation,
        now_us: i64,
    ) -> ServiceResult<SendAccess> {
        let facts = access::case_facts(tx, &env.case_reference, now_us)
            .await?
            .filter(|f| f.commission == caller.id)
            .ok_or_else(|| denied("the gateway knows no such case"))?;
        let sender = access::user_principal(caller, acting)?;
        if !self
            .policy
            .decide(&sender, Action::SendCaseMessage, &facts, situation)?
        {
            return Err(denied(
                "only the case team, the secretary or the chair send this case's messages",
            ));
        }
        let institution = access::agency_principal(recipient);
        if !self
            .policy
            .decide(&institution, Action::ReceiveInstruction, &facts, situation)?
        {
            return Err(denied(
                if facts.implicated_agencies.contains(&recipient.id) {
                    "nothing of this case may reach the institution whose director the report \
                     implicates"
                } else {
                    "a protection instruction goes only to the institution the case's reports say \
                     the child lives in"
                },
            ));
        }
        Ok(SendAccess {
            sections: instruction_sections(),
            copies: Vec::new(),
            withheld: false,
        })
    }

    /// An acknowledgement answers an instruction the commission sent to this institution (the
    /// routing's reply check) about the same case (`check_against_original`); the commission
    /// receives it whole.
    pub(crate) async fn check_acknowledgement(
        &self,
        tx: &mut Transaction<'static, Any>,
        caller: &AgencyEntry,
        env: &Envelope,
        acting: &ActingUser,
        now_us: i64,
    ) -> ServiceResult<SendAccess> {
        access::user_principal(caller, acting)?;
        let facts = access::case_facts(tx, &env.case_reference, now_us)
            .await?
            .ok_or_else(|| denied("the gateway knows no such case"))?;
        if facts.implicated_agencies.contains(&caller.id) {
            return Err(denied("this agency may send nothing about that case"));
        }
        Ok(SendAccess {
            sections: Sections::all(),
            copies: Vec::new(),
            withheld: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use referral_proto::v1::{CalendarDate, IncidentReporter};

    use super::*;

    fn today() -> Date {
        jiff::civil::date(2026, 3, 10)
    }

    fn day(d: Date) -> Option<CalendarDate> {
        Some(validate::to_calendar_date(d))
    }

    fn referral(purpose: IncidentReferralPurpose) -> IncidentReferral {
        let medical = purpose == IncidentReferralPurpose::MedicalCare;
        IncidentReferral {
            incident_reference: "D-1".into(),
            purpose: purpose as i32,
            institution: "Балалар үйі".into(),
            incident_date: day(jiff::civil::date(2026, 3, 9)),
            referred_on: day(today()),
            severity: if medical {
                0
            } else {
                IncidentSeverity::Severe as i32
            },
            grounds: if medical {
                vec![]
            } else {
                vec![MandatoryReportGround::PhysicalViolenceWithInjury as i32]
            },
            grounds_other: String::new(),
            description: if medical {
                String::new()
            } else {
                "Төбелес".into()
            },
            children: vec![IncidentChild {
                full_name: "Асанов Ерлан".into(),
                iin: String::new(),
                date_of_birth: day(jiff::civil::date(2014, 5, 1)),
                role: if medical {
                    0
                } else {
                    IncidentRole::Victim as i32
                },
                injured: true,
                injuries: "Сынық".into(),
                referred_for_medical_care: true,
            }],
            reporter: Some(IncidentReporter {
                full_name: "Серикова Айгуль".into(),
                position: "тәрбиеші".into(),
                phone: "+77010000000".into(),
            }),
            circumstances: None,
        }
    }

    fn fields(r: &IncidentReferral) -> Vec<String> {
        let mut v = FieldViolations::new();
        incident_referral(r, today(), &mut v, "r");
        v.iter().map(|x| x.field.clone()).collect()
    }

    #[test]
    fn a_complete_referral_of_each_purpose_passes() {
        assert!(fields(&referral(IncidentReferralPurpose::Investigation)).is_empty());
        assert!(fields(&referral(IncidentReferralPurpose::MedicalCare)).is_empty());
    }

    #[test]
    fn a_referral_to_health_carries_nothing_of_the_incident() {
        let mut r = referral(IncidentReferralPurpose::MedicalCare);
        r.description = "what happened".into();
        r.severity = IncidentSeverity::Moderate as i32;
        r.children[0].role = IncidentRole::Victim as i32;
        r.children.push(IncidentChild {
            full_name: "Witness Child".into(),
            role: 0,
            ..Default::default()
        });
        let f = fields(&r);
        for name in [
            "r.description",
            "r.severity",
            "r.children[0].role",
            "r.children[1].injured",
            "r.children[1].referred_for_medical_care",
        ] {
            assert!(f.iter().any(|x| x == name), "{name} not in {f:?}");
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let mut r = referral(IncidentReferralPurpose::Investigation);
        r.severity = 0;
        r.grounds = vec![MandatoryReportGround::Other as i32, 99];
        r.children[0].iin = "123".into();
        r.children[0].role = 0;
        r.referred_on = day(jiff::civil::date(2026, 3, 11));
        let f = fields(&r);
        for name in [
            "r.severity",
            "r.grounds",
            "r.children[0].iin",
            "r.children[0].role",
            "r.referred_on",
        ] {
            assert!(f.iter().any(|x| x == name), "{name} not in {f:?}");
        }
    }

    #[test]
    fn an_instruction_needs_its_measure_placement_and_decision() {
        let mut i = ProtectionInstruction {
            case_reference: "C-1".into(),
            child_full_name: "Асанов Ерлан".into(),
            child_date_of_birth: day(jiff::civil::date(2014, 5, 1)),
            measure: ProtectionMeasure::MoveToAnotherInstitution as i32,
            measure_other: String::new(),
            new_placement: "№2 балалар үйі".into(),
            carry_out_by: day(jiff::civil::date(2026, 3, 20)),
            decision_reference: "Ш-7".into(),
            decision_date: day(today()),
            reason: "Қорғау".into(),
            instructed_by: "Curator Name".into(),
            contact: String::new(),
        };
        let mut v = FieldViolations::new();
        protection_instruction(&i, today(), &mut v, "i");
        assert!(v.is_empty(), "{v}");
        i.new_placement.clear();
        i.carry_out_by = day(jiff::civil::date(2026, 3, 1));
        let mut v = FieldViolations::new();
        protection_instruction(&i, today(), &mut v, "i");
        assert!(
            v.contains("i.new_placement") && v.contains("i.carry_out_by"),
            "{v}"
        );
    }
}
