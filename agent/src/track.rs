//! Change tracking between copy passes.
//!
//! A fanotify watch on every local file system of the source tree records the directories
//! in which something was created, removed, renamed, written to or had its attributes
//! changed. A later pass whose base pass the watch covers lists only those directories,
//! and walks only the subtrees created or moved in, instead of walking the whole tree.
//!
//! What the watch cannot see makes it give up rather than guess: a lost event (queue
//! overflow), too many changed directories, a change of the local mounts, a file system
//! that cannot be watched. The pass then walks everything. Writes through a shared memory
//! mapping raise no event at all, which is why the final pass of a cutover always walks
//! the whole tree, and only live passes before it list changes.

use p2c_common::sync::Locked;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use nix::libc;
use p2c_common::manifest::Problem;
use p2c_common::paths::RelPath;
use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::walk::{Found, Kind, WalkOptions, Walker};

/// Most changed directories remembered; past it the watch gives up until the next walk.
const MAX_DIRTY: usize = 50_000;
/// Most entries a listing of changes holds (in memory, so bounded); past it the pass walks.
pub const MAX_LISTED: usize = 50_000;
/// Most directories and subtrees one listing reports.
pub const MAX_REGIONS: usize = 20_000;

const MASK: u64 = libc::FAN_MODIFY
    | libc::FAN_ATTRIB
    | libc::FAN_CLOSE_WRITE
    | libc::FAN_CREATE
    | libc::FAN_DELETE
    | libc::FAN_MOVED_FROM
    | libc::FAN_MOVED_TO
    | libc::FAN_ONDIR;

/// A directory as the kernel names it: file system id and file handle.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Handle {
    fsid: [u8; 8],
    /// `struct file_handle` as read: handle_bytes, handle_type, f_handle.
    raw: Vec<u8>,
}

#[derive(Default)]
struct Dirty {
    epoch: u64,
    /// Directories created or moved into this one: walked whole, with the epoch of the event.
    new_dirs: HashMap<Vec<u8>, u64>,
}

#[derive(Default)]
struct State {
    epoch: u64,
    dirty: HashMap<Handle, Dirty>,
    /// Entries of all `new_dirs` together.
    new_dirs: usize,
    /// The newest epoch in which events were lost.
    lost: Option<u64>,
    /// Directories moved or renamed so far: a listing made while one moves may name paths
    /// that were never sent, and is not used.
    dir_moves: u64,
}

impl State {
    fn lose(&mut self) {
        self.dirty.clear();
        self.new_dirs = 0;
        self.lost = Some(self.epoch);
    }

    fn note(&mut self, h: Handle, name: &[u8], mask: u64) {
        if (!self.dirty.contains_key(&h) && self.dirty.len() >= MAX_DIRTY) || self.new_dirs >= MAX_DIRTY {
            self.lose();
            return;
        }
        let epoch = self.epoch;
        let ondir = mask & libc::FAN_ONDIR != 0;
        if ondir && mask & (libc::FAN_MOVED_FROM | libc::FAN_MOVED_TO) != 0 {
            self.dir_moves += 1;
        }
        let d = self.dirty.entry(h).or_default();
        d.epoch = epoch;
        let new_dir =
            ondir && mask & (libc::FAN_CREATE | libc::FAN_MOVED_TO) != 0 && !name.is_empty() && name != b".";
        if new_dir && d.new_dirs.insert(name.to_vec(), epoch).is_none() {
            self.new_dirs += 1;
        }
    }
}

/// What changed since a base pass: directories to list again, subtrees to walk whole.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub dirs: Vec<RelPath>,
    pub subtrees: Vec<RelPath>,
}

/// A fanotify watch on the file systems of one source tree.
pub struct Tracker {
    fd: OwnedFd,
    root: PathBuf,
    /// Where each watched file system is mounted, by file system id, to open handles
    /// through (opened when needed: a descriptor kept open would make unmounting it fail).
    mounts: HashMap<[u8; 8], PathBuf>,
    /// The local file systems mounted below the root when the watch started.
    signature: Vec<String>,
    state: Mutex<State>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    #[error("fanotify is not available: {0}")]
    Init(std::io::Error),
    #[error("cannot watch the file system of {0}: {1}")]
    Mark(String, std::io::Error),
    #[error("{0} and {1} are the same file system (a bind mount): a change could not be told apart")]
    Alias(String, String),
}

