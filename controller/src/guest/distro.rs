//! What the guest is: distribution, init system and the network stacks it configures.
//!
//! Everything is read from the tree (never from the node), following the guest's own
//! symlinks inside it (`/etc/os-release` → `../usr/lib/os-release`, `/sbin/init` →
//! `/lib/systemd/systemd` with `/lib` → `usr/lib`).

use p2c_common::inventory::OsFamily;
use p2c_common::paths::RelPath;
use rustix::fs::FileType;

use super::GuestError;
use crate::tree::{Tree, rel};

/// The guest's distribution and how it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Distro {
    pub family: OsFamily,
    /// `ID` of os-release (`debian`, `ubuntu`, `centos`, `sles`...), or the equivalent from
    /// the older release files; empty if unknown.
    pub id: String,
    /// `VERSION_ID` (`12`, `7.9`, `15.5`), or the release file's version; empty if unknown.
    pub version: String,
    pub init: InitSystem,
    /// The network configuration systems the guest has, in a fixed order.
    pub stacks: Vec<NetStack>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitSystem {
    Systemd,
    Sysvinit,
    Upstart,
    Openrc,
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum NetStack {
    /// Debian/Ubuntu `/etc/network/interfaces`.
    Ifupdown,
    /// Ubuntu's `/etc/netplan/*.yaml`.
    Netplan,
    /// `/etc/systemd/network/*.network`, or systemd-networkd enabled.
    Networkd,
    /// RHEL/CentOS/Fedora `/etc/sysconfig/network-scripts/ifcfg-*`.
    RedhatIfcfg,
    /// SUSE `/etc/sysconfig/network/ifcfg-*`.
    SuseIfcfg,
    /// NetworkManager with its own connection files.
    NetworkManager,
}

/// Reads the distribution, init system and network stacks of the guest in `tree`.
pub fn detect(tree: &Tree) -> Result<Distro, GuestError> {
    let (family, id, version) = release(tree)?;
    Ok(Distro { family, id, version, init: init_system(tree)?, stacks: stacks(tree)? })
}

/// Reads a regular file as the guest would (its symlinks resolved inside the tree).
pub(super) fn read_guest(tree: &Tree, path: &RelPath) -> Result<Option<String>, GuestError> {
    match tree.resolve(path)? {
        Some(p) => match tree.lstat(&p)? {
            Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {
                Ok(tree.read_text(&p)?)
            }
            _ => Ok(None),
        },
        None => Ok(None),
    }
}

/// The kind of what the guest finds at `path`, its symlinks followed inside the tree.
pub(super) fn kind_guest(tree: &Tree, path: &RelPath) -> Result<Option<FileType>, GuestError> {
    match tree.resolve(path)? {
        Some(p) => Ok(tree.lstat(&p)?.map(|st| FileType::from_raw_mode(st.st_mode))),
        None => Ok(None),
    }
}

fn is_file(tree: &Tree, path: &str) -> Result<bool, GuestError> {
    Ok(kind_guest(tree, &rel(path))? == Some(FileType::RegularFile))
}

fn is_dir(tree: &Tree, path: &str) -> Result<bool, GuestError> {
    Ok(kind_guest(tree, &rel(path))? == Some(FileType::Directory))
}

/// Names in a directory of the guest (its symlinks followed), sorted.
pub(super) fn names_guest(tree: &Tree, dir: &str) -> Result<Vec<String>, GuestError> {
    let Some(p) = tree.resolve(&rel(dir))? else {
        return Ok(Vec::new());
    };
    if tree.lstat(&p)?.map(|st| FileType::from_raw_mode(st.st_mode)) != Some(FileType::Directory) {
        return Ok(Vec::new());
    }
    let mut names: Vec<String> =
        tree.list(&p)?.into_iter().filter_map(|(n, _)| String::from_utf8(n).ok()).collect();
    names.sort();
    Ok(names)
}

fn release(tree: &Tree) -> Result<(OsFamily, String, String), GuestError> {
    for path in ["etc/os-release", "usr/lib/os-release"] {
        if let Some(text) = read_guest(tree, &rel(path))? {
            let kv = parse_os_release(&text);
            let get =
                |k: &str| kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()).unwrap_or_default();
            let id = get("ID");
            let like: Vec<String> = get("ID_LIKE").split_whitespace().map(str::to_string).collect();
            return Ok((OsFamily::classify(&id, &like), id, get("VERSION_ID")));
        }
    }
    if let Some(text) = read_guest(tree, &rel("etc/redhat-release"))? {
        let (id, version) = parse_redhat_release(&text);
        return Ok((OsFamily::classify(&id, &[]), id, version));
    }
    if let Some(text) = read_guest(tree, &rel("etc/SuSE-release"))? {
        let (id, version) = parse_suse_release(&text);
        return Ok((OsFamily::Suse, id, version));
    }
    if let Some(text) = read_guest(tree, &rel("etc/debian_version"))? {
        return Ok((OsFamily::Debian, "debian".into(), text.trim().to_string()));
    }
    Ok((OsFamily::Unknown, String::new(), String::new()))
}

