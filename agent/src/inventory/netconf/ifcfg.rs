//! `ifcfg-*` files: RHEL/CentOS/Fedora (`/etc/sysconfig/network-scripts/`) and SUSE
//! (`/etc/sysconfig/network/`), which share the shell syntax but not the keys.

use std::net::IpAddr;

use p2c_common::inventory::IfAddr;

use super::super::shellvars;
use super::{
    IfaceConfig, NetConfig, default_prefix, netmask_to_prefix, normalize_mac, parse_cidr, parse_ip, truthy,
};

/// An address with an optional `PREFIX`/`NETMASK` next to it.
fn address(addr: &str, prefix: Option<&str>, netmask: Option<&str>) -> Option<IfAddr> {
    let mut a = parse_cidr(addr)?;
    if !addr.contains('/') {
        let p = prefix
            .and_then(|p| p.trim().parse::<u8>().ok())
            .or_else(|| netmask.and_then(netmask_to_prefix))
            .unwrap_or_else(|| default_prefix(&a.address));
        if p <= if a.address.is_ipv4() { 32 } else { 128 } {
            a.prefix = p;
        }
    }
    Some(a)
}

fn new_iface(name: &str, source: &str) -> IfaceConfig {
    IfaceConfig {
        name: name.to_string(),
        source: source.to_string(),
        loopback: name == "lo",
        ..Default::default()
    }
}

fn add_dns(cfg: &mut NetConfig, vars: &[(String, String)], search_key: &str) {
    for k in ["DNS1", "DNS2", "DNS3"] {
        if let Some(d) = shellvars::get(vars, k).filter(|d| parse_ip(d).is_some())
            && !cfg.nameservers.iter().any(|n| n == d)
        {
            cfg.nameservers.push(d.to_string());
        }
    }
    if let Some(s) = shellvars::get(vars, search_key) {
        for d in s.split_whitespace() {
            if !cfg.search.iter().any(|n| n == d) {
                cfg.search.push(d.to_string());
            }
        }
    }
}

