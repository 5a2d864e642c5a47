//! Container total through ext4/xfs project quota, where the node's kernel and the file
//! system under the private area allow it.
//!
//! The private directory gets project id = CTID with the inherit flag (`chattr +P -p CTID`)
//! before files are received, so everything created below it is counted to the project;
//! after the last pass the whole tree is tagged again (`chattr -R`) and the project's
//! limits are set with `setquota -P CTID BSOFT BHARD ISOFT IHARD MOUNTPOINT`.
//!
//! Needs: ext4 with the kernel's quota format (`CONFIG_QUOTA` and `CONFIG_QFMT_V2`) and the
//! file system mounted with `prjquota` (and created with `-O project,quota`), or xfs with
//! `CONFIG_XFS_QUOTA` mounted with `prjquota`. [`detect`] says which of these is missing.

use std::path::{Path, PathBuf};

use super::cmd::Cmd;
use super::plan::QuotaPlan;
use super::probe::{EXT4_SUPER_MAGIC, XFS_SUPER_MAGIC, existing_ancestor, fs_name};
use super::{Method, Node, QuotaBackend, QuotaOutcome, Result, io_err};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjFs {
    Ext4,
    Xfs,
}

/// A usable project quota: the file system and its mount point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Support {
    pub fs: ProjFs,
    pub mountpoint: PathBuf,
}

impl Support {
    pub fn describe(&self) -> String {
        format!(
            "{} project quota on {}",
            match self.fs {
                ProjFs::Ext4 => "ext4",
                ProjFs::Xfs => "xfs",
            },
            self.mountpoint.display()
        )
    }
}

/// The value of `CONFIG_NAME` in a kernel config (`y`, `m`), `None` if not set.
fn config_value<'a>(config: &'a str, name: &str) -> Option<&'a str> {
    config.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')).map(str::trim))
}

/// Why the kernel cannot do project quota on `fs` (`None` when it can), from its config.
pub fn kernel_lacks(config: &str, fs: ProjFs) -> Option<String> {
    let on = |name: &str, modules: bool| {
        matches!(config_value(config, name), Some("y"))
            || (modules && matches!(config_value(config, name), Some("m")))
    };
    match fs {
        ProjFs::Ext4 if !on("CONFIG_QUOTA", false) => Some("CONFIG_QUOTA is not set".into()),
        ProjFs::Ext4 if !on("CONFIG_QFMT_V2", true) => {
            Some("CONFIG_QFMT_V2 (the quota format ext4 keeps its quota in) is not set".into())
        }
        ProjFs::Xfs if !on("CONFIG_XFS_QUOTA", false) => Some("CONFIG_XFS_QUOTA is not set".into()),
        _ => None,
    }
}

/// Whether project quota can hold the container total under `private_root`, and if not,
/// every reason why not.
pub fn detect(node: &Node, private_root: &Path) -> std::result::Result<Support, String> {
    let at = existing_ancestor(private_root);
    let magic = node.probe.fs_magic(&at).map_err(|e| e.to_string())?;
    let release = node.probe.kernel_release();
    let config = node.probe.kernel_config();
    let mut why = Vec::new();
    if let Some((cfg, from)) = &config {
        let ext4 = kernel_lacks(cfg, ProjFs::Ext4);
        let xfs = kernel_lacks(cfg, ProjFs::Xfs);
        if let (Some(e), Some(x)) = (&ext4, &xfs) {
            why.push(format!("kernel {release} cannot switch ext4 or xfs quotas on ({from}): {e}; {x}"));
        }
    }
    let fs = match magic {
        EXT4_SUPER_MAGIC => Some(ProjFs::Ext4),
        XFS_SUPER_MAGIC => Some(ProjFs::Xfs),
        _ => {
            why.push(format!(
                "the private area {} is on {}, project quota needs ext4 or xfs",
                at.display(),
                fs_name(magic)
            ));
            None
        }
    };
    let mount = node.probe.mount_of(&at);
    if let Some(fs) = fs {
        if why.is_empty()
            && let Some(lack) = config.as_ref().and_then(|(cfg, from)| {
                kernel_lacks(cfg, fs).map(|l| format!("kernel {release} ({from}): {l}"))
            })
        {
            why.push(lack);
        }
        match &mount {
            Some(m) if m.has_option("prjquota") || m.has_option("pquota") => {}
            Some(m) => {
                why.push(format!("{} ({}) is mounted without prjquota", m.mountpoint.display(), m.fs_type))
            }
            None => why.push(format!("no mount found for {}", at.display())),
        }
    }
    let missing = node.missing(&["chattr", "setquota"]);
    if !missing.is_empty() {
        why.push(format!("{} not found", missing.join(", ")));
    }
    match (fs, mount) {
        (Some(fs), Some(m)) if why.is_empty() => Ok(Support { fs, mountpoint: m.mountpoint }),
        _ => Err(why.join("; ")),
    }
}

