//! The school's safeguarding procedure from the command line (`referral-hub safeguarding …`,
//! P:66-80, P:130-178): staff report a concern to the safeguarding lead (Қорғаушы / ответственный
//! за защиту детей), the lead or deputy takes its steps (consulted, phoned, written report K,
//! answer, close), staff record an allegation against a member of staff and the director
//! acknowledges it, and the lead or the director records the lead's absence.
//!
//! Labels are Kazakh and Russian, as the policy words them; the deadlines the steps start are
//! shown by `referral-hub deadlines`.

use clap::{Args, Subcommand};
use referral_core::validate::to_calendar_date;
use referral_proto::v1::{
    AcknowledgeAllegationRequest, Allegation, AllegationState, CancelLeadAbsenceRequest,
    CloseConcernRequest, Concern, ConcernState, GetConcernRequest, LeadAbsence,
    LinkWrittenReportRequest, ListAllegationsRequest, ListConcernsRequest, ListLeadAbsencesRequest,
    RecordAllegationRequest, RecordAnswerRequest, RecordConsultationRequest,
    RecordPhoneReportRequest, ReportConcernRequest, Role, SetLeadAbsenceRequest,
    safeguarding_client::SafeguardingClient,
};
use serde_json::json;
use tonic::transport::Channel;

use crate::{
    case_cli::KeyArg,
    cli::{PAGE_SIZE, Staff, all_pages},
    dates::{DateSpec, SignedAt},
    output::{
        Fields, Format, Table, enum_name, json_date, json_time, local_time, one_line, print_json,
    },
};

#[derive(Debug, Subcommand)]
pub enum SafeguardingCommand {
    /// Any staff: report a concern about a pupil to the safeguarding lead (the deputy while the
    /// lead is away).
    Concern(ConcernArgs),
    /// Your concerns (the lead, the deputy and the director: all), newest first.
    Concerns {
        /// Only these states, comma separated (reported, consulted, phoned,
        /// referred_in_writing, answered, closed).
        #[arg(long = "state", value_delimiter = ',', value_name = "LIST", value_parser = concern_state_arg)]
        states: Vec<ConcernState>,
    },
    /// One concern in full.
    Show { concern_id: String },
    /// Lead or deputy: the service was consulted without naming the child (a consultation sent
    /// with 'consult').
    Consulted {
        concern_id: String,
        /// The consultation's message id.
        #[arg(long, value_name = "MESSAGE")]
        consultation: String,
    },
    /// Lead or deputy: the concern was first reported to the service by phone (the written
    /// report is due within 24 hours).
    Phoned {
        concern_id: String,
        /// When the call was made: an RFC 3339 instant, or now.
        #[arg(long, value_name = "WHEN", default_value = "now")]
        at: SignedAt,
    },
    /// Lead or deputy: the written report is this help request K (sent with 'submit-k'); the
    /// service's answer is due within 3 working days.
    Written {
        concern_id: String,
        /// The help request's message id.
        #[arg(long = "k", value_name = "MESSAGE")]
        help_request: String,
    },
    /// Lead or deputy: the service answered outside the hub.
    Answer {
        concern_id: String,
        #[arg(long, value_name = "TEXT")]
        note: String,
    },
    /// Lead or deputy: close a concern (no referral needed, or answered).
    Close {
        concern_id: String,
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Any staff: record an allegation against a member of staff (it goes to the director; to
    /// the lead when the director is accused).
    Allegation(AllegationArgs),
    /// The allegations you recorded or received.
    Allegations,
    /// The director (or whoever received it): acknowledge an allegation.
    Acknowledge { allegation_id: String },
    /// Lead or director: the lead is away from one day to another (concerns go to the deputy).
    Absence {
        /// First day away: YYYY-MM-DD, today, +3d.
        #[arg(long, value_name = "DATE")]
        from: DateSpec,
        /// Last day away.
        #[arg(long, value_name = "DATE")]
        to: DateSpec,
        #[arg(long, value_name = "TEXT", default_value = "")]
        note: String,
        #[command(flatten)]
        key: KeyArg,
    },
    /// The lead's absences that have not ended.
    Absences,
    /// Lead or director: cancel a recorded absence.
    CancelAbsence { absence_id: String },
}

#[derive(Debug, Clone, Args)]
pub struct ConcernArgs {
    /// The pupil's full name.
    #[arg(long, value_name = "NAME")]
    pub pupil: String,
    /// The pupil's class, e.g. "7 «Б»".
    #[arg(long = "class", value_name = "CLASS")]
    pub pupil_class: String,
    /// What you saw or heard.
    #[arg(long, value_name = "TEXT")]
    pub what: String,
    /// When: YYYY-MM-DD, today, -2d.
    #[arg(long, value_name = "DATE", default_value = "today")]
    pub on: DateSpec,
    /// The child is at risk of harm now.
    #[arg(long)]
    pub at_risk: bool,
    #[command(flatten)]
    pub key: KeyArg,
}

#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("accused").required(true).args(["accused_user", "accused_name"])))]
pub struct AllegationArgs {
    /// The accused member of staff's user id (see 'staff').
    #[arg(long, value_name = "USER")]
    pub accused_user: Option<String>,
    /// The accused's name, when not listed.
    #[arg(long, value_name = "NAME")]
    pub accused_name: Option<String>,
    /// What is alleged.
    #[arg(long, value_name = "TEXT")]
    pub what: String,
    /// When it happened.
    #[arg(long, value_name = "DATE", default_value = "today")]
    pub on: DateSpec,
    #[command(flatten)]
    pub key: KeyArg,
}

fn concern_state_arg(s: &str) -> Result<ConcernState, String> {
    ConcernState::from_str_name(&format!("CONCERN_STATE_{}", s.to_ascii_uppercase()))
        .filter(|k| *k != ConcernState::Unspecified)
        .ok_or_else(|| {
            "unknown state; one of: reported, consulted, phoned, referred_in_writing, answered, \
             closed"
                .to_owned()
        })
}

/// A concern's state in Kazakh and Russian.
pub fn concern_state_text(state: i32) -> &'static str {
    match ConcernState::try_from(state).unwrap_or(ConcernState::Unspecified) {
        ConcernState::Reported => "қорғаушыға хабарланды / сообщено ответственному",
        ConcernState::Consulted => "аты-жөнін айтпай кеңес алынды / консультация без имени",
        ConcernState::Phoned => "телефон арқылы хабарланды / сообщено по телефону",
        ConcernState::ReferredInWriting => "жазба түрде жіберілді / направлено письменно",
        ConcernState::Answered => "жауап алынды / ответ получен",
        ConcernState::Closed => "жабылды / закрыто",
        ConcernState::Unspecified => "?",
    }
}

fn allegation_state_text(state: i32) -> &'static str {
    match AllegationState::try_from(state).unwrap_or(AllegationState::Unspecified) {
        AllegationState::Recorded => "тіркелді / зарегистрировано",
        AllegationState::Received => "директор алды / получено директором",
        AllegationState::Unspecified => "?",
    }
}

