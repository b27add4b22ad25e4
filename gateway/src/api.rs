//! The `referral.v1.Gateway` service: who is calling (from the certificate), whether the rules let
//! them send this, and the durable, idempotent send.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use prost::Message as _;
use referral_core::{
    FieldViolations, ServiceError, ServiceResult,
    directory::{AgencyEntry, role_fits_kind},
    pki::ComponentIdentity,
    time, tls, validate,
};
use referral_proto::v1::{
    AgencyKind, CaseView, ConfidentialityLabel, DeliveryState, DeliveryStatus, DisclosureGrant,
    Envelope, FilterCaseReadRequest, FormKind, GetDeliveryStatusRequest, GrantDisclosureRequest,
    HelpRequestDecision, ListAgenciesRequest, ListAgenciesResponse, ListDisclosureGrantsRequest,
    ListDisclosureGrantsResponse, ListDisclosuresRequest, ListDisclosuresResponse, PurposeOfUse,
    ReadCaseRequest, RecordAgencyClockEventRequest, RecordAgencyClockEventResponse,
    RecordCaseEventRequest, RecordCaseEventResponse, RevokeDisclosureRequest, Role, SendRequest,
    SendResponse, gateway_server, help_request_decision, payload,
};
use sqlx::{Any, Transaction};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::{
    Shared, access, forms, ledger, police_forms,
    policy::Sections,
    protection_forms,
    routing::{self, Reply},
    service_forms,
    store::{self, STATE_ANSWERED, STATE_DELIVERED, STATE_QUEUED},
};

/// The calling agency, as its certificate and the directory establish it.
#[derive(Debug, Clone)]
pub struct Caller(pub AgencyEntry);

/// Reads the caller's identity from the client certificate, once per call, and looks it up in
/// the directory. No certificate, a certificate that is not an agency's, or an agency the
/// directory does not know: `UNAUTHENTICATED`.
pub(crate) fn authenticate(shared: Arc<Shared>) -> impl tonic::service::Interceptor + Clone {
    move |mut req: Request<()>| {
        let agency_id = match tls::peer_identity(&req) {
            Some(ComponentIdentity::Agency(id)) => id,
            Some(ComponentIdentity::Gateway) => {
                return Err(Status::unauthenticated("the gateway does not call itself"));
            }
            None => return Err(Status::unauthenticated("a client certificate is required")),
        };
        let entry = shared
            .directory()
            .agency(&agency_id)
            .cloned()
            .ok_or_else(|| Status::unauthenticated("the certificate names no known agency"))?;
        req.extensions_mut().insert(Caller(entry));
        Ok(req)
    }
}

pub(crate) fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no caller identity"))
}

pub struct GatewayApi {
    pub(crate) shared: Arc<Shared>,
}

#[tonic::async_trait]
impl gateway_server::Gateway for GatewayApi {
    async fn send(&self, req: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        let Caller(caller) = caller(&req)?;
        let envelope = req
            .into_inner()
            .envelope
            .ok_or_else(|| ServiceError::invalid_field("envelope", "required"))?;
        let accepted = self.shared.accept(&caller, envelope).await?;
        Ok(Response::new(accepted))
    }

    async fn get_delivery_status(
        &self,
        req: Request<GetDeliveryStatusRequest>,
    ) -> Result<Response<DeliveryStatus>, Status> {
        let Caller(caller) = caller(&req)?;
        let message_id = req.into_inner().message_id;
        let status = self.shared.delivery_status(&caller.id, &message_id).await?;
        Ok(Response::new(status))
    }

    async fn list_agencies(
        &self,
        req: Request<ListAgenciesRequest>,
    ) -> Result<Response<ListAgenciesResponse>, Status> {
        let Caller(caller) = caller(&req)?;
        let kind = req.into_inner().kind;
        let directory = self.shared.directory();
        let agencies = directory
            .agencies
            .iter()
            .filter(|a| a.district == caller.district)
            .filter(|a| kind == AgencyKind::Unspecified as i32 || a.kind() as i32 == kind)
            .map(AgencyEntry::to_proto)
            .collect();
        Ok(Response::new(ListAgenciesResponse { agencies }))
    }

    async fn record_case_event(
        &self,
        req: Request<RecordCaseEventRequest>,
    ) -> Result<Response<RecordCaseEventResponse>, Status> {
        let Caller(caller) = caller(&req)?;
        let recorded = self
            .shared
            .record_case_event(&caller, req.into_inner())
            .await?;
        Ok(Response::new(recorded))
    }

    async fn record_agency_clock_event(
        &self,
        req: Request<RecordAgencyClockEventRequest>,
    ) -> Result<Response<RecordAgencyClockEventResponse>, Status> {
        let Caller(caller) = caller(&req)?;
        let recorded = self
            .shared
            .record_agency_clock_event(&caller, req.into_inner())
            .await?;
        Ok(Response::new(recorded))
    }

    async fn read_case(&self, req: Request<ReadCaseRequest>) -> Result<Response<CaseView>, Status> {
        let Caller(caller) = caller(&req)?;
        let view = self.shared.read_case(&caller, req.into_inner()).await?;
        Ok(Response::new(view))
    }

