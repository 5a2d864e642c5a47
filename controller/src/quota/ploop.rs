//! The `ploop` layout, the way OpenVZ 7 / Virtuozzo 7 keep containers: the private area
//! holds `root.hdd/root.hds`, a raw (sparse) image with an ext4 file system, and
//! `root.hdd/DiskDescriptor.xml` describing it. The image is sized from the `DISKSPACE`
//! hard limit, so the file system itself is the container total; the user and group limits
//! are the image's own ext4 quota: `aquota.user` and `aquota.group` (format vfsv1) at the
//! image root, written with quota-tools while the image is loop-mounted and the kernel's
//! quota is off, as they would be inside a Virtuozzo container with `QUOTAUGIDLIMIT` set.
//!
//! `DiskDescriptor.xml` follows ploop's `lib/xml.c` (`ploop_store_diskdescriptor`): sizes in
//! 512-byte sectors, 1 MiB blocks (2048 sectors, ploop's default cluster), geometry from
//! ploop's `ConvertToCHS`, one `Plain` (raw) image whose GUID is ploop's fixed top-delta
//! GUID, and one snapshot with the null parent. The file system is made directly on the
//! image (no GPT partition): ploop mounts the device itself when it has no partition.
//!
//! The migration calls [`Ploop::create`] (through [`PloopBackend::prepare`]) before
//! receiving, [`Ploop::mount`] to receive into the image, drops the [`MountGuard`] when the
//! passes are done, then [`PloopBackend::apply`] (which mounts the image once more to write
//! the quota files). The config's `VE_LAYOUT` is [`LAYOUT`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::cmd::{Cmd, CommandRunner};
use super::plan::QuotaPlan;
use super::{Method, Node, QuotaBackend, QuotaError, QuotaOutcome, Result, io_err};

/// `VE_LAYOUT` of such a container.
pub const LAYOUT: &str = "ploop";
pub const IMAGE_DIR: &str = "root.hdd";
pub const IMAGE_FILE: &str = "root.hds";
pub const DESCRIPTOR_FILE: &str = "DiskDescriptor.xml";
/// ploop's block (cluster) size in 512-byte sectors: 1 MiB.
pub const BLOCKSIZE_SECTORS: u64 = 2048;
/// ploop's fixed GUID of the top delta (`TOPDELTA_UUID`) and the null GUID (`NONE_UUID`).
pub const TOP_GUID: &str = "{5fbaabe3-6958-40ff-92a7-860e329aab41}";
pub const NONE_GUID: &str = "{00000000-0000-0000-0000-000000000000}";
/// Quota format of the in-image quota files.
pub const QUOTA_FORMAT: &str = "vfsv1";
/// Journaled-quota mount options naming the in-image quota files.
pub const QUOTA_MOUNT_OPTIONS: &str = "usrjquota=aquota.user,grpjquota=aquota.group,jqfmt=vfsv1";
/// Smallest image made (ext4 needs room for its journal and metadata): 64 MiB.
pub const MIN_IMAGE_KIB: u64 = 64 * 1024;

pub fn image_dir(private: &Path) -> PathBuf {
    private.join(IMAGE_DIR)
}

pub fn image_path(private: &Path) -> PathBuf {
    image_dir(private).join(IMAGE_FILE)
}

pub fn descriptor_path(private: &Path) -> PathBuf {
    image_dir(private).join(DESCRIPTOR_FILE)
}

/// Image size in sectors for `kib` KiB: at least [`MIN_IMAGE_KIB`], rounded up to whole
/// ploop blocks.
pub fn size_sectors(kib: u64) -> u64 {
    let sectors = kib.max(MIN_IMAGE_KIB).saturating_mul(2);
    sectors.div_ceil(BLOCKSIZE_SECTORS) * BLOCKSIZE_SECTORS
}

/// Disk geometry as ploop computes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chs {
    pub cylinders: u64,
    pub heads: u64,
    pub sectors: u64,
}

