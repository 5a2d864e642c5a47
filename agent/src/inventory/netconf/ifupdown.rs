//! Debian/Ubuntu ifupdown: `/etc/network/interfaces` and the files it sources.

use std::net::IpAddr;

use p2c_common::inventory::IfAddr;

use super::{NetConfig, default_prefix, netmask_to_prefix, normalize_mac, parse_cidr, parse_ip};

/// Words that start a new top-level stanza and so end an `iface` block.
const STANZAS: &[&str] =
    &["iface", "auto", "mapping", "source", "source-directory", "rename", "no-auto-down", "no-scripts"];

/// One `iface` block being read: addresses wait for a `netmask` line that may follow them.
struct Block {
    name: String,
    v6: bool,
    pending: Vec<(IpAddr, Option<u8>)>,
    netmask: Option<u8>,
}

/// Parses one ifupdown file read from `source`. `source`/`source-directory` lines are not
/// followed here; see [`ifupdown_includes`].
pub fn parse_ifupdown(text: &str, source: &str) -> NetConfig {
    let mut cfg = NetConfig::default();
    let mut block: Option<Block> = None;
    for raw in logical_lines(text) {
        let words: Vec<&str> = raw.split_whitespace().collect();
        let Some(&first) = words.first() else {
            continue;
        };
        if STANZAS.contains(&first) || first.starts_with("allow-") {
            if let Some(b) = block.take() {
                flush(&mut cfg, b, source);
            }
            if first == "iface" && words.len() >= 4 {
                let (name, family, method) = (words[1], words[2], words[3]);
                let i = cfg.iface_mut(name, source);
                let v6 = family == "inet6";
                match method {
                    "dhcp" if v6 => i.dhcp6 = true,
                    "dhcp" | "bootp" => i.dhcp4 = true,
                    "loopback" => {
                        i.loopback = true;
                        let a = if v6 { "::1/128" } else { "127.0.0.1/8" };
                        if let Some(a) = parse_cidr(a) {
                            i.add_address(a);
                        }
                    }
                    _ => {}
                }
                block = Some(Block { name: name.to_string(), v6, pending: Vec::new(), netmask: None });
            }
            continue;
        }
        let Some(b) = block.as_mut() else {
            continue;
        };
        let arg = words.get(1).copied().unwrap_or("");
        match first {
            "address" => {
                let (a, p) = match arg.split_once('/') {
                    Some((a, p)) => (a, p.parse::<u8>().ok()),
                    None => (arg, None),
                };
                if let Some(ip) = parse_ip(a) {
                    b.pending.push((ip, p));
                }
            }
            "netmask" => b.netmask = netmask_to_prefix(arg),
            "gateway" => {
                if let Some(g) = parse_ip(arg) {
                    let name = b.name.clone();
                    cfg.iface_mut(&name, source).add_gateway(g);
                }
            }
            "hwaddress" => {
                // `hwaddress ether aa:bb:...` or `hwaddress aa:bb:...`.
                let mac = words.iter().skip(1).find_map(|w| normalize_mac(w));
                if mac.is_some() {
                    let name = b.name.clone();
                    cfg.iface_mut(&name, source).mac = mac;
                }
            }
            "mtu" => {
                let name = b.name.clone();
                cfg.iface_mut(&name, source).mtu = arg.parse().ok();
            }
            "dns-nameservers" | "dns-nameserver" => {
                for w in &words[1..] {
                    if parse_ip(w).is_some() && !cfg.nameservers.iter().any(|n| n == w) {
                        cfg.nameservers.push(w.to_string());
                    }
                }
            }
            "dns-search" | "dns-domain" => {
                for w in &words[1..] {
                    if !cfg.search.iter().any(|n| n == w) {
                        cfg.search.push(w.to_string());
                    }
                }
            }
            "up" | "post-up" | "pre-up" => {
                if let Some((name, a)) = ip_addr_add(&words[1..]) {
                    cfg.iface_mut(&name, source).add_address(a);
                }
            }
            _ => {}
        }
    }
    if let Some(b) = block.take() {
        flush(&mut cfg, b, source);
    }
    cfg
}

fn flush(cfg: &mut NetConfig, b: Block, source: &str) {
    let i = cfg.iface_mut(&b.name, source);
    for (ip, p) in b.pending {
        let prefix = p
            .or(b.netmask)
            .filter(|p| *p <= if ip.is_ipv4() { 32 } else { 128 })
            .unwrap_or_else(|| if b.v6 { 64 } else { default_prefix(&ip) });
        i.add_address(IfAddr { address: ip, prefix });
    }
}

/// An `ip [-4|-6] addr add CIDR ... dev NAME` command of an `up` line.
fn ip_addr_add(words: &[&str]) -> Option<(String, IfAddr)> {
    let cmd = words.first()?;
    if !(cmd.ends_with("/ip") || *cmd == "ip") {
        return None;
    }
    let rest: Vec<&str> = words[1..].iter().copied().filter(|w| !w.starts_with('-')).collect();
    if !matches!(rest.first(), Some(&("addr" | "address" | "a"))) || rest.get(1) != Some(&"add") {
        return None;
    }
    let addr = parse_cidr(rest.get(2)?)?;
    let dev = rest.iter().position(|w| *w == "dev")?;
    Some((rest.get(dev + 1)?.to_string(), addr))
}

/// Lines with comments removed and `\` continuations joined.
fn logical_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let line = if line.trim_start().starts_with('#') { "" } else { line };
        if let Some(head) = line.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
            continue;
        }
        cur.push_str(line);
        out.push(std::mem::take(&mut cur));
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The `source` and `source-directory` arguments of an ifupdown file, as written (absolute,
/// or relative to `/etc/network`; `source` may hold a glob).
pub fn ifupdown_includes(text: &str) -> Vec<(bool, String)> {
    logical_lines(text)
        .iter()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next()) {
                (Some("source"), Some(p)) => Some((false, p.to_string())),
                (Some("source-directory"), Some(p)) => Some((true, p.to_string())),
                _ => None,
            }
        })
        .collect()
}
