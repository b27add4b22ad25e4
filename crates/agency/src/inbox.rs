//! The inbox (`AgencyInbox.Deliver`): where the gateway hands this agency its messages. Only the
//! gateway gets here ([`crate::auth::GatewayOnly`]); a message id already received is acknowledged
//! as a duplicate and changes nothing. Every form kind is accepted (the gateway routed and
//! validated it); deadline alerts come from the gateway itself, with sender id
//! [`GATEWAY_SENDER_ID`]. A service crate's extension sees each new message inside the receipt's
//! transaction (the commission files answers and progress reports in its case files there).
//!
//! Deliveries arriving together are stored together ([`write_receipts`], group commit): the
//! gateway pushes many messages at once, and one transaction (one `fsync`) for each of them was
//! the agency store's largest cost. A delivery is answered only once its batch committed.

use std::sync::Arc;

use referral_core::{FieldViolations, ServiceError};
use referral_proto::v1::{
    DeliverRequest, DeliverResponse, Envelope, FormKind, agency_inbox_server::AgencyInbox,
};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use crate::{
    error::AgencyResult,
    extension::AgencyExtension,
    forms::{GATEWAY_SENDER_ID, form_kind_of},
    service::Context,
    store::{Waiting, received::PendingReceipt},
};

/// The most deliveries stored in one transaction.
pub(crate) const RECEIPT_BATCH: usize = 64;

/// The inbox writer's work: the deliveries waiting at this moment, in one transaction
/// ([`Store::write_waiting`](crate::store::Store::write_waiting)).
pub(crate) async fn write_receipts(context: Arc<Context>, batch: Vec<PendingReceipt>) {
    let extension = context.extension();
    let hook = extension
        .as_ref()
        .map(|(ext, host)| (ext.as_ref() as &dyn AgencyExtension, host));
    context.store.write_waiting(batch, "deliveries", hook).await;
}

/// The inbox service of one agency.
#[derive(Debug, Clone)]
pub(crate) struct InboxApi {
    context: Arc<Context>,
}

impl InboxApi {
    pub(crate) fn new(context: Arc<Context>) -> Self {
        Self { context }
    }

    async fn deliver(&self, request: DeliverRequest) -> AgencyResult<DeliverResponse> {
        let envelope = request
            .envelope
            .ok_or_else(|| ServiceError::invalid_field("envelope", "required"))?;
        check_envelope(&envelope, &self.context.agency.id).into_result()?;
        let now = self.context.clock.now();
        let message_id = envelope.message_id.clone();
        let sender = envelope.sender_agency_id.clone();
        let form_kind = FormKind::try_from(envelope.form_kind)
            .unwrap_or(FormKind::Unspecified)
            .as_str_name();
        // The extension acts inside the receipt's transaction only: nothing here calls the
        // gateway back while the gateway waits for this answer.
        let (reply, answer) = oneshot::channel();
        self.context
            .receipts
            .submit(Waiting {
                request: (envelope, now),
                reply,
            })
            .map_err(|_| ServiceError::Unavailable("the service is stopping".into()))?;
        // A writer that dropped the batch (a bug it met) stored nothing: the gateway delivers
        // again.
        let duplicate = answer.await.map_err(|_| {
            ServiceError::internal(anyhow::anyhow!("the delivery was not stored"))
        })??;
        // Ids and kinds on the request's span (`referral_core::telemetry::request_span`).
        let span = tracing::Span::current();
        span.record("message_id", message_id.as_str());
        span.record("sender", sender.as_str());
        span.record("form_kind", form_kind);
        span.record("outcome", if duplicate { "duplicate" } else { "received" });
        tracing::info!(
            message_id = %message_id,
            sender = %sender,
            form_kind,
            duplicate,
            "message received"
        );
        Ok(DeliverResponse { duplicate })
    }
}

