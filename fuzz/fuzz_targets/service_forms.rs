//! The service forms between schools, institutions and NGOs (service referral and update,
//! safety-meeting notice, the referral log J), each decoded from arbitrary bytes and checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// `Payload` fields: referral_log, service_referral, service_update, safety_meeting_notice.
const FIELDS: [u32; 4] = [3, 19, 20, 21];

fuzz_target!(|data: &[u8]| referral_fuzz::form_family(&FIELDS, data));