fn fsid_of(path: &Path) -> std::io::Result<[u8; 8]> {
    let st = rustix::fs::statfs(path)?;
    // `fsid_t` is two ints, as the kernel reports it in events.
    // SAFETY: both are 8 plain bytes.
    Ok(unsafe { std::mem::transmute::<rustix::fs::Fsid, [u8; 8]>(st.f_fsid) })
}

impl Tracker {
    /// Starts watching the file systems of `root` and of `mounts` (local file systems
    /// mounted below it). `signature` names the mounts the watch is valid for.
    pub fn start(
        root: &Path,
        mounts: &[PathBuf],
        signature: Vec<String>,
    ) -> Result<Arc<Tracker>, TrackError> {
        // SAFETY: plain syscall; the result is checked.
        let raw = unsafe {
            libc::fanotify_init(
                libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK | libc::FAN_REPORT_DFID_NAME,
                (libc::O_RDONLY | libc::O_LARGEFILE) as libc::c_uint,
            )
        };
        if raw < 0 {
            return Err(TrackError::Init(std::io::Error::last_os_error()));
        }
        // SAFETY: a new descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut fds = HashMap::new();
        for m in std::iter::once(root).chain(mounts.iter().map(PathBuf::as_path)) {
            let mark_err = |e: std::io::Error| TrackError::Mark(m.display().to_string(), e);
            let c = std::ffi::CString::new(m.as_os_str().as_encoded_bytes())
                .map_err(|_| mark_err(std::io::ErrorKind::InvalidInput.into()))?;
            // SAFETY: valid descriptor and NUL-terminated path.
            let r = unsafe {
                libc::fanotify_mark(
                    fd.as_raw_fd(),
                    libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
                    MASK,
                    libc::AT_FDCWD,
                    c.as_ptr(),
                )
            };
            if r < 0 {
                return Err(mark_err(std::io::Error::last_os_error()));
            }
            let fsid = fsid_of(m).map_err(mark_err)?;
            if let Some(other) = fds.insert(fsid, m.to_path_buf()) {
                return Err(TrackError::Alias(other.display().to_string(), m.display().to_string()));
            }
        }
        // Handles read back as canonical paths: compare them with the canonical root.
        let root = root.canonicalize().map_err(|e| TrackError::Mark(root.display().to_string(), e))?;
        let t = Arc::new(Tracker { fd, root, mounts: fds, signature, state: Mutex::new(State::default()) });
        // Drain the queue often so that a busy server does not overflow it between passes.
        let weak: Weak<Tracker> = Arc::downgrade(&t);
        std::thread::Builder::new()
            .name("track".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(200));
                    match weak.upgrade() {
                        Some(t) => t.drain(),
                        None => return,
                    }
                }
            })
            .map_err(TrackError::Init)?;
        Ok(t)
    }

    pub fn signature(&self) -> &[String] {
        &self.signature
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.locked()
    }

    /// Reads every queued event into the state.
    fn drain(&self) {
        let mut st = self.lock();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rustix::io::read(&self.fd, &mut buf[..]) {
                Ok(0) => return,
                Ok(n) => parse(&buf[..n], &mut st),
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "change tracking stopped reading events");
                    st.lose();
                    return;
                }
            }
        }
    }

    /// Starts a new epoch: every change from now on belongs to it. Call before a pass
    /// walks or lists; the value is that pass's base for the next one.
    pub fn begin(&self) -> u64 {
        self.drain();
        let mut st = self.lock();
        st.epoch += 1;
        st.epoch
    }

    /// Directories moved or renamed so far: a listing made while one moved is not used.
    pub fn dir_moves(&self) -> u64 {
        self.drain();
        self.lock().dir_moves
    }

    /// What changed since `epoch` began, or `None` when the watch cannot tell.
    pub fn changes_since(&self, epoch: u64) -> Option<Changes> {
        self.drain();
        let (dirs, subs): (Vec<Handle>, Vec<(Handle, Vec<u8>)>) = {
            let st = self.lock();
            if st.lost.is_some_and(|l| l >= epoch) {
                return None;
            }
            let mut dirs = Vec::new();
            let mut subs = Vec::new();
            for (h, d) in &st.dirty {
                if d.epoch >= epoch {
                    dirs.push(h.clone());
                }
                for (name, e) in &d.new_dirs {
                    if *e >= epoch {
                        subs.push((h.clone(), name.clone()));
                    }
                }
            }
            (dirs, subs)
        };
        // Opened for this listing only: a descriptor kept open would make unmounting fail.
        let mut fds = HashMap::new();
        for (fsid, path) in &self.mounts {
            let dir =
                rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty());
            fds.insert(*fsid, dir.ok()?);
        }
        let mut out = Changes::default();
        let mut seen = HashSet::new();
        for h in dirs {
            if let Some(p) = self.resolve(&fds, &h)?
                && seen.insert(p.clone())
            {
                out.dirs.push(p);
            }
        }
        let mut seen_sub = HashSet::new();
        for (h, name) in subs {
            if let Some(p) = self.resolve(&fds, &h)?.and_then(|p| p.join(&name).ok())
                && seen_sub.insert(p.clone())
            {
                out.subtrees.push(p);
            }
        }
        Some(out)
    }

    /// The path below the root of a directory handle: `Some(None)` when it is gone (its
    /// parent's event covers it) or outside the root, `None` when it cannot be told (the
    /// watch must not be trusted then).
    fn resolve(&self, mounts: &HashMap<[u8; 8], OwnedFd>, h: &Handle) -> Option<Option<RelPath>> {
        let mount = mounts.get(&h.fsid)?;
        // `struct file_handle` wants 4-byte alignment.
        let mut buf = vec![0u64; h.raw.len().div_ceil(8)];
        // SAFETY: `buf` holds at least `raw.len()` bytes.
        unsafe { std::ptr::copy_nonoverlapping(h.raw.as_ptr(), buf.as_mut_ptr().cast::<u8>(), h.raw.len()) };
        // SAFETY: a complete file_handle as the kernel reported it; the result is checked.
        let raw = unsafe {
            libc::open_by_handle_at(
                mount.as_raw_fd(),
                buf.as_mut_ptr().cast::<libc::file_handle>(),
                libc::O_PATH | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ESTALE | libc::ENOENT) => Some(None),
                _ => {
                    tracing::info!(error = %e, "change tracking cannot open a directory handle");
                    None
                }
            };
        }
        // SAFETY: a new descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let st = rustix::fs::fstat(&fd).ok()?;
        if st.st_nlink == 0 {
            return Some(None);
        }
        let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        let Ok(rel) = path.strip_prefix(&self.root) else { return Some(None) };
        // The name must lead to this very directory (a directory outside the mount it was
        // opened through can read back under a wrong name).
        let again = rustix::fs::statat(rustix::fs::CWD, &path, rustix::fs::AtFlags::SYMLINK_NOFOLLOW);
        if !again.is_ok_and(|a| a.st_dev == st.st_dev && a.st_ino == st.st_ino) {
            return None;
        }
        Some(RelPath::new(rel.as_os_str().as_encoded_bytes().to_vec()).ok())
    }
}

