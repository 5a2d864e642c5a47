//! Hardware services off: a container has no devices, clock, interrupts, disks or kernel
//! of its own, and these services would fail at every boot or fight the node.
//!
//! - systemd: each unit the guest has is masked, `/etc/systemd/system/<unit>` →
//!   `/dev/null` (what `systemctl mask` does); units the distribution already masks are
//!   left alone.
//! - sysvinit: start links `S<NN><name>` in `/etc/rc?.d` (Debian) or
//!   `/etc/rc.d/rc?.d` (RHEL) become stop links — `K<100-NN>`, as `update-rc.d disable`
//!   does, or `K<stop>` from the script's `# chkconfig:` header, as `chkconfig off` does.
//! - upstart: an `/etc/init/<job>.override` with `manual`.
//! - OpenRC: the script's links in `/etc/runlevels/*` go (`rc-update del`).

use rustix::fs::FileType;

use super::GuestError;
use super::console::unit_path;
use super::distro::{Distro, InitSystem};
use super::edit::{Action, Editor, join};
use crate::tree::rel;

/// A group of services and why a container does without them.
struct Hardware {
    /// systemd unit names.
    units: &'static [&'static str],
    /// sysvinit/OpenRC script and upstart job names.
    scripts: &'static [&'static str],
    why: &'static str,
}

const HARDWARE: [Hardware; 9] = [
    // udev: no uevents reach a container and there are no devices to name, load firmware or
    // modules for; the trigger/settle jobs would wait for events that never come.
    Hardware {
        units: &[
            "systemd-udevd.service",
            "systemd-udevd-control.socket",
            "systemd-udevd-kernel.socket",
            "systemd-udev-trigger.service",
            "systemd-udev-settle.service",
        ],
        scripts: &["udev", "udev-post", "udevtrigger", "udev-finish", "udevmonitor"],
        why: "udev: a container gets no device events and has no hardware",
    },
    // hwclock: there is no RTC in a container; reading it fails, writing it would set the
    // node's hardware clock if it could.
    Hardware {
        units: &["hwclock.service", "hwclock-save.service"],
        scripts: &["hwclock.sh", "hwclock", "hwclock-save"],
        why: "hwclock: the container has no hardware clock; the node keeps the time",
    },
    // Kernel modules belong to the node's kernel; a container cannot load them, and
    // kmod-static-nodes would mknod devices for modules the node may not have.
    Hardware {
        units: &["systemd-modules-load.service", "kmod.service", "kmod-static-nodes.service"],
        scripts: &["kmod", "module-init-tools", "modules"],
        why: "kernel modules are the node's; a container cannot load them",
    },
    // irqbalance spreads hardware interrupts over CPUs; a container has none.
    Hardware {
        units: &["irqbalance.service"],
        scripts: &["irqbalance"],
        why: "irqbalance: a container has no interrupts to balance",
    },
    // smartd watches disks' SMART data; the container has no disks.
    Hardware {
        units: &["smartd.service", "smartmontools.service"],
        scripts: &["smartd", "smartmontools"],
        why: "SMART monitoring: the container has no disks",
    },
    // mdadm assembles and monitors software RAID; the arrays stayed on the server.
    Hardware {
        units: &["mdmonitor.service", "mdadm.service", "mdadm-raid.service", "mdmonitor-oneshot.service"],
        scripts: &["mdadm", "mdadm-raid", "mdmonitor"],
        why: "software RAID: the server's md arrays are not in the container",
    },
    // LVM monitoring and activation: the volumes were merged into the container's tree.
    Hardware {
        units: &[
            "lvm2-monitor.service",
            "lvm2-lvmpolld.service",
            "lvm2-lvmpolld.socket",
            "lvm2-lvmetad.service",
            "lvm2-lvmetad.socket",
            "dm-event.service",
            "dm-event.socket",
            "blk-availability.service",
        ],
        scripts: &["lvm2", "lvm2-monitor", "lvm2-lvmpolld", "lvm2-lvmetad", "dmeventd", "lvm"],
        why: "LVM: the server's volumes are merged into the container's file system",
    },
    // Microcode updates are loaded into the CPU by the node's kernel.
    Hardware {
        units: &["microcode.service"],
        scripts: &["microcode", "microcode_ctl"],
        why: "CPU microcode is loaded by the node, not by a container",
    },
    // Time sync: a container shares the node's clock and lacks CAP_SYS_TIME. timesyncd,
    // ntpd and chronyd step/slew the system clock (failing here) and ntpd's 11-minute mode
    // and chrony's rtcsync also write the hardware clock; ntpdate only steps the clock.
    // The node keeps time for all containers.
    Hardware {
        units: &[
            "systemd-timesyncd.service",
            "ntp.service",
            "ntpd.service",
            "ntpdate.service",
            "chrony.service",
            "chronyd.service",
            "openntpd.service",
        ],
        scripts: &["ntp", "ntpd", "ntpdate", "chrony", "chronyd", "openntpd"],
        why: "time sync: a container shares the node's clock and cannot set it (nor the hardware clock)",
    },
];

