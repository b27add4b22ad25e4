//! Need to know from the command line (issue 4): reading a case through the hub (`read-case`,
//! any agency's staff, shown what the gateway's policy allows), the commission's disclosure
//! grants (`grant`, `revoke`, `grants`) and the child's disclosure history (`disclosures`), and
//! the consultation without names (`consult` at a school or residential institution,
//! `answer-consultation` at the commission).
//!
//! Every decision is the gateway's: the CLI sends who asks (the token) and why (the purpose of
//! use), and shows what came back, including which sections were withheld.

use std::{fmt, str::FromStr};

use anyhow::anyhow;
use clap::{Args, ValueEnum};
use jiff::{SignedDuration, Timestamp};
use referral_proto::v1::{
    AnswerConsultationRequest, ConsultRequest, Consultation, DisclosureGrant, DisclosureRecord,
    GrantDisclosureRequest, ListDisclosureGrantsRequest, ListDisclosuresRequest, PurposeOfUse,
    ReadSharedCaseRequest, RevokeDisclosureRequest, Sensitivity,
};
use serde_json::{Value, json};
use tonic::{Code, Status};

use crate::{
    case_cli::{KeyArg, print_key_hint},
    case_view,
    cli::{MAX_LIST_ITEMS, PAGE_SIZE, Staff, all_pages},
    output::{Fields, Format, Table, enum_name, json_time, local_time, one_line, print_json},
    view,
};

/// The longest a grant may run (the gateway's limit: one year).
pub const MAX_GRANT: SignedDuration = SignedDuration::from_hours(366 * 24);

// ---------------------------------------------------------------------------------------------
// Arguments.
// ---------------------------------------------------------------------------------------------

/// Why a case is read (after the FHIR/HL7 PurposeOfUse codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum PurposeArg {
    /// Coordinating the care of the child between the agencies supporting them (COC).
    #[value(alias = "coordination_of_care")]
    Coordination,
    /// Treatment by a health worker (TREAT).
    Treatment,
    /// An investigation by the police or a court (HLEGAL).
    #[value(alias = "law_enforcement")]
    Law,
    /// Aggregate reporting: a case's status only, never the child's identity.
    #[value(alias = "aggregate_reporting")]
    Aggregate,
    /// Break the glass: an emergency read outside the case team, with --reason; recorded, and
    /// the curator is alerted.
    #[value(alias = "break_the_glass")]
    Btg,
}

impl PurposeArg {
    pub fn to_proto(self) -> PurposeOfUse {
        match self {
            Self::Coordination => PurposeOfUse::CoordinationOfCare,
            Self::Treatment => PurposeOfUse::Treatment,
            Self::Law => PurposeOfUse::LawEnforcement,
            Self::Aggregate => PurposeOfUse::AggregateReporting,
            Self::Btg => PurposeOfUse::BreakTheGlass,
        }
    }
}

/// A section (sensitivity class) of a case, as `grant --section` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum SectionArg {
    /// References, stages, dates, decisions: nothing about the child.
    CaseStatus,
    /// Names and contacts of staff (the curator, the referring person).
    Contact,
    /// The child's first name and age.
    ChildBasic,
    /// The child's full name, IIN, date of birth, address, school and class.
    ChildIdentity,
    /// Parents and family members.
    Family,
    /// The concern that was reported.
    Concern,
    /// An incident's details and the children involved.
    Incident,
    /// Health and treatment needs, injuries.
    Health,
    /// The comprehensive assessment L.
    Assessment,
    /// The support plan M: needs, every agency's rows, specialists.
    Plan,
    /// What the agency is asked to do: its own rows, the questions put to it.
    AssignedWork,
    /// The rest of the case file: contacts, documents, answers, closure notes.
    CaseRecord,
}

impl SectionArg {
    pub fn to_proto(self) -> Sensitivity {
        match self {
            Self::CaseStatus => Sensitivity::CaseStatus,
            Self::Contact => Sensitivity::Contact,
            Self::ChildBasic => Sensitivity::ChildBasic,
            Self::ChildIdentity => Sensitivity::ChildIdentity,
            Self::Family => Sensitivity::Family,
            Self::Concern => Sensitivity::Concern,
            Self::Incident => Sensitivity::Incident,
            Self::Health => Sensitivity::Health,
            Self::Assessment => Sensitivity::Assessment,
            Self::Plan => Sensitivity::Plan,
            Self::AssignedWork => Sensitivity::AssignedWork,
            Self::CaseRecord => Sensitivity::CaseRecord,
        }
    }
}

