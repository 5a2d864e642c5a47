//! Byte-for-byte snapshots of a directory tree, to prove that something did not change it.
//!
//! A [`Snapshot`] records every object below a root without following symlinks: its type,
//! mode, owner, size, modification time, rdev, symlink target and a BLAKE3 hash of a regular
//! file's content. Directories are compared by their listing (their own mtime moves whenever
//! an allowed child is created, e.g. a new container's private area).

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;

/// What is recorded about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Modification time in nanoseconds; 0 for directories.
    pub mtime_ns: i128,
    pub rdev: u64,
    pub link: Option<PathBuf>,
    pub content: Option<[u8; 32]>,
}

/// Every object below a root, by path relative to it (the root itself as the empty path).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot(pub BTreeMap<PathBuf, Object>);

impl Snapshot {
    /// Records `root`, leaving out (and not entering) paths for which `skip` is true.
    pub fn take(root: &Path, skip: &dyn Fn(&Path) -> bool) -> io::Result<Snapshot> {
        let mut out = BTreeMap::new();
        let mut pending = vec![PathBuf::new()];
        while let Some(rel) = pending.pop() {
            let full = root.join(&rel);
            let md = std::fs::symlink_metadata(&full)?;
            let ft = md.file_type();
            let content =
                if ft.is_file() { Some(*blake3::hash(&std::fs::read(&full)?).as_bytes()) } else { None };
            let link = if ft.is_symlink() { Some(std::fs::read_link(&full)?) } else { None };
            out.insert(
                rel.clone(),
                Object {
                    mode: md.mode(),
                    uid: md.uid(),
                    gid: md.gid(),
                    size: if ft.is_dir() { 0 } else { md.size() },
                    mtime_ns: if ft.is_dir() {
                        0
                    } else {
                        i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec())
                    },
                    rdev: md.rdev(),
                    link,
                    content,
                },
            );
            if ft.is_dir() {
                for e in std::fs::read_dir(&full)? {
                    let child = rel.join(e?.file_name());
                    if !skip(&child) {
                        pending.push(child);
                    }
                }
            }
        }
        Ok(Snapshot(out))
    }

    /// Every difference between `self` (before) and `after`.
    pub fn diff(&self, after: &Snapshot) -> Vec<Change> {
        let mut out = Vec::new();
        for (p, o) in &self.0 {
            match after.0.get(p) {
                None => out.push(Change::Removed(p.clone())),
                Some(n) if n != o => out.push(Change::Changed(p.clone(), format!("{o:?} -> {n:?}"))),
                Some(_) => {}
            }
        }
        for (p, o) in after.0.iter().filter(|(p, _)| !self.0.contains_key(*p)) {
            out.push(Change::Created(p.clone(), o.mode & S_IFMT == S_IFDIR));
        }
        out
    }

    /// Panics, listing the differences, unless `after` equals `self` except for the creation
    /// of the directories in `new_dirs` (parents that a first migration creates).
    pub fn assert_unchanged(&self, after: &Snapshot, new_dirs: &[&Path], what: &str) {
        let d: Vec<String> = self
            .diff(after)
            .into_iter()
            .filter(|c| !matches!(c, Change::Created(p, true) if new_dirs.contains(&p.as_path())))
            .map(|c| c.to_string())
            .collect();
        assert!(d.is_empty(), "{what} changed:\n  {}", d.join("\n  "));
    }
}

/// One difference between two snapshots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new object; true for a directory.
    Created(PathBuf, bool),
    Removed(PathBuf),
    Changed(PathBuf, String),
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Created(p, dir) => {
                write!(f, "created: {}{}", p.display(), if *dir { "/" } else { "" })
            }
            Change::Removed(p) => write!(f, "removed: {}", p.display()),
            Change::Changed(p, how) => write!(f, "changed: {} ({how})", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_change_is_seen() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("a/skipped")).unwrap();
        std::fs::write(root.join("a/f"), b"one").unwrap();
        std::os::unix::fs::symlink("f", root.join("a/l")).unwrap();
        let skip = |p: &Path| p == Path::new("a/skipped");
        let before = Snapshot::take(root, &skip).unwrap();
        assert!(before.diff(&Snapshot::take(root, &skip).unwrap()).is_empty());

        std::fs::write(root.join("a/skipped/x"), b"ignored").unwrap();
        std::fs::write(root.join("a/f"), b"two").unwrap();
        std::fs::remove_file(root.join("a/l")).unwrap();
        std::os::unix::fs::symlink("elsewhere", root.join("a/l")).unwrap();
        std::fs::create_dir(root.join("new")).unwrap();
        std::fs::write(root.join("new/file"), b"").unwrap();
        let after = Snapshot::take(root, &skip).unwrap();
        let mut got: Vec<String> = before.diff(&after).iter().map(|c| c.to_string()).collect();
        got.sort();
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(got[0].starts_with("changed: a/f ("), "{got:?}");
        assert!(got[1].starts_with("changed: a/l ("), "{got:?}");
        assert_eq!(got[2..], ["created: new/", "created: new/file"]);
        // Allowed new directories are not reported, files in them are.
        let r = std::panic::catch_unwind(|| before.assert_unchanged(&after, &[Path::new("new")], "tree"));
        let msg = r.unwrap_err().downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("created: new/file") && !msg.contains("created: new/\n"), "{msg}");
    }
}
