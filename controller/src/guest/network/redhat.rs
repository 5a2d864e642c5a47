//! RHEL/CentOS/Fedora initscripts: `/etc/sysconfig/network-scripts` and
//! `/etc/sysconfig/network`.
//!
//! The physical NICs' `ifcfg-*`, `route-*`, `route6-*`, `rule-*` files and the old
//! `GATEWAY`/`GATEWAYDEV`/`IPV6_DEFAULTGW`/`IPV6_DEFAULTDEV` settings go. Where the ifcfg
//! files bring venet0 up, it gets what the target's script writes:
//!
//! * openvz, vzctl 4.11 `redhat-add_ip.sh`: `ifcfg-venet0` with 127.0.0.1/32 and broadcast
//!   0.0.0.0, IPv6 addresses as `IPV6ADDR_SECONDARIES` (/128) with `IPV6INIT`, one
//!   `ifcfg-venet0:N` per IPv4 address; in `/etc/sysconfig/network` `NETWORKING="yes"`,
//!   `GATEWAYDEV="venet0"` (its comment: "Remove old (obsoleted) fake route") and for IPv6
//!   `NETWORKING_IPV6="yes"`, `IPV6_DEFAULTDEV="venet0"`;
//! * vz7, libvzctl 7 `redhat-add_ip.sh` `init_config`: the same `ifcfg-venet0` with
//!   `NM_CONTROLLED="no"`, `ARPUPDATE="no"`, and `GATEWAYDEV="venet0"` (IPv6:
//!   `IPV6INIT`, `IPV6_DEFAULTDEV="venet0"`) in `ifcfg-venet0` itself;
//!   `/etc/sysconfig/network` gets `NETWORKING` and `NETWORKING_IPV6`;
//! * vz9, libvzctl 8 `redhat-add_netif.sh` (`create_config`, `update_dev`, `add_ipv6`,
//!   `set_route`, `set_route6`): `ifcfg-venet0` marked `# <ROUTED_UUID> venet0` with the
//!   first IPv4 address and its netmask, the others in `ifcfg-venet0:N`, IPv6 as
//!   `IPV6ADDR_SECONDARIES` (/128: `[ "$NETWORK_TYPE" = "routed" ] && mask=128`),
//!   `route-venet0` `default dev venet0` and `route6-venet0` `fe80::ffff:1:1 dev venet0` /
//!   `default via fe80::ffff:1:1 dev venet0`.
//!
//! None of them writes a route to a gateway that does not exist (p2c once wrote
//! `192.0.2.0/24 dev venet0 scope host`, which made every host of that network unreachable).
//! vzctl 4.11 writes no `NM_CONTROLLED`; p2c writes `NM_CONTROLLED="no"` for it too, as
//! libvzctl 7 does, so NetworkManager (CentOS 7 has it) does not bring venet0 up a second
//! time. The aliases' files are libvzctl 7's (vzctl 4.11's without `NM_CONTROLLED`); the
//! script's `route-venet0:N` copies of `route-venet0` for libvzctl 8's aliases are left out.

use p2c_common::migration::Target;
use rustix::fs::FileType;

use super::owner::Configures;
use super::{Nics, Plan, ROUTED_GW6, ROUTED_UUID, VENET, is_venet, netmask};
use crate::guest::GuestError;
use crate::guest::edit::{Editor, MARKER};
use crate::tree::rel;

const DIR: &str = "etc/sysconfig/network-scripts";
const NETWORK: &str = "etc/sysconfig/network";
const PREFIXES: [&str; 5] = ["ifcfg-", "route-", "route6-", "rule-", "rule6-"];

/// The files venet0 gets, by name in [`DIR`], with their text.
fn venet_files(plan: &Plan) -> Vec<(String, String)> {
    if !plan.has_addresses() {
        return Vec::new();
    }
    let mut out = vec![(format!("ifcfg-{VENET}"), ifcfg_venet(plan))];
    if plan.routed() {
        // The first IPv4 address is on venet0 itself.
        for (i, (a, p)) in plan.v4.iter().skip(1).enumerate() {
            let name = format!("{VENET}:{i}");
            out.push((format!("ifcfg-{name}"), routed_alias(&name, &a.to_string(), *p)));
        }
        out.push((format!("route-{VENET}"), format!("default dev {VENET}\n")));
        out.push((
            format!("route6-{VENET}"),
            format!("{ROUTED_GW6} dev {VENET}\ndefault via {ROUTED_GW6} dev {VENET}\n"),
        ));
    } else {
        for (name, a, p) in plan.aliases() {
            out.push((format!("ifcfg-{name}"), ifcfg_alias(&name, &a.to_string(), p)));
        }
    }
    out
}

