//! venet0: every address of the server moves onto the container's `venet0`, configured the
//! way the target platform's own distribution scripts configure it (each submodule quotes
//! the script it follows):
//!
//! * legacy OpenVZ (vzctl 4.11, `etc/dists/scripts/*-add_ip.sh`) and OpenVZ 7 / Virtuozzo 7
//!   (libvzctl 7, `dists/scripts/*-add_ip.sh`): venet0 is a venet device (layer 3, no ARP):
//!   each IPv4 address /32 (an alias `venet0:N` where the format has aliases), each IPv6
//!   address /128, and the default routes are device routes, `default dev venet0` — no
//!   gateway and no route to one (vzctl 4.11's `functions` still define a `FAKEGATEWAY`, but
//!   its debian, redhat and suse scripts no longer use it);
//! * Virtuozzo 9 (libvzctl 8, `dists/scripts/*-add_netif.sh` with `NETWORK_TYPE=routed`):
//!   venet0 is a veth whose host end routes each address to it, answers ARP by proxy and
//!   holds `fe80::ffff:1:1`: the addresses keep their mask (an IPv4 address without one
//!   becomes a /24, IPv6 addresses are /128), `default dev venet0` for IPv4 (SUSE and
//!   NetworkManager: via 169.254.0.1, which the host end answers by proxy ARP) and
//!   `default via fe80::ffff:1:1` for IPv6.
//!
//! **Only the stack that configured the server's NICs gets venet0** ([`owner`]); every other
//! stack the guest has keeps its files minus the NICs' configs and minus venet0, so no two
//! stacks bring venet0 up. The configuration of the server's physical NICs is removed
//! (backed up) from every stack: a container has no NICs, and an interface config naming
//! one would fail or wait at boot. Interfaces that are not tied to hardware (tunnels,
//! WireGuard, dummies) are kept. Hostname, `/etc/hosts` and `/etc/resolv.conf` are the
//! guest's own and stay.

mod ifupdown;
mod netplan;
mod networkd;
mod nm;
mod owner;
mod redhat;
mod resolv;
mod suse;
mod udev;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use p2c_common::inventory::Inventory;
use p2c_common::migration::Target;

use super::distro::{Distro, NetStack};
use super::edit::Editor;
use super::{GuestError, GuestOptions};

/// The device every address moves to.
pub(crate) const VENET: &str = "venet0";

/// libvzctl 8 (`dists/scripts/functions`, `ROUTED_UUID`): the mark its scripts put on the
/// configs of the routed venet0 (`# <uuid> venet0` lines, the NetworkManager profile's UUID)
/// and look for when they change its routes later.
pub(crate) const ROUTED_UUID: &str = "4896d4dc-7035-45f9-ac14-2bd1d1809c26";
/// The link-local address the host end of Virtuozzo 9's routed veth holds
/// (`vz-functions`: `ip a a fe80::ffff:1:1/128 dev ${HNAME}`): the guest's IPv6 gateway.
pub(crate) const ROUTED_GW6: &str = "fe80::ffff:1:1";
/// libvzctl 8's `IP4_ROUTED_GW` (`functions`), the IPv4 gateway its SUSE and
/// NetworkManager configs use; the host end answers for it by proxy ARP.
pub(crate) const ROUTED_GW4: &str = "169.254.0.1";

pub(super) fn apply(
    ed: &mut Editor,
    distro: &Distro,
    inv: &Inventory,
    opts: &GuestOptions,
) -> Result<(), GuestError> {
    let plan = Plan::new(inv, opts);
    let facts = owner::Facts::gather(ed, distro, &plan)?;
    let owner = owner::choose(distro.family, &facts);
    tracing::info!(
        target_platform = %plan.target,
        owner = ?owner,
        configured = ?facts.configured,
        "venet0 goes to the network stack that configured the server's NICs"
    );
    let mut stacks = distro.stacks.clone();
    stacks.extend(owner);
    // A stack whose files an earlier run removed (all of them, so it is not detected any
    // more) runs again: its records repeat.
    stacks.extend(ALL_STACKS.into_iter().filter(|s| stack_dirs(*s).iter().any(|d| ed.touched_before(d))));
    stacks.sort();
    stacks.dedup();
    for stack in &stacks {
        let own = owner == Some(*stack);
        match stack {
            NetStack::Ifupdown => ifupdown::apply(ed, &plan, own)?,
            NetStack::Netplan => netplan::apply(ed, &plan, own)?,
            NetStack::Networkd => networkd::apply(ed, &plan, own)?,
            NetStack::RedhatIfcfg => redhat::apply(ed, &plan, own)?,
            NetStack::SuseIfcfg => suse::apply(ed, &plan, own)?,
            NetStack::NetworkManager => nm::apply(ed, &plan, own)?,
        }
    }
    udev::apply(ed)?;
    resolv::apply(ed, distro, opts)
}

const ALL_STACKS: [NetStack; 6] = [
    NetStack::Ifupdown,
    NetStack::Netplan,
    NetStack::Networkd,
    NetStack::RedhatIfcfg,
    NetStack::SuseIfcfg,
    NetStack::NetworkManager,
];

