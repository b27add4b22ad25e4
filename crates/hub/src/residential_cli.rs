//! A residential institution's incident work and the commission's protection instructions from
//! the command line (issue 5, M:2855-3040):
//!
//! * `residential assess|refer|refer-health|close|show` on an incident (its report D is recorded
//!   with the school's `incident` commands): severity and grounds, the referral to the commission
//!   and the police in one action, an injured child to health, closing;
//! * `residential instructions|acknowledge`: the commission's protection instructions received,
//!   acknowledged and reported carried out;
//! * `instruct` (commission): send a protection instruction from a case, after weighing
//!   confidentiality.

use clap::{Args, Subcommand, ValueEnum};
use referral_core::validate::to_calendar_date;
use referral_proto::v1::{
    AcknowledgeInstructionRequest, AssessIncidentRequest, CloseIncidentRequest,
    GetResidentialIncidentRequest, IncidentChild, IncidentReferralState, IncidentSeverity,
    InstructionAcknowledgementKind, ListProtectionInstructionsRequest, MandatoryReportGround,
    ProtectionMeasure, ReceivedInstruction, ReferIncidentRequest, ReferInjuredChildRequest,
    ReferrerDetails, ResidentialIncident, SendProtectionInstructionRequest,
    protection_instructions_client::ProtectionInstructionsClient,
    residential_incidents_client::ResidentialIncidentsClient,
};
use serde_json::json;

use crate::{
    case_cli::KeyArg,
    cli::Staff,
    dates::DateSpec,
    output::{Format, Table, enum_name, json_date, one_line, print_json},
};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SeverityArg {
    /// Жеңіл / лёгкая.
    Light,
    /// Орта / средняя.
    Moderate,
    /// Ауыр / тяжёлая.
    Severe,
}

impl SeverityArg {
    fn to_proto(self) -> IncidentSeverity {
        match self {
            Self::Light => IncidentSeverity::Light,
            Self::Moderate => IncidentSeverity::Moderate,
            Self::Severe => IncidentSeverity::Severe,
        }
    }
}

/// The incidents that must go to the commission and the police (M:2932-2940).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GroundArg {
    ThreatOfPhysicalViolence,
    PhysicalViolenceWithInjury,
    PhysicalViolenceWithWeapon,
    SexualCommentsHarassment,
    TakingMoney,
    PeerHarassmentWithHarm,
    CorporalPunishmentWithHarm,
    /// Described with --ground-other.
    Other,
}

