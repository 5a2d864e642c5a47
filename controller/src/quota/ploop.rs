//! The `ploop` layout: the private area holds `root.hdd/root.hds`, an image with an ext4
//! file system that is the container's root, and `root.hdd/DiskDescriptor.xml` describing
//! it. The image is sized from the `DISKSPACE` hard limit, so the file system itself is the
//! container total; the user and group limits are the image's own ext4 quota: `aquota.user`
//! and `aquota.group` (format vfsv1) at the image root, written with quota-tools while the
//! image is mounted and the kernel's quota is off, as they would be inside a Virtuozzo
//! container with `QUOTAUGIDLIMIT` set.
//!
//! Two formats ([`Format`]), chosen by the migration's target:
//!
//! * [`Format::Raw`] for legacy OpenVZ: a raw sparse image with ext4 directly on it (no
//!   partition), the descriptor's root `Parallels_disk_image` and image Type `Plain`;
//!   loop-mounted (`mount -o loop`).
//! * [`Format::Expanded`] for OpenVZ 7 / Virtuozzo 7 and Virtuozzo 9: what `ploop init` of
//!   ploop 7.x and 9.0 makes by default: a ploop1 (version 2) expanded image
//!   ([`super::ploop1`]), a GPT partition from 1 MiB holding ext4 and the balloon file
//!   ([`super::ploop_disk`]), the descriptor's root `Virtuozzo_disk_image` and Type
//!   `Compressed`. On a node with the `ploop` tool, `ploop init` / `ploop mount` /
//!   `ploop umount` make and mount it; elsewhere it is written here and attached through
//!   `qemu-storage-daemon` and a loop device ([`super::ploop_attach`]). A new image is built
//!   in `root.hdd.p2c-new/` and renamed to `root.hdd/` when complete.
//!
//! `DiskDescriptor.xml` follows ploop's `lib/xml.c` (`store_diskdescriptor`, the same in
//! ploop 7 and 9 for a one-image disk): sizes in 512-byte sectors, 1 MiB blocks (2048
//! sectors, ploop's default cluster), geometry from ploop's `ConvertToCHS`, one image whose
//! GUID is ploop's fixed top-delta GUID, and one snapshot with the null parent.
//!
//! The migration calls [`Ploop::create`] (through [`PloopBackend::prepare`]) before
//! receiving, [`Ploop::mount`] to receive into the image, drops the [`MountGuard`] when the
//! passes are done, then [`PloopBackend::apply`] (which mounts the image once more to write
//! the quota files). The config's `VE_LAYOUT` is [`LAYOUT`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use p2c_common::migration::Target;

use super::cmd::{Cmd, CommandRunner};
use super::plan::QuotaPlan;
use super::ploop_attach::{Attachment, Host, LinuxHost, RUN_ROOT, Released};
use super::ploop_disk::{self, BALLOON_FILE};
use super::{Method, Node, QuotaBackend, QuotaError, QuotaOutcome, Result, io_err, ploop1};

/// `VE_LAYOUT` of such a container.
pub const LAYOUT: &str = "ploop";
pub const IMAGE_DIR: &str = "root.hdd";
pub const IMAGE_FILE: &str = "root.hds";
pub const DESCRIPTOR_FILE: &str = "DiskDescriptor.xml";
/// Where a new expanded image is built before it becomes `root.hdd/`.
pub const NEW_IMAGE_DIR: &str = "root.hdd.p2c-new";
/// ploop's block (cluster) size in 512-byte sectors: 1 MiB.
pub const BLOCKSIZE_SECTORS: u64 = 2048;
/// ploop's fixed GUID of the top delta (`TOPDELTA_UUID`) and the null GUID (`NONE_UUID`).
pub const TOP_GUID: &str = "{5fbaabe3-6958-40ff-92a7-860e329aab41}";
pub const NONE_GUID: &str = "{00000000-0000-0000-0000-000000000000}";
/// Quota format of the in-image quota files.
pub const QUOTA_FORMAT: &str = "vfsv1";
/// Journaled-quota mount options naming the in-image quota files.
pub const QUOTA_MOUNT_OPTIONS: &str = "usrjquota=aquota.user,grpjquota=aquota.group,jqfmt=vfsv1";
/// Smallest raw image made (ext4 needs room for its journal and metadata): 64 MiB.
pub const MIN_IMAGE_KIB: u64 = 64 * 1024;
/// Smallest expanded image made: ploop's ext4 has a 128 MiB journal and reserves group
/// descriptors to grow to 50 TiB, which need some 270 MiB; 512 MiB leaves room for files.
pub const MIN_EXPANDED_KIB: u64 = 512 * 1024;