fn role_text(role: i32) -> &'static str {
    match Role::try_from(role).unwrap_or(Role::Unspecified) {
        Role::SafeguardingLead => "қорғаушы / ответственный за защиту",
        Role::SafeguardingDeputy => "қорғаушының орынбасары / заместитель",
        Role::SchoolDirector => "директор / директор",
        _ => "",
    }
}

fn concern_json(c: &Concern) -> serde_json::Value {
    json!({
        "concern_id": c.concern_id,
        "state": enum_name(
            ConcernState::try_from(c.state).unwrap_or_default().as_str_name(),
            "CONCERN_STATE_",
        ),
        "pupil_name": c.pupil_name,
        "pupil_class": c.pupil_class,
        "what_happened": c.what_happened,
        "observed_on": json_date(c.observed_on),
        "at_risk_now": c.at_risk_now,
        "reported_by": c.reported_by_user_id,
        "reported_at": json_time(c.reported_at.as_ref()),
        "assigned_to": c.assigned_to_user_id,
        "assigned_to_role": enum_name(
            Role::try_from(c.assigned_to_role).unwrap_or_default().as_str_name(),
            "ROLE_",
        ),
        "consultation_message_id": c.consultation_message_id,
        "phoned_at": json_time(c.phoned_at.as_ref()),
        "written_message_id": c.written_message_id,
        "written_at": json_time(c.written_at.as_ref()),
        "answered_at": json_time(c.answered_at.as_ref()),
        "answer_message_id": c.answer_message_id,
        "answer_note": c.answer_note,
        "closed_at": json_time(c.closed_at.as_ref()),
        "close_reason": c.close_reason,
    })
}

fn allegation_json(a: &Allegation) -> serde_json::Value {
    json!({
        "allegation_id": a.allegation_id,
        "state": enum_name(
            AllegationState::try_from(a.state).unwrap_or_default().as_str_name(),
            "ALLEGATION_STATE_",
        ),
        "accused_user_id": a.accused_user_id,
        "accused_name": a.accused_name,
        "allegation": a.allegation,
        "happened_on": json_date(a.happened_on),
        "recorded_by": a.recorded_by_user_id,
        "recorded_at": json_time(a.recorded_at.as_ref()),
        "assigned_to": a.assigned_to_user_id,
        "received_at": json_time(a.received_at.as_ref()),
    })
}

