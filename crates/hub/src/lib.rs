//! `referral-hub`, the one binary of the hub: `up` runs every component in one process, `gateway`
//! and `agency --id` run one component each, `audit verify` checks the ledger offline, and the
//! remaining subcommands are the people's CLI (log in, submit form K, read the inbox, decide,
//! follow what was sent; work a case file at the commission; answer information requests and
//! report progress at the other agencies; follow deadlines).
//!
//! Exit codes: 0 success, 1 failure, 2 bad usage. Every error is one line on stderr.

#![forbid(unsafe_code)]

/// `print!` for the CLI's output: through `output::write_stdout`, so that a reader that went
/// away (`referral-hub inbox | head -1`) ends the command quietly instead of a panic.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))
    };
}

/// `println!` for the CLI's output (see `out!`).
macro_rules! outln {
    () => {
        $crate::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub mod audit;
pub mod case_cli;
pub mod case_view;
pub mod cli;
pub mod dates;
pub mod deadline_cli;
pub mod disclosure_cli;
pub mod form_case;
pub mod form_k;
pub mod launcher;
pub mod output;
pub mod police_cli;
pub mod residential_cli;
pub mod safeguarding_cli;
pub mod services_cli;
pub mod session;
pub mod settings;
pub mod view;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use referral_core::directory::parse_role;
use referral_proto::v1::{FormKind, Role};

use crate::{
    case_cli::{
        AnswerInfoArgs, CloseArgs, ContactArgs, DownloadArgs, FileLArgs, FileMArgs, ProgressArgs,
        ReopenArgs, RequestInfoArgs, ReviewArgs, UploadArgs,
    },
    disclosure_cli::{
        AnswerConsultationArgs, ConsultArgs, DisclosuresArgs, GrantArgs, ReadCaseArgs,
    },
    form_case::DeadlineStateArg,
    form_k::{CircumstanceFlags, KFlags},
    output::Format,
    settings::{Overrides, Settings},
};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "referral-hub",
    version,
    about = "The referral hub of a child-protection district: run it, and use it as a member of staff.",
    after_help = "Start with 'referral-hub up', then, from another terminal, \
                  'referral-hub login --agency school-1 --user director'."
)]
pub struct Cli {
    /// A TOML configuration file (environment variables REFERRAL_HUB__SECTION__KEY override it).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The data directory: stores, development PKI, CLI session [default: ./data].
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Act as AGENCY/USER with a fresh development token instead of the saved session.
    #[arg(long = "as", global = true, value_name = "AGENCY/USER")]
    pub as_user: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole hub in one process: the gateway and every agency of the directory.
    Up,
    /// Run the gateway alone.
    Gateway,
    /// Run one agency service alone.
    Agency {
        /// The agency's id in the directory, e.g. school-1.
        #[arg(long)]
        id: String,
        /// Listen here instead of on the port of the agency's endpoint.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Audit the gateway's hash-chained ledger ('ledger verify' is an older name of 'audit verify').
    #[command(visible_alias = "ledger")]
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Log in as a member of staff (mints a development token; or stores --token).
    Login {
        /// The agency, e.g. school-1.
        #[arg(long)]
        agency: String,
        /// The user id within the agency, e.g. director.
        #[arg(long)]
        user: String,
        /// A token from the deployment's identity provider, stored instead of minting one.
        #[arg(long, value_name = "JWT")]
        token: Option<String>,
    },
    /// Forget the saved session.
    Logout,
    /// Who you are, as your agency's service sees you.
    Whoami,
    /// Your agency's staff.
    Staff {
        /// Only this role, e.g. commission_curator.
        #[arg(long, value_parser = role_arg)]
        role: Option<Role>,
    },
    /// Submit a help request (form K) to the commission: from flags, --file or --demo.
    #[command(name = "submit-k")]
    SubmitK(Box<SubmitKArgs>),
    /// Messages your agency received.
    Inbox {
        /// Only this form kind, e.g. help_request.
        #[arg(long, value_parser = form_arg)]
        form: Option<FormKind>,
    },
    /// One received message, with its form in full.
    Show { message_id: String },
    /// Decide on a help request: open a case with a curator, or no further action.
    Decide(DecideArgs),
    /// Messages your agency sent.
    Sent {
        /// Only this form kind, e.g. help_request.
        #[arg(long, value_parser = form_arg)]
        form: Option<FormKind>,
    },
    /// Where a sent message is, and the answer (for K: the commission's decision).
    #[command(name = "sent-status")]
    SentStatus { message_id: String },

    /// Commission: the open cases (yours with --mine, closed ones too with --all).
    Cases {
        /// Only the cases you are the curator of.
        #[arg(long)]
        mine: bool,
        /// Closed cases too.
        #[arg(long)]
        all: bool,
    },
    /// Commission: one case file, with its version, stage, cycles, rows, contacts and documents
    /// (as much of it as the need-to-know policy lets you see).
    Case {
        /// The case reference, e.g. KTIZhK-2026-000001.
        case_reference: String,
        /// Chair: open the whole file outside the case team in an emergency, saying why (at
        /// least 10 characters). Recorded in the gateway's ledger; the curator is alerted.
        #[arg(long, value_name = "REASON")]
        break_the_glass: Option<String>,
    },
    /// Commission: record a contact with the child, the family or a partner.
    Contact(ContactArgs),
    /// Commission: add a document (PDF, PNG or JPEG, at most 10 MiB) to a case file.
    Upload(UploadArgs),
    /// Commission: save a document of a case file.
    Download(DownloadArgs),
    /// Commission: ask an agency that knows the child for information (while assessing).
    #[command(name = "request-info")]
    RequestInfo(RequestInfoArgs),
    /// Commission: file the assessment L with the level of risk.
    #[command(name = "file-l")]
    FileL(FileLArgs),
    /// Commission: file the support plan M; rows of other agencies go to them.
    #[command(name = "file-m")]
    FileM(FileMArgs),
    /// Commission: record a review meeting of the plan; the minutes go to --agencies.
    Review(ReviewArgs),
    /// Commission: close a case with the closure criteria.
    Close(CloseArgs),
    /// Commission: open a closed case again (every stage restarts, the history is kept).
    Reopen(ReopenArgs),
    /// Answer an information request the commission sent your agency.
    #[command(name = "answer-info")]
    AnswerInfo(AnswerInfoArgs),
    /// Report progress or completion of an action row assigned to your agency.
    Progress(ProgressArgs),
    /// Read a case through the hub (any agency): you see what the gateway's need-to-know policy
    /// allows for your part in the case and your purpose; every read is recorded.
    #[command(name = "read-case")]
    ReadCase(ReadCaseArgs),
    /// Commission: let an agency (or one of its staff) see a section of a case for a while.
    Grant(GrantArgs),
    /// Commission: end a disclosure grant now.
    Revoke {
        /// The grant's id (from 'grant' or 'grants').
        grant_id: String,
    },
    /// Commission: the disclosure grants of a case, active, expired and revoked.
    Grants {
        /// The case reference.
        case_reference: String,
    },
    /// Commission: who saw or received what of the child, from the gateway's ledger.
    Disclosures(DisclosuresArgs),
    /// School or residential institution: ask the commission about a concern without naming the
    /// child or the family.
    Consult(ConsultArgs),
    /// Commission: answer a consultation (once).
    #[command(name = "answer-consultation")]
    AnswerConsultation(AnswerConsultationArgs),
    /// Open deadlines of your agency (a commission: its district's), or yours with --mine.
    Deadlines {
        /// Only the deadlines you are responsible for.
        #[arg(long)]
        mine: bool,
        /// Only this case's.
        #[arg(long = "case", value_name = "CASE")]
        case_reference: Option<String>,
        /// Only these states, comma separated [default: the open ones].
        #[arg(long = "state", value_enum, value_delimiter = ',', value_name = "LIST")]
        states: Vec<DeadlineStateArg>,
    },
    /// Commission: the district's deadlines counted per kind and state.
    Overview,
    /// Overdue deadlines, most late first.
    Overdue,
    /// Print deadline alerts as they are raised, until Ctrl-C.
    Watch {
        /// Only the alerts of your own deadlines.
        #[arg(long)]
        mine: bool,
    },
    /// School: concerns to the safeguarding lead, phone and written reports, allegations against
    /// staff, the lead's absences.
    Safeguarding {
        #[command(subcommand)]
        command: safeguarding_cli::SafeguardingCommand,
    },
    /// Residential institution: an incident's severity, its referral to the commission and the
    /// police in one action, an injured child to health, closing; the commission's protection
    /// instructions received, acknowledged and reported carried out.
    Residential {
        #[command(subcommand)]
        command: residential_cli::ResidentialCommand,
    },
    /// Commission: send a protection instruction from a case to a residential institution, after
    /// weighing confidentiality (--weighed-because).
    Instruct(residential_cli::InstructArgs),
    /// Police: investigations with their cases, lifecycle changes, linking the cases of an
    /// incident, preventive registration of offending children.
    Police {
        #[command(subcommand)]
        command: police_cli::PoliceCommand,
    },
    /// School: refer a pupil to an NGO, follow the referrals, the safety team's meetings, the
    /// monthly log J (export, send to the commission).
    Referrals {
        #[command(subcommand)]
        command: services_cli::ReferralsCommand,
    },
    /// NGO: the services on referrals and support-plan rows, each step reported back.
    Services {
        #[command(subcommand)]
        command: services_cli::ServicesCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chain of the gateway's ledger offline, from the gateway's store; exits
    /// non-zero and names the first changed, missing or cut-off entry when it does not hold.
    Verify,
}

#[derive(Debug, Clone, Args)]
pub struct SubmitKArgs {
    /// Read form K from a JSON or TOML file (see crates/hub/k-example.toml).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["demo", "k_fields"])]
    pub file: Option<PathBuf>,
    /// Submit a complete sample form K (an invented pupil).
    #[arg(long, conflicts_with = "k_fields")]
    pub demo: bool,
    /// The commission to send to [default: the commission of your district].
    #[arg(long, value_name = "AGENCY")]
    pub to: Option<String>,
    /// Submitting again with the same key returns the same message [default: a new UUID].
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub k: KFlags,
    #[command(flatten)]
    pub circumstances: CircumstanceFlags,
}

#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("outcome").required(true).args(["open_case", "no_further_action"])))]
pub struct DecideArgs {
    /// The help request's message id (from 'inbox').
    pub message_id: String,
    /// Open a case and appoint a curator.
    #[arg(long, requires = "curator")]
    pub open_case: bool,
    /// The curator's user id (see 'staff --role commission_curator').
    #[arg(long, value_name = "USER", requires = "open_case")]
    pub curator: Option<String>,
    /// Record that no further action is needed.
    #[arg(long, requires = "reason")]
    pub no_further_action: bool,
    /// Why no further action is needed.
    #[arg(long, value_name = "TEXT", requires = "no_further_action")]
    pub reason: Option<String>,
    /// Deciding again with the same key returns the same decision [default: a new UUID].
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

/// A command used the wrong way: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn role_arg(s: &str) -> Result<Role, String> {
    parse_role(s).ok_or_else(|| {
        let roles: Vec<String> = (1..)
            .map_while(|i| Role::try_from(i).ok())
            .map(referral_core::directory::role_name)
            .collect();
        format!("unknown role; one of: {}", roles.join(", "))
    })
}

fn form_arg(s: &str) -> Result<FormKind, String> {
    FormKind::from_str_name(&format!("FORM_KIND_{}", s.to_ascii_uppercase()))
        .filter(|k| *k != FormKind::Unspecified)
        .ok_or_else(|| {
            let kinds: Vec<String> = (1..)
                .map_while(|i| FormKind::try_from(i).ok())
                .map(|k| output::enum_name(k.as_str_name(), "FORM_KIND_"))
                .collect();
            format!("unknown form kind; one of: {}", kinds.join(", "))
        })
}

/// Runs a parsed command line to completion.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(dispatch(cli))
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let format = if cli.json {
        Format::Json
    } else {
        Format::Human
    };
    let settings = Settings::load(Overrides {
        config_file: cli.config.clone(),
        data_dir: cli.data_dir.clone(),
    })?;
    let as_user = cli.as_user.as_deref();
    let no_as = |command: &str| -> anyhow::Result<()> {
        match as_user {
            Some(_) => Err(UsageError(format!("--as does not apply to '{command}'")).into()),
            None => Ok(()),
        }
    };
    let staff = || cli::Staff::connect(&settings, as_user, format);
    match cli.command {
        Command::Up => {
            no_as("up")?;
            launcher::up(&settings, format).await
        }
        Command::Gateway => {
            no_as("gateway")?;
            launcher::gateway(&settings).await
        }
        Command::Agency { id, listen } => {
            no_as("agency")?;
            launcher::agency(&settings, &id, listen).await
        }
        Command::Audit {
            command: AuditCommand::Verify,
        } => {
            no_as("audit verify")?;
            audit::run(&settings.config.storage(), format).await
        }
        Command::Login {
            agency,
            user,
            token,
        } => {
            no_as("login")?;
            cli::login(&settings, &agency, &user, token, format)
        }
        Command::Logout => {
            no_as("logout")?;
            cli::logout(&settings)
        }
        Command::Whoami => staff().await?.whoami().await,
        Command::Staff { role } => staff().await?.staff(role).await,
        Command::SubmitK(args) => staff().await?.submit_k(*args).await,
        Command::Inbox { form } => staff().await?.inbox(form).await,
        Command::Show { message_id } => staff().await?.show(message_id).await,
        Command::Decide(args) => staff().await?.decide(args).await,
        Command::Sent { form } => staff().await?.sent(form).await,
        Command::SentStatus { message_id } => staff().await?.sent_status(message_id).await,
        Command::Cases { mine, all } => staff().await?.cases(mine, all).await,
        Command::Case {
            case_reference,
            break_the_glass,
        } => staff().await?.case(case_reference, break_the_glass).await,
        Command::Contact(args) => staff().await?.contact(args).await,
        Command::Upload(args) => staff().await?.upload(args).await,
        Command::Download(args) => staff().await?.download(args).await,
        Command::RequestInfo(args) => staff().await?.request_info(args).await,
        Command::FileL(args) => staff().await?.file_l(args).await,
        Command::FileM(args) => staff().await?.file_m(args).await,
        Command::Review(args) => staff().await?.review(args).await,
        Command::Close(args) => staff().await?.close(args).await,
        Command::Reopen(args) => staff().await?.reopen(args).await,
        Command::AnswerInfo(args) => staff().await?.answer_info(args).await,
        Command::Progress(args) => staff().await?.progress(args).await,
        Command::ReadCase(args) => staff().await?.read_case(args).await,
        Command::Grant(args) => staff().await?.grant(args).await,
        Command::Revoke { grant_id } => staff().await?.revoke(grant_id).await,
        Command::Grants { case_reference } => staff().await?.grants(case_reference).await,
        Command::Disclosures(args) => staff().await?.disclosures(args).await,
        Command::Consult(args) => staff().await?.consult(args).await,
        Command::AnswerConsultation(args) => staff().await?.answer_consultation(args).await,
        Command::Deadlines {
            mine,
            case_reference,
            states,
        } => staff().await?.deadlines(mine, case_reference, states).await,
        Command::Overview => staff().await?.overview().await,
        Command::Overdue => staff().await?.overdue().await,
        Command::Watch { mine } => staff().await?.watch(mine).await,
        Command::Safeguarding { command } => staff().await?.safeguarding(command).await,
        Command::Residential { command } => staff().await?.residential(command).await,
        Command::Instruct(args) => staff().await?.instruct(args).await,
        Command::Police { command } => staff().await?.police(command).await,
        Command::Referrals { command } => staff().await?.referrals(command).await,
        Command::Services { command } => staff().await?.services(command).await,
    }
}

/// Prints a failure as one line on stderr and chooses the exit code: 2 for bad usage, 1 for
/// everything else.
pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", error_line(&err));
            if err.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// An error and its causes on one line, separated by ": ". A cause whose text its parent already
/// repeats (`cannot listen on …: Address in use` over `Address in use`) is not repeated.
pub fn error_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    output::one_line(&line)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("referral-hub").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_go_anywhere() {
        let cli = parse(&[
            "inbox",
            "--data-dir",
            "/tmp/x",
            "--json",
            "--as",
            "commission/secretary",
        ])
        .unwrap();
        assert_eq!(
            cli.data_dir.as_deref(),
            Some(std::path::Path::new("/tmp/x"))
        );
        assert!(cli.json);
        assert_eq!(cli.as_user.as_deref(), Some("commission/secretary"));
    }

