//! Scans of real temporary trees. Most need root (chown to high ids, trusted xattrs,
//! mounts) and say so when skipped.

use std::fs;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;

use p2c_common::scan::{ScanOptions, ScanResult, limits};

use super::scan;

const MAC: &str = "52:54:00:12:34:56";

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

macro_rules! need_root {
    () => {
        if !is_root() {
            eprintln!("skipped: this test needs root");
            return;
        }
    };
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

fn run(cmd: &str, args: &[&str]) {
    let st = Command::new(cmd).args(args).status().unwrap();
    assert!(st.success(), "{cmd} {args:?} failed");
}

fn opts() -> ScanOptions {
    ScanOptions { mac_addresses: vec![MAC.to_uppercase()], ..Default::default() }
}

fn paths<'a>(list: impl IntoIterator<Item = &'a p2c_common::paths::RelPath>) -> Vec<String> {
    list.into_iter().map(|p| p.display()).collect()
}

/// A small server tree with one of everything the scan looks for.
fn server_tree(root: &Path, outside: &Path) {
    write(root, "etc/licence.key", "# bound to this box\nHWID=52-54-00-12-34-56\nserial=5254001234560042\n");
    write(root, "etc/hostname", "box\n");
    write(root, "home/alice/notes", "mac 52:54:00:12:34:56\n");
    write(root, "opt/skip/lic", "52:54:00:12:34:56\n");
    write(
        root,
        "etc/systemd/system/db.service",
        "[Service]\nExecStart=/usr/bin/db --disk /dev/sdb --log /dev/null\n",
    );
    write(root, "proc/cpuinfo", "52:54:00:12:34:56\n");
    write(root, "srv/data/tagged", "x");
    write(root, "srv/data/shared", "x");
    write(root, "srv/data/trusted", "x");
    write(root, "srv/high", "x");
    write(root, "srv/link-a", "same inode");
    fs::hard_link(root.join("srv/link-a"), root.join("srv/link-b")).unwrap();
    write(outside, "lic", "52:54:00:12:34:56\n");
    std::os::unix::fs::symlink(outside, root.join("srv/elsewhere")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("opt/etc")).unwrap();
    UnixListener::bind(root.join("srv/app.sock")).unwrap();
    rustix::fs::setxattr(
        root.join("srv/data/tagged"),
        "user.comment",
        b"hello",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    run("setfacl", &["-m", "u:1234:r", root.join("srv/data/shared").to_str().unwrap()]);
}

#[test]
fn scans_a_server_tree() {
    need_root!();
    let tmp = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let root = tmp.path();
    server_tree(root, outside.path());
    rustix::fs::setxattr(root.join("srv/data/trusted"), "trusted.p2c", b"1", rustix::fs::XattrFlags::empty())
        .unwrap();
    std::os::unix::fs::lchown(root.join("srv/high"), Some(70000), Some(100)).unwrap();

    let mut o = opts();
    o.excludes = vec!["/opt/skip".into()];
    let r = scan(root, &o);

    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(!r.truncated);
    let hits: Vec<(String, &str, &str)> =
        r.mac_hits.iter().map(|h| (h.path.display(), h.mac.as_str(), h.spelling.as_str())).collect();
    assert_eq!(
        hits,
        [
            ("/etc/licence.key".into(), MAC, "52-54-00-12-34-56"),
            ("/etc/licence.key".into(), MAC, "525400123456"),
        ]
    );
    assert!(r.mac_files_searched >= 3);

    assert_eq!(paths(&r.xattrs.user.examples), ["/srv/data/tagged"]);
    assert_eq!(paths(&r.xattrs.acl.examples), ["/srv/data/shared"]);
    assert_eq!(paths(&r.xattrs.system.examples), ["/srv/data/shared"]);
    assert_eq!(paths(&r.xattrs.trusted.examples), ["/srv/data/trusted"]);
    assert_eq!(r.xattrs.files, 3);
    assert!(r.xattrs.bytes > 0);

    assert_eq!(r.high_ids.total, 1);
    assert_eq!(r.high_ids.examples[0].path.display(), "/srv/high");
    assert_eq!(r.high_ids.examples[0].uid, 70000);

    assert_eq!(paths(&r.sockets.examples), ["/srv/app.sock"]);

    assert_eq!(r.device_refs.len(), 1, "{:?}", r.device_refs);
    let d = &r.device_refs[0];
    assert_eq!(
        (d.device.as_str(), d.file.display(), d.line, d.context.as_str()),
        ("/dev/sdb", "/etc/systemd/system/db.service".into(), 2, "ExecStart")
    );

    let skipped: Vec<(String, &str)> =
        r.skipped_mounts.iter().map(|m| (m.path.display(), m.fs_type.as_str())).collect();
    assert_eq!(skipped, [("/proc".into(), "pseudo")]);

    // every entry but the socket and the second name of the hard link is an inode
    assert_eq!(r.entries, r.inodes + 2);
    assert!(r.used_bytes > 0);

    let back = ScanResult::from_json(&r.to_json().unwrap()).unwrap();
    assert_eq!(back, r);
}

#[test]
fn does_not_enter_pseudo_mounts() {
    need_root!();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(root, "etc/a", "52:54:00:12:34:56\n");
    let mnt = root.join("etc/cache");
    fs::create_dir_all(&mnt).unwrap();
    run("mount", &["-t", "tmpfs", "p2c-scan-test", mnt.to_str().unwrap()]);
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = rustix::mount::unmount(self.0, rustix::mount::UnmountFlags::DETACH);
        }
    }
    let _guard = Unmount(&mnt);
    write(root, "etc/cache/b", "52:54:00:12:34:56\n");

    let r = scan(root, &opts());
    assert_eq!(paths(r.mac_hits.iter().map(|h| &h.path)), ["/etc/a"]);
    let skipped: Vec<(String, &str)> =
        r.skipped_mounts.iter().map(|m| (m.path.display(), m.fs_type.as_str())).collect();
    assert_eq!(skipped, [("/etc/cache".into(), "tmpfs")]);
}