fn absence_json(a: &LeadAbsence) -> serde_json::Value {
    json!({
        "absence_id": a.absence_id,
        "lead": a.lead_user_id,
        "first_day": json_date(a.first_day),
        "last_day": json_date(a.last_day),
        "note": a.note,
        "cancelled_at": json_time(a.cancelled_at.as_ref()),
    })
}

impl Staff {
    fn safeguarding_client(&self) -> SafeguardingClient<Channel> {
        SafeguardingClient::new(self.channel.clone())
    }

    /// `safeguarding …`.
    pub async fn safeguarding(self, command: SafeguardingCommand) -> anyhow::Result<()> {
        let mut client = self.safeguarding_client();
        let today = self.local_today();
        match command {
            SafeguardingCommand::Concern(args) => {
                let (key, generated) = args.key.key();
                let concern = client
                    .report_concern(self.request(ReportConcernRequest {
                        idempotency_key: key.clone(),
                        pupil_name: args.pupil,
                        pupil_class: args.pupil_class,
                        what_happened: args.what,
                        observed_on: Some(to_calendar_date(args.on.resolve(today))),
                        at_risk_now: args.at_risk,
                    }))
                    .await
                    .map_err(|s| self.fail(s, "concern"))?
                    .into_inner();
                self.print_concern(&concern, "concern reported / алаңдаушылық хабарланды");
                self.hint_key(generated.then_some(key.as_str()));
            }
            SafeguardingCommand::Concerns { states } => {
                let items: Vec<Concern> = all_pages(|page_token| {
                    let mut client = client.clone();
                    let request = self.request(ListConcernsRequest {
                        states: states.iter().map(|s| *s as i32).collect(),
                        page_size: PAGE_SIZE,
                        page_token,
                    });
                    async move {
                        let reply = client.list_concerns(request).await?.into_inner();
                        Ok((reply.concerns, reply.next_page_token))
                    }
                })
                .await
                .map_err(|s| self.fail(s, "request"))?;
                match self.format {
                    Format::Json => {
                        print_json(&json!(items.iter().map(concern_json).collect::<Vec<_>>()))
                    }
                    Format::Human if items.is_empty() => outln!("no concerns / алаңдаушылық жоқ"),
                    Format::Human => {
                        let tz = self.tz();
                        let mut table =
                            Table::new(["CONCERN", "REPORTED", "PUPIL", "CLASS", "TO", "STATE"]);
                        for c in &items {
                            table.row([
                                c.concern_id.clone(),
                                local_time(c.reported_at.as_ref(), &tz),
                                one_line(&c.pupil_name),
                                one_line(&c.pupil_class),
                                c.assigned_to_user_id.clone(),
                                concern_state_text(c.state).to_owned(),
                            ]);
                        }
                        out!("{}", table.render());
                    }
                }
            }
            SafeguardingCommand::Show { concern_id } => {
                let concern = client
                    .get_concern(self.request(GetConcernRequest { concern_id }))
                    .await
                    .map_err(|s| self.fail(s, "request"))?
                    .into_inner();
                self.print_concern(&concern, "");
            }
            SafeguardingCommand::Consulted {
                concern_id,
                consultation,
            } => {
                let concern = client
                    .record_consultation(self.request(RecordConsultationRequest {
                        concern_id,
                        consultation_message_id: consultation,
                    }))
                    .await
                    .map_err(|s| self.fail(s, "step"))?
                    .into_inner();
                self.print_concern(&concern, "consultation recorded / кеңес тіркелді");
            }
            SafeguardingCommand::Phoned { concern_id, at } => {
                let at = at.resolve(jiff::Timestamp::now());
                let concern = client
                    .record_phone_report(self.request(RecordPhoneReportRequest {
                        concern_id,
                        phoned_at: Some(referral_core::time::to_proto(at)),
                    }))
                    .await
                    .map_err(|s| self.fail(s, "step"))?
                    .into_inner();
                self.print_concern(
                    &concern,
                    "phone report recorded: send the written report (a K) within 24 hours / \
                     24 сағаттың ішінде жазба түрде жіберіңіз",
                );
            }
            SafeguardingCommand::Written {
                concern_id,
                help_request,
            } => {
                let concern = client
                    .link_written_report(self.request(LinkWrittenReportRequest {
                        concern_id,
                        help_request_message_id: help_request,
                    }))
                    .await
                    .map_err(|s| self.fail(s, "step"))?
                    .into_inner();
                self.print_concern(
                    &concern,
                    "written report linked: the answer is due within 3 working days / \
                     жауап үш жұмыс күні ішінде",
                );
            }
            SafeguardingCommand::Answer { concern_id, note } => {
                let concern = client
                    .record_answer(self.request(RecordAnswerRequest {
                        concern_id,
                        answer_note: note,
                    }))
                    .await
                    .map_err(|s| self.fail(s, "step"))?
                    .into_inner();
                self.print_concern(&concern, "answer recorded / жауап тіркелді");
            }
            SafeguardingCommand::Close { concern_id, reason } => {
                let concern = client
                    .close_concern(self.request(CloseConcernRequest { concern_id, reason }))
                    .await
                    .map_err(|s| self.fail(s, "step"))?
                    .into_inner();
                self.print_concern(&concern, "concern closed / жабылды");
            }
            SafeguardingCommand::Allegation(args) => {
                let (key, generated) = args.key.key();
                let allegation = client
                    .record_allegation(self.request(RecordAllegationRequest {
                        idempotency_key: key.clone(),
                        accused_user_id: args.accused_user.unwrap_or_default(),
                        accused_name: args.accused_name.unwrap_or_default(),
                        allegation: args.what,
                        happened_on: Some(to_calendar_date(args.on.resolve(today))),
                    }))
                    .await
                    .map_err(|s| self.fail(s, "allegation"))?
                    .into_inner();
                self.print_allegations(
                    &[allegation],
                    "allegation recorded; due at the director within 1 working day / \
                     директор бір жұмыс күні ішінде алады",
                );
                self.hint_key(generated.then_some(key.as_str()));
            }
            SafeguardingCommand::Allegations => {
                let items = client
                    .list_allegations(self.request(ListAllegationsRequest {}))
                    .await
                    .map_err(|s| self.fail(s, "request"))?
                    .into_inner()
                    .allegations;
                self.print_allegations(&items, "");
            }
            SafeguardingCommand::Acknowledge { allegation_id } => {
                let allegation = client
                    .acknowledge_allegation(
                        self.request(AcknowledgeAllegationRequest { allegation_id }),
                    )
                    .await
                    .map_err(|s| self.fail(s, "step"))?
                    .into_inner();
                self.print_allegations(&[allegation], "allegation received / айып алынды");
            }
            SafeguardingCommand::Absence {
                from,
                to,
                note,
                key,
            } => {
                let (key, _) = key.key();
                let absence = client
                    .set_lead_absence(self.request(SetLeadAbsenceRequest {
                        idempotency_key: key,
                        first_day: Some(to_calendar_date(from.resolve(today))),
                        last_day: Some(to_calendar_date(to.resolve(today))),
                        note,
                    }))
                    .await
                    .map_err(|s| self.fail(s, "absence"))?
                    .into_inner();
                self.print_absences(&[absence]);
            }
            SafeguardingCommand::Absences => {
                let items = client
                    .list_lead_absences(self.request(ListLeadAbsencesRequest {}))
                    .await
                    .map_err(|s| self.fail(s, "request"))?
                    .into_inner()
                    .absences;
                self.print_absences(&items);
            }
            SafeguardingCommand::CancelAbsence { absence_id } => {
                let absence = client
                    .cancel_lead_absence(self.request(CancelLeadAbsenceRequest { absence_id }))
                    .await
                    .map_err(|s| self.fail(s, "step"))?
                    .into_inner();
                self.print_absences(&[absence]);
            }
        }
        Ok(())
    }

