//! The agency's client of the gateway: mutual TLS with the agency's own certificate, checking the
//! gateway's certificate name, over one lazily connected channel (the agency starts even when the
//! gateway is down; calls then fail as [`GatewayFailure::Unreachable`]).

use std::time::Duration;

use referral_core::{
    limits::outbound_request,
    pki::{ComponentIdentity, TlsMaterial},
    server::MAX_MESSAGE_BYTES,
    tls::client_tls,
    trace_context::{TracedChannel, traced},
};
use referral_proto::v1::{
    CaseView, DeliveryStatus, Envelope, GetDeliveryStatusRequest, ReadCaseRequest,
    RecordAgencyClockEventRequest, RecordAgencyClockEventResponse, RecordCaseEventRequest,
    RecordCaseEventResponse, SendRequest, SendResponse, deadlines_client::DeadlinesClient,
    gateway_client::GatewayClient,
};
use tonic::{Code, Status, transport::Endpoint};

use crate::error::BuildError;

/// How long connecting to the gateway may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call to the gateway may take; a call made while serving one carries the smaller
/// of this and what is left of the served call's deadline (`limits::outbound_request`).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a gateway call did not succeed.
#[derive(Debug)]
pub enum GatewayFailure {
    /// Not reachable, timed out or failing internally: trying again later may work.
    Unreachable(Status),
    /// The gateway answered and refused the request (invalid, not allowed, key reused): trying
    /// again will not help. The status goes back to the caller.
    Refused(Status),
    /// The gateway did not accept this agency's own credentials: a deployment fault, logged and
    /// reported to the caller as an internal error.
    Misconfigured(Status),
}

impl GatewayFailure {
    pub(crate) fn classify(status: Status) -> Self {
        match status.code() {
            Code::InvalidArgument
            | Code::PermissionDenied
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::NotFound
            | Code::OutOfRange => Self::Refused(status),
            Code::Unauthenticated => Self::Misconfigured(status),
            _ => Self::Unreachable(status),
        }
    }

    /// The caller's error for a message the gateway did not take: its refusal passed on as the
    /// gateway gave it (with field details), `UNAVAILABLE` when it cannot be reached (a queued
    /// message waits), `INTERNAL` when it does not accept this agency's own credentials.
    pub fn into_service_error(self) -> referral_core::ServiceError {
        use referral_core::ServiceError;
        match self {
            Self::Refused(status) => ServiceError::Refused(status),
            // The hub is overloaded: passed on, so that the caller backs off.
            Self::Unreachable(status) if status.code() == Code::ResourceExhausted => {
                ServiceError::Refused(status)
            }
            Self::Unreachable(_) => {
                ServiceError::Unavailable("the gateway cannot be reached: try again".into())
            }
            Self::Misconfigured(status) => ServiceError::internal(anyhow::anyhow!(
                "the gateway did not accept this agency's credentials ({:?})",
                status.code()
            )),
        }
    }

    /// The gRPC code the gateway (or the channel) answered with.
    pub fn code(&self) -> Code {
        match self {
            Self::Unreachable(s) | Self::Refused(s) | Self::Misconfigured(s) => s.code(),
        }
    }
}

/// A cheap, cloneable handle to the gateway.
#[derive(Debug, Clone)]
pub(crate) struct GatewayLink {
    client: GatewayClient<TracedChannel>,
    deadlines: DeadlinesClient<TracedChannel>,
}

impl GatewayLink {
    /// Prepares the channel; nothing is dialled until the first call.
    pub(crate) fn new(endpoint: &str, tls: &TlsMaterial) -> Result<Self, BuildError> {
        let bad_endpoint = |source| BuildError::GatewayEndpoint {
            endpoint: endpoint.to_owned(),
            source,
        };
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(bad_endpoint)?
            .tls_config(client_tls(tls, &ComponentIdentity::Gateway))
            .map_err(bad_endpoint)?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .connect_lazy();
        // Every call carries the caller's trace context.
        let channel = traced(channel);
        let client = GatewayClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        // The call timeout covers a call until its response headers, so a stream of deadline
        // alerts lasts as long as the caller keeps it.
        let deadlines = DeadlinesClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self { client, deadlines })
    }

    /// Hands a message to the gateway.
    pub(crate) async fn send(&self, envelope: Envelope) -> Result<SendResponse, GatewayFailure> {
        self.client
            .clone()
            .send(outbound_request(
                SendRequest {
                    envelope: Some(envelope),
                },
                CALL_TIMEOUT,
            ))
            .await
            .map(tonic::Response::into_inner)
            .map_err(GatewayFailure::classify)
    }

    /// Where a message this agency sent is, and the recipient's answer.
    pub(crate) async fn delivery_status(
        &self,
        message_id: &str,
    ) -> Result<DeliveryStatus, GatewayFailure> {
        self.client
            .clone()
            .get_delivery_status(outbound_request(
                GetDeliveryStatusRequest {
                    message_id: message_id.to_owned(),
                },
                CALL_TIMEOUT,
            ))
            .await
            .map(tonic::Response::into_inner)
            .map_err(GatewayFailure::classify)
    }

    /// Reads a case through the gateway, as the request's acting user.
    pub(crate) async fn read_case(
        &self,
        request: ReadCaseRequest,
    ) -> Result<CaseView, GatewayFailure> {
        self.client
            .clone()
            .read_case(outbound_request(request, CALL_TIMEOUT))
            .await
            .map(tonic::Response::into_inner)
            .map_err(GatewayFailure::classify)
    }

    /// A client of the gateway's API on the same channel (the commission's case-file calls:
    /// filtered reads, grants, the disclosure history).
    pub fn client(&self) -> GatewayClient<TracedChannel> {
        self.client.clone()
    }

    /// Records a case event (commission only: the gateway checks).
    pub(crate) async fn record_case_event(
        &self,
        request: RecordCaseEventRequest,
    ) -> Result<RecordCaseEventResponse, GatewayFailure> {
        self.client
            .clone()
            .record_case_event(outbound_request(request, CALL_TIMEOUT))
            .await
            .map(tonic::Response::into_inner)
            .map_err(GatewayFailure::classify)
    }

    /// Records one of this agency's clock events (the gateway checks who may record which).
    pub(crate) async fn record_agency_clock_event(
        &self,
        request: RecordAgencyClockEventRequest,
    ) -> Result<RecordAgencyClockEventResponse, GatewayFailure> {
        self.client
            .clone()
            .record_agency_clock_event(outbound_request(request, CALL_TIMEOUT))
            .await
            .map(tonic::Response::into_inner)
            .map_err(GatewayFailure::classify)
    }

    /// A client of the gateway's deadline service, on the same channel.
    pub(crate) fn deadlines(&self) -> DeadlinesClient<TracedChannel> {
        self.deadlines.clone()
    }
}
