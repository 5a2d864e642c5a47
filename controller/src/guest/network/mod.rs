//! venet0: every address of the server moves onto the container's `venet0`, the way
//! OpenVZ's vzctl distribution scripts configure it (`etc/dists/scripts/*-add_ip.sh` and
//! `functions` in vzctl): `venet0` itself carries 127.0.0.1/32 and each IPv4 address is an
//! alias `venet0:N` (/32); IPv6 addresses sit on `venet0` itself (/128); the IPv4 default
//! route goes through the fake gateway [`FAKE_GATEWAY`] on venet0 and the IPv6 one is
//! `default dev venet0`.
//!
//! Each network stack the guest uses gets its venet0 config in its own format (one
//! submodule each), and the configuration of the server's physical NICs is removed (backed
//! up): a container has no NICs, and an interface config naming one would fail or wait at
//! boot. Interfaces that are not tied to hardware (tunnels, WireGuard, dummies) are kept.
//! Hostname, `/etc/hosts` and `/etc/resolv.conf` are the guest's own and stay.

mod ifupdown;
mod netplan;
mod networkd;
mod nm;
mod redhat;
mod resolv;
mod suse;
mod udev;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use p2c_common::inventory::{Inventory, OsFamily};

use super::distro::{Distro, NetStack};
use super::edit::Editor;
use super::{GuestError, GuestOptions};

/// OpenVZ's fake IPv4 gateway on venet0 (`FAKEGATEWAY` in vzctl's scripts/functions):
/// venet routes by destination address, so the next hop only has to exist as a name.
pub const FAKE_GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// The device every address moves to.
pub(crate) const VENET: &str = "venet0";

pub(super) fn apply(
    ed: &mut Editor,
    distro: &Distro,
    inv: &Inventory,
    opts: &GuestOptions,
) -> Result<(), GuestError> {
    let plan = Plan::new(inv, opts);
    let mut stacks = distro.stacks.clone();
    if stacks.iter().all(|s| *s == NetStack::NetworkManager) {
        // Nothing configured yet, or only NetworkManager profiles (which are not written
        // for venet0): the family's classic format.
        stacks.extend(match distro.family {
            OsFamily::Debian => Some(NetStack::Ifupdown),
            OsFamily::Rhel => Some(NetStack::RedhatIfcfg),
            OsFamily::Suse => Some(NetStack::SuseIfcfg),
            _ => None,
        });
    }
    for stack in &stacks {
        match stack {
            NetStack::Ifupdown => ifupdown::apply(ed, &plan)?,
            NetStack::Netplan => netplan::apply(ed, &plan)?,
            // netplan renders to networkd: one venet0 definition, in netplan's format.
            NetStack::Networkd => networkd::apply(ed, &plan, !stacks.contains(&NetStack::Netplan))?,
            NetStack::RedhatIfcfg => redhat::apply(ed, &plan)?,
            NetStack::SuseIfcfg => suse::apply(ed, &plan)?,
            NetStack::NetworkManager => nm::apply(ed, &plan)?,
        }
    }
    udev::apply(ed)?;
    resolv::apply(ed, distro, opts)
}

/// What the venet0 configs say, and which interface names were the server's hardware.
#[derive(Clone, Debug, Default)]
pub(crate) struct Plan {
    pub(crate) v4: Vec<Ipv4Addr>,
    pub(crate) v6: Vec<Ipv6Addr>,
    pub(crate) nameservers: Vec<String>,
    pub(crate) search: Vec<String>,
    pub(crate) nics: Nics,
}

impl Plan {
    pub(crate) fn new(inv: &Inventory, opts: &GuestOptions) -> Self {
        let mut plan = Plan {
            nameservers: opts.nameservers.clone(),
            search: opts.search.clone(),
            nics: Nics::new(inv),
            ..Plan::default()
        };
        for a in &opts.addresses {
            match a {
                IpAddr::V4(a) if !plan.v4.contains(a) => plan.v4.push(*a),
                IpAddr::V6(a) if !plan.v6.contains(a) => plan.v6.push(*a),
                _ => {}
            }
        }
        plan
    }

    pub(crate) fn has_addresses(&self) -> bool {
        !self.v4.is_empty() || !self.v6.is_empty()
    }

    /// `venet0 carries 10.0.0.10, 2001:db8::10` for the records.
    pub(crate) fn summary(&self) -> String {
        let all: Vec<String> =
            self.v4.iter().map(ToString::to_string).chain(self.v6.iter().map(ToString::to_string)).collect();
        format!("{VENET} carries every address of the server: {}", all.join(", "))
    }

    /// The record's reason for a file that now configures venet0 and no longer the NICs
    /// in `removed`.
    pub(crate) fn reason(&self, removed: &[String]) -> String {
        if removed.is_empty() {
            self.summary()
        } else {
            format!("{}; {}", self.summary(), self.nics.reason(removed))
        }
    }

    /// `venet0:N` for each IPv4 address, in order.
    pub(crate) fn aliases(&self) -> impl Iterator<Item = (String, Ipv4Addr)> + '_ {
        self.v4.iter().enumerate().map(|(i, a)| (format!("{VENET}:{i}"), *a))
    }
}

/// One interface the source server had, from the inventory.
#[derive(Clone, Debug, Default)]
pub(crate) struct Nic {
    pub(crate) name: String,
    pub(crate) addresses: Vec<String>,
    pub(crate) dhcp: bool,
}

/// Tells hardware interface names (whose configs go) from virtual ones (whose stay).
#[derive(Clone, Debug, Default)]
pub(crate) struct Nics {
    known: Vec<Nic>,
}

