//! Confined access to a container's private area.
//!
//! Everything the controller writes on behalf of an agent, and everything the guest rewrite
//! touches inside a migrated tree, goes through [`Tree`]. A directory is reached with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` from the tree's
//! root fd, and the final name is always operated on with a `*at` call that does not follow
//! symlinks. So no `..`, absolute path or symlink planted by a source server can make the
//! controller read or write outside the tree.
//!
//! This is the audited module for file-system confinement: callers never build node paths
//! from agent data.

use std::ffi::CStr;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use p2c_common::paths::{RelPath, escape_bytes};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("cannot open container tree {path}: {source}")]
    OpenRoot { path: PathBuf, source: io::Error },
    #[error("{path} in the container tree: {op}: {source}")]
    Io { path: String, op: &'static str, source: io::Error },
    #[error("{path} in the container tree is a {found}, expected a {expected}")]
    WrongType { path: String, found: &'static str, expected: &'static str },
    #[error("{path} in the container tree is larger than {max} bytes")]
    TooLarge { path: String, max: usize },
}

pub type Result<T, E = TreeError> = std::result::Result<T, E>;

fn resolve() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// Name of a file type for messages.
pub fn type_name(ft: FileType) -> &'static str {
    match ft {
        FileType::RegularFile => "file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::Fifo => "fifo",
        FileType::CharacterDevice => "char-device",
        FileType::BlockDevice => "block-device",
        FileType::Socket => "socket",
        _ => "unknown",
    }
}

/// A container tree, held open by its root directory fd.
#[derive(Debug)]
pub struct Tree {
    root: OwnedFd,
    path: PathBuf,
}

/// A directory inside a tree, for operations on single names (no `/` in them).
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    rel: RelPath,
}

