//! The police's and health workers' forms (investigation update, preventive registration,
//! health notice) and the gateway's own deadline alert, each decoded from arbitrary bytes and
//! checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// `Payload` fields: deadline_alert, investigation_update, health_notice,
/// preventive_registration.
const FIELDS: [u32; 4] = [13, 17, 18, 25];

fuzz_target!(|data: &[u8]| referral_fuzz::form_family(&FIELDS, data));