/// `KEY=value` pairs of os-release(5), quotes and backslash escapes removed.
pub(super) fn parse_os_release(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with('#') {
                return None;
            }
            let (k, v) = l.split_once('=')?;
            Some((k.trim().to_string(), unquote(v.trim())))
        })
        .collect()
}

/// Removes shell quoting from a simple `KEY=value` value.
pub(super) fn unquote(v: &str) -> String {
    let b = v.as_bytes();
    if b.len() >= 2 && (b[0] == b'"' || b[0] == b'\'') && b[b.len() - 1] == b[0] {
        let inner = &v[1..v.len() - 1];
        if b[0] == b'"' {
            let mut out = String::new();
            let mut esc = false;
            for c in inner.chars() {
                if esc {
                    out.push(c);
                    esc = false;
                } else if c == '\\' {
                    esc = true;
                } else {
                    out.push(c);
                }
            }
            return out;
        }
        return inner.to_string();
    }
    v.to_string()
}

/// `CentOS release 6.10 (Final)` → (`centos`, `6.10`).
fn parse_redhat_release(text: &str) -> (String, String) {
    let line = text.lines().next().unwrap_or_default();
    let lower = line.to_ascii_lowercase();
    let id = if lower.starts_with("red hat") {
        "rhel"
    } else if lower.starts_with("centos") {
        "centos"
    } else if lower.starts_with("fedora") {
        "fedora"
    } else if lower.starts_with("scientific") {
        "scientific"
    } else if lower.starts_with("cloudlinux") {
        "cloudlinux"
    } else if lower.starts_with("rocky") {
        "rocky"
    } else if lower.starts_with("almalinux") {
        "almalinux"
    } else {
        "rhel"
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let version = words
        .iter()
        .position(|w| *w == "release")
        .and_then(|i| words.get(i + 1))
        .map(|s| s.to_string())
        .unwrap_or_default();
    (id.to_string(), version)
}

/// `SUSE Linux Enterprise Server 11 (x86_64)` + `VERSION = 11` + `PATCHLEVEL = 4` →
/// (`sles`, `11.4`).
fn parse_suse_release(text: &str) -> (String, String) {
    let first = text.lines().next().unwrap_or_default();
    let id = if first.contains("Enterprise") { "sles" } else { "opensuse" };
    let field = |k: &str| {
        text.lines().find_map(|l| {
            let (key, v) = l.split_once('=')?;
            (key.trim() == k).then(|| v.trim().to_string())
        })
    };
    let version = match (field("VERSION"), field("PATCHLEVEL")) {
        (Some(v), Some(p)) if p != "0" => format!("{v}.{p}"),
        (Some(v), _) => v,
        _ => String::new(),
    };
    (id.to_string(), version)
}

fn init_system(tree: &Tree) -> Result<InitSystem, GuestError> {
    let init = tree.resolve(&rel("sbin/init"))?;
    if init.as_ref().is_some_and(|p| p.file_name() == b"systemd") {
        return Ok(InitSystem::Systemd);
    }
    if is_file(tree, "sbin/initctl")? && is_dir(tree, "etc/init")? {
        return Ok(InitSystem::Upstart);
    }
    if (is_file(tree, "sbin/openrc")? || is_file(tree, "sbin/openrc-run")?) && is_dir(tree, "etc/runlevels")?
    {
        return Ok(InitSystem::Openrc);
    }
    if is_file(tree, "etc/inittab")? {
        return Ok(InitSystem::Sysvinit);
    }
    if is_file(tree, "lib/systemd/systemd")? || is_file(tree, "usr/lib/systemd/systemd")? {
        return Ok(InitSystem::Systemd);
    }
    Ok(InitSystem::Unknown)
}

/// Whether `unit` is enabled: linked from a `.wants` directory in `/etc/systemd/system`
/// (what `systemctl enable` makes), or named by a D-Bus alias link there
/// (`dbus-org.freedesktop.NetworkManager.service`, `dbus-org.freedesktop.network1.service`).
pub(super) fn unit_enabled(tree: &Tree, unit: &str, alias: Option<&str>) -> Result<bool, GuestError> {
    let dir = "etc/systemd/system";
    let names = names_guest(tree, dir)?;
    if alias.is_some_and(|a| names.iter().any(|n| n == a)) {
        return Ok(true);
    }
    for w in names.iter().filter(|n| n.ends_with(".wants")) {
        if names_guest(tree, &format!("{dir}/{w}"))?.iter().any(|n| n == unit) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether the guest has a file (or a link to one) at `path`.
pub(super) fn has_file(tree: &Tree, path: &str) -> Result<bool, GuestError> {
    is_file(tree, path)
}

fn stacks(tree: &Tree) -> Result<Vec<NetStack>, GuestError> {
    let mut out = Vec::new();
    if is_file(tree, "etc/network/interfaces")? {
        out.push(NetStack::Ifupdown);
    }
    if names_guest(tree, "etc/netplan")?.iter().any(|n| n.ends_with(".yaml")) {
        out.push(NetStack::Netplan);
    }
    let networkd_files = names_guest(tree, "etc/systemd/network")?.iter().any(|n| n.ends_with(".network"));
    let networkd_enabled = unit_enabled(tree, "systemd-networkd.service", None)?;
    if networkd_files || networkd_enabled {
        out.push(NetStack::Networkd);
    }
    if names_guest(tree, "etc/sysconfig/network-scripts")?.iter().any(|n| n.starts_with("ifcfg-")) {
        out.push(NetStack::RedhatIfcfg);
    }
    if is_dir(tree, "etc/sysconfig/network")?
        && names_guest(tree, "etc/sysconfig/network")?.iter().any(|n| n.starts_with("ifcfg-"))
    {
        out.push(NetStack::SuseIfcfg);
    }
    if !names_guest(tree, "etc/NetworkManager/system-connections")?.is_empty() {
        out.push(NetStack::NetworkManager);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::tests::Fixture;

    #[test]
    fn debian_with_systemd_and_merged_usr() {
        let f = Fixture::new();
        f.file(
            "usr/lib/os-release",
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
        );
        f.link("etc/os-release", "../usr/lib/os-release");
        f.file("usr/lib/systemd/systemd", "");
        f.link("lib", "usr/lib");
        f.link("sbin/init", "/lib/systemd/systemd");
        f.file("etc/network/interfaces", "auto lo\n");
        f.file("etc/systemd/network/10-eth0.network", "[Match]\nName=eth0\n");
        let d = detect(&f.tree()).unwrap();
        assert_eq!(d.family, OsFamily::Debian);
        assert_eq!((d.id.as_str(), d.version.as_str()), ("debian", "12"));
        assert_eq!(d.init, InitSystem::Systemd);
        assert_eq!(d.stacks, vec![NetStack::Ifupdown, NetStack::Networkd]);
    }

    #[test]
    fn old_release_files_and_init_systems() {
        let f = Fixture::new();
        f.file("etc/redhat-release", "CentOS release 6.10 (Final)\n");
        f.file("sbin/initctl", "");
        f.file("etc/init/tty.conf", "");
        f.file("etc/inittab", "id:3:initdefault:\n");
        f.file("etc/sysconfig/network-scripts/ifcfg-eth0", "DEVICE=eth0\n");
        f.file("etc/sysconfig/network", "NETWORKING=yes\n");
        let d = detect(&f.tree()).unwrap();
        assert_eq!(d.family, OsFamily::Rhel);
        assert_eq!((d.id.as_str(), d.version.as_str()), ("centos", "6.10"));
        assert_eq!(d.init, InitSystem::Upstart);
        assert_eq!(d.stacks, vec![NetStack::RedhatIfcfg]);

        let f = Fixture::new();
        f.file(
            "etc/SuSE-release",
            "SUSE Linux Enterprise Server 11 (x86_64)\nVERSION = 11\nPATCHLEVEL = 4\n",
        );
        f.file("etc/inittab", "id:3:initdefault:\n");
        f.file("etc/sysconfig/network/ifcfg-eth0", "BOOTPROTO='dhcp'\n");
        let d = detect(&f.tree()).unwrap();
        assert_eq!(d.family, OsFamily::Suse);
        assert_eq!((d.id.as_str(), d.version.as_str()), ("sles", "11.4"));
        assert_eq!(d.init, InitSystem::Sysvinit);
        assert_eq!(d.stacks, vec![NetStack::SuseIfcfg]);

        let f = Fixture::new();
        f.file("etc/debian_version", "7.11\n");
        f.file("etc/netplan/50-cloud-init.yaml", "network: {}\n");
        f.file("sbin/openrc", "");
        f.file("etc/runlevels/default/x", "");
        let d = detect(&f.tree()).unwrap();
        assert_eq!((d.family, d.version.as_str()), (OsFamily::Debian, "7.11"));
        assert_eq!(d.init, InitSystem::Openrc);
        assert_eq!(d.stacks, vec![NetStack::Netplan]);
    }

    #[test]
    fn os_release_quoting() {
        let kv =
            parse_os_release("ID=\"opensuse-leap\"\nID_LIKE='suse opensuse'\n# x=y\nNAME=\"a \\\"b\\\"\"\n");
        assert_eq!(kv[0], ("ID".into(), "opensuse-leap".into()));
        assert_eq!(kv[1], ("ID_LIKE".into(), "suse opensuse".into()));
        assert_eq!(kv[2], ("NAME".into(), "a \"b\"".into()));
    }
}
