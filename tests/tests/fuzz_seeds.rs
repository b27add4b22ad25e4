//! The fuzz targets' seed corpora (`fuzz/corpus/<target>/seed-*`): a valid K (in an envelope for
//! `envelope`, as a payload for `case_forms`), the commission's decision request, and every form
//! of each family as its empty encoding. `REGENERATE_FUZZ_SEEDS=1` writes them; otherwise this
//! test checks that the committed seeds are what the generator makes, so that they never rot
//! (a K that no longer validates at the targets' instant fails here, not silently in the fuzzer).

use std::path::PathBuf;

use prost::Message as _;
use referral_core::{FieldViolations, validate};
use referral_proto::v1::{
    DecideHelpRequestRequest, OpenCase, Role, decide_help_request_request::Outcome,
};

/// The instant the fuzz targets judge forms at (`fuzz/src/lib.rs`).
const FUZZ_NOW: &str = "2026-11-20T04:30:00Z";

/// Each target's `Payload` fields, in the order of its `FIELDS` (see `fuzz/fuzz_targets/`).
const FAMILIES: [(&str, &[u32]); 4] = [
    ("case_forms", &[1, 2, 7, 8, 9, 10, 11, 12, 14, 15]),
    ("service_forms", &[3, 19, 20, 21]),
    ("protection_forms", &[22, 23, 24]),
    ("police_health_forms", &[13, 17, 18, 25]),
];

/// The first byte of a form-family input picking `fields[index]` (flags: 0x80 in reply to a
/// message, 0x40 with a case reference).
fn pick(index: usize, len: usize, flags: u8) -> u8 {
    let base = usize::from(flags);
    (base + (index + len - base % len) % len) as u8
}

fn seeds() -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let now: jiff::Timestamp = FUZZ_NOW.parse().unwrap();
    let tz = referral_tests::almaty();
    let k = validate::sample_help_request(now.to_zoned(tz.clone()).date());
    let mut v = FieldViolations::new();
    validate::help_request(&k, now, &tz, &mut v, "k");
    assert!(
        v.is_empty(),
        "the sample K validates at the targets' instant: {v:?}"
    );
    let mut seeds = Vec::new();
    let env = referral_tests::envelope(
        "school-1",
        "director",
        Role::SchoolDirector,
        "commission",
        "seed-k-0001",
        k.clone(),
    );
    let mut bytes = vec![0xff, 0x0f];
    bytes.extend(env.encode_to_vec());
    seeds.push((root.join("envelope/seed-k"), bytes));
    let mut bytes = vec![pick(0, 10, 0), 0xff];
    bytes.extend(k.encode_to_vec());
    seeds.push((root.join("case_forms/seed-k"), bytes));
    let decide = DecideHelpRequestRequest {
        message_id: "0190f0a0-0000-7000-8000-000000000001".into(),
        idempotency_key: "seed-decision-0001".into(),
        outcome: Some(Outcome::OpenCase(OpenCase {
            curator_user_id: "curator-1".into(),
        })),
    };
    let mut bytes = vec![0xff];
    bytes.extend(decide.encode_to_vec());
    seeds.push((root.join("case_forms/seed-decide"), bytes));
    for (target, fields) in FAMILIES {
        for (i, field) in fields.iter().enumerate() {
            for flags in [0x00, 0xc0] {
                seeds.push((
                    root.join(format!("{target}/seed-empty-{field}-{flags:02x}")),
                    vec![pick(i, fields.len(), flags), 0x0f],
                ));
            }
        }
    }
    seeds
}

#[test]
fn the_committed_fuzz_seeds_are_the_generated_ones() {
    let regenerate = std::env::var_os("REGENERATE_FUZZ_SEEDS").is_some();
    for (path, bytes) in seeds() {
        if regenerate {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        } else {
            let committed = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (REGENERATE_FUZZ_SEEDS=1)", path.display()));
            assert_eq!(
                committed,
                bytes,
                "{} is stale (REGENERATE_FUZZ_SEEDS=1)",
                path.display()
            );
        }
    }
}
