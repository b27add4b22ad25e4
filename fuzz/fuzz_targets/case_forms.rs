//! The case forms (K and its decision, information requests and responses L and M, action
//! assignments and progress, review minutes, consultations, the incident summary) and the
//! commission's decision request, each decoded from arbitrary bytes and checked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use referral_core::{FieldViolations, validate};
use referral_proto::v1::DecideHelpRequestRequest;

/// `Payload` fields: help_request, help_request_decision, incident_summary, information_request,
/// information_response, action_assignment, action_progress, review_minutes, consultation,
/// consultation_answer.
const FIELDS: [u32; 10] = [1, 2, 7, 8, 9, 10, 11, 12, 14, 15];

fuzz_target!(|data: &[u8]| {
    if let [0xff, bytes @ ..] = data {
        // The commission's staff API: deciding a K.
        if let Ok(req) = DecideHelpRequestRequest::decode(bytes) {
            let mut v = FieldViolations::new();
            validate::decide_help_request(&req, &mut v);
        }
        return;
    }
    referral_fuzz::form_family(&FIELDS, data);
});
