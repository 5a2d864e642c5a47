//! Distribution, host name and kernel of the source.
//!
//! The distribution comes from os-release (or, on servers older than os-release, from
//! `/etc/redhat-release`, `/etc/SuSE-release`, `/etc/debian_version`...). The kernel is
//! the running one for live facts; for a tree it is the newest one installed in it.

use std::cmp::Ordering;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use p2c_common::inventory::{KernelInfo, OsFamily, OsInfo};

use super::fsread::{self, CONFIG_CAP, ReadError};
use super::shellvars;

/// Parses os-release(5).
pub fn parse_os_release(text: &str) -> OsInfo {
    let vars = shellvars::parse(text);
    let get = |k: &str| shellvars::get(&vars, k).unwrap_or("").to_string();
    let id = get("ID").to_ascii_lowercase();
    let id_like: Vec<String> = get("ID_LIKE").split_whitespace().map(str::to_ascii_lowercase).collect();
    OsInfo {
        family: OsFamily::classify(&id, &id_like),
        id,
        id_like,
        name: get("NAME"),
        version_id: get("VERSION_ID"),
        pretty_name: get("PRETTY_NAME"),
        windows_version: None,
    }
}

/// Parses the one-line release files of distributions older than os-release, named by
/// `file` (`redhat-release`, `SuSE-release`, `debian_version`...).
pub fn parse_legacy_release(file: &str, text: &str) -> Option<OsInfo> {
    let first = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let version = first_version(first);
    let (id, name) = match file {
        "redhat-release" | "centos-release" => {
            let lower = first.to_ascii_lowercase();
            let id = if lower.starts_with("centos") {
                "centos"
            } else if lower.starts_with("fedora") {
                "fedora"
            } else if lower.starts_with("cloudlinux") {
                "cloudlinux"
            } else if lower.starts_with("scientific") {
                "scientific"
            } else if lower.starts_with("virtuozzo") {
                "virtuozzo"
            } else {
                "rhel"
            };
            let name = first.split(" release").next().unwrap_or(first).to_string();
            (id, name)
        }
        "SuSE-release" => {
            let lower = first.to_ascii_lowercase();
            let id = if lower.contains("opensuse") { "opensuse" } else { "sles" };
            let vars = shellvars::parse(&text.replace(" = ", "="));
            let version = match (shellvars::get(&vars, "VERSION"), shellvars::get(&vars, "PATCHLEVEL")) {
                (Some(v), Some(p)) if p != "0" => format!("{v}.{p}"),
                (Some(v), _) => v.to_string(),
                _ => version.clone(),
            };
            let name = first.split(" (").next().unwrap_or(first).to_string();
            return Some(OsInfo {
                id: id.into(),
                family: OsFamily::Suse,
                name,
                version_id: version,
                pretty_name: first.to_string(),
                ..Default::default()
            });
        }
        "debian_version" => ("debian", "Debian GNU/Linux".to_string()),
        "alpine-release" => ("alpine", "Alpine Linux".to_string()),
        "gentoo-release" => ("gentoo", "Gentoo".to_string()),
        "arch-release" => ("arch", "Arch Linux".to_string()),
        _ => return None,
    };
    Some(OsInfo {
        id: id.into(),
        family: OsFamily::classify(id, &[]),
        name,
        version_id: version,
        pretty_name: first.to_string(),
        ..Default::default()
    })
}

/// The first dotted number in `s` (`CentOS release 6.10 (Final)` → `6.10`).
fn first_version(s: &str) -> String {
    s.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|w| w.trim_matches('.'))
        .find(|w| !w.is_empty())
        .unwrap_or("")
        .to_string()
}

/// The distribution of the tree at `root`; `Ok(None)` when nothing says.
pub fn read_os(root: &Path) -> Result<Option<OsInfo>, ReadError> {
    for f in ["/etc/os-release", "/usr/lib/os-release"] {
        if let Some(t) = fsread::read_text_opt(&fsread::below(root, f), CONFIG_CAP)? {
            return Ok(Some(parse_os_release(&t)));
        }
    }
    for f in [
        "centos-release",
        "redhat-release",
        "SuSE-release",
        "alpine-release",
        "gentoo-release",
        "debian_version",
        "arch-release",
    ] {
        let p = fsread::below(root, &format!("/etc/{f}"));
        if let Some(t) = fsread::read_text_opt(&p, CONFIG_CAP)? {
            if let Some(info) = parse_legacy_release(f, &t) {
                return Ok(Some(info));
            }
            if f == "arch-release" {
                return Ok(parse_legacy_release(f, "Arch Linux"));
            }
        }
    }
    Ok(None)
}

