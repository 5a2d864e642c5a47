//! Interfaces, routes and DNS: from the running kernel (live) or from the tree's network
//! configuration (see [`super::netconf`]).

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;

use p2c_common::inventory::{Dns, IfAddr, Interface, Route};
use procfs::FromRead;
use procfs::net::{RouteEntries, RouteEntry};

use super::fsread::{self, CONFIG_CAP};
use super::netconf::{NetConfig, base_name};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot list network interfaces: {0}")]
    IfAddrs(#[source] nix::Error),
    #[error("cannot list network links: {0}")]
    Links(#[source] sysinfo::Error),
}

/// The interfaces of the running kernel (of the agent's network namespace), with aliases
/// (`eth0:1`) folded into their interface; `dhcp` is set from `conf`.
///
/// sysinfo gives each link's MAC and MTU. Names, the up and loopback flags and the addresses
/// come from getifaddrs(3) (netlink, the caller's namespace): sysinfo has no interface flags
/// and keeps an interface's addresses in a hash set, while the kernel's order (the primary
/// address first) is the order of `IP_ADDRESS` and of the container's venet0 aliases.
pub fn live_interfaces(conf: &NetConfig) -> Result<Vec<Interface>, NetError> {
    use nix::net::if_::InterfaceFlags;
    let links = sysinfo::Networks::new_with_refreshed_list().map_err(NetError::Links)?;
    let mut out: Vec<Interface> = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(NetError::IfAddrs)? {
        let name = base_name(&ifa.interface_name).to_string();
        let i = match out.iter().position(|i| i.name == name) {
            Some(i) => i,
            None => {
                out.push(Interface { name: name.clone(), ..Default::default() });
                out.len() - 1
            }
        };
        let iface = &mut out[i];
        iface.up |= ifa.flags.contains(InterfaceFlags::IFF_UP);
        iface.loopback |= ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK);
        let Some(addr) = ifa.address else {
            continue;
        };
        if let Some(sin) = addr.as_sockaddr_in() {
            let prefix = ifa
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in())
                .map(|m| prefix_of(u128::from(u32::from(m.ip())) << 96))
                .unwrap_or(32);
            push_addr(iface, IpAddr::V4(sin.ip()), prefix);
        } else if let Some(sin6) = addr.as_sockaddr_in6() {
            let prefix = ifa
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in6())
                .map(|m| prefix_of(u128::from(m.ip())))
                .unwrap_or(128);
            push_addr(iface, IpAddr::V6(sin6.ip()), prefix);
        }
    }
    for iface in &mut out {
        if let Some(link) = links.get(OsStr::new(&iface.name)) {
            let mac = link.mac_address();
            iface.mac = (!mac.is_unspecified()).then(|| mac.to_string());
            iface.mtu = u32::try_from(link.mtu()).unwrap_or(0);
        }
        iface.dhcp = conf.dhcp_for(&iface.name);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn push_addr(iface: &mut Interface, address: IpAddr, prefix: u8) {
    let a = IfAddr { address, prefix };
    if !iface.addresses.contains(&a) {
        iface.addresses.push(a);
    }
}

/// Leading one bits of a mask aligned to the top of a u128.
fn prefix_of(mask: u128) -> u8 {
    u8::try_from(mask.leading_ones()).unwrap_or(128)
}

const RTF_UP: u32 = 0x1;
const RTF_GATEWAY: u32 = 0x2;
const RTF_REJECT: u32 = 0x200;

/// The default routes and routes through a gateway of /proc/net/route, as procfs reads it.
pub fn ipv4_routes(table: &[RouteEntry]) -> Vec<Route> {
    let mut out = Vec::new();
    for r in table {
        let flags = u32::from(r.flags);
        if flags & RTF_UP == 0 || flags & RTF_REJECT != 0 {
            continue;
        }
        let default = r.destination.is_unspecified() && r.mask.is_unspecified();
        if !default && flags & RTF_GATEWAY == 0 {
            continue;
        }
        let prefix = u32::from(r.mask).leading_ones();
        out.push(Route {
            destination: if default { "default".into() } else { format!("{}/{prefix}", r.destination) },
            gateway: (!r.gateway.is_unspecified()).then_some(IpAddr::V4(r.gateway)),
            interface: r.iface.clone(),
        });
    }
    out
}

/// Parses /proc/net/ipv6_route: default routes and routes through a gateway.
pub fn parse_ipv6_route(text: &str) -> Vec<Route> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let (Some(dest), Some(plen), Some(gw), Some(flags)) = (
            hex128(f[0]),
            u8::from_str_radix(f[1], 16).ok(),
            hex128(f[4]),
            u32::from_str_radix(f[8], 16).ok(),
        ) else {
            continue;
        };
        if flags & RTF_UP == 0 || flags & RTF_REJECT != 0 || f[9] == "lo" {
            continue;
        }
        let default = plen == 0;
        if !default && gw == 0 {
            continue;
        }
        out.push(Route {
            destination: if default { "default".into() } else { format!("{}/{plen}", Ipv6Addr::from(dest)) },
            gateway: (gw != 0).then(|| IpAddr::V6(Ipv6Addr::from(gw))),
            interface: f[9].to_string(),
        });
    }
    out
}

fn hex128(s: &str) -> Option<u128> {
    (s.len() == 32).then(|| u128::from_str_radix(s, 16).ok())?
}

/// Why the routes of one table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    Read(#[from] fsread::ReadError),
    #[error("cannot parse {path}: {source}")]
    Parse { path: String, source: procfs::ProcError },
}