/// How long a grant runs: a whole number and a unit, `30m`, `12h`, `7d` or `2w`, at most a year.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantDuration(pub SignedDuration);

/// Why a duration could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a duration is a whole number and a unit: 30m (minutes), 12h (hours), 7d (days) or 2w \
     (weeks), more than 0 and at most a year (366d)"
)]
pub struct GrantDurationError;

impl FromStr for GrantDuration {
    type Err = GrantDurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let unit = s.chars().last().ok_or(GrantDurationError)?;
        let digits = &s[..s.len() - unit.len_utf8()];
        if digits.is_empty() || digits.len() > 9 || !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(GrantDurationError);
        }
        let n: i64 = digits.parse().map_err(|_| GrantDurationError)?;
        let minutes = match unit.to_ascii_lowercase() {
            'm' => n,
            'h' => n * 60,
            'd' => n * 24 * 60,
            'w' => n * 7 * 24 * 60,
            _ => return Err(GrantDurationError),
        };
        let duration = SignedDuration::from_mins(minutes);
        if minutes <= 0 || duration > MAX_GRANT {
            return Err(GrantDurationError);
        }
        Ok(Self(duration))
    }
}

impl fmt::Display for GrantDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let minutes = self.0.as_mins();
        match minutes {
            m if m % (7 * 24 * 60) == 0 => write!(f, "{}w", m / (7 * 24 * 60)),
            m if m % (24 * 60) == 0 => write!(f, "{}d", m / (24 * 60)),
            m if m % 60 == 0 => write!(f, "{}h", m / 60),
            m => write!(f, "{m}m"),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ReadCaseArgs {
    /// The case reference, e.g. KTIZhK-2026-000001.
    pub case_reference: String,
    /// Why you read the case; the gateway shows what this purpose allows you.
    #[arg(long, value_enum, default_value_t = PurposeArg::Coordination)]
    pub purpose: PurposeArg,
    /// Why, in words: required with --purpose btg (at least 10 characters).
    #[arg(
        long,
        value_name = "TEXT",
        required_if_eq_any = [("purpose", "btg"), ("purpose", "break_the_glass")]
    )]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct GrantArgs {
    /// The case reference.
    pub case_reference: String,
    /// The agency that may see the section (an agency of the district, e.g. ngo-1).
    #[arg(long, value_name = "AGENCY")]
    pub to: String,
    /// Only this member of that agency [default: every member].
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// The section of the case it may see.
    #[arg(long, value_enum)]
    pub section: SectionArg,
    /// For how long: 30m, 12h, 7d, 2w (at most a year).
    #[arg(long = "for", value_name = "DURATION")]
    pub duration: GrantDuration,
    /// Why the agency needs it (3 to 2000 characters), kept with the grant.
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
}

#[derive(Debug, Clone, Args)]
pub struct DisclosuresArgs {
    /// The case reference: the history covers every case and referral of its child.
    pub case_reference: String,
    /// Only entries after this ledger entry (to go on past the first 1000).
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    pub after: i64,
}

#[derive(Debug, Clone, Args)]
pub struct ConsultArgs {
    /// The concern, without the child's or the family's names (the gateway refuses an IIN).
    #[arg(long, value_name = "TEXT")]
    pub concern: String,
    /// What you would like to know from the commission.
    #[arg(long, value_name = "TEXT")]
    pub question: String,
    /// The child's age, when it matters for the advice.
    #[arg(long, value_name = "YEARS", value_parser = clap::value_parser!(u32).range(0..=18))]
    pub age: Option<u32>,
    #[command(flatten)]
    pub key: KeyArg,
}

#[derive(Debug, Clone, Args)]
pub struct AnswerConsultationArgs {
    /// The consultation's message id (from 'inbox').
    pub message_id: String,
    /// The commission's advice.
    #[arg(long, value_name = "TEXT")]
    pub advice: String,
}

// ---------------------------------------------------------------------------------------------
// How grants and disclosures read.
// ---------------------------------------------------------------------------------------------

fn grantee(g: &DisclosureGrant) -> String {
    if g.grantee_user_id.is_empty() {
        g.grantee_agency_id.clone()
    } else {
        format!("{}/{}", g.grantee_agency_id, g.grantee_user_id)
    }
}

