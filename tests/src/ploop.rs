//! Reading a ploop1 (expanded) container image the way an operator without ploop would, with
//! none of the controller's code: `qemu-storage-daemon` exports the image's virtual disk
//! read-only through FUSE, `sfdisk -J` reads its GPT, a read-only loop device over the
//! partition is mounted read-only. And a census of what is still attached to an image
//! (daemons, FUSE exports, loop devices, mounts), which must be nothing once p2c is done.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::util::{run, run_cmd};

/// A GPT partition, in 512-byte sectors, with its type GUID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GptPartition {
    pub start: u64,
    pub size: u64,
    pub kind: String,
    pub name: String,
}

/// What `sfdisk -J` says of a disk: its label and partitions.
pub fn read_gpt(disk: &Path) -> anyhow::Result<(String, Vec<GptPartition>)> {
    let out = run_cmd(Command::new("sfdisk").arg("-J").arg(disk))?;
    let v: serde_json::Value = serde_json::from_str(&out).context("sfdisk -J output")?;
    let t = &v["partitiontable"];
    let parts = t["partitions"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| GptPartition {
                    start: p["start"].as_u64().unwrap_or(0),
                    size: p["size"].as_u64().unwrap_or(0),
                    kind: p["type"].as_str().unwrap_or("").to_string(),
                    name: p["name"].as_str().unwrap_or("").to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((t["label"].as_str().unwrap_or("").to_string(), parts))
}

/// An image attached and mounted read-only; everything undone on drop.
pub struct ReadOnlyImage {
    dir: TempDir,
    pid: Option<i32>,
    device: Option<String>,
    mounted: bool,
    /// The disk's label and partitions, as read.
    pub label: String,
    pub partitions: Vec<GptPartition>,
}

impl ReadOnlyImage {
    /// Exports `image` (ploop1) read-only and mounts its one partition read-only.
    pub fn attach(image: &Path) -> anyhow::Result<ReadOnlyImage> {
        let dir = tempfile::Builder::new().prefix("p2c-ro-ploop-").tempdir()?;
        let disk = dir.path().join("disk");
        std::fs::write(&disk, b"")?;
        let pid_file = dir.path().join("pid");
        let file =
            serde_json::json!({"driver": "file", "node-name": "f", "filename": image, "read-only": true});
        let fmt =
            serde_json::json!({"driver": "parallels", "node-name": "p", "file": "f", "read-only": true});
        let export = serde_json::json!({"type": "fuse", "id": "e", "node-name": "p", "mountpoint": disk, "writable": false});
        run_cmd(
            Command::new("qemu-storage-daemon")
                .args(["--blockdev", &file.to_string(), "--blockdev", &fmt.to_string()])
                .args(["--export", &export.to_string(), "--daemonize", "--pidfile"])
                .arg(&pid_file),
        )?;
        let pid = std::fs::read_to_string(&pid_file)?.trim().parse().ok();
        let mut ro = ReadOnlyImage {
            dir,
            pid,
            device: None,
            mounted: false,
            label: String::new(),
            partitions: Vec::new(),
        };
        let (label, partitions) = read_gpt(&disk)?;
        ro.label = label;
        ro.partitions = partitions;
        let [p] = ro.partitions.as_slice() else {
            bail!("{} has {} partitions, not one", image.display(), ro.partitions.len());
        };
        let dev = run_cmd(
            Command::new("losetup")
                .args(["--find", "--show", "--read-only", "--offset"])
                .arg((p.start * 512).to_string())
                .arg("--sizelimit")
                .arg((p.size * 512).to_string())
                .arg(&disk),
        )?;
        ro.device = Some(dev.trim().to_string());
        let mnt = ro.path();
        std::fs::create_dir_all(&mnt)?;
        run("mount", &["-t", "ext4", "-o", "ro,noload", dev.trim(), &mnt.to_string_lossy()])?;
        ro.mounted = true;
        Ok(ro)
    }

    /// The read-only loop device over the partition.
    pub fn device(&self) -> &str {
        self.device.as_deref().unwrap_or("")
    }

    /// Where the partition's file system is mounted.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for ReadOnlyImage {
    fn drop(&mut self) {
        if self.mounted
            && let Err(e) = run("umount", &[self.path()])
        {
            eprintln!("warning: {e:#}");
        }
        if let Some(d) = &self.device
            && let Err(e) = run("losetup", &["-d", d])
        {
            eprintln!("warning: {e:#}");
        }
        if let Some(p) = self.pid.and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{}", p.as_raw_nonzero())).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Everything on this node still attached to `image` or to p2c's attachment of it: daemons
/// naming it, loop devices over it or over an export below `run_root`, FUSE exports below
/// `run_root`, the attachment's directory, and mounts of `mountpoint`.
pub fn attached(image: &Path, run_root: &Path, mountpoint: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let image_s = image.to_string_lossy().into_owned();
    let key_dir = run_root.join(p2c_controller::quota::ploop_attach::key(image));
    if key_dir.exists() {
        found.push(format!("attachment directory {}", key_dir.display()));
    }
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Ok(cmd) = std::fs::read(p.path().join("cmdline")) else { continue };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let stat = std::fs::read_to_string(p.path().join("stat")).unwrap_or_default();
            let zombie = stat.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
            if cmd.starts_with("qemu-storage-daemon") && cmd.contains(&image_s) && !zombie {
                found.push(format!("process {}: {cmd}", p.file_name().to_string_lossy()));
            }
        }
    }
    if let Ok(blocks) = std::fs::read_dir("/sys/block") {
        for b in blocks.flatten() {
            let Ok(backing) = std::fs::read_to_string(b.path().join("loop/backing_file")) else { continue };
            let backing = backing.trim();
            if backing == image_s || Path::new(backing).starts_with(&key_dir) {
                found.push(format!("loop device {} over {backing}", b.file_name().to_string_lossy()));
            }
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        let Some(mp) = line.split(' ').nth(4) else { continue };
        if Path::new(mp).starts_with(&key_dir) || Path::new(mp) == mountpoint {
            found.push(format!("mount {mp}"));
        }
    }
    found
}