    async fn filter_case_read(
        &self,
        req: Request<FilterCaseReadRequest>,
    ) -> Result<Response<CaseView>, Status> {
        let Caller(caller) = caller(&req)?;
        let view = self
            .shared
            .filter_case_read(&caller, req.into_inner())
            .await?;
        Ok(Response::new(view))
    }

    async fn grant_disclosure(
        &self,
        req: Request<GrantDisclosureRequest>,
    ) -> Result<Response<DisclosureGrant>, Status> {
        let Caller(caller) = caller(&req)?;
        let grant = self
            .shared
            .grant_disclosure(&caller, req.into_inner())
            .await?;
        Ok(Response::new(grant))
    }

    async fn revoke_disclosure(
        &self,
        req: Request<RevokeDisclosureRequest>,
    ) -> Result<Response<DisclosureGrant>, Status> {
        let Caller(caller) = caller(&req)?;
        let grant = self
            .shared
            .revoke_disclosure(&caller, req.into_inner())
            .await?;
        Ok(Response::new(grant))
    }

    async fn list_disclosure_grants(
        &self,
        req: Request<ListDisclosureGrantsRequest>,
    ) -> Result<Response<ListDisclosureGrantsResponse>, Status> {
        let Caller(caller) = caller(&req)?;
        let grants = self.shared.list_grants(&caller, req.into_inner()).await?;
        Ok(Response::new(grants))
    }

    async fn list_disclosures(
        &self,
        req: Request<ListDisclosuresRequest>,
    ) -> Result<Response<ListDisclosuresResponse>, Status> {
        let Caller(caller) = caller(&req)?;
        let history = self
            .shared
            .list_disclosures(&caller, req.into_inner())
            .await?;
        Ok(Response::new(history))
    }
}

/// The form kind a payload carries.
fn payload_kind(form: &payload::Form) -> FormKind {
    match form {
        payload::Form::HelpRequest(_) => FormKind::HelpRequest,
        payload::Form::HelpRequestDecision(_) => FormKind::HelpRequestDecision,
        payload::Form::ReferralLog(_) => FormKind::ReferralLog,
        payload::Form::Assessment(_) => FormKind::Assessment,
        payload::Form::SupportPlan(_) => FormKind::SupportPlan,
        payload::Form::IncidentReport(_) => FormKind::IncidentReport,
        payload::Form::IncidentSummary(_) => FormKind::IncidentSummary,
        payload::Form::InformationRequest(_) => FormKind::InformationRequest,
        payload::Form::InformationResponse(_) => FormKind::InformationResponse,
        payload::Form::ActionAssignment(_) => FormKind::ActionAssignment,
        payload::Form::ActionProgress(_) => FormKind::ActionProgress,
        payload::Form::ReviewMinutes(_) => FormKind::ReviewMinutes,
        payload::Form::DeadlineAlert(_) => FormKind::DeadlineAlert,
        payload::Form::Consultation(_) => FormKind::Consultation,
        payload::Form::ConsultationAnswer(_) => FormKind::ConsultationAnswer,
        payload::Form::DisclosureAlert(_) => FormKind::DisclosureAlert,
        payload::Form::InvestigationUpdate(_) => FormKind::InvestigationUpdate,
        payload::Form::HealthNotice(_) => FormKind::HealthNotice,
        payload::Form::ServiceReferral(_) => FormKind::ServiceReferral,
        payload::Form::ServiceUpdate(_) => FormKind::ServiceUpdate,
        payload::Form::SafetyMeetingNotice(_) => FormKind::SafetyMeetingNotice,
        payload::Form::IncidentReferral(_) => FormKind::IncidentReferral,
        payload::Form::ProtectionInstruction(_) => FormKind::ProtectionInstruction,
        payload::Form::InstructionAcknowledgement(_) => FormKind::InstructionAcknowledgement,
        payload::Form::PreventiveRegistration(_) => FormKind::PreventiveRegistration,
    }
}

/// The case reference a case message's payload carries; `None` for the other forms.
fn payload_case_reference(form: &payload::Form) -> Option<&str> {
    match form {
        payload::Form::InformationRequest(r) => Some(&r.case_reference),
        payload::Form::InformationResponse(r) => Some(&r.case_reference),
        payload::Form::ActionAssignment(a) => Some(&a.case_reference),
        payload::Form::ActionProgress(a) => Some(&a.case_reference),
        payload::Form::ReviewMinutes(m) => Some(&m.case_reference),
        payload::Form::InvestigationUpdate(u) => Some(&u.case_reference),
        payload::Form::HealthNotice(n) => Some(&n.case_reference),
        payload::Form::ProtectionInstruction(i) => Some(&i.case_reference),
        payload::Form::InstructionAcknowledgement(a) => Some(&a.case_reference),
        payload::Form::PreventiveRegistration(r) => Some(&r.case_reference),
        _ => None,
    }
}

