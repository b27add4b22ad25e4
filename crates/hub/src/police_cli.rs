//! The police's investigations from the command line (`referral-hub police …`, M:3215-3260): list
//! the investigations with the cases linked to each and their children's roles, move one along
//! its lifecycle, link a case to the incident's investigation, register an offending child for
//! prevention and end the registration. Each change reaches the curator of every linked case.

use clap::{Subcommand, ValueEnum};
use referral_core::validate::to_calendar_date;
use referral_proto::v1::{
    EndPreventiveRegistrationRequest, IncidentRole, Investigation, InvestigationStatus,
    LinkCaseRequest, ListInvestigationsRequest, PreventiveRegistrationStatus,
    RegisterPreventiveRequest, UpdateInvestigationRequest,
    investigations_client::InvestigationsClient,
};
use serde_json::json;

use crate::{
    case_cli::KeyArg,
    cli::Staff,
    dates::DateSpec,
    output::{Format, Table, enum_name, one_line, print_json},
};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// Зардап шеккен / потерпевший.
    Victim,
    /// Құқық бұзушы / правонарушитель.
    Perpetrator,
    /// Both victim and perpetrator.
    Both,
    /// Куәгер / свидетель.
    Witness,
}

impl RoleArg {
    fn to_proto(self) -> IncidentRole {
        match self {
            Self::Victim => IncidentRole::Victim,
            Self::Perpetrator => IncidentRole::Perpetrator,
            Self::Both => IncidentRole::Both,
            Self::Witness => IncidentRole::Witness,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StatusArg {
    Opened,
    ReferredToProsecutor,
    HearingScheduled,
    Decided,
    Closed,
}

impl StatusArg {
    fn to_proto(self) -> InvestigationStatus {
        match self {
            Self::Opened => InvestigationStatus::Opened,
            Self::ReferredToProsecutor => InvestigationStatus::ReferredToProsecutor,
            Self::HearingScheduled => InvestigationStatus::HearingScheduled,
            Self::Decided => InvestigationStatus::Decided,
            Self::Closed => InvestigationStatus::Closed,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum PoliceCommand {
    /// The investigations, newest first, with their cases and the children's roles.
    List {
        /// Closed ones too.
        #[arg(long)]
        all: bool,
    },
    /// Move an investigation along: every linked case's curator is told.
    Update {
        investigation_id: String,
        #[arg(long, value_enum)]
        status: StatusArg,
        /// The day it reached this status: YYYY-MM-DD, today, -2d.
        #[arg(long, value_name = "DATE", default_value = "today")]
        on: DateSpec,
        /// With hearing-scheduled: the day of the hearing.
        #[arg(long, value_name = "DATE")]
        hearing: Option<DateSpec>,
        /// What happened (required with decided and closed); it reaches every linked case, so
        /// it names no child.
        #[arg(long, value_name = "TEXT", default_value = "")]
        summary: String,
        #[command(flatten)]
        key: KeyArg,
    },
    /// Link a case the commission asked about to the incident's investigation, with the child's
    /// role (again, to change the role).
    Link {
        investigation_id: String,
        case_reference: String,
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// Register the child of an offender's case for prevention (only that case's curator learns).
    Register {
        case_reference: String,
        #[arg(long, value_name = "TEXT")]
        grounds: String,
        #[arg(long, value_name = "DATE", default_value = "today")]
        on: DateSpec,
        #[command(flatten)]
        key: KeyArg,
    },
    /// End the child's preventive registration.
    EndRegistration {
        case_reference: String,
        #[arg(long, value_name = "TEXT")]
        reason: String,
        #[arg(long, value_name = "DATE", default_value = "today")]
        on: DateSpec,
        #[command(flatten)]
        key: KeyArg,
    },
}

fn status_name(status: i32) -> String {
    enum_name(
        InvestigationStatus::try_from(status)
            .unwrap_or_default()
            .as_str_name(),
        "INVESTIGATION_STATUS_",
    )
}

fn role_name(role: i32) -> String {
    enum_name(
        IncidentRole::try_from(role)
            .unwrap_or_default()
            .as_str_name(),
        "INCIDENT_ROLE_",
    )
}

fn investigation_json(i: &Investigation) -> serde_json::Value {
    json!({
        "investigation_id": i.investigation_id,
        "status": status_name(i.status),
        "incident_reference": i.incident_reference,
        "referred_by": i.referred_by_agency_id,
        "version": i.version,
        "changes": i.history.len(),
        "cases": i.cases.iter().map(|c| json!({
            "case_reference": c.case_reference,
            "child_role": role_name(c.child_role),
            "registration": c.registration.as_ref().map(|r| enum_name(
                PreventiveRegistrationStatus::try_from(r.status)
                    .unwrap_or_default()
                    .as_str_name(),
                "PREVENTIVE_REGISTRATION_STATUS_",
            )),
        })).collect::<Vec<_>>(),
    })
}

impl Staff {
    /// `police …`.
    pub async fn police(self, command: PoliceCommand) -> anyhow::Result<()> {
        let mut client = InvestigationsClient::new(self.channel.clone());
        let today = self.local_today();
        let (investigation, key) = match command {
            PoliceCommand::List { all } => {
                let items = client
                    .list_investigations(self.request(ListInvestigationsRequest {
                        include_closed: all,
                    }))
                    .await
                    .map_err(|s| self.fail(s, "request"))?
                    .into_inner()
                    .investigations;
                self.print_investigations(&items);
                return Ok(());
            }
            PoliceCommand::Update {
                investigation_id,
                status,
                on,
                hearing,
                summary,
                key,
            } => {
                let (key, generated) = key.key();
                let reply = client
                    .update_investigation(self.request(UpdateInvestigationRequest {
                        investigation_id,
                        case_reference: String::new(),
                        status: status.to_proto() as i32,
                        status_on: Some(to_calendar_date(on.resolve(today))),
                        hearing_on: hearing.map(|h| to_calendar_date(h.resolve(today))),
                        summary,
                        idempotency_key: key.clone(),
                    }))
                    .await
                    .map_err(|s| self.fail(s, "update"))?
                    .into_inner();
                (reply.investigation, generated.then_some(key))
            }
            PoliceCommand::Link {
                investigation_id,
                case_reference,
                role,
            } => {
                let reply = client
                    .link_case(self.request(LinkCaseRequest {
                        investigation_id,
                        case_reference,
                        child_role: role.to_proto() as i32,
                    }))
                    .await
                    .map_err(|s| self.fail(s, "link"))?
                    .into_inner();
                (reply.investigation, None)
            }
            PoliceCommand::Register {
                case_reference,
                grounds,
                on,
                key,
            } => {
                let (key, generated) = key.key();
                let reply = client
                    .register_preventive(self.request(RegisterPreventiveRequest {
                        case_reference,
                        registered_on: Some(to_calendar_date(on.resolve(today))),
                        grounds,
                        idempotency_key: key.clone(),
                    }))
                    .await
                    .map_err(|s| self.fail(s, "registration"))?
                    .into_inner();
                (reply.investigation, generated.then_some(key))
            }
            PoliceCommand::EndRegistration {
                case_reference,
                reason,
                on,
                key,
            } => {
                let (key, generated) = key.key();
                let reply = client
                    .end_preventive_registration(self.request(EndPreventiveRegistrationRequest {
                        case_reference,
                        ended_on: Some(to_calendar_date(on.resolve(today))),
                        end_reason: reason,
                        idempotency_key: key.clone(),
                    }))
                    .await
                    .map_err(|s| self.fail(s, "registration"))?
                    .into_inner();
                (reply.investigation, generated.then_some(key))
            }
        };
        self.print_investigations(&investigation.into_iter().collect::<Vec<_>>());
        self.hint_key(key.as_deref());
        Ok(())
    }

    fn print_investigations(&self, items: &[Investigation]) {
        match self.format {
            Format::Json => print_json(&json!(
                items.iter().map(investigation_json).collect::<Vec<_>>()
            )),
            Format::Human if items.is_empty() => outln!("no investigations / тергеу жоқ"),
            Format::Human => {
                let mut table = Table::new([
                    "INVESTIGATION",
                    "STATUS",
                    "INCIDENT",
                    "CASE",
                    "ROLE",
                    "REGISTERED",
                ]);
                for i in items {
                    let incident = one_line(&i.incident_reference);
                    if i.cases.is_empty() {
                        table.row([
                            i.investigation_id.clone(),
                            status_name(i.status),
                            incident.clone(),
                            "(no case yet)".into(),
                            String::new(),
                            String::new(),
                        ]);
                    }
                    for c in &i.cases {
                        let registered = c.registration.as_ref().is_some_and(|r| {
                            r.status == PreventiveRegistrationStatus::Registered as i32
                        });
                        table.row([
                            i.investigation_id.clone(),
                            status_name(i.status),
                            incident.clone(),
                            c.case_reference.clone(),
                            role_name(c.child_role),
                            if registered { "yes / иә" } else { "" }.to_owned(),
                        ]);
                    }
                }
                out!("{}", table.render());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::{Cli, Command};

    use super::*;

    #[test]
    fn police_commands_parse() {
        let cli = Cli::try_parse_from([
            "referral-hub",
            "police",
            "link",
            "INV-1",
            "KT-1",
            "--role",
            "perpetrator",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Police {
                command: PoliceCommand::Link {
                    role: RoleArg::Perpetrator,
                    ..
                }
            }
        ));
        let cli = Cli::try_parse_from([
            "referral-hub",
            "police",
            "update",
            "INV-1",
            "--status",
            "hearing-scheduled",
            "--hearing",
            "+14d",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Police {
                command: PoliceCommand::Update {
                    status: StatusArg::HearingScheduled,
                    hearing: Some(_),
                    ..
                }
            }
        ));
        assert!(
            Cli::try_parse_from(["referral-hub", "police", "register", "KT-1"]).is_err(),
            "grounds are required"
        );
    }
}
