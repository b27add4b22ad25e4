//! Referrals of pupils to NGOs and the NGO's services from the command line (M:2247-2271,
//! M:4757-4796):
//!
//! * `referral-hub referrals …` (a school's or residential institution's staff): refer a pupil,
//!   list a month's referrals with what the NGO reported, record the follow-up check, ask the
//!   NGO to cancel, fix the safety team's meeting and record the NGO's attendance, export the
//!   month's log J (CSV or XLSX) and send it to the commission;
//! * `referral-hub services …` (an NGO's case managers): list the services, take a step (accept,
//!   decline, schedule, held, unattended, progress, complete, cancel), list meeting notices.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};
use jiff::civil::DateTime;
use referral_core::{time, validate::to_calendar_date};
use referral_proto::v1::{
    ExportFormat, ExportReferralLogRequest, ListMeetingNoticesRequest, ListServiceReferralsRequest,
    ListServicesRequest, NgoService, RecordMeetingAttendanceRequest, RecordReferralCheckRequest,
    ReferPupilRequest, ReferralStatus, RequestServiceCancellationRequest, RiskTier,
    ScheduleSafetyMeetingRequest, SendReferralLogRequest, ServiceBusinessStatus, ServiceEvent,
    ServiceReferralRecord, UpdateServiceRequest, ngo_services_client::NgoServicesClient,
    school_referrals_client::SchoolReferralsClient,
};
use serde_json::json;

