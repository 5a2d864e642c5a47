//! Attaching an expanded (ploop1) image on a node without the ploop tool and its kernel
//! driver, and without nbd or partition support for loop devices:
//!
//! 1. `qemu-storage-daemon` opens the image with qemu's `parallels` driver (qemu's name for
//!    ploop1) and exports its virtual disk through FUSE onto a regular file;
//! 2. the GPT partition on that disk is read with `sfdisk -J` and attached to a loop device
//!    of its own (`losetup --offset --sizelimit`), which is what gets mounted.
//!
//! **Where an attachment lives.** Everything but the image is under
//! `/run/p2c/ploop/<key>/` ([`RUN_ROOT`]; `<key>` is a hash of the image's path): `disk` (the
//! FUSE mount point: the image's virtual disk), `qsd.pid` (the daemon), `image` (the image's
//! path, for whoever looks), `mnt` (a scratch mount point). `/run` is cleared at boot, as
//! are daemons, loop devices and mounts, so what is found there after a boot is never
//! stale; the private area holds only what the platform expects (`root.hdd/`).
//!
//! **Across copy passes and crashes.** The daemon is its own process, so an attachment
//! outlives the controller that made it. [`Attachment::open`] reuses one whose daemon still
//! serves the image (and the partition's loop device, so a file system another mount
//! namespace still holds is mounted again as the same instance, never a second instance over
//! the same blocks); one whose daemon is gone is torn down first (its file systems in this
//! namespace unmounted, loop devices detached, the FUSE mount removed) and an image left
//! marked in use is repaired with `qemu-img check -r all` (qemu refuses to open it for
//! writing otherwise). [`Attachment::release`] detaches the loop device, stops the daemon
//! (which closes the image cleanly) and removes the directory; if the loop device is still
//! held (a mount in another namespace), the attachment is kept for the next mount.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cmd::{Cmd, CmdOutput, CommandRunner};
use super::ploop_disk::{Partition, parse_sfdisk_json};
use super::probe::{MountEntry, parse_mountinfo};
use super::{QuotaError, Result, io_err, ploop1};

/// Where attachments live (see the module documentation).
pub const RUN_ROOT: &str = "/run/p2c/ploop";
/// How long a daemon asked to stop may take to close the image.
const STOP_WAIT: Duration = Duration::from_secs(30);
/// How long a detached loop device may take to go.
const DETACH_WAIT: Duration = Duration::from_secs(3);

/// A loop device and where in its backing file it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoopDev {
    pub device: String,
    pub offset: u64,
}

/// What the attachment needs to know of the kernel besides running programs.
pub trait Host: Send + Sync {
    /// Whether process `pid` is alive and serves `fuse_file` (its command line names it).
    fn serves(&self, pid: i32, fuse_file: &Path) -> bool;
    /// The mounts of this mount namespace, in mount order.
    fn mounts(&self) -> Vec<MountEntry>;
    /// The loop devices whose backing file is `file`.
    fn loops_of(&self, file: &Path) -> Vec<LoopDev>;
    /// Sends SIGTERM to `pid` and waits up to `wait` for it to end; false if it did not.
    fn terminate(&self, pid: i32, wait: Duration) -> bool;
}

/// The running kernel: `/proc` and `/sys`.
pub struct LinuxHost;