impl Nics {
    pub(crate) fn new(inv: &Inventory) -> Self {
        let known = inv
            .interfaces
            .iter()
            .filter(|i| !i.loopback && !is_venet(&i.name))
            .filter(|i| i.mac.is_some() || !i.addresses.is_empty() || i.dhcp)
            .map(|i| Nic {
                name: i.name.clone(),
                addresses: i.addresses.iter().map(|a| format!("{}/{}", a.address, a.prefix)).collect(),
                dhcp: i.dhcp,
            })
            .collect();
        Nics { known }
    }

    /// Whether `name` (or the device under an alias `eth0:1` / VLAN `eth0.100`) is one
    /// of the server's NICs, or something built on them (bonds, bridges, VLANs), or has a
    /// name only hardware gets.
    pub(crate) fn is_physical(&self, name: &str) -> bool {
        let base = base_name(name);
        if base == "lo" || base.is_empty() || is_venet(base) {
            return false;
        }
        if self.known.iter().any(|n| n.name == base || n.name == name) {
            return true;
        }
        hardware_name(base)
    }

    /// Whether a shell-style glob (`en*`, `eth?`) matches one of the server's NICs or a
    /// typical hardware name; a plain name is checked as [`Nics::is_physical`] does.
    pub(crate) fn glob_is_physical(&self, pattern: &str) -> bool {
        if !pattern.contains(['*', '?', '[']) {
            return self.is_physical(pattern);
        }
        const SAMPLES: [&str; 12] = [
            "eth0",
            "ens3",
            "enp0s3",
            "eno1",
            "enx525400123456",
            "em1",
            "p1p1",
            "wlan0",
            "wlp2s0",
            "ib0",
            "bond0",
            "br0",
        ];
        self.known.iter().any(|n| glob(pattern, &n.name)) || SAMPLES.iter().any(|n| glob(pattern, n))
    }

    /// Why the configs of `names` go (they name the server's NICs; which used DHCP).
    pub(crate) fn reason(&self, names: &[String]) -> String {
        let mut bases: Vec<&str> = Vec::new();
        for n in names {
            let b = base_name(n);
            if !bases.contains(&b) {
                bases.push(b);
            }
        }
        let shown: Vec<String> = bases
            .iter()
            .map(|b| match self.known.iter().find(|n| n.name == *b) {
                Some(n) if !n.addresses.is_empty() => format!("{b} ({})", n.addresses.join(", ")),
                _ => b.to_string(),
            })
            .collect();
        let mut r = format!(
            "configures the server's network hardware {}, which the container does not have; every address is on {VENET} now",
            shown.join(", ")
        );
        let dhcp: Vec<&str> =
            bases.iter().copied().filter(|b| self.known.iter().any(|n| n.name == *b && n.dhcp)).collect();
        if !dhcp.is_empty() {
            r.push_str(&format!(
                "; {} used DHCP: its address is static on {VENET} now (venet has no DHCP)",
                dhcp.join(", ")
            ));
        }
        r
    }
}

/// Shell-style match of `name` against `pattern` (`*`, `?`, `[abc]`, `[a-z]`, `[!x]`).
pub(crate) fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    glob_at(&p, &n)
}

fn glob_at(p: &[char], n: &[char]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some('*') => (0..=n.len()).any(|i| glob_at(&p[1..], &n[i..])),
        Some('?') => !n.is_empty() && glob_at(&p[1..], &n[1..]),
        Some('[') => {
            let Some(close) = p.iter().skip(2).position(|c| *c == ']').map(|i| i + 2) else {
                return n.first() == Some(&'[') && glob_at(&p[1..], &n[1..]);
            };
            let Some(c) = n.first() else {
                return false;
            };
            let mut set = &p[1..close];
            let negate = matches!(set.first(), Some('!' | '^'));
            if negate {
                set = &set[1..];
            }
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == '-' {
                    hit |= (set[i]..=set[i + 2]).contains(c);
                    i += 3;
                } else {
                    hit |= set[i] == *c;
                    i += 1;
                }
            }
            hit != negate && glob_at(&p[close + 1..], &n[1..])
        }
        Some(c) => n.first() == Some(c) && glob_at(&p[1..], &n[1..]),
    }
}

/// `eth0:1` → `eth0`, `eth0.100` → `eth0`, `venet0:2` → `venet0`.
pub(crate) fn base_name(name: &str) -> &str {
    let n = name.split(':').next().unwrap_or(name);
    n.split('.').next().unwrap_or(n)
}

pub(crate) fn is_venet(name: &str) -> bool {
    base_name(name) == VENET
}

/// Kernel and udev names of hardware and of what is built on it.
fn hardware_name(base: &str) -> bool {
    let digits_after = |p: &str| {
        base.strip_prefix(p).is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
    };
    // p1p1, p2p3: biosdevname's PCI slot names.
    let pci_slot = base.strip_prefix('p').is_some_and(|r| {
        let mut parts = r.splitn(2, 'p');
        let a = parts.next().unwrap_or_default();
        let b = parts.next().unwrap_or_default();
        !a.is_empty()
            && !b.is_empty()
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().all(|c| c.is_ascii_alphanumeric())
    });
    base.starts_with("eth")
        || base.starts_with("en")
        || base.starts_with("wl")
        || base.starts_with("ww")
        || base.starts_with("bond")
        || base.starts_with("team")
        || base.starts_with("br")
        || base.starts_with("vmbr")
        || base.starts_with("vlan")
        || digits_after("em")
        || digits_after("ib")
        || digits_after("usb")
        || pci_slot
}

#[cfg(test)]
pub(crate) mod tests;
