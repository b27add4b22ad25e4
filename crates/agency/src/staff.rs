//! The staff API (`AgencyStaff`): who am I, the agency's staff, submitting a help request K, the
//! inbox, the sent messages, (commission only, see [`crate::commission`]) the decision, the
//! replies to the commission about a case ([`crate::replies`]) and the deadline queries
//! ([`crate::deadlines`]).
//!
//! Every call was authenticated by the staff interceptor (`auth::StaffAuth`, one per service);
//! handlers read the acting user it attached and authorise by role and by this agency's kind.

use std::sync::Arc;

use prost::Message as _;
use referral_core::{
    FieldViolations, ServiceError,
    directory::{kind_name, role_fits_kind, role_name},
    time, validate,
};
use referral_proto::v1::{
    ActingUser, AgencyKind, AnswerConsultationRequest, AnswerConsultationResponse,
    AnswerInformationRequestRequest, AnswerInformationRequestResponse, CaseView,
    ConfidentialityLabel, ConsultRequest, ConsultResponse, DeadlineOverviewRequest,
    DeadlineOverviewResponse, DecideHelpRequestRequest, DecideHelpRequestResponse, Envelope,
    FormKind, GetMessageRequest, GetSentMessageRequest, InboxItem, ListDeadlinesRequest,
    ListDeadlinesResponse, ListInboxRequest, ListInboxResponse, ListOverdueRequest,
    ListSentRequest, ListSentResponse, ListStaffRequest, ListStaffResponse, Payload, PurposeOfUse,
    ReadSharedCaseRequest, ReceivedMessage, ReportActionProgressRequest,
    ReportActionProgressResponse, Role, SentItem, SentMessage, StaffMember,
    SubmitHelpRequestRequest, SubmitHelpRequestResponse, WatchDeadlinesRequest, WhoAmIRequest,
    WhoAmIResponse, agency_staff_server::AgencyStaff, payload::Form,
};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use crate::{
    auth::acting_user,
    commission, consult, deadlines,
    error::{AgencyResult, internal, not_found, permission_denied},
    extension::AgencyHost,
    forms::{GATEWAY_SENDER_ID, decision_of, summary},
    outbound::{Pushed, failure_error, push},
    replies,
    service::Context,
    store::{
        Page, Waiting, fingerprint,
        sent::{PendingRequest, SentRow},
    },
};

/// The agency kinds whose staff may submit a help request K to the commission.
pub const HELP_REQUEST_SENDER_KINDS: &[AgencyKind] = &[
    AgencyKind::School,
    AgencyKind::Residential,
    AgencyKind::Health,
    AgencyKind::Police,
    AgencyKind::Ngo,
];

/// The roles that may submit a help request K (each only in an agency of its own kind).
pub const HELP_REQUEST_SENDER_ROLES: &[Role] = &[
    Role::SchoolDirector,
    Role::SafetyTeamMember,
    Role::SafeguardingLead,
    Role::SafeguardingDeputy,
    Role::InstitutionDirector,
    Role::InstitutionStaff,
    Role::HealthWorker,
    Role::PoliceJuvenileInspector,
    Role::NgoCaseManager,
];

/// Whether someone with `role` in an agency of `kind` may submit a help request K.
pub fn may_submit_help_request(kind: AgencyKind, role: Role) -> bool {
    HELP_REQUEST_SENDER_KINDS.contains(&kind)
        && HELP_REQUEST_SENDER_ROLES.contains(&role)
        && role_fits_kind(role, kind)
}

/// How the gateway is named as the sender of its own messages (deadline alerts).
const GATEWAY_NAME_KK: &str = "Жолдамалар хабы: мерзімдер";
const GATEWAY_NAME_RU: &str = "Хаб направлений: сроки";

/// What a caller is told when the gateway could not take their help request.
const SUBMIT_RETRY_HINT: &str =
    "the gateway is not reachable; submit again with the same idempotency key";

/// The staff API of one agency.
#[derive(Debug, Clone)]
pub(crate) struct StaffApi {
    context: Arc<Context>,
}

/// A form kind filter of a list request: unspecified lists every kind.
fn form_kind_filter(value: i32) -> AgencyResult<FormKind> {
    FormKind::try_from(value)
        .map_err(|_| ServiceError::invalid_field("form_kind", "must be a known form kind").into())
}

