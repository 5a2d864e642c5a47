//! Helpers for boot-check tests: small real services in a guest tree (the host's static
//! busybox, started by systemd units of the guest) and a look for anything a boot check left
//! behind on the node.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, bail};
use p2c_common::inventory::{IfAddr, Interface, Inventory};

/// The boot tests' server: two IPv4 addresses on eth0 (198.51.100.10 and .11, /24) and one
/// IPv6 address (fd00:51::20/64), in that order.
pub fn server_addresses() -> Vec<IpAddr> {
    server_ifaddrs().into_iter().map(|a| a.address).collect()
}

fn server_ifaddrs() -> Vec<IfAddr> {
    vec![
        IfAddr { address: Ipv4Addr::new(198, 51, 100, 10).into(), prefix: 24 },
        IfAddr { address: Ipv4Addr::new(198, 51, 100, 11).into(), prefix: 24 },
        IfAddr { address: Ipv6Addr::new(0xfd00, 0x51, 0, 0, 0, 0, 0, 0x20).into(), prefix: 64 },
    ]
}

/// The boot tests' server as its inventory shows it: `lo` and eth0 with
/// [`server_addresses`], no listeners.
pub fn server_inventory() -> Inventory {
    Inventory {
        hostname: "web1".into(),
        interfaces: vec![
            Interface {
                name: "lo".into(),
                loopback: true,
                up: true,
                addresses: vec![IfAddr { address: Ipv4Addr::LOCALHOST.into(), prefix: 8 }],
                ..Interface::default()
            },
            Interface {
                name: "eth0".into(),
                mac: Some("52:54:00:0a:00:10".into()),
                up: true,
                mtu: 1500,
                addresses: server_ifaddrs(),
                ..Interface::default()
            },
        ],
        ..Inventory::default()
    }
}

/// Where [`install_busybox`] puts busybox in the guest.
pub const BUSYBOX: &str = "/usr/local/bin/busybox";

/// Copies the host's static busybox (package busybox-static) to [`BUSYBOX`] in `root`.
pub fn install_busybox(root: &Path) -> anyhow::Result<()> {
    let host = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .context("no busybox on this machine: install busybox-static (scripts/setup-deps.sh)")?;
    let out = std::process::Command::new("ldd").arg(host).output();
    if let Ok(o) = out
        && o.status.success()
        && !String::from_utf8_lossy(&o.stdout).contains("not a dynamic executable")
    {
        bail!("{} is dynamically linked: install busybox-static", host.display());
    }
    let dest = root.join(BUSYBOX.trim_start_matches('/'));
    std::fs::create_dir_all(dest.parent().context("busybox path")?)?;
    std::fs::copy(host, &dest)
        .with_context(|| format!("copying {} to {}", host.display(), dest.display()))?;
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Writes the systemd unit `name` into the guest and enables it for multi-user.target.
pub fn add_unit(root: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let dir = root.join("etc/systemd/system");
    let wants = dir.join("multi-user.target.wants");
    std::fs::create_dir_all(&wants)?;
    std::fs::write(dir.join(name), text).with_context(|| format!("writing unit {name}"))?;
    let link = wants.join(name);
    if !link.exists() {
        std::os::unix::fs::symlink(format!("/etc/systemd/system/{name}"), &link)?;
    }
    Ok(())
}

/// Everything a boot check of `ctid` using `work_dir` could have left on the node: network
/// namespaces, mounts below `work_dir`, entries in it, and processes (a systemd-nspawn of its
/// machine, or anything that sees a mount below `work_dir` in its own mount namespace). Empty when nothing is left.
pub fn leftovers(ctid: u32, work_dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let prefix = format!("p2c-boot-{ctid}-");
    if let Ok(d) = std::fs::read_dir("/run/netns") {
        for e in d.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&prefix) {
                out.push(format!("network namespace {n}"));
            }
        }
    }
    let work = work_dir.canonicalize().unwrap_or_else(|_| work_dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for l in mounts.lines() {
        if let Some(mp) = l.split(' ').nth(4)
            && Path::new(mp).starts_with(&work)
        {
            out.push(format!("mount {mp}"));
        }
    }
    if let Ok(d) = std::fs::read_dir(&work) {
        for e in d.flatten() {
            out.push(format!("work directory entry {}", e.path().display()));
        }
    }
    if let Ok(d) = std::fs::read_dir("/proc") {
        for e in d.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&format!("--machine={prefix}")) {
                out.push(format!("process {pid}: {cmdline}"));
                continue;
            }
            // A guest's processes see the overlay (upperdir below `work_dir`) as their root in
            // their own mount namespace, whatever the node's mount table says.
            let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
            if mountinfo.contains(work.to_string_lossy().as_ref()) {
                out.push(format!("process {pid} sees a mount below {}: {cmdline}", work.display()));
            }
        }
    }
    out
}