pub fn image_dir(private: &Path) -> PathBuf {
    private.join(IMAGE_DIR)
}

pub fn image_path(private: &Path) -> PathBuf {
    image_dir(private).join(IMAGE_FILE)
}

pub fn descriptor_path(private: &Path) -> PathBuf {
    image_dir(private).join(DESCRIPTOR_FILE)
}

/// Files at the image's root that the platform's tools put there, not the source.
pub const OWN_FILES: [&str; 3] = ["aquota.user", "aquota.group", BALLOON_FILE];

/// How a container's image is made, as its platform makes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Legacy OpenVZ: a raw image, ext4 on the whole device, `Parallels_disk_image`.
    Raw,
    /// OpenVZ 7 / Virtuozzo 7 and 9: a ploop1 expanded image with a GPT partition holding
    /// ext4, `Virtuozzo_disk_image`.
    Expanded,
}

impl Format {
    /// The format `target`'s own tools make.
    pub fn of(target: Target) -> Format {
        match target {
            Target::Openvz => Format::Raw,
            Target::Vz7 | Target::Vz9 => Format::Expanded,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Format::Raw => "a raw image with ext4 on it",
            Format::Expanded => "a ploop1 expanded image with ext4 in a GPT partition",
        }
    }

    /// The descriptor's root element.
    pub fn root_element(self) -> &'static str {
        match self {
            Format::Raw => "Parallels_disk_image",
            Format::Expanded => "Virtuozzo_disk_image",
        }
    }

    /// The descriptor's image `Type` (ploop writes `Plain` for raw, `Compressed` otherwise).
    pub fn image_type(self) -> &'static str {
        match self {
            Format::Raw => "Plain",
            Format::Expanded => "Compressed",
        }
    }

    /// The image's size in sectors for `kib` KiB: at least this format's minimum, rounded up
    /// to whole ploop blocks.
    pub fn image_sectors(self, kib: u64) -> u64 {
        match self {
            Format::Raw => size_sectors(kib),
            Format::Expanded => size_sectors(kib.max(MIN_EXPANDED_KIB)),
        }
    }
}

/// Raw image size in sectors for `kib` KiB: at least [`MIN_IMAGE_KIB`], rounded up to whole
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

/// `DiskDescriptor.xml` for an image of `format` and `size` sectors.
pub fn disk_descriptor(format: Format, size: u64) -> String {
    let g = chs(size);
    // ploop writes Sectors as size / (cylinders * heads).
    let sectors = size / (g.cylinders * g.heads).max(1);
    format!(
        r#"<?xml version="1.0"?>
<{root}>
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
        <Type>{kind}</Type>
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
</{root}>
"#,
        root = format.root_element(),
        kind = format.image_type(),
        cyl = g.cylinders,
        heads = g.heads,
    )
}

/// How this node makes and mounts images of a format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// A raw image, `mkfs.ext4` on it and `mount -o loop`.
    Loop,
    /// The node's `ploop` tool (a Virtuozzo/OpenVZ 7+ node).
    PloopTool,
    /// Written here, attached through `qemu-storage-daemon` (FUSE) and a loop device.
    Qemu,
}

