//! netplan (`/etc/netplan/*.yaml`).
//!
//! A small, tolerant, line-based reader rather than a YAML crate: netplan files use a tiny
//! block-style subset (nested mappings, `- ` lists, `[a, b]` flow lists, quoted scalars), the
//! agent must stay small and must not choke on a file that a full YAML parser would refuse
//! as a whole. Anchors, multi-line scalars and flow mappings are not understood (skipped).

use std::collections::BTreeMap;

use super::{IfaceConfig, NetConfig, normalize_mac, parse_cidr, parse_ip, truthy};

/// The device sections whose entries are interfaces.
const SECTIONS: &[&str] = &[
    "ethernets",
    "bonds",
    "bridges",
    "vlans",
    "wifis",
    "tunnels",
    "vrfs",
    "modems",
    "dummy-devices",
    "virtual-ethernets",
];

/// Deepest nesting followed (netplan's deepest keys are about 6 levels down).
const MAX_NESTING: usize = 32;

struct Node {
    indent: usize,
    key: String,
    is_item: bool,
    items: usize,
}

/// The scalars of a block-style YAML document, each with its path of keys. List items
/// appear as `#0`, `#1`... components; a key with no value on its line is reported with
/// an empty value (netplan writes addresses with options as such keys).
fn scalars(text: &str) -> Vec<(Vec<String>, String)> {
    let mut out = Vec::new();
    let mut stack: Vec<Node> = Vec::new();
    for raw in text.lines() {
        let line = strip_comment(raw);
        let content = line.trim();
        if content.is_empty() || content == "---" || content == "..." {
            continue;
        }
        // Deeper than any netplan key: skipped, so that odd input stays linear.
        if stack.len() >= MAX_NESTING {
            stack.truncate(MAX_NESTING - 1);
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let mut col = indent;
        let mut rest = content;
        if rest == "-" || rest.starts_with("- ") {
            while stack.last().is_some_and(|n| n.indent > col || (n.indent == col && n.is_item)) {
                stack.pop();
            }
            let idx = match stack.last_mut() {
                Some(parent) => {
                    parent.items += 1;
                    parent.items - 1
                }
                None => 0,
            };
            stack.push(Node { indent: col, key: format!("#{idx}"), is_item: true, items: 0 });
            let after = rest[1..].trim_start();
            col += rest.len() - after.len();
            rest = after;
            if rest.is_empty() {
                continue;
            }
            if split_key(rest).is_none() {
                out.push((path(&stack), unquote(rest)));
                continue;
            }
        }
        let Some((key, value)) = split_key(rest) else {
            continue;
        };
        // An anchor or tag alone (`eth1: &common`) opens a mapping like an empty value.
        let value = if value.starts_with(['&', '!']) && !value.contains(' ') { String::new() } else { value };
        while stack.last().is_some_and(|n| n.indent >= col) {
            stack.pop();
        }
        let mut p = path(&stack);
        p.push(key.clone());
        if value.is_empty() {
            out.push((p, String::new()));
            stack.push(Node { indent: col, key, is_item: false, items: 0 });
        } else if let Some(inner) = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
            for (i, v) in inner.split(',').map(str::trim).filter(|v| !v.is_empty()).enumerate() {
                let mut pi = p.clone();
                pi.push(format!("#{i}"));
                out.push((pi, unquote(v)));
            }
        } else {
            out.push((p, unquote(&value)));
        }
    }
    out
}

fn path(stack: &[Node]) -> Vec<String> {
    stack.iter().map(|n| n.key.clone()).collect()
}

/// `key: value` or `key:`; the key may be quoted. A plain scalar such as `fe80::1` is not
/// a key: YAML needs a blank (or the end of line) after the colon.
fn split_key(s: &str) -> Option<(String, String)> {
    let (k, v) = if let Some(k) = s.strip_suffix(':') {
        (k, "")
    } else {
        let i = s.find(": ")?;
        (&s[..i], s[i + 2..].trim())
    };
    let k = k.trim();
    if k.is_empty() {
        return None;
    }
    // A quoted key must be quoted as a whole (`"a: b"` is a scalar).
    if (k.starts_with('"') && !k.ends_with('"')) || (k.starts_with('\'') && !k.ends_with('\'')) {
        return None;
    }
    Some((unquote(k), v.to_string()))
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    for q in ['"', '\''] {
        if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
            return s[1..s.len() - 1].to_string();
        }
    }
    s.to_string()
}

