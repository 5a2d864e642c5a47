//! systemd-networkd (`/etc/systemd/network/*.network`).

use super::{IfaceConfig, NetConfig, normalize_mac, parse_cidr, parse_ip, truthy};

/// The `(section number, section, key, value)` entries of an INI-style file (systemd
/// units, NetworkManager keyfiles), in order; sections are numbered from 1 as they appear
/// (a name may repeat, as `[Route]` does). Comments start with `#` or `;`.
pub(super) fn ini(text: &str) -> Vec<(usize, String, String, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut number = 0;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_string();
            number += 1;
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.push((number, section.clone(), k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// Parses one `.network` file read from `source`. A `[Match] Name=` with several names or
/// globs yields one interface entry for each; without a name the file's own name is used.
pub fn parse_networkd(text: &str, source: &str) -> NetConfig {
    let mut names: Vec<String> = Vec::new();
    let mut i = IfaceConfig { source: source.to_string(), ..Default::default() };
    let mut cfg = NetConfig::default();
    // Per [Route] section: (destination, gateway).
    let mut route: Option<(Option<String>, Option<String>)> = None;
    let mut routes = Vec::new();
    let mut last_section = 0;
    for (number, section, key, value) in ini(text) {
        if number != last_section {
            if let Some(r) = route.take() {
                routes.push(r);
            }
            if section == "Route" {
                route = Some((None, None));
            }
            last_section = number;
        }
        match (section.as_str(), key.as_str()) {
            ("Match", "Name") => names.extend(value.split_whitespace().map(str::to_string)),
            ("Match", "MACAddress") | ("Link", "MACAddress") => {
                if let Some(m) = value.split_whitespace().find_map(normalize_mac) {
                    i.mac = Some(m);
                }
            }
            ("Link", "MTUBytes") => i.mtu = value.parse().ok(),
            ("Network", "DHCP") => match value.to_ascii_lowercase().as_str() {
                "ipv4" => i.dhcp4 = true,
                "ipv6" => i.dhcp6 = true,
                "both" => {
                    i.dhcp4 = true;
                    i.dhcp6 = true;
                }
                v if truthy(v) => {
                    i.dhcp4 = true;
                    i.dhcp6 = true;
                }
                _ => {}
            },
            ("Network" | "Address", "Address") => {
                for a in value.split_whitespace().filter_map(parse_cidr) {
                    i.add_address(a);
                }
            }
            ("Network", "Gateway") => {
                for g in value.split_whitespace().filter_map(parse_ip) {
                    i.add_gateway(g);
                }
            }
            ("Network", "DNS") => {
                for d in value.split_whitespace() {
                    let d = d.split('#').next().unwrap_or(d);
                    if parse_ip(d).is_some() && !cfg.nameservers.iter().any(|n| n == d) {
                        cfg.nameservers.push(d.to_string());
                    }
                }
            }
            ("Network", "Domains") => {
                // `~name` is a routing-only domain, not a search domain.
                for d in value.split_whitespace().filter(|d| !d.starts_with('~')) {
                    if !cfg.search.iter().any(|n| n == d) {
                        cfg.search.push(d.to_string());
                    }
                }
            }
            ("Route", "Gateway") => {
                if let Some(r) = route.as_mut() {
                    r.1 = Some(value);
                }
            }
            ("Route", "Destination") => {
                if let Some(r) = route.as_mut() {
                    r.0 = Some(value);
                }
            }
            _ => {}
        }
    }
    routes.extend(route);
    for (dest, gw) in routes {
        let default = matches!(dest.as_deref(), None | Some("0.0.0.0/0" | "::/0"));
        if let (true, Some(g)) = (default, gw.as_deref().and_then(parse_ip)) {
            i.add_gateway(g);
        }
    }
    if names.is_empty() {
        let file = source.rsplit('/').next().unwrap_or(source);
        names.push(file.strip_suffix(".network").unwrap_or(file).to_string());
    }
    for n in names {
        let mut one = i.clone();
        one.loopback = n == "lo";
        one.name = n;
        cfg.merge(NetConfig { interfaces: vec![one], ..Default::default() });
    }
    cfg
}
