//! What the node can do: file systems under the private area, the running kernel's build
//! configuration, mounts, loop devices. Read-only; behind [`NodeProbe`] so the choice of a
//! quota method can be tested with a fake node.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::QuotaError;
use super::cmd::{Cmd, CommandRunner};

/// `statfs` magic numbers (linux/magic.h).
pub const BTRFS_SUPER_MAGIC: u64 = 0x9123_683E;
pub const EXT4_SUPER_MAGIC: u64 = 0xEF53;
pub const XFS_SUPER_MAGIC: u64 = 0x5846_5342;

/// Name of a file-system magic for messages.
pub fn fs_name(magic: u64) -> String {
    match magic {
        BTRFS_SUPER_MAGIC => "btrfs".into(),
        EXT4_SUPER_MAGIC => "ext2/3/4".into(),
        XFS_SUPER_MAGIC => "xfs".into(),
        0x0102_1994 => "tmpfs".into(),
        0x794C_7630 => "overlayfs".into(),
        m => format!("file system 0x{m:x}"),
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub mountpoint: PathBuf,
    pub fs_type: String,
    pub source: String,
    /// Per-mount and super-block options together.
    pub options: Vec<String>,
}

impl MountEntry {
    pub fn has_option(&self, opt: &str) -> bool {
        self.options.iter().any(|o| o == opt)
    }
}

/// Facts about the node the quota methods depend on.
pub trait NodeProbe: Send + Sync {
    /// `statfs` magic of `path`, or of its nearest existing ancestor.
    fn fs_magic(&self, path: &Path) -> Result<u64, QuotaError>;
    /// The mount that holds `path` (or its nearest existing ancestor).
    fn mount_of(&self, path: &Path) -> Option<MountEntry>;
    /// Whether `path` is the root of a btrfs subvolume.
    fn is_btrfs_subvolume(&self, path: &Path) -> bool;
    /// The running kernel's build configuration and where it was read, if readable.
    fn kernel_config(&self) -> Option<(String, String)>;
    /// `uname -r`.
    fn kernel_release(&self) -> String;
    /// The loop device backed by `file`, if one is.
    fn loop_device_of(&self, file: &Path) -> Option<String>;
    fn exists(&self, path: &Path) -> bool;
}

/// The Linux implementation, reading `/proc`, `/sys` and `statfs`.
pub struct LinuxProbe {
    runner: Arc<dyn CommandRunner>,
}

impl LinuxProbe {
    pub fn new(runner: Arc<dyn CommandRunner>) -> LinuxProbe {
        LinuxProbe { runner }
    }
}

/// `path` itself if it exists, else the closest ancestor that does.
pub fn existing_ancestor(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    while !p.exists() {
        match p.parent() {
            Some(parent) if parent != p => p = parent.to_path_buf(),
            _ => return PathBuf::from("/"),
        }
    }
    p
}

impl NodeProbe for LinuxProbe {
    fn fs_magic(&self, path: &Path) -> Result<u64, QuotaError> {
        let p = existing_ancestor(path);
        let st = rustix::fs::statfs(&p).map_err(|e| QuotaError::Io {
            path: p.clone(),
            op: "statfs",
            source: e.into(),
        })?;
        // f_type is signed on some targets; the magic numbers are 32-bit.
        Ok((st.f_type as u64) & 0xFFFF_FFFF)
    }

    fn mount_of(&self, path: &Path) -> Option<MountEntry> {
        let p = existing_ancestor(path).canonicalize().ok()?;
        let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        mount_containing(&parse_mountinfo(&text), &p).cloned()
    }

    fn is_btrfs_subvolume(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        // A subvolume's root directory always has inode number 256
        // (BTRFS_FIRST_FREE_OBJECTID); this is how btrfs-progs tells them apart.
        matches!(self.fs_magic(path), Ok(BTRFS_SUPER_MAGIC))
            && std::fs::symlink_metadata(path).map(|m| m.is_dir() && m.ino() == 256).unwrap_or(false)
    }

    fn kernel_config(&self) -> Option<(String, String)> {
        let boot = PathBuf::from(format!("/boot/config-{}", self.kernel_release()));
        if let Ok(text) = std::fs::read_to_string(&boot) {
            return Some((text, boot.display().to_string()));
        }
        if Path::new("/proc/config.gz").exists() {
            let out = self.runner.run(&Cmd::new("gzip").args(["-dc", "/proc/config.gz"])).ok()?;
            return Some((out.stdout_str(), "/proc/config.gz".to_string()));
        }
        None
    }

    fn kernel_release(&self) -> String {
        rustix::system::uname().release().to_string_lossy().into_owned()
    }

    fn loop_device_of(&self, file: &Path) -> Option<String> {
        let want = file.canonicalize().ok()?;
        let entries = std::fs::read_dir("/sys/block").ok()?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                continue;
            }
            let Ok(backing) = std::fs::read_to_string(e.path().join("loop/backing_file")) else {
                continue;
            };
            if Path::new(backing.trim()) == want {
                return Some(format!("/dev/{name}"));
            }
        }
        None
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}

/// Undoes the octal escapes (`\040` for a space) of `/proc/*/mountinfo` fields.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| c.is_ascii_digit()) {
            let v = (b[i + 1] - b'0') as u32 * 64 + (b[i + 2] - b'0') as u32 * 8 + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/self/mountinfo` (see proc(5)); malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            if sep < 6 || fields.len() < sep + 4 {
                return None;
            }
            let mut options: Vec<String> = fields[5].split(',').map(str::to_string).collect();
            options.extend(fields[sep + 3].split(',').map(str::to_string));
            Some(MountEntry {
                mountpoint: PathBuf::from(unescape(fields[4])),
                fs_type: fields[sep + 1].to_string(),
                source: unescape(fields[sep + 2]),
                options,
            })
        })
        .collect()
}

/// The last-mounted entry whose mount point is the longest prefix of `path`.
pub fn mount_containing<'a>(mounts: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| path.starts_with(&m.mountpoint))
        .max_by_key(|(i, m)| (m.mountpoint.components().count(), *i))
        .map(|(_, m)| m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 7:0 / /vz/private rw,relatime shared:20 - btrfs /dev/loop0 rw,space_cache=v2,subvolid=5,subvol=/
41 22 7:1 / /srv/my\\040data rw - xfs /dev/loop1 rw,prjquota
";

    #[test]
    fn mountinfo_lookup() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 3);
        let e = mount_containing(&m, Path::new("/vz/private/101")).unwrap();
        assert_eq!(e.fs_type, "btrfs");
        assert!(e.has_option("subvolid=5"));
        let e = mount_containing(&m, Path::new("/srv/my data/x")).unwrap();
        assert_eq!(e.mountpoint, PathBuf::from("/srv/my data"));
        assert!(e.has_option("prjquota"));
        assert_eq!(mount_containing(&m, Path::new("/etc")).unwrap().fs_type, "ext4");
    }

    #[test]
    fn linux_probe_sees_this_node() {
        let p = LinuxProbe::new(Arc::new(super::super::cmd::SystemRunner));
        assert!(p.fs_magic(Path::new("/nonexistent/deeper")).is_ok());
        assert!(!p.kernel_release().is_empty());
        assert!(p.mount_of(Path::new("/")).is_some());
    }
}