impl Host for LinuxHost {
    fn serves(&self, pid: i32, fuse_file: &Path) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
        let needle = fuse_file.as_os_str().as_bytes();
        alive(pid) && cmdline.windows(needle.len().max(1)).any(|w| w == needle)
    }

    fn mounts(&self) -> Vec<MountEntry> {
        std::fs::read_to_string("/proc/self/mountinfo").map(|t| parse_mountinfo(&t)).unwrap_or_default()
    }

    fn loops_of(&self, file: &Path) -> Vec<LoopDev> {
        let Ok(entries) = std::fs::read_dir("/sys/block") else { return Vec::new() };
        let mut out: Vec<LoopDev> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with("loop") {
                    return None;
                }
                let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
                if Path::new(backing.trim_end_matches('\n')) != file {
                    return None;
                }
                let offset = std::fs::read_to_string(e.path().join("loop/offset"))
                    .ok()
                    .and_then(|o| o.trim().parse().ok())
                    .unwrap_or(0);
                Some(LoopDev { device: format!("/dev/{name}"), offset })
            })
            .collect();
        out.sort_by(|a, b| a.device.cmp(&b.device));
        out
    }

    fn terminate(&self, pid: i32, wait: Duration) -> bool {
        let Some(p) = rustix::process::Pid::from_raw(pid) else { return true };
        if rustix::process::kill_process(p, rustix::process::Signal::TERM).is_err() {
            return !alive(pid);
        }
        let deadline = Instant::now() + wait;
        while alive(pid) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

/// Whether `pid` runs (a zombie does not: it only waits for its parent).
fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The state follows the parenthesised command name, which may hold spaces.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// The files of one image's attachment.
#[derive(Clone, Debug)]
pub struct AttachDir {
    dir: PathBuf,
    image: PathBuf,
}

impl AttachDir {
    /// The directory for `image` (which must exist) below `run_root`.
    pub fn new(run_root: &Path, image: &Path) -> Result<AttachDir> {
        let image = image.canonicalize().map_err(io_err(image, "resolve image path"))?;
        Ok(AttachDir { dir: run_root.join(key(&image)), image })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn image(&self) -> &Path {
        &self.image
    }

    /// The FUSE export of the image's virtual disk.
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("qsd.pid")
    }

    /// A scratch mount point, outside the private area.
    pub fn scratch(&self) -> PathBuf {
        self.dir.join("mnt")
    }

    fn note(&self) -> PathBuf {
        self.dir.join("image")
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.pid_file()).ok()?.trim().parse().ok()
    }
}

/// A stable name for an image path: 64-bit FNV-1a of its bytes, in hex.
pub fn key(image: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let h = image
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3));
    format!("{h:016x}")
}

/// The `qemu-storage-daemon` command serving `image`'s virtual disk on `disk` (read-write).
pub fn daemon_command(image: &Path, disk: &Path, pid_file: &Path) -> Cmd {
    let file = serde_json::json!({
        "driver": "file", "node-name": "p2c-file", "filename": image.to_string_lossy(),
    });
    let fmt = serde_json::json!({ "driver": "parallels", "node-name": "p2c-disk", "file": "p2c-file" });
    let export = serde_json::json!({
        "type": "fuse", "id": "p2c-export", "node-name": "p2c-disk",
        "mountpoint": disk.to_string_lossy(), "writable": true,
    });
    Cmd::new("qemu-storage-daemon")
        .args(["--blockdev".to_string(), file.to_string(), "--blockdev".into(), fmt.to_string()])
        .args(["--export".to_string(), export.to_string(), "--daemonize".into(), "--pidfile".into()])
        .arg(pid_file)
}

/// What [`Attachment::release`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Released {
    /// Nothing of it is left.
    Detached,
    /// Its loop device is still held (a mount in another namespace): left up for the next
    /// mount, which reuses it.
    Kept,
}

/// An image served by a daemon, and the loop device of its partition once asked for.
pub struct Attachment {
    dir: AttachDir,
    pid: i32,
    device: Option<String>,
    runner: Arc<dyn CommandRunner>,
    host: Arc<dyn Host>,
    released: bool,
    commands: Vec<String>,
}

impl Attachment {
    /// Serves `image`'s virtual disk: the attachment already up, or a new one (after tearing
    /// down what a dead one left behind).
    pub fn open(
        runner: Arc<dyn CommandRunner>,
        host: Arc<dyn Host>,
        run_root: &Path,
        image: &Path,
    ) -> Result<Attachment> {
        let dir = AttachDir::new(run_root, image)?;
        if let Ok(noted) = std::fs::read_to_string(dir.note())
            && Path::new(&noted) != dir.image()
        {
            return Err(QuotaError::InvalidOption(format!(
                "{} is the attachment of {noted}, not of {}; remove it once nothing uses it",
                dir.path().display(),
                dir.image().display()
            )));
        }
        let mut a =
            Attachment { dir, pid: 0, device: None, runner, host, released: false, commands: Vec::new() };
        let disk = a.dir.disk();
        let live = a.dir.pid().filter(|pid| a.host.serves(*pid, &disk) && a.fuse_mounted());
        match live {
            Some(pid) => {
                tracing::info!(image = %image.display(), pid, "container image still served; reusing its attachment");
                a.pid = pid;
            }
            None => {
                a.tear_down_stale()?;
                a.repair_if_in_use()?;
                a.start()?;
            }
        }
        Ok(a)
    }

