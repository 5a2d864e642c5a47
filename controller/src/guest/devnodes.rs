//! Static `/dev`: the device nodes, directories and links every container needs, made
//! where missing (a tree copied from a running server often has an empty `/dev`, since
//! devtmpfs was mounted over it). Modes and owners are the usual ones (`tty` is group 5 on
//! every distribution); something else at one of these names (a regular file `/dev/null`
//! left by a copy) is backed up and replaced. `/dev/ptmx` may instead be a link to
//! `pts/ptmx`, as on newer templates.

use rustix::fs::FileType;

use super::GuestError;
use super::edit::{Action, Editor};
use crate::tree::rel;

/// The `tty` group.
const TTY_GID: u32 = 5;

/// (name, major, minor, mode, group).
const NODES: [(&str, u32, u32, u32, u32); 8] = [
    ("null", 1, 3, 0o666, 0),
    ("zero", 1, 5, 0o666, 0),
    ("full", 1, 7, 0o666, 0),
    ("random", 1, 8, 0o666, 0),
    ("urandom", 1, 9, 0o666, 0),
    ("tty", 5, 0, 0o666, TTY_GID),
    ("console", 5, 1, 0o600, 0),
    ("ptmx", 5, 2, 0o666, TTY_GID),
];

/// (name, target).
const LINKS: [(&str, &str); 4] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

pub(super) fn apply(ed: &mut Editor) -> Result<(), GuestError> {
    ed.directory(&rel("dev"), 0o755, "the container's device directory")?;
    // Only root can make device nodes (the demo may run as a user); the node's container
    // tools add them when the container starts anyway.
    let nodes: &[_] = if rustix::process::geteuid().is_root() {
        &NODES
    } else {
        tracing::warn!("not running as root: the container's /dev nodes are not created");
        &[]
    };
    for &(name, major, minor, mode, gid) in nodes {
        let path = rel(&format!("dev/{name}"));
        if name == "ptmx" && ed.kind(&path)? == Some(FileType::Symlink) {
            let target = ed.tree().readlink(&path)?.unwrap_or_default();
            if target == b"pts/ptmx" || target == b"/dev/pts/ptmx" {
                continue;
            }
        }
        ed.char_device(
            &path,
            (major, minor),
            mode,
            gid,
            format!("device node the container needs (char {major}:{minor})"),
        )?;
    }
    ed.directory(&rel("dev/pts"), 0o755, "mount point of the container's devpts")?;
    ed.directory(&rel("dev/shm"), 0o1777, "mount point of the container's shared memory")?;
    for (name, target) in LINKS {
        ed.symlink(&rel(&format!("dev/{name}")), target, Action::Created, "standard /dev link into /proc")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use super::*;
    use crate::guest::tests::Fixture;

    #[test]
    fn creates_missing_nodes_and_replaces_wrong_ones() {
        let f = Fixture::new();
        f.file("dev/null", "a regular file left by a copy\n");
        f.link("dev/ptmx", "pts/ptmx");
        let tree = f.tree();
        let mut ed = Editor::open(&tree).unwrap();
        apply(&mut ed).unwrap();
        let meta = |n: &str| std::fs::symlink_metadata(f.path().join("dev").join(n)).unwrap();
        for (name, major, minor, mode, gid) in NODES {
            if name == "ptmx" {
                continue;
            }
            let m = meta(name);
            assert!(m.file_type().is_char_device(), "{name}");
            assert_eq!(m.rdev(), rustix::fs::makedev(major, minor), "{name}");
            assert_eq!(m.mode() & 0o7777, mode, "{name}");
            assert_eq!((m.uid(), m.gid()), (0, gid), "{name}");
        }
        assert_eq!(f.readlink("dev/ptmx"), "pts/ptmx");
        assert_eq!(f.mode("dev/shm"), 0o1777);
        assert!(meta("pts").is_dir());
        assert_eq!(f.readlink("dev/fd"), "/proc/self/fd");
        assert_eq!(f.readlink("dev/stderr"), "/proc/self/fd/2");
        assert_eq!(f.read("etc/p2c/backup/dev/null"), "a regular file left by a copy\n");
        let c = ed.changes();
        let null = c.iter().find(|c| c.path == "/dev/null").unwrap();
        assert_eq!(null.action, "rewritten");
        assert_eq!(null.backup.as_deref(), Some("/etc/p2c/backup/dev/null"));
        let zero = c.iter().find(|c| c.path == "/dev/zero").unwrap();
        assert_eq!((zero.action.as_str(), zero.backup.as_deref()), ("created", None));
        assert!(!c.iter().any(|c| c.path == "/dev/ptmx"));

        // Again: nothing to do.
        let mut ed = Editor::open(&tree).unwrap();
        apply(&mut ed).unwrap();
        assert!(ed.changes().is_empty());
    }
}
