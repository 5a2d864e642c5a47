//! The `p2c.v1` gRPC contract, generated at build time, and the conversions between its
//! messages and the domain types of `p2c-common`.
//!
//! Invariant: only this crate and the gRPC adapter modules of the agent and controller touch
//! prost types; everything else works with `p2c_common` types.

#![forbid(unsafe_code)]
#![allow(clippy::large_enum_variant)]

pub mod v1 {
    tonic::include_proto!("p2c.v1");
}

pub mod bundle;
mod convert;

pub use convert::ConvertError;

/// Version of the agent↔controller protocol spoken by this build.
pub const PROTOCOL_VERSION: u32 = 1;
