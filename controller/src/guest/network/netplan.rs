//! Ubuntu's netplan: `/etc/netplan/*.yaml`.
//!
//! The device sections (`ethernets`, `wifis`, `bonds`, `bridges`, `vlans`, `modems`) of
//! every file go — they describe the server's hardware and what is built on it; a file
//! left with nothing but `version`/`renderer` is removed. The edit is line-based on the
//! block-style YAML netplan files use (a section is its key line and every deeper-indented
//! line after it), so comments and the other sections stay as they were; a file in flow
//! style that has device sections is removed whole.
//!
//! Where netplan brings venet0 up it gets its own file, `90-p2c-venet0.yaml`, in the
//! shape Virtuozzo's netplan helper writes (`ethernets: <dev>:` with `addresses`,
//! `dhcp4`/`dhcp6` off), rendered by systemd-networkd, with what [`super::networkd`] writes:
//! venet (openvz, vz7) /32 and /128 addresses, no link-local addresses and device default
//! routes (`scope: link`, which netplan accepts without `via`); the routed veth (vz9) the
//! addresses with their masks, IPv6 link-local on, `default dev venet0` and the IPv6
//! default route via `fe80::ffff:1:1` `on-link`.

use rustix::fs::FileType;

use super::owner::Configures;
use super::{Plan, ROUTED_GW6, VENET, is_venet};
use crate::guest::GuestError;
use crate::guest::edit::{Editor, MARKER};
use crate::tree::rel;

const DIR: &str = "etc/netplan";
/// venet0's file; netplan reads the files in name order, later ones win.
pub(crate) const OURS: &str = "90-p2c-venet0.yaml";
const DEVICE_KEYS: [&str; 6] = ["ethernets", "wifis", "bonds", "bridges", "vlans", "modems"];

/// What netplan's files define: the server's devices, venet0 (p2c's file or another's).
pub(super) fn configures(ed: &Editor) -> Result<Configures, GuestError> {
    let mut c = Configures::default();
    for e in ed.entries(DIR)? {
        if !e.name.ends_with(".yaml") || e.kind != Some(FileType::RegularFile) {
            continue;
        }
        if let Some(text) = ed.read(&e.path)? {
            let out = strip(&text);
            let venet = e.name == OURS || out.devices.iter().any(|d| is_venet(d));
            let nics =
                out.devices.iter().any(|d| !is_venet(d)) || (out.empty && out.text != text && e.name != OURS);
            c.add(Configures { nics, venet });
        }
    }
    Ok(c)
}

/// Strips the device sections; `own`: venet0 gets [`OURS`], else an earlier run's goes.
pub(super) fn apply(ed: &mut Editor, plan: &Plan, own: bool) -> Result<(), GuestError> {
    for e in ed.entries(DIR)? {
        if e.name == OURS || !e.name.ends_with(".yaml") {
            continue;
        }
        if e.kind.is_some_and(|k| k != FileType::RegularFile) {
            continue;
        }
        let Some(text) = ed.read(&e.path)? else {
            ed.remove(&e.path, "")?;
            continue;
        };
        let out = strip(&text);
        let reason = plan.nics.reason(&out.devices);
        if out.text != text && out.empty {
            ed.remove(&e.path, reason)?;
        } else {
            ed.rewrite(&e.path, reason, |_| out.text)?;
        }
    }
    let path = rel(&format!("{DIR}/{OURS}"));
    if own && plan.has_addresses() {
        // netplan warns about configs others can read.
        ed.write(&path, &render(plan), 0o600, plan.summary())?;
    } else {
        ed.remove(&path, plan.not_here())?;
    }
    Ok(())
}

/// A netplan file without its device sections.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Stripped {
    pub(crate) text: String,
    /// Names of the devices whose definitions went.
    pub(crate) devices: Vec<String>,
    /// Whether nothing but `version`/`renderer` is left.
    pub(crate) empty: bool,
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn key(line: &str) -> &str {
    let t = line.trim_start().trim_start_matches("- ");
    t.split(':').next().unwrap_or_default().trim().trim_matches(['"', '\''])
}