fn role_of(user: &ActingUser) -> Role {
    Role::try_from(user.role).unwrap_or(Role::Unspecified)
}

impl StaffApi {
    pub(crate) fn new(context: Arc<Context>) -> Self {
        Self { context }
    }

    fn list_staff(&self, request: &ListStaffRequest) -> AgencyResult<ListStaffResponse> {
        let wanted = match Role::try_from(request.role) {
            Ok(Role::Unspecified) => None,
            Ok(role) => Some(role),
            Err(_) => {
                return Err(ServiceError::invalid_field("role", "must be a known role").into());
            }
        };
        let staff = self
            .context
            .directory
            .staff_of(&self.context.agency.id)
            .filter(|s| wanted.is_none_or(|role| s.role() == role))
            .map(|s| StaffMember {
                user_id: s.user_id.clone(),
                full_name: s.full_name.clone(),
                role: s.role() as i32,
                contact: s.contact.clone(),
            })
            .collect();
        Ok(ListStaffResponse { staff })
    }

    async fn submit_help_request(
        &self,
        user: ActingUser,
        request: SubmitHelpRequestRequest,
    ) -> AgencyResult<SubmitHelpRequestResponse> {
        let context = &self.context;
        let role = role_of(&user);
        if !may_submit_help_request(context.kind, role) {
            return Err(permission_denied(&format!(
                "a {} of a {} may not submit a help request",
                role_name(role),
                kind_name(context.kind)
            )));
        }

        let now = context.clock.now();
        let mut v = FieldViolations::new();
        validate::idempotency_key(&request.idempotency_key, "idempotency_key", &mut v);
        match &request.help_request {
            Some(k) => validate::help_request(k, now, &context.time_zone, &mut v, "help_request"),
            None => v.add("help_request", "required"),
        }
        v.into_result()?;
        let SubmitHelpRequestRequest {
            idempotency_key,
            recipient_agency_id,
            help_request,
        } = request;
        let help_request = help_request.unwrap_or_default();

        let recipient = if recipient_agency_id.is_empty() {
            context
                .directory
                .commission_of(&context.agency.district)
                .map(|c| c.id.clone())
                .ok_or_else(|| {
                    internal(anyhow::anyhow!(
                        "the directory has no commission for this agency's district"
                    ))
                })?
        } else {
            recipient_agency_id
        };
        // What the caller asked for, to tell a retry from a key reused for something else.
        let request_sha256 = fingerprint(
            &[
                recipient.as_bytes(),
                b"\n",
                help_request.encode_to_vec().as_slice(),
            ]
            .concat(),
        );
        let envelope = Envelope {
            message_id: String::new(),
            idempotency_key: idempotency_key.clone(),
            sender_agency_id: context.agency.id.clone(),
            recipient_agency_id: recipient,
            acting_user: Some(user.clone()),
            purpose_of_use: PurposeOfUse::CoordinationOfCare as i32,
            case_reference: String::new(),
            form_kind: FormKind::HelpRequest as i32,
            confidentiality: ConfidentialityLabel::Restricted as i32,
            created_at: None,
            in_reply_to: String::new(),
            payload: Some(Payload {
                form: Some(Form::HelpRequest(help_request)),
            }),
            linked_referrals: Vec::new(),
            view_sections: Vec::new(),
        };

        let row = send_tracked(
            context,
            &user,
            envelope,
            &request_sha256,
            "a different help request",
        )
        .await?;
        Ok(SubmitHelpRequestResponse {
            message_id: row.message_id.unwrap_or_default(),
            state: row.delivery_state as i32,
        })
    }

    /// Whether this user may see a message of the agency's (the extension decides: at the
    /// commission, a case's messages are its curator's).
    async fn visible(&self, user: &ActingUser, envelope: &Envelope) -> AgencyResult<bool> {
        if kept_from(user, &self.context.agency.id, envelope) {
            return Ok(false);
        }
        match &self.context.extension {
            Some(extension) => Ok(extension
                .may_see(&AgencyHost::new(self.context.clone()), user, envelope)
                .await?),
            None => Ok(true),
        }
    }

