//! Probing the node for the assessment: free space and inodes under the private root, its
//! file system and xattr support, the node's OS, and what an earlier run left behind.

use std::collections::HashSet;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use p2c_common::mountinfo;

use super::{ExistingPrivate, NodeFacts, NodeOs};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot read free space of {path}: {source}")]
    Statvfs { path: PathBuf, source: io::Error },
    #[error("cannot find the file system of {path} in /proc/self/mountinfo")]
    FsType { path: PathBuf },
    #[error("cannot probe extended attributes in {path}: {source}")]
    Xattr { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot measure the earlier private area {path}: {source}")]
    Measure { path: PathBuf, source: io::Error },
}

/// Probes the node under `private_root` (which need not exist yet: its nearest existing
/// parent is probed) for the container `ctid`. Never fails: what could not be probed is
/// listed in `gaps` and left at its zero value.
pub fn probe_node(private_root: &Path, ctid: Option<u32>) -> NodeFacts {
    probe(private_root, ctid, Path::new("/etc/os-release"))
}

pub(super) fn probe(private_root: &Path, ctid: Option<u32>, os_release: &Path) -> NodeFacts {
    let mut facts = NodeFacts::default();
    let gap = |e: ProbeError, facts: &mut NodeFacts| facts.gaps.push(e.to_string());
    let base = existing_ancestor(private_root);
    match rustix::fs::statvfs(&base) {
        Ok(s) => {
            facts.free_bytes = s.f_bavail.saturating_mul(s.f_frsize);
            facts.free_inodes = if s.f_files == 0 { u64::MAX } else { s.f_favail };
        }
        Err(e) => gap(ProbeError::Statvfs { path: base.clone(), source: e.into() }, &mut facts),
    }
    match fs_type(&base) {
        Ok(t) => facts.fs_type = t,
        Err(e) => {
            facts.fs_type = "unknown".to_string();
            gap(e, &mut facts);
        }
    }
    match xattrs_supported(&base) {
        Ok(ok) => facts.xattrs_supported = ok,
        Err(e) => gap(e, &mut facts),
    }
    match std::fs::read_to_string(os_release) {
        Ok(text) => facts.os_name = pretty_name(&text),
        Err(source) => gap(ProbeError::Read { path: os_release.to_path_buf(), source }, &mut facts),
    }
    facts.os = NodeOs::Linux;
    if let Some(id) = ctid {
        let dir = private_root.join(id.to_string());
        if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            match measure(&dir) {
                Ok(e) => facts.existing_private = Some(e),
                Err(e) => gap(e, &mut facts),
            }
        }
    }
    facts
}

/// `path` or its nearest parent that exists.
fn existing_ancestor(path: &Path) -> PathBuf {
    let mut p = path;
    loop {
        if p.exists() {
            return p.to_path_buf();
        }
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => return PathBuf::from("."),
        }
    }
}

fn fs_type(path: &Path) -> Result<String, ProbeError> {
    let missing = || ProbeError::FsType { path: path.to_path_buf() };
    let real = std::fs::canonicalize(path).map_err(|_| missing())?;
    let mounts = mountinfo::read().map_err(|_| missing())?;
    mountinfo::containing(&mounts, real.as_os_str().as_bytes()).map(|m| m.fs_type.clone()).ok_or_else(missing)
}

/// Sets a `user.*` attribute on a temporary file in `dir`.
fn xattrs_supported(dir: &Path) -> Result<bool, ProbeError> {
    let err = |source: io::Error| ProbeError::Xattr { path: dir.to_path_buf(), source };
    let file = tempfile::Builder::new().prefix(".p2c-xattr-probe").tempfile_in(dir).map_err(err)?;
    match rustix::fs::fsetxattr(file.as_file(), "user.p2c.probe", b"1", rustix::fs::XattrFlags::empty()) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::OPNOTSUPP) => Ok(false),
        Err(e) => Err(err(e.into())),
    }
}

/// `PRETTY_NAME` of os-release text, else `NAME VERSION_ID`.
pub(super) fn pretty_name(text: &str) -> String {
    let get = |key: &str| {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().trim_matches('"').trim_matches('\'').to_string())
    };
    get("PRETTY_NAME")
        .or_else(|| {
            let name = get("NAME")?;
            Some(match get("VERSION_ID") {
                Some(v) => format!("{name} {v}"),
                None => name,
            })
        })
        .unwrap_or_else(|| "unknown Linux".to_string())
}

/// Entries and disk space below `dir`, not following symlinks or leaving its file system,
/// hard links once.
fn measure(dir: &Path) -> Result<ExistingPrivate, ProbeError> {
    let err = |source| ProbeError::Measure { path: dir.to_path_buf(), source };
    let root = std::fs::symlink_metadata(dir).map_err(err)?;
    let mut seen = HashSet::new();
    let (mut bytes, mut files) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for ent in std::fs::read_dir(&d).map_err(err)? {
            let ent = ent.map_err(err)?;
            let md = match std::fs::symlink_metadata(ent.path()) {
                Ok(md) => md,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(err(e)),
            };
            if md.nlink() > 1 && !md.is_dir() && !seen.insert((md.dev(), md.ino())) {
                continue;
            }
            files += 1;
            bytes = bytes.saturating_add(md.blocks().saturating_mul(512));
            if md.is_dir() && md.dev() == root.dev() {
                stack.push(ent.path());
            }
        }
    }
    Ok(ExistingPrivate { path: dir.display().to_string(), bytes, files })
}