/// Step 1 of a send: the envelope's shape (idempotency key, recipient, a known form kind whose
/// form the payload carries, purpose of use, label, case reference length, acting user).
pub(crate) fn check_shape(env: &Envelope) -> ServiceResult<()> {
    let mut v = FieldViolations::new();
    validate::idempotency_key(&env.idempotency_key, "envelope.idempotency_key", &mut v);
    if env.recipient_agency_id.trim().is_empty() {
        v.add("envelope.recipient_agency_id", "required");
    }
    let form_kind = FormKind::try_from(env.form_kind).unwrap_or(FormKind::Unspecified);
    if form_kind == FormKind::Unspecified {
        v.add("envelope.form_kind", "required: a known form kind");
    }
    match env.payload.as_ref().and_then(|p| p.form.as_ref()) {
        None => v.add("envelope.payload", "required"),
        Some(form) if form_kind != FormKind::Unspecified && payload_kind(form) != form_kind => {
            v.add("envelope.payload", "must carry the form named by form_kind")
        }
        Some(_) => {}
    }
    if PurposeOfUse::try_from(env.purpose_of_use).unwrap_or(PurposeOfUse::Unspecified)
        == PurposeOfUse::Unspecified
    {
        v.add(
            "envelope.purpose_of_use",
            "required: a known purpose of use",
        );
    }
    if ConfidentialityLabel::try_from(env.confidentiality)
        .unwrap_or(ConfidentialityLabel::Unspecified)
        == ConfidentialityLabel::Unspecified
    {
        v.add("envelope.confidentiality", "required: a known label");
    }
    if env.case_reference.chars().count() > 100 {
        v.add("envelope.case_reference", "at most 100 characters");
    }
    let acting = env.acting_user.clone().unwrap_or_default();
    if env.acting_user.is_none() {
        v.add("envelope.acting_user", "required");
    } else {
        if acting.user_id.trim().is_empty() || acting.user_id.len() > 200 {
            v.add(
                "envelope.acting_user.user_id",
                "required, at most 200 characters",
            );
        }
        if Role::try_from(acting.role).unwrap_or(Role::Unspecified) == Role::Unspecified {
            v.add("envelope.acting_user.role", "required: a known role");
        }
    }
    v.into_result()
}

/// Step 4 of a send: the form itself, judged in the sender's district on `now` (every field of
/// the payload, and the envelope's case reference against the payload's, filled in when the
/// sender left it empty). The caller and recipient have passed the routing rules.
pub(crate) fn check_form(
    env: &mut Envelope,
    caller: &AgencyEntry,
    recipient_id: &str,
    now: jiff::Timestamp,
    directory: &referral_core::directory::Directory,
) -> FieldViolations {
    // Forms judge their dates in the sender's district.
    let tz = directory
        .district(&caller.district)
        .and_then(|d| jiff::tz::TimeZone::get(&d.time_zone).ok())
        .unwrap_or(jiff::tz::TimeZone::UTC);
    let today = now.to_zoned(tz.clone()).date();
    let mut v = FieldViolations::new();
    match env.payload.as_ref().and_then(|p| p.form.as_ref()) {
        Some(payload::Form::HelpRequest(k)) => {
            validate::help_request(k, now, &tz, &mut v, "envelope.payload.help_request");
        }
        Some(payload::Form::HelpRequestDecision(d)) => {
            validate_decision(d, &env.in_reply_to, &mut v)
        }
        Some(payload::Form::InformationRequest(r)) => {
            forms::information_request(r, &mut v, "envelope.payload.information_request")
        }
        Some(payload::Form::InformationResponse(r)) => forms::information_response(
            r,
            &env.in_reply_to,
            &mut v,
            "envelope.payload.information_response",
        ),
        Some(payload::Form::ActionAssignment(a)) => forms::action_assignment(
            a,
            recipient_id,
            &mut v,
            "envelope.payload.action_assignment",
        ),
        Some(payload::Form::ActionProgress(a)) => forms::action_progress(
            a,
            &env.in_reply_to,
            &mut v,
            "envelope.payload.action_progress",
        ),
        Some(payload::Form::ReviewMinutes(m)) => {
            forms::review_minutes(m, &mut v, "envelope.payload.review_minutes")
        }
        Some(payload::Form::InvestigationUpdate(u)) => {
            forms::investigation_update(u, &mut v, "envelope.payload.investigation_update");
            police_forms::investigation_child_role(
                u,
                &mut v,
                "envelope.payload.investigation_update",
            );
        }
        Some(payload::Form::PreventiveRegistration(r)) => police_forms::preventive_registration(
            r,
            today,
            &mut v,
            "envelope.payload.preventive_registration",
        ),
        Some(payload::Form::HealthNotice(n)) => {
            forms::health_notice(n, &mut v, "envelope.payload.health_notice")
        }
        Some(payload::Form::Consultation(c)) => {
            validate::consultation(c, &mut v, "envelope.payload.consultation")
        }
        Some(payload::Form::ConsultationAnswer(a)) => forms::consultation_answer(
            a,
            &env.in_reply_to,
            &mut v,
            "envelope.payload.consultation_answer",
        ),
        Some(payload::Form::IncidentSummary(e)) => {
            forms::incident_summary(e, &mut v, "envelope.payload.incident_summary");
            if PurposeOfUse::try_from(env.purpose_of_use).ok()
                != Some(PurposeOfUse::AggregateReporting)
            {
                v.add(
                    "envelope.purpose_of_use",
                    "an incident summary is aggregate reporting",
                );
            }
        }
        Some(form) if service_forms::is_service_form(form) => {
            service_forms::check(env, caller, today, &mut v)
        }
        Some(
            form @ (payload::Form::IncidentReferral(_)
            | payload::Form::ProtectionInstruction(_)
            | payload::Form::InstructionAcknowledgement(_)),
        ) => protection_forms::check(form, &env.in_reply_to, today, &mut v),
        // No rule routes the other forms; they are refused above.
        _ => {}
    }
    // A case message belongs to its case: the envelope names the payload's case (and is
    // given it when the sender left it empty), so the ledger and the deadline engine see it.
    if let Some(case) = env
        .payload
        .as_ref()
        .and_then(|p| p.form.as_ref())
        .and_then(payload_case_reference)
    {
        if env.case_reference.is_empty() {
            env.case_reference = case.to_owned();
        } else if env.case_reference != case {
            v.add(
                "envelope.case_reference",
                "must be the case reference the payload carries",
            );
        }
    }
    v
}

