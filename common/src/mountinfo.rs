//! `/proc/self/mountinfo`, parsed: which file system each mount point holds.
//!
//! Used by the agent's scan (not to cross into pseudo and network file systems) and by the
//! controller's node probe (the file-system type under the private area).

use std::io;

use crate::inventory::MountKind;

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountInfo {
    /// The device number the kernel reports for files on this mount (`st_dev`).
    pub major: u32,
    pub minor: u32,
    /// Absolute mount point, octal escapes decoded.
    pub mount_point: Vec<u8>,
    pub fs_type: String,
    /// The mount source (`/dev/sda1`, `server:/export`, `proc`).
    pub source: String,
}

impl MountInfo {
    /// Local (disk), pseudo or network file system.
    pub fn kind(&self) -> MountKind {
        MountKind::of_fs_type(&self.fs_type)
    }
}

/// Reads this process's mount table.
pub fn read() -> io::Result<Vec<MountInfo>> {
    Ok(parse(&std::fs::read("/proc/self/mountinfo")?))
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse(text: &[u8]) -> Vec<MountInfo> {
    text.split(|b| *b == b'\n').filter_map(parse_line).collect()
}

fn parse_line(line: &[u8]) -> Option<MountInfo> {
    // 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    let fields: Vec<&[u8]> = line.split(|b| *b == b' ').filter(|f| !f.is_empty()).collect();
    let dash = fields.iter().position(|f| *f == b"-")?;
    if dash < 6 || fields.len() < dash + 3 {
        return None;
    }
    let devno = std::str::from_utf8(fields[2]).ok()?;
    let (major, minor) = devno.split_once(':')?;
    Some(MountInfo {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        mount_point: unescape_octal(fields[4]),
        fs_type: String::from_utf8_lossy(fields[dash + 1]).into_owned(),
        source: String::from_utf8_lossy(&unescape_octal(fields[dash + 2])).into_owned(),
    })
}

/// Decodes the `\040`-style escapes the kernel writes for space, tab, newline and `\`.
fn unescape_octal(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && i + 3 < s.len() && s[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = s[i + 1..i + 4].iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// True when `path` is `dir` or lies beneath it (both absolute, compared by component).
pub fn is_beneath(path: &[u8], dir: &[u8]) -> bool {
    let dir = trim_slashes(dir);
    let path = trim_slashes(path);
    dir.is_empty() || (path.starts_with(dir) && (path.len() == dir.len() || path[dir.len()] == b'/'))
}

fn trim_slashes(p: &[u8]) -> &[u8] {
    let mut p = p;
    while let [rest @ .., b'/'] = p {
        p = rest;
    }
    p
}

/// The mount that holds `path` (absolute, symlinks already resolved): the last-mounted of
/// the mounts with the longest mount point above it.
pub fn containing<'a>(mounts: &'a [MountInfo], path: &[u8]) -> Option<&'a MountInfo> {
    let mut best: Option<&MountInfo> = None;
    for m in mounts {
        if is_beneath(path, &m.mount_point)
            && best.is_none_or(|b| trim_slashes(&m.mount_point).len() >= trim_slashes(&b.mount_point).len())
        {
            best = Some(m);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
23 22 0:21 / /proc rw,nosuid shared:12 - proc proc rw\n\
24 22 0:5 / /dev rw shared:2 - devtmpfs udev rw,size=1k\n\
30 22 8:17 / /home rw,relatime shared:9 - xfs /dev/sdb1 rw,usrquota\n\
31 22 0:44 / /mnt/my\\040share rw master:3 - nfs4 srv:/export rw\n\
garbage line\n\
32 30 0:45 / /home/tmp rw - tmpfs tmpfs rw\n";

    #[test]
    fn parses_types_devices_and_escapes() {
        let m = parse(SAMPLE);
        assert_eq!(m.len(), 6);
        assert_eq!((m[0].major, m[0].minor), (8, 1));
        assert_eq!(m[0].fs_type, "ext4");
        assert_eq!(m[0].source, "/dev/sda1");
        assert_eq!(m[4].mount_point, b"/mnt/my share");
        assert_eq!(m[4].kind(), MountKind::Network);
        assert_eq!(m[1].kind(), MountKind::Pseudo);
        assert_eq!(m[3].kind(), MountKind::Local);
    }

    #[test]
    fn finds_the_innermost_mount() {
        let m = parse(SAMPLE);
        let fs = |p: &[u8]| containing(&m, p).map(|x| x.fs_type.clone());
        assert_eq!(fs(b"/home/alice/x").as_deref(), Some("xfs"));
        assert_eq!(fs(b"/homework").as_deref(), Some("ext4"));
        assert_eq!(fs(b"/home/tmp/a").as_deref(), Some("tmpfs"));
        assert_eq!(fs(b"/").as_deref(), Some("ext4"));
        assert!(is_beneath(b"/a/b", b"/a/"));
        assert!(!is_beneath(b"/ab", b"/a"));
    }
}
