//! The throw-away copy-on-write view of the tree: an overlay whose lower layer is the tree
//! and whose upper and work directories live in `<work_dir>/<name>/`. Overlayfs never writes
//! to a lower layer, so nothing the guest does reaches the tree; the whole directory goes
//! when the view is removed.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

use super::BootError;

pub(super) struct View {
    /// `<work_dir>/<name>`: holds `upper/`, `work/` and the mount point `root/`.
    base: PathBuf,
    merged: PathBuf,
    mounted: bool,
}

/// Refuses a path overlayfs's option string cannot carry (`,` separates options, `:` lower
/// layers, `\` escapes), or that is not absolute.
fn option_path(ctid: u32, what: &str, p: &Path) -> Result<String, BootError> {
    let s = p.to_str().unwrap_or_default();
    if s.is_empty() || !p.is_absolute() || s.contains([',', ':', '\\', '\n']) {
        return Err(BootError::Request {
            ctid,
            problem: format!(
                "{what} {} cannot be an overlay layer (a path with ',', ':' or '\\' or one that is not \
                 UTF-8); use another directory",
                p.display()
            ),
        });
    }
    Ok(s.to_string())
}

fn overlapping(ctid: u32, work_dir: &Path, lower: &Path) -> BootError {
    BootError::Request {
        ctid,
        problem: format!(
            "the work directory {} and the container tree {} overlap; put the work directory \
             elsewhere on the node",
            work_dir.display(),
            lower.display()
        ),
    }
}

impl View {
    /// Mounts the view of `root` at `<work_dir>/<name>/root`.
    pub fn mount(ctid: u32, root: &Path, work_dir: &Path, name: &str) -> Result<View, BootError> {
        let io = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| BootError::Io { what, path, source }
        };
        let lower = root.canonicalize().map_err(io("resolve the container tree", root))?;
        let overlap = |w: &Path| w.starts_with(&lower) || lower.starts_with(w);
        if work_dir.is_absolute() && overlap(work_dir) {
            return Err(overlapping(ctid, work_dir, &lower));
        }
        std::fs::create_dir_all(work_dir).map_err(io("create the work directory", work_dir))?;
        let work_dir = work_dir.canonicalize().map_err(io("resolve the work directory", work_dir))?;
        if overlap(&work_dir) {
            return Err(overlapping(ctid, &work_dir, &lower));
        }
        let base = work_dir.join(name);
        std::fs::create_dir(&base).map_err(io("create", &base))?;
        // From here on, dropping `view` removes `base`.
        let mut view = View { merged: base.join("root"), base, mounted: false };
        let (upper, work) = (view.base.join("upper"), view.base.join("work"));
        for d in [&upper, &work, &view.merged] {
            std::fs::create_dir(d).map_err(io("create", d))?;
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            option_path(ctid, "the container tree", &lower)?,
            option_path(ctid, "the work directory", &upper)?,
            option_path(ctid, "the work directory", &work)?,
        );
        let data = CString::new(data).map_err(|_| BootError::Request {
            ctid,
            problem: "a path with a NUL byte cannot be an overlay layer".to_string(),
        })?;
        rustix::mount::mount("overlay", &view.merged, "overlay", MountFlags::NOATIME, data.as_c_str())
            .map_err(|e| BootError::Overlay {
                lower: lower.clone(),
                at: view.merged.clone(),
                work_dir: work_dir.clone(),
                source: e.into(),
            })?;
        view.mounted = true;
        tracing::debug!(lower = %lower.display(), at = %view.merged.display(), "overlay view mounted");
        Ok(view)
    }

    /// The view's root, to boot.
    pub fn root(&self) -> &Path {
        &self.merged
    }

    /// Unmounts the view and removes its directory; what could not be done.
    pub fn remove(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.mounted {
            let gone = rustix::mount::unmount(&self.merged, UnmountFlags::empty()).or_else(|e| {
                tracing::warn!(at = %self.merged.display(), error = %e, "overlay busy, detaching it");
                rustix::mount::unmount(&self.merged, UnmountFlags::DETACH)
            });
            match gone {
                Ok(()) => self.mounted = false,
                Err(e) => {
                    problems.push(format!("cannot unmount the overlay view {}: {e}", self.merged.display()));
                    // Never delete through a mounted view (the files would only be whited
                    // out, but the mount point must stay for the operator to look at).
                    return problems;
                }
            }
        }
        match std::fs::remove_dir_all(&self.base) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => problems.push(format!("cannot remove {}: {e}", self.base.display())),
        }
        problems
    }
}

impl Drop for View {
    fn drop(&mut self) {
        for p in self.remove() {
            tracing::error!(problem = %p, "boot check view left behind");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_paths_an_option_string_cannot_carry() {
        assert!(option_path(1, "t", Path::new("/vz/private/101/fs")).is_ok());
        for bad in ["/a,b", "/a:b", "/a\\b", "relative"] {
            let e = option_path(1, "the container tree", Path::new(bad)).unwrap_err().to_string();
            assert!(e.contains("cannot be an overlay layer"), "{e}");
        }
    }

    #[test]
    fn refuses_overlapping_directories() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let e = View::mount(7, &root, &root.join("work"), "x").err().unwrap().to_string();
        assert!(e.contains("overlap"), "{e}");
    }
}