/// ploop's `ConvertToCHS` (include/ploop1_image.h).
pub fn chs(size: u64) -> Chs {
    const HEADS: u64 = 16;
    const SECTORS: u64 = 63;
    if size > 1_032_192 && size < 16_777_216 {
        return Chs { cylinders: size / (SECTORS * HEADS), heads: HEADS, sectors: SECTORS };
    }
    let lba = Chs { cylinders: size, heads: 1, sectors: 1 };
    let Some(sectors) = [SECTORS, 32, 16, 8].into_iter().find(|d| size.is_multiple_of(*d)) else {
        return lba;
    };
    let rest = size / sectors;
    let Some(heads) = [HEADS, 8, 4, 2].into_iter().find(|d| rest.is_multiple_of(*d)) else {
        return lba;
    };
    Chs { cylinders: rest / heads, heads, sectors }
}

/// `DiskDescriptor.xml` for a raw image of `size` sectors.
pub fn disk_descriptor(size: u64) -> String {
    let g = chs(size);
    // ploop writes Sectors as size / (cylinders * heads).
    let sectors = size / (g.cylinders * g.heads).max(1);
    format!(
        r#"<?xml version="1.0"?>
<Parallels_disk_image>
  <Disk_Parameters>
    <Disk_size>{size}</Disk_size>
    <Cylinders>{cyl}</Cylinders>
    <Heads>{heads}</Heads>
    <Sectors>{sectors}</Sectors>
    <Padding>0</Padding>
  </Disk_Parameters>
  <StorageData>
    <Storage>
      <Start>0</Start>
      <End>{size}</End>
      <Blocksize>{BLOCKSIZE_SECTORS}</Blocksize>
      <Image>
        <GUID>{TOP_GUID}</GUID>
        <Type>Plain</Type>
        <File>{IMAGE_FILE}</File>
      </Image>
    </Storage>
  </StorageData>
  <Snapshots>
    <TopGUID>{TOP_GUID}</TopGUID>
    <Shot>
      <GUID>{TOP_GUID}</GUID>
      <ParentGUID>{NONE_GUID}</ParentGUID>
    </Shot>
  </Snapshots>
</Parallels_disk_image>
"#,
        cyl = g.cylinders,
        heads = g.heads,
    )
}

/// Whether the tools the ploop layout needs are here.
pub fn detect(node: &Node) -> std::result::Result<String, String> {
    let missing = node.missing(&["mkfs.ext4", "mount", "umount", "quotacheck", "setquota"]);
    if missing.is_empty() {
        Ok("ploop layout: raw ext4 image sized from DISKSPACE, user/group limits in the image's quota files"
            .into())
    } else {
        Err(format!("ploop layout needs {} (not found)", missing.join(", ")))
    }
}

/// Creating, mounting and writing quota into a container's image.
#[derive(Clone)]
pub struct Ploop {
    node: Node,
}

impl Ploop {
    pub fn new(node: Node) -> Ploop {
        Ploop { node }
    }

    fn runner(&self) -> &Arc<dyn CommandRunner> {
        &self.node.runner
    }

