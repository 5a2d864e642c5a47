//! Debian/Ubuntu ifupdown: `/etc/network/interfaces` and `interfaces.d/*`.
//!
//! venet0's stanzas follow the target's `debian-add_ip.sh` / `debian-add_netif.sh` (see
//! [`block`]). Where a script runs `route`/`ifconfig` in an `up` line this uses `ip`
//! (iproute2) to the same effect, because net-tools is missing from many current guests.
//!
//! Stanzas, `auto`/`allow-*` names and `mapping`s of the physical NICs are removed with the
//! comment lines right above them; everything else, comments included, stays. The venet0
//! part sits between two marker lines and is replaced as a whole on a later run, or taken
//! out where another stack brings venet0 up. `dns-*` options of removed stanzas (read by
//! resolvconf) move to venet0.

use p2c_common::migration::Target;
use rustix::fs::FileType;

use super::owner::Configures;
use super::{Nics, Plan, ROUTED_GW6, ROUTED_UUID, VENET, is_venet, netmask};
use crate::guest::GuestError;
use crate::guest::edit::{Editor, MARKER};
use crate::tree::rel;

const PATH: &str = "etc/network/interfaces";
const DIR: &str = "etc/network/interfaces.d";
/// First line of the generated part.
pub(crate) const BEGIN: &str = "# p2c venet0 begin";
/// Last line of the generated part.
pub(crate) const END: &str = "# p2c venet0 end";

/// Strips the NICs from ifupdown's files; `own`: venet0's stanzas go into
/// `/etc/network/interfaces` (created if missing), else any there are taken out.
pub(super) fn apply(ed: &mut Editor, plan: &Plan, own: bool) -> Result<(), GuestError> {
    let path = rel(PATH);
    match ed.read(&path)? {
        Some(text) => {
            let out = rewrite(&text, plan, own);
            let reason = if own {
                plan.reason(&out.removed)
            } else if out.removed.is_empty() {
                plan.not_here()
            } else {
                plan.nics.reason(&out.removed)
            };
            ed.rewrite(&path, reason, |_| out.text)?;
        }
        None if own && plan.has_addresses() => {
            ed.write(&path, &block(plan, &[], true), 0o644, plan.summary())?;
        }
        None => {}
    }
    for e in ed.entries(DIR)? {
        if e.kind.is_some_and(|k| k != FileType::RegularFile) {
            continue;
        }
        let Some(text) = ed.read(&e.path)? else {
            // Removed by an earlier run.
            ed.remove(&e.path, "")?;
            continue;
        };
        let out = strip(&text, &plan.nics);
        let reason = plan.nics.reason(&out.removed);
        if out.text != text && !out.has_config {
            ed.remove(&e.path, reason)?;
        } else {
            ed.rewrite(&e.path, reason, |_| out.text)?;
        }
    }
    Ok(())
}

/// A config with the physical NICs' and venet0's stanzas taken out.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Stripped {
    pub(crate) text: String,
    /// Physical interface names whose stanzas or `auto` entries went.
    pub(crate) removed: Vec<String>,
    /// `dns-*` option lines of the stanzas that went (trimmed, each once).
    pub(crate) dns: Vec<String>,
    /// Whether anything but comments and blank lines is left.
    pub(crate) has_config: bool,
    /// Whether an `iface lo` stanza is left.
    pub(crate) has_lo: bool,
    /// Whether venet0's stanzas (p2c's part or another's) went.
    pub(crate) venet: bool,
}

/// What ifupdown's files configure: one of the server's NICs, venet0.
pub(super) fn configures(ed: &Editor, nics: &Nics) -> Result<Configures, GuestError> {
    let mut paths = vec![rel(PATH)];
    paths.extend(
        ed.entries(DIR)?.into_iter().filter(|e| e.kind == Some(FileType::RegularFile)).map(|e| e.path),
    );
    let mut c = Configures::default();
    for p in &paths {
        if let Some(text) = ed.read(p)? {
            let out = strip(&text, nics);
            c.add(Configures { nics: !out.removed.is_empty(), venet: out.venet });
        }
    }
    Ok(c)
}

