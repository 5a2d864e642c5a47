//! NetworkManager keyfiles (`/etc/NetworkManager/system-connections/*.nmconnection`), the
//! default network configuration of RHEL 9 and Fedora.

use super::networkd::ini;
use super::{IfaceConfig, NetConfig, normalize_mac, parse_cidr, parse_ip};

/// Parses one keyfile read from `source`. The interface is `interface-name`, else the
/// connection `id`.
pub fn parse_nm_keyfile(text: &str, source: &str) -> NetConfig {
    let mut i = IfaceConfig { source: source.to_string(), ..Default::default() };
    let mut id = None;
    let mut cfg = NetConfig::default();
    for (_, section, key, value) in ini(text) {
        let ip_section = matches!(section.as_str(), "ipv4" | "ipv6");
        match (section.as_str(), key.as_str()) {
            ("connection", "interface-name") => i.name = value,
            ("connection", "id") => id = Some(value),
            ("connection", "type") if value == "loopback" => i.loopback = true,
            (_, "mac-address") | (_, "cloned-mac-address") => {
                if let Some(m) = normalize_mac(&value) {
                    i.mac = Some(m);
                }
            }
            (_, "mtu") if !ip_section => i.mtu = value.parse().ok().filter(|m| *m > 0),
            ("ipv4", "method") => i.dhcp4 = value == "auto",
            ("ipv6", "method") => i.dhcp6 = value == "dhcp",
            (_, k) if ip_section && (k.starts_with("address") || k == "addresses") => {
                // `address1=10.0.0.5/24,10.0.0.1` or `addresses=10.0.0.5/24;10.0.0.6/24;`.
                for item in value.split(';').filter(|s| !s.is_empty()) {
                    let mut parts = item.split(',');
                    if let Some(a) = parts.next().and_then(parse_cidr) {
                        i.add_address(a);
                    }
                    if let Some(g) = parts.next().and_then(parse_ip) {
                        i.add_gateway(g);
                    }
                }
            }
            (_, "gateway") if ip_section => {
                if let Some(g) = parse_ip(&value) {
                    i.add_gateway(g);
                }
            }
            (_, "dns") if ip_section => {
                for d in value.split(';').filter(|d| parse_ip(d).is_some()) {
                    if !cfg.nameservers.iter().any(|n| n == d) {
                        cfg.nameservers.push(d.to_string());
                    }
                }
            }
            (_, "dns-search") if ip_section => {
                for d in value.split(';').filter(|d| !d.is_empty()) {
                    if !cfg.search.iter().any(|n| n == d) {
                        cfg.search.push(d.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    if i.name.is_empty() {
        i.name = id.unwrap_or_default();
    }
    if !i.name.is_empty() {
        cfg.interfaces.push(i);
    }
    cfg
}
