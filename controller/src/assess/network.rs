//! Network: `ip-venet0`, `dhcp`, `mac-bound`.

use std::net::IpAddr;

use p2c_common::findings::{Finding, Severity, codes};
use p2c_common::inventory::{Interface, Listener};
use p2c_common::scan::{format_mac, parse_mac};
use serde_json::json;

use super::{Ctx, finding};

/// Interfaces whose addresses move: every one but loopback.
fn physical<'a>(cx: &Ctx<'a>) -> impl Iterator<Item = &'a Interface> {
    cx.inv.interfaces.iter().filter(|i| !i.loopback)
}

/// Link-local IPv6 (fe80::/10) lives on a link and cannot move to venet0.
fn link_local(a: &IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// Addresses that move onto venet0: (address, prefix, interface).
pub(super) fn moving<'a>(cx: &Ctx<'a>) -> Vec<(IpAddr, u8, &'a Interface)> {
    physical(cx)
        .flat_map(|i| i.addresses.iter().map(move |a| (a.address, a.prefix, i)))
        .filter(|(a, _, _)| !a.is_loopback() && !link_local(a))
        .collect()
}

/// The address a listener is bound to, if it is one specific address.
fn bound_address(l: &Listener) -> Option<IpAddr> {
    let a = l.address.trim_start_matches('[').trim_end_matches(']');
    let a = a.split('%').next().unwrap_or(a);
    let ip: IpAddr = a.parse().ok()?;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}

fn mac_text(i: &Interface) -> String {
    i.mac.clone().unwrap_or_else(|| "no MAC".to_string())
}

pub(super) fn ip_venet0(cx: &Ctx<'_>, out: &mut Vec<Finding>) {
    let addrs = moving(cx);
    let mut evidence: Vec<String> = addrs
        .iter()
        .map(|(a, p, i)| {
            let host = if a.is_ipv4() { 32 } else { 128 };
            format!("{a}/{p} on {} (MAC {}) → venet0 {a}/{host}", i.name, mac_text(i))
        })
        .collect();
    let left: Vec<String> = physical(cx)
        .flat_map(|i| i.addresses.iter().map(move |a| (a, i)))
        .filter(|(a, _)| link_local(&a.address))
        .map(|(a, i)| format!("{}/{} on {}", a.address, a.prefix, i.name))
        .collect();
    if !left.is_empty() {
        evidence.push(format!("link-local, not carried (venet0 has none): {}", left.join(", ")));
    }
    let mut stranded = false;
    let mut bound = Vec::new();
    for l in &cx.inv.listeners {
        let Some(ip) = bound_address(l) else { continue };
        let carried = addrs.iter().any(|(a, _, _)| *a == ip);
        stranded |= !carried;
        evidence.push(format!(
            "{} listens on {ip} port {}/{} only{}",
            l.process.as_deref().unwrap_or("a service"),
            l.port,
            l.proto,
            if carried {
                ": the address moves with it to venet0"
            } else {
                ": the container will not have that address"
            }
        ));
        bound.push(json!({"proto": l.proto, "address": ip.to_string(), "port": l.port,
            "process": l.process, "carried": carried}));
    }
    let severity = if addrs.is_empty() || stranded { Severity::Warning } else { Severity::Info };
    let title = if addrs.is_empty() {
        "the source has no address to move: the container gets no network".to_string()
    } else {
        format!("{} address(es) move onto venet0", addrs.len())
    };
    let data: Vec<_> = addrs
        .iter()
        .map(|(a, p, i)| {
            json!({"address": a.to_string(), "prefix": p, "interface": i.name,
            "mac": i.mac, "dhcp": i.dhcp})
        })
        .collect();
    out.push(finding(
        codes::IP_VENET0,
        severity,
        title,
        evidence,
        "every address is put on venet0 (layer 3, /32 or /128, no MAC, no broadcast) and \
         listed in IP_ADDRESS; the guest's NIC configs are replaced by venet0 ones with a \
         default route through venet0; services bound to one address keep it, but anything \
         that names an interface (eth0, ens3) must be changed to venet0",
        json!({"addresses": data, "link_local": left, "bound_services": bound}),
    ));
}