/// The whole file: stripped, then (`own`) the venet0 part appended.
pub(crate) fn rewrite(text: &str, plan: &Plan, own: bool) -> Stripped {
    let mut out = strip(text, &plan.nics);
    if own && plan.has_addresses() {
        if !out.text.is_empty() {
            out.text.push('\n');
        }
        out.text.push_str(&block(plan, &out.dns, !out.has_lo));
    }
    out
}

fn is_keyword(word: &str) -> bool {
    matches!(
        word,
        "iface"
            | "mapping"
            | "auto"
            | "source"
            | "source-directory"
            | "rename"
            | "no-auto-down"
            | "no-scripts"
            | "template"
    ) || word.starts_with("allow-")
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

fn is_blank(line: &str) -> bool {
    line.trim().is_empty()
}

/// Starts a new top-level item (ends the stanza before it).
fn starts_item(line: &str) -> bool {
    let t = line.trim();
    t.starts_with(BEGIN) || is_keyword(t.split_whitespace().next().unwrap_or_default())
}

pub(crate) fn strip(text: &str, nics: &Nics) -> Stripped {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = Vec::new();
    let mut st = Stripped::default();
    let mut dropped = false;
    let gone = |n: &str| nics.is_physical(n) || is_venet(n);
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim();
        if t.starts_with(BEGIN) {
            // The part an earlier run generated: replaced as a whole.
            dropped = true;
            st.venet = true;
            while i < lines.len() && !lines[i].trim().starts_with(END) {
                collect_dns(lines[i], &mut st.dns);
                i += 1;
            }
            i += 1;
            continue;
        }
        let words: Vec<&str> = t.split_whitespace().collect();
        let word = words.first().copied().unwrap_or_default();
        if t.is_empty() || t.starts_with('#') || !is_keyword(word) {
            out.push(line.to_string());
            i += 1;
            continue;
        }
        if word == "iface" || word == "mapping" {
            let mut end = i + 1;
            while end < lines.len() && !starts_item(lines[end]) {
                end += 1;
            }
            // Blank lines and unindented comments after the options belong to what follows.
            while end > i + 1 && (is_blank(lines[end - 1]) || lines[end - 1].starts_with('#')) {
                end -= 1;
            }
            let names: &[&str] = if word == "iface" {
                words.get(1..2).unwrap_or_default()
            } else {
                words.get(1..).unwrap_or_default()
            };
            if names.iter().any(|n| gone(n)) {
                dropped = true;
                st.venet |= names.iter().any(|n| is_venet(n));
                drop_attached_comments(&mut out);
                note_removed(names, nics, &mut st.removed);
                for l in &lines[i + 1..end] {
                    collect_dns(l, &mut st.dns);
                }
            } else {
                out.extend(lines[i..end].iter().map(|l| l.to_string()));
            }
            i = end;
            continue;
        }
        if word == "auto" || word.starts_with("allow-") {
            let names = &words[1..];
            let keep: Vec<&str> = names.iter().copied().filter(|n| !gone(n)).collect();
            if keep.len() != names.len() {
                dropped = true;
                st.venet |= names.iter().any(|n| is_venet(n));
                note_removed(names, nics, &mut st.removed);
                if keep.is_empty() {
                    drop_attached_comments(&mut out);
                } else {
                    out.push(format!("{word} {}", keep.join(" ")));
                }
            } else {
                out.push(line.to_string());
            }
            i += 1;
            continue;
        }
        out.push(line.to_string());
        i += 1;
    }
    st.has_config = out.iter().any(|l| !is_blank(l) && !is_comment(l));
    st.has_lo = out.iter().any(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        w.first() == Some(&"iface") && w.get(1) == Some(&"lo")
    });
    st.text = if dropped { tidy(&out) } else { text.to_string() };
    st
}

/// Comment lines right above an item that goes belong to it.
fn drop_attached_comments(out: &mut Vec<String>) {
    while out.last().is_some_and(|l| is_comment(l)) {
        out.pop();
    }
}

