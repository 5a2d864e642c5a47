//! Container total on a plain Linux node whose private area is on btrfs, the way LXD's
//! btrfs driver does it: each container's private directory is a subvolume, quotas
//! (qgroups) are enabled on the file system, and the subvolume's qgroup gets a limit of
//! the `DISKSPACE` hard limit in bytes. A write past it fails with `EDQUOT`.
//!
//! btrfs has no soft limits, no inode limits and no per-user limits inside a subvolume:
//! those are recorded, and the outcome says they are not enforced.

use std::path::{Path, PathBuf};

use super::cmd::Cmd;
use super::plan::QuotaPlan;
use super::probe::{BTRFS_SUPER_MAGIC, existing_ancestor, fs_name};
use super::{Method, Node, QuotaBackend, QuotaOutcome, Result, io_err};

/// Whether container private areas under `private_root` can be btrfs subvolumes.
pub fn detect(node: &Node, private_root: &Path) -> std::result::Result<String, String> {
    let magic = node.probe.fs_magic(private_root).map_err(|e| e.to_string())?;
    let at = existing_ancestor(private_root);
    if magic != BTRFS_SUPER_MAGIC {
        return Err(format!("the private area {} is on {}, not btrfs", at.display(), fs_name(magic)));
    }
    if !node.missing(&["btrfs"]).is_empty() {
        return Err(format!(
            "the private area {} is on btrfs but the btrfs program (btrfs-progs) is not installed",
            at.display()
        ));
    }
    Ok(format!(
        "the private area {} is on btrfs: a subvolume per container with a qgroup limit",
        at.display()
    ))
}

pub struct BtrfsBackend {
    node: Node,
}

/// Sibling paths used while turning a plain directory into a subvolume.
fn siblings(private: &Path) -> (PathBuf, PathBuf) {
    let name =
        private.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "private".into());
    let parent = private.parent().unwrap_or(Path::new("/"));
    (parent.join(format!(".{name}.p2c-subvol")), parent.join(format!(".{name}.p2c-old")))
}

impl BtrfsBackend {
    pub fn new(node: Node) -> BtrfsBackend {
        BtrfsBackend { node }
    }

    fn run(&self, cmd: Cmd, log: &mut Vec<String>) -> Result<()> {
        log.push(cmd.to_string());
        self.node.runner.run(&cmd)?;
        Ok(())
    }

    /// Makes `private` a btrfs subvolume: creates it, or converts an existing plain
    /// directory (a resumed migration) by copying its entries into a new subvolume with
    /// reflinks (rename(2) cannot cross subvolumes) and swapping the two.
    pub fn ensure_subvolume(&self, private: &Path, log: &mut Vec<String>) -> Result<()> {
        let probe = &self.node.probe;
        let (tmp, old) = siblings(private);
        if !private.exists() && tmp.exists() && probe.is_btrfs_subvolume(&tmp) && old.exists() {
            // An earlier conversion stopped between its two renames: finish it.
            std::fs::rename(&tmp, private).map_err(io_err(private, "rename converted subvolume"))?;
        }
        if old.exists() && private.exists() {
            std::fs::remove_dir_all(&old).map_err(io_err(&old, "remove converted directory"))?;
        }
        if probe.is_btrfs_subvolume(private) {
            return Ok(());
        }
        if let Some(parent) = private.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent, "create directory"))?;
        }
        if !private.exists() {
            self.run(Cmd::new("btrfs").args(["subvolume", "create"]).arg(private), log)?;
            set_mode(private, 0o700)?;
            return Ok(());
        }
        let meta = std::fs::symlink_metadata(private).map_err(io_err(private, "stat"))?;
        if !meta.is_dir() {
            return Err(super::QuotaError::Io {
                path: private.to_path_buf(),
                op: "make subvolume",
                source: std::io::Error::other("exists and is not a directory"),
            });
        }
        if tmp.exists() {
            self.run(Cmd::new("btrfs").args(["subvolume", "delete"]).arg(&tmp), log)?;
        }
        self.run(Cmd::new("btrfs").args(["subvolume", "create"]).arg(&tmp), log)?;
        self.run(
            Cmd::new("cp").args(["-a", "--reflink=auto", "--no-target-directory"]).arg(private).arg(&tmp),
            log,
        )?;
        std::fs::rename(private, &old).map_err(io_err(private, "rename plain directory"))?;
        std::fs::rename(&tmp, private).map_err(io_err(&tmp, "rename converted subvolume"))?;
        std::fs::remove_dir_all(&old).map_err(io_err(&old, "remove converted directory"))?;
        Ok(())
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path, "chmod"))
}