/// The minimal checks of a delivered envelope: it has an id and a sender, it is for this agency,
/// and its payload is the form its kind says. The gateway validated the form itself.
pub(crate) fn check_envelope(envelope: &Envelope, own_id: &str) -> FieldViolations {
    let mut v = FieldViolations::new();
    if envelope.message_id.trim().is_empty() {
        v.add("envelope.message_id", "required");
    }
    if envelope.sender_agency_id.trim().is_empty() {
        v.add("envelope.sender_agency_id", "required");
    }
    if envelope.recipient_agency_id != own_id {
        v.add("envelope.recipient_agency_id", "must be this agency");
    }
    let kind = FormKind::try_from(envelope.form_kind).unwrap_or(FormKind::Unspecified);
    let form = envelope.payload.as_ref().and_then(|p| p.form.as_ref());
    match form {
        _ if kind == FormKind::Unspecified => v.add("envelope.form_kind", "required"),
        None => v.add("envelope.payload", "required"),
        Some(form) if form_kind_of(form) != kind => {
            v.add("envelope.payload", "must be the form named by form_kind");
        }
        Some(_) => {}
    }
    // Alerts are the gateway's own messages; an agency never sends one.
    if kind == FormKind::DeadlineAlert && envelope.sender_agency_id != GATEWAY_SENDER_ID {
        v.add(
            "envelope.sender_agency_id",
            "a deadline alert comes only from the gateway",
        );
    }
    v
}

#[tonic::async_trait]
impl AgencyInbox for InboxApi {
    async fn deliver(
        &self,
        request: Request<DeliverRequest>,
    ) -> Result<Response<DeliverResponse>, Status> {
        Ok(Response::new(self.deliver(request.into_inner()).await?))
    }
}

#[cfg(test)]
mod tests {
    use referral_proto::v1::{
        ActionAssignment, DeadlineAlert, HelpRequest, HelpRequestDecision, InformationRequest,
        Payload, ReviewMinutes, payload::Form,
    };

    use super::*;

    fn k() -> Envelope {
        Envelope {
            message_id: "0195f0e2-0000-7000-8000-000000000001".into(),
            sender_agency_id: "school-1".into(),
            recipient_agency_id: "commission".into(),
            form_kind: FormKind::HelpRequest as i32,
            payload: Some(Payload {
                form: Some(Form::HelpRequest(HelpRequest::default())),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_well_formed_envelope_for_this_agency_passes() {
        assert!(check_envelope(&k(), "commission").is_empty());
    }

    #[test]
    fn a_wrong_recipient_missing_id_or_mismatched_payload_is_refused() {
        let mut envelope = k();
        envelope.message_id.clear();
        envelope.payload = Some(Payload {
            form: Some(Form::HelpRequestDecision(HelpRequestDecision::default())),
        });
        let v = check_envelope(&envelope, "police-1");
        assert!(v.contains("envelope.message_id"));
        assert!(v.contains("envelope.recipient_agency_id"));
        assert!(v.contains("envelope.payload"));

        let mut envelope = k();
        envelope.form_kind = FormKind::Unspecified as i32;
        assert!(check_envelope(&envelope, "commission").contains("envelope.form_kind"));
    }

    fn alert(sender: &str) -> Envelope {
        Envelope {
            message_id: "0195f0e2-0000-7000-8000-000000000002".into(),
            sender_agency_id: sender.into(),
            recipient_agency_id: "school-1".into(),
            form_kind: FormKind::DeadlineAlert as i32,
            payload: Some(Payload {
                form: Some(Form::DeadlineAlert(DeadlineAlert::default())),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn deadline_alerts_are_accepted_from_the_gateway_only() {
        assert!(check_envelope(&alert("gateway"), "school-1").is_empty());
        assert!(
            check_envelope(&alert("commission"), "school-1").contains("envelope.sender_agency_id")
        );
    }

    #[test]
    fn the_case_messages_are_accepted() {
        let forms = [
            (
                FormKind::ActionAssignment,
                Form::ActionAssignment(ActionAssignment::default()),
            ),
            (
                FormKind::InformationRequest,
                Form::InformationRequest(InformationRequest::default()),
            ),
            (
                FormKind::ReviewMinutes,
                Form::ReviewMinutes(ReviewMinutes::default()),
            ),
        ];
        for (kind, form) in forms {
            let envelope = Envelope {
                form_kind: kind as i32,
                payload: Some(Payload { form: Some(form) }),
                recipient_agency_id: "ngo-1".into(),
                ..k()
            };
            assert!(check_envelope(&envelope, "ngo-1").is_empty(), "{kind:?}");
        }
    }
}
