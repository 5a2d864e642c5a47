//! The one integration-test binary: every module is a group of tests.

#![forbid(unsafe_code)]
// Everything in this binary is test code: its helpers run only inside tests, where a panic is
// the test's failure with its message (the harness library, tests/src, follows the rule).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod boot;
mod bundle;
mod e2e;
mod guest_boot;
mod guest_start;
mod harness;
mod hostile;
mod invariants;
mod migrate;
mod proxy;
mod quota;
mod reconnect;
mod resume;
mod security;
mod service;
mod tracking;
mod waves;