fn is_filler(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

pub(crate) fn strip(text: &str) -> Stripped {
    let lines: Vec<&str> = text.lines().collect();
    let unchanged = || Stripped { text: text.to_string(), devices: Vec::new(), empty: false };
    let Some(net) = lines.iter().position(|l| indent(l) == 0 && key(l) == "network") else {
        return unchanged();
    };
    let inline = lines[net]
        .split_once(':')
        .map(|(_, v)| v.split('#').next().unwrap_or_default().trim())
        .unwrap_or_default();
    if !inline.is_empty() {
        // Flow style: `network: {ethernets: {...}}`.
        if DEVICE_KEYS.iter().any(|k| inline.contains(k)) {
            return Stripped { text: String::new(), devices: Vec::new(), empty: true };
        }
        return unchanged();
    }
    let Some(child) = lines[net + 1..].iter().find(|l| !is_filler(l)).map(|l| indent(l)).filter(|i| *i > 0)
    else {
        return unchanged();
    };
    let mut out: Vec<&str> = lines[..=net].to_vec();
    let mut devices = Vec::new();
    let mut other = false;
    let mut skipping = false;
    let mut device_indent = None;
    // Comment lines wait to see whether the section they stand above goes.
    let mut pending: Vec<&str> = Vec::new();
    let mut j = net + 1;
    while j < lines.len() {
        let l = lines[j];
        j += 1;
        if !is_filler(l) && indent(l) == 0 {
            // Past the `network:` mapping.
            out.append(&mut pending);
            out.extend(&lines[j - 1..]);
            other = true;
            break;
        }
        if skipping && (l.trim().is_empty() || indent(l) > child) {
            if !is_filler(l) {
                let d = *device_indent.get_or_insert(indent(l));
                if indent(l) == d {
                    devices.push(key(l).to_string());
                }
            }
            continue;
        }
        if is_filler(l) {
            skipping = false;
            pending.push(l);
            continue;
        }
        if indent(l) == child {
            skipping = DEVICE_KEYS.contains(&key(l));
            device_indent = None;
            if skipping {
                pending.retain(|p| p.trim().is_empty());
                continue;
            }
            if !matches!(key(l), "version" | "renderer") {
                other = true;
            }
        }
        out.append(&mut pending);
        out.push(l);
    }
    out.append(&mut pending);
    if devices.is_empty() && out.len() == lines.len() {
        return unchanged();
    }
    let mut text = out.join("\n");
    text.push('\n');
    Stripped { text, devices, empty: !other }
}

/// venet0's netplan file.
pub(crate) fn render(plan: &Plan) -> String {
    let routed = plan.routed();
    let mut s = format!(
        "# {MARKER}: every address of this server is on {VENET} ({});\n\
         # the default routes go through {VENET}.\n\
         # The server's former netplan files are in /etc/p2c/backup/etc/netplan.\n\
         network:\n  version: 2\n  ethernets:\n    {VENET}:\n      renderer: networkd\n      \
         dhcp4: false\n      dhcp6: false\n      accept-ra: false\n      link-local: [{}]\n      \
         addresses:\n",
        if routed {
            "Virtuozzo 9: a routed veth,\n# the host routes each address to it"
        } else {
            "OpenVZ venet:\n# layer 3, point-to-point, no ARP, no DHCP"
        },
        if routed { "ipv6" } else { "" }
    );
    for (a, p) in &plan.v4 {
        s.push_str(&format!("        - {a}/{p}\n"));
    }
    for (a, p) in &plan.v6 {
        s.push_str(&format!("        - \"{a}/{p}\"\n"));
    }
    s.push_str("      routes:\n");
    if !plan.v4.is_empty() {
        s.push_str("        - to: 0.0.0.0/0\n          scope: link\n");
    }
    if !plan.v6.is_empty() {
        if routed {
            s.push_str(&format!(
                "        - to: \"::/0\"\n          via: \"{ROUTED_GW6}\"\n          on-link: true\n"
            ));
        } else {
            s.push_str("        - to: \"::/0\"\n          scope: link\n");
        }
    }
    if !plan.nameservers.is_empty() || !plan.search.is_empty() {
        s.push_str("      nameservers:\n");
        if !plan.search.is_empty() {
            s.push_str(&format!("        search: [{}]\n", plan.search.join(", ")));
        }
        if !plan.nameservers.is_empty() {
            s.push_str(&format!("        addresses: [{}]\n", plan.nameservers.join(", ")));
        }
    }
    s
}