pub struct ProjQuotaBackend {
    node: Node,
    support: Support,
}

impl ProjQuotaBackend {
    pub fn new(node: Node, support: Support) -> ProjQuotaBackend {
        ProjQuotaBackend { node, support }
    }

    /// `chattr [-R] -p CTID +P PRIVATE`.
    pub fn tag(ctid: u32, private: &Path, recursive: bool) -> Cmd {
        let mut c = Cmd::new("chattr");
        if recursive {
            c = c.arg("-R");
        }
        c.args(["-p", &ctid.to_string(), "+P"]).arg(private)
    }

    /// `setquota -P CTID BSOFT BHARD ISOFT IHARD MOUNTPOINT`.
    pub fn limits(ctid: u32, plan: &QuotaPlan, mountpoint: &Path) -> Cmd {
        Cmd::new("setquota")
            .args([
                "-P".to_string(),
                ctid.to_string(),
                plan.diskspace.0.to_string(),
                plan.diskspace.1.to_string(),
                plan.diskinodes.0.to_string(),
                plan.diskinodes.1.to_string(),
            ])
            .arg(mountpoint)
    }
}

impl QuotaBackend for ProjQuotaBackend {
    fn method(&self) -> Method {
        Method::ProjectQuota
    }

    fn prepare(&self, ctid: u32, private: &Path, _plan: &QuotaPlan) -> Result<()> {
        if !private.exists() {
            std::fs::create_dir_all(private).map_err(io_err(private, "create directory"))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(private, std::fs::Permissions::from_mode(0o700))
                .map_err(io_err(private, "chmod"))?;
        }
        self.node.runner.run(&Self::tag(ctid, private, false))?;
        Ok(())
    }

    fn apply(&self, ctid: u32, private: &Path, plan: &QuotaPlan) -> Result<QuotaOutcome> {
        let mut out = QuotaOutcome::new(Method::ProjectQuota, plan);
        let tag = Self::tag(ctid, private, true);
        out.commands.push(tag.to_string());
        let res = self.node.runner.output(&tag)?;
        if !res.success() {
            // Device nodes, fifos and sockets cannot carry a project id; chattr reports
            // them and goes on with the rest.
            out.details.push(format!(
                "some entries could not be tagged with project {ctid}: {}",
                res.stderr_str().lines().next().unwrap_or("")
            ));
        }
        let set = Self::limits(ctid, plan, &self.support.mountpoint);
        out.commands.push(set.to_string());
        self.node.runner.run(&set)?;
        out.applied = true;
        out.details.push(format!(
            "container {ctid}: {} limits DISKSPACE {}:{} DISKINODES {}:{} as project {ctid}",
            self.support.describe(),
            plan.diskspace.0,
            plan.diskspace.1,
            plan.diskinodes.0,
            plan.diskinodes.1
        ));
        if plan.carried_limits() > 0 {
            out.details.push(format!(
                "not enforced by project quota, recorded only: {} user and {} group limits",
                plan.users.len(),
                plan.groups.len()
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_config_reasons() {
        let this_node = "CONFIG_QUOTA=y\n# CONFIG_QFMT_V2 is not set\n# CONFIG_XFS_QUOTA is not set\n";
        assert!(kernel_lacks(this_node, ProjFs::Ext4).unwrap().contains("CONFIG_QFMT_V2"));
        assert!(kernel_lacks(this_node, ProjFs::Xfs).unwrap().contains("CONFIG_XFS_QUOTA"));
        let debian = "CONFIG_QUOTA=y\nCONFIG_QFMT_V2=m\nCONFIG_XFS_QUOTA=y\n";
        assert_eq!(kernel_lacks(debian, ProjFs::Ext4), None);
        assert_eq!(kernel_lacks(debian, ProjFs::Xfs), None);
    }

    #[test]
    fn command_lines() {
        let plan = crate::quota::select_tests::plan_with((100, 200), (10, 20));
        assert_eq!(
            ProjQuotaBackend::tag(101, Path::new("/vz/private/101"), true).to_string(),
            "chattr -R -p 101 +P /vz/private/101"
        );
        assert_eq!(
            ProjQuotaBackend::limits(101, &plan, Path::new("/vz")).to_string(),
            "setquota -P 101 100 200 10 20 /vz"
        );
    }

    #[test]
    fn this_node_says_why_not() {
        // On a kernel without CONFIG_QFMT_V2/CONFIG_XFS_QUOTA the reason names them;
        // elsewhere it names whatever is missing. Either way it is never empty.
        let dir = tempfile::tempdir().unwrap();
        match detect(&Node::linux(), dir.path()) {
            Ok(s) => eprintln!("project quota usable here: {}", s.describe()),
            Err(why) => {
                assert!(!why.is_empty());
                eprintln!("project quota unavailable: {why}");
            }
        }
    }
}
