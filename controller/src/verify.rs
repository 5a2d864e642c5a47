//! Proof that a container tree matches the last source manifest: every entry's type,
//! mode, owner, times, link target, device numbers, hard-link structure and content hash
//! (chunk by chunk), and nothing extra — except the documented guest rewrites.

use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::path::Path;

use p2c_common::manifest::{EntryData, Hash32};
use p2c_common::migration::VerifySummary;
use p2c_common::paths::RelPath;
use rustix::fs::FileType;

use crate::receive::manifest::{ManifestError, ManifestReader};
use crate::tree::{TEMP_PREFIX, Tree, TreeError};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Tree(#[from] TreeError),
}

/// What to leave out of the comparison.
#[derive(Debug, Default)]
pub struct VerifyOptions {
    /// Paths the guest rewrite changed, created or removed on purpose.
    pub rewritten: HashSet<RelPath>,
    /// Paths below these are the controller's own (backups of rewritten files).
    pub own_dirs: Vec<RelPath>,
    pub keep_xattrs: bool,
    /// Remove temporary files a crashed run left behind.
    pub sweep_temps: bool,
    /// Re-read only these files' content (those written since an earlier full
    /// verification); `None` re-reads every file.
    pub content_only: Option<HashSet<RelPath>>,
}

const MAX_REPORTED: usize = 1000;