/// `active`, `expired`, or `revoked <when> by <user>`.
fn grant_state(g: &DisclosureGrant, tz: &jiff::tz::TimeZone) -> String {
    if g.revoked_at.is_some() {
        format!(
            "revoked {} by {}",
            local_time(g.revoked_at.as_ref(), tz),
            g.revoked_by_user_id
        )
    } else if g.active {
        "active".into()
    } else {
        "expired".into()
    }
}

fn grant_state_name(g: &DisclosureGrant) -> &'static str {
    if g.revoked_at.is_some() {
        "revoked"
    } else if g.active {
        "active"
    } else {
        "expired"
    }
}

pub fn grant_json(g: &DisclosureGrant) -> Value {
    json!({
        "grant_id": g.grant_id,
        "case_reference": g.case_reference,
        "grantee_agency_id": g.grantee_agency_id,
        "grantee_user_id": g.grantee_user_id,
        "section": case_view::section_name(g.section),
        "granted_at": json_time(g.granted_at.as_ref()),
        "granted_by_user_id": g.granted_by_user_id,
        "expires_at": json_time(g.expires_at.as_ref()),
        "reason": g.reason,
        "revoked_at": json_time(g.revoked_at.as_ref()),
        "revoked_by_user_id": g.revoked_by_user_id,
        "active": g.active,
        "state": grant_state_name(g),
    })
}

fn grant_text(g: &DisclosureGrant, tz: &jiff::tz::TimeZone) -> String {
    let mut fields = Fields::new();
    fields
        .add("Grant", &g.grant_id)
        .add("Case", &g.case_reference)
        .add("To", grantee(g))
        .add("Section", case_view::section_text(g.section))
        .add(
            "Granted",
            format!(
                "{} by {}",
                local_time(g.granted_at.as_ref(), tz),
                g.granted_by_user_id
            ),
        )
        .add("Until", local_time(g.expires_at.as_ref(), tz))
        .add("State", grant_state(g, tz))
        .add("Reason", &g.reason);
    fields.render(0)
}

/// `FORM_KIND_HELP_REQUEST` as `help_request`; other names (`CASE_FILE`) in lower case.
fn ledger_form(form: &str) -> String {
    enum_name(form, "FORM_KIND_")
}

pub fn disclosure_json(r: &DisclosureRecord) -> Value {
    json!({
        "seq": r.seq,
        "recorded_at": json_time(r.recorded_at.as_ref()),
        "event": r.event,
        "agency_id": r.agency_id,
        "user_id": r.user_id,
        "role": r.role,
        "purpose_of_use": view::purpose_short(&r.purpose_of_use),
        "case_reference": r.case_reference,
        "form_kind": ledger_form(&r.form_kind),
        "sections": r.sections.iter().map(|s| case_view::section_name(*s)).collect::<Vec<_>>(),
        "outcome": r.outcome,
        "message_id": r.message_id,
        "recipient_agency_id": r.recipient_agency_id,
    })
}

// ---------------------------------------------------------------------------------------------
// Commands.
// ---------------------------------------------------------------------------------------------

impl Staff {
    /// A refused read: the gateway records every refusal, so say so.
    fn fail_read(&self, status: Status, purpose: PurposeArg) -> anyhow::Error {
        match status.code() {
            Code::PermissionDenied => anyhow!(
                "permission denied: {} (purpose {}; the gateway records every refusal)",
                one_line(status.message()),
                view::purpose_name(purpose.to_proto() as i32)
            ),
            _ => self.fail(status, "read"),
        }
    }

    /// `read-case <ref> [--purpose …] [--reason …]`.
    pub async fn read_case(mut self, args: ReadCaseArgs) -> anyhow::Result<()> {
        let purpose = args.purpose;
        let view = self
            .client
            .read_shared_case(self.request(ReadSharedCaseRequest {
                case_reference: args.case_reference.clone(),
                purpose_of_use: purpose.to_proto() as i32,
                reason: args.reason.clone().unwrap_or_default(),
            }))
            .await
            .map_err(|s| self.fail_read(s, purpose))?
            .into_inner();
        match self.format {
            Format::Json => {
                let mut value = case_view::shared_case_json(&view);
                value["purpose_of_use"] = json!(view::purpose_name(purpose.to_proto() as i32));
                print_json(&value);
            }
            Format::Human => {
                outln!(
                    "Read as {}/{} for {}; the gateway shows what its need-to-know policy allows.\n",
                    self.agency,
                    self.user,
                    view::purpose_name(purpose.to_proto() as i32)
                );
                out!("{}", case_view::shared_case_text(&view, &self.tz()));
            }
        }
        Ok(())
    }

