//! [`Fs`] over the real container tree ([`crate::tree`]): the one implementation the
//! writer runs with.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use p2c_common::manifest::{ChunkRef, Entry, EntryData, Hash32, Meta, Timestamp, Xattr};
use p2c_common::paths::RelPath;
use rustix::fs::{FileType, Mode};

use super::fs::{FileId, Found, Fs};
use super::{PassJob, ReceiveError, protocol};
use crate::state::index::{self, ChunkLocation};
use crate::tree::{Dir, Tree, TreeError};

pub(crate) struct TreeFs {
    tree: Tree,
    ctid: u32,
    private_root: std::path::PathBuf,
    keep_xattrs: bool,
    /// The directory of the last entry (entries come in walk order: mostly the same one).
    parent: Option<Arc<Dir>>,
    /// Trees of other containers local chunks were copied from (`None`: cannot be opened).
    other_trees: HashMap<u32, Option<Tree>>,
    /// The file local chunks were last copied from, kept open.
    src_file: Option<SrcFile>,
    copy_buf: Vec<u8>,
    xattr_errors: u64,
}

/// A regular file being written.
pub(crate) struct TreeFile {
    file: File,
    dir: Arc<Dir>,
    /// The temporary name the file is written under; `None` when it is written at its own
    /// name (in place, or nothing was there: its record, written last, marks it complete).
    tmp: Option<Vec<u8>>,
}

struct SrcFile {
    ctid: u32,
    key: Vec<u8>,
    file: File,
    st: rustix::fs::Stat,
}

fn ns(ts_sec: i64, ts_nsec: i64) -> i64 {
    ts_sec.saturating_mul(1_000_000_000).saturating_add(ts_nsec)
}

fn tree_io(p: &RelPath, op: &'static str, e: std::io::Error) -> ReceiveError {
    ReceiveError::Tree(TreeError::Io { path: p.display(), op, source: e })
}

fn identity(st: &rustix::fs::Stat) -> FileId {
    FileId {
        ino: st.st_ino,
        size: st.st_size as u64,
        mtime_ns: ns(st.st_mtime, st.st_mtime_nsec as i64),
        ctime_ns: ns(st.st_ctime, st.st_ctime_nsec as i64),
        nlink: st.st_nlink,
    }
}

impl TreeFs {
    /// Opens (creating it if needed) the tree of the pass.
    pub fn open(job: &PassJob) -> Result<Self, ReceiveError> {
        Ok(TreeFs {
            tree: Tree::create(&job.tree)?,
            ctid: job.ctid,
            private_root: job.private_root.clone(),
            keep_xattrs: job.keep_xattrs,
            parent: None,
            other_trees: HashMap::new(),
            src_file: None,
            copy_buf: Vec::new(),
            xattr_errors: 0,
        })
    }

    fn parent_dir(&mut self, path: &RelPath) -> Result<Arc<Dir>, ReceiveError> {
        let parent = path.parent().ok_or_else(|| protocol("the root has no parent"))?;
        if let Some(d) = &self.parent
            && *d.rel() == parent
        {
            return Ok(d.clone());
        }
        let d = self.tree.dir(&parent).map_err(|e| match e {
            TreeError::Io { source, .. }
                if source.raw_os_error() == Some(rustix::io::Errno::NOENT.raw_os_error()) =>
            {
                protocol(format!("{path}: its parent directory was not sent first"))
            }
            // The tree refuses to resolve through anything but real directories (a planted
            // symlink gives ENOTDIR or ELOOP): name what is in the way.
            TreeError::Io { source, .. }
                if source.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error())
                    || source.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) =>
            {
                match self.blocked_by(&parent) {
                    Some((p, kind)) => {
                        protocol(format!("{path}: its parent {p} is a {kind}, not a directory"))
                    }
                    None => protocol(format!("{path}: its parent is not a directory")),
                }
            }
            other => other.into(),
        })?;
        let d = Arc::new(d);
        self.parent = Some(d.clone());
        Ok(d)
    }

    /// The first component of `dir` (a path the tree could not open as a directory) that is
    /// not a directory, with its type.
    fn blocked_by(&self, dir: &RelPath) -> Option<(RelPath, &'static str)> {
        let mut cur = RelPath::ROOT;
        for c in dir.components() {
            cur = cur.join(c).ok()?;
            let st = self.tree.lstat(&cur).ok()??;
            let ft = FileType::from_raw_mode(st.st_mode);
            if ft != FileType::Directory {
                return Some((cur, crate::tree::type_name(ft)));
            }
        }
        None
    }

    fn tree_of(&mut self, ctid: u32) -> Option<&Tree> {
        if ctid == self.ctid {
            return Some(&self.tree);
        }
        let root = crate::private_area::tree_of(&self.private_root.join(ctid.to_string()));
        self.other_trees.entry(ctid).or_insert_with(|| Tree::open(&root).ok()).as_ref()
    }

    fn set_xattrs_fd(&mut self, f: &File, path: &RelPath, xattrs: &[Xattr]) {
        if !self.keep_xattrs {
            return;
        }
        for x in xattrs.iter().filter(|x| x.name != b"security.selinux") {
            if rustix::fs::fsetxattr(f, &x.name[..], &x.value[..], rustix::fs::XattrFlags::empty()).is_err() {
                self.xattr_errors += 1;
                tracing::debug!(path = %path, "cannot set extended attribute");
            }
        }
    }

    fn set_xattrs_name(&mut self, dir: &Dir, name: &[u8], xattrs: &[Xattr]) {
        if !self.keep_xattrs {
            return;
        }
        for x in xattrs.iter().filter(|x| x.name != b"security.selinux") {
            if dir.set_xattr(name, &x.name, &x.value).is_err() {
                self.xattr_errors += 1;
            }
        }
    }
}