/// A reply that must agree with the message it answers: an information response carries the
/// request's case, a progress report the assignment's case and row number. Checked against the
/// original's metadata (`original` is its stored envelope, without payload, and
/// `original_action_number` the assigned row's number kept beside it), so that replies are
/// checked the same after the original's payload has been removed.
fn check_against_original(
    form: Option<&payload::Form>,
    original: &Envelope,
    original_action_number: Option<i64>,
) -> ServiceResult<()> {
    let original_form = original.payload.as_ref().and_then(|p| p.form.as_ref());
    let mut v = FieldViolations::new();
    match form {
        Some(payload::Form::InformationResponse(r))
            if r.case_reference != original.case_reference =>
        {
            v.add(
                "envelope.payload.information_response.case_reference",
                "must be the case of the request answered",
            );
        }
        Some(payload::Form::InstructionAcknowledgement(a))
            if a.case_reference != original.case_reference =>
        {
            v.add(
                "envelope.payload.instruction_acknowledgement.case_reference",
                "must be the case of the instruction",
            );
        }
        Some(payload::Form::ActionProgress(p)) => {
            if p.case_reference != original.case_reference {
                v.add(
                    "envelope.payload.action_progress.case_reference",
                    "must be the case of the assignment",
                );
            }
            // Rows stored before payloads were sealed may still hold the number in the payload.
            let number = original_action_number
                .and_then(|n| u32::try_from(n).ok())
                .or(match original_form {
                    Some(payload::Form::ActionAssignment(a)) => a.action.as_ref().map(|a| a.number),
                    _ => None,
                });
            if number != Some(p.action_number) {
                v.add(
                    "envelope.payload.action_progress.action_number",
                    "must be the number of the assigned row",
                );
            }
        }
        _ => {}
    }
    v.into_result()
}

/// Checks a decision's own fields (the envelope checks say whom it may go to).
fn validate_decision(d: &HelpRequestDecision, in_reply_to: &str, v: &mut FieldViolations) {
    let p = "envelope.payload.help_request_decision";
    if d.help_request_message_id != in_reply_to {
        v.add(
            format!("{p}.help_request_message_id"),
            "must be the message the envelope replies to",
        );
    }
    match &d.outcome {
        None => v.add(
            format!("{p}.outcome"),
            "required: case opened or no further action",
        ),
        Some(help_request_decision::Outcome::CaseOpened(c)) => {
            for (field, value, max) in [
                ("case_reference", &c.case_reference, 100),
                ("curator_user_id", &c.curator_user_id, 200),
                ("curator_name", &c.curator_name, 200),
            ] {
                if value.trim().is_empty() {
                    v.add(format!("{p}.case_opened.{field}"), "required");
                } else if value.chars().count() > max {
                    v.add(
                        format!("{p}.case_opened.{field}"),
                        format!("at most {max} characters"),
                    );
                }
            }
            if c.curator_contact.chars().count() > 200 {
                v.add(
                    format!("{p}.case_opened.curator_contact"),
                    "at most 200 characters",
                );
            }
        }
        Some(help_request_decision::Outcome::NoFurtherAction(n)) => {
            let len = n.reason.trim().chars().count();
            if !(3..=2000).contains(&len) {
                v.add(
                    format!("{p}.no_further_action.reason"),
                    "required, 3 to 2000 characters",
                );
            }
        }
    }
    if d.decided_by.trim().is_empty() {
        v.add(format!("{p}.decided_by"), "required");
    }
    if d.decided_at.as_ref().and_then(time::from_proto).is_none() {
        v.add(format!("{p}.decided_at"), "required");
    }
}