pub(super) fn dhcp(cx: &Ctx<'_>, out: &mut Vec<Finding>) {
    let ifaces: Vec<&Interface> = physical(cx).filter(|i| i.dhcp).collect();
    if ifaces.is_empty() {
        return;
    }
    let addrs = moving(cx);
    let mut evidence = Vec::new();
    let mut data = Vec::new();
    for i in &ifaces {
        let mine: Vec<String> =
            addrs.iter().filter(|(_, _, x)| x.name == i.name).map(|(a, p, _)| format!("{a}/{p}")).collect();
        evidence.push(if mine.is_empty() {
            format!("{} is configured by DHCP and has no address now: nothing to carry for it", i.name)
        } else {
            format!("{} is configured by DHCP; its address(es) {} become static", i.name, mine.join(", "))
        });
        data.push(json!({"interface": i.name, "mac": i.mac, "addresses": mine}));
    }
    out.push(finding(
        codes::DHCP,
        Severity::Warning,
        format!("{} interface(s) get their address by DHCP", ifaces.len()),
        evidence,
        "the current addresses become static on venet0 and the lease is never renewed: keep \
         them reserved for this server in the DHCP server, or change IP_ADDRESS afterwards",
        json!({"interfaces": data}),
    ));
}

pub(super) fn mac_bound(cx: &Ctx<'_>, out: &mut Vec<Finding>) {
    let macs: Vec<(String, &str)> = physical(cx)
        .filter_map(|i| {
            let m = parse_mac(i.mac.as_deref()?)?;
            (m != [0; 6]).then(|| (format_mac(&m), i.name.as_str()))
        })
        .collect();
    if macs.is_empty() {
        return;
    }
    let iface_of = |mac: &str| {
        let canon = parse_mac(mac).map(|m| format_mac(&m));
        macs.iter().find(|(m, _)| Some(m) == canon.as_ref()).map_or("?", |(_, i)| *i)
    };
    let mut evidence: Vec<String> = vec![format!(
        "source MACs: {}",
        macs.iter().map(|(m, i)| format!("{m} ({i})")).collect::<Vec<_>>().join(", ")
    )];
    let action = "the container has no MAC address (venet0 is layer 3): software licensed to \
                  or configured with these MACs stops working; the files are copied unchanged \
                  — get a new licence or reconfigure the application";
    let macs_json: Vec<_> = macs.iter().map(|(m, i)| json!({"mac": m, "interface": i})).collect();
    let Some(scan) = cx.scan else {
        evidence.push("files were not searched (quick assessment)".to_string());
        out.push(finding(
            codes::MAC_BOUND,
            Severity::Info,
            "the files naming the source MACs were not searched",
            evidence,
            action,
            json!({"macs": macs_json, "searched": false}),
        ));
        return;
    };
    let files: Vec<_> = scan
        .mac_hits
        .iter()
        .map(|h| json!({"path": h.path, "mac": h.mac, "spelling": h.spelling, "interface": iface_of(&h.mac)}))
        .collect();
    evidence.extend(
        scan.mac_hits
            .iter()
            .map(|h| format!("{} contains {} (MAC of {})", h.path, h.spelling, iface_of(&h.mac))),
    );
    let skipped = &scan.mac_skipped;
    if !skipped.is_empty() {
        evidence.push(format!(
            "{} file(s) not searched: {}",
            skipped.total,
            skipped
                .examples
                .iter()
                .take(5)
                .map(|p| format!("{} ({})", p.path, p.reason))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let data = json!({"macs": macs_json, "searched": true, "files": files,
        "files_searched": scan.mac_files_searched, "not_searched": skipped});
    if !scan.mac_hits.is_empty() {
        out.push(finding(
            codes::MAC_BOUND,
            Severity::Warning,
            format!("{} file(s) name a MAC address of the source", files_count(&scan.mac_hits)),
            evidence,
            action,
            data,
        ));
    } else if !skipped.is_empty() {
        out.push(finding(
            codes::MAC_BOUND,
            Severity::Info,
            "no searched file names a source MAC, but some files were too large to search",
            evidence,
            action,
            data,
        ));
    }
}

fn files_count(hits: &[p2c_common::scan::MacHit]) -> usize {
    hits.iter().map(|h| &h.path).collect::<std::collections::HashSet<_>>().len()
}
