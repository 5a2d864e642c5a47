//! The node's tools the check needs, found once per check and reported by [`tools`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A tool the node lacks, and the package that brings it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("the boot check needs {what}, which this node lacks; install {package}")]
pub struct Missing {
    pub what: String,
    pub package: String,
}

/// Where the tools are.
#[derive(Clone, Debug)]
pub(super) struct Tools {
    pub nspawn: PathBuf,
    pub nsenter: PathBuf,
    pub setpriv: PathBuf,
    pub ip: PathBuf,
}

/// Where programs are looked for besides `PATH` (daemons often run with a short `PATH`).
const EXTRA_DIRS: &[&str] = &["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];

fn which(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn need(program: &str, package: &str) -> Result<PathBuf, Missing> {
    which(program).ok_or_else(|| Missing { what: program.to_string(), package: package.to_string() })
}

/// Whether the kernel has overlayfs: registered, or a module it can load.
fn has_overlayfs() -> bool {
    let registered = std::fs::read_to_string("/proc/filesystems")
        .is_ok_and(|t| t.lines().any(|l| l.split_whitespace().last() == Some("overlay")));
    if registered || Path::new("/sys/module/overlay").exists() {
        return true;
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dir = Path::new("/lib/modules").join(release.trim()).join("kernel/fs/overlayfs");
    std::fs::read_dir(dir).is_ok_and(|mut d| {
        d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("overlay.ko")))
    })
}

pub(super) fn find() -> Result<Tools, Missing> {
    let tools = Tools {
        nspawn: need("systemd-nspawn", "systemd-container")?,
        nsenter: need("nsenter", "util-linux")?,
        setpriv: need("setpriv", "util-linux (setpriv)")?,
        ip: need("ip", "iproute2")?,
    };
    if !has_overlayfs() {
        return Err(Missing {
            what: "the kernel's overlay file system (overlayfs)".to_string(),
            package: "a kernel with overlayfs (CONFIG_OVERLAY_FS, module overlay)".to_string(),
        });
    }
    Ok(tools)
}

/// What the check would use on this node (`systemd-nspawn` with its version, `nsenter`,
/// `setpriv`, `ip`, overlayfs), or the first thing missing with the package to install.
pub fn tools() -> Result<String, Missing> {
    let t = find()?;
    let version = std::process::Command::new(&t.nspawn)
        .arg("--version")
        .env("LC_ALL", "C")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_string))
        .unwrap_or_else(|| "version unknown".to_string());
    Ok(format!(
        "{} ({version}), {}, {}, {}, overlayfs",
        t.nspawn.display(),
        t.nsenter.display(),
        t.setpriv.display(),
        t.ip.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_and_names_the_package_of_a_missing_one() {
        assert!(which("sh").is_some());
        let m = need("p2c-no-such-program", "p2c-no-such-package").unwrap_err();
        assert_eq!(m.package, "p2c-no-such-package");
        assert_eq!(
            m.to_string(),
            "the boot check needs p2c-no-such-program, which this node lacks; install p2c-no-such-package"
        );
    }
}
