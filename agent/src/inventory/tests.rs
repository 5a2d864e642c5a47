use std::path::Path;

use p2c_common::inventory::{OsFamily, QuotaSource, SelinuxMode};

use super::testfs::LoopFs;
use super::*;

fn write(root: &Path, abs: &str, text: &str) {
    let p = root.join(abs.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// A small Debian-like server tree.
fn debian_tree(root: &Path) {
    write(
        root,
        "/etc/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n",
    );
    write(root, "/etc/hostname", "web1\n");
    write(
        root,
        "/etc/network/interfaces",
        "auto lo\niface lo inet loopback\nauto eth0\niface eth0 inet static\n address 192.0.2.10/24\n\
         gateway 192.0.2.1\n hwaddress ether 52:54:00:12:34:56\niface eth0 inet6 static\n address 2001:db8::10/64\n\
         auto eth1\niface eth1 inet dhcp\n",
    );
    write(root, "/etc/resolv.conf", "search example.com\nnameserver 192.0.2.53\n");
    write(root, "/etc/selinux/config", "SELINUX=permissive\nSELINUXTYPE=default\n");
    write(root, "/etc/fstab", "/dev/sda1 / ext4 defaults 0 1\n/dev/sda2 none swap sw 0 0\n");
    write(root, "/etc/modules", "loop\n");
    write(root, "/etc/passwd", "root:x:0:0::/root:/bin/sh\nalice:x:1001:1001::/home/alice:/bin/sh\n");
    write(root, "/etc/group", "root:x:0:\nalice:x:1001:\n");
    write(root, "/etc/sysconfig/rawdevices", "/dev/raw/raw1 /dev/sdb1\n");
    write(root, "/boot/vmlinuz-6.1.0-18-amd64", "");
    std::fs::create_dir_all(root.join("var/lib/docker")).unwrap();
}

#[test]
fn tree_facts_come_from_the_tree() {
    let t = tempfile::tempdir().unwrap();
    debian_tree(t.path());
    let inv = collect(&CollectOptions { root: t.path().to_path_buf(), facts: FactsFrom::Tree });
    assert_eq!(inv.schema, INVENTORY_SCHEMA);
    assert_eq!(inv.facts_from, "tree");
    assert_eq!(inv.root, std::fs::canonicalize(t.path()).unwrap().display().to_string());
    assert!(inv.collected_unix > 1_600_000_000);
    assert_eq!(inv.hostname, "web1");
    assert_eq!(inv.os.family, OsFamily::Debian);
    assert_eq!(inv.os.version_id, "12");
    assert_eq!(inv.kernel.release, "6.1.0-18-amd64");
    assert!(inv.cpus >= 1 && inv.memory_bytes > 0);
    let eth0 = inv.interfaces.iter().find(|i| i.name == "eth0").unwrap();
    assert_eq!(eth0.addresses.len(), 2);
    assert_eq!(eth0.mac.as_deref(), Some("52:54:00:12:34:56"));
    assert!(!eth0.dhcp);
    assert!(inv.interfaces.iter().any(|i| i.name == "eth1" && i.dhcp));
    assert!(inv.interfaces.iter().any(|i| i.name == "lo" && i.loopback));
    assert_eq!(inv.routes.len(), 1);
    assert_eq!(inv.routes[0].interface, "eth0");
    assert_eq!(inv.dns.nameservers, vec!["192.0.2.53"]);
    assert_eq!(inv.dns.search, vec!["example.com"]);
    assert_eq!(inv.selinux.mode, SelinuxMode::Permissive);
    assert_eq!(inv.swaps.len(), 1);
    assert!(!inv.swaps[0].active && inv.swaps[0].in_fstab);
    assert_eq!(inv.kernel_modules, vec!["loop"]);
    assert_eq!(inv.raw_bindings.len(), 1);
    assert_eq!(inv.container_runtimes, vec!["docker"]);
    assert!(inv.listeners.is_empty());
    // The tree is a plain directory: its file system is reported as its root.
    assert_eq!(inv.mounts.len(), 1);
    assert_eq!(inv.mounts[0].mountpoint, "/");
    assert!(inv.gaps.is_empty(), "{:?}", inv.gaps);
    // It travels as JSON.
    let json = serde_json::to_string(&inv).unwrap();
    let back: p2c_common::inventory::Inventory = serde_json::from_str(&json).unwrap();
    assert_eq!(back, inv);
}

#[test]
fn an_empty_directory_gives_gaps_not_errors() {
    let t = tempfile::tempdir().unwrap();
    let inv = collect(&CollectOptions { root: t.path().to_path_buf(), facts: FactsFrom::Tree });
    assert_eq!(inv.hostname, "");
    for fact in ["os:", "hostname:", "kernel:", "interfaces:"] {
        assert!(inv.gaps.iter().any(|g| g.starts_with(fact)), "{fact} {:?}", inv.gaps);
    }
    let missing = collect(&CollectOptions { root: t.path().join("does-not-exist"), facts: FactsFrom::Tree });
    assert!(missing.gaps.iter().any(|g| g.starts_with("root ")), "{:?}", missing.gaps);
}

#[test]
fn live_facts_of_this_machine() {
    let t = tempfile::tempdir().unwrap();
    debian_tree(t.path());
    let inv = collect(&CollectOptions { root: t.path().to_path_buf(), facts: FactsFrom::Live });
    assert_eq!(inv.facts_from, "live");
    // File facts still come from the tree, kernel facts from the kernel.
    assert_eq!(inv.hostname, "web1");
    assert_eq!(inv.kernel.release, os::live_kernel().release);
    assert!(inv.interfaces.iter().any(|i| i.loopback && i.up));
    assert!(!inv.kernel.machine.is_empty());
    let slash = collect(&CollectOptions { root: "/".into(), facts: FactsFrom::Live });
    assert!(slash.mounts.iter().any(|m| m.mountpoint == "/"));
    assert!(!slash.block_devices.is_empty() || slash.gaps.iter().any(|g| g.starts_with("block")));
}

/// Puts a passwd/group into the loop file system, files owned by a few users, quota
/// files and limits made by quota-tools.
fn quota_fs(fs: &LoopFs, format: &str) {
    write(
        &fs.mnt,
        "/etc/passwd",
        "root:x:0:0::/root:/bin/sh\nalice:x:1001:1001::/:/bin/sh\nbob:x:1002:1002::/:/bin/sh\n",
    );
    write(&fs.mnt, "/etc/group", "root:x:0:\nstaff:x:50:\n");
    fs.file("home/a/1", 10, 1001, 50);
    fs.file("home/b/1", 20, 1002, 50);
    fs.tool("quotacheck", &["-cug", "-F", format]);
    fs.tool("setquota", &["-F", format, "-u", "1001", "100", "200", "10", "20"]);
    fs.tool("setquota", &["-F", format, "-g", "50", "1000", "2000", "0", "0"]);
    fs.tool("setquota", &["-F", format, "-t", "-u", "3600", "7200"]);
}

#[test]
fn quotas_of_a_tree_that_is_a_file_system() {
    let Some(fs) = LoopFs::new() else {
        return;
    };
    quota_fs(&fs, "vfsv1");
    for facts in [FactsFrom::Tree, FactsFrom::Live] {
        let inv = collect(&CollectOptions { root: fs.mnt.clone(), facts });
        assert_eq!(inv.quotas.len(), 1, "{:?}", inv.gaps);
        let q = &inv.quotas[0];
        assert_eq!(q.mountpoint, "/");
        assert_eq!(q.fs_type, "ext4");
        assert!(q.device.starts_with("/dev/loop"), "{}", q.device);
        // This kernel has no quota formats: the files are read either way.
        assert_eq!(q.source, QuotaSource::Files);
        assert_eq!(q.format, "vfsv1");
        assert_eq!((q.block_grace_secs, q.inode_grace_secs), (3600, 7200));
        let alice = q.users.iter().find(|u| u.id == 1001).unwrap();
        assert_eq!(alice.name.as_deref(), Some("alice"));
        assert_eq!((alice.block_soft, alice.block_hard), (100, 200));
        assert_eq!((alice.inode_soft, alice.inode_hard), (10, 20));
        assert_eq!((alice.used_bytes, alice.used_inodes), (10 * 1024, 1));
        let bob = q.users.iter().find(|u| u.id == 1002).unwrap();
        assert!(!bob.has_limits());
        assert_eq!(bob.used_bytes, 20 * 1024);
        let staff = q.groups.iter().find(|g| g.id == 50).unwrap();
        assert_eq!(staff.name.as_deref(), Some("staff"));
        assert_eq!(staff.block_hard, 2000);
        assert_eq!(staff.used_inodes, 2);
        assert_eq!(inv.quota_candidates(), vec!["/"]);
        let m = &inv.mounts[0];
        assert!(m.quota_options().contains(&"usrquota"));
        assert!(m.size_bytes > 0 && m.used_bytes > 0 && m.inodes_used > 0);
    }
}

#[test]
fn quotas_of_a_file_system_beneath_the_tree() {
    let Some(fs) = LoopFs::new() else {
        return;
    };
    quota_fs(&fs, "vfsv0");
    // The tree is the directory holding the mount point `mnt`.
    write(fs.dir(), "/etc/hostname", "tree\n");
    let inv = collect(&CollectOptions { root: fs.dir().to_path_buf(), facts: FactsFrom::Tree });
    let points: Vec<&str> = inv.mounts.iter().map(|m| m.mountpoint.as_str()).collect();
    assert_eq!(points, vec!["/", "/mnt"]);
    assert_eq!(inv.quotas.len(), 1, "{:?}", inv.gaps);
    assert_eq!(inv.quotas[0].mountpoint, "/mnt");
    assert_eq!(inv.quotas[0].format, "vfsv0");
    // Names come from the tree's passwd, which has none of these users.
    assert!(inv.quotas[0].users.iter().all(|u| u.name.is_none()));
    assert!(inv.block_devices.iter().any(|b| b.mountpoint.is_some()));
}

/// A network namespace made for one test, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Option<Netns> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping: needs root to create a network namespace");
            return None;
        }
        let name = format!("p2c-inv-{}", std::process::id());
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipping: cannot create network namespace {name}");
            return None;
        }
        Some(Netns(name))
    }

    fn ip(&self, args: &str) {
        let mut a = vec!["-n", self.0.as_str()];
        a.extend(args.split_whitespace());
        let out = std::process::Command::new("ip").args(&a).output().unwrap();
        assert!(out.status.success(), "ip {args}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

const CHILD_ROOT_ENV: &str = "P2C_INVENTORY_TEST_CHILD_ROOT";
const CHILD_MARK: &str = "P2C-INVENTORY-JSON:";

/// Runs inside the namespace, started by `live_facts_in_a_network_namespace`; does nothing
/// in a normal test run.
#[test]
fn netns_child() {
    let Some(root) = std::env::var_os(CHILD_ROOT_ENV) else {
        return;
    };
    let _listener = std::net::TcpListener::bind("192.0.2.10:8080").unwrap();
    let inv = collect(&CollectOptions { root: root.into(), facts: FactsFrom::Live });
    println!("{CHILD_MARK}{}", serde_json::to_string(&inv).unwrap());
}

#[test]
fn live_facts_in_a_network_namespace() {
    let Some(ns) = Netns::new() else {
        return;
    };
    ns.ip("link set lo up");
    ns.ip("link add eth0 type veth peer name eth1");
    ns.ip("link set eth0 address 52:54:00:AA:BB:CC mtu 1400 up");
    ns.ip("addr add 192.0.2.10/24 dev eth0");
    ns.ip("addr add 192.0.2.11/24 dev eth0 label eth0:1");
    ns.ip("-6 addr add 2001:db8::10/64 dev eth0 nodad");
    ns.ip("route add default via 192.0.2.1");
    ns.ip("-6 route add default via 2001:db8::1 dev eth0");
    let t = tempfile::tempdir().unwrap();
    debian_tree(t.path());
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "inventory::tests::netns_child", "--nocapture"])
        .env(CHILD_ROOT_ENV, t.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json =
        stdout.lines().find_map(|l| l.split_once(CHILD_MARK).map(|(_, j)| j.to_string())).unwrap_or_else(
            || panic!("no inventory from the child: {stdout} {}", String::from_utf8_lossy(&out.stderr)),
        );
    let inv: p2c_common::inventory::Inventory = serde_json::from_str(&json).unwrap();
    let eth0 = inv.interfaces.iter().find(|i| i.name == "eth0").unwrap();
    assert_eq!(eth0.mac.as_deref(), Some("52:54:00:aa:bb:cc"));
    assert_eq!(eth0.mtu, 1400);
    assert!(eth0.up && !eth0.loopback && !eth0.dhcp);
    let addrs: Vec<String> = eth0.addresses.iter().map(|a| format!("{}/{}", a.address, a.prefix)).collect();
    for want in ["192.0.2.10/24", "192.0.2.11/24", "2001:db8::10/64"] {
        assert!(addrs.iter().any(|a| a == want), "{want} not in {addrs:?}");
    }
    // The tree's configuration brings eth1 up with DHCP.
    let eth1 = inv.interfaces.iter().find(|i| i.name == "eth1").unwrap();
    assert!(eth1.dhcp && !eth1.up);
    assert_eq!(inv.interfaces.len(), 3, "{:?}", inv.interfaces);
    let defaults: Vec<String> = inv
        .routes
        .iter()
        .filter(|r| r.destination == "default")
        .map(|r| format!("{:?} {}", r.gateway, r.interface))
        .collect();
    assert_eq!(defaults, vec!["Some(192.0.2.1) eth0", "Some(2001:db8::1) eth0"]);
    let l = inv.listeners.iter().find(|l| l.port == 8080).unwrap_or_else(|| panic!("{:?}", inv.listeners));
    assert_eq!((l.proto.as_str(), l.address.as_str()), ("tcp", "192.0.2.10"));
    assert!(l.process.is_some());
}