impl Shared {
    /// Validates, routes and stores a message with its ledger entry and outbox row in one
    /// transaction, then wakes the delivery worker. Nothing is stored when any check fails.
    pub(crate) async fn accept(
        &self,
        caller: &AgencyEntry,
        env: Envelope,
    ) -> ServiceResult<SendResponse> {
        // What a refusal's audit entry names, kept aside without cloning the form.
        let acting = env.acting_user.clone();
        let purpose =
            PurposeOfUse::try_from(env.purpose_of_use).unwrap_or(PurposeOfUse::Unspecified);
        let form_kind = FormKind::try_from(env.form_kind).unwrap_or(FormKind::Unspecified);
        let recipient = env.recipient_agency_id.clone();
        let case_reference = match env
            .payload
            .as_ref()
            .and_then(|p| p.form.as_ref())
            .and_then(payload_case_reference)
        {
            Some(case) if env.case_reference.is_empty() => case.to_owned(),
            _ => env.case_reference.clone(),
        };
        let result = self.accept_checked(caller, env).await;
        // Ids, kind and outcome on the request's span (`referral_core::telemetry::request_span`);
        // the recipient only once the gateway knows it is an agency of its directory.
        let span = tracing::Span::current();
        span.record("sender", caller.id.as_str());
        span.record("form_kind", form_kind.as_str_name());
        match &result {
            Ok(sent) => {
                span.record("message_id", sent.message_id.as_str());
                span.record("recipient", recipient.as_str());
                let outcome = if sent.duplicate {
                    "duplicate"
                } else {
                    "accepted"
                };
                span.record("outcome", outcome);
            }
            Err(ServiceError::PermissionDenied(_)) => {
                span.record("outcome", "denied");
            }
            Err(ServiceError::InvalidArgument(_)) => {
                span.record("outcome", "invalid");
            }
            Err(_) => {
                span.record("outcome", "refused");
            }
        }
        // Every refusal by the rules (who may act, routing, need to know) is an audit event;
        // the refused message itself stored nothing.
        if let Err(ServiceError::PermissionDenied(_)) = &result {
            access::record_denial(
                self,
                access::Audit {
                    event: access::EVENT_DENIED,
                    agency_id: &caller.id,
                    acting: acting.as_ref(),
                    purpose,
                    case_reference: &case_reference,
                    message_id: "",
                    recipient_agency_id: &recipient,
                    form_kind: form_kind.as_str_name(),
                    sections: Sections::NONE,
                    outcome: access::OUTCOME_DENIED,
                    digest: String::new(),
                },
            )
            .await?;
        }
        result
    }

    async fn accept_checked(
        &self,
        caller: &AgencyEntry,
        env: Envelope,
    ) -> ServiceResult<SendResponse> {
        let form_kind = FormKind::try_from(env.form_kind).unwrap_or(FormKind::Unspecified);
        let (pending, answer) = self.prepare_send(caller, env)?;
        if self
            .ledger_writer
            .submit(LedgerWrite::Send(Box::new(pending)))
            .is_err()
        {
            return Err(ServiceError::Unavailable("the gateway is stopping".into()));
        }
        // No answer: the batch was dropped unwritten (the gateway stopping, or a bug in a check).
        let accepted = answer.await.map_err(|_| {
            ServiceError::Unavailable("the message was not stored; try again".into())
        })??;
        if !accepted.duplicate {
            tracing::info!(
                message_id = %accepted.message_id,
                sender = %caller.id,
                form = form_kind.as_str_name(),
                "message accepted"
            );
        }
        Ok(accepted)
    }

    /// Every check of a send that needs no store (steps 1-4); the send, ready for the writer,
    /// and where its answer will come.
    #[allow(clippy::type_complexity)]
    pub(crate) fn prepare_send(
        &self,
        caller: &AgencyEntry,
        mut env: Envelope,
    ) -> ServiceResult<(PendingSend, oneshot::Receiver<ServiceResult<SendResponse>>)> {
        // 1. The envelope's shape.
        check_shape(&env)?;
        let form_kind = FormKind::try_from(env.form_kind).unwrap_or(FormKind::Unspecified);
        let acting = env.acting_user.clone().unwrap_or_default();

        // 2. Who may act: the certificate vouches only for its own agency and its own staff.
        if !env.sender_agency_id.is_empty() && env.sender_agency_id != caller.id {
            return Err(ServiceError::PermissionDenied(
                "the sender must be the agency of the calling certificate".into(),
            ));
        }
        let role = Role::try_from(acting.role).unwrap_or(Role::Unspecified);
        if acting.agency_id != caller.id {
            return Err(ServiceError::PermissionDenied(
                "the calling agency cannot act for a user of another agency".into(),
            ));
        }
        if !role_fits_kind(role, caller.kind()) {
            return Err(ServiceError::PermissionDenied(
                "the acting role does not exist in the calling agency".into(),
            ));
        }

        // 3. Routing, deny by default.
        let directory = self.directory();
        let recipient = directory
            .agency(&env.recipient_agency_id)
            .cloned()
            .ok_or_else(|| ServiceError::PermissionDenied("no route to that recipient".into()))?;
        let rule = routing::find_rule(
            caller.kind(),
            form_kind,
            recipient.kind(),
            recipient.district == caller.district,
        )
        .ok_or_else(|| {
            ServiceError::PermissionDenied(format!(
                "no route: an agency of kind {} may not send {} to an agency of kind {}",
                caller.kind,
                form_kind.as_str_name(),
                recipient.kind
            ))
        })?;
        match rule.reply {
            Reply::No if !env.in_reply_to.is_empty() => {
                return Err(ServiceError::invalid_field(
                    "envelope.in_reply_to",
                    "must be empty for this form",
                ));
            }
            Reply::To { .. } if env.in_reply_to.is_empty() => {
                return Err(ServiceError::invalid_field(
                    "envelope.in_reply_to",
                    "required: the message this answers",
                ));
            }
            _ => {}
        }

        // What only the gateway sets is never taken from a client.
        env.linked_referrals.clear();
        env.view_sections.clear();

        // 4. The form itself.
        let now = self.clock.now();
        check_form(&mut env, caller, &recipient.id, now, &directory).into_result()?;

        // 5. Store, with every send waiting at this moment, in one transaction (group commit).
        let payload_bytes = env
            .payload
            .as_ref()
            .map(|p| p.encode_to_vec())
            .unwrap_or_default();
        let payload_hash = ledger::payload_sha256(&payload_bytes);
        let (reply, answer) = oneshot::channel();
        let pending = PendingSend {
            caller: caller.clone(),
            env,
            rule: *rule,
            recipient,
            payload_hash,
            now,
            span: tracing::Span::current(),
            reply,
        };
        Ok((pending, answer))
    }