    /// Tears down whatever attachment of `image` is up or left behind, without starting one.
    pub fn clean_up(
        runner: Arc<dyn CommandRunner>,
        host: Arc<dyn Host>,
        run_root: &Path,
        image: &Path,
    ) -> Result<()> {
        let dir = AttachDir::new(run_root, image)?;
        let mut a =
            Attachment { dir, pid: 0, device: None, runner, host, released: true, commands: Vec::new() };
        a.tear_down_stale()
    }

    /// The image's virtual disk (a file, the FUSE export).
    pub fn disk(&self) -> PathBuf {
        self.dir.disk()
    }

    pub fn dir(&self) -> &AttachDir {
        &self.dir
    }

    /// Command lines run so far.
    pub fn commands(&self) -> &[String] {
        &self.commands
    }

    pub(crate) fn run(&mut self, cmd: &Cmd) -> Result<CmdOutput> {
        self.commands.push(cmd.to_string());
        self.runner.run(cmd)
    }

    /// The partition ploop made, read from the disk's GPT.
    pub fn partition(&mut self) -> Result<Partition> {
        let disk = self.disk();
        let out = self.run(&Cmd::new("sfdisk").arg("-J").arg(&disk))?;
        parse_sfdisk_json(&out.stdout_str()).map_err(|why| {
            QuotaError::InvalidOption(format!(
                "{}: {why}; it is not an image p2c or ploop made",
                self.dir.image().display()
            ))
        })
    }

    /// The loop device of the image's partition: the one already attached, or a new one.
    pub fn partition_device(&mut self) -> Result<String> {
        if let Some(d) = &self.device {
            return Ok(d.clone());
        }
        let part = self.partition()?;
        let disk = self.disk();
        let dev = match self.host.loops_of(&disk).into_iter().find(|l| l.offset == part.offset_bytes()) {
            Some(l) => {
                tracing::info!(device = %l.device, "container image's partition still attached; reusing its loop device");
                l.device
            }
            None => {
                let cmd = Cmd::new("losetup")
                    .args(["--find", "--show", "--offset"])
                    .arg(part.offset_bytes().to_string())
                    .arg("--sizelimit")
                    .arg(part.size_bytes().to_string())
                    .arg(&disk);
                self.run(&cmd)?.stdout_str().trim().to_string()
            }
        };
        if !dev.starts_with("/dev/") {
            return Err(QuotaError::InvalidOption(format!(
                "losetup named no loop device for {}",
                disk.display()
            )));
        }
        self.device = Some(dev.clone());
        Ok(dev)
    }

    /// Detaches the loop device and, unless another mount still holds it, stops the daemon
    /// and removes the attachment's directory. Returns what happened and every command line
    /// the attachment ran.
    pub fn release(mut self) -> Result<(Released, Vec<String>)> {
        self.released = true;
        let r = self.finish()?;
        Ok((r, std::mem::take(&mut self.commands)))
    }

    fn finish(&mut self) -> Result<Released> {
        let disk = self.disk();
        if let Some(dev) = self.device.take() {
            let attached = self.host.loops_of(&disk).iter().any(|l| l.device == dev);
            if attached && let Err(e) = self.run(&Cmd::new("losetup").arg("-d").arg(&dev)) {
                // Gone meanwhile (autoclear) is fine; anything else is reported below.
                tracing::debug!(device = %dev, error = %e, "losetup -d");
            }
        }
        let deadline = Instant::now() + DETACH_WAIT;
        while !self.host.loops_of(&disk).is_empty() {
            if Instant::now() >= deadline {
                tracing::info!(
                    image = %self.dir.image().display(),
                    "container image still in use (its file system is mounted in another mount namespace); its attachment stays up and the next mount reuses it"
                );
                return Ok(Released::Kept);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop_daemon()?;
        self.remove_dir()?;
        Ok(Released::Detached)
    }

    fn fuse_mounted(&self) -> bool {
        let disk = self.disk();
        self.host.mounts().iter().any(|m| m.mountpoint == disk)
    }

    fn stop_daemon(&mut self) -> Result<()> {
        if self.pid > 0 && !self.host.terminate(self.pid, STOP_WAIT) {
            return Err(QuotaError::InvalidOption(format!(
                "qemu-storage-daemon (pid {}) serving {} did not stop within {}s; stop it (kill {}) before the image is used",
                self.pid,
                self.dir.image().display(),
                STOP_WAIT.as_secs(),
                self.pid
            )));
        }
        if self.fuse_mounted() {
            // A daemon that died without unmounting its export.
            let disk = self.disk();
            self.run(&Cmd::new("umount").arg("-l").arg(&disk))?;
        }
        Ok(())
    }

    fn remove_dir(&self) -> Result<()> {
        let dir = self.dir.path();
        for f in [self.dir.disk(), self.dir.pid_file(), self.dir.note()] {
            if let Err(e) = std::fs::remove_file(&f)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(io_err(&f, "remove")(e));
            }
        }
        let scratch = self.dir.scratch();
        if scratch.exists() {
            std::fs::remove_dir(&scratch).map_err(io_err(&scratch, "remove"))?;
        }
        match std::fs::remove_dir(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(dir, "remove")(e)),
            _ => Ok(()),
        }
    }

