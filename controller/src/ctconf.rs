//! The container config in OpenVZ format (`KEY="value"`): `<conf_dir>/<CTID>.conf` on legacy
//! OpenVZ, the private area's `ve.conf` on Virtuozzo 7 and 9 (see [`crate::private_area`]).
//!
//! vzctl sources this file as shell, so every value that came from a source server is
//! reduced to a strict character set before it is written.
//!
//! Only keys the target's own parser knows are written (legacy vzctl 4.11's
//! `src/lib/config.c` table, libvzctl 7/8's `config_param_map` in `lib/env_config.c`):
//! - `VE_LAYOUT` only for legacy OpenVZ; libvzctl reads the layout from `.ve.layout`.
//! - `DISTRIBUTION` only for Virtuozzo 7 and 9, where it picks the distribution scripts
//!   (`dists/<DISTRIBUTION>.conf`, shortened at `-` until one exists); vzctl 4 has no such
//!   key and finds them from `OSTEMPLATE`.
//! - `IP_ADDRESS` entries carry their prefix (`ip/prefix`, which libvzctl's parser takes) on
//!   Virtuozzo 9, whose routed veth gives the guest that netmask (an address without one
//!   becomes a /24 in its `*-add_netif.sh`); on venet (legacy OpenVZ, Virtuozzo 7) every
//!   address is a host address, so they are written bare, as `vzctl --ipadd` writes them.
//! - `NETIF` on Virtuozzo 9 only: it has no venet, and libvzctl 8 puts `IP_ADDRESS` on a
//!   routed veth named `venet0` (`apply_venet_param` in `lib/veth.c`). Left out, libvzctl
//!   writes that entry itself at the first start; p2c writes it (see [`vz9_netif`]) so the
//!   container's MACs and host-side name are known before it starts and stay the same.
//! - `ORIGIN_SAMPLE` (the sample config a container came from) only for legacy OpenVZ;
//!   the provenance is in the header comment, which libvzctl keeps when it saves the file.

use std::net::IpAddr;
use std::path::Path;

use p2c_common::inventory::{IfAddr, Inventory};
use p2c_common::migration::{Layout, Target};

/// Everything the config says, already validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtConf {
    pub ctid: u32,
    pub agent: String,
    pub vz_root: String,
    pub layout: Layout,
    pub target: Target,
    pub ostemplate: String,
    pub distribution: String,
    pub hostname: String,
    /// Every address with its prefix, in the source's order.
    pub addresses: Vec<IfAddr>,
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    /// `(key, value)` pairs from the quota plan (DISKSPACE, DISKINODES, QUOTATIME, QUOTAUGIDLIMIT).
    pub quota: Vec<(String, String)>,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub swap_bytes: u64,
    pub created: String,
}

/// Keeps only characters that are safe inside `"..."` in a shell-sourced file.
fn clean(s: &str, extra: &[char]) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric() || extra.contains(c)).take(255).collect()
}

/// Every address of the source with its prefix, in interface order, loopback and link-local
/// left out (an address on two interfaces counts once, with its first prefix).
pub fn source_addresses(inv: &Inventory) -> Vec<IfAddr> {
    let mut out: Vec<IfAddr> = Vec::new();
    for i in inv.interfaces.iter().filter(|i| !i.loopback) {
        for a in &i.addresses {
            let ip = a.address;
            let skip = ip.is_loopback()
                || ip.is_unspecified()
                || matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
                || matches!(ip, IpAddr::V4(v4) if v4.is_link_local());
            if !skip && !out.iter().any(|o| o.address == ip) {
                let max = if ip.is_ipv4() { 32 } else { 128 };
                out.push(IfAddr { address: ip, prefix: a.prefix.min(max) });
            }
        }
    }
    out
}