    /// Stores one checked send inside the batch's transaction: idempotency, reply checks, need to
    /// know, message, outbox and ledger. On `Err` the caller rolls the whole transaction back (the
    /// send may have written part of itself) and writes the batch again without it.
    async fn store_send(
        &self,
        tx: &mut Transaction<'static, Any>,
        head: &mut ledger::LockedHead,
        keys: &mut BatchKeys,
        rows: &mut store::QueuedRows,
        pending: &PendingSend,
    ) -> ServiceResult<SendResponse> {
        let PendingSend {
            caller,
            rule,
            recipient,
            payload_hash,
            now,
            ..
        } = pending;
        let mut env = pending.env.clone();
        let key = (caller.id.clone(), env.idempotency_key.clone());
        let existing = if keys.written.contains(&key) {
            // Written earlier in this batch: read back inside the transaction.
            rows.write(tx).await?;
            store::message_by_key(&mut **tx, &caller.id, &env.idempotency_key).await?
        } else {
            keys.stored.get(&key).cloned()
        };
        if let Some(existing) = existing {
            return duplicate_response(existing, &env, payload_hash);
        }
        if let Reply::To { answers, single } = rule.reply {
            rows.write(tx).await?;
            let original = store::message_by_id(&mut **tx, &env.in_reply_to)
                .await?
                .filter(|m| {
                    m.recipient_agency_id == caller.id
                        && m.sender_agency_id == recipient.id
                        && m.form_kind == answers.as_str_name()
                })
                .ok_or_else(|| {
                    ServiceError::invalid_field(
                        "envelope.in_reply_to",
                        "must be a message the recipient sent to you",
                    )
                })?;
            if single && original.answer_message_id.is_some() {
                return Err(ServiceError::FailedPrecondition(
                    "that message has already been answered".into(),
                ));
            }
            let original_env =
                store::metadata_envelope(&original).map_err(ServiceError::internal)?;
            check_against_original(
                env.payload.as_ref().and_then(|p| p.form.as_ref()),
                &original_env,
                original.action_number,
            )?;
        }
        if service_forms::named_referral(caller, &env).is_some() {
            rows.write(tx).await?;
            service_forms::check_named_referral(tx, caller, recipient, &env).await?;
        }
        let message_id = uuid::Uuid::now_v7().to_string();
        env.message_id = message_id.clone();
        env.sender_agency_id = caller.id.clone();
        env.created_at = Some(time::to_proto(*now));
        let now_us = time::to_micros(*now);
        // 6. Need to know: the policy's word on sender and recipient, what the gateway must
        // remember of the case, and the recipient's view of the message.
        let access = self
            .check_send(tx, caller, recipient, &mut env, now_us)
            .await?;
        if access.sections != Sections::all()
            && let Some(payload) = env.payload.as_ref()
        {
            env.payload = Some(
                self.views
                    .filter(
                        payload,
                        "referral.v1.Payload",
                        access.sections,
                        &recipient.id,
                    )
                    .map_err(ServiceError::internal)?,
            );
        }
        env.view_sections = access.sections.iter().map(|s| s as i32).collect();
        // Written with the rest of the batch's messages, before anything reads them.
        rows.enqueue(head, &self.sealer, &env, payload_hash, now_us)?;
        keys.written.insert(key);
        for mut copy in access.copies {
            copy.view_sections = env.view_sections.clone();
            rows.enqueue(head, &self.sealer, &copy, payload_hash, now_us)?;
            keys.written
                .insert((copy.sender_agency_id.clone(), copy.idempotency_key.clone()));
        }
        if access.withheld {
            rows.write(tx).await?;
            access::withhold(tx, head, &env, now_us).await?;
        }
        // A single answer closes the message it answers; progress reports leave it open.
        if matches!(rule.reply, Reply::To { single: true, .. }) {
            sqlx::query(
                "UPDATE messages SET state = $1, answered_at = $2, answer_message_id = $3 \
                 WHERE message_id = $4",
            )
            .bind(STATE_ANSWERED)
            .bind(now_us)
            .bind(&message_id)
            .bind(&env.in_reply_to)
            .execute(&mut **tx)
            .await?;
        }
        Ok(SendResponse {
            message_id,
            state: DeliveryState::Queued as i32,
            duplicate: false,
            created_at: env.created_at,
        })
    }

