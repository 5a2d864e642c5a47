//! The source scan behind the pre-flight report (`ScanRequest` → [`ScanResult`]).
//!
//! [`scan`] walks the tree below the agent's root once, without following symlinks and
//! without entering `/proc`, `/sys`, `/dev`, `/run` or any mount whose file system is not a
//! disk file system (pseudo and network mounts, per `/proc/self/mountinfo`). For every
//! entry it takes a census of extended attributes, SELinux labels, ids above 65535 and
//! sockets; files under the MAC roots are searched for the source's MAC addresses; service,
//! mount and database configs are read for `/dev` paths. Memory stays bounded: directories
//! are read in batches, files are streamed in blocks, every list is capped.

mod devrefs;
mod mac;
mod visit;

use std::collections::HashSet;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use p2c_common::inventory::MountKind;
use p2c_common::manifest::Problem;
use p2c_common::mountinfo::{self, MountInfo};
use p2c_common::paths::{PathError, RelPath};
use p2c_common::scan::{Capped, ScanOptions, ScanResult, SkippedMount, format_mac, limits};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};

use self::mac::MacMatcher;

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("bad scan request: {0}")]
    Request(#[from] p2c_common::scan::ScanError),
    #[error("cannot open the source root {path}: {source}")]
    Root { path: PathBuf, source: io::Error },
    #[error(
        "cannot read the mount table /proc/self/mountinfo ({0}); mounts below the root are entered whatever their type"
    )]
    MountTable(io::Error),
    /// A problem with one entry; the entry's path is reported next to it.
    #[error("{op}: {source}")]
    Entry { op: &'static str, source: io::Error },
    #[error("name too long to scan: {0}")]
    Name(#[from] PathError),
}

/// Directories below the root that are never entered: the kernel's and the runtime's.
const PSEUDO_DIRS: [&[u8]; 4] = [b"proc", b"sys", b"dev", b"run"];
/// Names read from one directory before they are sorted and looked at.
const NAME_BATCH: usize = 65536;
/// Hard-linked inodes remembered to count their space once; past it they count again.
const MAX_SEEN_LINKS: usize = 1 << 18;

/// Scans the source tree below `root` for the pre-flight report. Never fails: what could
/// not be read is listed in `errors`.
pub fn scan(root: &Path, opts: &ScanOptions) -> ScanResult {
    match Scanner::new(root, opts) {
        Ok(s) => s.run(),
        Err(e) => {
            let mut out = ScanResult::new();
            out.errors.push(Problem { path: RelPath::ROOT, reason: e.to_string() });
            out
        }
    }
}

pub(crate) struct Scanner {
    root: Vec<u8>,
    root_fd: OwnedFd,
    matcher: MacMatcher,
    /// Canonical spellings, by the matcher's index.
    mac_names: Vec<String>,
    mac_roots: Vec<RelPath>,
    excludes: Vec<RelPath>,
    mounts: Vec<MountInfo>,
    seen_links: HashSet<(u64, u64)>,
    /// Bytes the MAC search has read so far.
    mac_read: u64,
    /// Buffer for xattr name lists (XATTR_LIST_MAX).
    xbuf: Vec<u8>,
    out: ScanResult,
}

/// Counts `item` in a capped list, noting in `truncated` when it was not kept.
fn keep<T>(list: &mut Capped<T>, item: T, truncated: &mut bool) {
    if !list.push(item) {
        *truncated = true;
    }
}

impl Scanner {
    fn new(root: &Path, opts: &ScanOptions) -> Result<Self, ScanError> {
        opts.validate()?;
        let macs = opts.macs()?;
        let root_fd =
            rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| ScanError::Root { path: root.to_path_buf(), source: e.into() })?;
        let mut out = ScanResult::new();
        let mounts = match mountinfo::read() {
            Ok(m) => m,
            Err(e) => {
                out.errors
                    .push(Problem { path: RelPath::ROOT, reason: ScanError::MountTable(e).to_string() });
                Vec::new()
            }
        };
        Ok(Scanner {
            root: root.as_os_str().as_bytes().to_vec(),
            root_fd,
            mac_names: macs.iter().map(format_mac).collect(),
            matcher: MacMatcher::new(macs),
            mac_roots: opts.roots()?,
            excludes: opts.exclude_paths()?,
            mounts,
            seen_links: HashSet::new(),
            mac_read: 0,
            xbuf: vec![0; 64 * 1024],
            out,
        })
    }

    fn run(mut self) -> ScanResult {
        if self.excludes.iter().any(RelPath::is_root) {
            return self.out;
        }
        let st = match rustix::fs::fstat(&self.root_fd) {
            Ok(st) => st,
            Err(e) => {
                self.error(&RelPath::ROOT, "cannot stat the root", e.into());
                return self.out;
            }
        };
        self.visit(None, &RelPath::ROOT, &st, FileType::Directory);
        let mut stack = vec![(RelPath::ROOT, st.st_dev)];
        while let Some((rel, dev)) = stack.pop() {
            let mut subdirs = self.walk_dir(&rel, dev);
            subdirs.reverse();
            stack.extend(subdirs);
        }
        self.out
    }

    /// The source path of `rel` as the agent sees it (root prefix included).
    fn abs(&self, rel: &RelPath) -> PathBuf {
        let mut p = self.root.clone();
        if !rel.is_root() {
            if !p.ends_with(b"/") {
                p.push(b'/');
            }
            p.extend_from_slice(rel.as_bytes());
        }
        PathBuf::from(OsStr::from_bytes(&p))
    }

    fn error(&mut self, rel: &RelPath, op: &'static str, source: io::Error) {
        let reason = ScanError::Entry { op, source }.to_string();
        keep(&mut self.out.errors, Problem { path: rel.clone(), reason }, &mut self.out.truncated);
    }

    /// Opens a directory below the root one component at a time, never following a
    /// symlink (works on kernels without openat2).
    fn open_dir(&self, rel: &RelPath) -> io::Result<OwnedFd> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut fd = rustix::fs::openat(&self.root_fd, c".", flags, Mode::empty())?;
        for c in rel.components() {
            fd = rustix::fs::openat(&fd, c, flags, Mode::empty())?;
        }
        Ok(fd)
    }

    /// Looks at every entry of one directory; returns its subdirectories to enter, sorted.
    fn walk_dir(&mut self, rel: &RelPath, dev: u64) -> Vec<(RelPath, u64)> {
        let mut subdirs = Vec::new();
        let fd = match self.open_dir(rel) {
            Ok(fd) => fd,
            Err(e) => {
                self.error(rel, "cannot open directory", e);
                return subdirs;
            }
        };
        let mut dir = match Dir::new(fd) {
            Ok(d) => d,
            Err(e) => {
                self.error(rel, "cannot read directory", e.into());
                return subdirs;
            }
        };
        loop {
            let mut names: Vec<CString> = Vec::new();
            let mut more = false;
            for ent in dir.by_ref() {
                match ent {
                    Ok(e) => {
                        let n = e.file_name();
                        if n != c"." && n != c".." {
                            names.push(n.to_owned());
                        }
                        if names.len() >= NAME_BATCH {
                            more = true;
                            break;
                        }
                    }
                    Err(e) => {
                        self.error(rel, "cannot read directory", e.into());
                        break;
                    }
                }
            }
            names.sort();
            let Ok(dfd) = dir.fd() else { break };
            for name in &names {
                self.entry(dfd, rel, name, dev, &mut subdirs);
            }
            if !more {
                break;
            }
        }
        subdirs.sort_by(|a, b| a.0.walk_cmp(&b.0));
        subdirs
    }

    fn entry(
        &mut self,
        dfd: BorrowedFd<'_>,
        parent: &RelPath,
        name: &CStr,
        parent_dev: u64,
        subdirs: &mut Vec<(RelPath, u64)>,
    ) {
        let rel = match parent.join(name.to_bytes()) {
            Ok(r) => r,
            Err(e) => {
                let reason = ScanError::Name(e).to_string();
                keep(&mut self.out.errors, Problem { path: parent.clone(), reason }, &mut self.out.truncated);
                return;
            }
        };
        if self.excludes.iter().any(|x| rel.starts_with(x)) {
            return;
        }
        let st = match rustix::fs::statat(dfd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => return,
            Err(e) => return self.error(&rel, "cannot stat", e.into()),
        };
        let ft = FileType::from_raw_mode(st.st_mode);
        if ft == FileType::Directory {
            if let Some(skip) = self.boundary(parent, &rel, parent_dev, st.st_dev) {
                if self.out.skipped_mounts.len() < limits::MAX_SKIPPED_MOUNTS {
                    self.out.skipped_mounts.push(skip);
                } else {
                    self.out.truncated = true;
                }
                return;
            }
            subdirs.push((rel.clone(), st.st_dev));
        }
        self.visit(Some((dfd, name)), &rel, &st, ft);
    }

    /// Whether the directory `rel` is a mount the scan must not enter.
    fn boundary(&self, parent: &RelPath, rel: &RelPath, parent_dev: u64, dev: u64) -> Option<SkippedMount> {
        let abs = self.abs(rel);
        let abs = abs.as_os_str().as_bytes();
        let by_path = || self.mounts.iter().rev().find(|m| is_same(abs, m));
        if parent.is_root() && PSEUDO_DIRS.contains(&rel.file_name()) {
            let fs_type = by_path().map_or_else(|| "pseudo".to_string(), |m| m.fs_type.clone());
            return Some(SkippedMount { path: rel.clone(), fs_type });
        }
        if dev == parent_dev {
            return None;
        }
        let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
        let mount = self
            .mounts
            .iter()
            .rev()
            .find(|m| m.major == major && m.minor == minor)
            .or_else(|| mountinfo::containing(&self.mounts, abs))?;
        (mount.kind() != MountKind::Local)
            .then(|| SkippedMount { path: rel.clone(), fs_type: mount.fs_type.clone() })
    }
}

/// True when `abs` is exactly the mount point of `m`.
fn is_same(abs: &[u8], m: &MountInfo) -> bool {
    let trim = |p: &[u8]| p.strip_suffix(b"/").map(<[u8]>::to_vec).unwrap_or(p.to_vec());
    trim(abs) == trim(&m.mount_point)
}

#[cfg(test)]
mod tests;