impl Fs for TreeFs {
    type File = TreeFile;

    fn stat(&mut self, path: &RelPath) -> Result<Option<Found>, ReceiveError> {
        let st = if path.is_root() {
            self.tree.lstat(path)?
        } else {
            match self.parent_dir(path) {
                Ok(d) => d.lstat(path.file_name())?,
                Err(ReceiveError::Protocol(_)) => None,
                Err(err) => return Err(err),
            }
        };
        Ok(st.map(|st| Found {
            ft: FileType::from_raw_mode(st.st_mode),
            size: st.st_size as u64,
            mtime_sec: st.st_mtime,
        }))
    }

    fn mtime(&mut self, path: &RelPath) -> Result<Option<Timestamp>, ReceiveError> {
        Ok(self.tree.lstat(path)?.map(|st| Timestamp { sec: st.st_mtime, nsec: st.st_mtime_nsec as u32 }))
    }

    fn make_dir(&mut self, e: &Entry) -> Result<(), ReceiveError> {
        let m = &e.meta;
        if e.path.is_root() {
            let root = self.tree.root_fd();
            rustix::fs::fchown(root, Some(crate::tree::uid_of(m.uid)), Some(crate::tree::gid_of(m.gid)))
                .map_err(|err| tree_io(&e.path, "chown", err.into()))?;
            rustix::fs::fchmod(root, Mode::from_raw_mode(m.mode))
                .map_err(|err| tree_io(&e.path, "chmod", err.into()))?;
            let f = File::from(rustix::io::dup(root).map_err(|err| tree_io(&e.path, "dup", err.into()))?);
            self.set_xattrs_fd(&f, &e.path, &m.xattrs);
            return Ok(());
        }
        let parent = self.parent_dir(&e.path)?;
        let name = e.path.file_name();
        let d = parent.ensure_dir(name, 0o700)?;
        parent.chown(name, m.uid, m.gid)?;
        parent.chmod(name, m.mode)?;
        let f = File::from(rustix::io::dup(d.fd()).map_err(|err| tree_io(&e.path, "dup", err.into()))?);
        self.set_xattrs_fd(&f, &e.path, &m.xattrs);
        Ok(())
    }

    fn make_special(&mut self, e: &Entry) -> Result<(), ReceiveError> {
        let parent = self.parent_dir(&e.path)?;
        let tmp = crate::tree::temp_name();
        let m = &e.meta;
        match &e.data {
            EntryData::Symlink { target } => parent.symlink(target, &tmp)?,
            EntryData::Fifo => parent.mknod(&tmp, FileType::Fifo, m.mode, 0, 0)?,
            EntryData::CharDevice { major, minor } => {
                parent.mknod(&tmp, FileType::CharacterDevice, m.mode, *major, *minor)?
            }
            EntryData::BlockDevice { major, minor } => {
                parent.mknod(&tmp, FileType::BlockDevice, m.mode, *major, *minor)?
            }
            _ => return Err(ReceiveError::Internal("make_special on a file or directory".into())),
        }
        let res = (|| {
            parent.chown(&tmp, m.uid, m.gid)?;
            if !matches!(e.data, EntryData::Symlink { .. }) {
                parent.chmod(&tmp, m.mode)?;
            }
            Ok::<(), ReceiveError>(())
        })();
        if let Err(err) = res {
            let _ = parent.remove_all(&tmp);
            return Err(err);
        }
        self.set_xattrs_name(&parent, &tmp, &m.xattrs);
        parent.set_mtime(&tmp, m.mtime.sec, m.mtime.nsec)?;
        parent.commit(&tmp, e.path.file_name())?;
        Ok(())
    }

