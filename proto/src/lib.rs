//! The `referral.v1` protobuf API: forms J, K, L, M, D, E, the envelope, the gateway and the
//! agency services. Generated at build time from `proto/referral/v1/*.proto`.

#![allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]

/// Package `referral.v1`.
pub mod v1 {
    tonic::include_proto!("referral.v1");

    /// The encoded file descriptor set of the package, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("referral_descriptor");
}

pub use prost_types::Timestamp;