/// Programs each way needs, with the package that has them.
const LOOP_NEEDS: &[(&str, &str)] = &[
    ("mkfs.ext4", "e2fsprogs"),
    ("mount", "mount"),
    ("umount", "mount"),
    ("quotacheck", "quota"),
    ("setquota", "quota"),
];
const TOOL_NEEDS: &[(&str, &str)] = &[("ploop", "ploop"), ("quotacheck", "quota"), ("setquota", "quota")];
const QEMU_NEEDS: &[(&str, &str)] = &[
    ("qemu-storage-daemon", "qemu-system-common"),
    ("qemu-img", "qemu-utils"),
    ("sfdisk", "fdisk"),
    ("losetup", "mount"),
    ("mkfs.ext4", "e2fsprogs"),
    ("tune2fs", "e2fsprogs"),
    ("mount", "mount"),
    ("umount", "mount"),
    ("quotacheck", "quota"),
    ("setquota", "quota"),
];

/// The way `format` images are made on `node`.
pub fn way(node: &Node, format: Format) -> Way {
    match format {
        Format::Raw => Way::Loop,
        Format::Expanded if node.runner.which("ploop").is_some() => Way::PloopTool,
        Format::Expanded => Way::Qemu,
    }
}

fn missing(node: &Node, needs: &[(&str, &str)]) -> Vec<String> {
    needs
        .iter()
        .filter(|(p, _)| node.runner.which(p).is_none())
        .map(|(p, pkg)| format!("{p} (package {pkg})"))
        .collect()
}

/// Whether images of `format` can be made here, and how.
pub fn detect(node: &Node, format: Format) -> std::result::Result<String, String> {
    let w = way(node, format);
    let (needs, how) = match w {
        Way::Loop => (
            LOOP_NEEDS,
            "ploop layout: raw ext4 image sized from DISKSPACE, user/group limits in the image's quota files"
                .to_string(),
        ),
        Way::PloopTool => (
            TOOL_NEEDS,
            format!(
                "ploop layout: {} made and mounted by the node's ploop tool (ploop init, ploop mount), sized from DISKSPACE, user/group limits in the image's quota files",
                format.describe()
            ),
        ),
        Way::Qemu => (
            QEMU_NEEDS,
            format!(
                "ploop layout: {} made without the ploop tool (attached through qemu-storage-daemon and a loop device), sized from DISKSPACE, user/group limits in the image's quota files",
                format.describe()
            ),
        ),
    };
    let mut lacking = missing(node, needs);
    if w == Way::Qemu && !node.probe.exists(Path::new("/dev/fuse")) {
        lacking.push("/dev/fuse (load the fuse module: modprobe fuse)".into());
    }
    if lacking.is_empty() {
        Ok(how)
    } else if w == Way::Loop {
        Err(format!("ploop layout needs {} (not found)", lacking.join(", ")))
    } else {
        Err(format!(
            "ploop layout ({}) needs {} (not found); install the packages named, or the ploop tool",
            format.describe(),
            lacking.join(", ")
        ))
    }
}

/// Creating, mounting and writing quota into a container's image.
#[derive(Clone)]
pub struct Ploop {
    node: Node,
    format: Format,
    host: Arc<dyn Host>,
    run_root: PathBuf,
}

impl Ploop {
    pub fn new(node: Node, format: Format) -> Ploop {
        Ploop::with_host(node, format, Arc::new(LinuxHost), PathBuf::from(RUN_ROOT))
    }