/// Parses a RHEL `ifcfg-<file_device>` read from `source`: `DEVICE` (else the file's
/// suffix), `BOOTPROTO`, `DHCPV6C`, `IPADDR`/`PREFIX`/`NETMASK` and their numbered forms
/// (`IPADDR1`...), `IPV6ADDR`, `IPV6ADDR_SECONDARIES`, `HWADDR`/`MACADDR`, `MTU`,
/// `GATEWAY`, `IPV6_DEFAULTGW`, `DNS1..3`, `DOMAIN`.
pub fn parse_ifcfg_rhel(text: &str, file_device: &str, source: &str) -> NetConfig {
    let vars = shellvars::parse(text);
    let get = |k: &str| shellvars::get(&vars, k).filter(|v| !v.is_empty());
    let name = get("DEVICE").unwrap_or(file_device);
    let mut i = new_iface(name, source);
    let boot = get("BOOTPROTO").unwrap_or("none").to_ascii_lowercase();
    i.dhcp4 = matches!(boot.as_str(), "dhcp" | "bootp");
    i.dhcp6 = get("DHCPV6C").is_some_and(truthy);
    // `IPADDR`, then `IPADDR0`, `IPADDR1`... (any number, as initscripts accept).
    let mut suffixes: Vec<String> = vec![String::new()];
    let mut numbered: Vec<(u32, String)> = vars
        .iter()
        .filter_map(|(k, _)| {
            let n = k.strip_prefix("IPADDR")?;
            (!n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
                .then(|| (n.parse().unwrap_or(u32::MAX), n.to_string()))
        })
        .collect();
    numbered.sort();
    numbered.dedup();
    suffixes.extend(numbered.into_iter().map(|(_, s)| s));
    for s in suffixes {
        if let Some(ip) = get(&format!("IPADDR{s}")) {
            let p = get(&format!("PREFIX{s}"));
            let m = get(&format!("NETMASK{s}"));
            if let Some(a) = address(ip, p, m) {
                i.add_address(a);
            }
        }
    }
    let v6 = get("IPV6ADDR")
        .into_iter()
        .chain(get("IPV6ADDR_SECONDARIES").into_iter().flat_map(str::split_whitespace));
    for a in v6.filter_map(parse_cidr) {
        i.add_address(a);
    }
    i.mac = get("HWADDR").and_then(normalize_mac).or_else(|| get("MACADDR").and_then(normalize_mac));
    i.mtu = get("MTU").and_then(|m| m.parse().ok());
    for g in ["GATEWAY", "IPV6_DEFAULTGW"] {
        if let Some(g) = get(g).and_then(parse_ip) {
            i.add_gateway(g);
        }
    }
    let mut cfg = NetConfig::default();
    add_dns(&mut cfg, &vars, "DOMAIN");
    cfg.interfaces.push(i);
    cfg
}

/// Parses RHEL's `/etc/sysconfig/network`: the global `GATEWAY` (through `GATEWAYDEV` if
/// set) and `IPV6_DEFAULTGW`.
pub fn parse_rhel_network(text: &str, source: &str) -> NetConfig {
    let vars = shellvars::parse(text);
    let get = |k: &str| shellvars::get(&vars, k).filter(|v| !v.is_empty());
    let mut cfg = NetConfig::default();
    let gws: Vec<IpAddr> =
        ["GATEWAY", "IPV6_DEFAULTGW"].iter().filter_map(|k| get(k).and_then(parse_ip)).collect();
    match get("GATEWAYDEV") {
        Some(dev) if !gws.is_empty() => {
            let mut i = new_iface(dev, source);
            i.gateways = gws;
            cfg.interfaces.push(i);
        }
        _ => cfg.gateways = gws,
    }
    cfg
}

/// Parses a SUSE `ifcfg-<file_device>` read from `source`: `BOOTPROTO`, `IPADDR`
/// (`a.b.c.d/nn` or with `PREFIXLEN`/`NETMASK`), `IPADDR_x` with `PREFIXLEN_x`,
/// `NETMASK_x` and `LABEL_x` (a labelled address is reported as alias `dev:label`),
/// `LLADDR`, `MTU`.
pub fn parse_ifcfg_suse(text: &str, file_device: &str, source: &str) -> NetConfig {
    let vars = shellvars::parse(text);
    let get = |k: &str| shellvars::get(&vars, k).filter(|v| !v.is_empty());
    let dev = file_device;
    let mut i = new_iface(dev, source);
    let boot = get("BOOTPROTO").unwrap_or("static").to_ascii_lowercase();
    match boot.as_str() {
        "dhcp4" => i.dhcp4 = true,
        "dhcp6" => i.dhcp6 = true,
        b if b.starts_with("dhcp") => {
            i.dhcp4 = true;
            i.dhcp6 = true;
        }
        _ => {}
    }
    i.mac = get("LLADDR").and_then(normalize_mac);
    i.mtu = get("MTU").and_then(|m| m.parse().ok());
    let mut cfg = NetConfig::default();
    let mut suffixes: Vec<String> =
        vars.iter().filter_map(|(k, _)| k.strip_prefix("IPADDR").map(str::to_string)).collect();
    suffixes.sort();
    suffixes.dedup();
    let mut aliases = Vec::new();
    for s in suffixes {
        let Some(ip) = get(&format!("IPADDR{s}")) else {
            continue;
        };
        let Some(a) = address(ip, get(&format!("PREFIXLEN{s}")), get(&format!("NETMASK{s}"))) else {
            continue;
        };
        match get(&format!("LABEL{s}")) {
            Some(label) if !s.is_empty() => {
                let mut alias = new_iface(&format!("{dev}:{label}"), source);
                alias.add_address(a);
                aliases.push(alias);
            }
            _ => i.add_address(a),
        }
    }
    cfg.interfaces.push(i);
    cfg.interfaces.extend(aliases);
    add_dns(&mut cfg, &vars, "DOMAIN");
    cfg
}

/// One route of SUSE's `routes` or `ifroute-<dev>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuseRoute {
    pub destination: String,
    pub gateway: IpAddr,
    pub interface: Option<String>,
}

/// Parses SUSE's `/etc/sysconfig/network/routes` or `ifroute-<dev>` (`default_dev`):
/// `DESTINATION GATEWAY NETMASK INTERFACE`, `-` for an empty column.
pub fn parse_suse_routes(text: &str, default_dev: Option<&str>) -> Vec<SuseRoute> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() < 2 {
            continue;
        }
        let Some(gateway) = parse_ip(w[1]) else {
            continue;
        };
        let destination = match w[0] {
            "default" | "0.0.0.0" | "0.0.0.0/0" | "::/0" => "default".to_string(),
            d => d.to_string(),
        };
        let interface = w
            .get(3)
            .filter(|d| **d != "-")
            .map(|d| d.to_string())
            .or_else(|| default_dev.map(str::to_string));
        out.push(SuseRoute { destination, gateway, interface });
    }
    out
}
