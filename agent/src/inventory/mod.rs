//! The inventory of the server the agent runs on (or of a tree standing for one).
//!
//! [`collect`] never fails as a whole: each fact is read by its own module, and a fact
//! that cannot be read is left empty with a line in [`Inventory::gaps`]. File-based facts
//! are always read below `root` (resolving symlinks inside it), never from the host's `/`
//! unless `root` is `/`. Every read is size-capped: the agent runs in a 64 MiB budget.
//!
//! | fact | [`FactsFrom::Live`] | [`FactsFrom::Tree`] |
//! | --- | --- | --- |
//! | hostname, OS, DNS, passwd/group names, raw bindings, runtimes | files below root | files below root |
//! | kernel | uname(2) | newest `/boot/vmlinuz-*` or `/lib/modules/*`, ELF machine of `/bin/sh` |
//! | interfaces, routes | getifaddrs(3), sysinfo (MAC, MTU), /proc/net/{route,ipv6_route}; `dhcp` from the configuration | the network configuration files |
//! | CPUs, memory | sysinfo (/proc) | sysinfo on the host standing in for the server |
//! | mounts | mountinfo at or beneath root | the same |
//! | SELinux mode | selinuxfs, config below root | config below root |
//! | swaps | /proc/swaps + fstab below root | fstab below root |
//! | block devices | /sys/class/block | those backing the mounts beneath root |
//! | kernel modules | /proc/modules | /etc/modules, modules-load.d, sysconfig/modules |
//! | listeners | /proc/net/{tcp,udp}{,6} and /proc/*/fd, through procfs | none |
//! | quotas | quotactl(2) where active, else quota files | quota files |

mod blockdev;
mod fsread;
mod hw;
mod listeners;
mod modules;
pub(crate) mod mounts;
mod names;
mod net;
pub mod netconf;
mod os;
mod quota;
// Audited: quotactl(2) commands nix does not wrap.
#[allow(unsafe_code)]
mod quotactl;
pub mod quotafile;
mod raw;
mod runtimes;
mod selinux;
mod shellvars;
mod swap;
#[cfg(test)]
mod testfs;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use p2c_common::inventory::{INVENTORY_SCHEMA, Inventory};

use self::quotactl::{LinuxQuotactl, QuotaCtl};

/// Where the facts about the running system come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FactsFrom {
    /// The running kernel (the agent runs on the source server, or in a network namespace
    /// that plays one).
    Live,
    /// The configuration files of an offline tree or a plain directory; the live host
    /// stands in for CPUs, memory and mounts.
    Tree,
}

/// What [`collect`] looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectOptions {
    /// The directory the agent treats as the server's root (`/` on a real server).
    pub root: PathBuf,
    pub facts: FactsFrom,
}

/// The kernel interfaces read for live facts; tests point them elsewhere.
struct Host {
    proc: PathBuf,
    sys: PathBuf,
    dev: PathBuf,
}

impl Default for Host {
    fn default() -> Self {
        Host { proc: PathBuf::from("/proc"), sys: PathBuf::from("/sys"), dev: PathBuf::from("/dev") }
    }
}

/// Never fails as a whole: a fact that cannot be read is left empty and a line goes to
/// `inv.gaps`.
pub fn collect(opts: &CollectOptions) -> Inventory {
    collect_with(opts, &Host::default(), &LinuxQuotactl)
}

fn collect_with(opts: &CollectOptions, host: &Host, ctl: &dyn QuotaCtl) -> Inventory {
    let live = opts.facts == FactsFrom::Live;
    let mut inv = Inventory {
        schema: INVENTORY_SCHEMA,
        facts_from: if live { "live" } else { "tree" }.to_string(),
        collected_unix: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        ..Default::default()
    };
    let mut gaps = Vec::new();
    let root = match std::fs::canonicalize(&opts.root) {
        Ok(r) => r,
        Err(e) => {
            gaps.push(format!("root {}: {e}", opts.root.display()));
            opts.root.clone()
        }
    };
    inv.root = root.display().to_string();
    let root = root.as_path();

    system(&mut inv, &mut gaps, root, live, host);
    network(&mut inv, &mut gaps, root, live, host);
    storage(&mut inv, &mut gaps, root, live, host, ctl);

    let (modules, g) = if live {
        match modules::live_modules(&host.proc) {
            Ok(m) => (m, Vec::new()),
            // A kernel built without module support has no /proc/modules.
            Err(e) if e.is_not_found() => (Vec::new(), Vec::new()),
            Err(e) => (Vec::new(), vec![format!("kernel modules: {e}")]),
        }
    } else {
        modules::tree_modules(root)
    };
    inv.kernel_modules = modules;
    gaps.extend(g);
    if live {
        let (l, g) = listeners::live_listeners(&host.proc);
        inv.listeners = l;
        gaps.extend(g);
    }
    inv.container_runtimes = runtimes::runtimes(root);
    for g in &gaps {
        tracing::debug!(gap = %g, "inventory fact not collected");
    }
    inv.gaps = gaps;
    inv
}