#[test]
fn caps_lists_and_keeps_totals() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let n = limits::MAX_EXAMPLES + 3;
    for i in 0..n {
        let p = root.join(format!("srv/f{i:04}"));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, "x").unwrap();
        rustix::fs::setxattr(&p, "user.n", b"1", rustix::fs::XattrFlags::empty()).unwrap();
    }
    let r = scan(root, &ScanOptions::default());
    assert_eq!(r.xattrs.user.total, n as u64);
    assert_eq!(r.xattrs.user.examples.len(), limits::MAX_EXAMPLES);
    assert_eq!(r.xattrs.user.examples[0].display(), "/srv/f0000");
    assert!(r.truncated);
}

#[test]
fn skips_big_files_in_the_mac_search() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(root, "var/lib/small", "525400123456");
    let big = fs::File::create(root.join("var/lib/huge.img")).unwrap();
    big.set_len(limits::MAX_MAC_FILE_SIZE + 1).unwrap();
    let r = scan(root, &opts());
    assert_eq!(paths(r.mac_hits.iter().map(|h| &h.path)), ["/var/lib/small"]);
    assert_eq!(paths(r.mac_skipped.examples.iter().map(|p| &p.path)), ["/var/lib/huge.img"]);
    assert!(!r.truncated);
}

#[test]
fn reports_bad_requests_and_roots_instead_of_failing() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = ScanOptions { mac_addresses: vec!["not-a-mac".into()], ..Default::default() };
    let r = scan(tmp.path(), &bad);
    assert_eq!(r.errors.total, 1);
    assert!(r.errors.examples[0].reason.contains("not-a-mac"));
    let r = scan(&tmp.path().join("missing"), &ScanOptions::default());
    assert!(r.errors.examples[0].reason.contains("missing"), "{:?}", r.errors);
    assert_eq!(r.entries, 0);
}