/// Strips the NICs' files and their gateways; `own`: venet0 gets its files, else any go.
pub(super) fn apply(ed: &mut Editor, plan: &Plan, own: bool) -> Result<(), GuestError> {
    let ours = if own { venet_files(plan) } else { Vec::new() };
    for e in ed.entries(DIR)? {
        let Some((prefix, dev)) = PREFIXES.iter().find_map(|p| e.name.strip_prefix(p).map(|d| (*p, d)))
        else {
            continue;
        };
        if dev == "lo" || e.kind.is_some_and(|k| k != FileType::RegularFile) {
            continue;
        }
        if is_venet(dev) {
            if !ours.iter().any(|(n, _)| *n == e.name) {
                let why =
                    if own { format!("stale {VENET} config: {}", plan.summary()) } else { plan.not_here() };
                ed.remove(&e.path, why)?;
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
    let summary = plan.summary();
    for (name, text) in &ours {
        ed.write(&rel(&format!("{DIR}/{name}")), text, 0o644, &summary)?;
    }
    let reason = if own {
        format!("default route through {VENET}; the physical network's gateway settings removed")
    } else {
        "the physical network's gateway settings removed".to_string()
    };
    let net = rel(NETWORK);
    match ed.kind(&net)? {
        Some(FileType::RegularFile) => {
            ed.rewrite(&net, reason, |t| network_file(t, plan, own))?;
        }
        None if own => ed.write(&net, &network_file("", plan, own), 0o644, reason)?,
        _ => {}
    }
    Ok(())
}

/// What the `ifcfg-*` files configure: one of the server's NICs, venet0.
pub(super) fn configures(ed: &Editor, nics: &Nics) -> Result<Configures, GuestError> {
    let mut c = Configures::default();
    for e in ed.entries(DIR)? {
        let Some(dev) = e.name.strip_prefix("ifcfg-") else {
            continue;
        };
        if dev == "lo" || e.kind != Some(FileType::RegularFile) {
            continue;
        }
        if is_venet(dev) {
            c.venet = true;
        } else if let Some(text) = ed.read(&e.path)? {
            c.nics |= ifcfg_hardware(&text, dev, nics).is_some();
        }
    }
    Ok(c)
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
    let v6: Vec<String> = plan.v6.iter().map(|(a, p)| format!("{a}/{p}")).collect();
    let mut s = format!("# {MARKER}: {VENET} ");
    match plan.target {
        Target::Openvz | Target::Vz7 => {
            s.push_str(&format!(
                "(OpenVZ venet: layer 3, point-to-point, no ARP);\n\
                 # its IPv4 addresses are the aliases in ifcfg-{VENET}:N.\n\
                 DEVICE={VENET}\nBOOTPROTO=static\nONBOOT=yes\nIPADDR=127.0.0.1\nNETMASK=255.255.255.255\n\
                 BROADCAST=0.0.0.0\nNM_CONTROLLED=\"no\"\nARPUPDATE=\"no\"\nARPCHECK=\"no\"\n"
            ));
            let vz7 = plan.target == Target::Vz7;
            if vz7 && !plan.v4.is_empty() {
                s.push_str(&format!("GATEWAYDEV=\"{VENET}\"\n"));
            }
            if !v6.is_empty() {
                s.push_str("IPV6INIT=\"yes\"\n");
                if vz7 {
                    s.push_str(&format!("IPV6_DEFAULTDEV=\"{VENET}\"\n"));
                }
                s.push_str(&format!("IPV6ADDR_SECONDARIES=\"{}\"\n", v6.join(" ")));
            }
        }
        Target::Vz9 => {
            s.push_str(&format!(
                "(Virtuozzo 9: a routed veth, the host routes each address to it).\n\
                 # {ROUTED_UUID} {VENET}\n\
                 ARPUPDATE=no\nARPCHECK=no\nDEVICE=\"{VENET}\"\nONBOOT=\"yes\"\nBOOTPROTO=static\nNM_CONTROLLED=no\n"
            ));
            if let Some((a, p)) = plan.v4.first() {
                s.push_str(&format!("IPADDR=\"{a}\"\nNETMASK=\"{}\"\n", netmask(*p)));
            }
            if !v6.is_empty() {
                s.push_str(&format!("IPV6INIT=\"yes\"\nIPV6ADDR_SECONDARIES=\"{}\"\n", v6.join(" ")));
            }
        }
    }
    s
}

/// An alias on the venet device (openvz, vz7).
pub(crate) fn ifcfg_alias(name: &str, addr: &str, prefix: u8) -> String {
    format!(
        "# {MARKER}: one IPv4 address of the server, on {VENET}.\n\
         DEVICE={name}\nONBOOT=yes\nIPADDR={addr}\nARPCHECK=\"no\"\nNM_CONTROLLED=\"no\"\n\
         NETMASK={}\n",
        netmask(prefix)
    )
}

/// An alias on the routed veth (vz9), as `create_config` and `update_dev` write it.
pub(crate) fn routed_alias(name: &str, addr: &str, prefix: u8) -> String {
    format!(
        "# {MARKER}: one IPv4 address of the server, on {VENET}.\n\
         # {ROUTED_UUID} {name}\n\
         ARPUPDATE=no\nARPCHECK=no\nDEVICE=\"{name}\"\nONBOOT=yes\nBOOTPROTO=static\nNM_CONTROLLED=no\n\
         IPADDR=\"{addr}\"\nNETMASK=\"{}\"\n",
        netmask(prefix)
    )
}

/// `/etc/sysconfig/network` with the target script's `put_param`/`del_param` edits applied
/// (`own`), or only the physical network's gateways removed.
pub(crate) fn network_file(text: &str, plan: &Plan, own: bool) -> String {
    let mut want: Vec<(&str, &str)> = Vec::new();
    if own {
        want.push(("NETWORKING", "yes"));
        if plan.target == Target::Openvz && !plan.v4.is_empty() {
            want.push(("GATEWAYDEV", VENET));
        }
        if !plan.v6.is_empty() {
            want.push(("NETWORKING_IPV6", "yes"));
            if plan.target == Target::Openvz {
                want.push(("IPV6_DEFAULTDEV", VENET));
            }
        }
    }
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| {
            let k = l.trim_start().split('=').next().unwrap_or_default();
            !matches!(k, "GATEWAY" | "GATEWAYDEV" | "IPV6_DEFAULTGW" | "IPV6_DEFAULTDEV")
                || want.iter().any(|(w, _)| *w == k)
        })
        .map(str::to_string)
        .collect();
    for (k, v) in want {
        put_param(&mut lines, k, v);
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
