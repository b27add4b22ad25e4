//! The protection forms (an institution's incident referral, the commission's protection
//! instruction and its acknowledgement), each decoded from arbitrary bytes and checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// `Payload` fields: incident_referral, protection_instruction, instruction_acknowledgement.
const FIELDS: [u32; 3] = [22, 23, 24];

fuzz_target!(|data: &[u8]| referral_fuzz::form_family(&FIELDS, data));
