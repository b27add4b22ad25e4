//! The people's CLI: log in as a staff member (development tokens), then submit form K, read the
//! inbox, show a message, decide on a help request and follow what was sent, all through the
//! agency service's staff API over TLS with a bearer token.
//!
//! Errors are one line each: the field violations of an invalid form, a refused permission, or a
//! service that cannot be reached. Children's personal data is printed only by `show`.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use jiff::{SignedDuration, Timestamp, tz::TimeZone};
use referral_core::{
    auth::DevIssuer,
    directory::{Directory, role_name},
    error::field_violations,
    pki::{ComponentIdentity, PkiPaths},
    tls::{client_tls_without_identity, install_crypto_provider},
    validate::sample_help_request,
};
use referral_proto::v1::{
    DecideHelpRequestRequest, DeliveryState, FormKind, GetMessageRequest, GetSentMessageRequest,
    ListInboxRequest, ListSentRequest, ListStaffRequest, NoFurtherAction, OpenCase, Role,
    SubmitHelpRequestRequest, WhoAmIRequest, agency_staff_client::AgencyStaffClient,
    case_files_client::CaseFilesClient, decide_help_request_request::Outcome,
};
use serde_json::json;
use tonic::{
    Code, Request, Status,
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
};

use crate::{
    DecideArgs, SubmitKArgs, UsageError, case_view,
    form_k::HelpRequestFile,
    output::{Fields, Format, Table, json_time, local_time, one_line, print_json},
    session::{self, Session},
    settings::{Settings, agency_time_zone},
    view,
};

/// How long a development token from `login` is valid.
const TOKEN_TTL: SignedDuration = SignedDuration::from_hours(8);
/// The most items a list command fetches (page after page).
pub(crate) const MAX_LIST_ITEMS: usize = 1000;
pub(crate) const PAGE_SIZE: u32 = 100;

/// Collects a paged listing: `page(token)` fetches one page and returns its items and the next
/// page's token (empty at the end). Stops at [`MAX_LIST_ITEMS`].
pub(crate) async fn all_pages<T, Fut>(mut page: impl FnMut(String) -> Fut) -> Result<Vec<T>, Status>
where
    Fut: std::future::Future<Output = Result<(Vec<T>, String), Status>>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let (more, next) = page(token).await?;
        items.extend(more);
        if next.is_empty() || items.len() >= MAX_LIST_ITEMS {
            return Ok(items);
        }
        token = next;
    }
}
/// The largest answer the CLI reads (a whole case file with several cycles).
const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;

/// `referral-hub login`.
pub fn login(
    settings: &Settings,
    agency: &str,
    user: &str,
    token: Option<String>,
    format: Format,
) -> anyhow::Result<()> {
    let (directory, _) = settings.directory()?;
    let entry = directory
        .agency(agency)
        .ok_or_else(|| unknown_agency(&directory, agency))?;
    let (token, expires_at, name, role) = match token {
        // A token from the deployment's identity provider: stored as given, in any mode.
        Some(token) => (token, None, String::new(), String::new()),
        None => {
            let minted = mint(settings, &directory, agency, user)?;
            (
                minted.token,
                Some(minted.expires_at),
                minted.name,
                minted.role,
            )
        }
    };
    let session = Session {
        agency: agency.to_owned(),
        user: user.to_owned(),
        token,
        endpoint: entry.endpoint.clone(),
        expires_at,
    };
    let file = session::path(&settings.config.data_dir);
    session.save(&file)?;
    let tz = agency_time_zone(Some(&directory), agency);
    match format {
        Format::Json => print_json(&json!({
            "agency": agency,
            "user": user,
            "full_name": name,
            "role": role,
            "endpoint": session.endpoint,
            "expires_at": expires_at.map(|t| t.to_string()),
            "session_file": file.display().to_string(),
        })),
        Format::Human => {
            let who = if name.is_empty() {
                user.to_owned()
            } else {
                format!("{user} ({name}, {role})")
            };
            let until = expires_at
                .map(|t| format!(" until {}", t.to_zoned(tz).strftime("%Y-%m-%d %H:%M %:z")))
                .unwrap_or_default();
            outln!("logged in as {who} at {agency}{until}");
            outln!("session saved in {}", file.display());
        }
    }
    Ok(())
}

