//! SELinux cannot run in a container: `SELINUX=disabled` in `/etc/selinux/config`
//! (the rest of the file kept), and no relabelling at the next boot (`/.autorelabel`).

use super::GuestError;
use super::edit::Editor;
use crate::tree::rel;

pub(super) fn apply(ed: &mut Editor) -> Result<(), GuestError> {
    ed.rewrite(
        &rel("etc/selinux/config"),
        "SELinux is not supported in a container; set to disabled",
        rewrite_config,
    )?;
    ed.remove(&rel(".autorelabel"), "no SELinux relabelling in a container")
}

/// Every `SELINUX=` setting becomes `SELINUX=disabled`; `SELINUXTYPE=` and comments stay.
pub(crate) fn rewrite_config(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|line| {
            let t = line.trim_start();
            let is_mode = t.strip_prefix("SELINUX").is_some_and(|r| r.trim_start().starts_with('='));
            if !is_mode {
                return line.to_string();
            }
            let value = t.split_once('=').map(|(_, v)| v.trim()).unwrap_or_default();
            if value == "disabled" {
                line.to_string()
            } else {
                let nl = if line.ends_with('\n') { "\n" } else { "" };
                format!("SELINUX=disabled{nl}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::tests::Fixture;

    const CONFIG: &str = "\
# This file controls the state of SELinux on the system.
# SELINUX= can take one of these three values:
#     enforcing - SELinux security policy is enforced.
SELINUX=enforcing
# SELINUXTYPE= can take one of these two values:
SELINUXTYPE=targeted
";

    #[test]
    fn disabled_and_autorelabel_gone() {
        let want = CONFIG.replace("SELINUX=enforcing", "SELINUX=disabled");
        assert_eq!(rewrite_config(CONFIG), want);
        assert_eq!(rewrite_config(&want), want);
        let f = Fixture::new();
        f.file("etc/selinux/config", CONFIG);
        f.file(".autorelabel", "");
        let tree = f.tree();
        let mut ed = Editor::open(&tree).unwrap();
        apply(&mut ed).unwrap();
        assert_eq!(f.read("etc/selinux/config"), want);
        assert_eq!(f.read("etc/p2c/backup/etc/selinux/config"), CONFIG);
        assert!(!f.exists(".autorelabel"));
        assert!(f.exists("etc/p2c/backup/.autorelabel"));
        let actions: Vec<(&str, &str)> =
            ed.changes().iter().map(|c| (c.path.as_str(), c.action.as_str())).collect();
        assert_eq!(actions, [("/etc/selinux/config", "rewritten"), ("/.autorelabel", "removed")]);
    }
}
