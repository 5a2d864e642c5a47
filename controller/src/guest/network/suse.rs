//! SUSE: `/etc/sysconfig/network/ifcfg-*`, `ifroute-*` and `routes`.
//!
//! Follows vzctl's `suse-add_ip.sh`: `ifcfg-venet0` with `STARTMODE=onboot`,
//! `BOOTPROTO=static`, 127.0.0.1/32 with broadcast 0.0.0.0, then `IPADDR_N`/`LABEL_N` for
//! each IPv4 address (the label makes the alias `venet0:N`) and `IPADDR_N=<addr>/128` for
//! IPv6 (no label: IPv6 has no aliases); `ifroute-venet0` with the default routes — for
//! IPv4 through the fake gateway, with a host route to it (as vzctl's SuSE-8 script wrote
//! it), for IPv6 `default :: - venet0`. The physical NICs' `ifcfg-*`/`ifroute-*` and the
//! global routes through their gateways go.

use rustix::fs::FileType;

use super::{FAKE_GATEWAY, Plan, VENET, is_venet};
use crate::guest::GuestError;
use crate::guest::edit::{Editor, MARKER};
use crate::tree::rel;

const DIR: &str = "etc/sysconfig/network";
const PREFIXES: [&str; 2] = ["ifcfg-", "ifroute-"];

pub(super) fn apply(ed: &mut Editor, plan: &Plan) -> Result<(), GuestError> {
    for e in ed.entries(DIR)? {
        let Some(dev) = PREFIXES.iter().find_map(|p| e.name.strip_prefix(p)) else {
            continue;
        };
        if dev == "lo" || e.kind.is_some_and(|k| k != FileType::RegularFile) {
            continue;
        }
        if is_venet(dev) {
            if !(dev == VENET && plan.has_addresses()) {
                ed.remove(&e.path, format!("stale {VENET} config: {}", plan.summary()))?;
            }
            continue;
        }
        let Some(text) = ed.read(&e.path)? else {
            ed.remove(&e.path, "")?;
            continue;
        };
        let mac =
            text.lines().any(|l| l.trim_start().starts_with("LLADDR=") && l.trim().len() > "LLADDR=''".len());
        if plan.nics.is_physical(dev) || mac {
            ed.remove(&e.path, plan.nics.reason(&[dev.to_string()]))?;
        }
    }
    if plan.has_addresses() {
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

pub(crate) fn ifcfg_venet(plan: &Plan) -> String {
    let mut s = format!(
        "# {MARKER}: {VENET} (OpenVZ venet: layer 3, point-to-point, no ARP).\n\
         STARTMODE=onboot\nBOOTPROTO=static\nBROADCAST=0.0.0.0\nNETMASK=255.255.255.255\n\
         IPADDR=127.0.0.1\n"
    );
    let mut n = 0;
    for a in &plan.v4 {
        s.push_str(&format!("IPADDR_{n}={a}\nLABEL_{n}={n}\n"));
        n += 1;
    }
    for a in &plan.v6 {
        s.push_str(&format!("IPADDR_{n}={a}/128\n"));
        n += 1;
    }
    s
}

pub(crate) fn ifroute_venet(plan: &Plan) -> String {
    let mut s = format!("# {MARKER}: default routes through {VENET} (OpenVZ's fake gateway for IPv4).\n");
    if !plan.v4.is_empty() {
        s.push_str(&format!("{FAKE_GATEWAY} - 255.255.255.255 {VENET}\ndefault {FAKE_GATEWAY} - {VENET}\n"));
    }
    if !plan.v6.is_empty() {
        s.push_str(&format!("default :: - {VENET}\n"));
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