fn note_removed(names: &[&str], nics: &Nics, removed: &mut Vec<String>) {
    for n in names {
        if nics.is_physical(n) && !removed.iter().any(|r| r == n) {
            removed.push(n.to_string());
        }
    }
}

fn collect_dns(line: &str, dns: &mut Vec<String>) {
    let t = line.trim();
    if t.starts_with("dns-") && !dns.iter().any(|d| d == t) {
        dns.push(t.to_string());
    }
}

/// Lines joined, runs of blank lines made one, none at either end.
fn tidy(lines: &[String]) -> String {
    let mut s = String::new();
    let mut blank = true;
    for l in lines {
        if is_blank(l) {
            if !blank {
                s.push('\n');
            }
            blank = true;
        } else {
            s.push_str(l);
            s.push('\n');
            blank = false;
        }
    }
    while s.ends_with("\n\n") {
        s.pop();
    }
    s
}

/// The generated venet0 part, markers included: the target's script's stanzas.
pub(crate) fn block(plan: &Plan, dns: &[String], with_lo: bool) -> String {
    let mut s = format!(
        "{BEGIN}. {MARKER}: every address of this server is on {VENET}\n\
         # ({}). Everything up to the end\n\
         # marker is replaced when p2c runs again; the former file is in /etc/p2c/backup.\n",
        if plan.routed() {
            "Virtuozzo 9: a routed veth, the host routes each address to it"
        } else {
            "OpenVZ venet: layer 3, point-to-point, no ARP, no DHCP"
        }
    );
    if with_lo {
        s.push_str("auto lo\niface lo inet loopback\n\n");
    }
    match plan.target {
        Target::Openvz => legacy(&mut s, plan, dns),
        Target::Vz7 => vz7(&mut s, plan, dns),
        Target::Vz9 => routed(&mut s, plan, dns),
    }
    while s.ends_with("\n\n") {
        s.pop();
    }
    s.push_str(END);
    s.push('\n');
    s
}

/// vzctl 4.11 `debian-add_ip.sh` `setup_network` and `create_config`: venet0 `inet manual`
/// (`up ifconfig venet0 up`, `up ifconfig venet0 127.0.0.2`, `up route add default dev
/// venet0` and the `down` lines undoing them), IPv6 in `iface venet0 inet6 manual` (`up
/// ifconfig venet0 add <ip>/<mask>`, `up route -A inet6 add default dev venet0`), one
/// `venet0:N` `inet static` stanza per IPv4 address with its netmask.
fn legacy(s: &mut String, plan: &Plan, dns: &[String]) {
    s.push_str(&format!(
        "auto {VENET}\n\
         iface {VENET} inet manual\n\
         \tup ip link set {VENET} up\n\
         \tup ip addr add 127.0.0.2/32 dev {VENET}\n"
    ));
    if !plan.v4.is_empty() {
        s.push_str(&format!(
            "\tup ip route add default dev {VENET}\n\tdown ip route del default dev {VENET}\n"
        ));
    }
    s.push_str(&format!("\tdown ip link set {VENET} down\n"));
    push_dns(s, dns);
    if !plan.v6.is_empty() {
        s.push_str(&format!("\niface {VENET} inet6 manual\n"));
        for (a, p) in &plan.v6 {
            s.push_str(&format!(
                "\tup ip -6 addr add {a}/{p} dev {VENET}\n\tdown ip -6 addr del {a}/{p} dev {VENET}\n"
            ));
        }
        s.push_str(&format!(
            "\tup ip -6 route add default dev {VENET}\n\tdown ip -6 route del default dev {VENET}\n"
        ));
    }
    for (name, a, p) in plan.aliases() {
        s.push_str(&format!(
            "\nauto {name}\niface {name} inet static\n\taddress {a}\n\tnetmask {}\n",
            netmask(p)
        ));
    }
    s.push('\n');
}

