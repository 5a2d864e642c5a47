//! The one integration-test binary: every module is a group of tests.

#![forbid(unsafe_code)]

mod bundle;
mod e2e;
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
mod tracking;
mod waves;