    /// With another view of the kernel and another directory for attachments.
    pub fn with_host(node: Node, format: Format, host: Arc<dyn Host>, run_root: PathBuf) -> Ploop {
        Ploop { node, format, host, run_root }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn way(&self) -> Way {
        way(&self.node, self.format)
    }

    fn runner(&self) -> &Arc<dyn CommandRunner> {
        &self.node.runner
    }

    /// Creates `root.hdd/` with an image of at least `size_kib` KiB (see
    /// [`Format::image_sectors`]), its ext4 file system and `DiskDescriptor.xml`. An existing
    /// image (a resumed migration) is kept as it is.
    pub fn create(&self, private: &Path, size_kib: u64) -> Result<()> {
        if image_path(private).exists() && descriptor_path(private).exists() {
            return Ok(());
        }
        match self.format {
            Format::Raw => self.create_raw(private, size_kib),
            Format::Expanded => self.create_expanded(private, size_kib),
        }
    }

    fn create_raw(&self, private: &Path, size_kib: u64) -> Result<()> {
        let dir = image_dir(private);
        let image = image_path(private);
        let descriptor = descriptor_path(private);
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
        std::fs::write(&tmp, disk_descriptor(Format::Raw, sectors)).map_err(io_err(&tmp, "write"))?;
        std::fs::rename(&tmp, &descriptor).map_err(io_err(&descriptor, "rename"))?;
        Ok(())
    }

    /// Builds the image in [`NEW_IMAGE_DIR`] and renames it into place when complete.
    fn create_expanded(&self, private: &Path, size_kib: u64) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = image_dir(private);
        if dir.exists() {
            return Err(QuotaError::InvalidOption(format!(
                "{} exists but holds no complete image ({IMAGE_FILE} and {DESCRIPTOR_FILE}); remove it (p2c discard, or by hand) and migrate again",
                dir.display()
            )));
        }
        std::fs::create_dir_all(private).map_err(io_err(private, "create directory"))?;
        set_mode(private, 0o700)?;
        let new = private.join(NEW_IMAGE_DIR);
        let image = new.join(IMAGE_FILE);
        if new.exists() {
            // An interrupted creation: its attachment (if any) first, then what it wrote.
            if image.exists() {
                Attachment::clean_up(self.runner().clone(), self.host.clone(), &self.run_root, &image)?;
            }
            std::fs::remove_dir_all(&new).map_err(io_err(&new, "remove an unfinished image"))?;
        }
        std::fs::DirBuilder::new().mode(0o700).create(&new).map_err(io_err(&new, "create directory"))?;
        let sectors = Format::Expanded.image_sectors(size_kib);
        match self.way() {
            Way::PloopTool => {
                self.runner().run(
                    &Cmd::new("ploop")
                        .args(["init", "-s"])
                        .arg(format!("{}K", sectors / 2))
                        .args(["-f", "expanded", "-v", "2", "-t", "ext4", "-b"])
                        .arg(BLOCKSIZE_SECTORS.to_string())
                        .arg(&image),
                )?;
            }
            _ => {
                self.build_expanded(&image, sectors)?;
                let d = new.join(DESCRIPTOR_FILE);
                std::fs::write(&d, disk_descriptor(Format::Expanded, sectors))
                    .map_err(io_err(&d, "write"))?;
            }
        }
        std::fs::rename(&new, &dir).map_err(io_err(&dir, "rename the new image into place"))?;
        Ok(())
    }

    /// What `ploop init` does, without ploop: the image, its GPT partition, ext4 and the
    /// balloon file.
    fn build_expanded(&self, image: &Path, sectors: u64) -> Result<()> {
        let part = ploop_disk::ploop_partition(sectors, BLOCKSIZE_SECTORS).ok_or_else(|| {
            QuotaError::InvalidOption(format!("{sectors} sectors is too small for a ploop image"))
        })?;
        ploop1::create_empty(image, sectors, BLOCKSIZE_SECTORS as u32)?;
        let mut a = Attachment::open(self.runner().clone(), self.host.clone(), &self.run_root, image)?;
        let disk = a.disk();
        a.run(&Cmd::new("sfdisk").arg("-q").arg(&disk).stdin(ploop_disk::sfdisk_script(sectors, part)))?;
        let dev = a.partition_device()?;
        for c in ploop_disk::mkfs_commands(&dev) {
            a.run(&c)?;
        }
        let mnt = a.dir().scratch();
        std::fs::create_dir_all(&mnt).map_err(io_err(&mnt, "create mount point"))?;
        a.run(&Cmd::new("mount").args(["-t", "ext4", &dev]).arg(&mnt))?;
        let balloon = ploop_disk::create_balloon(&mnt).map_err(io_err(&mnt.join(BALLOON_FILE), "create"));
        a.run(&Cmd::new("umount").arg(&mnt))?;
        balloon?;
        if a.release()?.0 == Released::Kept {
            return Err(QuotaError::InvalidOption(format!(
                "{} is still in use after it was made; nothing else should use a new image",
                image.display()
            )));
        }
        Ok(())
    }