/// Where a stack's files are, as the records name them.
fn stack_dirs(stack: NetStack) -> &'static [&'static str] {
    match stack {
        NetStack::Ifupdown => &["/etc/network/"],
        NetStack::Netplan => &["/etc/netplan/"],
        NetStack::Networkd => &["/etc/systemd/network/"],
        NetStack::RedhatIfcfg => &["/etc/sysconfig/network-scripts/"],
        NetStack::SuseIfcfg => &["/etc/sysconfig/network/"],
        NetStack::NetworkManager => &["/etc/NetworkManager/"],
    }
}

/// What the venet0 configs say, and which interface names were the server's hardware.
#[derive(Clone, Debug, Default)]
pub(crate) struct Plan {
    pub(crate) target: Target,
    /// Each IPv4 address with the prefix length it has in the guest, in order.
    pub(crate) v4: Vec<(Ipv4Addr, u8)>,
    /// Each IPv6 address with the prefix length it has in the guest, in order.
    pub(crate) v6: Vec<(Ipv6Addr, u8)>,
    pub(crate) nameservers: Vec<String>,
    pub(crate) search: Vec<String>,
    pub(crate) nics: Nics,
}

impl Plan {
    pub(crate) fn new(inv: &Inventory, opts: &GuestOptions) -> Self {
        let mut plan = Plan {
            target: opts.target,
            nameservers: opts.nameservers.clone(),
            search: opts.search.clone(),
            nics: Nics::new(inv),
            ..Plan::default()
        };
        for a in &opts.addresses {
            let prefix = guest_prefix(opts.target, *a, inventory_prefix(inv, *a));
            match a {
                IpAddr::V4(a) if !plan.v4.iter().any(|(x, _)| x == a) => plan.v4.push((*a, prefix)),
                IpAddr::V6(a) if !plan.v6.iter().any(|(x, _)| x == a) => plan.v6.push((*a, prefix)),
                _ => {}
            }
        }
        plan
    }

    pub(crate) fn has_addresses(&self) -> bool {
        !self.v4.is_empty() || !self.v6.is_empty()
    }

    /// Whether venet0 is Virtuozzo 9's routed veth rather than a venet device.
    pub(crate) fn routed(&self) -> bool {
        !self.target.has_venet()
    }

    /// `venet0 carries 10.0.0.10, 2001:db8::10` for the records.
    pub(crate) fn summary(&self) -> String {
        let all: Vec<String> = self
            .v4
            .iter()
            .map(|(a, _)| a.to_string())
            .chain(self.v6.iter().map(|(a, _)| a.to_string()))
            .collect();
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

    /// The record's reason for a venet0 config taken from a stack that does not bring
    /// venet0 up.
    pub(crate) fn not_here(&self) -> String {
        format!(
            "{VENET} is configured by the network stack that configured the server's NICs; \
             a second config for it here would bring it up twice"
        )
    }

    /// `venet0:N` for each IPv4 address, in order, counting from `first`.
    pub(crate) fn aliases_from(&self, first: usize) -> impl Iterator<Item = (String, Ipv4Addr, u8)> + '_ {
        self.v4.iter().enumerate().map(move |(i, (a, p))| (format!("{VENET}:{}", i + first), *a, *p))
    }

    /// `venet0:N` for each IPv4 address, in order, from `venet0:0`.
    pub(crate) fn aliases(&self) -> impl Iterator<Item = (String, Ipv4Addr, u8)> + '_ {
        self.aliases_from(0)
    }
}

/// The prefix length the server gave `addr`, from the inventory.
fn inventory_prefix(inv: &Inventory, addr: IpAddr) -> Option<u8> {
    inv.interfaces.iter().flat_map(|i| &i.addresses).find(|a| a.address == addr).map(|a| a.prefix)
}

/// The prefix length `addr` has inside the guest on `target`.
///
/// venet (openvz, vz7): /32 and /128, what the scripts give an address without a mask
/// (vzctl 4.11 `functions` `ip_conv`: `_MASK=32` / `128`; libvzctl 7 `debian-add_ip.sh`:
/// `mask=255.255.255.255`, `functions` `add_debian_ip6` callers: `mask=128`). A venet device
/// has no neighbours, so a wider mask would not reach more hosts.
///
/// Routed veth (vz9): the source's mask for IPv4, which the container config carries in
/// `IP_ADDRESS` (libvzctl 8 `debian-add_netif.sh` `add_ip`: `[ -z "${mask}" ] &&
/// mask=255.255.255.0` for one without); IPv6 is always /128 (`[ "$NETWORK_TYPE" = "routed" ]
/// && mask=128`): the host end does not answer neighbour solicitations by proxy, so an
/// on-link /64 would make the rest of it unreachable.
pub(crate) fn guest_prefix(target: Target, addr: IpAddr, source: Option<u8>) -> u8 {
    match (target.has_venet(), addr) {
        (true, IpAddr::V4(_)) => 32,
        (_, IpAddr::V6(_)) => 128,
        (false, IpAddr::V4(_)) => source.filter(|p| *p <= 32).unwrap_or(24),
    }
}

/// `255.255.255.0` for 24.
pub(crate) fn netmask(prefix: u8) -> Ipv4Addr {
    let bits = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
    Ipv4Addr::from(bits)
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
