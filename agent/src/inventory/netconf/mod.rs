//! Parsers of a guest's network configuration, one module per family, all producing a
//! [`NetConfig`]. The agent uses them for tree facts and for the `dhcp` flag of live
//! interfaces; the controller's guest rewrite may reuse them.
//!
//! They are tolerant: a line they do not understand is skipped, never an error, since a
//! configuration file may hold anything its tools accept.

mod ifcfg;
mod ifupdown;
mod netplan;
mod networkd;
mod nmkeyfile;
mod tree;

use std::net::{IpAddr, Ipv4Addr};

use p2c_common::inventory::IfAddr;

pub use ifcfg::{SuseRoute, parse_ifcfg_rhel, parse_ifcfg_suse, parse_rhel_network, parse_suse_routes};
pub use ifupdown::{ifupdown_includes, parse_ifupdown};
pub use netplan::parse_netplan;
pub use networkd::parse_networkd;
pub use nmkeyfile::parse_nm_keyfile;
pub use tree::read_tree;

/// What a set of configuration files says about the network.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetConfig {
    pub interfaces: Vec<IfaceConfig>,
    /// Default gateways not tied to one interface (`GATEWAY=` of RHEL's
    /// `/etc/sysconfig/network`, SUSE's `routes`).
    pub gateways: Vec<IpAddr>,
    pub nameservers: Vec<String>,
    pub search: Vec<String>,
}

/// One interface (or alias such as `eth0:1`) as configured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IfaceConfig {
    /// Interface name; may be a glob (`en*`) for systemd-networkd and netplan matches.
    pub name: String,
    /// The file it was read from.
    pub source: String,
    pub dhcp4: bool,
    pub dhcp6: bool,
    pub loopback: bool,
    pub addresses: Vec<IfAddr>,
    /// Default gateways through this interface.
    pub gateways: Vec<IpAddr>,
    /// Lower-case `aa:bb:cc:dd:ee:ff`.
    pub mac: Option<String>,
    pub mtu: Option<u32>,
}

impl IfaceConfig {
    /// True when any address family is configured with DHCP.
    pub fn dhcp(&self) -> bool {
        self.dhcp4 || self.dhcp6
    }

    /// The interface an alias belongs to (`eth0:1` → `eth0`).
    pub fn base_name(&self) -> &str {
        base_name(&self.name)
    }

    fn add_address(&mut self, a: IfAddr) {
        if !self.addresses.contains(&a) {
            self.addresses.push(a);
        }
    }

    fn add_gateway(&mut self, g: IpAddr) {
        if !self.gateways.contains(&g) {
            self.gateways.push(g);
        }
    }
}

/// The interface an alias label belongs to (`eth0:1` → `eth0`).
pub fn base_name(name: &str) -> &str {
    name.split(':').next().unwrap_or(name)
}

impl NetConfig {
    /// The entry for `name`, created (from `source`) if missing.
    fn iface_mut(&mut self, name: &str, source: &str) -> &mut IfaceConfig {
        let i = match self.interfaces.iter().position(|i| i.name == name) {
            Some(i) => i,
            None => {
                self.interfaces.push(IfaceConfig {
                    name: name.to_string(),
                    source: source.to_string(),
                    ..Default::default()
                });
                self.interfaces.len() - 1
            }
        };
        &mut self.interfaces[i]
    }

    /// Adds what `other` says; settings of the same interface are combined.
    pub fn merge(&mut self, other: NetConfig) {
        for i in other.interfaces {
            let mine = self.iface_mut(&i.name, &i.source);
            mine.dhcp4 |= i.dhcp4;
            mine.dhcp6 |= i.dhcp6;
            mine.loopback |= i.loopback;
            for a in i.addresses {
                mine.add_address(a);
            }
            for g in i.gateways {
                mine.add_gateway(g);
            }
            if i.mac.is_some() {
                mine.mac = i.mac;
            }
            if i.mtu.is_some() {
                mine.mtu = i.mtu;
            }
        }
        for g in other.gateways {
            if !self.gateways.contains(&g) {
                self.gateways.push(g);
            }
        }
        push_unique(&mut self.nameservers, other.nameservers);
        push_unique(&mut self.search, other.search);
    }

    /// Whether the configuration brings the live interface `name` up with DHCP (names in
    /// the configuration may be globs, aliases count for their interface).
    pub fn dhcp_for(&self, name: &str) -> bool {
        self.interfaces.iter().any(|i| i.dhcp() && glob_match(i.base_name(), base_name(name)))
    }
}

fn push_unique(into: &mut Vec<String>, from: Vec<String>) {
    for s in from {
        if !into.contains(&s) {
            into.push(s);
        }
    }
}

/// Shell-style `*` and `?` matching (systemd-networkd `Name=`, netplan `match: name:`).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matcher with single-star backtracking: linear in practice, no recursion.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Parses `a.b.c.d/nn`, `x::y/nn`, or a bare address (prefix from [`default_prefix`]).
pub fn parse_cidr(s: &str) -> Option<IfAddr> {
    let s = s.trim().trim_matches(|c| c == '"' || c == '\'');
    let (a, p) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let address: IpAddr = strip_zone(a).parse().ok()?;
    let prefix = match p {
        Some(p) => {
            let n: u8 = p.trim().parse().ok()?;
            if n > max_prefix(&address) {
                return None;
            }
            n
        }
        None => default_prefix(&address),
    };
    Some(IfAddr { address, prefix })
}

/// Parses an address alone (`fe80::1%eth0` loses its zone).
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    strip_zone(s.trim().trim_matches(|c| c == '"' || c == '\'')).parse().ok()
}

fn strip_zone(s: &str) -> &str {
    s.split('%').next().unwrap_or(s)
}

fn max_prefix(a: &IpAddr) -> u8 {
    if a.is_ipv4() { 32 } else { 128 }
}

/// The prefix a bare address gets: the classful one for IPv4 (as ipcalc and ifup do), /64
/// for IPv6.
pub fn default_prefix(a: &IpAddr) -> u8 {
    match a {
        IpAddr::V4(v4) => match v4.octets()[0] {
            0..=127 => 8,
            128..=191 => 16,
            _ => 24,
        },
        IpAddr::V6(_) => 64,
    }
}

/// `255.255.255.0` → 24, or a plain number `24` → 24; non-contiguous masks are refused.
pub fn netmask_to_prefix(s: &str) -> Option<u8> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u8>() {
        return (n <= 128).then_some(n);
    }
    let m: Ipv4Addr = s.parse().ok()?;
    let bits = u32::from(m);
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0).then(|| u8::try_from(ones).unwrap_or(32))
}

/// Normalises a MAC address to lower-case colon form; `None` if it is not one.
pub fn normalize_mac(s: &str) -> Option<String> {
    let hex: String = s
        .trim()
        .trim_matches(|c| c == '"' || c == '\'')
        .chars()
        .filter(|c| !matches!(c, ':' | '-' | '.'))
        .collect();
    if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let lower = hex.to_ascii_lowercase();
    let parts: Vec<&str> = (0..6).map(|i| &lower[i * 2..i * 2 + 2]).collect();
    Some(parts.join(":"))
}

/// Reads yes/no style booleans (`yes`, `true`, `on`, `1`).
pub fn truthy(s: &str) -> bool {
    matches!(
        s.trim().trim_matches(|c| c == '"' || c == '\'').to_ascii_lowercase().as_str(),
        "yes" | "true" | "on" | "1" | "y"
    )
}

#[cfg(test)]
mod tests;
