//! The source's mounts: `/proc/self/mountinfo`, re-rooted at the agent's `root`, with
//! sizes from statvfs(2).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use p2c_common::inventory::{Mount, MountKind};

/// One line of /proc/self/mountinfo (see proc(5)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_id: u32,
    pub parent_id: u32,
    pub major: u32,
    pub minor: u32,
    /// The directory of the file system that is mounted (`/` unless a bind mount).
    pub fs_root: Vec<u8>,
    pub mount_point: Vec<u8>,
    pub mount_options: Vec<String>,
    pub fs_type: String,
    pub source: String,
    pub super_options: Vec<String>,
}

/// A mount as reported, plus where it is on this machine.
#[derive(Clone, Debug, PartialEq)]
pub struct LocatedMount {
    pub mount: Mount,
    /// The mount point on this machine (below root).
    pub live_path: PathBuf,
    pub major: u32,
    pub minor: u32,
    /// False when `root` is a plain directory and this entry stands for the file system
    /// holding it: its quota files and kernel quotas are not the tree's.
    pub is_mount_point: bool,
    /// The directory of the file system shown here (`/` unless a bind mount or subvolume).
    pub fs_root: Vec<u8>,
}

/// Parses /proc/self/mountinfo; malformed lines are skipped.
///
/// Kept in place of procfs's `MountInfos`, which (in procfs 0.18) needs the whole table to be
/// UTF-8 (one mount point with another byte fails the read of every mount), leaves the
/// kernel's `\040` escapes in roots and mount points, keeps mount and super options in hash
/// maps (their order, which the inventory reports, is lost) and reads the source `none` as no
/// source.
pub fn parse_mountinfo(bytes: &[u8]) -> Vec<MountInfo> {
    bytes.split(|b| *b == b'\n').filter_map(parse_line).collect()
}

fn parse_line(line: &[u8]) -> Option<MountInfo> {
    let fields: Vec<&[u8]> = line.split(|b| *b == b' ').filter(|f| !f.is_empty()).collect();
    let sep = fields.iter().position(|f| *f == b"-")?;
    if sep < 6 || fields.len() < sep + 3 {
        return None;
    }
    let num = |f: &[u8]| std::str::from_utf8(f).ok()?.parse::<u32>().ok();
    let text = |f: &[u8]| String::from_utf8_lossy(&unescape(f)).into_owned();
    let opts = |f: &[u8]| -> Vec<String> {
        text(f).split(',').filter(|o| !o.is_empty()).map(str::to_string).collect()
    };
    let (maj, min) = std::str::from_utf8(fields[2]).ok()?.split_once(':')?;
    Some(MountInfo {
        mount_id: num(fields[0])?,
        parent_id: num(fields[1])?,
        major: maj.parse().ok()?,
        minor: min.parse().ok()?,
        fs_root: unescape(fields[3]),
        mount_point: unescape(fields[4]),
        mount_options: opts(fields[5]),
        fs_type: text(fields[sep + 1]),
        source: text(fields[sep + 2]),
        super_options: fields.get(sep + 3).map(|f| opts(f)).unwrap_or_default(),
    })
}

/// Resolves the kernel's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134`
/// backslash).
pub fn unescape(f: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(f.len());
    let mut i = 0;
    while i < f.len() {
        if f[i] == b'\\' && i + 4 <= f.len() && is_octal3(&f[i + 1..i + 4]) {
            let v = (u32::from(f[i + 1] - b'0') << 6)
                | (u32::from(f[i + 2] - b'0') << 3)
                | u32::from(f[i + 3] - b'0');
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(f[i]);
            i += 1;
        }
    }
    out
}

fn is_octal3(d: &[u8]) -> bool {
    d.len() == 3 && d.iter().all(|c| (b'0'..=b'7').contains(c))
}

