//! NetworkManager: connection profiles in `/etc/NetworkManager/system-connections` for
//! the server's hardware (ethernet, wifi, bond, bridge, VLAN, team, infiniband, or bound
//! to a physical interface name or MAC address) go. venet0 itself is configured by the
//! guest's other stack (ifcfg or ifupdown), which NetworkManager leaves alone.

use rustix::fs::FileType;

use super::Plan;
use super::networkd::Ini;
use crate::guest::GuestError;
use crate::guest::edit::Editor;

const DIR: &str = "etc/NetworkManager/system-connections";

pub(super) fn apply(ed: &mut Editor, plan: &Plan) -> Result<(), GuestError> {
    for e in ed.entries(DIR)? {
        if e.kind.is_some_and(|k| k != FileType::RegularFile) {
            continue;
        }
        let Some(text) = ed.read(&e.path)? else {
            ed.remove(&e.path, "")?;
            continue;
        };
        let ini = Ini::parse(&text);
        let kind = ini.get("connection", "type").next().unwrap_or_default();
        let ifname = ini.get("connection", "interface-name").next().unwrap_or_default().to_string();
        let hardware = matches!(
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
        ) || (!ifname.is_empty() && plan.nics.is_physical(&ifname))
            || ini.get("ethernet", "mac-address").next().is_some()
            || ini.get("802-3-ethernet", "mac-address").next().is_some();
        if hardware {
            let name = if ifname.is_empty() { e.name.clone() } else { ifname };
            ed.remove(&e.path, plan.nics.reason(&[name]))?;
        }
    }
    Ok(())
}
