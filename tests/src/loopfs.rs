//! Loop-mounted file systems: a source partition or node storage of a chosen kind and size,
//! backed by a sparse image file in a temporary directory and gone when dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use tempfile::TempDir;

use crate::util::{run, run_cmd};

/// File systems a [`LoopFs`] can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsKind {
    /// ext4 (`mkfs.ext4`).
    Ext4,
    /// btrfs (`mkfs.btrfs`); needs at least ~120 MiB.
    Btrfs,
}

impl FsKind {
    /// The type name `mount` and `/proc/mounts` use.
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Ext4 => "ext4",
            FsKind::Btrfs => "btrfs",
        }
    }
}

/// A file system made on a sparse image, attached to a loop device and mounted on a temporary
/// directory. Drop unmounts (lazily if busy), detaches the loop device and removes the image,
/// also while a failing test unwinds.
#[derive(Debug)]
pub struct LoopFs {
    kind: FsKind,
    /// Holds `image` and the mount point; removed last.
    dir: TempDir,
    mountpoint: PathBuf,
    device: PathBuf,
    mounted: bool,
}

impl LoopFs {
    /// Makes a `size`-byte image, a `kind` file system on it, and mounts it with `mount_opts`
    /// (comma-separated, as for `mount -o`; empty for none).
    pub fn new(kind: FsKind, size: u64, mount_opts: &str) -> anyhow::Result<Self> {
        Self::make(kind, size, mount_opts, None)
    }

    /// [`LoopFs::new`] mounted on `mountpoint` (an existing directory, e.g. `home` in a
    /// source tree, so that the tree has a partition beneath it as a server does).
    pub fn new_at(kind: FsKind, size: u64, mount_opts: &str, mountpoint: &Path) -> anyhow::Result<Self> {
        Self::make(kind, size, mount_opts, Some(mountpoint))
    }

    fn make(kind: FsKind, size: u64, mount_opts: &str, at: Option<&Path>) -> anyhow::Result<Self> {
        let (dir, image) = sparse_image("p2c-loopfs-", size)?;
        // -F / -f: make it on a plain file, over whatever is there, without asking.
        let (mkfs, force) = match kind {
            FsKind::Ext4 => ("mkfs.ext4", "-F"),
            FsKind::Btrfs => ("mkfs.btrfs", "-f"),
        };
        run_cmd(Command::new(mkfs).args(["-q", force]).arg(&image))?;
        let mountpoint = match at {
            Some(p) => p.to_path_buf(),
            None => dir.path().join("mnt"),
        };
        std::fs::create_dir_all(&mountpoint)
            .with_context(|| format!("cannot make {}", mountpoint.display()))?;
        let device = run_cmd(Command::new("losetup").args(["--find", "--show"]).arg(&image))?;
        let mut fs = Self { kind, dir, mountpoint, device: PathBuf::from(device.trim()), mounted: false };
        let mut mount = Command::new("mount");
        mount.args(["-t", kind.name()]);
        if !mount_opts.is_empty() {
            mount.args(["-o", mount_opts]);
        }
        run_cmd(mount.arg(&fs.device).arg(&fs.mountpoint))?;
        fs.mounted = true;
        Ok(fs)
    }

    /// Where the file system is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The loop device (`/dev/loopN`), as `/proc/mounts` names it.
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// The file system's kind.
    pub fn kind(&self) -> FsKind {
        self.kind
    }

    /// The image file behind the loop device.
    pub fn image(&self) -> PathBuf {
        self.dir.path().join("image")
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted && run("umount", &[&self.mountpoint]).is_err() {
            // Busy (a process still has a file open): detach now, the kernel finishes later.
            if let Err(e) = run_cmd(Command::new("umount").arg("-l").arg(&self.mountpoint)) {
                eprintln!("warning: cannot unmount {}: {e:#}", self.mountpoint.display());
            }
        }
        // After a lazy unmount the device may still be busy; -d then sets autoclear and the
        // kernel detaches it once the last user is gone.
        if let Err(e) = run_cmd(Command::new("losetup").arg("-d").arg(&self.device)) {
            eprintln!("warning: cannot detach {}: {e:#}", self.device.display());
        }
    }
}

/// A loop device over a sparse image with no file system (a raw partition, a swap area),
/// detached and removed on drop.
#[derive(Debug)]
pub struct LoopDev {
    _dir: TempDir,
    device: PathBuf,
}

/// A `size`-byte sparse file `image` in a new temporary directory named `prefix...`.
fn sparse_image(prefix: &str, size: u64) -> anyhow::Result<(TempDir, PathBuf)> {
    let dir =
        tempfile::Builder::new().prefix(prefix).tempdir().context("cannot make a temporary directory")?;
    let image = dir.path().join("image");
    File::create(&image)
        .and_then(|f| f.set_len(size))
        .with_context(|| format!("cannot make image {}", image.display()))?;
    Ok((dir, image))
}

impl LoopDev {
    /// Attaches a `size`-byte sparse image to a free loop device.
    pub fn new(size: u64) -> anyhow::Result<Self> {
        let (dir, image) = sparse_image("p2c-loopdev-", size)?;
        let device = run_cmd(Command::new("losetup").args(["--find", "--show"]).arg(&image))?;
        Ok(Self { _dir: dir, device: PathBuf::from(device.trim()) })
    }

    /// The loop device (`/dev/loopN`).
    pub fn device(&self) -> &Path {
        &self.device
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        if let Err(e) = run_cmd(Command::new("losetup").arg("-d").arg(&self.device)) {
            eprintln!("warning: cannot detach {}: {e:#}", self.device.display());
        }
    }
}
