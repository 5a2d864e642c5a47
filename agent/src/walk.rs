//! A depth-first walk of the source tree in walk order (each directory's names sorted by
//! bytes), never following symlinks, not descending into pseudo or network file systems.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use p2c_common::manifest::{Problem, Xattr, limits};
use p2c_common::paths::RelPath;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

/// What the walk found at one path.
#[derive(Debug)]
pub enum Kind {
    Dir,
    File,
    Symlink(Vec<u8>),
    Fifo,
    Char(u32, u32),
    Block(u32, u32),
    /// Another name of a file found earlier in this walk.
    HardLink(RelPath),
}

#[derive(Debug)]
pub struct Found {
    pub path: RelPath,
    pub st: Stat,
    pub kind: Kind,
    pub xattrs: Vec<Xattr>,
}

#[derive(Clone)]
pub struct WalkOptions {
    pub excludes: Vec<RelPath>,
    /// Directories to list but not enter (mount points of pseudo and network file systems).
    pub no_descend: HashSet<RelPath>,
    /// Read extended attributes (not needed for counting).
    pub xattrs: bool,
    /// Read them for regular files too; when false the caller reads them only for files
    /// its cache does not know (an unchanged file has unchanged attributes: they change its
    /// ctime).
    pub file_xattrs: bool,
}

impl WalkOptions {
    /// Whether an operator exclude covers `p`.
    pub fn is_excluded(&self, p: &RelPath) -> bool {
        self.excludes.iter().any(|x| p.starts_with(x))
    }
}

struct Frame {
    fd: OwnedFd,
    rel: RelPath,
    names: Vec<Vec<u8>>,
    pos: usize,
}

pub struct Walker {
    stack: Vec<Frame>,
    opts: WalkOptions,
    links: HashMap<(u64, u64), RelPath>,
    root: Option<(OwnedFd, Stat)>,
    /// The path of the walk's first directory (the root, or one directory of a listing of
    /// changes).
    base: RelPath,
    /// Enter subdirectories (false: the first directory and its children only).
    descend: bool,
    /// List the first directory (false: only its own entry).
    list_first: bool,
    pub problems: Vec<Problem>,
}

fn list(fd: &OwnedFd) -> std::io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for ent in rustix::fs::Dir::read_from(fd)? {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    names.sort_unstable();
    Ok(names)
}

