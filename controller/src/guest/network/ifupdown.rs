//! Debian/Ubuntu ifupdown: `/etc/network/interfaces` and `interfaces.d/*`.
//!
//! Follows vzctl's `debian-add_ip.sh` (the release whose `functions` set
//! `FAKEGATEWAY=192.0.2.1`): `auto venet0` / `iface venet0 inet static` with address
//! 127.0.0.1, netmask 255.255.255.255, broadcast 0.0.0.0, a host route to the fake gateway
//! and the default route through it; one `auto venet0:N` / `iface venet0:N inet static`
//! stanza per IPv4 address; IPv6 in an `iface venet0 inet6 static` stanza. Where vzctl used
//! `route`/`ifconfig` in `up` lines this uses `ip` (iproute2), because net-tools is missing
//! from many current guests.
//!
//! Stanzas, `auto`/`allow-*` names and `mapping`s of the physical NICs are removed with the
//! comment lines right above them; everything else, comments included, stays. The venet0
//! part sits between two marker lines and is replaced as a whole on a later run. `dns-*`
//! options of removed stanzas (read by resolvconf) move to venet0.

use rustix::fs::FileType;

use super::{Nics, Plan, VENET, is_venet};
use crate::guest::GuestError;
use crate::guest::edit::{Editor, MARKER};
use crate::tree::rel;

const PATH: &str = "etc/network/interfaces";
const DIR: &str = "etc/network/interfaces.d";
/// First line of the generated part.
pub(crate) const BEGIN: &str = "# p2c venet0 begin";
/// Last line of the generated part.
pub(crate) const END: &str = "# p2c venet0 end";

pub(super) fn apply(ed: &mut Editor, plan: &Plan) -> Result<(), GuestError> {
    let path = rel(PATH);
    match ed.read(&path)? {
        Some(text) => {
            let out = rewrite(&text, plan);
            ed.rewrite(&path, plan.reason(&out.removed), |_| out.text)?;
        }
        None if plan.has_addresses() => {
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
}

/// The whole file: stripped, then the venet0 part appended.
pub(crate) fn rewrite(text: &str, plan: &Plan) -> Stripped {
    let mut out = strip(text, &plan.nics);
    if plan.has_addresses() {
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

/// The generated venet0 part, markers included.
pub(crate) fn block(plan: &Plan, dns: &[String], with_lo: bool) -> String {
    let gw = super::FAKE_GATEWAY;
    let mut s = format!(
        "{BEGIN}. {MARKER}: every address of this server is on {VENET}\n\
         # (OpenVZ venet: layer 3, point-to-point, no ARP, no DHCP). Everything up to the end\n\
         # marker is replaced when p2c runs again; the former file is in /etc/p2c/backup.\n"
    );
    if with_lo {
        s.push_str("auto lo\niface lo inet loopback\n\n");
    }
    s.push_str(&format!(
        "auto {VENET}\n\
         iface {VENET} inet static\n\
         \taddress 127.0.0.1\n\
         \tnetmask 255.255.255.255\n\
         \tbroadcast 0.0.0.0\n"
    ));
    if !plan.v4.is_empty() {
        s.push_str(&format!(
            "\tup ip route replace {gw}/32 dev {VENET} scope link\n\
             \tup ip route replace default via {gw} dev {VENET}\n"
        ));
    }
    for d in dns {
        s.push_str(&format!("\t{d}\n"));
    }
    if let Some((first, rest)) = plan.v6.split_first() {
        s.push_str(&format!("\niface {VENET} inet6 static\n\taddress {first}\n\tnetmask 128\n"));
        for a in rest {
            s.push_str(&format!("\tup ip -6 addr add {a}/128 dev {VENET}\n"));
        }
        s.push_str(&format!("\tup ip -6 route replace default dev {VENET}\n"));
    }
    for (name, a) in plan.aliases() {
        s.push_str(&format!(
            "\nauto {name}\n\
             iface {name} inet static\n\
             \taddress {a}\n\
             \tnetmask 255.255.255.255\n\
             \tbroadcast 0.0.0.0\n"
        ));
    }
    s.push_str(END);
    s.push('\n');
    s
}
