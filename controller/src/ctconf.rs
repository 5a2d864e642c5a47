//! The container config, `<conf_dir>/<CTID>.conf`, in OpenVZ format (`KEY="value"`).
//!
//! vzctl sources this file as shell, so every value that came from a source server is
//! reduced to a strict character set before it is written.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

use p2c_common::inventory::Inventory;
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
    pub addresses: Vec<IpAddr>,
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

/// Every address of the source, in interface order, loopback and link-local left out.
pub fn source_addresses(inv: &Inventory) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for i in inv.interfaces.iter().filter(|i| !i.loopback) {
        for a in &i.addresses {
            let ip = a.address;
            let skip = ip.is_loopback()
                || ip.is_unspecified()
                || matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
                || matches!(ip, IpAddr::V4(v4) if v4.is_link_local());
            if !skip && !out.contains(&ip) {
                out.push(ip);
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
        let ips: Vec<String> = self.addresses.iter().map(|a| a.to_string()).collect();
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
        kv("VE_LAYOUT", self.layout.as_str());
        kv("OSTEMPLATE", &self.ostemplate);
        kv("DISTRIBUTION", &self.distribution);
        kv("HOSTNAME", &self.hostname);
        kv("IP_ADDRESS", &ips.join(" "));
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
        kv("ORIGIN_SAMPLE", &format!("p2c:{}", self.agent));
        format!("{header}{out}")
    }

    /// Writes the config atomically (temporary file, then rename).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let tmp = path.with_extension("conf.p2c-new");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(self.render().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }
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
}
