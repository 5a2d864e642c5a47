//! The p2c agent: the source-side daemon.
pub mod inventory;