    fn print_concern(&self, c: &Concern, headline: &str) {
        if self.format == Format::Json {
            print_json(&concern_json(c));
            return;
        }
        if !headline.is_empty() {
            outln!("{headline}");
        }
        let tz = self.tz();
        let mut f = Fields::new();
        f.add("concern", &c.concern_id)
            .add("state / күйі", concern_state_text(c.state))
            .add("pupil / оқушы", one_line(&c.pupil_name))
            .add("class / сынып", one_line(&c.pupil_class))
            .add("what / не болды", one_line(&c.what_happened))
            .add(
                "at risk now / қазір қауіп бар",
                if c.at_risk_now {
                    "иә / да"
                } else {
                    "жоқ / нет"
                },
            )
            .add(
                "reported / хабарланды",
                local_time(c.reported_at.as_ref(), &tz),
            )
            .add("reported by", &c.reported_by_user_id)
            .add(
                "to / кімге",
                format!(
                    "{} ({})",
                    c.assigned_to_user_id,
                    role_text(c.assigned_to_role)
                ),
            );
        if !c.consultation_message_id.is_empty() {
            f.add("consultation / кеңес", &c.consultation_message_id);
        }
        if c.phoned_at.is_some() {
            f.add("phoned / телефон", local_time(c.phoned_at.as_ref(), &tz));
        }
        if !c.written_message_id.is_empty() {
            f.add("written report K / жазба", &c.written_message_id);
        }
        if c.answered_at.is_some() {
            f.add("answered / жауап", local_time(c.answered_at.as_ref(), &tz));
        }
        if !c.answer_message_id.is_empty() {
            f.add("commission's decision", &c.answer_message_id);
        }
        if !c.answer_note.is_empty() {
            f.add("answer note", one_line(&c.answer_note));
        }
        if !c.close_reason.is_empty() {
            f.add("closed because / себебі", one_line(&c.close_reason));
        }
        out!("{}", f.render(0));
    }

