//! NetworkManager: connection profiles in `/etc/NetworkManager/system-connections`.
//!
//! Profiles for the server's hardware (ethernet, wifi, bond, bridge, VLAN, team,
//! infiniband, or bound to a physical interface name or MAC address) go, and so do other
//! profiles for venet0. Where NetworkManager brings venet0 up (RHEL 8/9, or a guest whose
//! NICs NetworkManager configured; see [`super::owner`]) venet0 gets a keyfile, mode 0600
//! (NetworkManager ignores keyfiles others can read):
//!
//! * venet (openvz, vz7; neither platform's scripts write NetworkManager profiles):
//!   `venet0.nmconnection`, `type=generic` (a venet device is `ARPHRD_VOID`, which
//!   NetworkManager handles as a generic device, not as Ethernet), the addresses /32 and
//!   /128, and device default routes `route1=0.0.0.0/0` / `route1=::/0` (no gateway;
//!   NetworkManager accepts /0 static routes since 1.20, RHEL 8.1);
//! * routed veth (vz9): what libvzctl 8's `functions` `nm_create_config` writes at every
//!   container start, under its names, so that the node's own rewrite replaces this
//!   profile instead of adding a second one: `vz-venet0` (`id=vz-venet0`,
//!   `uuid=<ROUTED_UUID>`, `type=ethernet`, `interface-name=venet0`) with
//!   `address1=<ip>/<mask>,169.254.0.1` (`IP4_ROUTED_GW`), and `conf.d/vz-venet0.conf`
//!   (`no-auto-default+=venet0`, `plugins-=ifcfg-rh`). Its IPv6 addresses are /128 (as the
//!   routed scripts give them) with `fe80::ffff:1:1` as the gateway: `nm_create_config`
//!   sets no IPv6 gateway, which would leave IPv6 without a default route.
//!
//! Nameservers go into the profile: NetworkManager writes `/etc/resolv.conf` from them.

use std::net::IpAddr;

use p2c_common::migration::Target;
use rustix::fs::FileType;

use super::networkd::Ini;
use super::owner::Configures;
use super::{Nics, Plan, ROUTED_GW4, ROUTED_GW6, ROUTED_UUID, VENET, is_venet};
use crate::guest::GuestError;
use crate::guest::edit::{Editor, MARKER};
use crate::tree::rel;

const DIR: &str = "etc/NetworkManager/system-connections";
const CONF_DIR: &str = "etc/NetworkManager/conf.d";
/// venet0's profile on a venet device (openvz, vz7).
pub(crate) const VENET_PROFILE: &str = "venet0.nmconnection";
/// libvzctl 8's profile and config snippet for the routed venet0 (`id=vz-$dev`).
pub(crate) const ROUTED_PROFILE: &str = "vz-venet0";
pub(crate) const ROUTED_CONF: &str = "vz-venet0.conf";
/// The UUID of p2c's venet0 profile (fixed, so a second run writes the same file).
const VENET_UUID: &str = "6d73e1a0-4e41-458e-9ecc-c0475ccd49a1";

/// The files venet0 gets: (directory, name, text).
fn venet_files(plan: &Plan) -> Vec<(&'static str, &'static str, String)> {
    if !plan.has_addresses() {
        return Vec::new();
    }
    match plan.target {
        Target::Openvz | Target::Vz7 => vec![(DIR, VENET_PROFILE, venet_profile(plan))],
        Target::Vz9 => {
            vec![(DIR, ROUTED_PROFILE, routed_profile(plan)), (CONF_DIR, ROUTED_CONF, routed_conf())]
        }
    }
}

/// The names p2c writes for venet0 in either directory, on any target.
fn is_ours(dir: &str, name: &str) -> bool {
    (dir == DIR && (name == VENET_PROFILE || name == ROUTED_PROFILE))
        || (dir == CONF_DIR && name == ROUTED_CONF)
}

/// Whether a profile is about the server's hardware; its interface name if it names one.
fn hardware(ini: &Ini, nics: &Nics) -> bool {
    let kind = ini.get("connection", "type").next().unwrap_or_default();
    let ifname = ini.get("connection", "interface-name").next().unwrap_or_default();
    matches!(
        kind,
        "ethernet"
            | "802-3-ethernet"
            | "wifi"
            | "802-11-wireless"
            | "bond"
            | "bridge"
            | "vlan"
            | "team"
            | "infiniband"
            | "gsm"
            | "cdma"
    ) || (!ifname.is_empty() && nics.is_physical(ifname))
        || ini.get("ethernet", "mac-address").next().is_some()
        || ini.get("802-3-ethernet", "mac-address").next().is_some()
}

fn venet_profile_of(ini: &Ini) -> bool {
    ini.get("connection", "interface-name").any(is_venet)
}