/// The extended attributes of `path` itself (not following a symlink), sorted by name and
/// bounded by the manifest limits.
pub fn read_xattrs(path: &[u8]) -> Vec<Xattr> {
    let mut out = Vec::new();
    // rustix returns 0 for an empty buffer, so ask for the size with the `_query` calls.
    let size = match rustix::fs::llistxattr_query(path) {
        Ok(0) | Err(_) => return out,
        Ok(n) => n.min(1 << 20),
    };
    let mut names = vec![0u8; size];
    let n = rustix::fs::llistxattr(path, &mut names[..]).unwrap_or(0);
    let mut total = 0;
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if out.len() >= limits::MAX_XATTRS || name.len() > limits::MAX_XATTR_NAME {
            break;
        }
        let mut value = vec![0u8; limits::MAX_XATTR_VALUE];
        if let Ok(len) = rustix::fs::lgetxattr(path, name, &mut value[..]) {
            value.truncate(len);
            total += name.len() + len;
            if total > limits::MAX_XATTR_TOTAL {
                break;
            }
            out.push(Xattr { name: name.to_vec(), value });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn fd_path(fd: &OwnedFd, name: Option<&[u8]>) -> Vec<u8> {
    let mut p = format!("/proc/self/fd/{}", fd.as_raw_fd()).into_bytes();
    if let Some(n) = name {
        p.push(b'/');
        p.extend_from_slice(n);
    }
    p
}

impl Walker {
    pub fn new(root: &Path, opts: WalkOptions) -> std::io::Result<Walker> {
        let fd = rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        let st = rustix::fs::fstat(&fd)?;
        Ok(Walker::from_dir(fd, st, RelPath::ROOT, opts, true, true))
    }

    /// A walk from an open directory whose path in the tree is `base`: with `descend`, of
    /// everything beneath it; without, of it and (with `list_first`) its children.
    pub fn from_dir(
        fd: OwnedFd,
        st: Stat,
        base: RelPath,
        opts: WalkOptions,
        descend: bool,
        list_first: bool,
    ) -> Walker {
        Walker {
            stack: Vec::new(),
            opts,
            links: HashMap::new(),
            root: Some((fd, st)),
            base,
            descend,
            list_first,
            problems: Vec::new(),
        }
    }

    fn problem(&mut self, path: RelPath, reason: impl Into<String>) {
        if self.problems.len() < 100_000 {
            self.problems.push(Problem { path, reason: reason.into() });
        }
    }
}

impl Iterator for Walker {
    type Item = Found;

    fn next(&mut self) -> Option<Found> {
        if let Some((fd, st)) = self.root.take() {
            let xattrs = if self.opts.xattrs { read_xattrs(&fd_path(&fd, None)) } else { Vec::new() };
            let base = self.base.clone();
            if self.list_first {
                match list(&fd) {
                    Ok(names) => self.stack.push(Frame { fd, rel: base.clone(), names, pos: 0 }),
                    Err(e) => self.problem(base.clone(), format!("cannot list: {e}")),
                }
            }
            return Some(Found { path: base, st, kind: Kind::Dir, xattrs });
        }
        loop {
            let top = self.stack.last_mut()?;
            if top.pos >= top.names.len() {
                self.stack.pop();
                continue;
            }
            let name = std::mem::take(&mut top.names[top.pos]);
            top.pos += 1;
            let path = match top.rel.join(&name) {
                Ok(p) => p,
                Err(e) => {
                    let parent = top.rel.clone();
                    self.problem(parent, format!("name not carried: {e}"));
                    continue;
                }
            };
            if self.opts.is_excluded(&path) {
                continue;
            }
            let top = self.stack.last()?;
            let st = match rustix::fs::statat(&top.fd, &name[..], AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(rustix::io::Errno::NOENT) => {
                    self.problem(path, "vanished during the walk");
                    continue;
                }
                Err(e) => {
                    self.problem(path, format!("cannot stat: {e}"));
                    continue;
                }
            };
            let ft = FileType::from_raw_mode(st.st_mode);
            let wanted = ft != FileType::Socket && (ft != FileType::RegularFile || self.opts.file_xattrs);
            let xattrs = if self.opts.xattrs && wanted {
                read_xattrs(&fd_path(&top.fd, Some(&name)))
            } else {
                Vec::new()
            };
            if ft != FileType::Directory && st.st_nlink > 1 && ft != FileType::Socket {
                let id = (st.st_dev, st.st_ino);
                if let Some(first) = self.links.get(&id) {
                    return Some(Found { kind: Kind::HardLink(first.clone()), path, st, xattrs });
                }
                self.links.insert(id, path.clone());
            }
            let kind = match ft {
                FileType::Directory => {
                    if self.descend && !self.opts.no_descend.contains(&path) {
                        let sub = rustix::fs::openat(
                            &top.fd,
                            &name[..],
                            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                            Mode::empty(),
                        );
                        match sub.map_err(std::io::Error::from).and_then(|fd| list(&fd).map(|n| (fd, n))) {
                            Ok((fd, names)) => {
                                self.stack.push(Frame { fd, rel: path.clone(), names, pos: 0 })
                            }
                            Err(e) => self.problem(path.clone(), format!("cannot list: {e}")),
                        }
                    }
                    Kind::Dir
                }
                FileType::RegularFile => Kind::File,
                FileType::Symlink => match rustix::fs::readlinkat(&top.fd, &name[..], Vec::new()) {
                    Ok(t) => Kind::Symlink(t.into_bytes()),
                    Err(e) => {
                        self.problem(path, format!("cannot read link: {e}"));
                        continue;
                    }
                },
                FileType::Fifo => Kind::Fifo,
                FileType::CharacterDevice => {
                    Kind::Char(rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev))
                }
                FileType::BlockDevice => {
                    Kind::Block(rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev))
                }
                FileType::Socket => {
                    self.problem(
                        path,
                        "socket: not copied (sockets are recreated by the services that own them)",
                    );
                    continue;
                }
                _ => {
                    self.problem(path, "unknown file type: not copied");
                    continue;
                }
            };
            return Some(Found { path, st, kind, xattrs });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_order_excludes_and_links() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        std::fs::create_dir_all(r.join("a-b")).unwrap();
        std::fs::create_dir_all(r.join("proc/1")).unwrap();
        std::fs::write(r.join("a/f"), b"x").unwrap();
        std::fs::hard_link(r.join("a/f"), r.join("a-b/g")).unwrap();
        std::fs::write(r.join("skip.me"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", r.join("a/l")).unwrap();
        let opts = WalkOptions {
            excludes: vec![RelPath::new(b"skip.me".to_vec()).unwrap()],
            no_descend: [RelPath::new(b"proc".to_vec()).unwrap()].into_iter().collect(),
            xattrs: true,
            file_xattrs: true,
        };
        let found: Vec<Found> = Walker::new(r, opts).unwrap().collect();
        let paths: Vec<String> = found.iter().map(|f| f.path.display()).collect();
        assert_eq!(paths, ["/", "/a", "/a/b", "/a/f", "/a/l", "/a-b", "/a-b/g", "/proc"]);
        assert!(matches!(&found[6].kind, Kind::HardLink(t) if t.display() == "/a/f"));
        assert!(matches!(&found[4].kind, Kind::Symlink(t) if t == b"/etc/passwd"));
    }
}