pub fn verify(tree_path: &Path, manifest: &Path, opts: &VerifyOptions) -> Result<VerifySummary, VerifyError> {
    let tree = Tree::open(tree_path)?;
    let mut r = ManifestReader::open(manifest)?;
    let mut sum = VerifySummary::default();
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut buf = Vec::new();
    // Directories that hold a rewritten path changed their times on purpose too.
    // So did those holding the controller's own files (its backups and journal).
    let touched: HashSet<RelPath> = opts
        .rewritten
        .iter()
        .chain(opts.own_dirs.iter())
        .flat_map(|p| std::iter::successors(p.parent(), |q| q.parent()))
        .collect();
    let bad = |sum: &mut VerifySummary, path: &RelPath, msg: String| {
        if sum.mismatches.len() < MAX_REPORTED {
            sum.mismatches.push(msg);
        }
        if sum.mismatched_paths.len() < 100_000 && sum.mismatched_paths.last() != Some(path) {
            sum.mismatched_paths.push(path.clone());
        }
    };
    while let Some(e) = r.next_entry()? {
        seen.insert(e.path.as_bytes().to_vec());
        if opts.rewritten.contains(&e.path) {
            sum.rewritten += 1;
            continue;
        }
        sum.checked += 1;
        let p = e.path.display();
        let Some(st) = tree.lstat(&e.path)? else {
            bad(&mut sum, &e.path, format!("{p}: missing"));
            continue;
        };
        let ft = FileType::from_raw_mode(st.st_mode);
        if let EntryData::HardLink { target } = &e.data {
            match tree.lstat(target)? {
                Some(t) if t.st_ino == st.st_ino => {}
                _ => bad(&mut sum, &e.path, format!("{p}: not a hard link to {target}")),
            }
            continue;
        }
        let want_ft = match &e.data {
            EntryData::Regular { .. } => FileType::RegularFile,
            EntryData::Directory => FileType::Directory,
            EntryData::Symlink { .. } => FileType::Symlink,
            EntryData::Fifo => FileType::Fifo,
            EntryData::CharDevice { .. } => FileType::CharacterDevice,
            EntryData::BlockDevice { .. } => FileType::BlockDevice,
            EntryData::HardLink { .. } => continue,
        };
        if ft != want_ft {
            bad(
                &mut sum,
                &e.path,
                format!("{p}: is a {}, expected a {}", crate::tree::type_name(ft), e.kind_name()),
            );
            continue;
        }
        if ft != FileType::Symlink && st.st_mode & 0o7777 != e.meta.mode {
            bad(
                &mut sum,
                &e.path,
                format!("{p}: mode {:o}, expected {:o}", st.st_mode & 0o7777, e.meta.mode),
            );
        }
        if st.st_uid != e.meta.uid || st.st_gid != e.meta.gid {
            bad(
                &mut sum,
                &e.path,
                format!("{p}: owner {}:{}, expected {}:{}", st.st_uid, st.st_gid, e.meta.uid, e.meta.gid),
            );
        }
        let times_touched = ft == FileType::Directory && touched.contains(&e.path);
        if !times_touched && (st.st_mtime != e.meta.mtime.sec || st.st_mtime_nsec as u32 != e.meta.mtime.nsec)
        {
            bad(&mut sum, &e.path, format!("{p}: mtime differs"));
        }
        match &e.data {
            EntryData::Regular { size, chunks, .. } => {
                if st.st_size as u64 != *size {
                    bad(&mut sum, &e.path, format!("{p}: size {}, expected {size}", st.st_size));
                    continue;
                }
                let (dir, name) = tree.parent(&e.path)?;
                let Some(f) = dir.open_read(name)? else {
                    bad(&mut sum, &e.path, format!("{p}: unreadable"));
                    continue;
                };
                if opts.content_only.as_ref().is_some_and(|only| !only.contains(&e.path)) {
                    continue;
                }
                sum.content_checked += 1;
                for c in chunks {
                    buf.resize(c.len as usize, 0);
                    if f.read_exact_at(&mut buf, c.offset).is_err() || Hash32::of(&buf) != c.hash {
                        bad(&mut sum, &e.path, format!("{p}: content differs at offset {}", c.offset));
                        break;
                    }
                }
            }
            EntryData::Symlink { target } if tree.readlink(&e.path)?.as_deref() != Some(&target[..]) => {
                bad(&mut sum, &e.path, format!("{p}: symlink target differs"));
            }
            EntryData::CharDevice { major, minor } | EntryData::BlockDevice { major, minor }
                if rustix::fs::major(st.st_rdev) != *major || rustix::fs::minor(st.st_rdev) != *minor =>
            {
                bad(&mut sum, &e.path, format!("{p}: device numbers differ"));
            }
            _ => {}
        }
        if opts.keep_xattrs && !e.meta.xattrs.is_empty() {
            let want: Vec<_> = e
                .meta
                .xattrs
                .iter()
                .filter(|x| x.name != b"security.selinux")
                .map(|x| (&x.name, &x.value))
                .collect();
            let mut path = tree_path.as_os_str().as_encoded_bytes().to_vec();
            if !e.path.is_root() {
                path.push(b'/');
                path.extend_from_slice(e.path.as_bytes());
            }
            for (n, v) in want {
                let mut val = vec![0u8; 65536];
                match rustix::fs::lgetxattr(&path[..], &n[..], &mut val[..]) {
                    Ok(len) if &val[..len] == v.as_slice() => {}
                    _ => bad(
                        &mut sum,
                        &e.path,
                        format!("{p}: extended attribute {} differs", String::from_utf8_lossy(n)),
                    ),
                }
            }
        }
    }
    // Anything in the tree the manifest does not list, except the directories the guest
    // rewrite had to create to hold its own files.
    let made: HashSet<RelPath> = opts
        .rewritten
        .iter()
        .chain(opts.own_dirs.iter())
        .flat_map(|p| std::iter::successors(p.parent(), |q| q.parent()))
        .collect();
    let mut stack = vec![RelPath::ROOT];
    while let Some(dir) = stack.pop() {
        for (name, ft) in tree.list(&dir)? {
            let Ok(p) = dir.join(&name) else { continue };
            if name.starts_with(TEMP_PREFIX) && opts.sweep_temps {
                tree.remove(&p)?;
                continue;
            }
            if opts.own_dirs.iter().any(|o| p.starts_with(o)) || opts.rewritten.contains(&p) {
                continue;
            }
            if !seen.contains(p.as_bytes()) && !made.contains(&p) {
                bad(&mut sum, &p, format!("{}: not in the source manifest", p.display()));
                continue;
            }
            if ft == FileType::Directory {
                stack.push(p);
            }
        }
    }
    sum.ok = sum.mismatches.is_empty();
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receive::manifest::{ManifestWriter, pass_path};
    use crate::tree::rel;
    use p2c_common::manifest::{Entry, Meta, Timestamp};

    fn dir_entry(root: &Path, p: &str) -> Entry {
        let path = if p.is_empty() { RelPath::ROOT } else { rel(p) };
        let st = rustix::fs::lstat(root.join(p)).unwrap();
        Entry {
            path,
            meta: Meta {
                mode: st.st_mode & 0o7777,
                uid: st.st_uid,
                gid: st.st_gid,
                mtime: Timestamp { sec: st.st_mtime, nsec: st.st_mtime_nsec as u32 },
                xattrs: Vec::new(),
            },
            data: EntryData::Directory,
            segment: 0,
            more: false,
        }
    }

    #[test]
    fn the_controllers_own_files_are_not_differences() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("ct");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        let m = pass_path(t.path(), 0);
        let mut w = ManifestWriter::create(&m).unwrap();
        w.push(&dir_entry(&root, "")).unwrap();
        w.push(&dir_entry(&root, "etc")).unwrap();
        w.finish().unwrap();
        let opts = VerifyOptions { own_dirs: vec![rel("etc/p2c")], ..Default::default() };
        assert!(verify(&root, &m, &opts).unwrap().ok);
        // The guest rewrite changes nothing the source had, but adds its journal: /etc gets a
        // new entry and a new mtime.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::create_dir_all(root.join("etc/p2c")).unwrap();
        std::fs::write(root.join("etc/p2c/changes.json"), b"[]").unwrap();
        let v = verify(&root, &m, &opts).unwrap();
        assert!(v.ok, "{:?}", v.mismatches);
        // Anything else is still a difference.
        std::fs::write(root.join("etc/extra"), b"x").unwrap();
        let v = verify(&root, &m, &opts).unwrap();
        assert!(!v.ok);
        assert_eq!(v.mismatched_paths, vec![rel("etc/extra")]);
    }
}
