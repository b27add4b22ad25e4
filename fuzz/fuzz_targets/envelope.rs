//! An envelope decoded from arbitrary bytes, through every check of a send and a delivery.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use referral_proto::v1::Envelope;

fuzz_target!(|data: &[u8]| {
    let [view_low, view_high, bytes @ ..] = data else {
        return;
    };
    if let Ok(env) = Envelope::decode(bytes) {
        referral_fuzz::exercise(env, u16::from_le_bytes([*view_low, *view_high]));
    }
});
