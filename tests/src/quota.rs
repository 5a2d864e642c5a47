//! Test helpers for quota enforcement: loop-mounted file systems, a Debian kernel booted
//! under KVM with an initramfs made at run time from busybox-static, and a `newc` cpio
//! writer for that initramfs.
//!
//! Nothing is fetched except through apt (`apt-get download`), and the cache lives under
//! [`CACHE_DIR`], never in the repository.

use p2c_common::sync::Locked;
use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where downloaded packages and extracted kernels are kept between runs.
pub const CACHE_DIR: &str = "/var/cache/p2c-tests";

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Runs a command, returning stdout or a message with stderr.
pub fn sh(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A file-system image loop-mounted at `mountpoint`; unmounted on drop.
pub struct LoopMount {
    pub mountpoint: PathBuf,
}

impl LoopMount {
    /// Makes a `size_mib` image at `image` with `mkfs` (e.g. `["mkfs.btrfs", "-q"]`) and
    /// mounts it at `mountpoint`.
    pub fn new(image: &Path, size_mib: u64, mkfs: &[&str], mountpoint: &Path) -> Result<LoopMount, String> {
        let f = std::fs::File::create(image).map_err(|e| format!("{}: {e}", image.display()))?;
        f.set_len(size_mib << 20).map_err(|e| e.to_string())?;
        drop(f);
        let img = image.to_string_lossy();
        let mut args: Vec<&str> = mkfs[1..].to_vec();
        args.push(&img);
        sh(mkfs[0], &args)?;
        std::fs::create_dir_all(mountpoint).map_err(|e| e.to_string())?;
        sh("mount", &["-o", "loop", &img, &mountpoint.to_string_lossy()])?;
        Ok(LoopMount { mountpoint: mountpoint.to_path_buf() })
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let mp = self.mountpoint.to_string_lossy().into_owned();
        if sh("umount", &[&mp]).is_err() {
            let _ = sh("umount", &["-l", &mp]);
        }
    }
}

/// A `newc` (SVR4, no CRC) cpio archive, the format the kernel unpacks as initramfs.
#[derive(Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
    dirs: HashSet<String>,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let name = name.trim_start_matches('/');
        let fields = [self.ino, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, 0, 0, name.len() as u32 + 1, 0];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// Adds `path`'s parent directories that are not in the archive yet.
    fn parents(&mut self, path: &str) {
        let p = Path::new(path.trim_start_matches('/'));
        let mut acc = PathBuf::new();
        let comps: Vec<_> = p.components().collect();
        for c in &comps[..comps.len().saturating_sub(1)] {
            acc.push(c);
            let s = acc.to_string_lossy().into_owned();
            if self.dirs.insert(s.clone()) {
                self.entry(&s, 0o040755, b"");
            }
        }
    }

    pub fn dir(&mut self, path: &str) {
        self.parents(path);
        let s = path.trim_start_matches('/').to_string();
        if self.dirs.insert(s.clone()) {
            self.entry(&s, 0o040755, b"");
        }
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.parents(path);
        self.entry(path, 0o100000 | mode, data);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.entry(path, 0o120777, target.as_bytes());
    }

    /// Copies a host file to the same path in the archive.
    pub fn host_file(&mut self, path: &Path) -> Result<(), String> {
        let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mode = std::fs::metadata(path).map_err(|e| e.to_string())?.permissions().mode() & 0o7777;
        self.file(&path.to_string_lossy(), mode, &data);
        Ok(())
    }

    /// Copies a dynamically linked host program with its libraries and loader.
    pub fn host_program(&mut self, program: &Path) -> Result<(), String> {
        let ldd = sh("ldd", &[&program.to_string_lossy()])?;
        for line in ldd.lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
            let path = line
                .split("=>")
                .last()
                .and_then(|r| r.split_whitespace().next())
                .filter(|p| p.starts_with('/'));
            if let Some(p) = path {
                let real = std::fs::canonicalize(p).map_err(|e| format!("{p}: {e}"))?;
                let data = std::fs::read(&real).map_err(|e| e.to_string())?;
                self.file(p, 0o755, &data);
            }
        }
        self.host_file(program)
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, b"");
        self.buf
    }
}

/// A Debian kernel unpacked in the cache.
pub struct DebianKernel {
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
    pub package: String,
}

fn find_kernel(root: &Path) -> Option<DebianKernel> {
    let boot = root.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))?;
    let release = vmlinuz.file_name()?.to_string_lossy().trim_start_matches("vmlinuz-").to_string();
    let modules = root.join("lib/modules").join(&release);
    modules.is_dir().then(|| DebianKernel {
        vmlinuz,
        modules,
        package: root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
    })
}