    /// Creates `root.hdd/` with a sparse image of at least `size_kib` KiB (see
    /// [`size_sectors`]), an ext4 file system on it and `DiskDescriptor.xml`. An existing
    /// image (a resumed migration) is kept as it is.
    pub fn create(&self, private: &Path, size_kib: u64) -> Result<()> {
        let dir = image_dir(private);
        let image = image_path(private);
        let descriptor = descriptor_path(private);
        if image.exists() && descriptor.exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&dir).map_err(io_err(&dir, "create directory"))?;
        set_mode(private, 0o700)?;
        let sectors = size_sectors(size_kib);
        let file = std::fs::File::create(&image).map_err(io_err(&image, "create image"))?;
        file.set_len(sectors * 512).map_err(io_err(&image, "size image"))?;
        drop(file);
        set_mode(&image, 0o600)?;
        self.runner().run(
            &Cmd::new("mkfs.ext4")
                .args(["-F", "-q", "-j", "-b", "4096", "-E", "lazy_itable_init=1"])
                .arg(&image),
        )?;
        // The descriptor last: its presence marks a finished image.
        let tmp = dir.join(format!("{DESCRIPTOR_FILE}.tmp"));
        std::fs::write(&tmp, disk_descriptor(sectors)).map_err(io_err(&tmp, "write"))?;
        std::fs::rename(&tmp, &descriptor).map_err(io_err(&descriptor, "rename"))?;
        Ok(())
    }

    /// Loop-mounts the image at `mountpoint` (created if needed) with the journaled-quota
    /// options; unmounted when the guard is dropped.
    pub fn mount(&self, private: &Path, mountpoint: &Path) -> Result<MountGuard> {
        let image = image_path(private);
        if !image.exists() {
            return Err(QuotaError::Io {
                path: image,
                op: "mount image",
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        std::fs::create_dir_all(mountpoint).map_err(io_err(mountpoint, "create mount point"))?;
        // The image may still be attached to a loop device whose file system is up: a mount
        // namespace created while it was mounted (on a node whose / is not a shared mount)
        // keeps it after our umount. Mounting that device again gives the same file-system
        // instance; attaching the image to a second loop device would give a second one
        // over the same blocks.
        let mount = match self.node.probe.loop_device_of(&image) {
            Some(dev) => {
                tracing::info!(image = %image.display(), device = %dev, "container image still attached; mounting its loop device");
                Cmd::new("mount").args(["-t", "ext4", "-o", QUOTA_MOUNT_OPTIONS, &dev]).arg(mountpoint)
            }
            None => Cmd::new("mount")
                .args(["-t", "ext4", "-o"])
                .arg(format!("loop,{QUOTA_MOUNT_OPTIONS}"))
                .arg(&image)
                .arg(mountpoint),
        };
        self.runner().run(&mount)?;
        Ok(MountGuard { target: mountpoint.to_path_buf(), runner: self.runner().clone(), mounted: true })
    }

    /// Commands writing the plan's user and group limits into the quota files of the
    /// file system mounted at `mountpoint` (kernel quota off).
    pub fn limit_commands(mountpoint: &Path, plan: &QuotaPlan) -> Vec<Cmd> {
        let mut cmds =
            vec![Cmd::new("quotacheck").args(["-c", "-u", "-g", "-m", "-F", QUOTA_FORMAT]).arg(mountpoint)];
        for (flag, limits) in [("-u", &plan.users), ("-g", &plan.groups)] {
            if !limits.is_empty() {
                let batch: String = limits
                    .iter()
                    .map(|l| {
                        format!(
                            "{} {} {} {} {}\n",
                            l.id, l.block_soft, l.block_hard, l.inode_soft, l.inode_hard
                        )
                    })
                    .collect();
                cmds.push(
                    Cmd::new("setquota").args([flag, "-F", QUOTA_FORMAT, "-b"]).arg(mountpoint).stdin(batch),
                );
            }
            if plan.block_grace_secs > 0 || plan.inode_grace_secs > 0 {
                cmds.push(
                    Cmd::new("setquota")
                        .args([
                            "-t".to_string(),
                            flag.to_string(),
                            "-F".into(),
                            QUOTA_FORMAT.into(),
                            plan.block_grace_secs.to_string(),
                            plan.inode_grace_secs.to_string(),
                        ])
                        .arg(mountpoint),
                );
            }
        }
        cmds
    }

    /// Writes the user and group limits into the image mounted at `mountpoint`; returns
    /// the command lines run.
    pub fn write_limits(&self, mountpoint: &Path, plan: &QuotaPlan) -> Result<Vec<String>> {
        let mut ran = Vec::new();
        for c in Self::limit_commands(mountpoint, plan) {
            ran.push(c.to_string());
            self.runner().run(&c)?;
        }
        Ok(ran)
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path, "chmod"))
}

/// A mounted image; unmounted on drop.
pub struct MountGuard {
    target: PathBuf,
    runner: Arc<dyn CommandRunner>,
    mounted: bool,
}

impl MountGuard {
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Unmounts now, reporting a failure (drop only logs it).
    pub fn unmount(mut self) -> Result<()> {
        self.mounted = false;
        self.runner.run(&Cmd::new("umount").arg(&self.target)).map(|_| ())
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.mounted
            && let Err(e) = self.runner.run(&Cmd::new("umount").arg(&self.target))
        {
            tracing::warn!(mountpoint = %self.target.display(), error = %e, "cannot unmount container image");
        }
    }
}

pub struct PloopBackend {
    ploop: Ploop,
}

impl PloopBackend {
    pub fn new(node: Node) -> PloopBackend {
        PloopBackend { ploop: Ploop::new(node) }
    }

    pub fn ploop(&self) -> &Ploop {
        &self.ploop
    }
}

impl QuotaBackend for PloopBackend {
    fn method(&self) -> Method {
        Method::Ploop
    }

    fn prepare(&self, _ctid: u32, private: &Path, plan: &QuotaPlan) -> Result<()> {
        self.ploop.create(private, plan.diskspace.1)
    }

    fn apply(&self, ctid: u32, private: &Path, plan: &QuotaPlan) -> Result<QuotaOutcome> {
        let image = image_path(private);
        if !image.exists() {
            return Err(QuotaError::Unavailable {
                ctid,
                method: Method::Ploop,
                reason: format!(
                    "{} does not exist: prepare() creates it before files are received",
                    image.display()
                ),
            });
        }
        let mut out = QuotaOutcome::new(Method::Ploop, plan);
        let bytes = std::fs::metadata(&image).map_err(io_err(&image, "stat"))?.len();
        out.applied = true;
        out.details.push(format!(
            "container {ctid}: {} is a {bytes}-byte ext4 image (DISKSPACE hard {} KiB); the file system is the container total",
            image.display(),
            plan.diskspace.1
        ));
        out.details.push(format!(
            "recorded only (vzctl ignores them for ploop too): DISKSPACE soft {} KiB, DISKINODES {}:{}",
            plan.diskspace.0, plan.diskinodes.0, plan.diskinodes.1
        ));
        if !plan.has_second_level() {
            out.details.push("no user or group limits are carried; the image has no quota files".into());
            return Ok(out);
        }
        let mnt = private.join(".p2c-quota-mnt");
        let guard = self.ploop.mount(private, &mnt)?;
        out.commands.push(format!(
            "mount -t ext4 -o loop,{QUOTA_MOUNT_OPTIONS} {} {}",
            image.display(),
            mnt.display()
        ));
        let written = self.ploop.write_limits(guard.path(), plan).and_then(|ran| {
            // On disk before the unmount: another mount namespace may keep the file system
            // (and its dirty pages) alive after it, and the image is read as a file next.
            let dir = std::fs::File::open(guard.path()).map_err(io_err(guard.path(), "open"))?;
            rustix::fs::syncfs(&dir).map_err(|e| io_err(guard.path(), "syncfs")(e.into()))?;
            Ok(ran)
        });
        let unmounted = guard.unmount();
        out.commands.extend(written?);
        unmounted?;
        out.commands.push(format!("umount {}", mnt.display()));
        std::fs::remove_dir(&mnt).map_err(io_err(&mnt, "remove mount point"))?;
        out.second_level_applied = true;
        out.details.push(format!(
            "{} user and {} group limits written to aquota.user/aquota.group ({QUOTA_FORMAT}) in the image; the container's kernel enforces them once mounted with {QUOTA_MOUNT_OPTIONS} and quotaon",
            plan.users.len(),
            plan.groups.len()
        ));
        Ok(out)
    }
}

#[cfg(test)]
#[path = "ploop_tests.rs"]
mod tests;