impl CtConf {
    pub fn from_inventory(
        ctid: u32,
        agent: &str,
        vz_root: &Path,
        layout: Layout,
        target: Target,
        inv: &Inventory,
    ) -> CtConf {
        let id = clean(&inv.os.id, &['-', '.', '_']);
        let version = clean(&inv.os.version_id, &['.', '-']);
        let arch = match inv.kernel.machine.as_str() {
            "" | "x86_64" => "x86_64".to_string(),
            m => clean(m, &['_']),
        };
        let distribution = if id.is_empty() { "linux".to_string() } else { id.clone() };
        let ostemplate = if version.is_empty() {
            format!("{distribution}-{arch}")
        } else {
            format!("{distribution}-{version}-{arch}")
        };
        CtConf {
            ctid,
            agent: clean(agent, &['-', '.', '_']),
            vz_root: vz_root.display().to_string(),
            layout,
            target,
            ostemplate,
            distribution,
            hostname: clean(&inv.hostname, &['-', '.']),
            addresses: source_addresses(inv),
            nameservers: inv.dns.nameservers.iter().filter_map(|n| n.parse().ok()).collect(),
            search: inv.dns.search.iter().map(|s| clean(s, &['-', '.'])).filter(|s| !s.is_empty()).collect(),
            quota: Vec::new(),
            cpus: inv.cpus,
            memory_bytes: inv.memory_bytes,
            swap_bytes: inv.swap_bytes,
            created: String::new(),
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // `$VEID` is the only expansion written, and only in the node's own paths.
        let mut kv = |k: &str, v: &str| {
            let keep_dollar = k == "VE_ROOT" || k == "VE_PRIVATE";
            let v: String = v
                .chars()
                .filter(|c| !matches!(c, '"' | '\\' | '`' | '\n' | '\r') && (keep_dollar || *c != '$'))
                .collect();
            out.push_str(&format!("{k}=\"{v}\"\n"));
        };
        let vz = self.vz_root.trim_end_matches('/');
        let versioned = self.target.versioned_private();
        let masked = !self.target.has_venet();
        let ips: Vec<String> = self
            .addresses
            .iter()
            .map(|a| if masked { format!("{}/{}", a.address, a.prefix) } else { a.address.to_string() })
            .collect();
        let ns: Vec<String> = self.nameservers.iter().map(|a| a.to_string()).collect();
        let pages = |bytes: u64| bytes.div_ceil(4096);
        let header = format!(
            "# Container {} — made by p2c from a P2C move of source server {} ({}){}\n\
             # Review with `p2c status {}`; the guest's rewritten files are backed up in /etc/p2c/backup.\n",
            self.ctid,
            self.agent,
            if self.hostname.is_empty() { "unknown hostname" } else { &self.hostname },
            if self.created.is_empty() { String::new() } else { format!(" on {}", self.created) },
            self.ctid
        );
        kv("VE_ROOT", &format!("{vz}/root/$VEID"));
        kv("VE_PRIVATE", &format!("{vz}/private/$VEID"));
        if !versioned {
            kv("VE_LAYOUT", self.layout.as_str());
        }
        kv("OSTEMPLATE", &self.ostemplate);
        if versioned {
            kv("DISTRIBUTION", &self.distribution);
        }
        kv("HOSTNAME", &self.hostname);
        kv("IP_ADDRESS", &ips.join(" "));
        if !self.target.has_venet() {
            kv("NETIF", &vz9_netif(self.ctid));
        }
        kv("NAMESERVER", &ns.join(" "));
        kv("SEARCHDOMAIN", &self.search.join(" "));
        for (k, v) in &self.quota {
            kv(k, v);
        }
        kv("ONBOOT", "yes");
        kv("CPUUNITS", "1000");
        if self.cpus > 0 {
            kv("CPUS", &self.cpus.to_string());
        }
        kv("PHYSPAGES", &format!("0:{}", pages(self.memory_bytes).max(65536)));
        kv("SWAPPAGES", &format!("0:{}", pages(self.swap_bytes)));
        if !versioned {
            kv("ORIGIN_SAMPLE", &format!("p2c:{}", self.agent));
        }
        format!("{header}{out}")
    }
}

/// The `NETIF` entry libvzctl 8 makes for `IP_ADDRESS`: a routed veth whose container end is
/// `venet0`. Its MACs carry libvzctl's own prefix (`VZ_OUI` C4:37:72 in the container, FE:37:72
/// on the host end) and the host end is named, as libvzctl names it, `veth` and the last four
/// bytes of the container MAC. The last three bytes come from the CTID (its low 24 bits, the
/// top byte folded in), so they are stable and differ between containers whose CTIDs are
/// below 16777216.
pub fn vz9_netif(ctid: u32) -> String {
    let [top, a, b, c] = ctid.to_be_bytes();
    let tail = [a ^ top, b, c];
    let hex = |sep: &str, upper: bool| {
        tail.iter()
            .map(|x| if upper { format!("{x:02X}") } else { format!("{x:02x}") })
            .collect::<Vec<_>>()
            .join(sep)
    };
    format!(
        "ifname=venet0,mac=C4:37:72:{m},host_mac=FE:37:72:{m},host_ifname=veth72{h},type=routed",
        m = hex(":", true),
        h = hex("", false)
    )
}

/// Parses an OpenVZ config back into `KEY → value` (for tests and `p2c status`).
pub fn parse(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2c_common::inventory::{IfAddr, Interface};

    #[test]
    fn hostile_values_cannot_escape_the_quotes() {
        let mut inv = Inventory { hostname: "web\"; rm -rf / #$(x)`y`".into(), ..Default::default() };
        inv.os.id = "debian".into();
        inv.os.version_id = "12".into();
        inv.dns.search = vec!["ex$ample.com\nX=1".into()];
        let c = CtConf::from_inventory(101, "web01", Path::new("/vz"), Layout::Simfs, Target::Openvz, &inv);
        let text = c.render();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.split_once('=').unwrap();
            assert!(v.starts_with('"') && v.ends_with('"') && v.matches('"').count() == 2, "{line}");
            assert!(!v.contains('$') || v.contains("$VEID"), "{line}");
        }
        let kv = parse(&text);
        assert_eq!(kv["HOSTNAME"], "webrm-rfxy");
        assert_eq!(kv["SEARCHDOMAIN"], "example.comX1");
        assert_eq!(kv["OSTEMPLATE"], "debian-12-x86_64");
        assert_eq!(kv["VE_PRIVATE"], "/vz/private/$VEID");
    }