/// /proc/net/route, through procfs.
fn read_ipv4_routes(path: &Path) -> Result<Vec<Route>, RouteError> {
    let text = fsread::read_capped(path, fsread::TABLE_CAP)?;
    let table = RouteEntries::from_read(text.as_slice())
        .map_err(|source| RouteError::Parse { path: path.display().to_string(), source })?;
    Ok(ipv4_routes(&table.0))
}

/// /proc/net/ipv6_route, which procfs does not read.
fn read_ipv6_routes(path: &Path) -> Result<Vec<Route>, RouteError> {
    Ok(parse_ipv6_route(&fsread::read_text(path, fsread::TABLE_CAP)?))
}

/// The routes of the running kernel (the agent's network namespace), read from `proc`
/// (normally `/proc`).
pub fn live_routes(proc: &Path) -> (Vec<Route>, Vec<String>) {
    let mut routes = Vec::new();
    let mut gaps = Vec::new();
    for (file, read) in [
        ("net/route", read_ipv4_routes as fn(&Path) -> Result<Vec<Route>, RouteError>),
        ("net/ipv6_route", read_ipv6_routes),
    ] {
        match read(&proc.join(file)) {
            Ok(r) => routes.extend(r),
            // No IPv6 in this kernel: no IPv6 routes, not a gap.
            Err(RouteError::Read(e)) if e.is_not_found() => {}
            Err(e) => gaps.push(format!("routes: {e}")),
        }
    }
    (routes, gaps)
}

/// Parses resolv.conf(5): `nameserver`, `search` and `domain`.
pub fn parse_resolv_conf(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut w = line.split_whitespace();
        match w.next() {
            Some("nameserver") => {
                if let Some(n) = w.next().filter(|n| super::netconf::parse_ip(n).is_some())
                    && !dns.nameservers.iter().any(|x| x == n)
                {
                    dns.nameservers.push(n.to_string());
                }
            }
            // The last of `search`/`domain` wins, as in the resolver.
            Some("search") | Some("domain") => dns.search = w.map(str::to_string).collect(),
            _ => {}
        }
    }
    dns
}

/// DNS of the tree at `root`: its resolv.conf; when that only names a local stub resolver
/// (systemd-resolved's 127.0.0.53) or is missing, the servers of the network configuration.
pub fn read_dns(root: &Path, conf: &NetConfig) -> (Dns, Vec<String>) {
    let mut gaps = Vec::new();
    let mut dns = match fsread::read_text_opt(&fsread::below(root, "/etc/resolv.conf"), CONFIG_CAP) {
        Ok(t) => t.map(|t| parse_resolv_conf(&t)).unwrap_or_default(),
        Err(e) => {
            gaps.push(format!("dns: {e}"));
            Dns::default()
        }
    };
    let stub_only = dns.nameservers.iter().all(|n| n.starts_with("127.0.0.5") || n == "::1");
    if stub_only && !conf.nameservers.is_empty() {
        dns.nameservers = conf.nameservers.clone();
        if dns.search.is_empty() {
            dns.search = conf.search.clone();
        }
    }
    (dns, gaps)
}

/// Interfaces and default routes as the tree's configuration sets them up. Aliases are
/// folded into their interface; a global gateway is given the interface whose subnet holds
/// it.
pub fn tree_interfaces(conf: &NetConfig) -> (Vec<Interface>, Vec<Route>) {
    let mut out: Vec<Interface> = Vec::new();
    let mut routes = Vec::new();
    for c in &conf.interfaces {
        let name = c.base_name().to_string();
        let i = match out.iter().position(|i| i.name == name) {
            Some(i) => i,
            None => {
                out.push(Interface { name: name.clone(), up: true, ..Default::default() });
                out.len() - 1
            }
        };
        let iface = &mut out[i];
        iface.loopback |= c.loopback;
        iface.dhcp |= c.dhcp();
        if c.mac.is_some() {
            iface.mac.clone_from(&c.mac);
        }
        if let Some(m) = c.mtu {
            iface.mtu = m;
        }
        for a in &c.addresses {
            push_addr(iface, a.address, a.prefix);
        }
        for g in &c.gateways {
            push_route(&mut routes, *g, &name);
        }
    }
    for g in &conf.gateways {
        let dev = out
            .iter()
            .find(|i| i.addresses.iter().any(|a| in_subnet(a, g)))
            .map(|i| i.name.clone())
            .unwrap_or_default();
        push_route(&mut routes, *g, &dev);
    }
    (out, routes)
}

fn push_route(routes: &mut Vec<Route>, g: IpAddr, dev: &str) {
    let r = Route { destination: "default".into(), gateway: Some(g), interface: dev.to_string() };
    if !routes.contains(&r) {
        routes.push(r);
    }
}

/// Whether `ip` lies in the subnet of `a`.
pub fn in_subnet(a: &IfAddr, ip: &IpAddr) -> bool {
    let (net, host, bits) = match (a.address, ip) {
        (IpAddr::V4(n), IpAddr::V4(h)) => {
            (u128::from(u32::from(n)) << 96, u128::from(u32::from(*h)) << 96, 32u32)
        }
        (IpAddr::V6(n), IpAddr::V6(h)) => (u128::from(n), u128::from(*h), 128u32),
        _ => return false,
    };
    let p = u32::from(a.prefix).min(bits);
    let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
    net & mask == host & mask
}

#[cfg(test)]
mod tests;
