//! Test fixture: a loop-mounted ext4 file system with quota files made by quota-tools.
//! Needs root, `mkfs.ext4`, `quotacheck`, `setquota` and `repquota`; callers skip with a
//! message when [`LoopFs::new`] returns `None`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted 64 MiB ext4 image, unmounted and removed on drop.
pub struct LoopFs {
    _dir: tempfile::TempDir,
    pub mnt: PathBuf,
}

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl LoopFs {
    /// Makes and mounts the file system with `usrquota,grpquota`; `None` (with the reason
    /// printed) when not root or a tool is missing.
    pub fn new() -> Option<LoopFs> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping: needs root to loop-mount an ext4 image");
            return None;
        }
        for tool in ["mkfs.ext4", "quotacheck", "setquota", "repquota"] {
            if Command::new(tool).arg("-V").output().is_err() {
                eprintln!("skipping: {tool} is not installed");
                return None;
            }
        }
        let dir = tempfile::tempdir().ok()?;
        let img = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).ok()?;
        std::fs::File::create(&img).ok()?.set_len(64 << 20).ok()?;
        let s = |p: &Path| p.to_string_lossy().into_owned();
        if let Err(e) = run("mkfs.ext4", &["-q", "-F", &s(&img)]) {
            eprintln!("skipping: {e}");
            return None;
        }
        if let Err(e) = run("mount", &["-o", "loop,usrquota,grpquota", &s(&img), &s(&mnt)]) {
            eprintln!("skipping: cannot loop-mount: {e}");
            return None;
        }
        Some(LoopFs { _dir: dir, mnt })
    }

    /// The directory holding the image and the mount point `mnt`.
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    pub fn path(&self) -> String {
        self.mnt.to_string_lossy().into_owned()
    }

    /// Creates a file of `kib` KiB owned by `uid:gid`.
    pub fn file(&self, name: &str, kib: usize, uid: u32, gid: u32) {
        let p = self.mnt.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, vec![7u8; kib * 1024]).unwrap();
        std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
    }

    /// Runs a quota tool against the mount point, panicking with its stderr on failure.
    pub fn tool(&self, cmd: &str, args: &[&str]) -> String {
        // quotacheck scans the device: let it see what the page cache holds.
        rustix::fs::sync();
        let mut a: Vec<&str> = args.to_vec();
        let m = self.path();
        a.push(&m);
        run(cmd, &a).unwrap()
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let m = self.path();
        if run("umount", &[&m]).is_err() {
            let _ = run("umount", &["-l", &m]);
        }
    }
}

/// One row of `repquota -O csv`: id, block used (KiB), soft, hard, inodes used, soft, hard.
#[derive(Debug, PartialEq, Eq)]
pub struct RepRow {
    pub id: u32,
    pub block_used: u64,
    pub block_soft: u64,
    pub block_hard: u64,
    pub inode_used: u64,
    pub inode_soft: u64,
    pub inode_hard: u64,
}

/// Parses `repquota -n -v -O csv` output (columns named by its header line).
pub fn parse_repquota_csv(text: &str) -> Vec<RepRow> {
    let mut lines = text.lines();
    let header: Vec<String> =
        lines.next().unwrap_or("").split(',').map(|h| h.trim().to_ascii_lowercase()).collect();
    let col = |name: &str| header.iter().position(|h| h == name);
    let idx = [
        col("user").or(col("group")).unwrap_or(0),
        col("blockused").unwrap(),
        col("blocksoftlimit").unwrap(),
        col("blockhardlimit").unwrap(),
        col("fileused").unwrap(),
        col("filesoftlimit").unwrap(),
        col("filehardlimit").unwrap(),
    ];
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            let n = |i: usize| f[idx[i]].trim_matches('"').parse::<u64>().unwrap();
            RepRow {
                id: f[idx[0]].trim_matches('"').trim_start_matches('#').parse().unwrap(),
                block_used: n(1),
                block_soft: n(2),
                block_hard: n(3),
                inode_used: n(4),
                inode_soft: n(5),
                inode_hard: n(6),
            }
        })
        .collect()
}