fn ne_u16(b: &[u8]) -> u16 {
    u16::from_ne_bytes([b[0], b[1]])
}

fn ne_u32(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

/// Parses a buffer of fanotify events (FAN_REPORT_DFID_NAME) into the state.
fn parse(buf: &[u8], st: &mut State) {
    const META: usize = std::mem::size_of::<libc::fanotify_event_metadata>();
    let mut off = 0;
    while off + META <= buf.len() {
        let ev = &buf[off..];
        let event_len = ne_u32(&ev[0..4]) as usize;
        let metadata_len = ne_u16(&ev[6..8]) as usize;
        if event_len < META || event_len > ev.len() || metadata_len > event_len {
            st.lose();
            return;
        }
        let mask = u64::from_ne_bytes(ev[8..16].try_into().unwrap_or_default());
        let fd = i32::from_ne_bytes(ev[16..20].try_into().unwrap_or_default());
        if fd >= 0 {
            // Not expected in FID mode; never leak one.
            // SAFETY: the kernel gave us this descriptor.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        if mask & libc::FAN_Q_OVERFLOW != 0 {
            st.lose();
        }
        let mut i = metadata_len;
        while i + 4 <= event_len {
            let info_type = ev[i];
            let len = ne_u16(&ev[i + 2..i + 4]) as usize;
            if len < 4 || i + len > event_len {
                break;
            }
            let rec = &ev[i..i + len];
            let fid_info = matches!(
                info_type,
                libc::FAN_EVENT_INFO_TYPE_DFID_NAME
                    | libc::FAN_EVENT_INFO_TYPE_DFID
                    | libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME
                    | libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME
            );
            if fid_info && rec.len() >= 20 {
                let hbytes = ne_u32(&rec[12..16]) as usize;
                let hend = 20 + hbytes;
                if hend <= rec.len() {
                    let mut fsid = [0u8; 8];
                    fsid.copy_from_slice(&rec[4..12]);
                    let h = Handle { fsid, raw: rec[12..hend].to_vec() };
                    let name = &rec[hend..];
                    let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
                    st.note(h, name, mask);
                }
            }
            i += len;
        }
        off += event_len;
    }
}

/// Entries of a listing of changes, in walk order, and the problems met.
pub struct Listed {
    pub found: Vec<Found>,
    pub problems: Vec<Problem>,
    pub changes: Changes,
}

/// Lists what `changes` names below `root`: each directory with its direct children,
/// each subtree whole. `Err` says why a full walk is needed instead.
pub fn list(root: &Path, changes: &Changes, opts: &WalkOptions) -> Result<Listed, String> {
    if changes.dirs.len() + changes.subtrees.len() > MAX_REGIONS {
        return Err(format!("more than {MAX_REGIONS} directories changed"));
    }
    // Inside a file system that is not copied (only its mount point is).
    let inside_skipped = |p: &RelPath| opts.no_descend.iter().any(|n| p.starts_with(n) && p != n);
    let mut found: BTreeMap<Vec<u8>, Found> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut kept = Changes::default();
    let regions = changes.dirs.iter().map(|d| (d, false)).chain(changes.subtrees.iter().map(|s| (s, true)));
    for (rel, whole) in regions {
        if opts.is_excluded(rel) || inside_skipped(rel) {
            continue;
        }
        let abs = if rel.is_root() {
            root.to_path_buf()
        } else {
            root.join(std::ffi::OsStr::from_bytes(rel.as_bytes()))
        };
        let fd = match rustix::fs::openat2(
            rustix::fs::CWD,
            &abs,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => fd,
            // Gone, or no longer a directory: the event in its parent covers it, and the
            // controller removes what it had there.
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => {
                if whole {
                    kept.subtrees.push(rel.clone())
                } else {
                    kept.dirs.push(rel.clone())
                }
                continue;
            }
            Err(e) => return Err(format!("cannot open {}: {e}", rel.display())),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| format!("cannot stat {}: {e}", rel.display()))?;
        let descend = whole && !opts.no_descend.contains(rel);
        let list_children = !opts.no_descend.contains(rel);
        let mut w = Walker::from_dir(fd, st, rel.clone(), opts.clone(), descend, list_children);
        for f in w.by_ref() {
            if !matches!(f.kind, Kind::Dir) && f.st.st_nlink > 1 {
                return Err(format!("{} has other hard links", f.path.display()));
            }
            found.entry(f.path.walk_key()).or_insert(f);
            if found.len() > MAX_LISTED {
                return Err(format!("more than {MAX_LISTED} entries changed"));
            }
        }
        problems.append(&mut w.problems);
        if whole { kept.subtrees.push(rel.clone()) } else { kept.dirs.push(rel.clone()) }
    }
    Ok(Listed { found: found.into_values().collect(), problems, changes: kept })
}

/// The agent's change tracking across passes and sessions: one watch for the source tree,
/// and for each migration the epoch in which each of its complete passes began.
#[derive(Default)]
pub struct Tracking {
    inner: Mutex<TrackingInner>,
}

impl std::fmt::Debug for Tracking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.inner.locked();
        f.debug_struct("Tracking").field("watching", &g.tracker.is_some()).finish()
    }
}

