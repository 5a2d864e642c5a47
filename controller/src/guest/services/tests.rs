use super::*;
use crate::guest::distro::detect;
use crate::guest::edit::Editor;
use crate::guest::tests::Fixture;

fn run(f: &Fixture) -> Vec<(String, String, Option<String>)> {
    let tree = f.tree();
    let distro = detect(&tree).unwrap();
    let mut ed = Editor::open(&tree).unwrap();
    apply(&mut ed, &distro).unwrap();
    let out = ed.changes().iter().map(|c| (c.path.clone(), c.action.clone(), c.backup.clone())).collect();
    ed.finish().unwrap();
    out
}

#[test]
fn systemd_units_are_masked() {
    let f = Fixture::new();
    f.link("lib", "usr/lib");
    f.file("usr/lib/systemd/systemd", "");
    f.link("sbin/init", "/lib/systemd/systemd");
    let units = "usr/lib/systemd/system";
    for u in [
        "systemd-udevd.service",
        "systemd-udev-trigger.service",
        "irqbalance.service",
        "smartmontools.service",
        "lvm2-monitor.service",
        "systemd-timesyncd.service",
        "ssh.service",
    ] {
        f.file(&format!("{units}/{u}"), "[Unit]\n");
    }
    // Debian ships hwclock.service masked already.
    f.link(&format!("{units}/hwclock.service"), "/dev/null");
    // A unit the admin wrote: backed up, then masked.
    f.file("etc/systemd/system/chronyd.service", "[Service]\nExecStart=/usr/sbin/chronyd\n");
    let changes = run(&f);
    let masked = |u: &str| (format!("/etc/systemd/system/{u}"), "disabled".to_string(), None);
    assert_eq!(
        changes,
        [
            masked("systemd-udevd.service"),
            masked("systemd-udev-trigger.service"),
            masked("irqbalance.service"),
            masked("smartmontools.service"),
            masked("lvm2-monitor.service"),
            masked("systemd-timesyncd.service"),
            (
                "/etc/systemd/system/chronyd.service".to_string(),
                "disabled".to_string(),
                Some("/etc/p2c/backup/etc/systemd/system/chronyd.service".to_string())
            ),
        ]
    );
    assert_eq!(f.readlink("etc/systemd/system/systemd-udevd.service"), "/dev/null");
    assert!(!f.exists("etc/systemd/system/hwclock.service"));
    assert!(!f.exists("etc/systemd/system/ssh.service"));
    assert_eq!(
        f.read("etc/p2c/backup/etc/systemd/system/chronyd.service"),
        "[Service]\nExecStart=/usr/sbin/chronyd\n"
    );
    assert_eq!(run(&f), changes);
}

#[test]
fn sysv_start_links_become_stop_links() {
    let f = Fixture::new();
    f.file("etc/inittab", "id:2:initdefault:\n");
    f.link("etc/rcS.d/S02udev", "../init.d/udev");
    f.link("etc/rcS.d/S10hwclock.sh", "../init.d/hwclock.sh");
    f.link("etc/rc2.d/S01irqbalance", "../init.d/irqbalance");
    f.link("etc/rc2.d/S03ssh", "../init.d/ssh");
    f.link("etc/rc0.d/K01udev", "../init.d/udev");
    let changes = run(&f);
    assert_eq!(f.readlink("etc/rcS.d/K98udev"), "../init.d/udev");
    assert_eq!(f.readlink("etc/rcS.d/K90hwclock.sh"), "../init.d/hwclock.sh");
    assert_eq!(f.readlink("etc/rc2.d/K99irqbalance"), "../init.d/irqbalance");
    assert!(f.exists("etc/rc2.d/S03ssh"));
    assert!(f.exists("etc/rc0.d/K01udev"));
    assert!(!f.exists("etc/rcS.d/S02udev"));
    assert_eq!(f.readlink("etc/p2c/backup/etc/rcS.d/S02udev"), "../init.d/udev");
    let paths: Vec<(&str, &str)> = changes.iter().map(|(p, a, _)| (p.as_str(), a.as_str())).collect();
    assert_eq!(
        paths,
        [
            ("/etc/rc2.d/S01irqbalance", "disabled"),
            ("/etc/rcS.d/S02udev", "disabled"),
            ("/etc/rcS.d/S10hwclock.sh", "disabled"),
        ]
    );
    assert_eq!(run(&f), changes);

    // RHEL: the stop priority comes from the script's chkconfig header.
    let g = Fixture::new();
    g.file("etc/inittab", "id:3:initdefault:\n");
    g.file("etc/rc.d/init.d/smartd", "#!/bin/sh\n# chkconfig: - 40 60\n");
    g.link("etc/rc.d/rc3.d/S40smartd", "../init.d/smartd");
    g.link("etc/rc.d/rc3.d/S13irqbalance", "../init.d/irqbalance");
    run(&g);
    assert!(g.exists("etc/rc.d/rc3.d/K60smartd"));
    assert!(g.exists("etc/rc.d/rc3.d/K87irqbalance"));
}

#[test]
fn upstart_and_openrc() {
    let f = Fixture::new();
    f.file("sbin/initctl", "");
    f.file("etc/init/udev.conf", "");
    f.file("etc/init/hwclock.conf", "");
    f.file("etc/init/cron.conf", "");
    run(&f);
    assert_eq!(f.read("etc/init/udev.override"), "manual\n");
    assert_eq!(f.read("etc/init/hwclock.override"), "manual\n");
    assert!(!f.exists("etc/init/cron.override"));

    let g = Fixture::new();
    g.file("sbin/openrc", "");
    g.link("etc/runlevels/sysinit/udev", "/etc/init.d/udev");
    g.link("etc/runlevels/boot/hwclock", "/etc/init.d/hwclock");
    g.link("etc/runlevels/default/sshd", "/etc/init.d/sshd");
    let changes = run(&g);
    assert!(!g.exists("etc/runlevels/sysinit/udev"));
    assert!(!g.exists("etc/runlevels/boot/hwclock"));
    assert!(g.exists("etc/runlevels/default/sshd"));
    assert_eq!(changes.len(), 2);
    assert_eq!(run(&g), changes);
}
