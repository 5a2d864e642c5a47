//! SELinux: the running mode from selinuxfs, the configured one from `/etc/selinux/config`.

use std::path::Path;

use p2c_common::inventory::{Selinux, SelinuxMode};

use super::fsread::{self, CONFIG_CAP, ReadError};
use super::shellvars;

/// `SELINUX=` and `SELINUXTYPE=` of /etc/selinux/config.
pub fn parse_config(text: &str) -> (Option<SelinuxMode>, Option<String>) {
    let vars = shellvars::parse(text);
    let mode = shellvars::get(&vars, "SELINUX").and_then(|m| match m.to_ascii_lowercase().as_str() {
        "enforcing" => Some(SelinuxMode::Enforcing),
        "permissive" => Some(SelinuxMode::Permissive),
        "disabled" => Some(SelinuxMode::Disabled),
        _ => None,
    });
    let policy = shellvars::get(&vars, "SELINUXTYPE").filter(|p| !p.is_empty()).map(str::to_string);
    (mode, policy)
}

/// The configured SELinux of the tree at `root`; `live_enforce` is the content of
/// selinuxfs's `enforce` for live facts (`None` when selinuxfs is not mounted, i.e. the
/// kernel does not run SELinux), or `None` with `live == false` for a tree.
pub fn selinux(root: &Path, live: bool, live_enforce: Option<&str>) -> Result<Selinux, ReadError> {
    let cfg = fsread::read_text_opt(&fsread::below(root, "/etc/selinux/config"), CONFIG_CAP)?;
    let (config_mode, policy) = cfg.as_deref().map(parse_config).unwrap_or((None, None));
    let mode = if live {
        match live_enforce.map(str::trim) {
            Some("1") => SelinuxMode::Enforcing,
            Some(_) => SelinuxMode::Permissive,
            None if cfg.is_some() => SelinuxMode::Disabled,
            None => SelinuxMode::Absent,
        }
    } else {
        match (config_mode, cfg.is_some()) {
            (Some(m), _) => m,
            (None, true) => SelinuxMode::Disabled,
            (None, false) => SelinuxMode::Absent,
        }
    };
    Ok(Selinux { mode, config_mode, policy })
}

/// selinuxfs's `enforce` below `sys` (normally `/sys`), if SELinux runs.
pub fn live_enforce(sys: &Path) -> Option<String> {
    fsread::read_text(&sys.join("fs/selinux/enforce"), 64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config() {
        let (m, p) = parse_config("# comment\nSELINUX=enforcing\nSELINUXTYPE=targeted\n");
        assert_eq!(m, Some(SelinuxMode::Enforcing));
        assert_eq!(p.as_deref(), Some("targeted"));
        assert_eq!(parse_config("SELINUX=Permissive").0, Some(SelinuxMode::Permissive));
        assert_eq!(parse_config("SELINUX=bogus\n"), (None, None));
    }

    #[test]
    fn modes() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        assert_eq!(selinux(r, true, None).unwrap().mode, SelinuxMode::Absent);
        assert_eq!(selinux(r, false, None).unwrap().mode, SelinuxMode::Absent);
        std::fs::create_dir_all(r.join("etc/selinux")).unwrap();
        std::fs::write(r.join("etc/selinux/config"), "SELINUX=enforcing\n").unwrap();
        let tree = selinux(r, false, None).unwrap();
        assert_eq!(tree.mode, SelinuxMode::Enforcing);
        assert_eq!(tree.config_mode, Some(SelinuxMode::Enforcing));
        // Configured but the kernel does not run it.
        assert_eq!(selinux(r, true, None).unwrap().mode, SelinuxMode::Disabled);
        assert_eq!(selinux(r, true, Some("0\n")).unwrap().mode, SelinuxMode::Permissive);
        assert_eq!(selinux(r, true, Some("1")).unwrap().mode, SelinuxMode::Enforcing);
    }
}
