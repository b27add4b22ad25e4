//! What every fuzz target shares: the demo district, a form decoded from arbitrary bytes and
//! wrapped in an envelope a fitting sender would send, and the checks the gateway and the
//! recipient's service run on it. A target passes when none of them panics; the checks may (and
//! mostly do) refuse the input.

use std::sync::LazyLock;

use jiff::Timestamp;
use prost::Message as _;
use referral_core::directory::{AgencyEntry, Directory};
use referral_gateway::{
    fuzzing,
    policy::{SECTIONS, Sections},
    views::ViewFilter,
};
use referral_proto::v1::{
    ActingUser, ConfidentialityLabel, Envelope, FormKind, Payload, PurposeOfUse, Role,
};

/// The demo district the tests and `referral-hub up` run.
pub static DIRECTORY: LazyLock<Directory> = LazyLock::new(|| {
    Directory::parse(include_str!("../../deploy/demo-district.toml")).expect("the demo district")
});

static VIEWS: LazyLock<ViewFilter> = LazyLock::new(|| ViewFilter::new().expect("the view filter"));

/// The instant forms are judged at: a Friday morning in Almaty, as in the tests.
pub fn now() -> Timestamp {
    "2026-11-20T04:30:00Z".parse().expect("a valid instant")
}

/// The `Payload` whose oneof field `field` holds the message encoded in `body` (`None` when
/// `body` is not a valid encoding of that form).
pub fn payload(field: u32, body: &[u8]) -> Option<Payload> {
    let mut bytes = Vec::with_capacity(body.len() + 8);
    prost::encoding::encode_key(
        field,
        prost::encoding::WireType::LengthDelimited,
        &mut bytes,
    );
    prost::encoding::encode_varint(body.len() as u64, &mut bytes);
    bytes.extend_from_slice(body);
    Payload::decode(bytes.as_slice()).ok()
}

/// A sender and a recipient the routing table lets exchange `kind` (the first pair found), or
/// school 1 and the commission.
fn parties(kind: FormKind) -> (&'static AgencyEntry, &'static AgencyEntry) {
    let agencies = &DIRECTORY.agencies;
    for from in agencies {
        for to in agencies {
            let probe = Envelope {
                form_kind: kind as i32,
                ..Envelope::default()
            };
            if from.id != to.id && fuzzing::routed(&probe, from, to) {
                return (from, to);
            }
        }
    }
    let school = DIRECTORY.agency("school-1").expect("school-1");
    let commission = DIRECTORY.agency("commission").expect("the commission");
    (school, commission)
}

/// A well-formed envelope around `payload`, from a sender that may send its form, with
/// `in_reply_to` and `case_reference` as given (the forms that answer need one).
pub fn wrap(payload: Payload, in_reply_to: &str, case_reference: &str) -> Envelope {
    let kind = payload
        .form
        .as_ref()
        .map(|f| referral_agency::forms::form_kind_of(f))
        .unwrap_or(FormKind::Unspecified);
    let (from, to) = parties(kind);
    let user = DIRECTORY
        .staff
        .iter()
        .find(|u| u.agency == from.id)
        .map(|u| {
            (
                u.user_id.clone(),
                referral_core::directory::parse_role(&u.role),
            )
        })
        .unwrap_or_default();
    Envelope {
        message_id: String::new(),
        idempotency_key: "fuzz-0001".into(),
        sender_agency_id: from.id.clone(),
        recipient_agency_id: to.id.clone(),
        acting_user: Some(ActingUser {
            user_id: user.0,
            agency_id: from.id.clone(),
            role: user.1.unwrap_or(Role::Unspecified) as i32,
            display_name: String::new(),
        }),
        purpose_of_use: PurposeOfUse::CareManagement as i32,
        case_reference: case_reference.into(),
        form_kind: kind as i32,
        confidentiality: ConfidentialityLabel::Restricted as i32,
        created_at: None,
        in_reply_to: in_reply_to.into(),
        payload: Some(payload),
        linked_referrals: Vec::new(),
        view_sections: Vec::new(),
    }
}

/// Runs on `env` every check a send and a delivery run without a store: the gateway's shape and
/// form checks (as sent by the envelope's acting agency when the directory knows it), every
/// section's view of the payload, and the recipient's inbox checks and summary. `sections`
/// picks the view's sections (a bit per section).
pub fn exercise(mut env: Envelope, sections: u16) {
    let caller = env
        .acting_user
        .as_ref()
        .and_then(|u| DIRECTORY.agency(&u.agency_id))
        .or_else(|| DIRECTORY.agency(&env.sender_agency_id))
        .or_else(|| DIRECTORY.agency("school-1"))
        .expect("a sender");
    let recipient = DIRECTORY
        .agency(&env.recipient_agency_id)
        .unwrap_or(caller)
        .id
        .clone();
    let _ = fuzzing::check_shape(&env);
    let _ = fuzzing::check_form(&mut env, caller, &recipient, now(), &DIRECTORY);
    let allowed: Sections = SECTIONS
        .iter()
        .enumerate()
        .filter(|(i, _)| sections & (1 << i) != 0)
        .map(|(_, s)| *s)
        .collect();
    if let Some(view) = fuzzing::view(&VIEWS, &env, allowed, &recipient) {
        // What the recipient is given never holds more than what was sent.
        assert!(view.encoded_len() <= env.payload.as_ref().map_or(0, |p| p.encoded_len()));
        env.payload = Some(view);
    }
    let _ = referral_agency::fuzzing::check_delivered(&env, &recipient);
    let _ = referral_agency::fuzzing::summary(&env);
    let _ = referral_agency::fuzzing::received_status(&env);
}

/// A target over one family of forms: the first byte picks the form (its `Payload` field among
/// `fields`) and a view, the rest is the form's encoding; the envelope around it is well formed,
/// so the form's own checks run.
pub fn form_family(fields: &[u32], data: &[u8]) {
    let [pick, view, body @ ..] = data else {
        return;
    };
    let field = fields[usize::from(*pick) % fields.len()];
    let Some(payload) = payload(field, body) else {
        return;
    };
    let reply = if pick & 0x80 != 0 {
        "0190f0a0-0000-7000-8000-000000000001"
    } else {
        ""
    };
    let case = if pick & 0x40 != 0 {
        "KZ-ALM-2026-0001"
    } else {
        ""
    };
    exercise(
        wrap(payload, reply, case),
        u16::from(*view) << 4 | u16::from(*view),
    );
}
