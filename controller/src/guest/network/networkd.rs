//! systemd-networkd: `/etc/systemd/network/*.{network,link,netdev}`.
//!
//! `.network` and `.link` files whose `[Match]` names a physical NIC (by `Name=` glob
//! matching one of the server's NICs or a hardware name, or by MAC address, path, driver
//! or an ethernet/wlan `Type=`) go, and so do `.netdev` files creating bonds, bridges and
//! VLANs (they only make sense on top of those NICs). Where networkd brings venet0 up it
//! gets `10-p2c-venet0.network`, the equivalent of the target's `debian-add_ip.sh` /
//! `debian-add_netif.sh` stanzas (libvzctl has no networkd script): no DHCP, no router
//! advertisements, and
//!
//! * venet (openvz, vz7): the addresses as /32 and /128, no link-local addresses (venet
//!   has no link layer), the default routes as device routes (`Destination=` without
//!   `Gateway=`: `default dev venet0`);
//! * routed veth (vz9): the addresses with their masks (IPv6 /128), IPv6 link-local
//!   addressing on (a veth is an Ethernet link), `default dev venet0` for IPv4 and the IPv6
//!   default route through `fe80::ffff:1:1` on the link.

use rustix::fs::FileType;

use super::owner::Configures;
use super::{Nics, Plan, ROUTED_GW6, VENET, is_venet};
use crate::guest::GuestError;
use crate::guest::edit::{Editor, MARKER};
use crate::tree::rel;

const DIR: &str = "etc/systemd/network";
/// venet0's file; networkd uses the first file in name order that matches a link.
pub(crate) const OURS: &str = "10-p2c-venet0.network";

/// Strips the NICs' files; `own`: venet0 gets [`OURS`], else an earlier run's goes.
pub(super) fn apply(ed: &mut Editor, plan: &Plan, own: bool) -> Result<(), GuestError> {
    for e in ed.entries(DIR)? {
        let ext = e.name.rsplit('.').next().unwrap_or_default();
        if e.name == OURS || !matches!(ext, "network" | "link" | "netdev") {
            continue;
        }
        if e.kind.is_some_and(|k| k != FileType::RegularFile) {
            continue;
        }
        let Some(text) = ed.read(&e.path)? else {
            ed.remove(&e.path, "")?;
            continue;
        };
        let ini = Ini::parse(&text);
        if let Some(names) = hardware(&ini, ext, &plan.nics) {
            ed.remove(&e.path, plan.nics.reason(&names))?;
        }
    }
    let path = rel(&format!("{DIR}/{OURS}"));
    if own && plan.has_addresses() {
        ed.write(&path, &render(plan), 0o644, plan.summary())?;
    } else {
        ed.remove(&path, plan.not_here())?;
    }
    Ok(())
}

/// What the `.network` files configure: one of the server's NICs, venet0 (`.link` files
/// only name devices, `.netdev` files create them).
pub(super) fn configures(ed: &Editor, nics: &Nics) -> Result<Configures, GuestError> {
    let mut c = Configures::default();
    for e in ed.entries(DIR)? {
        if !e.name.ends_with(".network") || e.kind != Some(FileType::RegularFile) {
            continue;
        }
        if let Some(text) = ed.read(&e.path)? {
            let ini = Ini::parse(&text);
            let venet = ini.get("Match", "Name").any(|v| v.split_whitespace().any(is_venet));
            let nics = !venet && hardware(&ini, "network", nics).is_some();
            c.add(Configures { nics, venet });
        }
    }
    Ok(c)
}

/// `(section, key, value)` of a unit-style file, in order.
pub(crate) struct Ini(Vec<(String, String, String)>);

impl Ini {
    pub(crate) fn parse(text: &str) -> Ini {
        let mut section = String::new();
        let mut out = Vec::new();
        for l in text.lines() {
            let t = l.trim();
            if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
                continue;
            }
            if let Some(s) = t.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
                section = s.trim().to_string();
                continue;
            }
            if let Some((k, v)) = t.split_once('=') {
                out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
            }
        }
        Ini(out)
    }

    pub(crate) fn get<'a>(&'a self, section: &'a str, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(s, k, _)| s.eq_ignore_ascii_case(section) && k == key)
            .map(|(_, _, v)| v.as_str())
    }
}

/// The interface names a file ties to hardware, or `None` if it is not about hardware.
fn hardware(ini: &Ini, ext: &str, nics: &Nics) -> Option<Vec<String>> {
    if ext == "netdev" {
        let kind = ini.get("NetDev", "Kind").next().unwrap_or_default();
        let names: Vec<String> = ini.get("NetDev", "Name").map(str::to_string).collect();
        let built_on_nics =
            matches!(kind, "bond" | "bridge" | "vlan" | "macvlan" | "macvtap" | "ipvlan" | "ipvtap");
        return (built_on_nics || names.iter().any(|n| nics.is_physical(n))).then_some(names);
    }
    let mut names: Vec<String> = Vec::new();
    for key in ["Name", "OriginalName"] {
        for v in ini.get("Match", key) {
            names.extend(v.split_whitespace().filter(|g| !g.starts_with('!')).map(str::to_string));
        }
    }
    let by_name = names.iter().any(|g| nics.glob_is_physical(g) || is_venet(g));
    let by_hardware = ["MACAddress", "PermanentMACAddress", "Path", "Driver"]
        .iter()
        .any(|k| ini.get("Match", k).next().is_some())
        || ini.get("Match", "Type").any(|t| matches!(t, "ether" | "wlan" | "wwan" | "infiniband"));
    if by_name || by_hardware {
        if names.is_empty() {
            names.push("(matched by hardware)".to_string());
        }
        Some(names)
    } else {
        None
    }
}

/// venet0's `.network` file.
pub(crate) fn render(plan: &Plan) -> String {
    let routed = plan.routed();
    let mut s = format!(
        "# {MARKER}: every address of this server is on {VENET} ({});\n\
         # the default routes go through {VENET}.\n\
         [Match]\nName={VENET}\n\n[Network]\nDHCP=no\nLinkLocalAddressing={}\nIPv6AcceptRA=no\n",
        if routed {
            "Virtuozzo 9: a routed veth,\n# the host routes each address to it"
        } else {
            "OpenVZ venet:\n# layer 3, point-to-point, no ARP, no DHCP"
        },
        if routed { "ipv6" } else { "no" }
    );
    for (a, p) in &plan.v4 {
        s.push_str(&format!("Address={a}/{p}\n"));
    }
    for (a, p) in &plan.v6 {
        s.push_str(&format!("Address={a}/{p}\n"));
    }
    for n in &plan.nameservers {
        s.push_str(&format!("DNS={n}\n"));
    }
    if !plan.search.is_empty() {
        s.push_str(&format!("Domains={}\n", plan.search.join(" ")));
    }
    if !plan.v4.is_empty() {
        s.push_str("\n[Route]\nDestination=0.0.0.0/0\n");
    }
    if !plan.v6.is_empty() {
        if routed {
            s.push_str(&format!("\n[Route]\nGateway={ROUTED_GW6}\nGatewayOnLink=yes\n"));
        } else {
            s.push_str("\n[Route]\nDestination=::/0\n");
        }
    }
    s
}
