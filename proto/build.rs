//! Compiles `referral/v1/*.proto` with protox (a protobuf compiler in pure Rust), so that a
//! fresh machine needs nothing but cargo: no system `protoc`.

use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "referral/v1/sensitivity.proto",
    "referral/v1/common.proto",
    "referral/v1/forms.proto",
    "referral/v1/cases.proto",
    "referral/v1/services.proto",
    "referral/v1/protection.proto",
    "referral/v1/deadlines.proto",
    "referral/v1/disclosure.proto",
    "referral/v1/case_files.proto",
    "referral/v1/envelope.proto",
    "referral/v1/gateway.proto",
    "referral/v1/agency.proto",
    "referral/v1/police.proto",
    "referral/v1/health.proto",
    "referral/v1/school.proto",
    "referral/v1/school_referrals.proto",
    "referral/v1/ngo.proto",
    "referral/v1/safeguarding.proto",
    "referral/v1/residential.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=referral");
    let mut compiler = protox::Compiler::new(["."])?;
    compiler.include_imports(true).open_files(PROTOS)?;
    let descriptors = compiler.file_descriptor_set();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    // The descriptor set feeds gRPC server reflection and the gateway's view filter, which reads
    // the custom `sensitivity` options: encoded by protox itself, because prost's descriptor
    // types would drop those options.
    fs::write(
        out_dir.join("referral_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
