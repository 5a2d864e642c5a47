//! SUSE: `/etc/sysconfig/network/ifcfg-*`, `ifroute-*` and `routes`.
//!
//! The physical NICs' `ifcfg-*`/`ifroute-*` and the global routes through their gateways
//! go. Where these files bring venet0 up, it gets what the target's script writes:
//!
//! * openvz, vzctl 4.11 `suse-add_ip.sh` (`init_config`, `create_config`): `ifcfg-venet0`
//!   with `STARTMODE=onboot`, `BOOTPROTO=static`, 127.0.0.1/32 and broadcast 0.0.0.0, then
//!   `IPADDR_N`, `PREFIXLEN_N` (32 or 128 from `ip_conv`) and `LABEL_N` for every address;
//!   `ifroute-venet0` `default - - venet0` and `default :: - venet0`;
//! * vz7, libvzctl 7 `suse-add_ip.sh` (`init_config`, `add_alias`): the same `ifcfg-venet0`
//!   start, `IPADDR_N` and `LABEL_N` per address (`PREFIXLEN_N=128` for IPv6, which the
//!   script writes when the address carries its mask; IPv4 takes the file's `NETMASK`);
//!   `ifroute-venet0` `default - - venet0`, and `default :: - venet0` with IPv6;
//! * vz9, libvzctl 8 `suse-add_netif.sh` (`create_config`, `add_alias`,
//!   `setup_default_route`): `ifcfg-venet0` marked `# <ROUTED_UUID> venet0` with the first
//!   address as `IPADDR` and its `NETMASK`/`PREFIXLEN` (IPv6 128), the others as
//!   `IPADDR_N`, `LABEL_N`, `NETMASK_N`/`PREFIXLEN_N` from 1; `ifroute-venet0` with host
//!   routes to `169.254.0.1` and `fe80::ffff:1:1` and the default routes through them.
//!
//! No fake gateway: p2c once wrote `default 192.0.2.1 - venet0`. Both venet scripts also
//! patch wicked (`fix_wicked_route`: a netconfig extension that runs `ip route add default
//! dev venet0`) and sysconfig's `ifup-route` (`via $GWAY` only with a gateway) so the
//! gateway-less routes work; the node runs them at every container start, p2c does not
//! change the guest's programs.

use p2c_common::migration::Target;
use rustix::fs::FileType;

use super::owner::Configures;
use super::{Nics, Plan, ROUTED_GW4, ROUTED_GW6, ROUTED_UUID, VENET, is_venet, netmask};
use crate::guest::GuestError;
use crate::guest::edit::{Editor, MARKER};
use crate::tree::rel;

const DIR: &str = "etc/sysconfig/network";
const PREFIXES: [&str; 2] = ["ifcfg-", "ifroute-"];

/// Strips the NICs' files and routes; `own`: venet0 gets its files, else any go.
pub(super) fn apply(ed: &mut Editor, plan: &Plan, own: bool) -> Result<(), GuestError> {
    let write = own && plan.has_addresses();
    for e in ed.entries(DIR)? {
        let Some(dev) = PREFIXES.iter().find_map(|p| e.name.strip_prefix(p)) else {
            continue;
        };
        if dev == "lo" || e.kind.is_some_and(|k| k != FileType::RegularFile) {
            continue;
        }
        if is_venet(dev) {
            if !(dev == VENET && write) {
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
        if hardware(&text, dev, &plan.nics) {
            ed.remove(&e.path, plan.nics.reason(&[dev.to_string()]))?;
        }
    }
    if write {
        let summary = plan.summary();
        ed.write(&rel(&format!("{DIR}/ifcfg-{VENET}")), &ifcfg_venet(plan), 0o644, &summary)?;
        ed.write(&rel(&format!("{DIR}/ifroute-{VENET}")), &ifroute_venet(plan), 0o644, &summary)?;
    }
    let routes = rel(&format!("{DIR}/routes"));
    let reason =
        "routes through the physical network's gateways removed: the default route goes through venet0";
    ed.rewrite(&routes, reason, |t| routes_file(t, plan))?;
    Ok(())
}

fn hardware(text: &str, dev: &str, nics: &Nics) -> bool {
    let mac =
        text.lines().any(|l| l.trim_start().starts_with("LLADDR=") && l.trim().len() > "LLADDR=''".len());
    nics.is_physical(dev) || mac
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
        } else if ed.read(&e.path)?.is_some_and(|t| hardware(&t, dev, nics)) {
            c.nics = true;
        }
    }
    Ok(c)
}