    #[test]
    fn every_address_v4_and_v6() {
        let mut inv = Inventory::default();
        let ifa = |a: &str| IfAddr { address: a.parse().unwrap(), prefix: 24 };
        inv.interfaces = vec![
            Interface {
                name: "lo".into(),
                loopback: true,
                addresses: vec![ifa("127.0.0.1")],
                ..Default::default()
            },
            Interface {
                name: "eth0".into(),
                addresses: vec![ifa("192.0.2.10"), ifa("fe80::1"), ifa("2001:db8::10")],
                ..Default::default()
            },
            Interface { name: "eth1".into(), addresses: vec![ifa("198.51.100.7")], ..Default::default() },
        ];
        let c = CtConf::from_inventory(101, "w", Path::new("/vz"), Layout::Simfs, Target::Openvz, &inv);
        assert_eq!(parse(&c.render())["IP_ADDRESS"], "192.0.2.10 2001:db8::10 198.51.100.7");
    }

    /// libvzctl 7 and 8's `config_param_map` (lib/env_config.c) and the keys it reads by
    /// name: what `vzctl register` and `vzctl start` understand in a `ve.conf`.
    const LIBVZCTL_KEYS: &[&str] = &[
        "IP_ADDRESS",
        "VE_ROOT",
        "VE_PRIVATE",
        "TEMPLATE",
        "TEMPLATES",
        "OSTEMPLATE",
        "NETIF",
        "DISK",
        "PHYSPAGES",
        "SWAPPAGES",
        "DISKSPACE",
        "DISKINODES",
        "QUOTAUGIDLIMIT",
        "JOURNALED_QUOTA",
        "QUOTATIME",
        "CPULIMIT",
        "CPUUNITS",
        "CPUS",
        "DISTRIBUTION",
        "FEATURES",
        "TECHNOLOGIES",
        "NAME",
        "ONBOOT",
        "DESCRIPTION",
        "HOSTNAME",
        "SEARCHDOMAIN",
        "NAMESERVER",
        "UUID",
        "OSRELEASE",
        "ORIGIN_SAMPLE",
        "VEID",
    ];
    /// Legacy vzctl 4.11's table (src/lib/config.c), the part p2c could write.
    const VZCTL4_KEYS: &[&str] = &[
        "VE_LAYOUT",
        "OSTEMPLATE",
        "VE_ROOT",
        "VE_PRIVATE",
        "HOSTNAME",
        "IP_ADDRESS",
        "NAMESERVER",
        "SEARCHDOMAIN",
        "DISKSPACE",
        "DISKINODES",
        "QUOTATIME",
        "QUOTAUGIDLIMIT",
        "ONBOOT",
        "CPUUNITS",
        "CPUS",
        "PHYSPAGES",
        "SWAPPAGES",
        "ORIGIN_SAMPLE",
        "NETIF",
        "VEID",
        "NAME",
    ];

