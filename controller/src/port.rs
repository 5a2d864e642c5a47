//! The source of a migration, as the drivers see it: a port in domain types.
//!
//! The drivers (`migrate`, `cutover`, `pass`) are written once against [`Source`]. It has two
//! adapters: [`crate::online::OnlineAgent`], an agent on its gRPC session, and
//! [`crate::import::BundleSource`], a bundle file playing the agent. Tests of the drivers
//! may add a third.

use p2c_common::inventory::Inventory;
use p2c_common::paths::RelPath;
use p2c_common::scan::{ScanOptions, ScanResult};

use crate::migration::{MigrateError, MigrationHandle};
use crate::receive::{PassJob, PassOutcome};

/// What a copy pass asks of the source, beside the job the receive path runs.
#[derive(Clone, Debug, PartialEq)]
pub struct PassRequest {
    pub excludes: Vec<RelPath>,
    /// Bytes per second the source may send, 0 for no limit.
    pub bwlimit: u64,
    /// The complete earlier pass the source may list changes against.
    pub changes_since: Option<u32>,
    /// Keep watching the source for changes after this pass (live passes only).
    pub track_changes: bool,
}

/// Services that failed to stop: why, and those that may have stopped anyway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StopFailure {
    pub reason: String,
    pub stopped: Vec<String>,
}

/// A source server, reached one way or another.
pub trait Source: Send + Sync {
    /// Whatever holds the source's attention for one pass (an agent's session).
    type Link: Send + Sync;

    /// The agent name the source speaks for.
    fn name(&self) -> &str;

    /// True for a running server (live passes, then a cutover), false for a snapshot (a
    /// bundle) whose one pass is the last and cannot be resumed by the source itself.
    fn is_live(&self) -> bool;

    /// How a refusal of the source's data begins: "agent sent an invalid stream".
    fn invalid_data(&self) -> &'static str;

    /// The source's inventory, checked.
    fn inventory(&self) -> impl Future<Output = Result<Inventory, MigrateError>> + Send;

    /// The scan the pre-flight report needs; `None` when the source cannot give one (the
    /// report then says what it could not check).
    fn scan(&self, opts: &ScanOptions) -> impl Future<Output = Option<ScanResult>> + Send;

    /// Waits a short while for the source to be reachable (before a cutover stops
    /// anything); why not, if it is not.
    fn reachable(&self) -> impl Future<Output = Result<(), String>> + Send;

    /// Waits until the source can run a pass (its agent connected), telling `h` what it
    /// waits for.
    fn connect(&self, h: &MigrationHandle) -> impl Future<Output = Result<Self::Link, MigrateError>> + Send;

    /// True when `link` went away (the agent left while the migration queued for a slot).
    fn is_gone(&self, link: &Self::Link) -> bool;

    /// Runs one pass through the receive path: the outcome, or why there is none (the link
    /// broke; the pass can be tried again).
    fn transfer(
        &self,
        link: &Self::Link,
        h: &MigrationHandle,
        job: PassJob,
        req: PassRequest,
    ) -> impl Future<Output = Result<PassOutcome, String>> + Send;

    /// Stops services on the source.
    fn stop_services(&self, services: &[String]) -> impl Future<Output = Result<(), StopFailure>> + Send;

    /// Starts services on the source again.
    fn start_services(&self, services: &[String]) -> impl Future<Output = Result<(), String>> + Send;

    /// Runs a hook command on the source.
    fn run_hook(&self, command: &str) -> impl Future<Output = Result<(), String>> + Send;
}
