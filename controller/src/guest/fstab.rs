//! `/etc/fstab` and `/etc/mtab`: the container is one file system.
//!
//! Lines for local disks (named by `UUID=`, `LABEL=`, `PARTUUID=`, a `/dev/` path, or with a
//! disk file-system type) and swap lines go: their files are merged into the container's
//! tree, and a container has no block devices. Pseudo file systems (proc, sysfs, devpts,
//! tmpfs, cgroup...) and bind mounts stay. Network mounts (nfs, cifs...) stay and are named
//! in the record, since they only work if the container can reach their servers. Comments
//! and blank lines are kept as they are.

use p2c_common::inventory::MountKind;

use super::GuestError;
use super::edit::{Action, Editor};
use crate::tree::rel;
use rustix::fs::FileType;

pub(super) fn apply(ed: &mut Editor) -> Result<(), GuestError> {
    let path = rel("etc/fstab");
    if let Some(text) = ed.read(&path)? {
        let out = rewrite(&text);
        let reason = out.reason();
        ed.rewrite(&path, reason, |_| out.text)?;
    }
    mtab(ed)
}

/// `/etc/mtab` → `/proc/mounts`, unless it already is a link to the kernel's list.
fn mtab(ed: &mut Editor) -> Result<(), GuestError> {
    let path = rel("etc/mtab");
    if ed.kind(&path)? == Some(FileType::Symlink) {
        let target = ed.tree().readlink(&path)?.unwrap_or_default();
        let target = String::from_utf8_lossy(&target);
        let ours = target == "/proc/mounts";
        if !ours && (target.ends_with("proc/mounts") || target.ends_with("proc/self/mounts")) {
            return Ok(());
        }
    }
    ed.symlink(
        &path,
        "/proc/mounts",
        Action::Created,
        "the container's mount table is the kernel's (/proc/mounts)",
    )
}

/// The rewritten fstab and what it dropped and kept.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Fstab {
    pub(crate) text: String,
    /// `<spec> on <mount point> (<type>)` of each removed line.
    pub(crate) removed: Vec<String>,
    /// The same for network mounts kept.
    pub(crate) network: Vec<String>,
}

impl Fstab {
    fn reason(&self) -> String {
        let mut r = format!(
            "local disk and swap lines removed, the container is one file system: {}",
            self.removed.join(", ")
        );
        if !self.network.is_empty() {
            r.push_str(&format!(
                "; network mounts kept, they need the container to reach their servers: {}",
                self.network.join(", ")
            ));
        }
        r
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Line {
    Keep,
    Drop,
    Network,
}

pub(crate) fn rewrite(text: &str) -> Fstab {
    let mut out = Fstab::default();
    for line in text.split_inclusive('\n') {
        let body = line.trim();
        let fields: Vec<&str> = body.split_whitespace().collect();
        let kind = if body.is_empty() || body.starts_with('#') { Line::Keep } else { classify(&fields) };
        let shown = || {
            format!(
                "{} on {} ({})",
                fields.first().copied().unwrap_or_default(),
                fields.get(1).copied().unwrap_or_default(),
                fields.get(2).copied().unwrap_or_default()
            )
        };
        match kind {
            Line::Keep => out.text.push_str(line),
            Line::Drop => out.removed.push(shown()),
            Line::Network => {
                out.network.push(shown());
                out.text.push_str(line);
            }
        }
    }
    out
}

fn classify(fields: &[&str]) -> Line {
    let (Some(spec), Some(fs)) = (fields.first(), fields.get(2)) else {
        return Line::Keep;
    };
    if *fs == "swap" {
        return Line::Drop;
    }
    let network_spec = spec.starts_with("//") || (spec.contains(":/") && !spec.starts_with('/'));
    match MountKind::of_fs_type(fs) {
        MountKind::Network => Line::Network,
        MountKind::Local => Line::Drop,
        MountKind::Pseudo if is_device(spec) => Line::Drop,
        MountKind::Pseudo if network_spec => Line::Network,
        MountKind::Pseudo => Line::Keep,
    }
}

/// A spec naming a block device.
fn is_device(spec: &str) -> bool {
    ["UUID=", "LABEL=", "PARTUUID=", "PARTLABEL=", "ID="].iter().any(|p| spec.starts_with(p))
        || (spec.starts_with("/dev/") && !spec.starts_with("/dev/shm"))
}

#[cfg(test)]
mod tests;
