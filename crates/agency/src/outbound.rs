//! Handing a pending message to the gateway: the one path every outgoing message takes, so that
//! the acknowledgement is always recorded the same way.

use referral_core::ServiceError;

use crate::{
    error::{AgencyError, AgencyResult, internal},
    gateway_link::GatewayFailure,
    service::Context,
    store::sent::SentRow,
};

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
pub(crate) async fn push(context: &Context, pending: &SentRow) -> AgencyResult<Pushed> {
    match context.gateway.send(pending.envelope.clone()).await {
        Ok(ack) => {
            let row = context
                .store
                .mark_sent(&pending.idempotency_key, &ack, context.clock.now())
                .await?;
            tracing::info!(
                idempotency_key = %pending.idempotency_key,
                message_id = %ack.message_id,
                duplicate = ack.duplicate,
                "message handed to the gateway"
            );
            Ok(Pushed::Sent(Box::new(row)))
        }
        Err(failure) => {
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
        GatewayFailure::Unreachable(_) => ServiceError::Unavailable(retry_hint.to_owned()).into(),
        GatewayFailure::Refused(status) => AgencyError::GatewayRefused(status),
        GatewayFailure::Misconfigured(status) => internal(anyhow::anyhow!(
            "the gateway did not accept this agency's credentials ({:?}): check its certificate",
            status.code()
        )),
    }
}