/// libvzctl 7 `debian-add_ip.sh` `setup_network` and `add_ip`: venet0 `inet static` with
/// 127.0.0.1/255.255.255.255, broadcast 0.0.0.0 and `up route add default dev venet0`; one
/// `venet0:N` stanza per IPv4 address (`netmask 255.255.255.255` without a mask); IPv6 by
/// `functions` `add_debian_ip6`: `iface venet0 inet6 static`, `address <ip>/128`, further
/// addresses as `up ip addr add <ip> dev venet0`, `up ip -6 r a default dev venet0`.
fn vz7(s: &mut String, plan: &Plan, dns: &[String]) {
    s.push_str(&format!(
        "auto {VENET}\n\
         iface {VENET} inet static\n\
         \taddress 127.0.0.1\n\
         \tnetmask 255.255.255.255\n\
         \tbroadcast 0.0.0.0\n"
    ));
    if !plan.v4.is_empty() {
        s.push_str(&format!("\tup ip route add default dev {VENET}\n"));
    }
    push_dns(s, dns);
    if let Some(((first, fp), rest)) = plan.v6.split_first() {
        s.push_str(&format!("\niface {VENET} inet6 static\n\taddress {first}/{fp}\n"));
        for (a, p) in rest {
            s.push_str(&format!("\tup ip addr add {a}/{p} dev {VENET}\n"));
        }
        s.push_str(&format!("\tup ip -6 r a default dev {VENET}\n"));
    }
    for (name, a, p) in plan.aliases() {
        s.push_str(&format!(
            "\nauto {name}\niface {name} inet static\n\taddress {a}\n\tnetmask {}\n",
            netmask(p)
        ));
    }
    s.push('\n');
}

/// libvzctl 8 `debian-add_netif.sh` with `NETWORK_TYPE=routed` (`add_ip`, `add_ip6_alias`,
/// `get_free_aliasid`): the first IPv4 address on venet0 itself with its netmask, the
/// routed mark `#<ROUTED_UUID> venet0` and `up ip route add default dev venet0`; the others
/// on `venet0:0`, `venet0:1`...; the first IPv6 address in `iface venet0 inet6 static` with
/// `netmask 128`, the mark, `up ip -6 route add fe80::ffff:1:1 dev venet0` and `up ip -6
/// route add default via fe80::ffff:1:1 dev venet0`, the others as `up ip addr add <ip>/128
/// dev venet0`.
fn routed(s: &mut String, plan: &Plan, dns: &[String]) {
    s.push_str(&format!("auto {VENET}\n"));
    if let Some(((a, p), _)) = plan.v4.split_first() {
        s.push_str(&format!(
            "iface {VENET} inet static\n\
             \taddress {a}\n\
             \tnetmask {}\n\
             \t#{ROUTED_UUID} {VENET}\n\
             \tup ip route add default dev {VENET}\n",
            netmask(*p)
        ));
        push_dns(s, dns);
        s.push('\n');
    }
    if let Some(((a, p), rest)) = plan.v6.split_first() {
        s.push_str(&format!(
            "iface {VENET} inet6 static\n\
             \taddress {a}\n\
             \tnetmask {p}\n\
             \t#{ROUTED_UUID} {VENET}\n\
             \tup ip -6 route add {ROUTED_GW6} dev {VENET}\n\
             \tup ip -6 route add default via {ROUTED_GW6} dev {VENET}\n"
        ));
        for (a, p) in rest {
            s.push_str(&format!("\tup ip addr add {a}/{p} dev {VENET}\n"));
        }
        if plan.v4.is_empty() {
            push_dns(s, dns);
        }
        s.push('\n');
    }
    // The first IPv4 address is on venet0 itself: the others are venet0:0, venet0:1...
    for (i, (a, p)) in plan.v4.iter().skip(1).enumerate() {
        s.push_str(&format!(
            "auto {VENET}:{i}\niface {VENET}:{i} inet static\n\taddress {a}\n\tnetmask {}\n\n",
            netmask(*p)
        ));
    }
}

fn push_dns(s: &mut String, dns: &[String]) {
    for d in dns {
        s.push_str(&format!("\t{d}\n"));
    }
}
