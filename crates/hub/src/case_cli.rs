//! The case file from the command line: the commission's curators, secretary and chair list and
//! read cases and change them (`referral.v1.CaseFiles` on the commission's endpoint), and the
//! partner agencies answer information requests and report progress on their action rows
//! (`AgencyStaff`).
//!
//! Every change names the version it is based on (`--base-version`, shown by `case`); a stale
//! one changes nothing and says which version is current. Changes that send messages through the
//! gateway take an idempotency key, a new UUID unless `--idempotency-key` is given, printed so
//! that the command can be repeated safely.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};
use clap::Args;
use jiff::{Timestamp, civil::Date};
use referral_core::validate::to_calendar_date;
use referral_proto::v1::{
    AnswerInformationRequestRequest, CaseChange, CloseCaseRequest, Contact,
    DownloadDocumentRequest, FileAssessmentRequest, FileSupportPlanRequest, GetCaseRequest,
    ListCasesRequest, PurposeOfUse, RecordContactRequest, RecordReviewRequest, ReopenCaseRequest,
    ReportActionProgressRequest, RequestInformationRequest, UploadDocumentChunk,
    UploadDocumentMetadata, upload_document_chunk::Part,
};
use serde_json::json;
use tonic::{Code, Status};

use crate::{
    case_view,
    cli::Staff,
    dates::DateSpec,
    form_case::{
        AssessmentFile, ClosureArg, ContactMethodArg, ProgressArg, ReviewFile, RiskArg,
        SupportPlanFile,
    },
    output::{Format, Table, local_time, print_json},
};

/// The largest document the commission keeps (10 MiB).
pub const MAX_DOCUMENT_BYTES: u64 = 10 * 1024 * 1024;
/// The size of an upload's data chunks: well under the service's 1 MiB message limit.
pub const UPLOAD_CHUNK_BYTES: usize = 512 * 1024;

/// The case a change is about, and the version it is based on.
#[derive(Debug, Clone, Args)]
pub struct CaseTarget {
    /// The case reference, e.g. KTIZhK-2026-000001 (see 'cases').
    pub case_reference: String,
    /// The case version the change is based on: the version 'case' shows.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub base_version: u64,
}

