//! A temporary guest tree for the rewrite's unit tests, and whole-guest tests.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use crate::tree::Tree;

/// A guest tree in a temporary directory, written with `std::fs` (test data is trusted).
pub(crate) struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    pub(crate) fn new() -> Self {
        Fixture { dir: tempfile::tempdir().unwrap() }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn tree(&self) -> Tree {
        Tree::open(self.dir.path()).unwrap()
    }

    pub(crate) fn file(&self, rel: &str, text: &str) {
        self.file_mode(rel, text, 0o644);
    }

    pub(crate) fn file_mode(&self, rel: &str, text: &str, mode: u32) {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    pub(crate) fn link(&self, rel: &str, target: &str) {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        symlink(target, p).unwrap();
    }

    pub(crate) fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    pub(crate) fn readlink(&self, rel: &str) -> String {
        std::fs::read_link(self.dir.path().join(rel))
            .unwrap_or_else(|e| panic!("{rel}: {e}"))
            .to_string_lossy()
            .into_owned()
    }

    pub(crate) fn exists(&self, rel: &str) -> bool {
        std::fs::symlink_metadata(self.dir.path().join(rel)).is_ok()
    }

    pub(crate) fn mode(&self, rel: &str) -> u32 {
        std::fs::symlink_metadata(self.dir.path().join(rel)).unwrap().permissions().mode() & 0o7777
    }
}

/// Every entry under the fixture: path, kind, content or target, mode, owner.
fn snapshot(root: &Path) -> Vec<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let what = if m.is_dir() {
                todo.push(p.clone());
                "dir".to_string()
            } else if m.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else if m.file_type().is_char_device() {
                format!("char {}", m.rdev())
            } else {
                String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned()
            };
            out.push(format!(
                "{} {:o} {}:{} {what}",
                p.strip_prefix(root).unwrap().display(),
                m.mode(),
                m.uid(),
                m.gid()
            ));
        }
    }
    out.sort();
    out
}

/// A Debian server with systemd, ifupdown, two NICs, local disks and SELinux configured.
fn debian_server() -> Fixture {
    let f = Fixture::new();
    f.link("lib", "usr/lib");
    f.file("usr/lib/os-release", "ID=debian\nVERSION_ID=\"12\"\n");
    f.link("etc/os-release", "../usr/lib/os-release");
    f.file("usr/lib/systemd/systemd", "");
    f.link("sbin/init", "/lib/systemd/systemd");
    for u in [
        "getty@.service",
        "console-getty.service",
        "systemd-udevd.service",
        "systemd-udev-trigger.service",
        "ifupdown-pre.service",
    ] {
        f.file(&format!("usr/lib/systemd/system/{u}"), "[Unit]\n");
    }
    f.link("usr/lib/systemd/system/hwclock.service", "/dev/null");
    f.file(
        "etc/network/interfaces",
        "auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet static\n\taddress 198.51.100.10/24\n\tgateway 198.51.100.1\n\n\
         auto eth0:1\niface eth0:1 inet static\n\taddress 198.51.100.11/24\n\n\
         allow-hotplug eth1\niface eth1 inet dhcp\niface eth1 inet6 static\n\taddress 2001:db8:1::5/64\n",
    );
    f.file(
        "etc/fstab",
        "UUID=1111 / ext4 errors=remount-ro 0 1\nUUID=2222 /home ext4 defaults 0 2\nUUID=3333 none swap sw 0 0\nproc /proc proc defaults 0 0\n",
    );
    f.file("etc/selinux/config", "SELINUX=enforcing\nSELINUXTYPE=default\n");
    f.file("etc/udev/rules.d/70-persistent-net.rules", "# net\n");
    f.file("etc/hostname", "web1\n");
    f.file("etc/hosts", "127.0.0.1 localhost\n198.51.100.10 web1\n");
    f.dir_all("dev");
    f
}

impl Fixture {
    fn dir_all(&self, rel: &str) {
        std::fs::create_dir_all(self.path().join(rel)).unwrap();
    }
}

#[test]
fn containerise_is_idempotent() {
    use super::{GuestOptions, containerise};
    let f = debian_server();
    let inv = crate::guest::network::tests::inventory();
    let opts =
        GuestOptions { nameservers: vec![], search: vec![], ..crate::guest::network::tests::options() };
    let tree = f.tree();
    let first = containerise(&tree, &inv, &opts).unwrap();
    let after_first = snapshot(f.path());
    let second = containerise(&tree, &inv, &opts).unwrap();
    assert_eq!(second, first);
    assert_eq!(snapshot(f.path()), after_first);

    let paths: Vec<(&str, &str)> = first.iter().map(|c| (c.path.as_str(), c.action.as_str())).collect();
    let mut want = vec![
        ("/etc/fstab", "rewritten"),
        ("/etc/mtab", "created"),
        ("/etc/network/interfaces", "rewritten"),
        ("/etc/udev/rules.d/70-persistent-net.rules", "removed"),
    ];
    let ttys: Vec<String> = (1..=6).map(|n| format!("/etc/systemd/system/getty@tty{n}.service")).collect();
    want.extend(ttys.iter().map(|t| (t.as_str(), "disabled")));
    want.push(("/etc/systemd/system/getty.target.wants/console-getty.service", "created"));
    for n in ["null", "zero", "full", "random", "urandom", "tty", "console", "ptmx"] {
        want.push((Box::leak(format!("/dev/{n}").into_boxed_str()), "created"));
    }
    want.extend([
        ("/dev/pts", "created"),
        ("/dev/shm", "created"),
        ("/dev/fd", "created"),
        ("/dev/stdin", "created"),
        ("/dev/stdout", "created"),
        ("/dev/stderr", "created"),
        ("/etc/systemd/system/systemd-udevd.service", "disabled"),
        ("/etc/systemd/system/systemd-udev-trigger.service", "disabled"),
        ("/etc/selinux/config", "rewritten"),
    ]);
    assert_eq!(paths, want);
    assert_eq!(f.read("etc/fstab"), "proc /proc proc defaults 0 0\n");
    assert_eq!(f.read("etc/selinux/config"), "SELINUX=disabled\nSELINUXTYPE=default\n");
    assert_eq!(f.read("etc/hostname"), "web1\n");
    assert!(f.read("etc/network/interfaces").contains("auto venet0:2\n"));
    let journal: Vec<p2c_common::migration::GuestChange> =
        serde_json::from_str(&f.read("etc/p2c/changes.json")).unwrap();
    assert_eq!(journal, first);
}