    #[test]
    fn decide_needs_exactly_one_complete_outcome() {
        let id = "0193a3c4-0000-7000-8000-000000000000";
        let ok = parse(&["decide", id, "--open-case", "--curator", "curator-1"]).unwrap();
        let Command::Decide(args) = ok.command else {
            panic!("not decide")
        };
        assert!(args.open_case && args.curator.as_deref() == Some("curator-1"));
        assert!(parse(&["decide", id, "--no-further-action", "--reason", "resolved"]).is_ok());
        for bad in [
            &["decide", id][..],
            &["decide", id, "--open-case"],
            &["decide", id, "--no-further-action"],
            &[
                "decide",
                id,
                "--open-case",
                "--curator",
                "c",
                "--no-further-action",
                "--reason",
                "r",
            ],
            &["decide", id, "--curator", "c"],
        ] {
            assert_eq!(parse(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn submit_k_takes_one_source() {
        assert!(parse(&["submit-k", "--demo"]).is_ok());
        assert!(parse(&["submit-k", "--file", "k.toml"]).is_ok());
        assert!(parse(&["submit-k", "--child-name", "Әлия"]).is_ok());
        for bad in [
            &["submit-k", "--demo", "--file", "k.toml"][..],
            &["submit-k", "--demo", "--child-name", "Әлия"],
            &["submit-k", "--file", "k.toml", "--problem", "x"],
        ] {
            assert_eq!(parse(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn roles_and_form_kinds_are_checked_when_parsing() {
        let cli = parse(&["staff", "--role", "commission_curator"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Staff {
                role: Some(Role::CommissionCurator)
            }
        ));
        let cli = parse(&["inbox", "--form", "help_request"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Inbox {
                form: Some(FormKind::HelpRequest)
            }
        ));
        let err = parse(&["staff", "--role", "janitor"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("commission_curator"), "{err}");
        assert_eq!(parse(&["inbox", "--form", "k"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn case_commands_check_versions_lists_and_dates_when_parsing() {
        let case = "KTIZhK-2026-000001";
        let cli = parse(&[
            "review",
            case,
            "--base-version",
            "4",
            "--file",
            "r.toml",
            "--agencies",
            "ngo-1,school-1",
        ])
        .unwrap();
        let Command::Review(args) = cli.command else {
            panic!("not review")
        };
        assert_eq!(args.target.base_version, 4);
        assert_eq!(args.agencies, ["ngo-1", "school-1"]);
        assert!(args.key.idempotency_key.is_none());

        let cli = parse(&[
            "close",
            case,
            "--base-version",
            "5",
            "--criteria",
            "risk_reduced,situation_stable",
            "--told",
            "phone number given",
        ])
        .unwrap();
        let Command::Close(args) = cli.command else {
            panic!("not close")
        };
        assert_eq!(
            args.criteria,
            [
                form_case::ClosureArg::RiskReduced,
                form_case::ClosureArg::SituationStable
            ]
        );

        let cli = parse(&[
            "request-info",
            case,
            "--base-version",
            "1",
            "--to",
            "health-1",
            "--questions",
            "?",
            "--answer-by",
            "+7d",
        ])
        .unwrap();
        let Command::RequestInfo(args) = cli.command else {
            panic!("not request-info")
        };
        assert_eq!(args.answer_by, Some(dates::DateSpec::FromToday(7)));

        let cli = parse(&[
            "deadlines",
            "--mine",
            "--case",
            case,
            "--state",
            "overdue,escalated",
        ])
        .unwrap();
        let Command::Deadlines {
            mine,
            case_reference,
            states,
        } = cli.command
        else {
            panic!("not deadlines")
        };
        assert!(mine && case_reference.as_deref() == Some(case));
        assert_eq!(
            states,
            [DeadlineStateArg::Overdue, DeadlineStateArg::Escalated]
        );

        for bad in [
            &[
                "file-l",
                case,
                "--base-version",
                "0",
                "--file",
                "l.toml",
                "--risk",
                "low",
            ][..],
            &["file-l", case, "--file", "l.toml", "--risk", "low"],
            &[
                "file-l",
                case,
                "--base-version",
                "2",
                "--file",
                "l.toml",
                "--risk",
                "extreme",
            ],
            &["close", case, "--base-version", "5", "--told", "x"],
            &[
                "close",
                case,
                "--base-version",
                "5",
                "--criteria",
                "happy",
                "--told",
                "x",
            ],
            &[
                "contact",
                case,
                "--base-version",
                "2",
                "--with",
                "x",
                "--method",
                "fax",
                "--summary",
                "s",
            ],
            &[
                "contact",
                case,
                "--base-version",
                "2",
                "--with",
                "x",
                "--method",
                "phone",
                "--summary",
                "s",
                "--date",
                "01.03.2026",
            ],
            &["progress", "m-1", "--state", "done"],
            &["deadlines", "--state", "late"],
            &["download", case, "doc-1"],
        ] {
            assert_eq!(parse(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn error_lines_do_not_repeat_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address in use");
        let err = anyhow::Error::new(io)
            .context("cannot listen on 127.0.0.1:7401: Address in use")
            .context("cannot start commission");
        assert_eq!(
            error_line(&err),
            "cannot start commission: cannot listen on 127.0.0.1:7401: Address in use"
        );
        let err = anyhow::anyhow!("line one\nline two").context("outer");
        assert_eq!(error_line(&err), "outer: line one line two");
    }

    #[test]
    fn usage_errors_exit_with_2_and_failures_with_1() {
        assert_eq!(
            exit_code(Err(UsageError("bad".into()).into())),
            ExitCode::from(2)
        );
        assert_eq!(exit_code(Err(anyhow::anyhow!("failed"))), ExitCode::FAILURE);
        assert_eq!(exit_code(Ok(())), ExitCode::SUCCESS);
    }
}
