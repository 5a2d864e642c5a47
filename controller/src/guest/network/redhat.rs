//! RHEL/CentOS/Fedora initscripts: `/etc/sysconfig/network-scripts` and
//! `/etc/sysconfig/network`.
//!
//! Follows vzctl's `redhat-add_ip.sh` (with Virtuozzo's later `NM_CONTROLLED`/`ARPCHECK`
//! lines): `ifcfg-venet0` with 127.0.0.1/32 and broadcast 0.0.0.0, IPv6 addresses as
//! `IPV6ADDR_SECONDARIES` (/128) with `IPV6INIT`; one `ifcfg-venet0:N` per IPv4 address
//! (/32); `route-venet0` with the fake gateway's network and the default route through it
//! (the release whose `functions` set `FAKEGATEWAY=192.0.2.1`); in `/etc/sysconfig/network`
//! `NETWORKING="yes"` and, for IPv6, `NETWORKING_IPV6="yes"` with
//! `IPV6_DEFAULTDEV="venet0"`. The physical NICs' `ifcfg-*`, `route-*`, `route6-*`,
//! `rule-*` files and the old `GATEWAY`/`GATEWAYDEV`/`IPV6_DEFAULTGW` go.

use rustix::fs::FileType;

use super::{FAKE_GATEWAY, Nics, Plan, VENET, is_venet};
use crate::guest::GuestError;
use crate::guest::edit::{Editor, MARKER};
use crate::tree::rel;

const DIR: &str = "etc/sysconfig/network-scripts";
const NETWORK: &str = "etc/sysconfig/network";
const PREFIXES: [&str; 5] = ["ifcfg-", "route-", "route6-", "rule-", "rule6-"];

pub(super) fn apply(ed: &mut Editor, plan: &Plan) -> Result<(), GuestError> {
    let aliases: Vec<String> = plan.aliases().map(|(n, _)| n).collect();
    for e in ed.entries(DIR)? {
        let Some((prefix, dev)) = PREFIXES.iter().find_map(|p| e.name.strip_prefix(p).map(|d| (*p, d)))
        else {
            continue;
        };
        if dev == "lo" || e.kind.is_some_and(|k| k != FileType::RegularFile) {
            continue;
        }
        if is_venet(dev) {
            let ours = (prefix == "ifcfg-" && (dev == VENET || aliases.iter().any(|a| a == dev)))
                || (prefix == "route-" && dev == VENET);
            if !(ours && plan.has_addresses()) {
                ed.remove(&e.path, format!("stale {VENET} config: {}", plan.summary()))?;
            }
            continue;
        }
        let Some(text) = ed.read(&e.path)? else {
            ed.remove(&e.path, "")?;
            continue;
        };
        let name = if prefix == "ifcfg-" {
            ifcfg_hardware(&text, dev, &plan.nics)
        } else {
            plan.nics.is_physical(dev).then(|| dev.to_string())
        };
        if let Some(name) = name {
            ed.remove(&e.path, plan.nics.reason(&[name]))?;
        }
    }
    if plan.has_addresses() {
        let summary = plan.summary();
        ed.write(&rel(&format!("{DIR}/ifcfg-{VENET}")), &ifcfg_venet(plan), 0o644, &summary)?;
        for (name, a) in plan.aliases() {
            let text = ifcfg_alias(&name, &a.to_string());
            ed.write(&rel(&format!("{DIR}/ifcfg-{name}")), &text, 0o644, &summary)?;
        }
        if !plan.v4.is_empty() {
            ed.write(&rel(&format!("{DIR}/route-{VENET}")), &route_venet(), 0o644, &summary)?;
        }
    }
    let reason = format!("default route through {VENET}; the physical network's gateway settings removed");
    let net = rel(NETWORK);
    let v6 = !plan.v6.is_empty();
    match ed.kind(&net)? {
        Some(FileType::RegularFile) => {
            ed.rewrite(&net, reason, |t| network_file(t, v6))?;
        }
        None => ed.write(&net, &network_file("", v6), 0o644, reason)?,
        Some(_) => {}
    }
    Ok(())
}