#[derive(Default)]
struct TrackingInner {
    tracker: Option<Arc<Tracker>>,
    /// Which watch `tracker` is: a base recorded on another one means nothing.
    generation: u64,
    /// Per migration, per complete pass: (watch generation, epoch it began in).
    bases: HashMap<String, HashMap<u32, (u64, u64)>>,
    warned: bool,
}

/// The local file systems mounted below the root (their mount points, absolute), and the
/// mounts that matter to the watch, as its signature.
pub struct Mounts {
    pub local: Vec<PathBuf>,
    pub signature: Vec<String>,
}

/// What [`Tracking::prepare`] hands the pass: the epoch it began in (to record with
/// [`Tracking::complete`] when it completes) and the listing of changes, if any.
#[derive(Default)]
pub struct Prepared {
    pub epoch: Option<(u64, u64)>,
    pub listing: Option<(u32, Listed)>,
}

impl Tracking {
    /// Prepares a pass: stops the watch when tracking is not `enabled`, else starts it if
    /// needed (again if the mounts changed), begins this pass's epoch, and lists what
    /// changed since pass `since` if the watch covers it.
    pub fn prepare(
        &self,
        migration: &str,
        since: Option<u32>,
        root: &Path,
        mounts: Mounts,
        opts: &WalkOptions,
        enabled: bool,
    ) -> Prepared {
        let (tracker, generation, base) = {
            let mut g = self.inner.locked();
            if !enabled {
                // Not wanted (tracking off, or the final pass of a cutover): no watch
                // costs the server anything.
                g.tracker = None;
                g.bases.clear();
                return Prepared::default();
            }
            if g.tracker.as_ref().is_some_and(|t| t.signature() != mounts.signature.as_slice()) {
                tracing::info!("the local mounts changed: change tracking starts again");
                g.tracker = None;
                g.bases.clear();
            }
            if g.tracker.is_none() {
                match Tracker::start(root, &mounts.local, mounts.signature) {
                    Ok(t) => {
                        g.tracker = Some(t);
                        g.generation += 1;
                    }
                    Err(e) => {
                        if !std::mem::replace(&mut g.warned, true) {
                            tracing::info!("no change tracking, every pass walks the whole tree: {e}");
                        }
                        return Prepared::default();
                    }
                }
            }
            let generation = g.generation;
            let base = since
                .and_then(|s| g.bases.get(migration).and_then(|m| m.get(&s)).copied())
                .filter(|(gen_of_base, _)| *gen_of_base == generation)
                .map(|(_, e)| e);
            (g.tracker.clone(), generation, base)
        };
        let Some(tracker) = tracker else { return Prepared::default() };
        let epoch = tracker.begin();
        let moves = tracker.dir_moves();
        let listing = match (since, base) {
            (None, _) => None,
            (Some(since), None) => {
                tracing::info!(since, "pass {since} was not watched here: walking the whole tree");
                None
            }
            (Some(since), Some(e)) => match tracker.changes_since(e) {
                None => {
                    tracing::info!("change tracking cannot tell what changed: walking the whole tree");
                    None
                }
                Some(ch) => match list(root, &ch, opts) {
                    // A directory moved while the listing was made: its paths may name
                    // directories the base never had.
                    Ok(_) if tracker.dir_moves() != moves => {
                        tracing::info!("a directory moved while changes were listed: walking the whole tree");
                        None
                    }
                    Ok(l) => Some((since, l)),
                    Err(why) => {
                        tracing::info!("walking the whole tree: {why}");
                        None
                    }
                },
            },
        };
        Prepared { epoch: Some((generation, epoch)), listing }
    }