    /// Where a message is; only its sender and its recipient may ask.
    pub(crate) async fn delivery_status(
        &self,
        caller: &str,
        message_id: &str,
    ) -> ServiceResult<DeliveryStatus> {
        let not_found = || ServiceError::NotFound("no such message".into());
        let row = store::message_by_id(self.db.pool(), message_id)
            .await?
            .filter(|m| m.sender_agency_id == caller || m.recipient_agency_id == caller)
            .ok_or_else(not_found)?;
        // A report kept from an institution (its director implicated, or a child's disclosure
        // about it) tells that institution no more than that it was delivered.
        if self
            .excluded_from_report(&row)
            .await?
            .iter()
            .any(|a| a == caller)
        {
            let delivered = row.delivered_at.is_some() || row.state != store::STATE_QUEUED;
            return Ok(DeliveryStatus {
                message_id: row.message_id,
                state: if delivered {
                    DeliveryState::Delivered
                } else {
                    DeliveryState::Queued
                } as i32,
                queued_at: Some(time::micros_to_proto(row.created_at)),
                delivered_at: row.delivered_at.map(time::micros_to_proto),
                answered_at: None,
                delivery_attempts: u32::try_from(row.delivery_attempts).unwrap_or(u32::MAX),
                answer: None,
            });
        }
        // Without payload once the answer's payload has been removed after delivery.
        let answer = match &row.answer_message_id {
            Some(id) => store::message_by_id(self.db.pool(), id)
                .await?
                .map(|a| store::open_envelope(&self.sealer, &a))
                .transpose()
                .map_err(ServiceError::internal)?,
            None => None,
        };
        Ok(DeliveryStatus {
            message_id: row.message_id,
            state: state_to_proto(&row.state) as i32,
            queued_at: Some(time::micros_to_proto(row.created_at)),
            delivered_at: row.delivered_at.map(time::micros_to_proto),
            answered_at: row.answered_at.map(time::micros_to_proto),
            delivery_attempts: u32::try_from(row.delivery_attempts).unwrap_or(u32::MAX),
            answer,
        })
    }
}

/// A send that passed every check needing no store, waiting for the send writer.
pub(crate) struct PendingSend {
    caller: AgencyEntry,
    env: Envelope,
    rule: routing::Rule,
    recipient: AgencyEntry,
    payload_hash: String,
    now: jiff::Timestamp,
    /// The call's span: the send's store work and log lines stay in its trace.
    span: tracing::Span,
    reply: oneshot::Sender<ServiceResult<SendResponse>>,
}

/// The most sends and deliveries one transaction writes.
pub(crate) const LEDGER_BATCH: usize = 128;

/// What the ledger's writer writes: an accepted send, or a delivery the recipient's inbox
/// accepted. Both append to the ledger under its lock; those waiting together share one
/// transaction, so that neither waits for the other's commit while holding its own.
pub(crate) enum LedgerWrite {
    Send(Box<PendingSend>),
    Delivery(Box<crate::delivery::Accepted>),
}

/// The ledger writer's work: stores a batch of sends in one transaction under one ledger lock, in
/// the order they arrived, so each sees the ones before it exactly as if they had committed
/// one by one, then records the batch's deliveries in the same transaction. A send refused
/// inside the transaction (a duplicate key with other content, a denial, a reply to an answered
/// message) may have written part of itself: the transaction is rolled back, that send gets its
/// refusal and the others (deliveries too) are written again without it. Every send and every
/// delivery is answered only after its batch committed.
pub(crate) async fn write_ledger_batch(shared: Arc<Shared>, batch: Vec<LedgerWrite>) {
    let mut sends = Vec::new();
    let mut deliveries = Vec::new();
    for write in batch {
        match write {
            LedgerWrite::Send(send) => sends.push(*send),
            LedgerWrite::Delivery(delivery) => deliveries.push(*delivery),
        }
    }
    loop {
        match try_write_batch(&shared, &sends, &deliveries).await {
            Ok((answers, recorded)) => {
                if sends.is_empty() {
                    // Deliveries start clocks (a decision runs from the K's receipt); the worker
                    // is woken by its own finished pushes and has nothing new to claim.
                    shared.engine_wake.notify_one();
                } else {
                    shared.ledger_appended();
                }
                for (pending, answer) in sends.into_iter().zip(answers) {
                    let _ = pending.reply.send(Ok(answer));
                }
                crate::delivery::answer_recorded(deliveries, Ok(recorded));
                return;
            }
            // The refused send is answered and the rest written again without it.
            Err(BatchFailure::Refused(index, refusal)) => {
                let pending = sends.remove(index);
                let _ = pending.reply.send(Err(refusal));
            }
            Err(BatchFailure::Store(error)) => {
                if !matches!(error, ServiceError::Unavailable(_)) {
                    tracing::error!(
                        error = %error,
                        sends = sends.len(),
                        deliveries = deliveries.len(),
                        "cannot store a batch of sends and deliveries"
                    );
                }
                for pending in sends {
                    let _ = pending.reply.send(Err(error.shared_by_batch()));
                }
                crate::delivery::answer_recorded(deliveries, Err(()));
                return;
            }
        }
    }
}

