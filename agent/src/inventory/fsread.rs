//! Bounded reads of the files the inventory looks at, and path resolution below `root`.
//!
//! Every read has a size cap: the agent runs in a 64 MiB budget and a source server may hold
//! anything at `/etc/...`. Paths below a `--root` directory are resolved the way a chroot
//! would (absolute symlinks and `..` stay inside root), so that a tree's
//! `/etc/resolv.conf -> /run/...` never reads the host's file.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Cap for configuration files (`/etc/...`).
pub const CONFIG_CAP: u64 = 1 << 20;
/// Cap for kernel tables (`/proc/self/mountinfo`, `/proc/net/tcp`...) and passwd/group.
pub const TABLE_CAP: u64 = 16 << 20;
/// Most entries listed from one directory.
pub const DIR_CAP: usize = 4096;
/// Most symlinks followed while resolving one path below root (as the kernel's MAXSYMLINKS).
const MAX_SYMLINKS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path} is larger than {cap} bytes")]
    TooLarge { path: String, cap: u64 },
    #[error("{path} has more than {cap} entries")]
    TooManyEntries { path: String, cap: usize },
}

impl ReadError {
    pub fn io(path: &Path, source: io::Error) -> ReadError {
        ReadError::Io { path: path.display().to_string(), source }
    }

    /// True when the file simply is not there.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Reads at most `cap` bytes of `path`; a longer file is an error.
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    let file = File::open(path).map_err(|e| ReadError::io(path, e))?;
    let mut buf = Vec::new();
    file.take(cap + 1).read_to_end(&mut buf).map_err(|e| ReadError::io(path, e))?;
    if buf.len() as u64 > cap {
        return Err(ReadError::TooLarge { path: path.display().to_string(), cap });
    }
    Ok(buf)
}

/// Reads a text file (invalid UTF-8 replaced), at most `cap` bytes.
pub fn read_text(path: &Path, cap: u64) -> Result<String, ReadError> {
    read_capped(path, cap).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Like [`read_text`], but a missing file is `Ok(None)`.
pub fn read_text_opt(path: &Path, cap: u64) -> Result<Option<String>, ReadError> {
    match read_text(path, cap) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The names in `dir`, sorted; a missing directory is empty.
pub fn list_dir(dir: &Path) -> Result<Vec<OsString>, ReadError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ReadError::io(dir, e)),
    };
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| ReadError::io(dir, e))?;
        if names.len() >= DIR_CAP {
            return Err(ReadError::TooManyEntries { path: dir.display().to_string(), cap: DIR_CAP });
        }
        names.push(entry.file_name());
    }
    names.sort();
    Ok(names)
}

/// Where the source's absolute path `abs` (e.g. `/etc/hostname`) is on this machine: below
/// `root`, with symlinks resolved inside root. A component that does not exist ends the
/// resolution (the caller's open then reports it missing).
pub fn below(root: &Path, abs: &str) -> PathBuf {
    if root == Path::new("/") {
        return PathBuf::from(abs);
    }
    resolve_in_root(root, Path::new(abs))
}

/// Resolves `abs` as if `root` were `/` (like the kernel's `RESOLVE_IN_ROOT`), in user space
/// so that it works on the old kernels source servers run.
pub fn resolve_in_root(root: &Path, abs: &Path) -> PathBuf {
    // Components still to walk, innermost last so that `pop` yields the next one.
    let mut todo: Vec<OsString> = Vec::new();
    push_components(&mut todo, abs);
    let mut done: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        match c.as_bytes() {
            b"" | b"." => continue,
            b".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let mut here = root.to_path_buf();
        here.extend(&done);
        here.push(&c);
        match std::fs::read_link(&here) {
            Ok(target) if links < MAX_SYMLINKS => {
                links += 1;
                if target.is_absolute() {
                    done.clear();
                }
                push_components(&mut todo, &target);
            }
            // Not a symlink, missing, or too many links: take the name as it is.
            _ => done.push(c),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&done);
    out
}

fn push_components(todo: &mut Vec<OsString>, p: &Path) {
    let comps: Vec<OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    todo.extend(comps.into_iter().rev());
}

/// Removes a trailing `#` comment and surrounding blanks.
pub fn strip_comment(line: &str) -> &str {
    match line.find('#') {
        Some(i) => line[..i].trim(),
        None => line.trim(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_stay_inside_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("run/resolve")).unwrap();
        std::fs::write(root.join("run/resolve/stub.conf"), "nameserver 10.1.1.1\n").unwrap();
        symlink("/run/resolve/stub.conf", root.join("etc/resolv.conf")).unwrap();
        symlink("../../../../../etc/passwd", root.join("etc/escape")).unwrap();
        symlink("loop", root.join("etc/loop")).unwrap();
        let p = below(root, "/etc/resolv.conf");
        assert_eq!(p, root.join("run/resolve/stub.conf"));
        assert_eq!(read_text(&p, 100).unwrap().trim(), "nameserver 10.1.1.1");
        assert_eq!(below(root, "/etc/escape"), root.join("etc/passwd"));
        // A link to itself ends after MAX_SYMLINKS hops, inside root.
        assert!(below(root, "/etc/loop").starts_with(root));
        assert_eq!(below(Path::new("/"), "/etc/x"), PathBuf::from("/etc/x"));
    }

    #[test]
    fn caps_and_missing() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("big");
        std::fs::write(&f, vec![b'a'; 100]).unwrap();
        assert!(matches!(read_capped(&f, 99), Err(ReadError::TooLarge { cap: 99, .. })));
        assert_eq!(read_capped(&f, 100).unwrap().len(), 100);
        assert_eq!(read_text_opt(&t.path().join("none"), 10).unwrap(), None);
        assert!(list_dir(&t.path().join("none")).unwrap().is_empty());
        std::fs::write(t.path().join("bad"), b"a\xff\xfeb").unwrap();
        assert_eq!(read_text(&t.path().join("bad"), 10).unwrap(), "a\u{fffd}\u{fffd}b");
    }

    #[test]
    fn comments() {
        assert_eq!(strip_comment("  foo bar # baz"), "foo bar");
        assert_eq!(strip_comment("# all"), "");
    }
}
