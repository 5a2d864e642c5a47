//! Source-tree fixtures and the tree comparator that checks a copy against its source.
//!
//! [`build_every_case_tree`] makes a tree with every kind of entry p2c must carry exactly
//! (the transfer engine in ARCHITECTURE.md); [`compare_trees`] walks two trees and reports every way a copy differs.

mod compare;
mod every_case;

use std::io;
use std::path::{Path, PathBuf};

pub use compare::{CompareOptions, DiffKind, Difference, FileKind, assert_trees_equal, compare_trees};
pub use every_case::{Case, CaseList, build_every_case_tree};

/// Every path under `root`, relative to it and sorted, `root` itself first as the empty path.
/// Symlinks are never followed. Fails on the first directory that cannot be read.
pub fn walk_tree(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut failure = None;
    let paths = walk(root, &|_| false, &mut |_, e| {
        failure.get_or_insert(e);
    });
    failure.map_or(Ok(paths), Err)
}

/// The walk behind [`walk_tree`]: paths for which `skip` is true are left out (and, for
/// directories, not entered); a directory that cannot be read goes to `on_error` and the walk
/// goes on.
fn walk(
    root: &Path,
    skip: &dyn Fn(&Path) -> bool,
    on_error: &mut dyn FnMut(&Path, io::Error),
) -> Vec<PathBuf> {
    let mut out = vec![PathBuf::new()];
    let mut pending = vec![PathBuf::new()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(root.join(&dir)) {
            Ok(entries) => entries,
            Err(e) => {
                on_error(&dir, e);
                continue;
            }
        };
        for entry in entries {
            let (rel, is_dir) = match entry.and_then(|e| Ok((dir.join(e.file_name()), e.file_type()?))) {
                // `DirEntry::file_type` does not follow symlinks.
                Ok((rel, kind)) => (rel, kind.is_dir()),
                Err(e) => {
                    on_error(&dir, e);
                    continue;
                }
            };
            if skip(&rel) {
                continue;
            }
            if is_dir {
                pending.push(rel.clone());
            }
            out.push(rel);
        }
    }
    out.sort();
    out
}

/// `path` for messages: bytes that are not printable ASCII escaped (`caf\xe9`, `new\nline`),
/// the root as `.`.
pub fn escape_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    if path.as_os_str().is_empty() {
        return ".".to_owned();
    }
    path.as_os_str().as_bytes().escape_ascii().to_string()
}