    fn hard_link(&mut self, path: &RelPath, target: &RelPath) -> Result<bool, ReceiveError> {
        let tst = match self.tree.lstat(target) {
            Ok(Some(st)) => st,
            missing => {
                // Never resolved through a planted symlink: say so rather than "not sent".
                if let Some((p, kind)) = target.parent().and_then(|t| self.blocked_by(&t)) {
                    return Err(protocol(format!(
                        "{path}: hard link to {target}, beneath {p}, which is a {kind}"
                    )));
                }
                missing?
                    .ok_or_else(|| protocol(format!("{path}: hard link to {target}, which was not sent")))?
            }
        };
        if FileType::from_raw_mode(tst.st_mode) == FileType::Directory {
            return Err(protocol(format!("{path}: hard link to a directory")));
        }
        if let Some(st) = self.tree.lstat(path)?
            && st.st_ino == tst.st_ino
            && st.st_dev == tst.st_dev
        {
            return Ok(false);
        }
        let parent = self.parent_dir(path)?;
        let (tdir, tname) = self.tree.parent(target)?;
        let tmp = crate::tree::temp_name();
        parent.link_from(&tdir, tname, &tmp)?;
        parent.commit(&tmp, path.file_name())?;
        Ok(true)
    }

    fn create(&mut self, path: &RelPath, recorded: bool) -> Result<TreeFile, ReceiveError> {
        let dir = self.parent_dir(path)?;
        // Writes at chunk offsets leave holes between extents; a hole at the end is made when
        // the file is closed. A file the store does not know, with nothing at its name, is
        // written in place; anything else under a temporary name renamed over it at the end.
        let direct = if recorded { None } else { dir.create_new(path.file_name())? };
        let (file, tmp) = match direct {
            Some(f) => (f, None),
            None => {
                let (f, tmp) = dir.create_temp(path.file_name())?;
                (f, Some(tmp))
            }
        };
        Ok(TreeFile { file, dir, tmp })
    }

    fn open_existing(&mut self, path: &RelPath) -> Result<Option<(TreeFile, FileId)>, ReceiveError> {
        let dir = self.parent_dir(path)?;
        let Some(file) = dir.open_rw(path.file_name())? else { return Ok(None) };
        let Ok(st) = rustix::fs::fstat(&file) else { return Ok(None) };
        Ok(Some((TreeFile { file, dir, tmp: None }, identity(&st))))
    }

    fn write_at(
        &mut self,
        f: &TreeFile,
        path: &RelPath,
        data: &[u8],
        offset: u64,
    ) -> Result<(), ReceiveError> {
        f.file.write_all_at(data, offset).map_err(|e| tree_io(path, "write", e))
    }

    fn copy_within(&mut self, f: &TreeFile, from: u64, c: &ChunkRef) -> bool {
        let mut buf = std::mem::take(&mut self.copy_buf);
        buf.resize(c.len as usize, 0);
        let ok = f.file.read_exact_at(&mut buf, from).is_ok()
            && Hash32::of(&buf) == c.hash
            && f.file.write_all_at(&buf, c.offset).is_ok();
        self.copy_buf = buf;
        ok
    }