    fn print_allegations(&self, items: &[Allegation], headline: &str) {
        if self.format == Format::Json {
            print_json(&json!(
                items.iter().map(allegation_json).collect::<Vec<_>>()
            ));
            return;
        }
        if !headline.is_empty() {
            outln!("{headline}");
        }
        if items.is_empty() {
            outln!("no allegations / айып жоқ");
            return;
        }
        let tz = self.tz();
        let mut table = Table::new(["ALLEGATION", "RECORDED", "ACCUSED", "TO", "STATE"]);
        for a in items {
            table.row([
                a.allegation_id.clone(),
                local_time(a.recorded_at.as_ref(), &tz),
                one_line(&a.accused_name),
                format!(
                    "{} ({})",
                    a.assigned_to_user_id,
                    role_text(a.assigned_to_role)
                ),
                allegation_state_text(a.state).to_owned(),
            ]);
        }
        out!("{}", table.render());
    }

    fn print_absences(&self, items: &[LeadAbsence]) {
        if self.format == Format::Json {
            print_json(&json!(items.iter().map(absence_json).collect::<Vec<_>>()));
            return;
        }
        if items.is_empty() {
            outln!("no absences of the lead / қорғаушы орнында");
            return;
        }
        let mut table = Table::new(["ABSENCE", "FROM", "TO", "LEAD", "NOTE", "CANCELLED"]);
        for a in items {
            let v = absence_json(a);
            let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            table.row([
                a.absence_id.clone(),
                text("first_day"),
                text("last_day"),
                a.lead_user_id.clone(),
                one_line(&a.note),
                if a.cancelled_at.is_some() {
                    "иә / да".to_owned()
                } else {
                    String::new()
                },
            ]);
        }
        out!("{}", table.render());
        outln!("concerns go to the deputy meanwhile / бұл кезде орынбасарына");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_by_their_short_names() {
        assert_eq!(
            concern_state_arg("referred_in_writing"),
            Ok(ConcernState::ReferredInWriting)
        );
        assert!(concern_state_arg("unspecified").is_err());
        assert!(concern_state_arg("open").is_err());
    }

    fn parse(args: &[&str]) -> Result<SafeguardingCommand, clap::Error> {
        use clap::Parser as _;
        let cli =
            crate::Cli::try_parse_from(["referral-hub", "safeguarding"].iter().chain(args.iter()))?;
        match cli.command {
            crate::Command::Safeguarding { command } => Ok(command),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn commands_parse_with_their_defaults_and_refuse_what_is_missing() {
        let SafeguardingCommand::Concern(c) = parse(&[
            "concern",
            "--pupil",
            "Ерасыл",
            "--class",
            "7 Б",
            "--what",
            "көгерген",
            "--at-risk",
        ])
        .unwrap() else {
            panic!("a concern")
        };
        assert_eq!(c.on, DateSpec::TODAY);
        assert!(c.at_risk);
        let SafeguardingCommand::Phoned { at, .. } = parse(&["phoned", "c-1"]).unwrap() else {
            panic!("phoned")
        };
        assert_eq!(at, SignedAt::Now);
        let SafeguardingCommand::Absence { from, to, .. } =
            parse(&["absence", "--from", "today", "--to", "+3d"]).unwrap()
        else {
            panic!("an absence")
        };
        assert_eq!((from, to), (DateSpec::TODAY, DateSpec::FromToday(3)));
        // An allegation names the accused one way.
        assert!(parse(&["allegation", "--what", "итерді"]).is_err());
        assert!(
            parse(&[
                "allegation",
                "--what",
                "итерді",
                "--accused-user",
                "a",
                "--accused-name",
                "b"
            ])
            .is_err()
        );
        assert!(parse(&["written", "c-1"]).is_err(), "--k is required");
    }
}