    /// `grant <ref> --to <agency> [--user <id>] --section … --for … --reason …`.
    pub async fn grant(mut self, args: GrantArgs) -> anyhow::Result<()> {
        let expires_at = Timestamp::now()
            .checked_add(args.duration.0)
            .map_err(|_| anyhow!("the grant would end past the last representable instant"))?;
        let grant = self
            .case_files
            .grant_disclosure(self.request(GrantDisclosureRequest {
                acting_user: None,
                case_reference: args.case_reference.clone(),
                grantee_agency_id: args.to.clone(),
                grantee_user_id: args.user.clone().unwrap_or_default(),
                section: args.section.to_proto() as i32,
                expires_at: Some(referral_core::time::to_proto(expires_at)),
                reason: args.reason.clone(),
            }))
            .await
            .map_err(|s| self.fail_case(s, "grant", &args.case_reference))?
            .into_inner();
        let tz = self.tz();
        match self.format {
            Format::Json => print_json(&grant_json(&grant)),
            Format::Human => {
                outln!(
                    "granted: {} may see {} of case {} until {} (for {})",
                    grantee(&grant),
                    case_view::section_text(grant.section),
                    grant.case_reference,
                    local_time(grant.expires_at.as_ref(), &tz),
                    args.duration
                );
                outln!("grant {}", grant.grant_id);
                outln!("revoke it with: {} revoke {}", self.hint, grant.grant_id);
            }
        }
        Ok(())
    }

    /// `revoke <grant-id>`.
    pub async fn revoke(mut self, grant_id: String) -> anyhow::Result<()> {
        let grant = self
            .case_files
            .revoke_disclosure(self.request(RevokeDisclosureRequest {
                acting_user: None,
                grant_id: grant_id.clone(),
            }))
            .await
            .map_err(|s| self.fail_case(s, "grant id", ""))?
            .into_inner();
        let tz = self.tz();
        match self.format {
            Format::Json => print_json(&grant_json(&grant)),
            Format::Human => {
                outln!(
                    "grant {} of {} to {} is {}",
                    grant.grant_id,
                    case_view::section_name(grant.section),
                    grantee(&grant),
                    grant_state(&grant, &tz)
                );
                out!("{}", grant_text(&grant, &tz));
            }
        }
        Ok(())
    }

    /// `grants <ref>`: every grant of the case, active, expired and revoked.
    pub async fn grants(mut self, case_reference: String) -> anyhow::Result<()> {
        let reply = self
            .case_files
            .list_disclosure_grants(self.request(ListDisclosureGrantsRequest {
                acting_user: None,
                case_reference: case_reference.clone(),
            }))
            .await
            .map_err(|s| self.fail_case(s, "case reference", &case_reference))?
            .into_inner();
        let tz = self.tz();
        match self.format {
            Format::Json => print_json(&json!(
                reply.grants.iter().map(grant_json).collect::<Vec<_>>()
            )),
            Format::Human => {
                if reply.grants.is_empty() {
                    outln!(
                        "no grants on case {case_reference}: every agency sees what its part in \
                         the case allows"
                    );
                    outln!(
                        "grant one with: {} grant {case_reference} --to <agency> --section <section> \
                         --for 7d --reason \"…\"",
                        self.hint
                    );
                    return Ok(());
                }
                let mut table = Table::new([
                    "GRANT ID", "TO", "SECTION", "GRANTED", "BY", "UNTIL", "STATE", "REASON",
                ]);
                for g in &reply.grants {
                    table.row([
                        g.grant_id.clone(),
                        grantee(g),
                        case_view::section_name(g.section),
                        local_time(g.granted_at.as_ref(), &tz),
                        g.granted_by_user_id.clone(),
                        local_time(g.expires_at.as_ref(), &tz),
                        grant_state(g, &tz),
                        g.reason.clone(),
                    ]);
                }
                out!("{}", table.render());
            }
        }
        Ok(())
    }

