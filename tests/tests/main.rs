//! The one integration-test binary: every module is a group of tests.

mod harness;
mod quota;
