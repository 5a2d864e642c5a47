//! Harness for p2c's integration tests: root checks, tracing, bounded waits, network-namespace
//! hosts, loop-mounted file systems, source-tree fixtures with a tree comparator, real
//! controllers and agents, a scriptable hostile agent, tree snapshots, Debian trees from
//! debootstrap, a container start harness, a quota-capable kernel under qemu and a reader of
//! ploop1 container images that needs none of the controller's code.

#![deny(unsafe_code)]
// Audited `unsafe` lives only in the modules marked `#[allow(unsafe_code)]`, every block with
// a `// SAFETY:` comment (clippy `undocumented_unsafe_blocks` is denied).

pub mod bootguest;
pub mod bundles;
pub mod ctstart;
pub mod debian;
pub mod fake_agent;
pub mod fixtures;
pub mod linkproxy;
pub mod loopfs;
// Audited: setns(2) in the child of a network-namespace host.
#[allow(unsafe_code)]
pub mod netns;
pub mod node;
pub mod ploop;
pub mod procs;
pub mod proxy;
pub mod quota;
pub mod snapshot;
pub mod sources;
pub mod trees;
pub mod util;
pub use util::{is_root, trace_init, unique_name, wait_for, wait_for_sync};
