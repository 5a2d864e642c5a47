//! Finds and reads every network configuration file of a tree.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::super::fsread::{self, CONFIG_CAP};
use super::{
    NetConfig, glob_match, ifupdown_includes, parse_ifcfg_rhel, parse_ifcfg_suse, parse_ifupdown,
    parse_netplan, parse_networkd, parse_nm_keyfile, parse_rhel_network, parse_suse_routes,
};

/// Most files read (an `interfaces` that sources itself in a loop ends here).
const MAX_FILES: usize = 512;
/// Deepest `source` nesting followed.
const MAX_DEPTH: usize = 8;

struct Reader<'a> {
    root: &'a Path,
    cfg: NetConfig,
    gaps: Vec<String>,
    seen: HashSet<PathBuf>,
}

/// The network configuration of the tree at `root` from every family found in it, and a
/// line for each file that could not be read.
pub fn read_tree(root: &Path) -> (NetConfig, Vec<String>) {
    let mut r = Reader { root, cfg: NetConfig::default(), gaps: Vec::new(), seen: HashSet::new() };
    r.ifupdown("/etc/network/interfaces", 0);
    for name in r.names("/etc/network/interfaces.d", |_| true) {
        r.ifupdown(&format!("/etc/network/interfaces.d/{name}"), 0);
    }
    r.each(
        "/etc/netplan",
        |n| n.ends_with(".yaml") || n.ends_with(".yml"),
        |t, src, _| parse_netplan(t, src),
    );
    r.each("/etc/systemd/network", |n| n.ends_with(".network"), |t, src, _| parse_networkd(t, src));
    r.each(
        "/etc/NetworkManager/system-connections",
        |n| n.ends_with(".nmconnection"),
        |t, src, _| parse_nm_keyfile(t, src),
    );
    r.each(
        "/etc/sysconfig/network-scripts",
        |n| n.starts_with("ifcfg-"),
        |t, src, n| parse_ifcfg_rhel(t, &n["ifcfg-".len()..], src),
    );
    if fsread::below(root, "/etc/sysconfig/network").is_file() {
        r.one("/etc/sysconfig/network", parse_rhel_network);
    } else {
        r.each(
            "/etc/sysconfig/network",
            |n| n.starts_with("ifcfg-"),
            |t, src, n| parse_ifcfg_suse(t, &n["ifcfg-".len()..], src),
        );
        r.each(
            "/etc/sysconfig/network",
            |n| n == "routes" || n.starts_with("ifroute-"),
            |t, _, n| suse_routes(t, n.strip_prefix("ifroute-")),
        );
    }
    (r.cfg, r.gaps)
}

fn suse_routes(text: &str, dev: Option<&str>) -> NetConfig {
    let mut cfg = NetConfig::default();
    for r in parse_suse_routes(text, dev) {
        if r.destination != "default" {
            continue;
        }
        match r.interface {
            Some(d) => cfg.iface_mut(&d, "/etc/sysconfig/network/routes").add_gateway(r.gateway),
            None => cfg.gateways.push(r.gateway),
        }
    }
    cfg
}

/// Editor and package-manager leftovers that the network tools ignore.
fn is_leftover(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || [
            ".bak",
            ".orig",
            ".rpmnew",
            ".rpmsave",
            ".rpmorig",
            ".dpkg-old",
            ".dpkg-dist",
            ".dpkg-new",
            ".swp",
            ".old",
            ".save",
        ]
        .iter()
        .any(|s| name.ends_with(s))
}

impl Reader<'_> {
    /// Names in the source directory `dir` accepted by `keep`, leftovers excluded.
    fn names(&mut self, dir: &str, keep: impl Fn(&str) -> bool) -> Vec<String> {
        match fsread::list_dir(&fsread::below(self.root, dir)) {
            Ok(names) => names
                .into_iter()
                .filter_map(|n| n.into_string().ok())
                .filter(|n| !is_leftover(n) && keep(n))
                .collect(),
            Err(e) => {
                self.gaps.push(format!("network configuration: {e}"));
                Vec::new()
            }
        }
    }

    /// Reads the source file `abs` once; `None` if missing, unreadable (noted) or seen.
    fn text(&mut self, abs: &str) -> Option<String> {
        let p = fsread::below(self.root, abs);
        if self.seen.len() >= MAX_FILES || !self.seen.insert(p.clone()) || p.is_dir() {
            return None;
        }
        match fsread::read_text_opt(&p, CONFIG_CAP) {
            Ok(t) => t,
            Err(e) => {
                self.gaps.push(format!("network configuration: {e}"));
                None
            }
        }
    }

    fn one(&mut self, abs: &str, parse: impl Fn(&str, &str) -> NetConfig) {
        if let Some(t) = self.text(abs) {
            self.cfg.merge(parse(&t, abs));
        }
    }

    fn each(
        &mut self,
        dir: &str,
        keep: impl Fn(&str) -> bool,
        parse: impl Fn(&str, &str, &str) -> NetConfig,
    ) {
        for name in self.names(dir, keep) {
            let abs = format!("{dir}/{name}");
            if let Some(t) = self.text(&abs) {
                self.cfg.merge(parse(&t, &abs, &name));
            }
        }
    }

    fn ifupdown(&mut self, abs: &str, depth: usize) {
        let Some(t) = self.text(abs) else {
            return;
        };
        self.cfg.merge(parse_ifupdown(&t, abs));
        if depth >= MAX_DEPTH {
            return;
        }
        for (is_dir, inc) in ifupdown_includes(&t) {
            let inc = if inc.starts_with('/') { inc } else { format!("/etc/network/{inc}") };
            if is_dir {
                let only_plain =
                    |n: &str| n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                for n in self.names(&inc, only_plain) {
                    self.ifupdown(&format!("{inc}/{n}"), depth + 1);
                }
                continue;
            }
            match inc.rsplit_once('/') {
                Some((dir, pat)) if pat.contains(['*', '?']) => {
                    let dir = if dir.is_empty() { "/" } else { dir };
                    for n in self.names(dir, |n| glob_match(pat, n)) {
                        self.ifupdown(&format!("{}/{n}", dir.trim_end_matches('/')), depth + 1);
                    }
                }
                _ => self.ifupdown(&inc, depth + 1),
            }
        }
    }
}