impl GroundArg {
    fn to_proto(self) -> MandatoryReportGround {
        match self {
            Self::ThreatOfPhysicalViolence => MandatoryReportGround::ThreatOfPhysicalViolence,
            Self::PhysicalViolenceWithInjury => MandatoryReportGround::PhysicalViolenceWithInjury,
            Self::PhysicalViolenceWithWeapon => MandatoryReportGround::PhysicalViolenceWithWeapon,
            Self::SexualCommentsHarassment => MandatoryReportGround::SexualCommentsHarassment,
            Self::TakingMoney => MandatoryReportGround::TakingMoney,
            Self::PeerHarassmentWithHarm => MandatoryReportGround::PeerHarassmentWithHarm,
            Self::CorporalPunishmentWithHarm => MandatoryReportGround::CorporalPunishmentWithHarm,
            Self::Other => MandatoryReportGround::Other,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MeasureArg {
    /// Басқа интернаттық мекемеге / в другое интернатное учреждение.
    MoveToAnotherInstitution,
    /// Отбасы типіндегі ортаға / в среду семейного типа.
    FamilyTypeSetting,
    /// Described with --measure-other.
    Other,
}

impl MeasureArg {
    fn to_proto(self) -> ProtectionMeasure {
        match self {
            Self::MoveToAnotherInstitution => ProtectionMeasure::MoveToAnotherInstitution,
            Self::FamilyTypeSetting => ProtectionMeasure::FamilyTypeSetting,
            Self::Other => ProtectionMeasure::Other,
        }
    }
}

/// The referring member of staff's position and phone (the name is the logged-in user's).
#[derive(Debug, Clone, Args)]
pub struct ReferrerArgs {
    #[arg(long, value_name = "TEXT")]
    pub position: String,
    #[arg(long, value_name = "PHONE")]
    pub phone: String,
}

impl ReferrerArgs {
    fn to_proto(&self) -> Option<ReferrerDetails> {
        Some(ReferrerDetails {
            position: self.position.clone(),
            phone: self.phone.clone(),
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum ResidentialCommand {
    /// Set an incident's severity and the mandatory-report grounds.
    Assess {
        incident_id: String,
        #[arg(long, value_enum)]
        severity: SeverityArg,
        /// Repeat for several grounds.
        #[arg(long = "ground", value_enum)]
        grounds: Vec<GroundArg>,
        #[arg(long, value_name = "TEXT", default_value = "")]
        ground_other: String,
    },
    /// Refer the incident to the commission and the police, in one action.
    Refer {
        incident_id: String,
        #[command(flatten)]
        referrer: ReferrerArgs,
    },
    /// Refer an injured child to the district's health facility at once (only the medical part).
    ReferHealth {
        incident_id: String,
        /// The child's full name.
        #[arg(long, value_name = "NAME")]
        child: String,
        #[arg(long, value_name = "IIN", default_value = "")]
        iin: String,
        /// Date of birth: YYYY-MM-DD.
        #[arg(long, value_name = "DATE")]
        born: Option<DateSpec>,
        #[arg(long, value_name = "TEXT")]
        injuries: String,
        #[command(flatten)]
        referrer: ReferrerArgs,
        #[command(flatten)]
        key: KeyArg,
    },
    /// Close an incident (a moderate or severe one only after it went to both).
    Close {
        incident_id: String,
        /// The version shown by `show`.
        #[arg(long)]
        version: u64,
    },
    /// The institution's work on an incident.
    Show { incident_id: String },
    /// The commission's protection instructions received.
    Instructions,
    /// Acknowledge an instruction, or (with --carried-out) report it carried out.
    Acknowledge {
        instruction_message_id: String,
        #[arg(long)]
        carried_out: bool,
        #[arg(long, value_name = "DATE", default_value = "today")]
        on: DateSpec,
        #[arg(long, value_name = "TEXT", default_value = "")]
        note: String,
        #[command(flatten)]
        key: KeyArg,
    },
}

/// `instruct`: the commission's protection instruction from a case.
#[derive(Debug, Clone, Args)]
pub struct InstructArgs {
    pub case_reference: String,
    /// The case version the instruction is based on (`case show`).
    #[arg(long)]
    pub version: u64,
    /// The residential institution told to act.
    #[arg(long = "to", value_name = "AGENCY")]
    pub recipient: String,
    #[arg(long, value_enum)]
    pub measure: MeasureArg,
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub measure_other: String,
    /// The new placement and its address.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub placement: String,
    /// Carry it out by: YYYY-MM-DD or +3d.
    #[arg(long, value_name = "DATE")]
    pub by: DateSpec,
    /// The commission's decision: its reference and date.
    #[arg(long, value_name = "REF")]
    pub decision: String,
    #[arg(long, value_name = "DATE", default_value = "today")]
    pub decision_date: DateSpec,
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    /// Confidentiality weighed first (M:3030-3040): why telling the institution helps the child
    /// and endangers nobody. Without it the instruction is refused.
    #[arg(long, value_name = "TEXT")]
    pub weighed_because: Option<String>,
    #[command(flatten)]
    pub key: KeyArg,
}

fn state_name(state: i32) -> String {
    enum_name(
        IncidentReferralState::try_from(state)
            .unwrap_or_default()
            .as_str_name(),
        "INCIDENT_REFERRAL_STATE_",
    )
}

fn severity_name(severity: i32) -> String {
    enum_name(
        IncidentSeverity::try_from(severity)
            .unwrap_or_default()
            .as_str_name(),
        "INCIDENT_SEVERITY_",
    )
}

fn incident_json(i: &ResidentialIncident) -> serde_json::Value {
    json!({
        "incident_id": i.incident_id,
        "director_implicated": i.director_implicated,
        "severity": severity_name(i.severity),
        "grounds": i.grounds.iter().map(|g| enum_name(
            MandatoryReportGround::try_from(*g).unwrap_or_default().as_str_name(),
            "MANDATORY_REPORT_GROUND_",
        )).collect::<Vec<_>>(),
        "must_refer": i.must_refer,
        "referral_state": state_name(i.referral_state),
        "commission_message_id": i.commission_message_id,
        "police_message_id": i.police_message_id,
        "health_message_ids": i.health_message_ids,
        "closed": i.closed,
        "version": i.version,
    })
}

fn instruction_json(i: &ReceivedInstruction) -> serde_json::Value {
    let body = i.instruction.clone().unwrap_or_default();
    json!({
        "message_id": i.message_id,
        "case_reference": body.case_reference,
        "child": body.child_full_name,
        "measure": enum_name(
            ProtectionMeasure::try_from(body.measure).unwrap_or_default().as_str_name(),
            "PROTECTION_MEASURE_",
        ),
        "new_placement": body.new_placement,
        "carry_out_by": json_date(body.carry_out_by),
        "decision_reference": body.decision_reference,
        "state": enum_name(
            InstructionAcknowledgementKind::try_from(i.state).unwrap_or_default().as_str_name(),
            "INSTRUCTION_ACKNOWLEDGEMENT_KIND_",
        ),
    })
}

impl Staff {
    /// `residential …`.
    pub async fn residential(self, command: ResidentialCommand) -> anyhow::Result<()> {
        let mut client = ResidentialIncidentsClient::new(self.channel.clone());
        let today = self.local_today();
        let (incident, key) = match command {
            ResidentialCommand::Assess {
                incident_id,
                severity,
                grounds,
                ground_other,
            } => {
                let reply = client
                    .assess_incident(self.request(AssessIncidentRequest {
                        incident_id,
                        severity: severity.to_proto() as i32,
                        grounds: grounds.iter().map(|g| g.to_proto() as i32).collect(),
                        grounds_other: ground_other,
                    }))
                    .await
                    .map_err(|s| self.fail(s, "assessment"))?;
                (reply.into_inner(), None)
            }
            ResidentialCommand::Refer {
                incident_id,
                referrer,
            } => {
                let reply = client
                    .refer_incident(self.request(ReferIncidentRequest {
                        incident_id,
                        referrer: referrer.to_proto(),
                        children: Vec::new(),
                    }))
                    .await
                    .map_err(|s| self.fail(s, "referral"))?;
                (reply.into_inner().incident.unwrap_or_default(), None)
            }
            ResidentialCommand::ReferHealth {
                incident_id,
                child,
                iin,
                born,
                injuries,
                referrer,
                key,
            } => {
                let (key, generated) = key.key();
                let reply = client
                    .refer_injured_child(self.request(ReferInjuredChildRequest {
                        idempotency_key: key.clone(),
                        incident_id,
                        child: Some(IncidentChild {
                            full_name: child,
                            iin,
                            date_of_birth: born.map(|b| to_calendar_date(b.resolve(today))),
                            injuries,
                            ..Default::default()
                        }),
                        referrer: referrer.to_proto(),
                    }))
                    .await
                    .map_err(|s| self.fail(s, "health referral"))?
                    .into_inner();
                (reply.incident.unwrap_or_default(), generated.then_some(key))
            }
            ResidentialCommand::Close {
                incident_id,
                version,
            } => {
                let reply = client
                    .close_incident(self.request(CloseIncidentRequest {
                        incident_id,
                        base_version: version,
                    }))
                    .await
                    .map_err(|s| self.fail(s, "closing"))?;
                (reply.into_inner(), None)
            }
            ResidentialCommand::Show { incident_id } => {
                let reply = client
                    .get_residential_incident(
                        self.request(GetResidentialIncidentRequest { incident_id }),
                    )
                    .await
                    .map_err(|s| self.fail(s, "request"))?;
                (reply.into_inner(), None)
            }
            ResidentialCommand::Instructions => {
                let items = client
                    .list_protection_instructions(
                        self.request(ListProtectionInstructionsRequest {}),
                    )
                    .await
                    .map_err(|s| self.fail(s, "request"))?
                    .into_inner()
                    .instructions;
                self.print_instructions(&items);
                return Ok(());
            }
            ResidentialCommand::Acknowledge {
                instruction_message_id,
                carried_out,
                on,
                note,
                key,
            } => {
                let (key, generated) = key.key();
                let kind = if carried_out {
                    InstructionAcknowledgementKind::CarriedOut
                } else {
                    InstructionAcknowledgementKind::Acknowledged
                };
                let reply = client
                    .acknowledge_instruction(self.request(AcknowledgeInstructionRequest {
                        idempotency_key: key.clone(),
                        instruction_message_id,
                        kind: kind as i32,
                        on: Some(to_calendar_date(on.resolve(today))),
                        note,
                    }))
                    .await
                    .map_err(|s| self.fail(s, "acknowledgement"))?
                    .into_inner();
                self.print_instructions(&[reply]);
                self.hint_key(generated.then_some(key.as_str()));
                return Ok(());
            }
        };
        match self.format {
            Format::Json => print_json(&incident_json(&incident)),
            Format::Human => {
                outln!(
                    "incident {} · severity {} · referral {} · {}{}",
                    incident.incident_id,
                    severity_name(incident.severity),
                    state_name(incident.referral_state),
                    if incident.closed { "closed" } else { "open" },
                    if incident.director_implicated {
                        " · director implicated (only you see it)"
                    } else {
                        ""
                    },
                );
                for (who, id) in [
                    ("commission", &incident.commission_message_id),
                    ("police", &incident.police_message_id),
                ] {
                    if !id.is_empty() {
                        outln!("  to the {who}: {id}");
                    }
                }
                for id in incident.health_message_ids.iter().filter(|i| !i.is_empty()) {
                    outln!("  to health: {id}");
                }
                outln!("  version {}", incident.version);
            }
        }
        self.hint_key(key.as_deref());
        Ok(())
    }

    fn print_instructions(&self, items: &[ReceivedInstruction]) {
        match self.format {
            Format::Json => print_json(&json!(
                items.iter().map(instruction_json).collect::<Vec<_>>()
            )),
            Format::Human if items.is_empty() => {
                outln!("no protection instructions / қорғау нұсқаулары жоқ")
            }
            Format::Human => {
                let mut table =
                    Table::new(["MESSAGE", "CASE", "MEASURE", "PLACEMENT", "BY", "STATE"]);
                for i in items {
                    let j = instruction_json(i);
                    let text = |k: &str| j[k].as_str().map(one_line).unwrap_or_default();
                    table.row([
                        i.message_id.clone(),
                        text("case_reference"),
                        text("measure"),
                        text("new_placement"),
                        text("carry_out_by"),
                        match text("state").as_str() {
                            "unspecified" => "not acknowledged".to_owned(),
                            s => s.to_owned(),
                        },
                    ]);
                }
                out!("{}", table.render());
            }
        }
    }

    /// `instruct`: the commission's protection instruction.
    pub async fn instruct(self, args: InstructArgs) -> anyhow::Result<()> {
        let today = self.local_today();
        let (key, generated) = args.key.key();
        let weighed = args.weighed_because.is_some();
        let reply = ProtectionInstructionsClient::new(self.channel.clone())
            .send_protection_instruction(self.request(SendProtectionInstructionRequest {
                idempotency_key: key.clone(),
                case_reference: args.case_reference,
                base_version: args.version,
                recipient_agency_id: args.recipient,
                measure: args.measure.to_proto() as i32,
                measure_other: args.measure_other,
                new_placement: args.placement,
                carry_out_by: Some(to_calendar_date(args.by.resolve(today))),
                decision_reference: args.decision,
                decision_date: Some(to_calendar_date(args.decision_date.resolve(today))),
                reason: args.reason,
                confidentiality_weighed: weighed,
                weighing_reason: args.weighed_because.unwrap_or_default(),
            }))
            .await
            .map_err(|s| self.fail(s, "protection instruction"))?
            .into_inner();
        match self.format {
            Format::Json => print_json(&json!({
                "version": reply.version,
                "message_id": reply.message_id,
            })),
            Format::Human => {
                if reply.message_id.is_empty() {
                    outln!(
                        "instruction queued (case version {}); it goes when the gateway is back",
                        reply.version
                    );
                } else {
                    outln!(
                        "instruction sent: {} (case version {})",
                        reply.message_id,
                        reply.version
                    );
                }
                if generated {
                    self.hint_key(generated.then_some(key.as_str()));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<crate::Command, clap::Error> {
        use clap::Parser as _;
        Ok(crate::Cli::try_parse_from(["referral-hub"].iter().chain(args.iter()))?.command)
    }

    #[test]
    fn residential_commands_parse_and_refuse_what_is_missing() {
        let Ok(crate::Command::Residential {
            command:
                ResidentialCommand::Assess {
                    severity, grounds, ..
                },
        }) = parse(&[
            "residential",
            "assess",
            "inc-1",
            "--severity",
            "severe",
            "--ground",
            "physical-violence-with-injury",
            "--ground",
            "other",
        ])
        else {
            panic!("assess parses");
        };
        assert_eq!(severity.to_proto(), IncidentSeverity::Severe);
        assert_eq!(grounds.len(), 2);
        assert!(parse(&["residential", "assess", "inc-1"]).is_err());
        assert!(parse(&["residential", "refer", "inc-1", "--position", "тәрбиеші"]).is_err());
        assert!(parse(&["residential", "close", "inc-1"]).is_err());
        let Ok(crate::Command::Residential {
            command: ResidentialCommand::Acknowledge { carried_out, .. },
        }) = parse(&["residential", "acknowledge", "msg-1", "--carried-out"])
        else {
            panic!("acknowledge parses");
        };
        assert!(carried_out);
    }

    #[test]
    fn instruct_needs_its_decision_and_leaves_the_weighing_to_the_commission() {
        let Ok(crate::Command::Instruct(args)) = parse(&[
            "instruct",
            "C-1",
            "--version",
            "3",
            "--to",
            "residential-1",
            "--measure",
            "family-type-setting",
            "--placement",
            "Отбасы",
            "--by",
            "+3d",
            "--decision",
            "Ш-7",
            "--reason",
            "Қорғау",
        ]) else {
            panic!("instruct parses");
        };
        assert_eq!(
            args.measure.to_proto(),
            ProtectionMeasure::FamilyTypeSetting
        );
        // Not weighed: sent as such, and the commission refuses it naming the field.
        assert!(args.weighed_because.is_none());
        assert!(parse(&["instruct", "C-1", "--version", "3", "--to", "residential-1"]).is_err());
    }
}