    /// `disclosures <ref> [--after SEQ]`: the child's disclosure history from the gateway's
    /// ledger, page after page.
    pub async fn disclosures(self, args: DisclosuresArgs) -> anyhow::Result<()> {
        let case_reference = args.case_reference.clone();
        let first = args.after;
        let records: Vec<DisclosureRecord> = all_pages(|token| {
            let mut client = self.case_files.clone();
            // The page token is the ledger sequence number to continue after.
            let after_seq = if token.is_empty() {
                first
            } else {
                token.parse().unwrap_or(first)
            };
            let request = self.request(ListDisclosuresRequest {
                acting_user: None,
                case_reference: case_reference.clone(),
                after_seq,
                page_size: PAGE_SIZE,
            });
            async move {
                let reply = client.list_disclosures(request).await?.into_inner();
                let next = if reply.next_after_seq > 0 {
                    reply.next_after_seq.to_string()
                } else {
                    String::new()
                };
                Ok((reply.records, next))
            }
        })
        .await
        .map_err(|s| self.fail_case(s, "case reference", &case_reference))?;
        let tz = self.tz();
        match self.format {
            Format::Json => print_json(&json!(
                records.iter().map(disclosure_json).collect::<Vec<_>>()
            )),
            Format::Human => {
                if records.is_empty() {
                    outln!("no disclosures recorded for the child of case {case_reference}");
                    return Ok(());
                }
                outln!(
                    "Every disclosure of the child of case {case_reference} (all of the child's \
                     cases and referrals), from the gateway's ledger:"
                );
                let mut table = Table::new([
                    "SEQ", "TIME", "EVENT", "AGENCY", "USER", "ROLE", "PURPOSE", "FORM",
                    "SECTIONS", "OUTCOME",
                ]);
                for r in &records {
                    table.row([
                        r.seq.to_string(),
                        local_time(r.recorded_at.as_ref(), &tz),
                        r.event.clone(),
                        r.agency_id.clone(),
                        r.user_id.clone(),
                        r.role.clone(),
                        view::purpose_short(&r.purpose_of_use),
                        ledger_form(&r.form_kind),
                        case_view::sections_short(&r.sections),
                        r.outcome.clone(),
                    ]);
                }
                out!("{}", table.render());
                if records.len() >= MAX_LIST_ITEMS
                    && let Some(last) = records.last()
                {
                    outln!(
                        "showing the first {}; go on with: {} disclosures {case_reference} --after {}",
                        records.len(),
                        self.hint,
                        last.seq
                    );
                }
            }
        }
        Ok(())
    }

    /// `consult --concern … --question … [--age N]`.
    pub async fn consult(mut self, args: ConsultArgs) -> anyhow::Result<()> {
        let (key, generated) = args.key.key();
        let reply = self
            .client
            .consult(self.request(ConsultRequest {
                idempotency_key: key.clone(),
                consultation: Some(Consultation {
                    concern: args.concern,
                    question: args.question,
                    child_age_years: args.age.unwrap_or_default(),
                    consulted_by: String::new(),
                }),
            }))
            .await
            .map_err(|s| self.fail(s, "consultation"))?
            .into_inner();
        match self.format {
            Format::Json => print_json(&json!({
                "message_id": reply.message_id,
                "idempotency_key": key,
            })),
            Format::Human => {
                outln!(
                    "consultation sent to the district's commission: message {}",
                    reply.message_id
                );
                if generated {
                    print_key_hint(&key);
                }
                outln!(
                    "see the commission's advice with: {} sent-status {}",
                    self.hint,
                    reply.message_id
                );
            }
        }
        Ok(())
    }

    /// `answer-consultation <message-id> --advice …`.
    pub async fn answer_consultation(mut self, args: AnswerConsultationArgs) -> anyhow::Result<()> {
        let reply = self
            .client
            .answer_consultation(self.request(AnswerConsultationRequest {
                message_id: args.message_id.clone(),
                advice: args.advice,
            }))
            .await
            .map_err(|s| self.fail(s, "answer"))?
            .into_inner();
        match self.format {
            Format::Json => print_json(&json!({
                "answer_message_id": reply.answer_message_id,
            })),
            Format::Human => outln!(
                "advice sent back to the consultation's sender as message {}",
                reply.answer_message_id
            ),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::{Cli, Command};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("referral-hub").chain(args.iter().copied()))
    }