/// Removes a `#` comment that starts a line or follows a blank, outside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev_blank = true;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') if prev_blank => quote = Some(c),
            (None, '#') if prev_blank => return &line[..i],
            _ => {}
        }
        prev_blank = c.is_whitespace();
    }
    line
}

#[derive(Default)]
struct Device {
    cfg: IfaceConfig,
    set_name: Option<String>,
    match_name: Option<String>,
}

/// Parses one netplan file read from `source`.
pub fn parse_netplan(text: &str, source: &str) -> NetConfig {
    let mut devices: BTreeMap<String, Device> = BTreeMap::new();
    let mut routes: BTreeMap<(String, String), (Option<String>, Option<String>)> = BTreeMap::new();
    let mut cfg = NetConfig::default();
    for (p, value) in scalars(text) {
        if p.len() < 4 || p[0] != "network" || !SECTIONS.contains(&p[1].as_str()) {
            continue;
        }
        let id = p[2].clone();
        let rest = &p[3..];
        let plain: Vec<&str> = rest.iter().map(String::as_str).filter(|c| !c.starts_with('#')).collect();
        let dev = devices.entry(id.clone()).or_insert_with(|| Device {
            cfg: IfaceConfig { name: id.clone(), source: source.to_string(), ..Default::default() },
            ..Default::default()
        });
        match plain.as_slice() {
            ["dhcp4"] => dev.cfg.dhcp4 = truthy(&value),
            ["dhcp6"] => dev.cfg.dhcp6 = truthy(&value),
            ["addresses"] if !value.is_empty() => {
                if let Some(a) = parse_cidr(&value) {
                    dev.cfg.add_address(a);
                }
            }
            // The mapping form: `- 10.0.0.1/24:` followed by options such as `lifetime`.
            ["addresses", a] if value.is_empty() => {
                if let Some(a) = parse_cidr(a) {
                    dev.cfg.add_address(a);
                }
            }
            ["gateway4" | "gateway6"] => {
                if let Some(g) = parse_ip(&value) {
                    dev.cfg.add_gateway(g);
                }
            }
            ["routes", field @ ("to" | "via")] => {
                let item = rest.get(1).cloned().unwrap_or_default();
                let r = routes.entry((id, item)).or_default();
                if *field == "to" {
                    r.0 = Some(value);
                } else {
                    r.1 = Some(value);
                }
            }
            ["nameservers", "addresses"]
                if !value.is_empty() && parse_ip(&value).is_some() && !cfg.nameservers.contains(&value) =>
            {
                cfg.nameservers.push(value);
            }
            ["nameservers", "search"] if !value.is_empty() && !cfg.search.contains(&value) => {
                cfg.search.push(value);
            }
            ["macaddress"] | ["match", "macaddress"] => {
                if let Some(m) = normalize_mac(&value) {
                    dev.cfg.mac = Some(m);
                }
            }
            ["mtu"] => dev.cfg.mtu = value.parse().ok(),
            ["set-name"] if !value.is_empty() => dev.set_name = Some(value),
            ["match", "name"] if !value.is_empty() => dev.match_name = Some(value),
            _ => {}
        }
    }
    for ((id, _), (to, via)) in routes {
        let default = matches!(to.as_deref(), Some("default" | "0.0.0.0/0" | "::/0" | "0/0"));
        if let (true, Some(g)) = (default, via.as_deref().and_then(parse_ip))
            && let Some(d) = devices.get_mut(&id)
        {
            d.cfg.add_gateway(g);
        }
    }
    for (_, mut d) in devices {
        if let Some(n) = d.set_name.or(d.match_name) {
            d.cfg.name = n;
        }
        cfg.merge(NetConfig { interfaces: vec![d.cfg], ..Default::default() });
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_is_bounded() {
        let deep: String = (0..5000).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect();
        let s = scalars(&deep);
        assert!(s.iter().all(|(p, _)| p.len() <= MAX_NESTING));
    }

    #[test]
    fn scalar_paths() {
        let s = scalars(
            "a:\n  b: 1 # c\n  l:\n  - x\n  - 'y # z'\n  m:\n    - k: 1\n      j: 2\n    - k: 3\n  f: [p, \"q\"]\n",
        );
        let flat: Vec<String> =
            s.iter().filter(|(_, v)| !v.is_empty()).map(|(p, v)| format!("{}={v}", p.join("/"))).collect();
        assert_eq!(
            flat,
            vec![
                "a/b=1",
                "a/l/#0=x",
                "a/l/#1=y # z",
                "a/m/#0/k=1",
                "a/m/#0/j=2",
                "a/m/#1/k=3",
                "a/f/#0=p",
                "a/f/#1=q"
            ]
        );
    }
}