/// The mounts at or beneath `root` (which must be canonical), with mount points relative to
/// it (`/srv/tree/home` → `/home`). When `root` is not itself a mount point, the file system
/// that holds it is reported as `/`. Sizes are filled for local file systems only: a statvfs
/// on a dead network mount would hang the agent.
pub fn mounts_below(entries: &[MountInfo], root: &Path) -> Vec<LocatedMount> {
    let root_b = root.as_os_str().as_bytes();
    let root_b = if root_b.len() > 1 { root_b.strip_suffix(b"/").unwrap_or(root_b) } else { root_b };
    let mut out: Vec<LocatedMount> = Vec::new();
    for e in entries {
        let Some(rel) = relative_to(&e.mount_point, root_b) else {
            continue;
        };
        let located = located(e, &rel, true);
        // A later mount on the same point hides the earlier one.
        out.retain(|m| m.mount.mountpoint != located.mount.mountpoint);
        out.push(located);
    }
    if !out.iter().any(|m| m.mount.mountpoint == "/") {
        let holder = entries
            .iter()
            .filter(|e| relative_to(root_b, &e.mount_point).is_some())
            .max_by_key(|e| e.mount_point.len());
        if let Some(e) = holder {
            let mut m = located(e, b"/", false);
            m.live_path = root.to_path_buf();
            out.push(m);
        }
    }
    for m in &mut out {
        if m.mount.kind == MountKind::Local {
            fill_sizes(&mut m.mount, &m.live_path);
        }
    }
    out.sort_by(|a, b| a.mount.mountpoint.cmp(&b.mount.mountpoint));
    mark_binds(&mut out);
    out
}

/// `path` relative to `base` as an absolute path (`/` for `base` itself).
fn relative_to(path: &[u8], base: &[u8]) -> Option<Vec<u8>> {
    if base == b"/" {
        return path.starts_with(b"/").then(|| path.to_vec());
    }
    let rest = path.strip_prefix(base)?;
    if rest.is_empty() {
        Some(b"/".to_vec())
    } else if rest.starts_with(b"/") {
        Some(rest.to_vec())
    } else {
        None
    }
}

fn located(e: &MountInfo, rel: &[u8], is_mount_point: bool) -> LocatedMount {
    let mut options = e.mount_options.clone();
    for o in &e.super_options {
        if !options.contains(o) {
            options.push(o.clone());
        }
    }
    LocatedMount {
        mount: Mount {
            device: e.source.clone(),
            mountpoint: String::from_utf8_lossy(rel).into_owned(),
            fs_type: e.fs_type.clone(),
            options,
            kind: MountKind::of_fs_type(&e.fs_type),
            ..Default::default()
        },
        live_path: PathBuf::from(OsStr::from_bytes(&e.mount_point)),
        major: e.major,
        minor: e.minor,
        is_mount_point,
        fs_root: e.fs_root.clone(),
    }
}

/// Marks bind mounts: a mount whose file system another listed mount shows from a
/// directory at or above its own (ties go to the mount point that sorts first).
fn mark_binds(mounts: &mut [LocatedMount]) {
    let key = |m: &LocatedMount| (m.fs_root.len(), m.mount.mountpoint.clone());
    let found: Vec<Option<String>> = mounts
        .iter()
        .map(|m| {
            if m.mount.kind != MountKind::Local {
                return None;
            }
            mounts
                .iter()
                .filter(|n| {
                    (n.major, n.minor) == (m.major, m.minor)
                        && key(n) < key(m)
                        && is_dir_prefix(&n.fs_root, &m.fs_root)
                })
                .min_by_key(|n| key(n))
                .map(|n| n.mount.mountpoint.clone())
        })
        .collect();
    for (m, b) in mounts.iter_mut().zip(found) {
        m.mount.bind_of = b;
    }
}

/// Whether directory `a` is `b` or one of its ancestors.
fn is_dir_prefix(a: &[u8], b: &[u8]) -> bool {
    a == b"/" || b == a || (b.starts_with(a) && b.get(a.len()) == Some(&b'/'))
}

