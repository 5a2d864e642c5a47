//! Swap: active areas from /proc/swaps (live) and the swap lines of the tree's /etc/fstab.

use std::path::{Path, PathBuf};

use p2c_common::inventory::{BlockDevice, Swap};

use super::fsread::{self, CONFIG_CAP, ReadError};
use super::mounts::unescape;

/// One line of fstab(5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FstabEntry {
    pub spec: String,
    pub file: String,
    pub vfstype: String,
    pub options: Vec<String>,
}

/// Parses /etc/fstab; comments and short lines are skipped, `\040` escapes resolved.
pub fn parse_fstab(text: &str) -> Vec<FstabEntry> {
    let field = |s: &str| String::from_utf8_lossy(&unescape(s.as_bytes())).into_owned();
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with('#') {
                return None;
            }
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3).then(|| FstabEntry {
                spec: field(f[0]),
                file: field(f[1]),
                vfstype: field(f[2]),
                options: f.get(3).map(|o| o.split(',').map(str::to_string).collect()).unwrap_or_default(),
            })
        })
        .collect()
}

/// Parses /proc/swaps (`Filename Type Size Used Priority`, sizes in KiB).
pub fn parse_proc_swaps(text: &str) -> Vec<Swap> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 3 {
                return None;
            }
            Some(Swap {
                device: String::from_utf8_lossy(&unescape(f[0].as_bytes())).into_owned(),
                kind: f[1].to_string(),
                size_bytes: f[2].parse::<u64>().ok()?.saturating_mul(1024),
                in_fstab: false,
                active: true,
            })
        })
        .collect()
}

/// `partition` for device specs (`/dev/...`, `UUID=`, `LABEL=`...), `file` otherwise.
fn kind_of_spec(spec: &str) -> &'static str {
    let dev = spec.starts_with("/dev/") || disk_by(spec).is_some();
    if dev { "partition" } else { "file" }
}

/// The `/dev/disk/by-*` directory and the value of a `UUID=`, `LABEL=`, `PARTUUID=` or
/// `PARTLABEL=` spec.
fn disk_by(spec: &str) -> Option<(&'static str, &str)> {
    [
        ("UUID=", "by-uuid"),
        ("LABEL=", "by-label"),
        ("PARTUUID=", "by-partuuid"),
        ("PARTLABEL=", "by-partlabel"),
    ]
    .into_iter()
    .find_map(|(prefix, dir)| spec.strip_prefix(prefix).map(|v| (dir, v)))
}

/// Where a device spec points on this machine, for matching fstab against /proc/swaps.
fn canonical(root: &Path, spec: &str) -> Option<PathBuf> {
    let p = match disk_by(spec) {
        Some((dir, v)) => fsread::below(root, &format!("/dev/disk/{dir}/{v}")),
        None => fsread::below(root, spec),
    };
    std::fs::canonicalize(p).ok()
}

/// The swaps of the source: `active` (from /proc/swaps, live facts only) merged with the
/// swap lines of root's /etc/fstab.
pub fn swaps(root: &Path, active: Vec<Swap>) -> Result<Vec<Swap>, ReadError> {
    let fstab = fsread::read_text_opt(&fsread::below(root, "/etc/fstab"), CONFIG_CAP)?
        .map(|t| parse_fstab(&t))
        .unwrap_or_default();
    let mut out = active;
    for e in fstab.iter().filter(|e| e.vfstype == "swap") {
        let target = canonical(root, &e.spec);
        let found = out.iter_mut().find(|s| {
            s.device == e.spec || (target.is_some() && canonical(Path::new("/"), &s.device) == target)
        });
        match found {
            Some(s) => s.in_fstab = true,
            None => {
                let kind = kind_of_spec(&e.spec);
                let size_bytes = if kind == "file" {
                    std::fs::metadata(fsread::below(root, &e.spec)).map(|m| m.len()).unwrap_or(0)
                } else {
                    0
                };
                out.push(Swap {
                    device: e.spec.clone(),
                    kind: kind.to_string(),
                    size_bytes,
                    in_fstab: true,
                    active: false,
                });
            }
        }
    }
    Ok(out)
}

