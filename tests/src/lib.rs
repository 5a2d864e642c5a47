//! Harness for p2c's integration tests.

pub mod ctstart;
pub mod debian;