impl Tree {
    /// Opens an existing directory as a tree root (not following a symlink at `path`).
    pub fn open(path: &Path) -> Result<Tree> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| TreeError::OpenRoot { path: path.to_path_buf(), source: e.into() })?;
        Ok(Tree { root: fd, path: path.to_path_buf() })
    }

    /// Creates `path` (and its parents, owned by root, mode 0700 for the last) if needed,
    /// then opens it.
    pub fn create(path: &Path) -> Result<Tree> {
        if !path.exists() {
            std::fs::create_dir_all(path)
                .map_err(|e| TreeError::OpenRoot { path: path.to_path_buf(), source: e })?;
            rustix::fs::chmod(path, Mode::from_raw_mode(0o700))
                .map_err(|e| TreeError::OpenRoot { path: path.to_path_buf(), source: e.into() })?;
        }
        Self::open(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn root_fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Opens the directory `rel` (the root for the empty path).
    pub fn dir(&self, rel: &RelPath) -> Result<Dir> {
        let p: &[u8] = if rel.is_root() { b"." } else { rel.as_bytes() };
        let fd = rustix::fs::openat2(
            &self.root,
            p,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            resolve(),
        )
        .map_err(|e| io_err(rel, "open directory", e))?;
        Ok(Dir { fd, rel: rel.clone() })
    }

    /// The parent directory of `rel` and the last name. `rel` must not be the root.
    pub fn parent<'a>(&self, rel: &'a RelPath) -> Result<(Dir, &'a [u8])> {
        let parent = rel.parent().ok_or_else(|| TreeError::Io {
            path: "/".into(),
            op: "find parent",
            source: io::Error::from(io::ErrorKind::InvalidInput),
        })?;
        Ok((self.dir(&parent)?, rel.file_name()))
    }

    /// `lstat` of `rel`; `None` if it does not exist (or a parent is missing).
    pub fn lstat(&self, rel: &RelPath) -> Result<Option<Stat>> {
        if rel.is_root() {
            return rustix::fs::fstat(&self.root).map(Some).map_err(|e| io_err(rel, "stat", e));
        }
        let (dir, name) = match self.parent(rel) {
            Ok(v) => v,
            Err(TreeError::Io { source, .. }) if is_missing(&source) => return Ok(None),
            Err(e) => return Err(e),
        };
        dir.lstat(name)
    }

    /// Reads a regular file of at most `max` bytes; `None` if it does not exist.
    /// A symlink, directory or device at `rel` is an error, never followed or opened.
    pub fn read(&self, rel: &RelPath, max: usize) -> Result<Option<Vec<u8>>> {
        let (dir, name) = match self.parent(rel) {
            Ok(v) => v,
            Err(TreeError::Io { source, .. }) if is_missing(&source) => return Ok(None),
            Err(e) => return Err(e),
        };
        dir.read(name, max)
    }

    /// Reads a regular file as UTF-8 text (lossy); `None` if missing.
    pub fn read_text(&self, rel: &RelPath) -> Result<Option<String>> {
        Ok(self.read(rel, 16 * 1024 * 1024)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Replaces (or creates) a regular file atomically: a temporary file in the same
    /// directory, then `renameat` over the name. Whatever was at `rel` (even a directory
    /// or a symlink) is replaced, never written through.
    pub fn write_atomic(&self, rel: &RelPath, data: &[u8], mode: u32, uid: u32, gid: u32) -> Result<()> {
        let (dir, name) = self.parent(rel)?;
        dir.write_atomic(name, data, mode, uid, gid)
    }

    /// Creates the directory `rel` and its missing parents (mode 0755, root-owned).
    pub fn mkdir_all(&self, rel: &RelPath, mode: u32) -> Result<Dir> {
        let mut cur = self.dir(&RelPath::ROOT)?;
        for c in rel.components() {
            cur = cur.ensure_dir(c, mode)?;
        }
        Ok(cur)
    }

    /// Removes `rel`, recursively if it is a directory. Missing is fine.
    pub fn remove(&self, rel: &RelPath) -> Result<()> {
        let (dir, name) = match self.parent(rel) {
            Ok(v) => v,
            Err(TreeError::Io { source, .. }) if is_missing(&source) => return Ok(()),
            Err(e) => return Err(e),
        };
        dir.remove_all(name)
    }

    /// Renames within the tree (replacing `to`).
    pub fn rename(&self, from: &RelPath, to: &RelPath) -> Result<()> {
        let (fd, fname) = self.parent(from)?;
        let (td, tname) = self.parent(to)?;
        rustix::fs::renameat(&fd.fd, fname, &td.fd, tname).map_err(|e| io_err(from, "rename", e))
    }

    /// Reads a symlink's target.
    pub fn readlink(&self, rel: &RelPath) -> Result<Option<Vec<u8>>> {
        let (dir, name) = match self.parent(rel) {
            Ok(v) => v,
            Err(TreeError::Io { source, .. }) if is_missing(&source) => return Ok(None),
            Err(e) => return Err(e),
        };
        dir.readlink(name)
    }

    /// Names in directory `rel` with their types (no `.`/`..`); empty if missing.
    pub fn list(&self, rel: &RelPath) -> Result<Vec<(Vec<u8>, FileType)>> {
        match self.dir(rel) {
            Ok(d) => d.list(),
            Err(TreeError::Io { source, .. }) if is_missing(&source) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Resolves the symlinks in `rel` the way the guest will see them once the tree is its
    /// root: an absolute target starts again at the tree root and `..` stops there. Links
    /// are only read (`readlinkat`), never followed by the kernel, so the result is a
    /// symlink-free path inside the tree that the other methods can open.
    ///
    /// `None` when a directory on the way is missing; the last component may be missing
    /// (the path it would have is returned). More than [`MAX_LINK_HOPS`] links is an error.
    pub fn resolve(&self, rel: &RelPath) -> Result<Option<RelPath>> {
        let mut done: Vec<Vec<u8>> = Vec::new();
        let mut todo: std::collections::VecDeque<Vec<u8>> = rel.components().map(<[u8]>::to_vec).collect();
        let mut hops = 0;
        while let Some(c) = todo.pop_front() {
            if c.is_empty() || c == b"." {
                continue;
            }
            if c == b".." {
                done.pop();
                continue;
            }
            done.push(c);
            let here = RelPath::new(done.join(&b'/')).map_err(|e| TreeError::Io {
                path: rel.display(),
                op: "resolve",
                source: io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
            })?;
            match self.lstat(&here)? {
                None if todo.is_empty() => return Ok(Some(here)),
                None => return Ok(None),
                Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return Err(io_err(rel, "resolve", rustix::io::Errno::LOOP));
                    }
                    let target = self.readlink(&here)?.unwrap_or_default();
                    done.pop();
                    if target.first() == Some(&b'/') {
                        done.clear();
                    }
                    for part in target.split(|b| *b == b'/').rev() {
                        todo.push_front(part.to_vec());
                    }
                }
                Some(_) => {}
            }
        }
        RelPath::new(done.join(&b'/')).map(Some).map_err(|e| TreeError::Io {
            path: rel.display(),
            op: "resolve",
            source: io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
        })
    }
}

/// Symlinks [`Tree::resolve`] follows before giving up (the kernel's limit).
pub const MAX_LINK_HOPS: usize = 40;

fn is_missing(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::NOENT.raw_os_error())
        || e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error())
}

