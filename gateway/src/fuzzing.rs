//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz, a workspace of its own): the checks
//! the gateway's `Send` runs on an envelope before it touches the store, and the view filter.
//! Not an API: hidden from the docs, called by nothing in the workspace.

use jiff::Timestamp;
use referral_core::{
    FieldViolations, ServiceResult,
    directory::{AgencyEntry, Directory},
};
use referral_proto::v1::{Envelope, FormKind};

use crate::{api, policy::Sections, routing, views::ViewFilter};

/// Step 1 of `Send`: the envelope's shape.
pub fn check_shape(env: &Envelope) -> ServiceResult<()> {
    api::check_shape(env)
}

/// Step 4 of `Send`: every field of the form, judged in `caller`'s district on `now`, for
/// `recipient_id`. `env`'s case reference is filled in from the payload as `Send` does.
pub fn check_form(
    env: &mut Envelope,
    caller: &AgencyEntry,
    recipient_id: &str,
    now: Timestamp,
    directory: &Directory,
) -> FieldViolations {
    api::check_form(env, caller, recipient_id, now, directory)
}

/// Whether the routing table lets `caller` send the envelope's form to `recipient`.
pub fn routed(env: &Envelope, caller: &AgencyEntry, recipient: &AgencyEntry) -> bool {
    let form = FormKind::try_from(env.form_kind).unwrap_or(FormKind::Unspecified);
    routing::find_rule(
        caller.kind(),
        form,
        recipient.kind(),
        caller.district == recipient.district,
    )
    .is_some()
}

/// The envelope's payload as `viewer_agency` would receive it with `allowed` sections (the view
/// `Send` stores for a recipient that may not see the whole form).
pub fn view(
    filter: &ViewFilter,
    env: &Envelope,
    allowed: Sections,
    viewer_agency: &str,
) -> Option<referral_proto::v1::Payload> {
    let payload = env.payload.as_ref()?;
    Some(
        filter
            .filter(payload, "referral.v1.Payload", allowed, viewer_agency)
            .expect("a decoded payload re-encodes and decodes"),
    )
}