/// The host name configured in the tree: `/etc/hostname`, `/etc/HOSTNAME` (SUSE), or
/// `HOSTNAME=` of `/etc/sysconfig/network` (RHEL 6 and older).
pub fn read_hostname(root: &Path) -> Result<Option<String>, ReadError> {
    for f in ["/etc/hostname", "/etc/HOSTNAME"] {
        if let Some(t) = fsread::read_text_opt(&fsread::below(root, f), CONFIG_CAP)? {
            let name = t.lines().map(fsread::strip_comment).find(|l| !l.is_empty());
            if let Some(n) = name {
                return Ok(Some(n.to_string()));
            }
        }
    }
    let p = fsread::below(root, "/etc/sysconfig/network");
    if let Some(t) = fsread::read_text_opt(&p, CONFIG_CAP)? {
        let vars = shellvars::parse(&t);
        if let Some(h) = shellvars::get(&vars, "HOSTNAME").filter(|h| !h.is_empty()) {
            return Ok(Some(h.to_string()));
        }
    }
    Ok(None)
}

/// The running kernel.
pub fn live_kernel() -> KernelInfo {
    let u = rustix::system::uname();
    KernelInfo {
        release: u.release().to_string_lossy().into_owned(),
        version: u.version().to_string_lossy().into_owned(),
        machine: u.machine().to_string_lossy().into_owned(),
    }
}

/// The newest kernel installed in the tree (`/boot/vmlinuz-*`, `/lib/modules/*`), and the
/// machine from the ELF header of the tree's `/bin/sh`.
pub fn tree_kernel(root: &Path) -> Result<KernelInfo, ReadError> {
    let mut releases = Vec::new();
    for name in fsread::list_dir(&fsread::below(root, "/boot"))? {
        let name = name.to_string_lossy();
        if let Some(r) = name.strip_prefix("vmlinuz-")
            && !r.contains("rescue")
        {
            releases.push(r.to_string());
        }
    }
    for dir in ["/lib/modules", "/usr/lib/modules"] {
        for name in fsread::list_dir(&fsread::below(root, dir))? {
            releases.push(name.to_string_lossy().into_owned());
        }
    }
    let release = releases.into_iter().max_by(|a, b| version_cmp(a, b)).unwrap_or_default();
    Ok(KernelInfo {
        release,
        version: String::new(),
        machine: elf_machine(&fsread::below(root, "/bin/sh")).unwrap_or_default(),
    })
}

/// Compares version strings by runs of digits (numerically) and other characters.
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, _) => return Ordering::Less,
            (_, None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let la = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let lb = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let na = trim_zeros(&a[..la]);
                let nb = trim_zeros(&b[..lb]);
                let o = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
                if o != Ordering::Equal {
                    return o;
                }
                a = &a[la..];
                b = &b[lb..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let z = d.iter().take_while(|c| **c == b'0').count();
    &d[z..]
}

/// The architecture an ELF executable is built for (`x86_64`, `i686`, `aarch64`...).
pub fn elf_machine(path: &Path) -> Option<String> {
    let mut head = [0u8; 20];
    File::open(path).ok()?.read_exact(&mut head).ok()?;
    if &head[..4] != b"\x7fELF" {
        return None;
    }
    let le = head[5] == 1;
    let m =
        if le { u16::from_le_bytes([head[18], head[19]]) } else { u16::from_be_bytes([head[18], head[19]]) };
    let name = match (m, head[4]) {
        (3, _) => "i686",
        (62, _) => "x86_64",
        (183, _) => "aarch64",
        (40, _) => "arm",
        (21, 2) if le => "ppc64le",
        (21, _) => "ppc64",
        (20, _) => "ppc",
        (22, 2) => "s390x",
        (22, _) => "s390",
        (243, 2) => "riscv64",
        (2, _) | (43, _) => "sparc64",
        (8, _) => "mips",
        _ => return None,
    };
    Some(name.to_string())
}

#[cfg(test)]
mod tests;