    fn server() -> Inventory {
        let mut inv =
            Inventory { hostname: "web1".into(), cpus: 2, memory_bytes: 1 << 30, ..Default::default() };
        inv.os.id = "debian".into();
        inv.os.version_id = "12".into();
        inv.interfaces = vec![Interface {
            name: "eth0".into(),
            addresses: vec![
                IfAddr { address: "192.0.2.10".parse().unwrap(), prefix: 24 },
                IfAddr { address: "2001:db8::10".parse().unwrap(), prefix: 64 },
            ],
            ..Default::default()
        }];
        inv
    }

    #[test]
    fn each_target_gets_only_keys_its_parser_knows() {
        for (target, known) in
            [(Target::Openvz, VZCTL4_KEYS), (Target::Vz7, LIBVZCTL_KEYS), (Target::Vz9, LIBVZCTL_KEYS)]
        {
            for layout in [Layout::Simfs, Layout::Ploop] {
                let mut c = CtConf::from_inventory(101, "web1", Path::new("/vz"), layout, target, &server());
                c.quota = vec![("DISKSPACE".into(), "1:2".into()), ("QUOTAUGIDLIMIT".into(), "10".into())];
                let kv = parse(&c.render());
                for k in kv.keys() {
                    assert!(known.contains(&k.as_str()), "{target}/{layout}: {k} is not a key there");
                }
                assert_eq!(kv["ONBOOT"], "yes");
                assert_eq!(kv["PHYSPAGES"], "0:262144");
            }
        }
    }

    #[test]
    fn legacy_openvz_names_the_layout_and_bare_addresses() {
        let c =
            CtConf::from_inventory(101, "web1", Path::new("/vz"), Layout::Ploop, Target::Openvz, &server());
        let kv = parse(&c.render());
        assert_eq!(kv["VE_LAYOUT"], "ploop");
        assert_eq!(kv["IP_ADDRESS"], "192.0.2.10 2001:db8::10");
        assert_eq!(kv["ORIGIN_SAMPLE"], "p2c:web1");
        assert!(!kv.contains_key("DISTRIBUTION"), "vzctl 4 has no DISTRIBUTION key");
    }

    #[test]
    fn virtuozzo_gets_its_distribution_and_no_layout_key() {
        for target in [Target::Vz7, Target::Vz9] {
            let c = CtConf::from_inventory(101, "web1", Path::new("/vz"), Layout::Simfs, target, &server());
            let text = c.render();
            let kv = parse(&text);
            assert!(!kv.contains_key("VE_LAYOUT"), "{target}: the layout is the .ve.layout link");
            assert!(!kv.contains_key("VEID"), "{target}: vzctl register writes VEID itself");
            assert_eq!(kv["DISTRIBUTION"], "debian");
            assert_eq!(kv["OSTEMPLATE"], "debian-12-x86_64");
            let ips = if target == Target::Vz9 {
                "192.0.2.10/24 2001:db8::10/64"
            } else {
                "192.0.2.10 2001:db8::10"
            };
            assert_eq!(kv["IP_ADDRESS"], ips, "{target}: masks only on the routed veth");
            assert!(text.starts_with("# Container 101"), "the provenance stays in the header comment");
        }
    }

    #[test]
    fn virtuozzo_9_puts_the_addresses_on_a_routed_veth_named_venet0() {
        let c = CtConf::from_inventory(101, "web1", Path::new("/vz"), Layout::Simfs, Target::Vz9, &server());
        let kv = parse(&c.render());
        assert_eq!(
            kv["NETIF"],
            "ifname=venet0,mac=C4:37:72:00:00:65,host_mac=FE:37:72:00:00:65,host_ifname=veth72000065,type=routed"
        );
        // The IP list stays in IP_ADDRESS: libvzctl 8 syncs it into the venet0 entry.
        assert_eq!(kv["IP_ADDRESS"], "192.0.2.10/24 2001:db8::10/64");
        let other = vz9_netif(70000);
        assert!(other.contains("host_ifname=veth72011170,"), "{other}");
        assert!(other.split(',').all(|f| f.len() <= 30), "{other}");
        for t in [Target::Openvz, Target::Vz7] {
            let c = CtConf::from_inventory(101, "web1", Path::new("/vz"), Layout::Simfs, t, &server());
            assert!(!parse(&c.render()).contains_key("NETIF"), "{t} has venet");
        }
    }
}