    /// Undoes what a dead attachment left: its loop devices' mounts in this namespace, the
    /// loop devices, a daemon that no longer serves, the FUSE mount, the files.
    fn tear_down_stale(&mut self) -> Result<()> {
        if !self.dir.path().exists() {
            return Ok(());
        }
        tracing::warn!(image = %self.dir.image().display(), dir = %self.dir.path().display(), "tearing down what an earlier run left of the container image's attachment");
        let disk = self.disk();
        for l in self.host.loops_of(&disk) {
            // Deepest (last mounted) first.
            let mounts: Vec<MountEntry> =
                self.host.mounts().into_iter().filter(|m| m.source == l.device).collect();
            for m in mounts.iter().rev() {
                self.run(&Cmd::new("umount").arg(&m.mountpoint))?;
            }
            if let Err(e) = self.run(&Cmd::new("losetup").arg("-d").arg(&l.device)) {
                tracing::warn!(device = %l.device, error = %e, "cannot detach a stale loop device of the container image");
            }
        }
        self.pid = self.dir.pid().unwrap_or(0);
        if self.pid > 0 && !self.host.serves(self.pid, &disk) {
            self.pid = 0;
        }
        self.stop_daemon()?;
        self.remove_dir()
    }

    /// qemu opens an image that a crashed writer left marked in use only after a check.
    fn repair_if_in_use(&mut self) -> Result<()> {
        let image = self.dir.image().to_path_buf();
        if !ploop1::read_header(&image)?.in_use() {
            return Ok(());
        }
        tracing::warn!(image = %image.display(), "container image was not closed cleanly; repairing it with qemu-img check");
        let out = self
            .runner
            .output(&Cmd::new("qemu-img").args(["check", "-r", "all", "-f", "parallels"]).arg(&image))?;
        self.commands.push(format!("qemu-img check -r all -f parallels {}", image.display()));
        if ploop1::read_header(&image)?.in_use() {
            return Err(QuotaError::Command {
                cmd: format!("qemu-img check -r all -f parallels {}", image.display()),
                status: out.code.map_or("killed by a signal".into(), |c| format!("exit code {c}")),
                stderr: format!("{} (the image is still marked in use)", out.stderr_str()),
            });
        }
        Ok(())
    }

    fn start(&mut self) -> Result<()> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir = self.dir.path().to_path_buf();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(&dir, "create directory"))?;
        let note = self.dir.note();
        std::fs::write(&note, self.dir.image().as_os_str().as_encoded_bytes())
            .map_err(io_err(&note, "write"))?;
        let disk = self.disk();
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&disk)
            .map_err(io_err(&disk, "create FUSE mount point"))?;
        let cmd = daemon_command(self.dir.image(), &disk, &self.dir.pid_file());
        self.run(&cmd)?;
        self.pid = self.dir.pid().ok_or_else(|| QuotaError::Command {
            cmd: cmd.to_string(),
            status: "exit code 0".into(),
            stderr: format!("no pid in {}", self.dir.pid_file().display()),
        })?;
        Ok(())
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if !self.released
            && let Err(e) = self.finish()
        {
            tracing::warn!(image = %self.dir.image().display(), error = %e, "cannot release the container image's attachment");
        }
    }
}

#[cfg(test)]
#[path = "ploop_attach_tests.rs"]
pub(crate) mod tests;
