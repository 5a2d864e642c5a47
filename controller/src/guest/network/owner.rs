//! Which network stack gets venet0: the one that configured the server's NICs.
//!
//! A guest often has more than one stack installed: Debian with systemd has
//! systemd-networkd next to ifupdown, RHEL 8 has NetworkManager reading ifcfg files. If
//! two of them bring venet0 up, the second fails ("Address already assigned") and its
//! service with it. So exactly one stack gets venet0, decided from the guest's files (the
//! inventory's NIC names tell which configs are about hardware):
//!
//! 1. A stack *configured the NICs* if one of its files configures one of the server's
//!    NICs (by name, MAC address or hardware type). Of those, the first in this order wins:
//!    netplan (it renders networkd's or NetworkManager's configs at boot), systemd-networkd,
//!    NetworkManager, ifupdown, SUSE ifcfg, RHEL ifcfg. A networkd `.link` file (device
//!    naming) configures no address and does not count.
//! 2. If none did, a stack that configures venet0 already, in the same order: the source
//!    was a container, or p2c ran before (it removed the NICs' configs then), and the
//!    earlier decision stands, so running twice changes nothing.
//! 3. If none does (every NIC came from DHCP defaults or cloud-init at boot), the stack
//!    that runs at boot: RHEL's ifcfg for the RHEL family, SUSE's for SUSE; elsewhere
//!    systemd-networkd or NetworkManager if enabled, else ifupdown for Debian.
//! 4. RHEL ifcfg without the initscripts' `network` service (RHEL 8 without the
//!    network-scripts package, RHEL 9) becomes a NetworkManager keyfile: nothing else
//!    would bring up an ifcfg file there.

use p2c_common::inventory::OsFamily;

use super::{Plan, ifupdown, netplan, networkd, nm, redhat, suse};
use crate::guest::GuestError;
use crate::guest::distro::{Distro, NetStack, has_file, unit_enabled};
use crate::guest::edit::Editor;

/// What the guest's files say about its network stacks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Facts {
    /// The stacks whose files configure one of the server's NICs, in [`NetStack`] order.
    pub(crate) configured: Vec<NetStack>,
    /// The stacks whose files configure venet0.
    pub(crate) venet: Vec<NetStack>,
    /// The stacks the guest has files of (`Distro::stacks`).
    pub(crate) present: Vec<NetStack>,
    pub(crate) networkd_enabled: bool,
    pub(crate) nm_enabled: bool,
    /// Whether the initscripts' `network` service is there (`/etc/rc.d/init.d/network`, or
    /// their `ifup-eth`; RHEL 8's network-scripts package has both, NetworkManager neither).
    pub(crate) legacy_network: bool,
}

impl Facts {
    pub(crate) fn gather(ed: &Editor, distro: &Distro, plan: &Plan) -> Result<Facts, GuestError> {
        let tree = ed.tree();
        let checks: [(NetStack, Configures); 6] = [
            (NetStack::Ifupdown, ifupdown::configures(ed, &plan.nics)?),
            (NetStack::Netplan, netplan::configures(ed)?),
            (NetStack::Networkd, networkd::configures(ed, &plan.nics)?),
            (NetStack::RedhatIfcfg, redhat::configures(ed, &plan.nics)?),
            (NetStack::SuseIfcfg, suse::configures(ed, &plan.nics)?),
            (NetStack::NetworkManager, nm::configures(ed, &plan.nics)?),
        ];
        let configured = checks.iter().filter(|(_, c)| c.nics).map(|(s, _)| *s).collect();
        let venet = checks.iter().filter(|(_, c)| c.venet).map(|(s, _)| *s).collect();
        Ok(Facts {
            configured,
            venet,
            present: distro.stacks.clone(),
            networkd_enabled: unit_enabled(
                tree,
                "systemd-networkd.service",
                Some("dbus-org.freedesktop.network1.service"),
            )?,
            nm_enabled: unit_enabled(
                tree,
                "NetworkManager.service",
                Some("dbus-org.freedesktop.NetworkManager.service"),
            )?,
            legacy_network: has_file(tree, "etc/rc.d/init.d/network")?
                || has_file(tree, "etc/init.d/network")?
                || has_file(tree, "etc/sysconfig/network-scripts/ifup-eth")?,
        })
    }
}

/// What a stack's files configure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Configures {
    /// One of the server's NICs (or something built on them).
    pub(crate) nics: bool,
    /// venet0.
    pub(crate) venet: bool,
}

impl Configures {
    pub(crate) fn add(&mut self, other: Configures) {
        self.nics |= other.nics;
        self.venet |= other.venet;
    }
}