use crate::{
    case_cli::KeyArg,
    cli::Staff,
    dates::DateSpec,
    output::{Format, Table, enum_name, json_date, local_time, one_line, print_json},
};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TierArg {
    /// Тәуекел тобы / группа риска.
    AtRisk,
    /// Жоғары тәуекел тобы / группа высокого риска.
    HighRisk,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FileFormat {
    Csv,
    Xlsx,
}

/// A month as `YYYY-MM`.
#[derive(Debug, Clone, Copy)]
pub struct Month(i32, i32);

impl std::str::FromStr for Month {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (y, m) = s
            .trim()
            .split_once('-')
            .ok_or_else(|| "a month must be YYYY-MM".to_owned())?;
        match (y.parse(), m.parse()) {
            (Ok(y), Ok(m)) => Ok(Self(y, m)),
            _ => Err("a month must be YYYY-MM".to_owned()),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ReferralsCommand {
    /// Refer an at-risk or high-risk pupil to an NGO of the district (a row of the log J).
    Refer {
        #[arg(long, value_name = "FULL NAME")]
        pupil: String,
        #[arg(long, value_name = "CLASS")]
        class: String,
        /// Date of birth: YYYY-MM-DD.
        #[arg(long, value_name = "DATE")]
        born: DateSpec,
        #[arg(long, value_enum)]
        tier: TierArg,
        /// The NGO's directory id (`referral-hub staff` lists the district's agencies).
        #[arg(long, value_name = "AGENCY")]
        ngo: String,
        #[arg(long, value_name = "TEXT")]
        support: String,
        #[arg(long, value_name = "TEXT")]
        reason: String,
        /// The school's contact person for this referral.
        #[arg(long, value_name = "NAME")]
        contact: String,
        #[arg(long, value_name = "PHONE", default_value = "")]
        phone: String,
        #[command(flatten)]
        key: KeyArg,
    },
    /// The referrals of a month (default: this month) and where each stands.
    List {
        #[arg(long, value_name = "YYYY-MM")]
        month: Option<Month>,
    },
    /// Record the follow-up check of a referral (J: date checked).
    Check {
        referral_id: String,
        #[arg(long, value_name = "DATE", default_value = "today")]
        on: DateSpec,
    },
    /// Ask the NGO to cancel the service.
    Cancel {
        referral_id: String,
        #[arg(long, value_name = "TEXT")]
        reason: String,
        #[command(flatten)]
        key: KeyArg,
    },
    /// Fix the safety team's meeting about the pupil (the NGO attends every two weeks).
    Meeting {
        referral_id: String,
        /// Local date and time: YYYY-MM-DDTHH:MM.
        #[arg(long, value_name = "DATETIME")]
        at: DateTime,
        #[arg(long, value_name = "PLACE")]
        place: String,
        #[arg(long, value_name = "TEXT", default_value = "")]
        note: String,
        #[command(flatten)]
        key: KeyArg,
    },
    /// Record whether the NGO attended a meeting that has begun.
    Attendance {
        meeting_id: String,
        /// The NGO did not attend.
        #[arg(long)]
        absent: bool,
    },
    /// Write the log J of a month to a file (CSV or XLSX, Kazakh and Russian headings).
    Export {
        #[arg(long, value_name = "YYYY-MM")]
        month: Month,
        #[arg(long, value_enum, default_value = "xlsx")]
        format: FileFormat,
        /// Where to write it [default: the file name the service gives, here].
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Send the log J of a month that has ended to the commission.
    Send {
        #[arg(long, value_name = "YYYY-MM")]
        month: Month,
        #[command(flatten)]
        key: KeyArg,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StepArg {
    Accept,
    Decline,
    Schedule,
    Held,
    Unattended,
    Progress,
    Complete,
    Cancel,
}

impl StepArg {
    fn to_proto(self) -> ServiceEvent {
        match self {
            Self::Accept => ServiceEvent::Accepted,
            Self::Decline => ServiceEvent::Declined,
            Self::Schedule => ServiceEvent::SessionScheduled,
            Self::Held => ServiceEvent::SessionHeld,
            Self::Unattended => ServiceEvent::ChildUnattended,
            Self::Progress => ServiceEvent::WeeklyProgress,
            Self::Complete => ServiceEvent::Completed,
            Self::Cancel => ServiceEvent::Cancelled,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ServicesCommand {
    /// The services, newest first.
    List {
        /// Declined, completed and cancelled ones too.
        #[arg(long)]
        all: bool,
    },
    /// One step of a service; the school (or the commission) is told.
    Step {
        service_id: String,
        #[arg(value_enum)]
        step: StepArg,
        /// Why (required to decline or cancel).
        #[arg(long, value_name = "TEXT", default_value = "")]
        reason: String,
        /// What happened (required for the weekly progress report).
        #[arg(long, value_name = "TEXT", default_value = "")]
        note: String,
        /// The support the pupil receives (the school's log J shows it).
        #[arg(long, value_name = "TEXT", default_value = "")]
        support: String,
        /// The session's day (schedule; held and unattended default to the scheduled day).
        #[arg(long, value_name = "DATE")]
        on: Option<DateSpec>,
        #[command(flatten)]
        key: KeyArg,
    },
    /// The safety-team meetings schools fixed for the pupils served.
    Meetings {
        #[arg(default_value = "")]
        service_id: String,
    },
}

fn status_name(status: i32, business: i32) -> String {
    format!(
        "{} ({})",
        enum_name(
            ReferralStatus::try_from(status)
                .unwrap_or_default()
                .as_str_name(),
            "REFERRAL_STATUS_"
        ),
        enum_name(
            ServiceBusinessStatus::try_from(business)
                .unwrap_or_default()
                .as_str_name(),
            "SERVICE_BUSINESS_STATUS_"
        )
    )
}

fn referral_json(r: &ServiceReferralRecord) -> serde_json::Value {
    let referral = r.referral.clone().unwrap_or_default();
    json!({
        "referral_id": r.referral_id,
        "pupil": referral.pupil_full_name,
        "ngo": r.ngo_agency_id,
        "service": r.service_name,
        "message_id": r.message_id,
        "status": status_name(r.status, r.business_status),
        "support_received": r.support_received,
        "reason": r.reason,
        "date_checked": json_date(r.date_checked),
        "cancellation_requested": r.cancellation_requested,
        "updates": r.updates.len(),
    })
}

fn service_json(s: &NgoService) -> serde_json::Value {
    json!({
        "service_id": s.service_id,
        "referrer": s.referrer_agency_id,
        "referral_reference": s.referral_reference,
        "case_reference": s.case_reference,
        "action_number": s.action_number,
        "child": s.child_name,
        "status": status_name(s.status, s.business_status),
        "support_received": s.support_received,
        "version": s.version,
    })
}

impl Staff {
    /// `referrals …`.
    pub async fn referrals(self, command: ReferralsCommand) -> anyhow::Result<()> {
        let mut client = SchoolReferralsClient::new(self.channel.clone());
        let today = self.local_today();
        let (records, key) = match command {
            ReferralsCommand::Refer {
                pupil,
                class,
                born,
                tier,
                ngo,
                support,
                reason,
                contact,
                phone,
                key,
            } => {
                let (key, generated) = key.key();
                let record = client
                    .refer_pupil(self.request(ReferPupilRequest {
                        idempotency_key: key.clone(),
                        pupil_full_name: pupil,
                        class_name: class,
                        date_of_birth: Some(to_calendar_date(born.resolve(today))),
                        risk_tier: match tier {
                            TierArg::AtRisk => RiskTier::AtRisk,
                            TierArg::HighRisk => RiskTier::HighRisk,
                        } as i32,
                        ngo_agency_id: ngo,
                        support_requested: support,
                        reason,
                        contact_person: contact,
                        contact_phone: phone,
                    }))
                    .await
                    .map_err(|s| self.fail(s, "referral"))?
                    .into_inner();
                (vec![record], generated.then_some(key))
            }
            ReferralsCommand::List { month } => {
                let Month(year, month) =
                    month.unwrap_or(Month(i32::from(today.year()), i32::from(today.month())));
                let referrals = client
                    .list_service_referrals(
                        self.request(ListServiceReferralsRequest { year, month }),
                    )
                    .await
                    .map_err(|s| self.fail(s, "request"))?
                    .into_inner()
                    .referrals;
                (referrals, None)
            }
            ReferralsCommand::Check { referral_id, on } => {
                let record = client
                    .record_referral_check(self.request(RecordReferralCheckRequest {
                        referral_id,
                        checked_on: Some(to_calendar_date(on.resolve(today))),
                    }))
                    .await
                    .map_err(|s| self.fail(s, "check"))?
                    .into_inner();
                (vec![record], None)
            }
            ReferralsCommand::Cancel {
                referral_id,
                reason,
                key,
            } => {
                let (key, generated) = key.key();
                let record = client
                    .request_service_cancellation(self.request(RequestServiceCancellationRequest {
                        referral_id,
                        idempotency_key: key.clone(),
                        reason,
                    }))
                    .await
                    .map_err(|s| self.fail(s, "cancellation"))?
                    .into_inner();
                (vec![record], generated.then_some(key))
            }
            ReferralsCommand::Meeting {
                referral_id,
                at,
                place,
                note,
                key,
            } => {
                let (key, generated) = key.key();
                let at = at
                    .to_zoned(self.tz())
                    .context("the meeting's time does not exist in the district")?
                    .timestamp();
                let meeting = client
                    .schedule_safety_meeting(self.request(ScheduleSafetyMeetingRequest {
                        referral_id,
                        idempotency_key: key.clone(),
                        meeting_at: Some(time::to_proto(at)),
                        place,
                        note,
                    }))
                    .await
                    .map_err(|s| self.fail(s, "meeting"))?
                    .into_inner();
                match self.format {
                    Format::Json => print_json(&json!({
                        "meeting_id": meeting.meeting_id,
                        "message_id": meeting.message_id,
                    })),
                    Format::Human => outln!(
                        "meeting {} at {} / кездесу белгіленді",
                        meeting.meeting_id,
                        local_time(meeting.meeting_at.as_ref(), &self.tz())
                    ),
                }
                self.hint_key(generated.then_some(key.as_str()));
                return Ok(());
            }
            ReferralsCommand::Attendance { meeting_id, absent } => {
                let meeting = client
                    .record_meeting_attendance(self.request(RecordMeetingAttendanceRequest {
                        meeting_id,
                        ngo_attended: !absent,
                    }))
                    .await
                    .map_err(|s| self.fail(s, "attendance"))?
                    .into_inner();
                outln!(
                    "meeting {}: NGO {}",
                    meeting.meeting_id,
                    if meeting.ngo_attended == Some(true) {
                        "attended / қатысты"
                    } else {
                        "absent / қатыспады"
                    }
                );
                return Ok(());
            }
            ReferralsCommand::Export { month, format, out } => {
                let file = client
                    .export_referral_log(self.request(ExportReferralLogRequest {
                        year: month.0,
                        month: month.1,
                        format: match format {
                            FileFormat::Csv => ExportFormat::Csv,
                            FileFormat::Xlsx => ExportFormat::Xlsx,
                        } as i32,
                    }))
                    .await
                    .map_err(|s| self.fail(s, "export"))?
                    .into_inner();
                let path = out.unwrap_or_else(|| PathBuf::from(&file.file_name));
                std::fs::write(&path, &file.content)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                outln!("{}", path.display());
                return Ok(());
            }
            ReferralsCommand::Send { month, key } => {
                let (key, generated) = key.key();
                let sent = client
                    .send_referral_log(self.request(SendReferralLogRequest {
                        year: month.0,
                        month: month.1,
                        idempotency_key: key.clone(),
                    }))
                    .await
                    .map_err(|s| self.fail(s, "send"))?
                    .into_inner();
                outln!("log J sent / J жіберілді: {}", sent.message_id);
                self.hint_key(generated.then_some(key.as_str()));
                return Ok(());
            }
        };
        match self.format {
            Format::Json => print_json(&json!(
                records.iter().map(referral_json).collect::<Vec<_>>()
            )),
            Format::Human if records.is_empty() => outln!("no referrals / жолдама жоқ"),
            Format::Human => {
                let mut table = Table::new([
                    "REFERRAL", "PUPIL", "SERVICE", "STATUS", "SUPPORT", "CHECKED",
                ]);
                for r in &records {
                    let referral = r.referral.clone().unwrap_or_default();
                    table.row([
                        r.referral_id.clone(),
                        referral.pupil_full_name,
                        r.service_name.clone(),
                        status_name(r.status, r.business_status),
                        one_line(&r.support_received),
                        json_date(r.date_checked).unwrap_or_default(),
                    ]);
                }
                out!("{}", table.render());
            }
        }
        self.hint_key(key.as_deref());
        Ok(())
    }

    /// `services …`.
    pub async fn services(self, command: ServicesCommand) -> anyhow::Result<()> {
        let mut client = NgoServicesClient::new(self.channel.clone());
        let today = self.local_today();
        let (items, key) = match command {
            ServicesCommand::List { all } => {
                let services = client
                    .list_services(self.request(ListServicesRequest { include_ended: all }))
                    .await
                    .map_err(|s| self.fail(s, "request"))?
                    .into_inner()
                    .services;
                (services, None)
            }
            ServicesCommand::Step {
                service_id,
                step,
                reason,
                note,
                support,
                on,
                key,
            } => {
                let (key, generated) = key.key();
                let answer = client
                    .update_service(self.request(UpdateServiceRequest {
                        service_id,
                        idempotency_key: key.clone(),
                        event: step.to_proto() as i32,
                        reason,
                        note,
                        support_received: support,
                        session_on: on.map(|d| to_calendar_date(d.resolve(today))),
                    }))
                    .await
                    .map_err(|s| self.fail(s, "step"))?
                    .into_inner();
                if answer.message_id.is_empty() && self.format == Format::Human {
                    outln!("(the gateway is away: the update is sent when it is back)");
                }
                (
                    answer.service.into_iter().collect(),
                    generated.then_some(key),
                )
            }
            ServicesCommand::Meetings { service_id } => {
                let notices = client
                    .list_meeting_notices(self.request(ListMeetingNoticesRequest { service_id }))
                    .await
                    .map_err(|s| self.fail(s, "request"))?
                    .into_inner()
                    .notices;
                let mut table = Table::new(["SERVICE", "SCHOOL", "WHEN", "PLACE"]);
                for n in &notices {
                    let notice = n.notice.clone().unwrap_or_default();
                    table.row([
                        n.service_id.clone(),
                        self.agency_label(&n.school_agency_id),
                        local_time(notice.meeting_at.as_ref(), &self.tz()),
                        one_line(&notice.place),
                    ]);
                }
                if table.is_empty() {
                    outln!("no meetings / кездесу жоқ");
                } else {
                    out!("{}", table.render());
                }
                return Ok(());
            }
        };
        match self.format {
            Format::Json => print_json(&json!(items.iter().map(service_json).collect::<Vec<_>>())),
            Format::Human if items.is_empty() => outln!("no services / қызмет жоқ"),
            Format::Human => {
                let mut table = Table::new(["SERVICE", "FROM", "FOR", "CHILD", "STATUS"]);
                for s in &items {
                    let what = if s.case_reference.is_empty() {
                        s.referral_reference.clone()
                    } else {
                        format!("{} #{}", s.case_reference, s.action_number)
                    };
                    table.row([
                        s.service_id.clone(),
                        self.agency_label(&s.referrer_agency_id),
                        what,
                        s.child_name.clone(),
                        status_name(s.status, s.business_status),
                    ]);
                }
                out!("{}", table.render());
            }
        }
        self.hint_key(key.as_deref());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::{Cli, Command};

    #[test]
    fn referral_and_service_commands_parse() {
        let cli = Cli::try_parse_from([
            "referral-hub",
            "--as",
            "school-1/safety-team",
            "referrals",
            "refer",
            "--pupil",
            "Ерасыл Нұрланұлы",
            "--class",
            "7 Б",
            "--born",
            "2013-03-04",
            "--tier",
            "high-risk",
            "--ngo",
            "ngo-1",
            "--support",
            "Кеңес",
            "--reason",
            "Агрессия",
            "--contact",
            "Асель Нұрова",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Referrals {
                command: ReferralsCommand::Refer {
                    tier: TierArg::HighRisk,
                    ..
                }
            }
        ));
        let cli = Cli::try_parse_from([
            "referral-hub",
            "referrals",
            "export",
            "--month",
            "2026-11",
            "--format",
            "csv",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Referrals {
                command: ReferralsCommand::Export {
                    month: Month(2026, 11),
                    format: FileFormat::Csv,
                    out: None,
                }
            }
        ));
        let cli = Cli::try_parse_from([
            "referral-hub",
            "referrals",
            "meeting",
            "SR-1",
            "--at",
            "2026-11-24T15:00",
            "--place",
            "12-кабинет",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Referrals {
                command: ReferralsCommand::Meeting { .. }
            }
        ));
        let cli = Cli::try_parse_from([
            "referral-hub",
            "services",
            "step",
            "SVC-1",
            "decline",
            "--reason",
            "Орын жоқ",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Services {
                command: ServicesCommand::Step {
                    step: StepArg::Decline,
                    ..
                }
            }
        ));
        // A month is YYYY-MM; a step is one of the known ones.
        assert!(
            Cli::try_parse_from(["referral-hub", "referrals", "send", "--month", "11/2026"])
                .is_err()
        );
        assert!(
            Cli::try_parse_from(["referral-hub", "services", "step", "SVC-1", "finish"]).is_err()
        );
    }
}