    /// Records that `pass` completed: later passes may list changes since its epoch, as
    /// long as the same watch runs.
    pub fn complete(&self, migration: &str, pass: u32, epoch: (u64, u64)) {
        let mut g = self.inner.locked();
        if epoch.0 != g.generation {
            return;
        }
        let m = g.bases.entry(migration.to_string()).or_default();
        m.retain(|p, _| *p + 8 > pass);
        m.insert(pass, epoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    fn rel(s: &str) -> RelPath {
        RelPath::new(s.as_bytes().to_vec()).unwrap()
    }

    /// Waits for the watch to see what the test did (events are queued synchronously, so
    /// one drain is enough; this only names the intent).
    fn changes(t: &Tracker, e: u64) -> Changes {
        let mut c = t.changes_since(e).expect("nothing was lost");
        c.dirs.sort_by(|a, b| a.walk_cmp(b));
        c.subtrees.sort_by(|a, b| a.walk_cmp(b));
        c
    }

    #[test]
    fn records_the_directories_that_changed() {
        if !is_root() {
            eprintln!("skipped: fanotify file system watches need root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let r = d.path().canonicalize().unwrap();
        for p in ["a/b", "c", "d/e", "quiet/x"] {
            std::fs::create_dir_all(r.join(p)).unwrap();
        }
        std::fs::write(r.join("a/b/f"), b"1").unwrap();
        std::fs::write(r.join("c/g"), b"1").unwrap();
        let t = match Tracker::start(&r, &[], Vec::new()) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("skipped: {e}");
                return;
            }
        };
        let e1 = t.begin();
        assert_eq!(changes(&t, e1), Changes::default(), "nothing changed yet");
        let moves = t.dir_moves();
        std::fs::write(r.join("a/b/f"), b"22").unwrap(); // content
        std::fs::remove_file(r.join("c/g")).unwrap(); // deletion
        std::fs::rename(r.join("d/e"), r.join("moved")).unwrap(); // a directory moved in
        std::fs::create_dir(r.join("a/new")).unwrap();
        assert!(t.dir_moves() > moves, "a directory rename must count as a move");
        let c = changes(&t, e1);
        assert_eq!(c.dirs, vec![rel(""), rel("a"), rel("a/b"), rel("c"), rel("d")]);
        assert_eq!(c.subtrees, vec![rel("a/new"), rel("moved")]);
        // A later epoch sees only what happened after it began.
        let e2 = t.begin();
        std::fs::set_permissions(r.join("c"), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let c = changes(&t, e2);
        assert!(c.dirs.contains(&rel("c")) || c.dirs.contains(&rel("")), "{c:?}");
        assert!(!c.dirs.contains(&rel("a/b")), "{c:?}");
        assert!(c.subtrees.is_empty(), "{c:?}");
    }

    #[test]
    fn one_file_system_under_two_names_is_not_watched() {
        if !is_root() {
            eprintln!("skipped: fanotify file system watches need root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        // What a bind mount of the same file system below the root looks like to the watch.
        let err = Tracker::start(d.path(), &[d.path().join("sub")], Vec::new()).err().expect("refused");
        assert!(matches!(err, TrackError::Alias(..)), "{err}");
    }

    #[test]
    fn listing_changes_gives_each_directory_and_its_children_in_walk_order() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for p in ["a/b/c", "a/z", "n/m"] {
            std::fs::create_dir_all(r.join(p)).unwrap();
        }
        std::fs::write(r.join("a/f"), b"1").unwrap();
        std::fs::write(r.join("a/b/c/deep"), b"1").unwrap();
        std::fs::write(r.join("n/m/x"), b"1").unwrap();
        let opts =
            WalkOptions { excludes: vec![], no_descend: HashSet::new(), xattrs: false, file_xattrs: false };
        let ch = Changes { dirs: vec![rel("a"), rel("gone")], subtrees: vec![rel("n")] };
        let l = list(r, &ch, &opts).unwrap();
        let paths: Vec<String> = l.found.iter().map(|f| f.path.display()).collect();
        assert_eq!(paths, ["/a", "/a/b", "/a/f", "/a/z", "/n", "/n/m", "/n/m/x"]);
        // A directory that is gone is still reported: what was there goes.
        assert_eq!(l.changes.dirs, vec![rel("a"), rel("gone")]);
        std::fs::hard_link(r.join("a/f"), r.join("n/m/y")).unwrap();
        let err = list(r, &ch, &opts).err().unwrap();
        assert!(err.contains("hard links"), "{err}");
    }
}
