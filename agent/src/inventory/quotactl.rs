//! quotactl(2), behind the [`QuotaCtl`] trait so that unit tests can fake the kernel.
//!
//! This module holds the inventory's only `unsafe` code: `nix::sys::quota` has no
//! Q_GETINFO, Q_GETFMT or Q_GETNEXTQUOTA, so they are called through `libc` with the
//! kernel's `include/uapi/linux/quota.h` structures declared here.
//!
//! The development machines' kernel has no quota format compiled in (CONFIG_QFMT_V2 unset),
//! so [`LinuxQuotactl`] cannot be exercised against active quotas there; the reading logic
//! is tested with a fake in `quota.rs` and the syscall wrappers only for their "quotas are
//! not active" answer.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::libc;

use super::quotafile::{DiskQuota, QuotaType};

/// Grace periods of active quotas, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelInfo {
    pub block_grace: u64,
    pub inode_grace: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum QuotactlError {
    #[error("{kind} quotas are not active on {device}")]
    NotActive { device: String, kind: &'static str },
    #[error("quotactl {op} is not supported for {device}")]
    Unsupported { device: String, op: &'static str },
    #[error("quotactl {op} on {device}: {source}")]
    Sys { device: String, op: &'static str, source: io::Error },
}

/// The quota queries the inventory makes. `device` is the block device of the mount.
pub trait QuotaCtl {
    /// Q_GETINFO: grace times; [`QuotactlError::NotActive`] when quotas are off.
    fn info(&self, device: &Path, kind: QuotaType) -> Result<KernelInfo, QuotactlError>;
    /// Q_GETFMT: the format id (`QFMT_VFS_V0` = 2...). XFS answers "not active" here.
    fn format(&self, device: &Path, kind: QuotaType) -> Result<u32, QuotactlError>;
    /// Q_GETNEXTQUOTA: the entry with the smallest id ≥ `id`; `None` past the last one.
    /// [`QuotactlError::Unsupported`] on kernels before 4.6.
    fn next(&self, device: &Path, kind: QuotaType, id: u32) -> Result<Option<DiskQuota>, QuotactlError>;
    /// Q_GETQUOTA: the entry of `id`.
    fn get(&self, device: &Path, kind: QuotaType, id: u32) -> Result<DiskQuota, QuotactlError>;
}

/// Names a `QFMT_*` id as quota-tools do.
pub fn format_name(fmt: u32) -> &'static str {
    match fmt {
        1 => "vfsold",
        2 => "vfsv0",
        3 => "ocfs2",
        4 => "vfsv1",
        _ => "unknown",
    }
}

const Q_GETFMT: libc::c_int = 0x80_0004;
const Q_GETINFO: libc::c_int = 0x80_0005;
const Q_GETQUOTA: libc::c_int = 0x80_0007;
const Q_GETNEXTQUOTA: libc::c_int = 0x80_0009;

/// `struct if_dqblk` (limits in 1 KiB blocks, space in bytes).
#[repr(C)]
#[derive(Default)]
struct IfDqblk {
    bhardlimit: u64,
    bsoftlimit: u64,
    curspace: u64,
    ihardlimit: u64,
    isoftlimit: u64,
    curinodes: u64,
    btime: u64,
    itime: u64,
    valid: u32,
}

/// `struct if_nextdqblk`: `if_dqblk` followed by the id found.
#[repr(C)]
#[derive(Default)]
struct IfNextDqblk {
    bhardlimit: u64,
    bsoftlimit: u64,
    curspace: u64,
    ihardlimit: u64,
    isoftlimit: u64,
    curinodes: u64,
    btime: u64,
    itime: u64,
    valid: u32,
    id: u32,
}

/// `struct if_dqinfo`.
#[repr(C)]
#[derive(Default)]
struct IfDqinfo {
    bgrace: u64,
    igrace: u64,
    flags: u32,
    valid: u32,
}

/// The real quotactl(2).
#[derive(Clone, Copy, Debug, Default)]
pub struct LinuxQuotactl;

fn qtype(kind: QuotaType) -> libc::c_int {
    match kind {
        QuotaType::User => 0,
        QuotaType::Group => 1,
    }
}

/// A structure the kernel fills for one quotactl command. Private, and implemented only
/// for the `repr(C)` layouts of `include/uapi/linux/quota.h` paired with their command,
/// which is what makes [`quotactl`] sound.
trait Answer: Default {
    const CMD: libc::c_int;
}

/// The `__u32` Q_GETFMT writes.
#[repr(transparent)]
#[derive(Default)]
struct Fmt(u32);

impl Answer for Fmt {
    const CMD: libc::c_int = Q_GETFMT;
}
impl Answer for IfDqinfo {
    const CMD: libc::c_int = Q_GETINFO;
}
impl Answer for IfDqblk {
    const CMD: libc::c_int = Q_GETQUOTA;
}
impl Answer for IfNextDqblk {
    const CMD: libc::c_int = Q_GETNEXTQUOTA;
}

/// Calls quotactl(2) with `T`'s command for `kind` on `device` and returns what the
/// kernel wrote.
fn quotactl<T: Answer>(kind: QuotaType, device: &Path, id: u32) -> Result<T, Errno> {
    let dev = CString::new(device.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    let qcmd = (T::CMD << 8) | (qtype(kind) & 0xff);
    // The kernel takes the id as an int and reinterprets it as qid_t (u32).
    let id = id as libc::c_int;
    let mut out = T::default();
    // SAFETY: `dev` is a NUL-terminated string that outlives the call. `out` is a live,
    // writable `T`, and `T` is one of the `Answer` types above, each the repr(C) layout
    // the kernel writes for `T::CMD` (sizes checked in the tests), so the kernel writes
    // only inside it. No pointer is kept after the call.
    let rc = unsafe { libc::quotactl(qcmd, dev.as_ptr(), id, (&mut out as *mut T).cast::<libc::c_char>()) };
    if rc == 0 { Ok(out) } else { Err(Errno::last()) }
}

fn map_err(e: Errno, device: &Path, kind: QuotaType, op: &'static str) -> QuotactlError {
    let device = device.display().to_string();
    match e {
        Errno::ESRCH => QuotactlError::NotActive { device, kind: kind.name() },
        Errno::ENOSYS | Errno::EOPNOTSUPP | Errno::EINVAL => QuotactlError::Unsupported { device, op },
        e => QuotactlError::Sys { device, op, source: io::Error::from(e) },
    }
}

impl QuotaCtl for LinuxQuotactl {
    fn info(&self, device: &Path, kind: QuotaType) -> Result<KernelInfo, QuotactlError> {
        let i: IfDqinfo = quotactl(kind, device, 0).map_err(|e| map_err(e, device, kind, "Q_GETINFO"))?;
        Ok(KernelInfo { block_grace: i.bgrace, inode_grace: i.igrace })
    }

    fn format(&self, device: &Path, kind: QuotaType) -> Result<u32, QuotactlError> {
        let f: Fmt = quotactl(kind, device, 0).map_err(|e| map_err(e, device, kind, "Q_GETFMT"))?;
        Ok(f.0)
    }

    fn next(&self, device: &Path, kind: QuotaType, id: u32) -> Result<Option<DiskQuota>, QuotactlError> {
        match quotactl::<IfNextDqblk>(kind, device, id) {
            Ok(d) => Ok(Some(DiskQuota {
                id: d.id,
                block_hard: d.bhardlimit,
                block_soft: d.bsoftlimit,
                inode_hard: d.ihardlimit,
                inode_soft: d.isoftlimit,
                cur_inodes: d.curinodes,
                cur_space: d.curspace,
                btime: d.btime,
                itime: d.itime,
            })),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(map_err(e, device, kind, "Q_GETNEXTQUOTA")),
        }
    }

    fn get(&self, device: &Path, kind: QuotaType, id: u32) -> Result<DiskQuota, QuotactlError> {
        let d: IfDqblk = quotactl(kind, device, id).map_err(|e| map_err(e, device, kind, "Q_GETQUOTA"))?;
        Ok(DiskQuota {
            id,
            block_hard: d.bhardlimit,
            block_soft: d.bsoftlimit,
            inode_hard: d.ihardlimit,
            inode_soft: d.isoftlimit,
            cur_inodes: d.curinodes,
            cur_space: d.curspace,
            btime: d.btime,
            itime: d.itime,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<IfDqblk>(), 72);
        assert_eq!(std::mem::size_of::<IfNextDqblk>(), 72);
        assert_eq!(std::mem::size_of::<IfDqinfo>(), 24);
        assert_eq!(std::mem::size_of::<Fmt>(), 4);
        assert_eq!(format_name(4), "vfsv1");
        assert_eq!(format_name(99), "unknown");
    }

    #[test]
    fn inactive_or_missing_is_a_clean_error() {
        // Whatever this kernel supports, a path that is no block device never panics and
        // never claims active quotas.
        let r = LinuxQuotactl.info(Path::new("/nonexistent-device"), QuotaType::User);
        assert!(r.is_err());
        let r = LinuxQuotactl.info(Path::new("bad\0path"), QuotaType::Group);
        assert!(r.is_err());
    }
}