/// Strips the hardware's profiles; `own`: venet0 gets its keyfile, else any go.
pub(super) fn apply(ed: &mut Editor, plan: &Plan, own: bool) -> Result<(), GuestError> {
    let ours = if own { venet_files(plan) } else { Vec::new() };
    for e in ed.entries(DIR)? {
        if is_ours(DIR, &e.name) || e.kind.is_some_and(|k| k != FileType::RegularFile) {
            continue;
        }
        let Some(text) = ed.read(&e.path)? else {
            ed.remove(&e.path, "")?;
            continue;
        };
        let ini = Ini::parse(&text);
        if venet_profile_of(&ini) {
            ed.remove(&e.path, format!("another profile for {VENET}: {}", plan.summary()))?;
        } else if hardware(&ini, &plan.nics) {
            let ifname = ini.get("connection", "interface-name").next().unwrap_or_default();
            let name = if ifname.is_empty() { e.name.clone() } else { ifname.to_string() };
            ed.remove(&e.path, plan.nics.reason(&[name]))?;
        }
    }
    for (dir, name) in [(DIR, VENET_PROFILE), (DIR, ROUTED_PROFILE), (CONF_DIR, ROUTED_CONF)] {
        let path = rel(&format!("{dir}/{name}"));
        match ours.iter().find(|(d, n, _)| *d == dir && *n == name) {
            Some((_, _, text)) => ed.write(&path, text, 0o600, plan.summary())?,
            None => ed.remove(&path, if own { plan.summary() } else { plan.not_here() })?,
        }
    }
    Ok(())
}

/// What the profiles configure: one of the server's NICs, venet0.
pub(super) fn configures(ed: &Editor, nics: &Nics) -> Result<Configures, GuestError> {
    let mut c = Configures::default();
    for e in ed.entries(DIR)? {
        if e.kind != Some(FileType::RegularFile) {
            continue;
        }
        if let Some(text) = ed.read(&e.path)? {
            let ini = Ini::parse(&text);
            if venet_profile_of(&ini) {
                c.venet = true;
            } else {
                c.nics |= hardware(&ini, nics);
            }
        }
    }
    Ok(c)
}

/// `dns=a;b;` lines for the servers of one family, and the search list with IPv4.
fn dns_lines(plan: &Plan, v6: bool) -> String {
    let servers: Vec<&str> = plan
        .nameservers
        .iter()
        .filter(|n| n.parse::<IpAddr>().is_ok_and(|a| a.is_ipv6() == v6))
        .map(String::as_str)
        .collect();
    let mut s = String::new();
    if !servers.is_empty() {
        s.push_str(&format!("dns={};\n", servers.join(";")));
    }
    if !v6 && !plan.search.is_empty() {
        s.push_str(&format!("dns-search={};\n", plan.search.join(";")));
    }
    s
}

/// venet0's profile on a venet device.
pub(crate) fn venet_profile(plan: &Plan) -> String {
    let mut s = format!(
        "# {MARKER}: every address of this server is on {VENET} (OpenVZ venet:\n\
         # layer 3, point-to-point, no ARP, no DHCP); the default routes go through {VENET}.\n\
         [connection]\nid={VENET}\nuuid={VENET_UUID}\ntype=generic\ninterface-name={VENET}\nautoconnect=true\n\n[ipv4]\n"
    );
    if plan.v4.is_empty() {
        s.push_str("method=disabled\n");
    } else {
        s.push_str("method=manual\n");
        for (i, (a, p)) in plan.v4.iter().enumerate() {
            s.push_str(&format!("address{}={a}/{p}\n", i + 1));
        }
        s.push_str("route1=0.0.0.0/0\n");
    }
    s.push_str(&dns_lines(plan, false));
    s.push_str("\n[ipv6]\n");
    if plan.v6.is_empty() {
        s.push_str("method=ignore\n");
    } else {
        s.push_str("method=manual\n");
        for (i, (a, p)) in plan.v6.iter().enumerate() {
            s.push_str(&format!("address{}={a}/{p}\n", i + 1));
        }
        s.push_str("route1=::/0\n");
        s.push_str(&dns_lines(plan, true));
    }
    s
}

/// libvzctl 8's `nm_create_config` profile for the routed venet0.
pub(crate) fn routed_profile(plan: &Plan) -> String {
    let mut s = format!(
        "# {MARKER}: every address of this server is on {VENET} (Virtuozzo 9: a routed\n\
         # veth, the host routes each address to it and answers for {ROUTED_GW4} by proxy ARP).\n\
         [connection]\nid={ROUTED_PROFILE}\nuuid={ROUTED_UUID}\ntype=ethernet\ninterface-name={VENET}\n\n[ipv4]\n"
    );
    if plan.v4.is_empty() {
        s.push_str("method=link-local\n");
    } else {
        s.push_str("method=manual\n");
        for (i, (a, p)) in plan.v4.iter().enumerate() {
            let gw = if i == 0 { format!(",{ROUTED_GW4}") } else { String::new() };
            s.push_str(&format!("address{}={a}/{p}{gw}\n", i + 1));
        }
    }
    s.push_str(&dns_lines(plan, false));
    s.push_str("\n[ipv6]\n");
    if plan.v6.is_empty() {
        s.push_str("method=ignore\n");
    } else {
        s.push_str("method=manual\n");
        for (i, (a, p)) in plan.v6.iter().enumerate() {
            let gw = if i == 0 { format!(",{ROUTED_GW6}") } else { String::new() };
            s.push_str(&format!("address{}={a}/{p}{gw}\n", i + 1));
        }
        s.push_str(&dns_lines(plan, true));
    }
    s
}

/// libvzctl 8's `conf.d/vz-venet0.conf`: no automatic DHCP profile for venet0, and the
/// ifcfg files are not NetworkManager's to read.
pub(crate) fn routed_conf() -> String {
    format!(
        "# {MARKER} as libvzctl's nm_create_config writes it.\n[main]\nno-auto-default+={VENET}\nplugins-=ifcfg-rh\n"
    )
}