    #[test]
    fn durations_take_a_number_and_a_unit_up_to_a_year() {
        for (text, minutes) in [
            ("30m", 30),
            ("1h", 60),
            ("12H", 720),
            ("2d", 2 * 24 * 60),
            ("1w", 7 * 24 * 60),
            (" 366d ", 366 * 24 * 60),
        ] {
            assert_eq!(
                text.parse::<GrantDuration>().unwrap().0,
                SignedDuration::from_mins(minutes),
                "{text}"
            );
        }
        for bad in [
            "",
            "d",
            "0d",
            "-1d",
            "+1d",
            "1",
            "1y",
            "1.5d",
            "367d",
            "53w",
            "1 d",
            "д1",
            "99999999999d",
            "1д",
        ] {
            assert_eq!(
                bad.parse::<GrantDuration>(),
                Err(GrantDurationError),
                "{bad:?}"
            );
        }
        assert_eq!("48h".parse::<GrantDuration>().unwrap().to_string(), "2d");
        assert_eq!("14d".parse::<GrantDuration>().unwrap().to_string(), "2w");
        assert_eq!("90m".parse::<GrantDuration>().unwrap().to_string(), "90m");
        assert_eq!("3h".parse::<GrantDuration>().unwrap().to_string(), "3h");
    }

    #[test]
    fn every_section_has_a_name_that_parses_back() {
        for arg in SectionArg::value_variants() {
            let name = case_view::section_name(arg.to_proto() as i32);
            assert_eq!(SectionArg::from_str(&name, false), Ok(*arg), "{name}");
            let label = case_view::section_label(arg.to_proto() as i32);
            assert!(!label.kk.is_empty() && !label.ru.is_empty());
        }
        assert_eq!(
            SectionArg::value_variants().len(),
            12,
            "every class but unspecified"
        );
        assert_eq!(
            SectionArg::from_str("assessment", false)
                .unwrap()
                .to_proto(),
            Sensitivity::Assessment
        );
        assert_eq!(
            SectionArg::from_str("assigned_work", false)
                .unwrap()
                .to_proto(),
            Sensitivity::AssignedWork
        );
        assert!(SectionArg::from_str("everything", false).is_err());
    }

    #[test]
    fn purposes_have_short_names_and_aliases() {
        for (name, purpose) in [
            ("coordination", PurposeOfUse::CoordinationOfCare),
            ("coordination_of_care", PurposeOfUse::CoordinationOfCare),
            ("treatment", PurposeOfUse::Treatment),
            ("law", PurposeOfUse::LawEnforcement),
            ("law_enforcement", PurposeOfUse::LawEnforcement),
            ("aggregate", PurposeOfUse::AggregateReporting),
            ("btg", PurposeOfUse::BreakTheGlass),
            ("break_the_glass", PurposeOfUse::BreakTheGlass),
        ] {
            assert_eq!(
                PurposeArg::from_str(name, false).unwrap().to_proto(),
                purpose
            );
        }
        assert!(PurposeArg::from_str("curiosity", false).is_err());
    }