/// The idempotency key of a change that sends a message.
#[derive(Debug, Clone, Default, Args)]
pub struct KeyArg {
    /// Repeating the command with the same key never sends twice [default: a new UUID].
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

impl KeyArg {
    /// The key, and whether it was made up here (and must be printed).
    pub(crate) fn key(&self) -> (String, bool) {
        match &self.idempotency_key {
            Some(key) => (key.clone(), false),
            None => (uuid::Uuid::new_v4().to_string(), true),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ContactArgs {
    #[command(flatten)]
    pub target: CaseTarget,
    /// With whom: the mother, the class teacher, the NGO's psychologist...
    #[arg(long = "with", value_name = "WHOM")]
    pub with_whom: String,
    /// How the contact took place.
    #[arg(long, value_enum)]
    pub method: ContactMethodArg,
    /// What was said or agreed.
    #[arg(long, value_name = "TEXT")]
    pub summary: String,
    /// When: YYYY-MM-DD, "today" or "-3d" [default: today].
    #[arg(long, value_name = "DATE")]
    pub date: Option<DateSpec>,
    /// Who from the commission made the contact [default: you].
    #[arg(long, value_name = "NAME")]
    pub by: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct UploadArgs {
    /// The case reference.
    pub case_reference: String,
    /// A PDF, PNG or JPEG file of at most 10 MiB (the type is read from the content).
    pub file: PathBuf,
    /// What the document is: "Court order", "School letter"...
    #[arg(long)]
    pub title: String,
}

#[derive(Debug, Clone, Args)]
pub struct DownloadArgs {
    /// The case reference.
    pub case_reference: String,
    /// The document's id (see 'case').
    pub document_id: String,
    /// Where to write the document ("-" for standard output).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Replace the file when it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RequestInfoArgs {
    #[command(flatten)]
    pub target: CaseTarget,
    /// The agency that knows the child: a school, health facility, police unit or NGO.
    #[arg(long, value_name = "AGENCY")]
    pub to: String,
    /// What the curator needs to know.
    #[arg(long, value_name = "TEXT")]
    pub questions: String,
    /// Answer by this date: YYYY-MM-DD or "+7d".
    #[arg(long, value_name = "DATE")]
    pub answer_by: Option<DateSpec>,
    #[command(flatten)]
    pub key: KeyArg,
}

#[derive(Debug, Clone, Args)]
pub struct FileLArgs {
    #[command(flatten)]
    pub target: CaseTarget,
    /// Form L as TOML or JSON (see crates/hub/examples/l-example.toml).
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
    /// The level of risk to the child the assessment found.
    #[arg(long, value_enum)]
    pub risk: RiskArg,
}

#[derive(Debug, Clone, Args)]
pub struct FileMArgs {
    #[command(flatten)]
    pub target: CaseTarget,
    /// Form M as TOML or JSON (see crates/hub/examples/m-example.toml).
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
    /// The first review, when fixed already: YYYY-MM-DD or "+90d" [default: the configured period].
    #[arg(long, value_name = "DATE")]
    pub first_review: Option<DateSpec>,
    #[command(flatten)]
    pub key: KeyArg,
}

#[derive(Debug, Clone, Args)]
pub struct ReviewArgs {
    #[command(flatten)]
    pub target: CaseTarget,
    /// The meeting as TOML or JSON (see crates/hub/examples/review-example.toml).
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
    /// The agencies whose staff took part, comma separated; each receives the minutes.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub agencies: Vec<String>,
    #[command(flatten)]
    pub key: KeyArg,
}

#[derive(Debug, Clone, Args)]
pub struct CloseArgs {
    #[command(flatten)]
    pub target: CaseTarget,
    /// Why the case can close, comma separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        value_name = "LIST",
        required = true
    )]
    pub criteria: Vec<ClosureArg>,
    /// How the family was told it can ask for help again.
    #[arg(long, value_name = "TEXT")]
    pub told: String,
    /// A note for the file.
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ReopenArgs {
    #[command(flatten)]
    pub target: CaseTarget,
    /// Why the case is opened again.
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
}

#[derive(Debug, Clone, Args)]
pub struct AnswerInfoArgs {
    /// The information request's message id (from 'inbox').
    pub message_id: String,
    /// The answer for the curator.
    #[arg(long, value_name = "TEXT")]
    pub answer: String,
    /// Your position, e.g. "учаскелік дәрігер".
    #[arg(long, value_name = "TEXT")]
    pub position: Option<String>,
    #[command(flatten)]
    pub key: KeyArg,
}

#[derive(Debug, Clone, Args)]
pub struct ProgressArgs {
    /// The action assignment's message id (from 'inbox').
    pub message_id: String,
    /// Where the action is.
    #[arg(long, value_enum)]
    pub state: ProgressArg,
    /// What was done, or why it cannot be (required for cannot_complete).
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
    #[command(flatten)]
    pub key: KeyArg,
}

/// The version a stale change was refused at: "case changed: current version N".
pub fn current_version(message: &str) -> Option<u64> {
    message
        .rsplit_once("current version ")
        .and_then(|(_, n)| n.trim().parse().ok())
}

impl Staff {
    fn today(&self) -> (Date, Timestamp) {
        let now = Timestamp::now();
        (now.to_zoned(self.tz()).date(), now)
    }

    /// One line for a refused change of case `case_reference`: a stale base version says what
    /// is current and how to go on.
    pub(crate) fn fail_case(
        &self,
        status: Status,
        what: &str,
        case_reference: &str,
    ) -> anyhow::Error {
        match status.code() {
            Code::Aborted => match current_version(status.message()) {
                Some(current) => anyhow!(
                    "case {case_reference} changed meanwhile (now version {current}); nothing was \
                     saved — re-read it with '{} case {case_reference}' and repeat the command \
                     with --base-version {current} if it still applies",
                    self.hint
                ),
                None => self.fail(status, what),
            },
            Code::Unimplemented => anyhow!(
                "case files are kept by the commission; {} has none — act as commission staff \
                 (e.g. --as commission/curator-1)",
                self.agency
            ),
            _ => self.fail(status, what),
        }
    }

    /// Prints the outcome of a change.
    fn changed(&self, done: &str, change: &CaseChange, key: Option<(&str, bool)>) {
        match self.format {
            Format::Json => {
                let mut value = json!({
                    "case_reference": change.case_reference,
                    "version": change.version,
                    "stage": case_view::stage_name(change.stage),
                });
                if let Some((key, _)) = key {
                    value["idempotency_key"] = json!(key);
                }
                print_json(&value);
            }
            Format::Human => {
                outln!("{done}");
                outln!(
                    "case {} is now at version {}, stage {} (the next change takes --base-version {})",
                    change.case_reference,
                    change.version,
                    case_view::stage_text(change.stage),
                    change.version
                );
                if let Some((key, true)) = key {
                    print_key_hint(key);
                }
            }
        }
    }

    /// `cases [--mine] [--all]`.
    pub async fn cases(mut self, mine: bool, all: bool) -> anyhow::Result<()> {
        let reply = self
            .case_files
            .list_cases(self.request(ListCasesRequest {
                curator_user_id: if mine {
                    self.user.clone()
                } else {
                    String::new()
                },
                include_closed: all,
            }))
            .await
            .map_err(|s| self.fail_case(s, "request", ""))?
            .into_inner();
        let tz = self.tz();
        match self.format {
            Format::Json => print_json(&json!(
                reply
                    .cases
                    .iter()
                    .map(|c| json!({
                        "case_reference": c.case_reference,
                        "stage": case_view::stage_name(c.stage),
                        "version": c.version,
                        "cycle": c.cycle,
                        "risk_level": case_view::risk_name(c.risk_level),
                        "curator_user_id": c.curator_user_id,
                        "curator_name": c.curator_name,
                        "opened_at": crate::output::json_time(c.opened_at.as_ref()),
                        "child_full_name": c.child_full_name,
                    }))
                    .collect::<Vec<_>>()
            )),
            Format::Human => {
                if reply.cases.is_empty() {
                    let which = if all { "" } else { "open " };
                    outln!("no {which}cases{}", if mine { " of yours" } else { "" });
                    return Ok(());
                }
                let mut table = Table::new([
                    "CASE", "STAGE", "VERSION", "CYCLE", "RISK", "CURATOR", "OPENED", "CHILD",
                ]);
                for c in &reply.cases {
                    table.row([
                        c.case_reference.clone(),
                        case_view::stage_text(c.stage),
                        c.version.to_string(),
                        c.cycle.to_string(),
                        if c.risk_level == 0 {
                            String::new()
                        } else {
                            case_view::risk_name(c.risk_level)
                        },
                        c.curator_user_id.clone(),
                        local_time(c.opened_at.as_ref(), &tz),
                        c.child_full_name.clone(),
                    ]);
                }
                out!("{}", table.render());
                outln!("read one with: {} case <case>", self.hint);
            }
        }
        Ok(())
    }

    /// `case <ref> [--break-the-glass <reason>]`. The commission's file as the gateway's policy
    /// lets the caller see it: the whole file for the curator, the register for the secretary
    /// and the chair, the whole file for the chair breaking the glass.
    pub async fn case(
        mut self,
        case_reference: String,
        break_the_glass: Option<String>,
    ) -> anyhow::Result<()> {
        let (purpose, reason) = match &break_the_glass {
            Some(reason) => (PurposeOfUse::BreakTheGlass, reason.clone()),
            None => (PurposeOfUse::Unspecified, String::new()),
        };
        let file = self
            .case_files
            .get_case(self.request(GetCaseRequest {
                case_reference: case_reference.clone(),
                purpose_of_use: purpose as i32,
                reason,
            }))
            .await
            .map_err(|s| {
                let what = if break_the_glass.is_some() {
                    "break-the-glass read"
                } else {
                    "case reference"
                };
                self.fail_case(s, what, &case_reference)
            })?
            .into_inner();
        match self.format {
            Format::Json => {
                let mut value = case_view::case_json(&file);
                value["break_the_glass"] = json!(break_the_glass.is_some());
                print_json(&value);
            }
            Format::Human => {
                if break_the_glass.is_some() {
                    outln!(
                        "Break the glass: this read is recorded in the gateway's ledger with your \
                         reason; when it shows you more than you see otherwise, the case's \
                         curator is alerted.\n"
                    );
                }
                out!("{}", case_view::case_text(&file, &self.tz(), &self.hint));
            }
        }
        Ok(())
    }

    /// The caller's name, for the contact log.
    fn own_name(&self) -> String {
        self.directory
            .as_ref()
            .and_then(|d| d.user(&self.agency, &self.user))
            .map_or_else(|| self.user.clone(), |s| s.full_name.clone())
    }

    /// `contact <ref> --base-version N --with … --method … --summary … [--date …]`.
    pub async fn contact(mut self, args: ContactArgs) -> anyhow::Result<()> {
        let (today, _) = self.today();
        let reference = args.target.case_reference.clone();
        let contact = Contact {
            date: Some(to_calendar_date(
                args.date.unwrap_or(DateSpec::TODAY).resolve(today),
            )),
            made_by: args.by.clone().unwrap_or_else(|| self.own_name()),
            with_whom: args.with_whom,
            method: args.method.to_proto() as i32,
            summary: args.summary,
        };
        let change = self
            .case_files
            .record_contact(self.request(RecordContactRequest {
                case_reference: reference.clone(),
                base_version: args.target.base_version,
                contact: Some(contact),
            }))
            .await
            .map_err(|s| self.fail_case(s, "contact", &reference))?
            .into_inner();
        self.changed("contact recorded", &change, None);
        Ok(())
    }

    /// `upload <ref> <file> --title …`: streamed in chunks, the metadata first.
    pub async fn upload(mut self, args: UploadArgs) -> anyhow::Result<()> {
        let path = &args.file;
        let size = std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        if size > MAX_DOCUMENT_BYTES {
            anyhow::bail!(
                "{} is {size} bytes; a document may have at most {MAX_DOCUMENT_BYTES} (10 MiB)",
                path.display()
            );
        }
        if size == 0 {
            anyhow::bail!("{} is empty", path.display());
        }
        let content =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut chunks = vec![UploadDocumentChunk {
            part: Some(Part::Metadata(UploadDocumentMetadata {
                case_reference: args.case_reference.clone(),
                title: args.title.clone(),
                file_name,
            })),
        }];
        chunks.extend(
            content
                .chunks(UPLOAD_CHUNK_BYTES)
                .map(|c| UploadDocumentChunk {
                    part: Some(Part::Data(c.to_vec())),
                }),
        );
        let info = self
            .case_files
            .upload_document(self.request(tokio_stream::iter(chunks)))
            .await
            .map_err(|s| self.fail_case(s, "document", &args.case_reference))?
            .into_inner();
        match self.format {
            Format::Json => print_json(&case_view::document_json(&info)),
            Format::Human => {
                outln!(
                    "document {} added to case {}: {}, {} bytes, sha256 {}",
                    info.document_id,
                    args.case_reference,
                    info.content_type,
                    info.size_bytes,
                    info.sha256
                );
                outln!(
                    "the case's version has moved on: '{} case {}' shows it",
                    self.hint,
                    args.case_reference
                );
            }
        }
        Ok(())
    }

    /// `download <ref> <document-id> -o <file>`: written to a temporary file beside the target,
    /// checked against the size and SHA-256 the service gives, then moved into place.
    pub async fn download(mut self, args: DownloadArgs) -> anyhow::Result<()> {
        let to_stdout = args.output == Path::new("-");
        if !to_stdout && !args.force && args.output.exists() {
            return Err(crate::UsageError(format!(
                "{} exists; add --force to replace it",
                args.output.display()
            ))
            .into());
        }
        let mut stream = self
            .case_files
            .download_document(self.request(DownloadDocumentRequest {
                case_reference: args.case_reference.clone(),
                document_id: args.document_id.clone(),
            }))
            .await
            .map_err(|s| self.fail_case(s, "document id", &args.case_reference))?
            .into_inner();
        let mut info = None;
        let mut content = Vec::new();
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| self.fail_case(s, "document id", &args.case_reference))?
        {
            if info.is_none() {
                info = chunk.info;
            }
            if content.len() as u64 + chunk.data.len() as u64 > MAX_DOCUMENT_BYTES {
                anyhow::bail!("the document is larger than the 10 MiB a document may have");
            }
            content.extend_from_slice(&chunk.data);
        }
        let info = info.ok_or_else(|| anyhow!("the service sent no document information"))?;
        let sha = {
            use sha2::Digest as _;
            hex::encode(sha2::Sha256::digest(&content))
        };
        if content.len() as u64 != info.size_bytes || !sha.eq_ignore_ascii_case(&info.sha256) {
            anyhow::bail!(
                "the document arrived damaged (size or SHA-256 differ from the case file's); \
                 nothing was written — try again"
            );
        }
        if to_stdout {
            std::io::stdout()
                .write_all(&content)
                .context("cannot write to standard output")?;
            return Ok(());
        }
        write_atomically(&args.output, &content)?;
        match self.format {
            Format::Json => {
                let mut value = case_view::document_json(&info);
                value["written_to"] = json!(args.output.display().to_string());
                print_json(&value);
            }
            Format::Human => outln!(
                "wrote {} ({}, {} bytes, sha256 checked) to {}",
                info.title,
                info.content_type,
                info.size_bytes,
                args.output.display()
            ),
        }
        Ok(())
    }

    /// `request-info <ref> --base-version N --to <agency> --questions … [--answer-by …]`.
    pub async fn request_info(mut self, args: RequestInfoArgs) -> anyhow::Result<()> {
        let (today, _) = self.today();
        let (key, generated) = args.key.key();
        let reference = args.target.case_reference.clone();
        let change = self
            .case_files
            .request_information(self.request(RequestInformationRequest {
                case_reference: reference.clone(),
                base_version: args.target.base_version,
                idempotency_key: key.clone(),
                recipient_agency_id: args.to.clone(),
                questions: args.questions,
                answer_by: args.answer_by.map(|d| to_calendar_date(d.resolve(today))),
            }))
            .await
            .map_err(|s| self.fail_case(s, "information request", &reference))?
            .into_inner();
        self.changed(
            &format!("information request sent to {}", args.to),
            &change,
            Some((&key, generated)),
        );
        Ok(())
    }

    /// `file-l <ref> --base-version N --file l.toml --risk …`.
    pub async fn file_l(mut self, args: FileLArgs) -> anyhow::Result<()> {
        let (today, now) = self.today();
        let l = AssessmentFile::read(&args.file)?.to_proto(today, now);
        let reference = args.target.case_reference.clone();
        let change = self
            .case_files
            .file_assessment(self.request(FileAssessmentRequest {
                case_reference: reference.clone(),
                base_version: args.target.base_version,
                assessment: Some(l),
                risk_level: args.risk.to_proto() as i32,
            }))
            .await
            .map_err(|s| self.fail_case(s, "assessment L", &reference))?
            .into_inner();
        self.changed("assessment L filed", &change, None);
        Ok(())
    }

    /// `file-m <ref> --base-version N --file m.toml [--first-review …]`.
    pub async fn file_m(mut self, args: FileMArgs) -> anyhow::Result<()> {
        let (today, now) = self.today();
        let m = SupportPlanFile::read(&args.file)?.to_proto(today, now);
        let others: Vec<String> = m
            .actions
            .iter()
            .map(|a| a.responsible_agency_id.clone())
            .filter(|a| *a != self.agency)
            .fold(Vec::new(), |mut seen, a| {
                if !seen.contains(&a) {
                    seen.push(a);
                }
                seen
            });
        let (key, generated) = args.key.key();
        let reference = args.target.case_reference.clone();
        let change = self
            .case_files
            .file_support_plan(
                self.request(FileSupportPlanRequest {
                    case_reference: reference.clone(),
                    base_version: args.target.base_version,
                    idempotency_key: key.clone(),
                    plan: Some(m),
                    first_review_on: args
                        .first_review
                        .map(|d| to_calendar_date(d.resolve(today))),
                }),
            )
            .await
            .map_err(|s| self.fail_case(s, "support plan M", &reference))?
            .into_inner();
        let done = if others.is_empty() {
            "support plan M filed".to_owned()
        } else {
            format!(
                "support plan M filed; its rows go to {} as action assignments",
                others.join(", ")
            )
        };
        self.changed(&done, &change, Some((&key, generated)));
        Ok(())
    }

    /// `review <ref> --base-version N --file review.toml --agencies a,b`.
    pub async fn review(mut self, args: ReviewArgs) -> anyhow::Result<()> {
        let (today, _) = self.today();
        let review = ReviewFile::read(&args.file)?.to_proto(today);
        let (key, generated) = args.key.key();
        let reference = args.target.case_reference.clone();
        let change = self
            .case_files
            .record_review(self.request(RecordReviewRequest {
                case_reference: reference.clone(),
                base_version: args.target.base_version,
                idempotency_key: key.clone(),
                review: Some(review),
                participating_agency_ids: args.agencies.clone(),
            }))
            .await
            .map_err(|s| self.fail_case(s, "review", &reference))?
            .into_inner();
        let done = if args.agencies.is_empty() {
            "review recorded".to_owned()
        } else {
            format!(
                "review recorded; the minutes go to {}",
                args.agencies.join(", ")
            )
        };
        self.changed(&done, &change, Some((&key, generated)));
        Ok(())
    }

    /// `close <ref> --base-version N --criteria … --told … [--note …]`.
    pub async fn close(mut self, args: CloseArgs) -> anyhow::Result<()> {
        let reference = args.target.case_reference.clone();
        let change = self
            .case_files
            .close_case(self.request(CloseCaseRequest {
                case_reference: reference.clone(),
                base_version: args.target.base_version,
                criteria: args.criteria.iter().map(|c| c.to_proto() as i32).collect(),
                family_told_how_to_ask_again: args.told,
                note: args.note.unwrap_or_default(),
            }))
            .await
            .map_err(|s| self.fail_case(s, "closure", &reference))?
            .into_inner();
        self.changed("case closed", &change, None);
        Ok(())
    }

    /// `reopen <ref> --base-version N --reason …`.
    pub async fn reopen(mut self, args: ReopenArgs) -> anyhow::Result<()> {
        let reference = args.target.case_reference.clone();
        let change = self
            .case_files
            .reopen_case(self.request(ReopenCaseRequest {
                case_reference: reference.clone(),
                base_version: args.target.base_version,
                reason: args.reason,
            }))
            .await
            .map_err(|s| self.fail_case(s, "reopening", &reference))?
            .into_inner();
        self.changed("case reopened, every stage starts again", &change, None);
        Ok(())
    }

    /// `answer-info <message-id> --answer … [--position …]`.
    pub async fn answer_info(mut self, args: AnswerInfoArgs) -> anyhow::Result<()> {
        let (key, generated) = args.key.key();
        let reply = self
            .client
            .answer_information_request(self.request(AnswerInformationRequestRequest {
                message_id: args.message_id.clone(),
                idempotency_key: key.clone(),
                answer: args.answer,
                responder_position: args.position.unwrap_or_default(),
            }))
            .await
            .map_err(|s| self.fail(s, "answer"))?
            .into_inner();
        match self.format {
            Format::Json => print_json(&json!({
                "response_message_id": reply.response_message_id,
                "idempotency_key": key,
            })),
            Format::Human => {
                outln!(
                    "answer sent to the commission as message {}",
                    reply.response_message_id
                );
                if generated {
                    print_key_hint(&key);
                }
            }
        }
        Ok(())
    }

    /// `progress <message-id> --state … [--note …]`.
    pub async fn progress(mut self, args: ProgressArgs) -> anyhow::Result<()> {
        let (key, generated) = args.key.key();
        let state = args.state.to_proto();
        let reply = self
            .client
            .report_action_progress(self.request(ReportActionProgressRequest {
                message_id: args.message_id.clone(),
                idempotency_key: key.clone(),
                state: state as i32,
                note: args.note.unwrap_or_default(),
            }))
            .await
            .map_err(|s| self.fail(s, "progress report"))?
            .into_inner();
        match self.format {
            Format::Json => print_json(&json!({
                "progress_message_id": reply.progress_message_id,
                "state": case_view::progress_name(state as i32),
                "idempotency_key": key,
            })),
            Format::Human => {
                outln!(
                    "reported {} to the commission as message {}",
                    case_view::progress_text(state as i32),
                    reply.progress_message_id
                );
                if generated {
                    print_key_hint(&key);
                }
            }
        }
        Ok(())
    }
}

pub(crate) fn print_key_hint(key: &str) {
    outln!(
        "idempotency key {key}: to retry safely, repeat the command with --idempotency-key {key}"
    );
}

/// Writes `content` to `path` through a temporary file in the same directory, so that a
/// failure never leaves half a document.
fn write_atomically(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.part",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut out = std::fs::File::create(&tmp)?;
        out.write_all(content)?;
        out.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_version_is_read_from_a_stale_answer() {
        assert_eq!(current_version("case changed: current version 7"), Some(7));
        assert_eq!(current_version("something else"), None);
    }

    #[test]
    fn documents_are_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("order.pdf");
        write_atomically(&path, b"%PDF-1.7 test").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"%PDF-1.7 test");
        write_atomically(&path, b"%PDF-1.7 again").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"%PDF-1.7 again");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn upload_chunks_stay_under_the_message_limit() {
        const { assert!(UPLOAD_CHUNK_BYTES + 64 <= referral_core::server::MAX_MESSAGE_BYTES) };
        assert_eq!(
            MAX_DOCUMENT_BYTES,
            referral_commission::MAX_DOCUMENT_BYTES as u64
        );
    }
}
