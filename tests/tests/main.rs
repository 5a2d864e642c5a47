//! The one integration-test binary: every module is a group of tests.

mod bundle;
mod e2e;
mod guest_start;
mod harness;
mod hostile;
mod migrate;
mod proxy;
mod quota;
mod reconnect;
mod resume;
mod security;
mod service;
mod tracking;
mod waves;