    #[test]
    fn read_case_defaults_to_coordination_and_btg_needs_a_reason() {
        let case = "KTIZhK-2026-000001";
        let Command::ReadCase(args) = parse(&["read-case", case]).unwrap().command else {
            panic!("not read-case")
        };
        assert_eq!(args.purpose, PurposeArg::Coordination);
        assert!(args.reason.is_none());
        let Command::ReadCase(args) = parse(&[
            "read-case",
            case,
            "--purpose",
            "btg",
            "--reason",
            "the child is missing tonight",
        ])
        .unwrap()
        .command
        else {
            panic!("not read-case")
        };
        assert_eq!(args.purpose, PurposeArg::Btg);
        for bad in [
            &["read-case", case, "--purpose", "btg"][..],
            &["read-case", case, "--purpose", "break_the_glass"],
            &["read-case", case, "--purpose", "curiosity"],
            &["read-case"],
        ] {
            assert_eq!(parse(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn grant_parses_its_section_and_duration() {
        let case = "KTIZhK-2026-000001";
        let cli = parse(&[
            "grant",
            case,
            "--to",
            "ngo-1",
            "--user",
            "case-manager",
            "--section",
            "plan",
            "--for",
            "2d",
            "--reason",
            "runs the sessions",
        ])
        .unwrap();
        let Command::Grant(args) = cli.command else {
            panic!("not grant")
        };
        assert_eq!(args.to, "ngo-1");
        assert_eq!(args.user.as_deref(), Some("case-manager"));
        assert_eq!(args.section, SectionArg::Plan);
        assert_eq!(args.duration.0, SignedDuration::from_hours(48));
        for bad in [
            &[
                "grant",
                case,
                "--to",
                "ngo-1",
                "--section",
                "plan",
                "--reason",
                "r",
            ][..],
            &[
                "grant",
                case,
                "--to",
                "ngo-1",
                "--section",
                "all",
                "--for",
                "2d",
                "--reason",
                "r",
            ],
            &[
                "grant",
                case,
                "--to",
                "ngo-1",
                "--section",
                "plan",
                "--for",
                "2y",
                "--reason",
                "r",
            ],
            &[
                "grant",
                case,
                "--section",
                "plan",
                "--for",
                "2d",
                "--reason",
                "r",
            ],
        ] {
            assert_eq!(parse(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn the_other_need_to_know_commands_parse() {
        let case = "KTIZhK-2026-000001";
        assert!(matches!(
            parse(&["revoke", "g-1"]).unwrap().command,
            Command::Revoke { .. }
        ));
        assert!(matches!(
            parse(&["grants", case]).unwrap().command,
            Command::Grants { .. }
        ));
        let Command::Disclosures(args) = parse(&["disclosures", case, "--after", "40"])
            .unwrap()
            .command
        else {
            panic!("not disclosures")
        };
        assert_eq!(args.after, 40);
        let Command::Consult(args) = parse(&[
            "consult",
            "--concern",
            "a pupil comes to school hungry",
            "--question",
            "whom to call?",
            "--age",
            "9",
        ])
        .unwrap()
        .command
        else {
            panic!("not consult")
        };
        assert_eq!(args.age, Some(9));
        assert_eq!(
            parse(&[
                "consult",
                "--concern",
                "c",
                "--question",
                "q",
                "--age",
                "19"
            ])
            .unwrap_err()
            .exit_code(),
            2
        );
        assert!(parse(&["answer-consultation", "m-1", "--advice", "call us"]).is_ok());
        assert_eq!(
            parse(&["answer-consultation", "m-1"])
                .unwrap_err()
                .exit_code(),
            2
        );
        let Command::Case {
            break_the_glass, ..
        } = parse(&["case", case, "--break-the-glass", "the curator is away"])
            .unwrap()
            .command
        else {
            panic!("not case")
        };
        assert_eq!(break_the_glass.as_deref(), Some("the curator is away"));
    }

    #[test]
    fn grants_read_as_active_expired_or_revoked() {
        let tz = jiff::tz::TimeZone::get("Asia/Almaty").unwrap();
        let mut g = DisclosureGrant {
            grant_id: "g-1".into(),
            grantee_agency_id: "ngo-1".into(),
            section: Sensitivity::Plan as i32,
            active: true,
            ..Default::default()
        };
        assert_eq!(grant_state(&g, &tz), "active");
        assert_eq!(grantee(&g), "ngo-1");
        g.grantee_user_id = "case-manager".into();
        assert_eq!(grantee(&g), "ngo-1/case-manager");
        g.active = false;
        assert_eq!(grant_state(&g, &tz), "expired");
        g.revoked_at = Some(prost_types::Timestamp {
            seconds: 1_741_582_800,
            nanos: 0,
        });
        g.revoked_by_user_id = "curator-1".into();
        assert_eq!(
            grant_state(&g, &tz),
            "revoked 2025-03-10 10:00 +05:00 by curator-1"
        );
        assert_eq!(grant_json(&g)["state"], "revoked");
        assert_eq!(grant_json(&g)["section"], "plan");
        let text = grant_text(&g, &tz);
        assert!(text.contains("plan — Жеке қолдау жоспары (M)"), "{text}");
    }

    #[test]
    fn disclosure_records_read_short() {
        let r = DisclosureRecord {
            seq: 7,
            event: "case.read".into(),
            purpose_of_use: "PURPOSE_OF_USE_BREAK_THE_GLASS".into(),
            form_kind: "CASE_FILE".into(),
            sections: vec![
                Sensitivity::CaseStatus as i32,
                Sensitivity::Assessment as i32,
            ],
            outcome: "allowed".into(),
            ..Default::default()
        };
        let json = disclosure_json(&r);
        assert_eq!(json["purpose_of_use"], "break_the_glass");
        assert_eq!(json["form_kind"], "case_file");
        assert_eq!(json["sections"], json!(["case_status", "assessment"]));
        assert_eq!(ledger_form("FORM_KIND_HELP_REQUEST"), "help_request");
    }
}