impl QuotaBackend for BtrfsBackend {
    fn method(&self) -> Method {
        Method::BtrfsQgroup
    }

    fn prepare(&self, _ctid: u32, private: &Path, _plan: &QuotaPlan) -> Result<()> {
        let mut log = Vec::new();
        self.ensure_subvolume(private, &mut log)?;
        tracing::info!(private = %private.display(), commands = ?log, "private area is a btrfs subvolume");
        Ok(())
    }

    fn apply(&self, ctid: u32, private: &Path, plan: &QuotaPlan) -> Result<QuotaOutcome> {
        let mut out = QuotaOutcome::new(Method::BtrfsQgroup, plan);
        self.ensure_subvolume(private, &mut out.commands)?;
        self.run(Cmd::new("btrfs").args(["quota", "enable"]).arg(private), &mut out.commands)?;
        // Enabling quotas on a file system with data starts a rescan; usage is exact only
        // after it. -W waits for a running one without starting another.
        let rescan = Cmd::new("btrfs").args(["quota", "rescan", "-W"]).arg(private);
        out.commands.push(rescan.to_string());
        if let Err(e) = self.node.runner.run(&rescan) {
            out.details
                .push(format!("waiting for the qgroup rescan failed ({e}); usage may be counted late"));
        }
        let bytes = plan.diskspace.1.saturating_mul(1024);
        self.run(
            Cmd::new("btrfs").args(["qgroup", "limit", &bytes.to_string()]).arg(private),
            &mut out.commands,
        )?;
        out.applied = true;
        out.details.push(format!(
            "container {ctid}: qgroup of subvolume {} limited to {bytes} bytes (DISKSPACE hard {} KiB)",
            private.display(),
            plan.diskspace.1
        ));
        out.details.push(format!(
            "not enforced by btrfs, recorded only: DISKSPACE soft {} KiB, DISKINODES {}:{}",
            plan.diskspace.0, plan.diskinodes.0, plan.diskinodes.1
        ));
        if plan.carried_limits() > 0 {
            out.details.push(format!(
                "not enforced by btrfs, recorded only: {} user and {} group limits from {}",
                plan.users.len(),
                plan.groups.len(),
                plan.chosen.as_deref().unwrap_or("-")
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::quota::cmd::fake::FakeRunner;
    use crate::quota::select_tests::{FakeProbe, plan_with};

    #[test]
    fn apply_enables_quota_and_limits_the_subvolume() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("101");
        std::fs::create_dir(&private).unwrap();
        let runner = Arc::new(FakeRunner::with_programs(&["btrfs"]));
        let probe = FakeProbe::btrfs().subvolume(&private);
        let node = Node { runner: runner.clone(), probe: Arc::new(probe) };
        let plan = plan_with((1000, 20480), (100, 200));
        let out = BtrfsBackend::new(node).apply(101, &private, &plan).unwrap();
        assert!(out.applied);
        assert!(!out.second_level_applied);
        let p = private.display();
        assert_eq!(
            out.commands,
            vec![
                format!("btrfs quota enable {p}"),
                format!("btrfs quota rescan -W {p}"),
                format!("btrfs qgroup limit 20971520 {p}"),
            ]
        );
        assert_eq!(runner.ran().len(), 3);
        assert!(out.details.iter().any(|d| d.contains("recorded only")));
    }
}