/// The node a device spec (`/dev/sdb2`, `UUID=...`, `LABEL=...`) names below `dev`, the
/// live `/dev`: `/dev/sdb2` → `DEV/sdb2`, `UUID=u` → `DEV/disk/by-uuid/u`.
fn live_node(dev: &Path, spec: &str) -> Option<PathBuf> {
    match disk_by(spec) {
        Some((dir, v)) => (!v.is_empty() && !v.contains('/')).then(|| dev.join("disk").join(dir).join(v)),
        None => {
            let rel = spec.strip_prefix("/dev/")?;
            (!rel.is_empty() && !rel.split('/').any(|c| c == "..")).then(|| dev.join(rel))
        }
    }
}

/// Live facts: the size of each swap partition that is only in fstab (not active, so
/// /proc/swaps does not give it) is its block device's, found by device number through
/// the live `dev` (normally `/dev`).
pub fn fill_partition_sizes(swaps: &mut [Swap], dev: &Path, devices: &[BlockDevice]) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for s in swaps.iter_mut().filter(|s| s.kind == "partition" && s.size_bytes == 0) {
        let Some(meta) = live_node(dev, &s.device).and_then(|p| std::fs::metadata(p).ok()) else {
            continue;
        };
        if !meta.file_type().is_block_device() {
            continue;
        }
        let (major, minor) = (rustix::fs::major(meta.rdev()), rustix::fs::minor(meta.rdev()));
        if let Some(b) = devices.iter().find(|b| (b.major, b.minor) == (major, minor)) {
            s.size_bytes = b.size_bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab() {
        let f = parse_fstab(
            "# /etc/fstab\nUUID=abc / ext4 errors=remount-ro 0 1\n\
             /dev/sdb2 none swap sw 0 0\n/my\\040swap none swap defaults\nshort line\n",
        );
        assert_eq!(f.len(), 3);
        assert_eq!(f[0].options, vec!["errors=remount-ro"]);
        assert_eq!(f[2].spec, "/my swap");
    }

    #[test]
    fn proc_swaps() {
        let s = parse_proc_swaps(
            "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
             /dev/sda2                               partition\t2097148\t\t0\t\t-2\n\
             /swap\\040file                          file\t\t1024\t\t0\t\t-3\n",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].size_bytes, 2097148 * 1024);
        assert_eq!(s[1].device, "/swap file");
        assert_eq!(s[1].kind, "file");
    }

    #[test]
    fn live_nodes_of_specs() {
        let d = Path::new("/dev");
        assert_eq!(live_node(d, "/dev/sdb2"), Some(PathBuf::from("/dev/sdb2")));
        assert_eq!(live_node(d, "/dev/mapper/vg-swap"), Some(PathBuf::from("/dev/mapper/vg-swap")));
        assert_eq!(live_node(d, "UUID=1234-ab"), Some(PathBuf::from("/dev/disk/by-uuid/1234-ab")));
        assert_eq!(live_node(d, "LABEL=swap"), Some(PathBuf::from("/dev/disk/by-label/swap")));
        assert_eq!(live_node(d, "/dev/../etc/passwd"), None);
        assert_eq!(live_node(d, "UUID=../x"), None);
        assert_eq!(live_node(d, "/swapfile"), None);
    }

    #[test]
    fn merges_fstab() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(
            r.join("etc/fstab"),
            "/dev/sda2 none swap sw 0 0\nUUID=1234 none swap sw 0 0\n/swapfile none swap sw 0 0\n",
        )
        .unwrap();
        std::fs::write(r.join("swapfile"), vec![0u8; 4096]).unwrap();
        let active = parse_proc_swaps("h\n/dev/sda2 partition 100 0 -2\n");
        let s = swaps(r, active).unwrap();
        assert_eq!(s.len(), 3);
        assert!(s[0].active && s[0].in_fstab);
        assert_eq!((s[1].kind.as_str(), s[1].active), ("partition", false));
        assert_eq!((s[2].kind.as_str(), s[2].size_bytes), ("file", 4096));
        assert!(swaps(tempfile::tempdir().unwrap().path(), vec![]).unwrap().is_empty());
    }
}
