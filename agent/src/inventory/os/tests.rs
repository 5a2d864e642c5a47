use super::*;

#[test]
fn os_release() {
    let o = parse_os_release(
        "NAME=\"Rocky Linux\"\nVERSION_ID=\"9.3\"\nID=\"rocky\"\n\
         ID_LIKE=\"rhel centos fedora\"\nPRETTY_NAME=\"Rocky Linux 9.3 (Blue Onyx)\"\n",
    );
    assert_eq!(o.id, "rocky");
    assert_eq!(o.id_like, vec!["rhel", "centos", "fedora"]);
    assert_eq!(o.family, OsFamily::Rhel);
    assert_eq!(o.version_id, "9.3");
    assert_eq!(o.pretty_name, "Rocky Linux 9.3 (Blue Onyx)");
    let o = parse_os_release("ID=linuxmint\nID_LIKE='ubuntu debian'\n");
    assert_eq!(o.family, OsFamily::Debian);
    let o = parse_os_release("ID=weird\nID_LIKE=\"suse opensuse\"");
    assert_eq!(o.family, OsFamily::Suse);
    assert_eq!(parse_os_release("\u{fffd}\u{fffd}").family, OsFamily::Unknown);
}

#[test]
fn legacy_release_files() {
    let o = parse_legacy_release("redhat-release", "CentOS release 6.10 (Final)\n").unwrap();
    assert_eq!((o.id.as_str(), o.version_id.as_str()), ("centos", "6.10"));
    assert_eq!(o.family, OsFamily::Rhel);
    assert_eq!(o.name, "CentOS");
    let o = parse_legacy_release("redhat-release", "Red Hat Enterprise Linux Server release 5.11 (Tikanga)")
        .unwrap();
    assert_eq!((o.id.as_str(), o.version_id.as_str()), ("rhel", "5.11"));
    let o = parse_legacy_release(
        "SuSE-release",
        "SUSE Linux Enterprise Server 11 (x86_64)\nVERSION = 11\nPATCHLEVEL = 4\n",
    )
    .unwrap();
    assert_eq!((o.id.as_str(), o.version_id.as_str()), ("sles", "11.4"));
    assert_eq!(o.family, OsFamily::Suse);
    let o = parse_legacy_release("debian_version", "7.11\n").unwrap();
    assert_eq!((o.id.as_str(), o.version_id.as_str()), ("debian", "7.11"));
    assert!(parse_legacy_release("debian_version", "\n\n").is_none());
}

#[test]
fn tree_files() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    std::fs::create_dir_all(r.join("etc/sysconfig")).unwrap();
    std::fs::create_dir_all(r.join("boot")).unwrap();
    std::fs::create_dir_all(r.join("lib/modules/4.18.0-80.el8.x86_64")).unwrap();
    std::fs::create_dir_all(r.join("lib/modules/4.18.0-513.el8.x86_64")).unwrap();
    std::fs::write(r.join("boot/vmlinuz-4.18.0-100.el8.x86_64"), "").unwrap();
    std::fs::write(r.join("boot/vmlinuz-0-rescue-abc"), "").unwrap();
    std::fs::write(r.join("etc/redhat-release"), "CentOS release 6.10 (Final)\n").unwrap();
    std::fs::write(r.join("etc/sysconfig/network"), "NETWORKING=yes\nHOSTNAME=web1.example.com\n").unwrap();
    assert_eq!(read_os(r).unwrap().unwrap().id, "centos");
    assert_eq!(read_hostname(r).unwrap().as_deref(), Some("web1.example.com"));
    std::fs::write(r.join("etc/hostname"), "# set by installer\n\nweb2\n").unwrap();
    assert_eq!(read_hostname(r).unwrap().as_deref(), Some("web2"));
    std::fs::write(r.join("etc/os-release"), "ID=debian\nVERSION_ID=\"12\"\n").unwrap();
    assert_eq!(read_os(r).unwrap().unwrap().family, OsFamily::Debian);
    let k = tree_kernel(r).unwrap();
    assert_eq!(k.release, "4.18.0-513.el8.x86_64");
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(read_os(empty.path()).unwrap(), None);
    assert_eq!(read_hostname(empty.path()).unwrap(), None);
    assert_eq!(tree_kernel(empty.path()).unwrap().release, "");
}

#[test]
fn versions_and_elf() {
    assert_eq!(version_cmp("5.10.0-9", "5.10.0-10"), Ordering::Less);
    assert_eq!(version_cmp("6.1", "6.1"), Ordering::Equal);
    assert_eq!(version_cmp("3.10.0", "3.9.9"), Ordering::Greater);
    assert_eq!(version_cmp("1.02", "1.2"), Ordering::Equal);
    // The test binary's own architecture is the host's.
    let me = std::env::current_exe().unwrap();
    assert_eq!(elf_machine(&me).as_deref(), Some(std::env::consts::ARCH));
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("x"), "#!/bin/sh\n").unwrap();
    assert_eq!(elf_machine(&t.path().join("x")), None);
}
