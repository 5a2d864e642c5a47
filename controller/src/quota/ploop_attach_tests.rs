//! The attachment on a fake kernel: which programs run for a new, a live, a dead and a busy
//! attachment. (The real kernel is exercised by the integration tests.)

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::quota::cmd::{Cmd, CmdOutput, CommandRunner};
use crate::quota::probe::MountEntry;

pub const PID: i32 = 4242;

/// A kernel and its programs, as far as attachments go: a daemon that serves once started,
/// loop devices, mounts.
#[derive(Default)]
pub struct FakeKernel {
    pub ran: Mutex<Vec<String>>,
    pub serving: Mutex<Option<i32>>,
    pub mounts: Mutex<Vec<MountEntry>>,
    pub loops: Mutex<Vec<LoopDev>>,
    /// Loop devices `losetup -d` leaves attached (held by a mount elsewhere).
    pub busy: Mutex<HashSet<String>>,
    pub terminated: Mutex<Vec<i32>>,
    /// Programs not installed.
    pub missing: HashSet<String>,
    /// The partition `sfdisk -J` reports: (start, size) in sectors.
    pub partition: (u64, u64),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeKernel {
    /// A node with every program but ploop's.
    pub fn new() -> FakeKernel {
        FakeKernel {
            partition: (2048, 1_044_480),
            missing: ["ploop".to_string()].into(),
            ..Default::default()
        }
    }

    pub fn ran(&self) -> Vec<String> {
        lock(&self.ran).clone()
    }

    fn mount_entry(mountpoint: &Path, source: &str, fs: &str) -> MountEntry {
        MountEntry {
            mountpoint: mountpoint.to_path_buf(),
            fs_type: fs.into(),
            source: source.into(),
            options: vec![],
        }
    }

    pub fn add_mount(&self, mountpoint: &Path, source: &str, fs: &str) {
        lock(&self.mounts).push(Self::mount_entry(mountpoint, source, fs));
    }

    pub fn add_loop(&self, device: &str, offset: u64) {
        lock(&self.loops).push(LoopDev { device: device.into(), offset });
    }

    fn umount(&self, target: &Path) {
        lock(&self.mounts).retain(|m| m.mountpoint != target);
        // What was written on the unmounted file system is no longer visible there (only
        // below the temporary directory: this fake never touches the node's own files).
        if !target.starts_with(std::env::temp_dir()) {
            return;
        }
        if let Ok(rd) = std::fs::read_dir(target) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

impl CommandRunner for FakeKernel {
    fn output(&self, cmd: &Cmd) -> Result<CmdOutput> {
        lock(&self.ran).push(cmd.to_string());
        let argv = cmd.argv();
        let last = PathBuf::from(argv.last().cloned().unwrap_or_default());
        let arg_after =
            |flag: &str| argv.iter().position(|a| a == flag).and_then(|i| argv.get(i + 1)).cloned();
        let mut stdout = String::new();
        match cmd.program.as_str() {
            "qemu-storage-daemon" => {
                let pid_file = arg_after("--pidfile").unwrap_or_default();
                std::fs::write(pid_file, format!("{PID}\n")).unwrap();
                *lock(&self.serving) = Some(PID);
                let export: serde_json::Value =
                    serde_json::from_str(&arg_after("--export").unwrap()).unwrap();
                let mp = PathBuf::from(export["mountpoint"].as_str().unwrap());
                self.add_mount(&mp, "/dev/fuse", "fuse");
            }
            "sfdisk" if argv.contains(&"-J".to_string()) => {
                let (start, size) = self.partition;
                stdout = format!(
                    r#"{{"partitiontable": {{"label": "gpt", "partitions": [{{"start": {start}, "size": {size}, "type": "0FC63DAF-8483-4772-8E79-3D69D8477DE4"}}]}}}}"#
                );
            }
            "losetup" if argv.contains(&"--find".to_string()) => {
                let offset = arg_after("--offset").and_then(|o| o.parse().ok()).unwrap_or(0);
                self.add_loop("/dev/loop9", offset);
                stdout = "/dev/loop9\n".into();
            }
            "losetup"
                if argv.get(1).map(String::as_str) == Some("-d") && !lock(&self.busy).contains(&argv[2]) =>
            {
                lock(&self.loops).retain(|l| l.device != argv[2]);
            }
            "mount" => self.add_mount(&last, &argv[argv.len() - 2], "ext4"),
            "umount" => self.umount(&last),
            "qemu-img" => {
                let mut h = ploop1::read_header(&last)?;
                h.in_use = 0;
                let mut b = std::fs::read(&last).unwrap();
                b[..64].copy_from_slice(&h.to_bytes());
                std::fs::write(&last, b).unwrap();
            }
            _ => {}
        }
        Ok(CmdOutput { code: Some(0), stdout: stdout.into_bytes(), stderr: Vec::new() })
    }

    fn which(&self, program: &str) -> Option<PathBuf> {
        (!self.missing.contains(program)).then(|| PathBuf::from("/usr/bin").join(program))
    }
}

impl Host for FakeKernel {
    fn serves(&self, pid: i32, _fuse_file: &Path) -> bool {
        *lock(&self.serving) == Some(pid)
    }
    fn mounts(&self) -> Vec<MountEntry> {
        lock(&self.mounts).clone()
    }
    fn loops_of(&self, _file: &Path) -> Vec<LoopDev> {
        lock(&self.loops).clone()
    }
    fn terminate(&self, pid: i32, _wait: Duration) -> bool {
        lock(&self.terminated).push(pid);
        if lock(&self.serving).take() == Some(pid) {
            // The daemon unmounts its export as it exits.
            lock(&self.mounts).retain(|m| m.fs_type != "fuse");
        }
        true
    }
}

/// An image at `<dir>/root.hds` and a run root next to it.
fn image(dir: &Path) -> (PathBuf, PathBuf) {
    let image = dir.join("root.hds");
    ploop1::create_empty(&image, 1_048_576, 2048).unwrap();
    (image, dir.join("run"))
}

fn open(k: &Arc<FakeKernel>, run: &Path, image: &Path) -> Attachment {
    Attachment::open(k.clone(), k.clone(), run, image).unwrap()
}

#[test]
fn a_new_attachment_serves_the_image_and_goes_completely() {
    let dir = tempfile::tempdir().unwrap();
    let (image, run) = image(dir.path());
    let k = Arc::new(FakeKernel::new());
    let mut a = open(&k, &run, &image);
    let ad = a.dir().clone();
    assert!(ad.path().starts_with(&run) && ad.disk().exists());
    assert_eq!(std::fs::read_to_string(ad.pid_file()).unwrap().trim(), PID.to_string());
    assert_eq!(a.partition_device().unwrap(), "/dev/loop9");
    // Asked again: the same device, nothing run.
    assert_eq!(a.partition_device().unwrap(), "/dev/loop9");
    let (released, ran) = a.release().unwrap();
    assert_eq!(released, Released::Detached);
    let disk = ad.disk().display().to_string();
    let daemon = daemon_command(ad.image(), &ad.disk(), &ad.pid_file()).to_string();
    assert_eq!(
        ran,
        [
            daemon,
            format!("sfdisk -J {disk}"),
            format!("losetup --find --show --offset 1048576 --sizelimit 534773760 {disk}"),
            "losetup -d /dev/loop9".to_string(),
        ]
    );
    assert_eq!(*lock(&k.terminated), [PID]);
    assert!(!ad.path().exists(), "{} is left", ad.path().display());
    assert!(k.mounts().is_empty() && k.loops_of(&ad.disk()).is_empty());
}

#[test]
fn the_daemon_is_given_the_image_as_json() {
    let c = daemon_command(
        Path::new("/vz/private/1,2/root.hdd/root.hds"),
        Path::new("/run/d"),
        Path::new("/run/p"),
    );
    let argv = c.argv();
    assert_eq!(argv[0], "qemu-storage-daemon");
    let file: serde_json::Value = serde_json::from_str(&argv[2]).unwrap();
    // A comma would split qemu's key=value syntax; JSON keeps the path whole.
    assert_eq!(file["filename"], "/vz/private/1,2/root.hdd/root.hds");
    assert_eq!(file["driver"], "file");
    let fmt: serde_json::Value = serde_json::from_str(&argv[4]).unwrap();
    assert_eq!((fmt["driver"].as_str(), fmt["file"].as_str()), (Some("parallels"), Some("p2c-file")));
    let export: serde_json::Value = serde_json::from_str(&argv[6]).unwrap();
    assert_eq!(export["type"], "fuse");
    assert_eq!(export["writable"], true);
    assert_eq!(export["mountpoint"], "/run/d");
    assert_eq!(&argv[7..], ["--daemonize", "--pidfile", "/run/p"]);
}

/// The state a controller killed while the image was mounted leaves: the daemon serving,
/// the partition's loop device, the run directory.
fn left_running(k: &FakeKernel, run: &Path, image: &Path) -> AttachDir {
    let ad = AttachDir::new(run, image).unwrap();
    std::fs::create_dir_all(ad.path()).unwrap();
    std::fs::write(ad.disk(), b"").unwrap();
    std::fs::write(ad.pid_file(), format!("{PID}\n")).unwrap();
    std::fs::write(ad.path().join("image"), ad.image().as_os_str().as_encoded_bytes()).unwrap();
    *lock(&k.serving) = Some(PID);
    k.add_mount(&ad.disk(), "/dev/fuse", "fuse");
    k.add_loop("/dev/loop5", 1 << 20);
    ad
}

#[test]
fn a_live_attachment_is_reused_with_its_loop_device() {
    let dir = tempfile::tempdir().unwrap();
    let (image, run) = image(dir.path());
    let k = Arc::new(FakeKernel::new());
    let ad = left_running(&k, &run, &image);
    let mut a = open(&k, &run, &image);
    assert_eq!(a.partition_device().unwrap(), "/dev/loop5");
    assert_eq!(k.ran(), [format!("sfdisk -J {}", ad.disk().display())]);
    drop(a);
    // Dropped without release: still torn down completely.
    assert_eq!(*lock(&k.terminated), [PID]);
    assert!(!ad.path().exists());
}

#[test]
fn a_dead_attachment_is_torn_down_and_the_image_repaired_before_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let (image, run) = image(dir.path());
    let k = Arc::new(FakeKernel::new());
    let ad = left_running(&k, &run, &image);
    // The daemon was killed: its export is a dead mount, the image still marked in use, and
    // the file system is still mounted at the container's root.
    *lock(&k.serving) = None;
    k.add_mount(Path::new("/vz/root/101"), "/dev/loop5", "ext4");
    let mut h = ploop1::read_header(&image).unwrap();
    h.in_use = ploop1::DISK_IN_USE;
    let mut b = std::fs::read(&image).unwrap();
    b[..64].copy_from_slice(&h.to_bytes());
    std::fs::write(&image, b).unwrap();

    let mut a = open(&k, &run, &image);
    assert_eq!(a.partition_device().unwrap(), "/dev/loop9");
    let disk = ad.disk().display().to_string();
    let ran = k.ran();
    assert_eq!(
        ran[..4],
        [
            "umount /vz/root/101".to_string(),
            "losetup -d /dev/loop5".into(),
            format!("umount -l {disk}"),
            format!("qemu-img check -r all -f parallels {}", ad.image().display()),
        ]
    );
    assert!(ran[4].starts_with("qemu-storage-daemon "), "{ran:?}");
    assert!(!ploop1::read_header(&image).unwrap().in_use());
    assert_eq!(a.release().unwrap().0, Released::Detached);
}

#[test]
fn an_attachment_still_held_elsewhere_is_kept_for_the_next_mount() {
    let dir = tempfile::tempdir().unwrap();
    let (image, run) = image(dir.path());
    let k = Arc::new(FakeKernel::new());
    let mut a = open(&k, &run, &image);
    let ad = a.dir().clone();
    let dev = a.partition_device().unwrap();
    lock(&k.busy).insert(dev.clone());
    assert_eq!(a.release().unwrap().0, Released::Kept);
    assert!(lock(&k.terminated).is_empty(), "the daemon of a held file system was stopped");
    assert!(ad.pid_file().exists());
    // The next open finds it up and mounts the same device again.
    let mut again = open(&k, &run, &image);
    assert_eq!(again.partition_device().unwrap(), dev);
    lock(&k.busy).clear();
    assert_eq!(again.release().unwrap().0, Released::Detached);
    assert!(!ad.path().exists());
}

#[test]
fn clean_up_stops_a_live_attachment_without_starting_one() {
    let dir = tempfile::tempdir().unwrap();
    let (image, run) = image(dir.path());
    let k = Arc::new(FakeKernel::new());
    let ad = left_running(&k, &run, &image);
    Attachment::clean_up(k.clone(), k.clone(), &run, &image).unwrap();
    assert_eq!(k.ran(), ["losetup -d /dev/loop5".to_string()]);
    assert_eq!(*lock(&k.terminated), [PID]);
    assert!(!ad.path().exists());
}

#[test]
fn keys_are_stable_and_differ_per_image() {
    assert_eq!(
        key(Path::new("/vz/private/101/root.hdd/root.hds")),
        key(Path::new("/vz/private/101/root.hdd/root.hds"))
    );
    assert_ne!(
        key(Path::new("/vz/private/101/root.hdd/root.hds")),
        key(Path::new("/vz/private/102/root.hdd/root.hds"))
    );
    assert_eq!(key(Path::new("")).len(), 16);
}