    async fn list_inbox(
        &self,
        user: &ActingUser,
        request: &ListInboxRequest,
    ) -> AgencyResult<ListInboxResponse> {
        let kind = form_kind_filter(request.form_kind)?;
        let page = Page::from_request(request.page_size, &request.page_token)?;
        let (rows, next) = self.context.store.list_inbox(kind, &page).await?;
        let mut shown = Vec::with_capacity(rows.len());
        for row in rows {
            if self.visible(user, &row.envelope).await? {
                shown.push(row);
            }
        }
        let items = shown
            .into_iter()
            .map(|row| {
                let sender = self.context.directory.agency(&row.sender_agency_id);
                let (name_kk, name_ru) = match sender {
                    Some(a) => (a.name_kk.clone(), a.name_ru.clone()),
                    // The gateway's own messages (deadline alerts).
                    None if row.sender_agency_id == GATEWAY_SENDER_ID => {
                        (GATEWAY_NAME_KK.to_owned(), GATEWAY_NAME_RU.to_owned())
                    }
                    None => (String::new(), String::new()),
                };
                InboxItem {
                    sender_name_kk: name_kk,
                    sender_name_ru: name_ru,
                    summary: summary(&row.envelope),
                    message_id: row.message_id,
                    sender_agency_id: row.sender_agency_id,
                    form_kind: row.form_kind as i32,
                    received_at: Some(time::to_proto(row.received_at)),
                    status: row.referral_status as i32,
                }
            })
            .collect();
        Ok(ListInboxResponse {
            items,
            next_page_token: next.map(|c| c.token()).unwrap_or_default(),
        })
    }

    async fn get_message(
        &self,
        user: &ActingUser,
        request: &GetMessageRequest,
    ) -> AgencyResult<ReceivedMessage> {
        let row = self
            .context
            .store
            .received(&request.message_id)
            .await?
            .ok_or_else(|| not_found("no message with this id in this agency's inbox"))?;
        if !self.visible(user, &row.envelope).await? {
            return Err(not_found("no message with this id in this agency's inbox"));
        }
        let decision = match row.form_kind {
            FormKind::HelpRequest => self
                .context
                .store
                .decision_for(&row.message_id)
                .await?
                .map(|d| d.decision),
            _ => decision_of(&row.envelope).cloned(),
        };
        Ok(ReceivedMessage {
            envelope: Some(row.envelope),
            received_at: Some(time::to_proto(row.received_at)),
            status: row.referral_status as i32,
            decision,
        })
    }

    async fn list_sent(
        &self,
        user: &ActingUser,
        request: &ListSentRequest,
    ) -> AgencyResult<ListSentResponse> {
        let kind = form_kind_filter(request.form_kind)?;
        let page = Page::from_request(request.page_size, &request.page_token)?;
        let (rows, next) = self.context.store.list_sent(kind, &page).await?;
        let mut shown = Vec::with_capacity(rows.len());
        for row in rows {
            if self.visible(user, &row.envelope).await? {
                shown.push(row);
            }
        }
        let items = shown
            .into_iter()
            .map(|row| SentItem {
                summary: summary(&row.envelope),
                message_id: row.message_id.unwrap_or_default(),
                recipient_agency_id: row.recipient_agency_id,
                form_kind: row.form_kind as i32,
                sent_at: row.sent_at.map(time::to_proto),
                state: row.delivery_state as i32,
                status: row.referral_status as i32,
            })
            .collect();
        Ok(ListSentResponse {
            items,
            next_page_token: next.map(|c| c.token()).unwrap_or_default(),
        })
    }

    async fn get_sent_message(
        &self,
        user: &ActingUser,
        request: &GetSentMessageRequest,
    ) -> AgencyResult<SentMessage> {
        let context = &self.context;
        let message_id = request.message_id.as_str();
        let mut row = context
            .store
            .sent_by_message_id(message_id)
            .await?
            .ok_or_else(|| {
                not_found("no message with this id among this agency's sent messages")
            })?;
        if !self.visible(user, &row.envelope).await? {
            return Err(not_found(
                "no message with this id among this agency's sent messages",
            ));
        }
        // Live state from the gateway when it answers; the stored state otherwise.
        match context.gateway.delivery_status(message_id).await {
            Ok(live) => {
                if let Some(updated) = context
                    .store
                    .record_live_state(message_id, &live, context.clock.now())
                    .await?
                {
                    row = updated;
                }
            }
            Err(failure) => tracing::warn!(
                message_id,
                code = ?failure.code(),
                "no live delivery status from the gateway; answering from the store"
            ),
        }
        Ok(SentMessage {
            envelope: Some(row.envelope),
            state: row.delivery_state as i32,
            status: row.referral_status as i32,
            answer: row.answer,
        })
    }
}