/// Host name, OS, kernel, CPUs, memory, SELinux.
fn system(inv: &mut Inventory, gaps: &mut Vec<String>, root: &Path, live: bool, host: &Host) {
    match os::read_os(root) {
        Ok(Some(o)) => inv.os = o,
        Ok(None) => {
            gaps.push(format!("os: no os-release or distribution release file below {}", root.display()))
        }
        Err(e) => gaps.push(format!("os: {e}")),
    }
    match os::read_hostname(root) {
        Ok(Some(h)) => inv.hostname = h,
        Ok(None) if live => {
            inv.hostname =
                nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
        }
        Ok(None) => gaps.push(format!("hostname: no /etc/hostname below {}", root.display())),
        Err(e) => gaps.push(format!("hostname: {e}")),
    }
    if live {
        inv.kernel = os::live_kernel();
    } else {
        match os::tree_kernel(root) {
            Ok(k) => {
                if k.release.is_empty() {
                    gaps.push(format!(
                        "kernel: no /boot/vmlinuz-* or /lib/modules/* below {}",
                        root.display()
                    ));
                }
                inv.kernel = k;
            }
            Err(e) => gaps.push(format!("kernel: {e}")),
        }
    }
    inv.cpus = hw::cpus();
    match hw::memory() {
        Ok(m) => {
            inv.memory_bytes = m.memory_bytes;
            inv.swap_bytes = m.swap_bytes;
        }
        Err(e) => gaps.push(format!("memory: {e}")),
    }
    let enforce = if live { selinux::live_enforce(&host.sys) } else { None };
    match selinux::selinux(root, live, enforce.as_deref()) {
        Ok(s) => inv.selinux = s,
        Err(e) => gaps.push(format!("selinux: {e}")),
    }
}

/// Interfaces, routes, DNS.
fn network(inv: &mut Inventory, gaps: &mut Vec<String>, root: &Path, live: bool, host: &Host) {
    let (conf, g) = netconf::read_tree(root);
    gaps.extend(g);
    if live {
        match net::live_interfaces(&conf) {
            Ok(i) => inv.interfaces = i,
            Err(e) => gaps.push(format!("interfaces: {e}")),
        }
        let (routes, g) = net::live_routes(&host.proc);
        inv.routes = routes;
        gaps.extend(g);
    } else {
        let (ifs, routes) = net::tree_interfaces(&conf);
        if ifs.is_empty() {
            gaps.push(format!("interfaces: no network configuration found below {}", root.display()));
        }
        inv.interfaces = ifs;
        inv.routes = routes;
    }
    let (dns, g) = net::read_dns(root, &conf);
    inv.dns = dns;
    gaps.extend(g);
}

/// Mounts, swaps, block devices, raw bindings, quotas.
fn storage(
    inv: &mut Inventory,
    gaps: &mut Vec<String>,
    root: &Path,
    live: bool,
    host: &Host,
    ctl: &dyn QuotaCtl,
) {
    let mountinfo = match fsread::read_capped(&host.proc.join("self/mountinfo"), fsread::TABLE_CAP) {
        Ok(b) => mounts::parse_mountinfo(&b),
        Err(e) => {
            gaps.push(format!("mounts: {e}"));
            Vec::new()
        }
    };
    let located = mounts::mounts_below(&mountinfo, root);
    inv.mounts = located.iter().map(|m| m.mount.clone()).collect();

    let active = if live {
        match fsread::read_text(&host.proc.join("swaps"), fsread::TABLE_CAP) {
            Ok(t) => swap::parse_proc_swaps(&t),
            Err(e) => {
                gaps.push(format!("swaps: {e}"));
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    match swap::swaps(root, active) {
        Ok(s) => inv.swaps = s,
        Err(e) => gaps.push(format!("swaps: {e}")),
    }

    // For a tree, the host's other disks are not the tree's: only those behind its mounts.
    let numbers: Vec<(u32, u32)> = located.iter().map(|m| (m.major, m.minor)).collect();
    let only = (!live).then_some(numbers.as_slice());
    match blockdev::block_devices(&host.sys, &host.dev, &mountinfo, only) {
        Ok(mut d) => {
            // Mount points as the source sees them (relative to root).
            for b in &mut d {
                if let Some(m) =
                    located.iter().find(|m| m.is_mount_point && (m.major, m.minor) == (b.major, b.minor))
                {
                    b.mountpoint = Some(m.mount.mountpoint.clone());
                }
            }
            inv.block_devices = d;
        }
        Err(e) => gaps.push(format!("block devices: {e}")),
    }
    if live {
        swap::fill_partition_sizes(&mut inv.swaps, &host.dev, &inv.block_devices);
    }

    let (raw, g) = raw::raw_bindings(root);
    inv.raw_bindings = raw;
    gaps.extend(g);

    let (names, g) = names::read_names(root);
    gaps.extend(g);
    let (quotas, g) = quota::collect_quotas(&located, live, ctl, &names);
    inv.quotas = quotas;
    gaps.extend(g);
}

#[cfg(test)]
mod tests;
