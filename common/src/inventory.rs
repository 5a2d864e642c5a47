//! What an agent reports about its server. Collected by `p2c-agent`, judged by the
//! controller's assessment, carried as JSON inside `InventoryReport`.
//!
//! Every field comes from an untrusted machine: the controller bounds and validates what it
//! uses and never interprets strings as paths on the node.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Bumped when a field changes meaning; the controller refuses other schemas.
pub const INVENTORY_SCHEMA: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Inventory {
    pub schema: u32,
    /// When the agent collected it (seconds since the epoch).
    pub collected_unix: u64,
    /// Where the facts about network, memory and mounts came from: `live` (the running
    /// kernel) or `tree` (configuration files below a `--root` directory).
    pub facts_from: String,
    /// The directory the agent treats as the server's root.
    pub root: String,
    pub hostname: String,
    pub os: OsInfo,
    pub kernel: KernelInfo,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub swap_bytes: u64,
    pub mounts: Vec<Mount>,
    pub interfaces: Vec<Interface>,
    pub routes: Vec<Route>,
    pub dns: Dns,
    pub selinux: Selinux,
    pub swaps: Vec<Swap>,
    pub block_devices: Vec<BlockDevice>,
    pub raw_bindings: Vec<RawBinding>,
    pub quotas: Vec<FsQuota>,
    pub kernel_modules: Vec<String>,
    pub listeners: Vec<Listener>,
    pub container_runtimes: Vec<String>,
    /// Facts the agent could not collect, each with the reason.
    pub gaps: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OsInfo {
    /// `ID` of os-release (`debian`, `ubuntu`, `centos`, `opensuse-leap`, `windows`...).
    pub id: String,
    pub id_like: Vec<String>,
    pub name: String,
    pub version_id: String,
    pub pretty_name: String,
    pub family: OsFamily,
    /// Set for Windows sources: the Windows Server release, e.g. `2008`, `2003`, `2008 R2`.
    pub windows_version: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OsFamily {
    Debian,
    Rhel,
    Suse,
    Arch,
    Alpine,
    Gentoo,
    Windows,
    #[default]
    Unknown,
}

impl OsFamily {
    /// Classifies an os-release `ID` and `ID_LIKE`.
    pub fn classify(id: &str, id_like: &[String]) -> OsFamily {
        let all = std::iter::once(id).chain(id_like.iter().map(String::as_str));
        for word in all {
            let f = match word {
                "debian" | "ubuntu" | "devuan" | "raspbian" | "linuxmint" => OsFamily::Debian,
                "rhel" | "centos" | "fedora" | "rocky" | "almalinux" | "ol" | "scientific" | "amzn"
                | "cloudlinux" | "virtuozzo" => OsFamily::Rhel,
                "suse" | "sles" | "opensuse" | "opensuse-leap" | "opensuse-tumbleweed" | "sled" => {
                    OsFamily::Suse
                }
                "arch" | "manjaro" => OsFamily::Arch,
                "alpine" => OsFamily::Alpine,
                "gentoo" => OsFamily::Gentoo,
                "windows" => OsFamily::Windows,
                _ => continue,
            };
            return f;
        }
        OsFamily::Unknown
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KernelInfo {
    pub release: String,
    pub version: String,
    pub machine: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// A disk file system whose files are copied and merged into the container tree.
    #[default]
    Local,
    /// proc, sysfs, tmpfs, devtmpfs, cgroup...: not copied; the mount point is.
    Pseudo,
    /// nfs, cifs, glusterfs...: not copied; the fstab line is kept and reported.
    Network,
}

impl MountKind {
    /// Classifies a file-system type name.
    pub fn of_fs_type(fs: &str) -> MountKind {
        match fs {
            "nfs" | "nfs4" | "cifs" | "smb3" | "smbfs" | "glusterfs" | "ceph" | "fuse.sshfs" | "9p"
            | "afs" | "lustre" | "gpfs" | "ocfs2" | "gfs2" | "davfs" | "fuse.s3fs" => MountKind::Network,
            "ext2" | "ext3" | "ext4" | "xfs" | "btrfs" | "jfs" | "reiserfs" | "zfs" | "vfat" | "exfat"
            | "ntfs" | "ntfs3" | "f2fs" | "iso9660" | "udf" | "hfsplus" | "simfs" | "vzfs" | "overlay"
            | "squashfs" | "bcachefs" | "nilfs2" | "minix" | "msdos" => MountKind::Local,
            _ => MountKind::Pseudo,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Mount {
    pub device: String,
    /// Absolute mount point as seen on the source (not below `--root`).
    pub mountpoint: String,
    pub fs_type: String,
    pub options: Vec<String>,
    pub kind: MountKind,
    pub size_bytes: u64,
    pub used_bytes: u64,
    pub inodes_total: u64,
    pub inodes_used: u64,
    /// Set for a bind mount: the mount point of another mount in this list that shows the
    /// same file system at or above the bound directory, i.e. whose files already hold
    /// these (a btrfs subvolume is not a bind mount of its parent volume).
    pub bind_of: Option<String>,
}

impl Mount {
    /// Quota options present in the mount options (usrquota, grpquota, quota, usrjquota=...).
    pub fn quota_options(&self) -> Vec<&str> {
        self.options
            .iter()
            .map(String::as_str)
            .filter(|o| {
                matches!(
                    *o,
                    "quota"
                        | "usrquota"
                        | "grpquota"
                        | "prjquota"
                        | "uquota"
                        | "gquota"
                        | "pquota"
                        | "usrjquota"
                        | "grpjquota"
                ) || o.starts_with("usrjquota=")
                    || o.starts_with("grpjquota=")
                    || o.starts_with("jqfmt=")
            })
            .collect()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Interface {
    pub name: String,
    /// Lower-case `aa:bb:cc:dd:ee:ff`, if the link has one.
    pub mac: Option<String>,
    pub up: bool,
    pub loopback: bool,
    pub mtu: u32,
    pub addresses: Vec<IfAddr>,
    /// Set when the guest's configuration brings this interface up with DHCP.
    pub dhcp: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfAddr {
    pub address: IpAddr,
    pub prefix: u8,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// `default` or a CIDR.
    pub destination: String,
    pub gateway: Option<IpAddr>,
    pub interface: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub search: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SelinuxMode {
    Enforcing,
    Permissive,
    Disabled,
    /// No SELinux on this server at all.
    #[default]
    Absent,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Selinux {
    /// The running mode (from the kernel), or the configured one for a tree source.
    pub mode: SelinuxMode,
    /// `SELINUX=` of /etc/selinux/config, if present.
    pub config_mode: Option<SelinuxMode>,
    pub policy: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Swap {
    pub device: String,
    /// `partition` or `file`.
    pub kind: String,
    pub size_bytes: u64,
    /// Whether /etc/fstab names it (a swap not active now still is).
    pub in_fstab: bool,
    pub active: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlockDevice {
    pub name: String,
    pub major: u32,
    pub minor: u32,
    pub size_bytes: u64,
    /// `disk`, `part`, `lvm`, `md`, `loop`, `dm`...
    pub kind: String,
    /// File system or content signature if known (`ext4`, `swap`, `LVM2_member`).
    pub fs_type: Option<String>,
    /// Where it is mounted, if it is.
    pub mountpoint: Option<String>,
    /// Names of devices built on top of it (partitions, dm targets).
    pub holders: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawBinding {
    /// `/dev/raw/raw1`.
    pub raw_device: String,
    /// The block device it binds (`/dev/sdb1`), or `major:minor`.
    pub bound_to: String,
    /// Where the binding was found (`/etc/sysconfig/rawdevices`, a udev rule, the kernel).
    pub source: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaSource {
    /// Read with quotactl(2) from active kernel quotas.
    #[default]
    Kernel,
    /// Read from the quota files (aquota.user/aquota.group) on the file system.
    Files,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QuotaLimit {
    pub id: u32,
    /// Name from the source's passwd/group, if it has one.
    pub name: Option<String>,
    /// In 1 KiB blocks.
    pub block_soft: u64,
    pub block_hard: u64,
    pub inode_soft: u64,
    pub inode_hard: u64,
    /// Current usage, in bytes and inodes.
    pub used_bytes: u64,
    pub used_inodes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FsQuota {
    pub mountpoint: String,
    pub device: String,
    pub fs_type: String,
    pub source: QuotaSource,
    /// `vfsv0`, `vfsv1`, `xfs`...
    pub format: String,
    pub users: Vec<QuotaLimit>,
    pub groups: Vec<QuotaLimit>,
    /// Grace periods in seconds.
    pub block_grace_secs: u64,
    pub inode_grace_secs: u64,
}

impl FsQuota {
    /// Limits with at least one non-zero bound (what is worth carrying).
    pub fn limited_users(&self) -> impl Iterator<Item = &QuotaLimit> {
        self.users.iter().filter(|q| q.has_limits())
    }
    pub fn limited_groups(&self) -> impl Iterator<Item = &QuotaLimit> {
        self.groups.iter().filter(|q| q.has_limits())
    }
}

impl QuotaLimit {
    pub fn has_limits(&self) -> bool {
        self.block_soft | self.block_hard | self.inode_soft | self.inode_hard != 0
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Listener {
    /// `tcp`, `tcp6`, `udp`, `udp6`.
    pub proto: String,
    pub address: String,
    pub port: u16,
    pub process: Option<String>,
}

/// Why no quota partition could be chosen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuotaChoiceError {
    #[error(
        "partitions {candidates:?} have quotas and only one can keep them; choose one with --quota-partition"
    )]
    Ambiguous { candidates: Vec<String> },
    #[error(
        "--quota-partition {requested}: no source partition with quotas is mounted there (candidates: {candidates:?})"
    )]
    NotFound { requested: String, candidates: Vec<String> },
}

impl Inventory {
    /// Mount points of partitions that carry quota limits.
    pub fn quota_candidates(&self) -> Vec<String> {
        self.quotas
            .iter()
            .filter(|q| q.limited_users().next().is_some() || q.limited_groups().next().is_some())
            .map(|q| q.mountpoint.clone())
            .collect()
    }

    /// The partition whose quotas the container keeps: the operator's choice, else the only
    /// candidate; `None` when no partition has quotas.
    pub fn choose_quota_partition(
        &self,
        requested: Option<&str>,
    ) -> Result<Option<&FsQuota>, QuotaChoiceError> {
        let candidates = self.quota_candidates();
        if let Some(req) = requested {
            let norm = |s: &str| {
                let t = s.trim_end_matches('/');
                if t.is_empty() { "/".to_string() } else { t.to_string() }
            };
            return self
                .quotas
                .iter()
                .find(|q| norm(&q.mountpoint) == norm(req))
                .map(Some)
                .ok_or(QuotaChoiceError::NotFound { requested: req.to_string(), candidates });
        }
        match candidates.len() {
            0 => Ok(None),
            1 => Ok(self.quotas.iter().find(|q| q.mountpoint == candidates[0])),
            _ => Err(QuotaChoiceError::Ambiguous { candidates }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fsq(mp: &str, limited: bool) -> FsQuota {
        FsQuota {
            mountpoint: mp.into(),
            users: vec![QuotaLimit {
                id: 1000,
                block_hard: if limited { 100 } else { 0 },
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn quota_partition_choice() {
        let mut inv = Inventory::default();
        assert_eq!(inv.choose_quota_partition(None), Ok(None));
        inv.quotas = vec![fsq("/home", true), fsq("/var", false)];
        assert_eq!(inv.choose_quota_partition(None).unwrap().unwrap().mountpoint, "/home");
        inv.quotas.push(fsq("/srv", true));
        assert!(matches!(inv.choose_quota_partition(None), Err(QuotaChoiceError::Ambiguous { .. })));
        assert_eq!(inv.choose_quota_partition(Some("/srv/")).unwrap().unwrap().mountpoint, "/srv");
        assert!(matches!(inv.choose_quota_partition(Some("/data")), Err(QuotaChoiceError::NotFound { .. })));
    }

    #[test]
    fn families() {
        assert_eq!(OsFamily::classify("ubuntu", &[]), OsFamily::Debian);
        assert_eq!(OsFamily::classify("rocky", &["rhel".into()]), OsFamily::Rhel);
        assert_eq!(OsFamily::classify("weird", &["suse".into()]), OsFamily::Suse);
        assert_eq!(OsFamily::classify("weird", &[]), OsFamily::Unknown);
    }
}
