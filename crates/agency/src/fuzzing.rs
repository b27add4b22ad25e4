//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz, a workspace of its own): what an
//! agency service does with an envelope the gateway delivers before it stores it. Not an API:
//! hidden from the docs, called by nothing in the workspace.

use referral_core::FieldViolations;
use referral_proto::v1::{Envelope, ReferralStatus};

/// The inbox's checks of a delivered envelope, for an agency whose id is `own_id`.
pub fn check_delivered(envelope: &Envelope, own_id: &str) -> FieldViolations {
    crate::inbox::check_envelope(envelope, own_id)
}

/// The one-line summary an inbox lists a message with.
pub fn summary(envelope: &Envelope) -> String {
    crate::forms::summary(envelope)
}

/// The status a message has as it arrives.
pub fn received_status(envelope: &Envelope) -> ReferralStatus {
    crate::forms::received_status(envelope)
}
