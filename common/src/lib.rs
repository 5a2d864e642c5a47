//! Domain types and helpers shared by the p2c agent and controller.
//!
//! Nothing here knows about gRPC or prost: the `p2c-proto` crate converts between these
//! types and the wire messages at the edge.

#![forbid(unsafe_code)]

pub mod bundle;
pub mod chunking;
pub mod cli;
pub mod errors;
pub mod findings;
pub mod inventory;
pub mod manifest;
pub mod migration;
pub mod mountinfo;
pub mod paths;
pub mod pki;
pub mod scan;
pub mod services;
pub mod sync;
pub mod telemetry;
pub mod token;
pub mod units;

/// Version string reported by every binary.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