/// The idempotency keys a batch of sends meets: those stored before the batch (read once, under
/// the ledger's lock), and those the batch wrote since, by (sender, key).
#[derive(Default)]
struct BatchKeys {
    stored: HashMap<(String, String), store::MessageRow>,
    written: HashSet<(String, String)>,
}

/// Why a batch's transaction did not commit.
enum BatchFailure {
    /// The send at this index was refused (or met a store error of its own).
    Refused(usize, ServiceError),
    /// The store failed for the whole batch (cannot begin or commit, unreachable).
    Store(ServiceError),
}

/// Writes the sends (each answered) and records the deliveries (the message ids this batch
/// recorded), in one transaction.
async fn try_write_batch(
    shared: &Shared,
    batch: &[PendingSend],
    deliveries: &[crate::delivery::Accepted],
) -> Result<(Vec<SendResponse>, std::collections::HashSet<String>), BatchFailure> {
    let store_failed = |e: sqlx::Error| BatchFailure::Store(e.into());
    let mut tx = shared.writer_db.begin().await.map_err(store_failed)?;
    // Take the ledger's write lock first: concurrent sends (several replicas, or SQLite
    // connections) then see each other's committed idempotency keys instead of racing. The batch
    // keeps the head and writes it once, before the commit.
    let mut head = ledger::lock_head(&mut tx).await.map_err(store_failed)?;
    // Under the lock no other writer adds keys: the batch's keys are read once, here.
    let mut keys = BatchKeys::default();
    let mut by_sender: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for pending in batch {
        by_sender
            .entry(pending.caller.id.as_str())
            .or_default()
            .push(pending.env.idempotency_key.as_str());
    }
    for (sender, sender_keys) in by_sender {
        let found = store::messages_by_keys(&mut *tx, sender, &sender_keys)
            .await
            .map_err(store_failed)?;
        keys.stored.extend(
            found
                .into_iter()
                .map(|(key, row)| ((sender.to_owned(), key), row)),
        );
    }
    let mut answers = Vec::with_capacity(batch.len());
    let mut rows = store::QueuedRows::default();
    for (index, pending) in batch.iter().enumerate() {
        // A caller that gave up (its deadline passed, its connection closed) was not told the
        // message was stored: nothing of it is stored, as when its own transaction was dropped.
        // It sends again under the same idempotency key.
        if pending.reply.is_closed() {
            answers.push(SendResponse::default());
            continue;
        }
        let stored = shared
            .store_send(&mut tx, &mut head, &mut keys, &mut rows, pending)
            .instrument(pending.span.clone())
            .await;
        match stored {
            Ok(answer) => answers.push(answer),
            // A store that cannot be reached fails every send alike: no send is tried again.
            Err(unavailable @ ServiceError::Unavailable(_)) => {
                let _ = tx.rollback().await;
                return Err(BatchFailure::Store(unavailable));
            }
            Err(refusal) => {
                let _ = tx.rollback().await;
                return Err(BatchFailure::Refused(index, refusal));
            }
        }
    }
    rows.write(&mut tx).await.map_err(store_failed)?;
    let now_us = referral_core::time::to_micros(shared.clock.now());
    let recorded = crate::delivery::record_in(&mut tx, &mut head, now_us, deliveries)
        .await
        .map_err(store_failed)?;
    head.store(&mut tx).await.map_err(store_failed)?;
    tx.commit().await.map_err(store_failed)?;
    Ok((answers, recorded))
}

/// A send whose idempotency key was seen before: the same content gets the same message id;
/// other content under the same key is refused.
fn duplicate_response(
    existing: store::MessageRow,
    env: &Envelope,
    payload_hash: &str,
) -> ServiceResult<SendResponse> {
    let form = FormKind::try_from(env.form_kind).unwrap_or(FormKind::Unspecified);
    if existing.payload_sha256 != payload_hash
        || existing.recipient_agency_id != env.recipient_agency_id
        || existing.form_kind != form.as_str_name()
    {
        return Err(ServiceError::AlreadyExists(
            "this idempotency key was used for a different message".into(),
        ));
    }
    Ok(SendResponse {
        message_id: existing.message_id,
        state: state_to_proto(&existing.state) as i32,
        duplicate: true,
        created_at: Some(time::micros_to_proto(existing.created_at)),
    })
}

pub(crate) fn state_to_proto(state: &str) -> DeliveryState {
    match state {
        STATE_QUEUED => DeliveryState::Queued,
        STATE_DELIVERED => DeliveryState::Delivered,
        STATE_ANSWERED => DeliveryState::Answered,
        access::STATE_WITHHELD => DeliveryState::Withheld,
        _ => DeliveryState::Unspecified,
    }
}