pub(crate) fn ifcfg_venet(plan: &Plan) -> String {
    let all: Vec<(String, bool, u8)> = plan
        .v4
        .iter()
        .map(|(a, p)| (a.to_string(), false, *p))
        .chain(plan.v6.iter().map(|(a, p)| (a.to_string(), true, *p)))
        .collect();
    let mut s = String::new();
    match plan.target {
        Target::Openvz | Target::Vz7 => {
            s.push_str(&format!(
                "# {MARKER}: {VENET} (OpenVZ venet: layer 3, point-to-point, no ARP).\n\
                 STARTMODE=onboot\nBOOTPROTO=static\nBROADCAST=0.0.0.0\nNETMASK=255.255.255.255\n\
                 IPADDR=127.0.0.1\n"
            ));
            let legacy = plan.target == Target::Openvz;
            for (n, (a, v6, p)) in all.iter().enumerate() {
                s.push_str(&format!("IPADDR_{n}={a}\n"));
                if legacy {
                    s.push_str(&format!("PREFIXLEN_{n}={p}\n"));
                }
                s.push_str(&format!("LABEL_{n}={n}\n"));
                if !legacy && *v6 {
                    s.push_str(&format!("PREFIXLEN_{n}={p}\n"));
                }
            }
        }
        Target::Vz9 => {
            s.push_str(&format!(
                "# {ROUTED_UUID} {VENET}\n\
                 # {MARKER}: {VENET} (Virtuozzo 9: a routed veth, the host routes each address to it).\n\
                 STARTMODE=onboot\nBOOTPROTO=static\n"
            ));
            let mask = |v6: bool, p: u8| {
                if v6 { ("PREFIXLEN", p.to_string()) } else { ("NETMASK", netmask(p).to_string()) }
            };
            for (n, (a, v6, p)) in all.iter().enumerate() {
                let (k, v) = mask(*v6, *p);
                if n == 0 {
                    s.push_str(&format!("IPADDR={a}\n{k}={v}\n"));
                } else {
                    s.push_str(&format!("IPADDR_{n}={a}\nLABEL_{n}={n}\n{k}_{n}={v}\n"));
                }
            }
        }
    }
    s
}

pub(crate) fn ifroute_venet(plan: &Plan) -> String {
    let mut s = if plan.routed() {
        format!("# {MARKER}: the default routes through the host end of {VENET}.\n")
    } else {
        format!("# {MARKER}: the default routes through {VENET}, no gateway behind it.\n")
    };
    match plan.target {
        // vzctl 4.11 writes both lines whenever the container has an address.
        Target::Openvz => s.push_str(&format!("default - - {VENET}\ndefault :: - {VENET}\n")),
        Target::Vz7 => {
            s.push_str(&format!("default - - {VENET}\n"));
            if !plan.v6.is_empty() {
                s.push_str(&format!("default :: - {VENET}\n"));
            }
        }
        Target::Vz9 => {
            s.push_str(&format!("{ROUTED_GW4} - - -\n{ROUTED_GW6} - - -\ndefault {ROUTED_GW4} - -\n"));
            if !plan.v6.is_empty() {
                s.push_str(&format!("default {ROUTED_GW6} - -\n"));
            }
        }
    }
    s
}

/// The global `routes` file without default routes, routes through a gateway (none is
/// reachable on venet) and routes on a physical NIC.
pub(crate) fn routes_file(text: &str, plan: &Plan) -> String {
    text.split_inclusive('\n')
        .filter(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.is_empty() || w[0].starts_with('#') {
                return true;
            }
            let gw = w.get(1).copied().unwrap_or("-");
            let dev = w.get(3).copied().unwrap_or("-");
            !(w[0] == "default"
                || !matches!(gw, "-" | "0.0.0.0" | "::")
                || (dev != "-" && plan.nics.is_physical(dev)))
        })
        .collect()
}