/// The order in which stacks that configured NICs win (see the module docs).
const PRIORITY: [NetStack; 6] = [
    NetStack::Netplan,
    NetStack::Networkd,
    NetStack::NetworkManager,
    NetStack::Ifupdown,
    NetStack::SuseIfcfg,
    NetStack::RedhatIfcfg,
];

/// The stack that gets venet0, or `None` for a guest with no stack p2c knows and none of
/// its family.
pub(crate) fn choose(family: OsFamily, facts: &Facts) -> Option<NetStack> {
    let configured = PRIORITY
        .into_iter()
        .find(|s| facts.configured.contains(s))
        .or_else(|| PRIORITY.into_iter().find(|s| facts.venet.contains(s)));
    let pick = configured.or_else(|| match family {
        OsFamily::Rhel => Some(NetStack::RedhatIfcfg),
        OsFamily::Suse => Some(NetStack::SuseIfcfg),
        _ if facts.networkd_enabled => Some(NetStack::Networkd),
        _ if facts.nm_enabled => Some(NetStack::NetworkManager),
        OsFamily::Debian => Some(NetStack::Ifupdown),
        _ => PRIORITY.into_iter().find(|s| facts.present.contains(s)),
    });
    match pick {
        Some(NetStack::RedhatIfcfg) if !facts.legacy_network => Some(NetStack::NetworkManager),
        p => p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(configured: &[NetStack]) -> Facts {
        Facts { configured: configured.to_vec(), legacy_network: true, ..Facts::default() }
    }

    #[test]
    fn the_stack_that_configured_the_nics_wins() {
        use NetStack::*;
        // networkd configured eth0; ifupdown is installed with only `lo`.
        assert_eq!(choose(OsFamily::Debian, &facts(&[Networkd])), Some(Networkd));
        assert_eq!(choose(OsFamily::Debian, &facts(&[Ifupdown])), Some(Ifupdown));
        assert_eq!(choose(OsFamily::Debian, &facts(&[Netplan, Networkd])), Some(Netplan));
        assert_eq!(choose(OsFamily::Debian, &facts(&[Ifupdown, NetworkManager])), Some(NetworkManager));
        assert_eq!(choose(OsFamily::Rhel, &facts(&[RedhatIfcfg])), Some(RedhatIfcfg));
        assert_eq!(choose(OsFamily::Suse, &facts(&[SuseIfcfg])), Some(SuseIfcfg));
    }

    #[test]
    fn nic_configs_before_venet_configs() {
        use NetStack::*;
        // ifupdown has the NICs, an older p2c left a networkd file for venet0.
        let f = Facts { venet: vec![Networkd], ..facts(&[Ifupdown]) };
        assert_eq!(choose(OsFamily::Debian, &f), Some(Ifupdown));
        // A second run: the NICs' configs are gone, venet0's decides.
        let again = Facts { venet: vec![Networkd], ..facts(&[]) };
        assert_eq!(choose(OsFamily::Debian, &again), Some(Networkd));
    }

    #[test]
    fn without_nic_configs_the_stack_that_runs_at_boot() {
        use NetStack::*;
        let none = facts(&[]);
        assert_eq!(choose(OsFamily::Debian, &none), Some(Ifupdown));
        assert_eq!(
            choose(OsFamily::Debian, &Facts { networkd_enabled: true, ..none.clone() }),
            Some(Networkd)
        );
        assert_eq!(
            choose(OsFamily::Debian, &Facts { nm_enabled: true, ..none.clone() }),
            Some(NetworkManager)
        );
        assert_eq!(choose(OsFamily::Rhel, &Facts { nm_enabled: true, ..none.clone() }), Some(RedhatIfcfg));
        assert_eq!(choose(OsFamily::Suse, &none), Some(SuseIfcfg));
        assert_eq!(choose(OsFamily::Unknown, &none), None);
        assert_eq!(
            choose(OsFamily::Unknown, &Facts { present: vec![Networkd], ..none.clone() }),
            Some(Networkd)
        );
    }

    #[test]
    fn rhel_without_the_network_service_gets_a_keyfile() {
        use NetStack::*;
        let rhel9 = Facts { configured: vec![RedhatIfcfg], legacy_network: false, ..Facts::default() };
        assert_eq!(choose(OsFamily::Rhel, &rhel9), Some(NetworkManager));
        let empty9 = Facts { legacy_network: false, ..Facts::default() };
        assert_eq!(choose(OsFamily::Rhel, &empty9), Some(NetworkManager));
    }
}