/// The kernel package `linux-image-amd64` depends on, downloaded with `apt-get download`
/// and unpacked with `dpkg-deb -x` under [`CACHE_DIR`] (reused when already there).
pub fn debian_kernel() -> Result<DebianKernel, String> {
    let depends = || -> Result<String, String> {
        let out = sh("apt-cache", &["depends", "linux-image-amd64"])?;
        out.lines()
            .filter_map(|l| l.trim().strip_prefix("Depends:"))
            .map(str::trim)
            .find(|p| p.starts_with("linux-image-") && !p.starts_with('<'))
            .map(str::to_string)
            .ok_or_else(|| "apt-cache knows no linux-image-amd64 dependency".to_string())
    };
    let package = match depends() {
        Ok(p) => p,
        Err(_) => {
            sh("apt-get", &["update", "-qq"])?;
            depends()?
        }
    };
    let cache = Path::new(CACHE_DIR).join("kernel");
    let root = cache.join(&package);
    if let Some(k) = find_kernel(&root) {
        return Ok(k);
    }
    std::fs::create_dir_all(&cache).map_err(|e| e.to_string())?;
    let deb = match find_deb(&cache, &package) {
        Some(d) => d,
        None => {
            let out = Command::new("apt-get")
                .args(["download", &package])
                .current_dir(&cache)
                .output()
                .map_err(|e| format!("apt-get download: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "apt-get download {package}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            find_deb(&cache, &package).ok_or_else(|| format!("apt-get download left no {package} package"))?
        }
    };
    sh("dpkg-deb", &["-x", &deb.to_string_lossy(), &root.to_string_lossy()])?;
    find_kernel(&root).ok_or_else(|| format!("no kernel in {}", deb.display()))
}

fn find_deb(dir: &Path, package: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).find(|p| {
        p.extension().is_some_and(|x| x == "deb")
            && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
    })
}

/// Kernel modules `wanted` and what they depend on, dependencies first, as
/// `(name, path)`; `.ko.xz`/`.ko.zst` are found too.
pub fn module_closure(modules: &Path, wanted: &[&str]) -> Result<Vec<(String, PathBuf)>, String> {
    let mut index = BTreeMap::new();
    let mut stack = vec![modules.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(n) = p.file_name().map(|n| n.to_string_lossy().into_owned()) {
                for ext in [".ko", ".ko.xz", ".ko.zst"] {
                    if let Some(stem) = n.strip_suffix(ext) {
                        index.insert(stem.replace('-', "_"), p.clone());
                    }
                }
            }
        }
    }
    let builtin = std::fs::read_to_string(modules.join("modules.builtin")).unwrap_or_default();
    let is_builtin = |m: &str| {
        builtin.lines().any(|l| {
            l.rsplit('/').next().and_then(|f| f.strip_suffix(".ko")).map(|f| f.replace('-', "_"))
                == Some(m.to_string())
        })
    };
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    fn visit(
        m: &str,
        index: &BTreeMap<String, PathBuf>,
        is_builtin: &dyn Fn(&str) -> bool,
        seen: &mut HashSet<String>,
        order: &mut Vec<(String, PathBuf)>,
    ) -> Result<(), String> {
        let m = m.replace('-', "_");
        if !seen.insert(m.clone()) {
            return Ok(());
        }
        let Some(path) = index.get(&m) else {
            return if is_builtin(&m) { Ok(()) } else { Err(format!("module {m} not found")) };
        };
        let deps = sh("modinfo", &["-F", "depends", &path.to_string_lossy()])?;
        for d in deps.trim().split(',').filter(|d| !d.is_empty()) {
            visit(d, index, is_builtin, seen, order)?;
        }
        order.push((m, path.clone()));
        Ok(())
    }
    for w in wanted {
        visit(w, &index, &is_builtin, &mut seen, &mut order)?;
    }
    Ok(order)
}

/// A module's bytes, decompressed if it is `.ko.xz` or `.ko.zst`.
pub fn module_bytes(path: &Path) -> Result<Vec<u8>, String> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else {
        None
    };
    match tool {
        None => std::fs::read(path).map_err(|e| e.to_string()),
        Some(t) => {
            let out = Command::new(t).args(["-dc", &name]).output().map_err(|e| format!("{t}: {e}"))?;
            if out.status.success() { Ok(out.stdout) } else { Err(format!("{t} -dc {name} failed")) }
        }
    }
}