    fn copy_from(
        &mut self,
        loc: &ChunkLocation,
        f: &TreeFile,
        path: &RelPath,
        c: &ChunkRef,
    ) -> Result<bool, ReceiveError> {
        let Some(src_path) = index::key_path(&loc.key) else { return Ok(false) };
        if src_path.is_root() {
            return Ok(false);
        }
        // Consecutive chunks mostly come from one file (an earlier version, or the same file
        // in another container): keep it open.
        let same = |s: &SrcFile| {
            s.ctid == loc.ctid
                && s.key == loc.key
                && s.st.st_ino == loc.ino
                && ns(s.st.st_ctime, s.st.st_ctime_nsec as i64) == loc.ctime_ns
        };
        // Reopened when the path now holds another file than the one kept open.
        if !self.src_file.as_ref().is_some_and(same) {
            self.src_file = None;
            let Some(tree) = self.tree_of(loc.ctid) else { return Ok(false) };
            let Ok((dir, name)) = tree.parent(&src_path) else { return Ok(false) };
            let Ok(Some(file)) = dir.open_read(name) else { return Ok(false) };
            let Ok(st) = rustix::fs::fstat(&file) else { return Ok(false) };
            self.src_file = Some(SrcFile { ctid: loc.ctid, key: loc.key.clone(), file, st });
        }
        let Some(SrcFile { file: src, st, .. }) = self.src_file.as_ref() else { return Ok(false) };
        let dst = &f.file;
        if identity(st).is(loc) {
            let mut off_in = loc.offset;
            let mut off_out = c.offset;
            let mut left = c.len as usize;
            while left > 0 {
                match rustix::fs::copy_file_range(
                    src.as_fd(),
                    Some(&mut off_in),
                    dst.as_fd(),
                    Some(&mut off_out),
                    left,
                ) {
                    Ok(0) => return Ok(false),
                    Ok(n) => left -= n,
                    Err(_) => break,
                }
            }
            if left == 0 {
                return Ok(true);
            }
        }
        let mut buf = std::mem::take(&mut self.copy_buf);
        buf.resize(c.len as usize, 0);
        let ok = src.read_exact_at(&mut buf, loc.offset).is_ok() && Hash32::of(&buf) == c.hash;
        let res = if ok {
            dst.write_all_at(&buf, c.offset).map_err(|e| tree_io(path, "write", e)).map(|_| true)
        } else {
            Ok(false)
        };
        self.copy_buf = buf;
        res
    }

    fn punch_hole(&mut self, f: &TreeFile, path: &RelPath, at: u64, len: u64) -> Result<(), ReceiveError> {
        rustix::fs::fallocate(
            &f.file,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            at,
            len,
        )
        .map_err(|e| tree_io(path, "punch hole", e.into()))
    }

    fn set_len(&mut self, f: &TreeFile, path: &RelPath, len: u64) -> Result<(), ReceiveError> {
        f.file.set_len(len).map_err(|err| tree_io(path, "truncate", err))
    }

    fn set_meta(&mut self, f: &TreeFile, path: &RelPath, m: &Meta) -> Result<(), ReceiveError> {
        let file = &f.file;
        rustix::fs::fchown(file, Some(crate::tree::uid_of(m.uid)), Some(crate::tree::gid_of(m.gid)))
            .map_err(|e| tree_io(path, "chown", e.into()))?;
        rustix::fs::fchmod(file, Mode::from_raw_mode(m.mode))
            .map_err(|e| tree_io(path, "chmod", e.into()))?;
        self.set_xattrs_fd(file, path, &m.xattrs);
        let ts = rustix::fs::Timespec { tv_sec: m.mtime.sec, tv_nsec: m.mtime.nsec.into() };
        rustix::fs::futimens(file, &rustix::fs::Timestamps { last_access: ts, last_modification: ts })
            .map_err(|e| tree_io(path, "set times", e.into()))
    }

    fn commit(&mut self, f: &TreeFile, path: &RelPath) -> Result<(), ReceiveError> {
        if let Some(tmp) = &f.tmp {
            f.dir.commit(tmp, path.file_name())?;
        }
        Ok(())
    }

    fn identity(&mut self, f: &TreeFile) -> Option<FileId> {
        rustix::fs::fstat(&f.file).ok().map(|st| identity(&st))
    }

    fn discard(&mut self, f: TreeFile, path: &RelPath) {
        let name = f.tmp.as_deref().unwrap_or(path.file_name());
        let _ = rustix::fs::unlinkat(f.dir.fd(), name, rustix::fs::AtFlags::empty());
    }

    fn remove(&mut self, path: &RelPath) -> Result<(), ReceiveError> {
        // The directory kept open may be what goes.
        self.parent = None;
        Ok(self.tree.remove(path)?)
    }

    fn set_dir_time(&mut self, p: &RelPath, t: Timestamp) -> Result<(), ReceiveError> {
        if p.is_root() {
            let ts = rustix::fs::Timespec { tv_sec: t.sec, tv_nsec: t.nsec.into() };
            rustix::fs::futimens(
                self.tree.root_fd(),
                &rustix::fs::Timestamps { last_access: ts, last_modification: ts },
            )
            .map_err(|e| tree_io(p, "set times", e.into()))?;
        } else if let Ok((d, name)) = self.tree.parent(p) {
            d.set_mtime(name, t.sec, t.nsec)?;
        }
        Ok(())
    }

    fn xattr_errors(&self) -> u64 {
        self.xattr_errors
    }
}