pub(super) fn apply(ed: &mut Editor, distro: &Distro) -> Result<(), GuestError> {
    match distro.init {
        InitSystem::Systemd => systemd(ed),
        InitSystem::Sysvinit => sysv(ed),
        InitSystem::Upstart => {
            upstart(ed)?;
            sysv(ed)
        }
        InitSystem::Openrc => openrc(ed),
        InitSystem::Unknown => Ok(()),
    }
}

fn systemd(ed: &mut Editor) -> Result<(), GuestError> {
    for hw in &HARDWARE {
        for unit in hw.units {
            let local = rel(&format!("etc/systemd/system/{unit}"));
            let vendor = unit_path(ed, unit)?;
            let has = vendor.is_some() || ed.kind(&local)?.is_some();
            if !has || vendor_masked(ed, unit)? {
                continue;
            }
            ed.symlink(&local, "/dev/null", Action::Disabled, format!("masked: {}", hw.why))?;
        }
    }
    Ok(())
}

/// Whether the distribution ships `unit` masked (a link to `/dev/null`, like Debian's
/// `hwclock.service`).
fn vendor_masked(ed: &Editor, unit: &str) -> Result<bool, GuestError> {
    for d in ["usr/lib/systemd/system", "lib/systemd/system"] {
        let Some(dir) = ed.tree().resolve(&rel(d))? else {
            continue;
        };
        let Ok(path) = dir.join(unit.as_bytes()) else {
            continue;
        };
        if ed.kind(&path)? == Some(FileType::Symlink) {
            let t = ed.tree().readlink(&path)?.unwrap_or_default();
            if t == b"/dev/null" {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn script_of(name: &str) -> Option<&'static Hardware> {
    HARDWARE.iter().find(|hw| hw.scripts.contains(&name))
}

fn sysv(ed: &mut Editor) -> Result<(), GuestError> {
    let mut dirs: Vec<String> = Vec::new();
    for level in ["0", "1", "2", "3", "4", "5", "6", "S"] {
        dirs.push(format!("etc/rc{level}.d"));
        dirs.push(format!("etc/rc.d/rc{level}.d"));
    }
    for dir in dirs {
        for e in ed.entries(&dir)? {
            let Some((seq, name)) = start_link(&e.name) else {
                continue;
            };
            let Some(hw) = script_of(name) else {
                continue;
            };
            let stop = chkconfig_stop(ed, name)?.unwrap_or(100 - seq.min(99));
            // Names come from the guest's tree: joined, never parsed as paths.
            let to = join(&rel(&dir), format!("K{stop:02}{name}").as_bytes())?;
            ed.rename(&e.path, &to, format!("start link turned into a stop link: {}", hw.why))?;
        }
    }
    Ok(())
}

/// `S20smartd` → (20, `smartd`).
fn start_link(name: &str) -> Option<(u32, &str)> {
    let rest = name.strip_prefix('S')?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits == rest.len() {
        return None;
    }
    Some((rest[..digits].parse().ok()?, &rest[digits..]))
}

/// The stop priority of a RHEL init script's `# chkconfig: 2345 55 25` header.
fn chkconfig_stop(ed: &Editor, name: &str) -> Result<Option<u32>, GuestError> {
    for d in ["etc/rc.d/init.d", "etc/init.d"] {
        if let Some(text) = ed.read(&join(&rel(d), name.as_bytes())?)? {
            return Ok(text.lines().find_map(|l| {
                let rest = l.trim_start_matches('#').trim().strip_prefix("chkconfig:")?;
                rest.split_whitespace().nth(2)?.parse().ok()
            }));
        }
    }
    Ok(None)
}

fn upstart(ed: &mut Editor) -> Result<(), GuestError> {
    for hw in &HARDWARE {
        for job in hw.scripts {
            if ed.kind(&rel(&format!("etc/init/{job}.conf")))? != Some(FileType::RegularFile) {
                continue;
            }
            ed.write_as(
                &rel(&format!("etc/init/{job}.override")),
                "manual\n",
                0o644,
                Some(Action::Disabled),
                format!("upstart job set to manual: {}", hw.why),
            )?;
        }
    }
    Ok(())
}

fn openrc(ed: &mut Editor) -> Result<(), GuestError> {
    for level in ed.entries("etc/runlevels")? {
        if level.kind != Some(FileType::Directory) {
            continue;
        }
        let dir = format!("etc/runlevels/{}", level.name);
        for e in ed.entries(&dir)? {
            if let Some(hw) = script_of(&e.name) {
                ed.remove_as(
                    &e.path,
                    Action::Disabled,
                    format!("removed from runlevel {}: {}", level.name, hw.why),
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