/// How qemu runs the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// Plain emulation, for hosts where a nested KVM guest does not boot.
    Tcg,
}

/// Boots `kernel` with `initrd` and `disk` (raw, virtio); returns the serial console
/// output once the guest powers off, or an error after `timeout`, or as soon as the
/// guest has printed no word within `silence` after starting (a guest that hangs before its
/// kernel says anything).
pub fn run_qemu(
    kernel: &Path,
    initrd: &Path,
    disk: &Path,
    accel: Accel,
    timeout: Duration,
    silence: Option<Duration>,
) -> Result<String, String> {
    use std::sync::{Arc, Mutex};
    let mut child = Command::new("qemu-system-x86_64")
        .args(match accel {
            Accel::Kvm => ["-accel", "kvm"],
            Accel::Tcg => ["-accel", "tcg"],
        })
        .args(["-m", "512", "-smp", "1", "-nographic", "-no-reboot"])
        .args(["-nodefaults", "-serial", "stdio", "-monitor", "none"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=4"])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio,cache=unsafe", disk.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("qemu-system-x86_64: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no qemu stdout")?;
    let console = Arc::new(Mutex::new(Vec::new()));
    let sink = console.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.locked().extend_from_slice(&buf[..n]);
        }
    });
    let text = |c: &Mutex<Vec<u8>>| String::from_utf8_lossy(&c.locked()).into_owned();
    let start = Instant::now();
    let (mut last_len, mut moved) = (0usize, Instant::now());
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {
                // A guest whose console stops moving has hung (under KVM on some hosts the
                // kernel stops right after the firmware's and loader's lines).
                let len = console.locked().len();
                if len != last_len {
                    (last_len, moved) = (len, Instant::now());
                }
                let quiet = silence.is_some_and(|s| moved.elapsed() > s);
                if quiet || start.elapsed() > timeout {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = reader.join();
                    let why = if quiet {
                        format!("the VM printed nothing for {:?}", silence.unwrap_or_default())
                    } else {
                        format!("the VM did not power off within {timeout:?}")
                    };
                    return Err(format!("{why}; console:\n{}", text(&console)));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    reader.join().map_err(|_| "console reader panicked".to_string())?;
    let out = text(&console);
    if !status.success() {
        return Err(format!("qemu failed ({status}): {}\nconsole:\n{out}", err.trim()));
    }
    if !err.trim().is_empty() {
        eprintln!("qemu stderr: {}", err.trim());
    }
    Ok(out)
}

/// What the quota guest checks inside an ext4 image: as `uid`:`gid`, a write of
/// `under_kib` KiB into `dir` (a directory of the image that uid may write to) must work,
/// and one of `over_kib` KiB must fail with "Disk quota exceeded".
#[derive(Clone, Debug)]
pub struct EnforceCheck {
    pub uid: u32,
    pub gid: u32,
    /// Relative to the image's root, e.g. `home/u1001`.
    pub dir: String,
    pub under_kib: u64,
    pub over_kib: u64,
}

/// What the guest printed, with the lines the checks look at.
#[derive(Clone, Debug)]
pub struct GuestConsole {
    pub text: String,
    pub accel: Accel,
}

impl GuestConsole {
    /// The first line holding `tag` (from the tag on), or "".
    pub fn line(&self, tag: &str) -> &str {
        self.text.lines().find_map(|l| l.find(tag).map(|at| l[at..].trim())).unwrap_or("")
    }

    /// The lines worth showing: the guest script's tags, dd's and quota's messages.
    pub fn filtered(&self) -> String {
        let keep = |l: &&str| l.contains("P2C-") || l.contains("dd:") || l.contains("quota");
        self.text.lines().filter(keep).collect::<Vec<_>>().join("\n")
    }
}

/// The programs and packages a quota guest needs, or why it cannot run here (a reason to
/// skip the test that wants it).
pub fn guest_prerequisites() -> Result<(PathBuf, DebianKernel), String> {
    if !Path::new("/dev/kvm").exists() {
        return Err("/dev/kvm is not available".into());
    }
    for p in
        ["qemu-system-x86_64", "mkfs.ext4", "quotacheck", "setquota", "quotaon", "setpriv", "modinfo", "ldd"]
    {
        if !have(p) {
            return Err(format!("{p} is not installed"));
        }
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists() && sh("ldd", &[&p.to_string_lossy()]).is_err())
        .ok_or("a static busybox (package busybox-static) is not installed")?;
    let kernel = debian_kernel().map_err(|e| format!("Debian's kernel package is unavailable: {e}"))?;
    Ok((busybox, kernel))
}

/// Boots Debian's kernel (which has CONFIG_QFMT_V2) on `disk`, a raw ext4 image holding
/// `aquota.user`/`aquota.group`, mounts it with the journaled-quota options, turns quota on
/// and runs `check`; the console once the guest has powered off. `work` holds the
/// initramfs. Tags in the console: `P2C-MOUNT rc=`, `P2C-QUOTAON rc=`, `P2C-UNDER rc=`,
/// `P2C-OVER rc=`, `P2C-DONE`.
pub fn run_quota_guest(
    busybox: &Path,
    kernel: &DebianKernel,
    disk: &Path,
    mount_options: &str,
    check: &EnforceCheck,
    work: &Path,
) -> Result<GuestConsole, String> {
    let modules =
        module_closure(&kernel.modules, &["virtio_pci", "virtio_blk", "crc32c_generic", "ext4", "quota_v2"])?;
    let mut cpio = Cpio::default();
    cpio.file("bin/busybox", 0o755, &std::fs::read(busybox).map_err(|e| e.to_string())?);
    for d in ["proc", "sys", "dev", "mnt", "tmp", "etc"] {
        cpio.dir(d);
    }
    cpio.symlink("etc/mtab", "/proc/mounts");
    let which = |p: &str| sh("sh", &["-c", &format!("command -v {p}")]).map(|s| s.trim().to_string());
    let quotaon = which("quotaon")?;
    let setpriv = which("setpriv")?;
    cpio.host_program(Path::new(&quotaon))?;
    cpio.host_program(Path::new(&setpriv))?;
    let mut insmods = String::new();
    for (name, path) in &modules {
        cpio.file(&format!("modules/{name}.ko"), 0o644, &module_bytes(path)?);
        insmods.push_str(&format!("insmod /modules/{name}.ko || echo P2C-INSMOD-FAILED {name}\n"));
    }
    let as_user = format!("{setpriv} --reuid={} --regid={} --clear-groups", check.uid, check.gid);
    let dir = format!("/mnt/{}", check.dir.trim_matches('/'));
    let init = format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
{insmods}
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 1; done
mount -t ext4 -o {mount_options} /dev/vda /mnt
echo "P2C-MOUNT rc=$?"
{quotaon} -v -u -g /mnt 2>&1
echo "P2C-QUOTAON rc=$?"
{as_user} dd if=/dev/zero of={dir}/p2c-under bs=1024 count={under} 2>&1
echo "P2C-UNDER rc=$?"
{as_user} dd if=/dev/zero of={dir}/p2c-over bs=1024 count={over} 2>&1
echo "P2C-OVER rc=$?"
rm -f {dir}/p2c-under {dir}/p2c-over
sync
umount /mnt
echo P2C-DONE
poweroff -f
"#,
        under = check.under_kib,
        over = check.over_kib,
    );
    cpio.file("init", 0o755, init.as_bytes());
    let initrd = work.join("initrd.cpio");
    std::fs::write(&initrd, cpio.finish()).map_err(|e| format!("{}: {e}", initrd.display()))?;
    boot(&kernel.vmlinuz, &initrd, disk)
}

