//! Guest rewrite ("containerisation"): makes a migrated server tree boot as an
//! OpenVZ/Virtuozzo-style system container whose addresses all sit on `venet0`.
//!
//! Each concern has its own module: [`fstab`] (one file system now), [`network`] (venet0 for
//! every network stack the guest uses), [`console`] (gettys), [`devnodes`] (static `/dev`),
//! [`services`] (hardware services off) and [`selinux`]. They change the tree only through
//! [`edit::Editor`], which reaches it through [`Tree`] (so nothing a source server planted
//! can redirect a write onto the node), backs every changed file up under
//! `/etc/p2c/backup/<path>` and records a [`GuestChange`] for it.
//!
//! Running [`containerise`] again on its own output changes nothing and returns the same
//! records: every rewrite is a fixed point of itself, generated files carry [`edit::MARKER`]
//! so they are never mistaken for originals, and the records of the first run are kept in
//! `/etc/p2c/changes.json`.

mod console;
mod devnodes;
mod distro;
mod edit;
mod fstab;
mod network;
mod selinux;
mod services;

use std::net::IpAddr;

use p2c_common::inventory::Inventory;
use p2c_common::migration::{GuestChange, Target};
use p2c_common::paths::PathError;

use crate::tree::{Tree, TreeError};

pub use distro::{Distro, InitSystem, NetStack, detect};
pub use edit::{BACKUP_DIR, JOURNAL};

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("bad path {path} in the container tree: {source}")]
    Path { path: String, source: PathError },
}

/// What the controller knows about the source that the guest's files should say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestOptions {
    /// Every address of the source, in order; all move onto venet0.
    pub addresses: Vec<IpAddr>,
    /// Written to `/etc/hostname` only if the guest has none.
    pub hostname: Option<String>,
    /// Written to `/etc/resolv.conf` only if the guest has none, and given to venet0 for
    /// netplan and systemd-networkd guests (whose DNS settings were per interface).
    pub nameservers: Vec<String>,
    pub search: Vec<String>,
    /// The platform the container is for: venet0 is a venet device (openvz, vz7) or a
    /// routed veth (vz9), and each platform's own scripts configure it their way.
    pub target: Target,
}

/// Rewrites the guest in `tree` so it boots as a container; returns one record per file
/// rewritten, created, removed or disabled, in the order the steps ran.
pub fn containerise(
    tree: &Tree,
    inv: &Inventory,
    opts: &GuestOptions,
) -> Result<Vec<GuestChange>, GuestError> {
    let distro = detect(tree)?;
    tracing::info!(
        root = %tree.path().display(),
        family = ?distro.family,
        id = %distro.id,
        version = %distro.version,
        init = ?distro.init,
        stacks = ?distro.stacks,
        "containerising guest"
    );
    let mut ed = edit::Editor::open(tree)?;
    fstab::apply(&mut ed)?;
    network::apply(&mut ed, &distro, inv, opts)?;
    console::apply(&mut ed, &distro)?;
    devnodes::apply(&mut ed)?;
    services::apply(&mut ed, &distro)?;
    selinux::apply(&mut ed)?;
    ed.finish()
}

#[cfg(test)]
mod tests;