fn io_err(rel: &RelPath, op: &'static str, e: impl Into<io::Error>) -> TreeError {
    TreeError::Io { path: rel.display(), op, source: e.into() }
}

/// Prefix of the controller's temporary files; see [`temp_name`].
pub const TEMP_PREFIX: &[u8] = b".p2c-tmp.";

/// A fresh temporary name: the prefix, a per-process random tag and a counter, so it cannot
/// be predicted by a source server and never replaces one of its files. Leftovers of a
/// crashed run are found and removed by verification.
pub fn temp_name() -> Vec<u8> {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static TAG: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tag = TAG.get_or_init(|| p2c_common::token::random_hex(8));
    let mut t = TEMP_PREFIX.to_vec();
    t.extend_from_slice(format!("{tag}.{}", NEXT.fetch_add(1, Ordering::Relaxed)).as_bytes());
    t
}

impl Dir {
    /// Another handle to the same directory.
    pub fn clone_of(d: &Dir) -> Result<Dir> {
        let fd = rustix::io::fcntl_dupfd_cloexec(&d.fd, 0).map_err(|e| io_err(&d.rel, "dup", e))?;
        Ok(Dir { fd, rel: d.rel.clone() })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn rel(&self) -> &RelPath {
        &self.rel
    }

    fn child(&self, name: &[u8]) -> String {
        match self.rel.join(name) {
            Ok(p) => p.display(),
            Err(_) => format!("{}/{}", self.rel.display(), escape_bytes(name)),
        }
    }

    fn err(&self, name: &[u8], op: &'static str, e: impl Into<io::Error>) -> TreeError {
        TreeError::Io { path: self.child(name), op, source: e.into() }
    }

    pub fn lstat(&self, name: &[u8]) -> Result<Option<Stat>> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(self.err(name, "stat", e)),
        }
    }

    /// Opens a directory below this one (no symlinks).
    pub fn subdir(&self, name: &[u8]) -> Result<Dir> {
        let fd = rustix::fs::openat2(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            resolve(),
        )
        .map_err(|e| self.err(name, "open directory", e))?;
        let rel = self.rel.join(name).map_err(|_| self.err(name, "join", io::ErrorKind::InvalidInput))?;
        Ok(Dir { fd, rel })
    }

    /// Opens `name` as a directory, creating it if missing; anything else there is replaced.
    pub fn ensure_dir(&self, name: &[u8], mode: u32) -> Result<Dir> {
        match self.lstat(name)? {
            Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
            Some(_) => {
                self.remove_all(name)?;
                self.mkdir(name, mode)?;
            }
            None => self.mkdir(name, mode)?,
        }
        self.subdir(name)
    }

    pub fn mkdir(&self, name: &[u8], mode: u32) -> Result<()> {
        match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(mode)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
            Err(e) => Err(self.err(name, "mkdir", e)),
        }
    }

    pub fn read(&self, name: &[u8], max: usize) -> Result<Option<Vec<u8>>> {
        let fd = match rustix::fs::openat2(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
            resolve(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(self.err(name, "open", e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| self.err(name, "stat", e))?;
        let ft = FileType::from_raw_mode(st.st_mode);
        if ft != FileType::RegularFile {
            return Err(TreeError::WrongType {
                path: self.child(name),
                found: type_name(ft),
                expected: "file",
            });
        }
        if st.st_size as u64 > max as u64 {
            return Err(TreeError::TooLarge { path: self.child(name), max });
        }
        let mut f = std::fs::File::from(fd);
        let mut buf = Vec::with_capacity(st.st_size as usize);
        Read::by_ref(&mut f)
            .take(max as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|e| self.err(name, "read", e))?;
        if buf.len() > max {
            return Err(TreeError::TooLarge { path: self.child(name), max });
        }
        Ok(Some(buf))
    }

    pub fn readlink(&self, name: &[u8]) -> Result<Option<Vec<u8>>> {
        match rustix::fs::readlinkat(&self.fd, name, Vec::new()) {
            Ok(t) => Ok(Some(t.into_bytes())),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(self.err(name, "readlink", e)),
        }
    }

    /// Creates a fresh temporary file for `name` and returns it with
    /// its temporary name; the caller renames it into place with [`Dir::commit`].
    pub fn create_temp(&self, name: &[u8]) -> Result<(std::fs::File, Vec<u8>)> {
        let tmp = temp_name();
        let fd = rustix::fs::openat2(
            &self.fd,
            &tmp[..],
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
            resolve(),
        )
        .map_err(|e| self.err(name, "create", e))?;
        Ok((std::fs::File::from(fd), tmp))
    }

    /// Creates `name` itself if nothing is there (`None` if something is): a new file is
    /// written in place, saving the temporary name and the rename. Whoever does so must
    /// remove it if it is not completed, and must not take a file it finds there as complete.
    pub fn create_new(&self, name: &[u8]) -> Result<Option<std::fs::File>> {
        match rustix::fs::openat2(
            &self.fd,
            name,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
            resolve(),
        ) {
            Ok(fd) => Ok(Some(std::fs::File::from(fd))),
            Err(rustix::io::Errno::EXIST) => Ok(None),
            Err(e) => Err(self.err(name, "create", e)),
        }
    }

    /// Moves a temporary file over `name`. A directory at `name` is removed first.
    pub fn commit(&self, tmp: &[u8], name: &[u8]) -> Result<()> {
        match rustix::fs::renameat(&self.fd, tmp, &self.fd, name) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::ISDIR)
            | Err(rustix::io::Errno::NOTEMPTY)
            | Err(rustix::io::Errno::EXIST) => {
                self.remove_all(name)?;
                rustix::fs::renameat(&self.fd, tmp, &self.fd, name).map_err(|e| self.err(name, "rename", e))
            }
            Err(e) => Err(self.err(name, "rename", e)),
        }
    }

    pub fn write_atomic(&self, name: &[u8], data: &[u8], mode: u32, uid: u32, gid: u32) -> Result<()> {
        let (mut f, tmp) = self.create_temp(name)?;
        let res = (|| {
            f.write_all(data).map_err(|e| self.err(name, "write", e))?;
            tolerate_unprivileged(rustix::fs::fchown(&f, Some(uid_of(uid)), Some(gid_of(gid))))
                .map_err(|e| self.err(name, "chown", e))?;
            rustix::fs::fchmod(&f, Mode::from_raw_mode(mode & 0o7777))
                .map_err(|e| self.err(name, "chmod", e))?;
            self.commit(&tmp, name)
        })();
        if res.is_err() {
            let _ = rustix::fs::unlinkat(&self.fd, &tmp[..], AtFlags::empty());
        }
        res
    }

    /// Removes `name`; recursively for a directory. Never follows symlinks. Missing is fine.
    pub fn remove_all(&self, name: &[u8]) -> Result<()> {
        let Some(st) = self.lstat(name)? else {
            return Ok(());
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            let sub = self.subdir(name)?;
            for (child, _) in sub.list()? {
                sub.remove_all(&child)?;
            }
            drop(sub);
            rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR).map_err(|e| self.err(name, "rmdir", e))
        } else {
            match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
                Err(e) => Err(self.err(name, "unlink", e)),
            }
        }
    }

    pub fn list(&self) -> Result<Vec<(Vec<u8>, FileType)>> {
        let mut out = Vec::new();
        let dir = rustix::fs::Dir::read_from(&self.fd).map_err(|e| TreeError::Io {
            path: self.rel.display(),
            op: "read directory",
            source: e.into(),
        })?;
        for ent in dir {
            let ent = ent.map_err(|e| TreeError::Io {
                path: self.rel.display(),
                op: "read directory",
                source: e.into(),
            })?;
            let n: &CStr = ent.file_name();
            let b = n.to_bytes();
            if b == b"." || b == b".." {
                continue;
            }
            out.push((b.to_vec(), ent.file_type()));
        }
        Ok(out)
    }

    /// Opens a regular file for reading (never a symlink, device or fifo); `None` if missing.
    pub fn open_read(&self, name: &[u8]) -> Result<Option<std::fs::File>> {
        self.open_regular(name, OFlags::RDONLY)
    }

    /// Opens an existing regular file for reading and writing, to update it in place (never a
    /// symlink, device or fifo); `None` if there is no such file.
    pub fn open_rw(&self, name: &[u8]) -> Result<Option<std::fs::File>> {
        self.open_regular(name, OFlags::RDWR)
    }

    fn open_regular(&self, name: &[u8], access: OFlags) -> Result<Option<std::fs::File>> {
        let fd = match rustix::fs::openat2(
            &self.fd,
            name,
            access | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
            resolve(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::LOOP) => return Ok(None),
            Err(e) => return Err(self.err(name, "open", e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| self.err(name, "stat", e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Ok(None);
        }
        Ok(Some(std::fs::File::from(fd)))
    }

    /// Makes `name` another name of `src_name` in `src` (no symlink following).
    pub fn link_from(&self, src: &Dir, src_name: &[u8], name: &[u8]) -> Result<()> {
        rustix::fs::linkat(&src.fd, src_name, &self.fd, name, AtFlags::empty())
            .map_err(|e| self.err(name, "link", e))
    }

    /// Sets an extended attribute on `name` itself, without opening it (so it works on
    /// symlinks, device nodes and fifos).
    pub fn set_xattr(&self, name: &[u8], attr: &[u8], value: &[u8]) -> Result<()> {
        use std::os::fd::AsRawFd;
        let mut p = format!("/proc/self/fd/{}/", self.fd.as_raw_fd()).into_bytes();
        p.extend_from_slice(name);
        rustix::fs::lsetxattr(p, attr, value, rustix::fs::XattrFlags::empty())
            .map_err(|e| self.err(name, "set xattr", e))
    }

    pub fn symlink(&self, target: &[u8], name: &[u8]) -> Result<()> {
        rustix::fs::symlinkat(target, &self.fd, name).map_err(|e| self.err(name, "symlink", e))
    }

    pub fn mknod(&self, name: &[u8], ft: FileType, mode: u32, major: u32, minor: u32) -> Result<()> {
        let dev = rustix::fs::makedev(major, minor);
        rustix::fs::mknodat(&self.fd, name, ft, Mode::from_raw_mode(mode & 0o7777), dev)
            .map_err(|e| self.err(name, "mknod", e))
    }

    /// Numeric owner of `name` itself (symlinks included).
    pub fn chown(&self, name: &[u8], uid: u32, gid: u32) -> Result<()> {
        tolerate_unprivileged(rustix::fs::chownat(
            &self.fd,
            name,
            Some(uid_of(uid)),
            Some(gid_of(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        ))
        .map_err(|e| self.err(name, "chown", e))
    }

    /// Mode of `name` (not for symlinks, which have none on Linux).
    pub fn chmod(&self, name: &[u8], mode: u32) -> Result<()> {
        rustix::fs::chmodat(&self.fd, name, Mode::from_raw_mode(mode & 0o7777), AtFlags::empty())
            .map_err(|e| self.err(name, "chmod", e))
    }

    /// Modification (and access) time of `name` itself, nanoseconds included.
    pub fn set_mtime(&self, name: &[u8], sec: i64, nsec: u32) -> Result<()> {
        let ts = rustix::fs::Timespec { tv_sec: sec, tv_nsec: nsec.into() };
        let times = rustix::fs::Timestamps { last_access: ts, last_modification: ts };
        rustix::fs::utimensat(&self.fd, name, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.err(name, "set times", e))
    }
}

/// A chown refused because the controller is not root (the demo run by a user) leaves the
/// caller's ownership; as root every chown must succeed.
fn tolerate_unprivileged(r: rustix::io::Result<()>) -> rustix::io::Result<()> {
    match r {
        Err(rustix::io::Errno::PERM) if !rustix::process::geteuid().is_root() => Ok(()),
        other => other,
    }
}

pub fn uid_of(id: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(id)
}

pub fn gid_of(id: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(id)
}

/// A relative path from a literal known at compile time (guest rewrite paths).
///
/// Panics if the literal is not a valid relative path; every caller passes a constant.
pub fn rel(s: &str) -> RelPath {
    match RelPath::new(s.trim_start_matches('/').as_bytes().to_vec()) {
        Ok(p) => p,
        Err(e) => panic!("invalid constant path {s:?}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, tempfile::TempDir, Tree) {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"node data").unwrap();
        let t = tempfile::tempdir().unwrap();
        let tree = Tree::open(t.path()).unwrap();
        (outside, t, tree)
    }

    #[test]
    fn planted_symlinks_are_never_followed() {
        let (outside, t, tree) = setup();
        symlink(outside.path(), t.path().join("etc")).unwrap();
        symlink(outside.path().join("secret"), t.path().join("passwd")).unwrap();
        // Through a symlinked directory: refused.
        assert!(tree.write_atomic(&rel("etc/secret"), b"x", 0o644, 0, 0).is_err());
        assert!(!matches!(tree.read(&rel("etc/secret"), 100), Ok(Some(_))));
        // Over a symlinked file: the link is replaced, the target untouched.
        tree.write_atomic(&rel("passwd"), b"new", 0o644, 0, 0).unwrap();
        assert_eq!(std::fs::read(outside.path().join("secret")).unwrap(), b"node data");
        assert_eq!(std::fs::read(t.path().join("passwd")).unwrap(), b"new");
        // Reading a symlink is refused, not followed.
        symlink(outside.path().join("secret"), t.path().join("link")).unwrap();
        assert!(tree.read(&rel("link"), 100).is_err());
        // Removing a symlinked directory removes the link only.
        tree.remove(&rel("etc")).unwrap();
        assert!(outside.path().join("secret").exists());
    }

    #[test]
    fn mkdir_all_replaces_non_directories() {
        let (_o, t, tree) = setup();
        std::fs::write(t.path().join("a"), b"file").unwrap();
        tree.mkdir_all(&rel("a/b/c"), 0o755).unwrap();
        assert!(t.path().join("a/b/c").is_dir());
        tree.write_atomic(&rel("a/b/c/f"), b"hi", 0o600, 0, 0).unwrap();
        assert_eq!(tree.read_text(&rel("a/b/c/f")).unwrap().unwrap(), "hi");
        assert!(tree.read(&rel("nope/x"), 10).unwrap().is_none());
        tree.remove(&rel("a")).unwrap();
        assert!(!t.path().join("a").exists());
    }

    #[test]
    fn resolve_stays_inside_the_tree() {
        let (outside, t, tree) = setup();
        std::fs::create_dir_all(t.path().join("usr/lib/systemd")).unwrap();
        std::fs::write(t.path().join("usr/lib/systemd/systemd"), b"bin").unwrap();
        symlink("usr/lib", t.path().join("lib")).unwrap();
        std::fs::create_dir(t.path().join("sbin")).unwrap();
        symlink("/lib/systemd/systemd", t.path().join("sbin/init")).unwrap();
        assert_eq!(tree.resolve(&rel("sbin/init")).unwrap().unwrap(), rel("usr/lib/systemd/systemd"));
        // `..` stops at the root and absolute targets restart there, never on the node.
        symlink("../../../../etc", t.path().join("sbin/up")).unwrap();
        assert_eq!(tree.resolve(&rel("sbin/up/x")).unwrap(), None);
        symlink(outside.path(), t.path().join("out")).unwrap();
        assert_eq!(tree.resolve(&rel("out/secret")).unwrap(), None);
        assert!(!matches!(tree.read(&rel("out/secret"), 100), Ok(Some(_))));
        // Missing last component: its path; missing directory: none.
        assert_eq!(tree.resolve(&rel("lib/nope")).unwrap().unwrap(), rel("usr/lib/nope"));
        assert_eq!(tree.resolve(&rel("nope/x")).unwrap(), None);
        // Loops are an error.
        symlink("loop2", t.path().join("loop1")).unwrap();
        symlink("loop1", t.path().join("loop2")).unwrap();
        assert!(tree.resolve(&rel("loop1")).is_err());
    }

    #[test]
    fn size_limit_on_read() {
        let (_o, t, tree) = setup();
        std::fs::write(t.path().join("big"), vec![0u8; 1000]).unwrap();
        assert!(matches!(tree.read(&rel("big"), 999), Err(TreeError::TooLarge { .. })));
    }
}
