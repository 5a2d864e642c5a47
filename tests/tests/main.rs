//! The one integration-test binary: every module is a group of tests.

mod guest_start;
mod harness;
mod migrate;
mod quota;
mod resume;
mod waves;