/// The device an `ifcfg-*` file configures if it is hardware (or built on it), by its
/// `DEVICE`, MAC address, `TYPE` or file name.
fn ifcfg_hardware(text: &str, file_dev: &str, nics: &Nics) -> Option<String> {
    let kv = crate::guest::distro::parse_os_release(text);
    let get = |k: &str| kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let dev = get("DEVICE").unwrap_or(file_dev).to_string();
    let hw_type = get("TYPE").is_some_and(|t| {
        matches!(
            t.to_ascii_lowercase().as_str(),
            "ethernet" | "wireless" | "bond" | "bridge" | "vlan" | "infiniband" | "team" | "teamport"
        )
    });
    let mac = get("HWADDR").is_some_and(|v| !v.is_empty()) || get("MACADDR").is_some_and(|v| !v.is_empty());
    (nics.is_physical(&dev) || nics.is_physical(file_dev) || mac || hw_type).then_some(dev)
}

pub(crate) fn ifcfg_venet(plan: &Plan) -> String {
    let mut s = format!(
        "# {MARKER}: {VENET} (OpenVZ venet: layer 3, point-to-point, no ARP);\n\
         # its IPv4 addresses are the aliases in ifcfg-{VENET}:N.\n\
         DEVICE={VENET}\nBOOTPROTO=static\nONBOOT=yes\nIPADDR=127.0.0.1\nNETMASK=255.255.255.255\n\
         BROADCAST=0.0.0.0\nNM_CONTROLLED=\"no\"\nARPUPDATE=\"no\"\nARPCHECK=\"no\"\n"
    );
    if !plan.v6.is_empty() {
        let v6: Vec<String> = plan.v6.iter().map(|a| format!("{a}/128")).collect();
        s.push_str(&format!("IPV6INIT=\"yes\"\nIPV6ADDR_SECONDARIES=\"{}\"\n", v6.join(" ")));
    }
    s
}

pub(crate) fn ifcfg_alias(name: &str, addr: &str) -> String {
    format!(
        "# {MARKER}: one IPv4 address of the server, on {VENET}.\n\
         DEVICE={name}\nONBOOT=yes\nIPADDR={addr}\nARPCHECK=\"no\"\nNM_CONTROLLED=\"no\"\n\
         NETMASK=255.255.255.255\n"
    )
}

pub(crate) fn route_venet() -> String {
    let net = std::net::Ipv4Addr::from(u32::from(FAKE_GATEWAY) & 0xffff_ff00);
    format!(
        "# {MARKER}: the default route through OpenVZ's fake gateway on {VENET}.\n\
         {net}/24 dev {VENET} scope host\ndefault via {FAKE_GATEWAY}\n"
    )
}

/// `/etc/sysconfig/network` with vzctl's `put_param`/`del_param` edits applied.
pub(crate) fn network_file(text: &str, v6: bool) -> String {
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| {
            let k = l.trim_start().split('=').next().unwrap_or_default();
            !matches!(k, "GATEWAY" | "GATEWAYDEV" | "IPV6_DEFAULTGW" | "IPV6_DEFAULTDEV")
                || (v6 && k == "IPV6_DEFAULTDEV")
        })
        .map(str::to_string)
        .collect();
    put_param(&mut lines, "NETWORKING", "yes");
    if v6 {
        put_param(&mut lines, "NETWORKING_IPV6", "yes");
        put_param(&mut lines, "IPV6_DEFAULTDEV", VENET);
    }
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

/// vzctl's `put_param`: `NAME="value"` replaces the line setting NAME, or is appended.
fn put_param(lines: &mut Vec<String>, name: &str, value: &str) {
    let line = format!("{name}=\"{value}\"");
    let prefix = format!("{name}=");
    match lines.iter_mut().find(|l| l.starts_with(&prefix)) {
        Some(l) => *l = line,
        None => lines.push(line),
    }
}