/// `referral-hub logout`: forgets the session.
pub fn logout(settings: &Settings) -> anyhow::Result<()> {
    let file = session::path(&settings.config.data_dir);
    match std::fs::remove_file(&file) {
        Ok(()) => outln!("logged out"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => outln!("not logged in"),
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", file.display())),
    }
    Ok(())
}

/// A freshly minted development token.
struct Minted {
    token: String,
    expires_at: Timestamp,
    name: String,
    role: String,
}

/// Mints a development token for a user of the directory (development mode only).
fn mint(
    settings: &Settings,
    directory: &Directory,
    agency: &str,
    user: &str,
) -> anyhow::Result<Minted> {
    if !settings.development() {
        anyhow::bail!(
            "development tokens are refused in production mode; get a token from your identity \
             provider and pass it with 'login --token'"
        );
    }
    if directory.agency(agency).is_none() {
        return Err(unknown_agency(directory, agency));
    }
    let Some(staff) = directory.user(agency, user) else {
        let users: Vec<&str> = directory
            .staff_of(agency)
            .map(|s| s.user_id.as_str())
            .collect();
        return Err(UsageError(format!(
            "no user {user} at {agency}; its users: {}",
            users.join(", ")
        ))
        .into());
    };
    let jwks_dir = settings.config.jwks_dir();
    if !jwks_dir.join(format!("{agency}.jwks.json")).exists() {
        anyhow::bail!(
            "no development token key for {agency} in {} — start '{} up' first",
            jwks_dir.display(),
            settings.hint_prefix()
        );
    }
    let issuer = DevIssuer::ensure(&jwks_dir, &[agency])?;
    let now = Timestamp::now();
    let token = issuer.mint(agency, user, staff.role(), &staff.full_name, TOKEN_TTL, now)?;
    Ok(Minted {
        token,
        expires_at: now + TOKEN_TTL,
        name: staff.full_name.clone(),
        role: role_name(staff.role()),
    })
}

fn unknown_agency(directory: &Directory, agency: &str) -> anyhow::Error {
    let known: Vec<&str> = directory.agencies.iter().map(|a| a.id.as_str()).collect();
    UsageError(format!(
        "no agency {agency} in the directory; known agencies: {}",
        known.join(", ")
    ))
    .into()
}

/// A connection to one agency's staff API (and, at a commission, its case files), as one user.
pub struct Staff {
    pub(crate) client: AgencyStaffClient<Channel>,
    /// The commission's `CaseFiles` service, on the same channel; other agencies refuse it.
    pub(crate) case_files: CaseFilesClient<Channel>,
    /// The channel itself, for the other services of the agency (a school's safeguarding).
    pub(crate) channel: Channel,
    authorization: MetadataValue<Ascii>,
    pub(crate) agency: String,
    pub(crate) user: String,
    pub(crate) endpoint: String,
    pub(crate) hint: String,
    pub(crate) directory: Option<Directory>,
    pub(crate) format: Format,
}

impl Staff {
    /// Connects as `--as agency/user` (a fresh development token) or as the saved session.
    pub async fn connect(
        settings: &Settings,
        as_user: Option<&str>,
        format: Format,
    ) -> anyhow::Result<Self> {
        install_crypto_provider();
        let hint = settings.hint_prefix();
        let directory = settings.directory().ok().map(|(d, _)| d);
        let (agency, user, token, endpoint) = match as_user {
            Some(who) => {
                let (agency, user) = who.split_once('/').ok_or_else(|| {
                    UsageError(format!(
                        "--as takes AGENCY/USER, e.g. school-1/director, not {who:?}"
                    ))
                })?;
                let directory = directory
                    .as_ref()
                    .ok_or_else(|| anyhow!("cannot read the agency directory"))?;
                let minted = mint(settings, directory, agency, user)?;
                let endpoint = directory
                    .agency(agency)
                    .map(|a| a.endpoint.clone())
                    .unwrap_or_default();
                (agency.to_owned(), user.to_owned(), minted.token, endpoint)
            }
            None => {
                let file = session::path(&settings.config.data_dir);
                let session = Session::load(&file)?.ok_or_else(|| {
                    anyhow!(
                        "not logged in — run '{hint} login --agency <agency> --user <user>' first \
                         (or add --as <agency>/<user>)"
                    )
                })?;
                if session.expired(Timestamp::now()) {
                    anyhow::bail!(
                        "the session of {}/{} has expired — log in again: {hint} login --agency {} --user {}",
                        session.agency,
                        session.user,
                        session.agency,
                        session.user
                    );
                }
                (
                    session.agency,
                    session.user,
                    session.token,
                    session.endpoint,
                )
            }
        };
        let authorization: MetadataValue<Ascii> = format!("Bearer {token}")
            .parse()
            .map_err(|_| anyhow!("the session token is malformed; log in again"))?;

        let ca = PkiPaths::new(settings.config.pki_dir()).ca_cert();
        let ca_pem = std::fs::read_to_string(&ca).with_context(|| {
            format!(
                "cannot read the hub's CA certificate {} — is this the data directory '{hint} up' uses?",
                ca.display()
            )
        })?;
        let server = ComponentIdentity::agency(agency.clone())?;
        let unreachable = |cause: &dyn std::error::Error| {
            let mut detail = String::new();
            let mut source = Some(cause);
            let mut refused = false;
            while let Some(e) = source {
                let text = e.to_string();
                refused |= text.contains("Connection refused");
                detail = text;
                source = e.source();
            }
            let detail = if refused || detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", one_line(&detail))
            };
            anyhow!("cannot reach {agency} at {endpoint} — is '{hint} up' running?{detail}")
        };
        let channel = Endpoint::from_shared(endpoint.clone())
            .map_err(|_| anyhow!("the endpoint {endpoint} of {agency} is not a URL"))?
            .tls_config(client_tls_without_identity(&ca_pem, &server))
            .map_err(|e| unreachable(&e))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .map_err(|e| unreachable(&e))?;
        Ok(Self {
            client: AgencyStaffClient::new(channel.clone()),
            case_files: CaseFilesClient::new(channel.clone())
                .max_decoding_message_size(MAX_REPLY_BYTES),
            channel,
            authorization,
            agency,
            user,
            endpoint,
            hint,
            directory,
            format,
        })
    }

    pub(crate) fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        request
    }

    pub(crate) fn tz(&self) -> TimeZone {
        agency_time_zone(self.directory.as_ref(), &self.agency)
    }

    /// Today in the agency's district, by the system clock (what relative dates resolve on).
    pub(crate) fn local_today(&self) -> jiff::civil::Date {
        Timestamp::now().to_zoned(self.tz()).date()
    }

    /// Tells a person how to retry a change safely, when its idempotency key was generated
    /// (`None` when the person gave one); scripts reading JSON are not told.
    pub(crate) fn hint_key(&self, generated_key: Option<&str>) {
        if let Some(key) = generated_key.filter(|_| self.format == Format::Human) {
            crate::case_cli::print_key_hint(key);
        }
    }

    /// An agency's id with its name, when the directory knows it.
    pub(crate) fn agency_label(&self, id: &str) -> String {
        match self.directory.as_ref().and_then(|d| d.agency(id)) {
            Some(a) => format!("{id} — {}", a.name_ru),
            None => id.to_owned(),
        }
    }

    /// One line for a refused or failed call; `what` names the thing sent (`help request`).
    pub(crate) fn fail(&self, status: Status, what: &str) -> anyhow::Error {
        let message = one_line(status.message());
        match status.code() {
            Code::InvalidArgument => {
                let violations = field_violations(&status);
                if violations.is_empty() {
                    anyhow!("invalid {what}: {message}")
                } else {
                    let list: Vec<String> = violations
                        .iter()
                        .map(|v| format!("{}: {}", v.field, one_line(&v.description)))
                        .collect();
                    anyhow!("invalid {what}: {}", list.join("; "))
                }
            }
            Code::PermissionDenied => anyhow!("permission denied: {message}"),
            Code::Unauthenticated => anyhow!(
                "not authenticated as {}/{} ({message}) — log in again: {} login --agency {} --user {}",
                self.agency,
                self.user,
                self.hint,
                self.agency,
                self.user
            ),
            Code::NotFound => anyhow!("not found: {message}"),
            Code::AlreadyExists => anyhow!("already exists: {message}"),
            Code::FailedPrecondition => anyhow!("refused: {message}"),
            Code::Aborted => anyhow!("conflict: {message}"),
            Code::Unimplemented => anyhow!(
                "{} does not offer this ({message}) — is it the right agency?",
                self.agency
            ),
            Code::Unavailable if std::error::Error::source(&status).is_some() => anyhow!(
                "cannot reach {} at {} — is '{} up' running?",
                self.agency,
                self.endpoint,
                self.hint
            ),
            Code::Unavailable => anyhow!("unavailable: {message}"),
            Code::DeadlineExceeded | Code::Cancelled => {
                anyhow!("{} did not answer in time", self.agency)
            }
            Code::Internal => anyhow!(
                "internal error at {} (its log has the details)",
                self.agency
            ),
            code => anyhow!("{}: {message}", code.description()),
        }
    }

    /// `whoami`.
    pub async fn whoami(mut self) -> anyhow::Result<()> {
        let reply = self
            .client
            .who_am_i(self.request(WhoAmIRequest {}))
            .await
            .map_err(|s| self.fail(s, "request"))?
            .into_inner();
        let user = reply.user.unwrap_or_default();
        let agency = reply.agency.unwrap_or_default();
        match self.format {
            Format::Json => print_json(&json!({
                "user_id": user.user_id,
                "display_name": user.display_name,
                "role": view::role_label(user.role),
                "agency_id": agency.agency_id,
                "agency_name_kk": agency.name_kk,
                "agency_name_ru": agency.name_ru,
                "endpoint": self.endpoint,
            })),
            Format::Human => {
                let mut fields = Fields::new();
                fields
                    .add("User", &user.user_id)
                    .add("Name", &user.display_name)
                    .add("Role", view::role_label(user.role))
                    .add("Agency", &agency.agency_id)
                    .add("", &agency.name_kk)
                    .add("", &agency.name_ru)
                    .add("Endpoint", &self.endpoint);
                out!("{}", fields.render(0));
            }
        }
        Ok(())
    }

    /// `staff [--role <role>]`.
    pub async fn staff(mut self, role: Option<Role>) -> anyhow::Result<()> {
        let reply = self
            .client
            .list_staff(self.request(ListStaffRequest {
                role: role.unwrap_or(Role::Unspecified) as i32,
            }))
            .await
            .map_err(|s| self.fail(s, "request"))?
            .into_inner();
        match self.format {
            Format::Json => print_json(&json!(
                reply
                    .staff
                    .iter()
                    .map(|s| json!({
                        "user_id": s.user_id,
                        "full_name": s.full_name,
                        "role": view::role_label(s.role),
                        "contact": s.contact,
                    }))
                    .collect::<Vec<_>>()
            )),
            Format::Human => {
                let mut table = Table::new(["USER ID", "ROLE", "NAME", "CONTACT"]);
                for s in &reply.staff {
                    table.row([
                        s.user_id.clone(),
                        view::role_label(s.role),
                        s.full_name.clone(),
                        s.contact.clone(),
                    ]);
                }
                out!("{}", table.render());
            }
        }
        Ok(())
    }

    /// `submit-k`.
    pub async fn submit_k(mut self, args: SubmitKArgs) -> anyhow::Result<()> {
        let tz = self.tz();
        let now = Timestamp::now();
        let today = now.to_zoned(tz).date();
        let help_request = if args.demo {
            sample_help_request(today)
        } else if let Some(file) = &args.file {
            HelpRequestFile::read(file)?.to_proto(today, now)
        } else {
            args.k.to_file().to_proto(today, now)
        };
        let mut help_request = help_request;
        args.circumstances.apply(&mut help_request);
        let kept_from: Vec<String> = help_request
            .circumstances
            .as_ref()
            .map(|c| {
                [
                    &c.child_residence_agency_id,
                    &c.implicated_director_agency_id,
                ]
                .into_iter()
                .filter(|a| !a.is_empty())
                .cloned()
                .collect()
            })
            .unwrap_or_default();
        let (key, generated) = match args.idempotency_key {
            Some(key) => (key, false),
            None => (uuid::Uuid::new_v4().to_string(), true),
        };
        let reply = self
            .client
            .submit_help_request(self.request(SubmitHelpRequestRequest {
                idempotency_key: key.clone(),
                recipient_agency_id: args.to.clone().unwrap_or_default(),
                help_request: Some(help_request),
            }))
            .await
            .map_err(|s| self.fail(s, "help request"))?
            .into_inner();
        let state = view::state_name(reply.state);
        match self.format {
            Format::Json => print_json(&json!({
                "message_id": reply.message_id,
                "state": state,
                "idempotency_key": key,
            })),
            Format::Human => {
                let to = args.to.as_deref().unwrap_or("the district's commission");
                outln!(
                    "help request submitted to {to}: message {} ({state})",
                    reply.message_id
                );
                if !kept_from.is_empty() {
                    outln!(
                        "need to know: nothing of this report will reach {}, and nobody there can \
                         read its case",
                        kept_from.join(" or ")
                    );
                }
                if generated {
                    outln!(
                        "idempotency key {key}: to retry safely, repeat the command with --idempotency-key {key}"
                    );
                }
                outln!(
                    "follow it with: {} sent-status {}",
                    self.hint,
                    reply.message_id
                );
            }
        }
        Ok(())
    }

    /// `inbox [--form <kind>]`. Lists ids, senders and states; the forms' contents (a child's
    /// name in the summary) are left to `show`.
    pub async fn inbox(self, form: Option<FormKind>) -> anyhow::Result<()> {
        let items = all_pages(|page_token| {
            let mut client = self.client.clone();
            let request = self.request(ListInboxRequest {
                form_kind: form.unwrap_or(FormKind::Unspecified) as i32,
                page_size: PAGE_SIZE,
                page_token,
            });
            async move {
                let reply = client.list_inbox(request).await?.into_inner();
                Ok((reply.items, reply.next_page_token))
            }
        })
        .await
        .map_err(|s| self.fail(s, "request"))?;
        let tz = self.tz();
        match self.format {
            Format::Json => print_json(&json!(
                items
                    .iter()
                    .map(|i| json!({
                        "message_id": i.message_id,
                        "sender_agency_id": i.sender_agency_id,
                        "sender_name_kk": i.sender_name_kk,
                        "sender_name_ru": i.sender_name_ru,
                        "form_kind": view::form_name(i.form_kind),
                        "received_at": json_time(i.received_at.as_ref()),
                        "status": view::status_name(i.status),
                    }))
                    .collect::<Vec<_>>()
            )),
            Format::Human => {
                if items.is_empty() {
                    outln!("the inbox of {} is empty", self.agency);
                    return Ok(());
                }
                let mut table = Table::new(["MESSAGE ID", "RECEIVED", "FROM", "FORM", "STATUS"]);
                for i in &items {
                    table.row([
                        i.message_id.clone(),
                        local_time(i.received_at.as_ref(), &tz),
                        i.sender_agency_id.clone(),
                        view::form_title(i.form_kind),
                        view::status_name(i.status),
                    ]);
                }
                out!("{}", table.render());
                outln!("read one with: {} show <message-id>", self.hint);
                let has = |kind: FormKind| items.iter().any(|i| i.form_kind == kind as i32);
                if has(FormKind::InformationRequest) {
                    outln!(
                        "answer an information request with: {} answer-info <message-id> --answer \"…\"",
                        self.hint
                    );
                }
                if has(FormKind::ActionAssignment) {
                    outln!(
                        "report on an action assignment with: {} progress <message-id> --state completed",
                        self.hint
                    );
                }
                if has(FormKind::Consultation) {
                    outln!(
                        "answer a consultation with: {} answer-consultation <message-id> --advice \"…\"",
                        self.hint
                    );
                }
            }
        }
        Ok(())
    }

    /// `show <message-id>`: a received message, with its form in full.
    pub async fn show(mut self, message_id: String) -> anyhow::Result<()> {
        let reply = self
            .client
            .get_message(self.request(GetMessageRequest { message_id }))
            .await
            .map_err(|s| self.fail(s, "message id"))?
            .into_inner();
        let envelope = reply.envelope.unwrap_or_default();
        match self.format {
            Format::Json => {
                let mut value = view::envelope_json(&envelope);
                value["received_at"] = json_time(reply.received_at.as_ref());
                value["status"] = json!(view::status_name(reply.status));
                value["decision"] = reply
                    .decision
                    .as_ref()
                    .map(view::decision_json)
                    .unwrap_or(serde_json::Value::Null);
                print_json(&value);
            }
            Format::Human => {
                let tz = self.tz();
                let mut out = String::new();
                let mut fields = Fields::new();
                fields
                    .add("Message", &envelope.message_id)
                    .add("Form", view::form_title(envelope.form_kind))
                    .add("From", self.agency_label(&envelope.sender_agency_id));
                if let Some(u) = &envelope.acting_user {
                    fields.add(
                        "Sent by",
                        format!(
                            "{} ({}, {})",
                            u.display_name,
                            u.user_id,
                            view::role_label(u.role)
                        ),
                    );
                }
                fields
                    .add("Sent", local_time(envelope.created_at.as_ref(), &tz))
                    .add("Received", local_time(reply.received_at.as_ref(), &tz))
                    .add("Status", view::status_name(reply.status));
                if !envelope.case_reference.is_empty() {
                    fields.add("Case", &envelope.case_reference);
                }
                if !envelope.view_sections.is_empty() {
                    fields.add(
                        "Sections let through",
                        case_view::sections_let_through(&envelope.view_sections),
                    );
                }
                out.push_str(&fields.render(0));
                if !envelope.linked_referrals.is_empty() {
                    out.push('\n');
                    out.push_str(&view::linked_referrals_text(
                        &envelope.linked_referrals,
                        &tz,
                    ));
                }
                match envelope.payload.as_ref().and_then(|p| p.form.as_ref()) {
                    Some(referral_proto::v1::payload::Form::HelpRequest(k)) => {
                        out.push_str("\nКӨМЕК СҰРАУ ҮЛГІСІ / ЗАПРОС О ПОМОЩИ (K)\n");
                        out.push_str(&view::help_request_text(k, &tz));
                    }
                    Some(referral_proto::v1::payload::Form::HelpRequestDecision(d)) => {
                        out.push('\n');
                        out.push_str(&view::decision_text(d, &tz));
                    }
                    Some(referral_proto::v1::payload::Form::InformationRequest(r)) => {
                        out.push_str("\nАҚПАРАТ СҰРАУ / ЗАПРОС ИНФОРМАЦИИ\n");
                        out.push_str(&case_view::information_request_text(r));
                        out.push_str(&format!(
                            "\nAnswer it with: {} answer-info {} --answer \"…\" [--position \"…\"]\n",
                            self.hint, envelope.message_id
                        ));
                    }
                    Some(referral_proto::v1::payload::Form::InformationResponse(r)) => {
                        out.push_str("\nАҚПАРАТ СҰРАУҒА ЖАУАП / ОТВЕТ НА ЗАПРОС ИНФОРМАЦИИ\n");
                        out.push_str(&case_view::information_response_text(r));
                    }
                    Some(referral_proto::v1::payload::Form::ActionAssignment(a)) => {
                        out.push_str("\nІС-ШАРА ТАПСЫРМАСЫ / ПОРУЧЕНИЕ ПО МЕРОПРИЯТИЮ (M)\n");
                        out.push_str(&case_view::action_assignment_text(a));
                        out.push_str(&format!(
                            "\nReport on it with: {} progress {} --state in_progress|completed|cannot_complete [--note \"…\"]\n",
                            self.hint, envelope.message_id
                        ));
                    }
                    Some(referral_proto::v1::payload::Form::ActionProgress(p)) => {
                        out.push_str("\nІС-ШАРАНЫҢ ОРЫНДАЛУЫ / ХОД ВЫПОЛНЕНИЯ МЕРОПРИЯТИЯ\n");
                        out.push_str(&case_view::action_progress_text(p));
                    }
                    Some(referral_proto::v1::payload::Form::ReviewMinutes(m)) => {
                        out.push_str("\nҚАЙТА ҚАРАУ ХАТТАМАСЫ / ПРОТОКОЛ ПЕРЕСМОТРА ПЛАНА\n");
                        out.push_str(&case_view::review_minutes_text(m));
                    }
                    Some(referral_proto::v1::payload::Form::DeadlineAlert(a)) => {
                        out.push_str("\nМЕРЗІМ ТУРАЛЫ ЕСКЕРТУ / УВЕДОМЛЕНИЕ О СРОКЕ\n");
                        out.push_str(&case_view::alert_text(a, &tz));
                    }
                    Some(referral_proto::v1::payload::Form::Consultation(c)) => {
                        out.push_str("\nКЕҢЕС СҰРАУ / КОНСУЛЬТАЦИЯ (no names)\n");
                        out.push_str(&view::consultation_text(c));
                        out.push_str(&format!(
                            "\nAnswer it with: {} answer-consultation {} --advice \"…\"\n",
                            self.hint, envelope.message_id
                        ));
                    }
                    Some(referral_proto::v1::payload::Form::ConsultationAnswer(a)) => {
                        out.push_str("\nКОМИССИЯНЫҢ КЕҢЕСІ / СОВЕТ КОМИССИИ\n");
                        out.push_str(&view::consultation_answer_text(a));
                    }
                    Some(referral_proto::v1::payload::Form::DisclosureAlert(a)) => {
                        out.push_str(
                            "\nІСТІ АШУ ТУРАЛЫ ЕСКЕРТУ / УВЕДОМЛЕНИЕ О ДОСТУПЕ К ДЕЛУ (break the glass)\n",
                        );
                        out.push_str(&view::disclosure_alert_text(a, &tz));
                        out.push_str(&format!(
                            "\nEvery disclosure of the child: {} disclosures {}\n",
                            self.hint, a.case_reference
                        ));
                    }
                    _ => out.push_str("\n(this version of the CLI does not show this form)\n"),
                }
                match &reply.decision {
                    Some(d) => {
                        out.push_str("\nШешім / Решение\n");
                        out.push_str(&view::decision_text(d, &tz));
                    }
                    None if envelope.form_kind == FormKind::HelpRequest as i32 => {
                        out.push_str(&format!(
                            "\nNot decided yet: {} decide {} --open-case --curator <user-id> | --no-further-action --reason \"…\"\n",
                            self.hint, envelope.message_id
                        ));
                    }
                    None => {}
                }
                out!("{out}");
            }
        }
        Ok(())
    }

    /// `decide <message-id> --open-case --curator <id> | --no-further-action --reason <text>`.
    pub async fn decide(mut self, args: DecideArgs) -> anyhow::Result<()> {
        let outcome = if args.open_case {
            Outcome::OpenCase(OpenCase {
                curator_user_id: args.curator.clone().unwrap_or_default(),
            })
        } else {
            Outcome::NoFurtherAction(NoFurtherAction {
                reason: args.reason.clone().unwrap_or_default(),
            })
        };
        let (key, generated) = match args.idempotency_key {
            Some(key) => (key, false),
            None => (uuid::Uuid::new_v4().to_string(), true),
        };
        let reply = self
            .client
            .decide_help_request(self.request(DecideHelpRequestRequest {
                message_id: args.message_id.clone(),
                idempotency_key: key.clone(),
                outcome: Some(outcome),
            }))
            .await
            .map_err(|s| self.fail(s, "decision"))?
            .into_inner();
        let decision = reply.decision.unwrap_or_default();
        match self.format {
            Format::Json => print_json(&json!({
                "decision": view::decision_json(&decision),
                "decision_message_id": reply.decision_message_id,
                "idempotency_key": key,
            })),
            Format::Human => {
                outln!("decided: {}", view::decision_summary(&decision));
                outln!(
                    "the decision goes back to the sender as message {}",
                    reply.decision_message_id
                );
                if generated {
                    outln!(
                        "idempotency key {key}: to retry safely, repeat the command with --idempotency-key {key}"
                    );
                }
            }
        }
        Ok(())
    }

    /// `sent [--form <kind>]`.
    pub async fn sent(self, form: Option<FormKind>) -> anyhow::Result<()> {
        let items = all_pages(|page_token| {
            let mut client = self.client.clone();
            let request = self.request(ListSentRequest {
                form_kind: form.unwrap_or(FormKind::Unspecified) as i32,
                page_size: PAGE_SIZE,
                page_token,
            });
            async move {
                let reply = client.list_sent(request).await?.into_inner();
                Ok((reply.items, reply.next_page_token))
            }
        })
        .await
        .map_err(|s| self.fail(s, "request"))?;
        let tz = self.tz();
        match self.format {
            Format::Json => print_json(&json!(
                items
                    .iter()
                    .map(|i| json!({
                        "message_id": i.message_id,
                        "recipient_agency_id": i.recipient_agency_id,
                        "form_kind": view::form_name(i.form_kind),
                        "sent_at": json_time(i.sent_at.as_ref()),
                        "state": view::state_name(i.state),
                        "status": view::status_name(i.status),
                    }))
                    .collect::<Vec<_>>()
            )),
            Format::Human => {
                if items.is_empty() {
                    outln!("{} has sent nothing yet", self.agency);
                    return Ok(());
                }
                let mut table = Table::new(["MESSAGE ID", "SENT", "TO", "FORM", "STATE", "STATUS"]);
                for i in &items {
                    table.row([
                        i.message_id.clone(),
                        local_time(i.sent_at.as_ref(), &tz),
                        i.recipient_agency_id.clone(),
                        view::form_title(i.form_kind),
                        view::state_text(i.state),
                        view::status_name(i.status),
                    ]);
                }
                out!("{}", table.render());
                outln!("follow one with: {} sent-status <message-id>", self.hint);
            }
        }
        Ok(())
    }

    /// `sent-status <message-id>`: where a sent message is, and the answer when there is one.
    pub async fn sent_status(mut self, message_id: String) -> anyhow::Result<()> {
        let reply = self
            .client
            .get_sent_message(self.request(GetSentMessageRequest { message_id }))
            .await
            .map_err(|s| self.fail(s, "message id"))?
            .into_inner();
        let envelope = reply.envelope.unwrap_or_default();
        let decision = reply.answer.as_ref().and_then(view::carried_decision);
        let advice = match reply
            .answer
            .as_ref()
            .and_then(|a| a.payload.as_ref())
            .and_then(|p| p.form.as_ref())
        {
            Some(referral_proto::v1::payload::Form::ConsultationAnswer(a)) => Some(a),
            _ => None,
        };
        match self.format {
            Format::Json => print_json(&json!({
                "message_id": envelope.message_id,
                "recipient_agency_id": envelope.recipient_agency_id,
                "form_kind": view::form_name(envelope.form_kind),
                "sent_at": json_time(envelope.created_at.as_ref()),
                "state": view::state_name(reply.state),
                "status": view::status_name(reply.status),
                "answer_message_id": reply.answer.as_ref().map(|a| a.message_id.clone()),
                "decision": decision.map(view::decision_json),
                "consultation_answer": advice.map(view::consultation_answer_json),
            })),
            Format::Human => {
                let tz = self.tz();
                let mut fields = Fields::new();
                fields
                    .add("Message", &envelope.message_id)
                    .add("Form", view::form_title(envelope.form_kind))
                    .add("To", self.agency_label(&envelope.recipient_agency_id))
                    .add("Sent", local_time(envelope.created_at.as_ref(), &tz))
                    .add("State", view::state_text(reply.state))
                    .add("Status", view::status_name(reply.status));
                out!("{}", fields.render(0));
                match (decision, advice) {
                    (Some(d), _) => {
                        outln!("\nШешім / Решение");
                        out!("{}", view::decision_text(d, &tz));
                    }
                    (None, Some(a)) => {
                        outln!("\nКомиссияның кеңесі / Совет комиссии");
                        out!("{}", view::consultation_answer_text(a));
                    }
                    (None, None) if reply.answer.is_some() => outln!("\n(answered)"),
                    (None, None) if reply.state == DeliveryState::Withheld as i32 => {}
                    (None, None) => outln!("\nno answer yet"),
                }
            }
        }
        Ok(())
    }
}