    /// Mounts the image at `mountpoint` (created if needed) with the journaled-quota
    /// options; unmounted (and detached) when the guard is dropped.
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
        match self.way() {
            Way::Loop => self.mount_raw(&image, mountpoint),
            Way::PloopTool => self.mount_with_tool(private, mountpoint),
            Way::Qemu => self.mount_attached(&image, mountpoint),
        }
    }

    fn guard(&self, mountpoint: &Path, detach: Detach, commands: Vec<String>) -> MountGuard {
        MountGuard {
            target: mountpoint.to_path_buf(),
            runner: self.runner().clone(),
            mounted: true,
            detach,
            commands,
        }
    }

    fn mount_raw(&self, image: &Path, mountpoint: &Path) -> Result<MountGuard> {
        // The image may still be attached to a loop device whose file system is up: a mount
        // namespace created while it was mounted (on a node whose / is not a shared mount)
        // keeps it after our umount. Mounting that device again gives the same file-system
        // instance; attaching the image to a second loop device would give a second one
        // over the same blocks.
        let mount = match self.node.probe.loop_device_of(image) {
            Some(dev) => {
                tracing::info!(image = %image.display(), device = %dev, "container image still attached; mounting its loop device");
                Cmd::new("mount").args(["-t", "ext4", "-o", QUOTA_MOUNT_OPTIONS, &dev]).arg(mountpoint)
            }
            None => Cmd::new("mount")
                .args(["-t", "ext4", "-o"])
                .arg(format!("loop,{QUOTA_MOUNT_OPTIONS}"))
                .arg(image)
                .arg(mountpoint),
        };
        self.runner().run(&mount)?;
        Ok(self.guard(mountpoint, Detach::Nothing, vec![mount.to_string()]))
    }

    fn mount_with_tool(&self, private: &Path, mountpoint: &Path) -> Result<MountGuard> {
        let dd = descriptor_path(private);
        let mount = Cmd::new("ploop")
            .args(["mount", "-m"])
            .arg(mountpoint)
            .args(["-o", QUOTA_MOUNT_OPTIONS])
            .arg(&dd);
        let mut commands = vec![mount.to_string()];
        if let Err(first) = self.runner().run(&mount) {
            // A crashed run may have left the image on its ploop device.
            let umount = Cmd::new("ploop").arg("umount").arg(&dd);
            let out = self.runner().output(&umount)?;
            commands.push(umount.to_string());
            if !out.success() {
                return Err(first);
            }
            tracing::info!(descriptor = %dd.display(), "container image was still on a ploop device; mounting it again");
            self.runner().run(&mount)?;
            commands.push(mount.to_string());
        }
        Ok(self.guard(mountpoint, Detach::PloopTool(dd), commands))
    }

    fn mount_attached(&self, image: &Path, mountpoint: &Path) -> Result<MountGuard> {
        let mut a = Attachment::open(self.runner().clone(), self.host.clone(), &self.run_root, image)?;
        let dev = a.partition_device()?;
        a.run(&Cmd::new("mount").args(["-t", "ext4", "-o", QUOTA_MOUNT_OPTIONS, &dev]).arg(mountpoint))?;
        let commands = a.commands().to_vec();
        Ok(self.guard(mountpoint, Detach::Attachment(a), commands))
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

/// What is undone after the file system is unmounted.
enum Detach {
    /// A loop mount (`mount -o loop`) detaches itself.
    Nothing,
    /// `ploop umount` unmounts and releases the ploop device.
    PloopTool(PathBuf),
    /// The loop device and the daemon serving the image.
    Attachment(Attachment),
}

/// A mounted image; unmounted (and detached) on drop.
pub struct MountGuard {
    target: PathBuf,
    runner: Arc<dyn CommandRunner>,
    mounted: bool,
    detach: Detach,
    commands: Vec<String>,
}

impl MountGuard {
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// The command lines that mounted it.
    pub fn commands(&self) -> &[String] {
        &self.commands
    }

    /// Unmounts and detaches now, reporting a failure (drop only logs it); returns the
    /// command lines run.
    pub fn unmount(mut self) -> Result<Vec<String>> {
        self.mounted = false;
        self.finish()
    }

    fn finish(&mut self) -> Result<Vec<String>> {
        match std::mem::replace(&mut self.detach, Detach::Nothing) {
            Detach::PloopTool(dd) => {
                let c = Cmd::new("ploop").arg("umount").arg(&dd);
                self.runner.run(&c)?;
                Ok(vec![c.to_string()])
            }
            Detach::Nothing => {
                let c = Cmd::new("umount").arg(&self.target);
                self.runner.run(&c)?;
                Ok(vec![c.to_string()])
            }
            Detach::Attachment(mut a) => {
                // Until the file system is unmounted, `a` stays: dropping it would detach a
                // loop device still mounted here.
                let from = a.commands().len();
                a.run(&Cmd::new("umount").arg(&self.target))?;
                let (released, ran) = a.release()?;
                let mut out = ran.get(from..).unwrap_or_default().to_vec();
                if released == Released::Kept {
                    out.push(
                        "(attachment kept: the file system is still mounted in another mount namespace)"
                            .into(),
                    );
                }
                Ok(out)
            }
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.mounted
            && let Err(e) = self.finish()
        {
            tracing::warn!(mountpoint = %self.target.display(), error = %e, "cannot unmount container image");
        }
    }
}

pub struct PloopBackend {
    ploop: Ploop,
}

impl PloopBackend {
    pub fn new(node: Node, format: Format) -> PloopBackend {
        PloopBackend { ploop: Ploop::new(node, format) }
    }

    pub fn with_ploop(ploop: Ploop) -> PloopBackend {
        PloopBackend { ploop }
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
        out.details.push(match self.ploop.format {
            Format::Raw => format!(
                "container {ctid}: {} is a {bytes}-byte ext4 image (DISKSPACE hard {} KiB); the file system is the container total",
                image.display(),
                plan.diskspace.1
            ),
            Format::Expanded => {
                let virtual_bytes = ploop1::read_header(&image)?.size_sectors * 512;
                format!(
                    "container {ctid}: {} is a ploop1 expanded image of {virtual_bytes} bytes ({bytes} bytes allocated) with ext4 in its GPT partition (DISKSPACE hard {} KiB); the file system is the container total",
                    image.display(),
                    plan.diskspace.1
                )
            }
        });
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
        out.commands.extend(guard.commands().iter().cloned());
        let written = self.ploop.write_limits(guard.path(), plan).and_then(|ran| {
            // On disk before the unmount: another mount namespace may keep the file system
            // (and its dirty pages) alive after it, and the image is read as a file next.
            let dir = std::fs::File::open(guard.path()).map_err(io_err(guard.path(), "open"))?;
            rustix::fs::syncfs(&dir).map_err(|e| io_err(guard.path(), "syncfs")(e.into()))?;
            Ok(ran)
        });
        let unmounted = guard.unmount();
        out.commands.extend(written?);
        out.commands.extend(unmounted?);
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
