//! Handing a pending message to the gateway: the one path every outgoing message takes, so that
//! the acknowledgement is always recorded the same way.

use std::sync::Arc;

use referral_core::{ServiceError, trace_context};
use tokio::sync::oneshot;
use tracing::Instrument as _;

use crate::{
    error::{AgencyError, AgencyResult, internal},
    gateway_link::GatewayFailure,
    service::Context,
    store::{
        Waiting,
        sent::{PendingAck, QueuedSend, SentRow},
    },
};

/// At most this many pending rows, or acknowledgements, are written in one transaction.
pub(crate) const OUTGOING_BATCH: usize = 64;

/// The pending-row writer's work: the messages waiting to be stored at this moment, in one
/// transaction ([`Store::write_waiting`](crate::store::Store::write_waiting)).
pub(crate) async fn write_pending_rows(context: Arc<Context>, batch: Vec<QueuedSend>) {
    context
        .store
        .write_waiting(batch, "pending messages", None)
        .await;
}

/// The acknowledgement writer's work: the acknowledgements waiting at this moment, in one
/// transaction ([`Store::write_waiting`](crate::store::Store::write_waiting)).
pub(crate) async fn write_acks(context: Arc<Context>, batch: Vec<PendingAck>) {
    context
        .store
        .write_waiting(batch, "acknowledgements", None)
        .await;
}

/// What became of a message handed to the gateway.
#[derive(Debug)]
pub(crate) enum Pushed {
    /// Acknowledged; the row as now stored, with its message id.
    Sent(Box<SentRow>),
    /// Not acknowledged; the pending row is untouched and the caller decides what to keep.
    Failed(GatewayFailure),
}

/// Sends the envelope of a pending row and, when the gateway acknowledges it, records the message
/// id (and what depends on it) in one transaction.
///
/// The call is a client span in the trace of the request that queued the message (its stored
/// `traceparent`), whether it is pushed at once or later by a retry loop.
pub(crate) async fn push(context: &Context, pending: &SentRow) -> AgencyResult<Pushed> {
    let span = tracing::info_span!(
        "push",
        otel.kind = "client",
        rpc.method = "/referral.v1.Gateway/Send",
        form_kind = pending.form_kind.as_str_name(),
        recipient = %pending.recipient_agency_id,
        trace_id = tracing::field::Empty,
        message_id = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    let parent = pending
        .trace_context
        .as_deref()
        .map(trace_context::stored_context)
        .unwrap_or_default();
    trace_context::continue_trace(&span, parent);
    push_in(context, pending).instrument(span).await
}

async fn push_in(context: &Context, pending: &SentRow) -> AgencyResult<Pushed> {
    let span = tracing::Span::current();
    match context.gateway.send(pending.envelope.clone()).await {
        Ok(ack) => {
            span.record("message_id", ack.message_id.as_str());
            span.record("outcome", if ack.duplicate { "duplicate" } else { "sent" });
            // Recorded with the acknowledgements arriving at the same moment, in one
            // transaction (`group_commit`); a row not recorded stays pending, and is pushed
            // again (the gateway answers a retry with the same message).
            let (reply, recorded) = oneshot::channel();
            context
                .acks
                .submit(Waiting {
                    request: (
                        pending.idempotency_key.clone(),
                        ack.clone(),
                        context.clock.now(),
                    ),
                    reply,
                })
                .map_err(|_| ServiceError::Unavailable("the service is stopping".into()))?;
            let row = recorded
                .await
                .map_err(|_| internal(anyhow::anyhow!("the acknowledgement was not recorded")))??;
            tracing::info!(
                idempotency_key = %pending.idempotency_key,
                message_id = %ack.message_id,
                duplicate = ack.duplicate,
                "message handed to the gateway"
            );
            Ok(Pushed::Sent(Box::new(row)))
        }
        Err(failure) => {
            span.record("outcome", tracing::field::debug(failure.code()));
            tracing::warn!(
                idempotency_key = %pending.idempotency_key,
                code = ?failure.code(),
                "the gateway did not take the message"
            );
            Ok(Pushed::Failed(failure))
        }
    }
}

/// The error a caller sees for a failed push. `retry_hint` tells them what to do when the gateway
/// is not reachable (their pending message is kept).
pub(crate) fn failure_error(failure: GatewayFailure, retry_hint: &str) -> AgencyError {
    match failure {
        // The hub is overloaded: the caller is told so, to back off (the pending row is kept).
        GatewayFailure::Unreachable(status) if status.code() == tonic::Code::ResourceExhausted => {
            AgencyError::GatewayRefused(status)
        }
        GatewayFailure::Unreachable(_) => ServiceError::Unavailable(retry_hint.to_owned()).into(),
        GatewayFailure::Refused(status) => AgencyError::GatewayRefused(status),
        GatewayFailure::Misconfigured(status) => internal(anyhow::anyhow!(
            "the gateway did not accept this agency's credentials ({:?}): check its certificate",
            status.code()
        )),
    }
}
