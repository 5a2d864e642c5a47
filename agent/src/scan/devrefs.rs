//! `/dev` paths named in service, mount and database configuration: the evidence that a
//! service uses a block device directly (a raw partition for a database, a disk for a
//! systemd unit, a raw binding in a udev rule). Devices every container has (`/dev/null`,
//! `/dev/urandom`, `/dev/pts/...`) are left out.

use std::io::BufRead;

use p2c_common::paths::RelPath;
use p2c_common::scan::{DeviceRef, clip, limits};

/// What kind of configuration a file is, which decides how its lines are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ConfigKind {
    /// A systemd unit or drop-in: `Exec*=`, `DeviceAllow=` and `What=` lines.
    SystemdUnit,
    /// `/etc/fstab`: the device field.
    Fstab,
    /// `/etc/crypttab`: the device field.
    Crypttab,
    /// A udev rule under `/etc/udev/rules.d`: any `/dev` path.
    UdevRule,
    /// A database or raw-device config: any `/dev` path.
    Config,
}

const SYSTEMD_DIRS: [&str; 3] = ["etc/systemd/system", "lib/systemd/system", "usr/lib/systemd/system"];
const CONFIG_DIRS: [&str; 7] = [
    "etc/mysql",
    "etc/my.cnf.d",
    "etc/postgresql",
    "etc/drbd.d",
    "etc/sysconfig/rawdevices",
    "etc/my.cnf",
    "etc/oratab",
];

/// Devices a container always has, as the first component below `/dev`.
const CONTAINER_DEVICES: [&str; 19] = [
    "null",
    "zero",
    "full",
    "random",
    "urandom",
    "tty",
    "console",
    "ptmx",
    "pts",
    "shm",
    "fd",
    "stdin",
    "stdout",
    "stderr",
    "log",
    "mqueue",
    "hugepages",
    "core",
    "initctl",
];

fn under(rel: &RelPath, dir: &str) -> bool {
    let b = rel.as_bytes();
    b.starts_with(dir.as_bytes()) && (b.len() == dir.len() || b[dir.len()] == b'/')
}

/// The kind of config at `rel`, if it is one the scan reads.
pub(super) fn classify(rel: &RelPath) -> Option<ConfigKind> {
    let b = rel.as_bytes();
    if b == b"etc/fstab" {
        return Some(ConfigKind::Fstab);
    }
    if b == b"etc/crypttab" {
        return Some(ConfigKind::Crypttab);
    }
    if SYSTEMD_DIRS.iter().any(|d| under(rel, d)) {
        return Some(ConfigKind::SystemdUnit);
    }
    if under(rel, "etc/udev/rules.d") {
        return Some(ConfigKind::UdevRule);
    }
    let oracle = b.starts_with(b"etc/oracle") || b.starts_with(b"etc/sysconfig/oracleasm");
    if oracle || CONFIG_DIRS.iter().any(|d| under(rel, d)) {
        return Some(ConfigKind::Config);
    }
    None
}

/// True for a device every container has.
pub(super) fn container_provided(dev: &str) -> bool {
    let rest = dev.strip_prefix("/dev/").unwrap_or(dev);
    let first = rest.split('/').next().unwrap_or_default();
    CONTAINER_DEVICES.contains(&first)
}

fn starts_token(prev: Option<char>) -> bool {
    match prev {
        None => true,
        Some(c) => !(c.is_alphanumeric() || matches!(c, '/' | '.' | '_' | '~' | '$' | '%')),
    }
}

fn ends_token(c: char) -> bool {
    c.is_whitespace()
        || matches!(c, '"' | '\'' | ',' | ';' | ')' | ']' | '}' | ':' | '=' | '<' | '>' | '|' | '&' | '`')
}

/// Every `/dev/...` path on a line, in order (`char-/dev/sdb` and `--dev=/dev/sdb` count;
/// `/usr/dev/x` does not).
pub(super) fn device_paths(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(pos) = line[from..].find("/dev/") {
        let start = from + pos;
        from = start + 5;
        if !starts_token(line[..start].chars().next_back()) {
            continue;
        }
        let end = line[start..].find(ends_token).map_or(line.len(), |e| start + e);
        let dev = line[start..end].trim_end_matches('.');
        if dev.len() > 5 {
            out.push(dev.to_string());
        }
        from = end.max(from);
    }
    out
}

/// Reads one config and appends the devices it names; false once `out` is full.
pub(super) fn scan_config(
    kind: ConfigKind,
    file: &RelPath,
    mut r: impl BufRead,
    out: &mut Vec<DeviceRef>,
) -> std::io::Result<bool> {
    let mut raw = Vec::new();
    let mut lineno = 0u32;
    loop {
        raw.clear();
        if r.read_until(b'\n', &mut raw)? == 0 {
            return Ok(true);
        }
        lineno = lineno.saturating_add(1);
        let text = String::from_utf8_lossy(&raw);
        let line = text.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        for (device, context) in line_devices(kind, line) {
            if container_provided(&device) {
                continue;
            }
            if out.len() >= limits::MAX_DEVICE_REFS {
                return Ok(false);
            }
            let mut text = line.to_string();
            clip(&mut text);
            out.push(DeviceRef { device, file: file.clone(), line: lineno, context, text });
        }
    }
}

/// The devices a line names, each with where on the line it was.
fn line_devices(kind: ConfigKind, line: &str) -> Vec<(String, String)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let field_dev = |i: usize, context: String| -> Vec<(String, String)> {
        fields
            .get(i)
            .filter(|f| f.starts_with("/dev/"))
            .map(|f| vec![(f.to_string(), context)])
            .unwrap_or_default()
    };
    match kind {
        ConfigKind::SystemdUnit => {
            let Some((key, value)) = line.split_once('=') else {
                return Vec::new();
            };
            let key = key.trim();
            if !(key.starts_with("Exec") || key == "DeviceAllow" || key == "What") {
                return Vec::new();
            }
            device_paths(value).into_iter().map(|d| (d, key.to_string())).collect()
        }
        ConfigKind::Fstab => {
            let fs_type = fields.get(2).copied().unwrap_or("?");
            field_dev(0, format!("fstab {fs_type}"))
        }
        ConfigKind::Crypttab => field_dev(1, "crypttab".to_string()),
        ConfigKind::UdevRule | ConfigKind::Config => {
            let context = if kind == ConfigKind::UdevRule { "udev rule" } else { "config" };
            device_paths(line).into_iter().map(|d| (d, context.to_string())).collect()
        }
    }
}

#[cfg(test)]
mod tests;
