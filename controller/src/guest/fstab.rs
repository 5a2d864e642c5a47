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
        let kind = if body.is_empty() || body.starts_with('#') {
            Line::Keep
        } else {
            classify(&fields)
        };
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
    ["UUID=", "LABEL=", "PARTUUID=", "PARTLABEL=", "ID="]
        .iter()
        .any(|p| spec.starts_with(p))
        || (spec.starts_with("/dev/") && !spec.starts_with("/dev/shm"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::tests::Fixture;

    const FSTAB: &str = "\
# /etc/fstab: static file system information.
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
# / was on /dev/sda1 during installation
UUID=0a3407de-014b-458b-b5c1-848e92a327a3 /               ext4    errors=remount-ro 0       1
LABEL=home      /home           xfs     defaults,usrquota 0     2
/dev/mapper/vg0-var /var        ext4    defaults        0       2
# swap was on /dev/sda5 during installation
UUID=d8d6bd6b-2b1a-4c0d-8d6b-2c4b9e3c4f7a none            swap    sw              0       0
/swapfile       none            swap    sw              0       0
/dev/sr0        /media/cdrom0   udf,iso9660 user,noauto 0       0
proc            /proc           proc    defaults        0       0
tmpfs           /tmp            tmpfs   defaults,size=512m 0    0
nas.example:/export/data /mnt/data nfs  defaults,_netdev 0      0
//fs.example/share /mnt/share   cifs    credentials=/etc/cifs.cred 0 0
/srv/www        /var/www        none    bind            0       0
";

    const EXPECTED: &str = "\
# /etc/fstab: static file system information.
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
# / was on /dev/sda1 during installation
# swap was on /dev/sda5 during installation
proc            /proc           proc    defaults        0       0
tmpfs           /tmp            tmpfs   defaults,size=512m 0    0
nas.example:/export/data /mnt/data nfs  defaults,_netdev 0      0
//fs.example/share /mnt/share   cifs    credentials=/etc/cifs.cred 0 0
/srv/www        /var/www        none    bind            0       0
";

    #[test]
    fn local_disks_and_swap_go_pseudo_and_network_stay() {
        let out = rewrite(FSTAB);
        assert_eq!(out.text, EXPECTED);
        assert_eq!(
            out.removed,
            [
                "UUID=0a3407de-014b-458b-b5c1-848e92a327a3 on / (ext4)",
                "LABEL=home on /home (xfs)",
                "/dev/mapper/vg0-var on /var (ext4)",
                "UUID=d8d6bd6b-2b1a-4c0d-8d6b-2c4b9e3c4f7a on none (swap)",
                "/swapfile on none (swap)",
                "/dev/sr0 on /media/cdrom0 (udf,iso9660)",
            ]
        );
        assert_eq!(
            out.network,
            [
                "nas.example:/export/data on /mnt/data (nfs)",
                "//fs.example/share on /mnt/share (cifs)",
            ]
        );
        assert_eq!(rewrite(EXPECTED).text, EXPECTED);
    }

    #[test]
    fn applies_with_backup_and_links_mtab() {
        let f = Fixture::new();
        f.file_mode("etc/fstab", FSTAB, 0o640);
        f.file("etc/mtab", "stale copy\n");
        let tree = f.tree();
        let mut ed = Editor::open(&tree).unwrap();
        apply(&mut ed).unwrap();
        assert_eq!(f.read("etc/fstab"), EXPECTED);
        assert_eq!(f.mode("etc/fstab"), 0o640);
        assert_eq!(f.read("etc/p2c/backup/etc/fstab"), FSTAB);
        assert_eq!(f.mode("etc/p2c/backup/etc/fstab"), 0o640);
        assert_eq!(f.readlink("etc/mtab"), "/proc/mounts");
        assert_eq!(f.read("etc/p2c/backup/etc/mtab"), "stale copy\n");
        let c = ed.changes();
        assert_eq!(c.len(), 2);
        assert_eq!(
            (c[0].path.as_str(), c[0].action.as_str()),
            ("/etc/fstab", "rewritten")
        );
        assert_eq!(c[0].backup.as_deref(), Some("/etc/p2c/backup/etc/fstab"));
        assert!(
            c[0].reason
                .contains("nas.example:/export/data on /mnt/data (nfs)")
        );
        assert_eq!(
            (c[1].path.as_str(), c[1].action.as_str()),
            ("/etc/mtab", "rewritten")
        );
    }

    #[test]
    fn debian_mtab_link_is_left_alone() {
        let f = Fixture::new();
        f.link("etc/mtab", "../proc/self/mounts");
        f.file("etc/fstab", "proc /proc proc defaults 0 0\n");
        let tree = f.tree();
        let mut ed = Editor::open(&tree).unwrap();
        apply(&mut ed).unwrap();
        assert!(ed.changes().is_empty());
        assert_eq!(f.readlink("etc/mtab"), "../proc/self/mounts");
    }
}