#[tonic::async_trait]
impl AgencyStaff for StaffApi {
    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        let user = acting_user(&request)?;
        Ok(Response::new(WhoAmIResponse {
            user: Some(user),
            agency: Some(self.context.agency.to_proto()),
        }))
    }

    async fn list_staff(
        &self,
        request: Request<ListStaffRequest>,
    ) -> Result<Response<ListStaffResponse>, Status> {
        acting_user(&request)?;
        Ok(Response::new(self.list_staff(request.get_ref())?))
    }

    async fn submit_help_request(
        &self,
        request: Request<SubmitHelpRequestRequest>,
    ) -> Result<Response<SubmitHelpRequestResponse>, Status> {
        let user = acting_user(&request)?;
        let response = self.submit_help_request(user, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn list_inbox(
        &self,
        request: Request<ListInboxRequest>,
    ) -> Result<Response<ListInboxResponse>, Status> {
        let user = acting_user(&request)?;
        Ok(Response::new(
            self.list_inbox(&user, request.get_ref()).await?,
        ))
    }

    async fn get_message(
        &self,
        request: Request<GetMessageRequest>,
    ) -> Result<Response<ReceivedMessage>, Status> {
        let user = acting_user(&request)?;
        Ok(Response::new(
            self.get_message(&user, request.get_ref()).await?,
        ))
    }

    async fn list_sent(
        &self,
        request: Request<ListSentRequest>,
    ) -> Result<Response<ListSentResponse>, Status> {
        let user = acting_user(&request)?;
        Ok(Response::new(
            self.list_sent(&user, request.get_ref()).await?,
        ))
    }

    async fn get_sent_message(
        &self,
        request: Request<GetSentMessageRequest>,
    ) -> Result<Response<SentMessage>, Status> {
        let user = acting_user(&request)?;
        Ok(Response::new(
            self.get_sent_message(&user, request.get_ref()).await?,
        ))
    }

    async fn read_shared_case(
        &self,
        request: Request<ReadSharedCaseRequest>,
    ) -> Result<Response<CaseView>, Status> {
        let user = acting_user(&request)?;
        let view = consult::read_shared_case(&self.context, user, request.into_inner()).await?;
        Ok(Response::new(view))
    }

    async fn consult(
        &self,
        request: Request<ConsultRequest>,
    ) -> Result<Response<ConsultResponse>, Status> {
        let user = acting_user(&request)?;
        let response = consult::consult(&self.context, user, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn answer_consultation(
        &self,
        request: Request<AnswerConsultationRequest>,
    ) -> Result<Response<AnswerConsultationResponse>, Status> {
        let user = acting_user(&request)?;
        let response =
            consult::answer_consultation(&self.context, user, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn decide_help_request(
        &self,
        request: Request<DecideHelpRequestRequest>,
    ) -> Result<Response<DecideHelpRequestResponse>, Status> {
        let user = acting_user(&request)?;
        let response = commission::decide(&self.context, user, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn answer_information_request(
        &self,
        request: Request<AnswerInformationRequestRequest>,
    ) -> Result<Response<AnswerInformationRequestResponse>, Status> {
        let user = acting_user(&request)?;
        let response = replies::answer(&self.context, user, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn report_action_progress(
        &self,
        request: Request<ReportActionProgressRequest>,
    ) -> Result<Response<ReportActionProgressResponse>, Status> {
        let user = acting_user(&request)?;
        let response = replies::report_progress(&self.context, user, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn list_deadlines(
        &self,
        request: Request<ListDeadlinesRequest>,
    ) -> Result<Response<ListDeadlinesResponse>, Status> {
        let user = acting_user(&request)?;
        let request = request.into_inner();
        deadlines::check_user_id(&request.responsible_user_id)?;
        let response = deadlines::list(&self.context, &user, request).await?;
        Ok(Response::new(response))
    }

    async fn deadline_overview(
        &self,
        request: Request<DeadlineOverviewRequest>,
    ) -> Result<Response<DeadlineOverviewResponse>, Status> {
        acting_user(&request)?;
        let response = deadlines::overview(&self.context, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn list_overdue(
        &self,
        request: Request<ListOverdueRequest>,
    ) -> Result<Response<ListDeadlinesResponse>, Status> {
        let user = acting_user(&request)?;
        let response = deadlines::overdue(&self.context, &user, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    type WatchDeadlinesStream = deadlines::AlertStream;

    async fn watch_deadlines(
        &self,
        request: Request<WatchDeadlinesRequest>,
    ) -> Result<Response<Self::WatchDeadlinesStream>, Status> {
        let user = acting_user(&request)?;
        let request = request.into_inner();
        deadlines::check_user_id(&request.responsible_user_id)?;
        let stream = deadlines::watch(&self.context, &user, request).await?;
        Ok(Response::new(stream))
    }
}

/// Whether a sent report must stay hidden from this user of the sending agency: a help request
/// that implicates this agency's own director is seen only by the staff member who sent it, so
/// that the director never sees it here either (M:2876-2882).
fn kept_from(user: &ActingUser, own_agency: &str, envelope: &Envelope) -> bool {
    let Some(Form::HelpRequest(k)) = envelope.payload.as_ref().and_then(|p| p.form.as_ref()) else {
        return false;
    };
    let implicates_us = k
        .circumstances
        .as_ref()
        .is_some_and(|c| c.implicated_director_agency_id.trim() == own_agency);
    let author = envelope.acting_user.as_ref().map(|a| a.user_id.as_str());
    implicates_us && author != Some(user.user_id.as_str())
}

/// Stores a new outgoing message as pending, hands it to the gateway and records the answer:
/// the one path of every message an agency's staff start (help requests, consultations and
/// their answers). A retry with the same key returns the stored message; a key reused for other
/// content is refused; a message the gateway refuses is forgotten.
pub(crate) async fn send_tracked(
    context: &Context,
    user: &ActingUser,
    envelope: Envelope,
    request_sha256: &str,
    what: &str,
) -> AgencyResult<SentRow> {
    let idempotency_key = envelope.idempotency_key.clone();
    // Written with the pending rows arriving at the same moment, in one transaction
    // (`group_commit`); durable before the gateway is called.
    let (reply, stored) = oneshot::channel();
    context
        .pending_rows
        .submit(Waiting {
            request: PendingRequest {
                idempotency_key: idempotency_key.clone(),
                request_sha256: request_sha256.to_owned(),
                acting_user_id: user.user_id.clone(),
                envelope,
                now: context.clock.now(),
                trace_context: referral_core::trace_context::current_traceparent(),
            },
            reply,
        })
        .map_err(|_| ServiceError::Unavailable("the service is stopping".into()))?;
    let row = stored
        .await
        .map_err(|_| internal(anyhow::anyhow!("the message was not stored")))??;
    if row.request_sha256 != request_sha256 {
        return Err(ServiceError::AlreadyExists(format!(
            "this idempotency key was already used for {what}"
        ))
        .into());
    }
    match row.message_id {
        // Sent before and acknowledged: the same message.
        Some(_) => Ok(row),
        None => match push(context, &row).await? {
            Pushed::Sent(row) => Ok(*row),
            Pushed::Failed(failure) => {
                if !matches!(failure, crate::gateway_link::GatewayFailure::Unreachable(_)) {
                    // Refused: nothing stays stored.
                    context.store.forget_pending(&idempotency_key).await?;
                }
                Err(failure_error(failure, SUBMIT_RETRY_HINT))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_requests_come_from_the_referring_kinds_in_their_own_roles() {
        assert!(may_submit_help_request(
            AgencyKind::School,
            Role::SchoolDirector
        ));
        assert!(may_submit_help_request(
            AgencyKind::Ngo,
            Role::NgoCaseManager
        ));
        assert!(may_submit_help_request(
            AgencyKind::Police,
            Role::PoliceJuvenileInspector
        ));
        // The commission does not refer to itself.
        assert!(!may_submit_help_request(
            AgencyKind::Commission,
            Role::CommissionSecretary
        ));
        // A role of another kind does not count.
        assert!(!may_submit_help_request(
            AgencyKind::School,
            Role::NgoCaseManager
        ));
    }
}