/// Runs the guest under KVM, or under TCG emulation where a nested KVM guest hangs before
/// its kernel prints anything (seen on hosts that are themselves VMs). Once KVM has failed
/// in this process, later guests go straight to TCG.
fn boot(kernel: &Path, initrd: &Path, disk: &Path) -> Result<GuestConsole, String> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static KVM_FAILED: AtomicBool = AtomicBool::new(false);
    if !KVM_FAILED.load(Ordering::Relaxed) {
        // A healthy guest under KVM finishes in a few seconds; one whose console stops for
        // 10 s has hung.
        match run_qemu(
            kernel,
            initrd,
            disk,
            Accel::Kvm,
            Duration::from_secs(60),
            Some(Duration::from_secs(10)),
        ) {
            Ok(c) if c.contains("P2C-DONE") => return Ok(GuestConsole { text: c, accel: Accel::Kvm }),
            other => {
                let why = match other {
                    Ok(c) => format!("the guest stopped early:\n{c}"),
                    Err(e) => e,
                };
                eprintln!("KVM guest failed ({}); running it under TCG", why.lines().next().unwrap_or(""));
                KVM_FAILED.store(true, Ordering::Relaxed);
            }
        }
    }
    let c = run_qemu(kernel, initrd, disk, Accel::Tcg, Duration::from_secs(300), None)?;
    Ok(GuestConsole { text: c, accel: Accel::Tcg })
}