fn fill_sizes(m: &mut Mount, path: &Path) {
    let Ok(s) = rustix::fs::statvfs(path) else {
        return;
    };
    let frsize = if s.f_frsize > 0 { s.f_frsize } else { s.f_bsize };
    m.size_bytes = s.f_blocks.saturating_mul(frsize);
    m.used_bytes = s.f_blocks.saturating_sub(s.f_bfree).saturating_mul(frsize);
    m.inodes_total = s.f_files;
    m.inodes_used = s.f_files.saturating_sub(s.f_ffree);
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 22 8:2 / /home rw,relatime shared:2 - ext4 /dev/sda2 rw,usrquota,grpquota
25 22 8:3 / /srv/my\\040data rw shared:3 master:7 - xfs /dev/sdb1 rw,attr2,inode64,usrquota
26 22 0:50 / /mnt/nfs rw - nfs4 srv:/export rw,vers=4.2
27 22 8:17 / /srv/tree rw - ext4 /dev/sdc1 rw
28 27 8:18 / /srv/tree/home rw - ext4 /dev/sdc2 rw,quota
29 27 8:19 / /srv/tree/home rw - ext4 /dev/sdc3 rw
30 22 8:20 / /srv/treeX rw - ext4 /dev/sdc4 rw
garbage line
31 22 8:1 /var/lib /bind rw - ext4 /dev/sda1
";

    #[test]
    fn parses_mountinfo() {
        let m = parse_mountinfo(SAMPLE);
        assert_eq!(m.len(), 10);
        assert_eq!(m[0].fs_type, "ext4");
        assert_eq!((m[2].major, m[2].minor), (8, 2));
        assert_eq!(m[2].super_options, vec!["rw", "usrquota", "grpquota"]);
        assert_eq!(m[3].mount_point, b"/srv/my data");
        assert_eq!(m[4].source, "srv:/export");
        assert_eq!(m[9].fs_root, b"/var/lib");
        assert!(m[9].super_options.is_empty());
    }

    #[test]
    fn escapes() {
        assert_eq!(unescape(b"a\\040b\\011c\\012d\\134e"), b"a b\tc\nd\\e");
        assert_eq!(unescape(b"\\04"), b"\\04");
        assert_eq!(unescape(b"\\999x"), b"\\999x");
        assert_eq!(unescape(b"\\377"), b"\xff");
    }

    #[test]
    fn live_root() {
        let m = mounts_below(&parse_mountinfo(SAMPLE), Path::new("/"));
        let points: Vec<&str> = m.iter().map(|m| m.mount.mountpoint.as_str()).collect();
        assert_eq!(points.first(), Some(&"/"));
        assert!(points.contains(&"/srv/my data"));
        let home = m.iter().find(|m| m.mount.mountpoint == "/home").unwrap();
        assert_eq!(home.mount.quota_options(), vec!["usrquota", "grpquota"]);
        let nfs = m.iter().find(|m| m.mount.mountpoint == "/mnt/nfs").unwrap();
        assert_eq!(nfs.mount.kind, MountKind::Network);
        assert_eq!(nfs.mount.size_bytes, 0);
    }

    #[test]
    fn tree_root_is_a_mount() {
        let m = mounts_below(&parse_mountinfo(SAMPLE), Path::new("/srv/tree/"));
        let points: Vec<(&str, &str)> =
            m.iter().map(|m| (m.mount.mountpoint.as_str(), m.mount.device.as_str())).collect();
        // The over-mount of /home hides the first one; /srv/treeX is not beneath root.
        assert_eq!(points, vec![("/", "/dev/sdc1"), ("/home", "/dev/sdc3")]);
        assert!(m.iter().all(|m| m.is_mount_point));
        assert_eq!(m[1].live_path, PathBuf::from("/srv/tree/home"));
    }

    #[test]
    fn tree_root_is_a_directory() {
        let m = mounts_below(&parse_mountinfo(SAMPLE), Path::new("/var/tmp/src"));
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].mount.mountpoint, "/");
        assert_eq!(m[0].mount.device, "/dev/sda1");
        assert_eq!(m[0].live_path, PathBuf::from("/var/tmp/src"));
        assert!(!m[0].is_mount_point);
    }

    #[test]
    fn bind_mounts_and_subvolumes() {
        let info = b"\
1 0 8:1 / / rw - ext4 /dev/sda1 rw
2 1 8:1 /srv/data /data rw - ext4 /dev/sda1 rw
3 1 0:40 /@home /home rw - btrfs /dev/sdb1 rw
4 1 0:40 /@home/alice /alice rw - btrfs /dev/sdb1 rw
5 1 0:40 /@var /var rw - btrfs /dev/sdb1 rw
6 1 8:1 / /again rw - ext4 /dev/sda1 rw
";
        let m = mounts_below(&parse_mountinfo(info), Path::new("/"));
        let binds: Vec<(&str, Option<&str>)> =
            m.iter().map(|m| (m.mount.mountpoint.as_str(), m.mount.bind_of.as_deref())).collect();
        assert_eq!(
            binds,
            vec![
                ("/", None),
                ("/again", Some("/")),
                ("/alice", Some("/home")),
                ("/data", Some("/")),
                ("/home", None),
                ("/var", None),
            ]
        );
    }

    #[test]
    fn real_mountinfo_has_root() {
        let t = std::fs::read("/proc/self/mountinfo").unwrap();
        let m = mounts_below(&parse_mountinfo(&t), Path::new("/"));
        assert!(m.iter().any(|m| m.mount.mountpoint == "/"));
    }
}
