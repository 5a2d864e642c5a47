use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use p2c_tests::loopfs::{FsKind, LoopFs};
use p2c_tests::{require_root, trace_init, wait_for_sync};

const SIZE: u64 = 256 << 20;

/// The `/proc/mounts` line for `mountpoint`, if mounted.
fn mount_line(mountpoint: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let needle = format!(" {} ", mountpoint.display());
    mounts.lines().find(|l| l.contains(&needle)).map(str::to_owned)
}

/// True while `device` is attached to a backing file.
fn attached(device: &Path) -> bool {
    let name = device.file_name().unwrap().to_string_lossy().into_owned();
    Path::new("/sys/block").join(name).join("loop/backing_file").exists()
}

fn assert_cleaned_up(mountpoint: &Path, device: &Path) {
    assert_eq!(mount_line(mountpoint), None, "{} still mounted", mountpoint.display());
    wait_for_sync(&format!("{} to be detached", device.display()), Duration::from_secs(10), || {
        !attached(device)
    });
}

fn mounts_writes_and_cleans_up(kind: FsKind) {
    trace_init();
    let fs = LoopFs::new(kind, SIZE, "noatime").unwrap();
    let line = mount_line(fs.path()).expect("mounted");
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields[0], fs.device().to_str().unwrap(), "{line}");
    assert_eq!(fields[2], kind.name(), "{line}");
    assert!(fields[3].split(',').any(|o| o == "noatime"), "{line}");
    std::fs::write(fs.path().join("hello"), b"world").unwrap();
    assert_eq!(std::fs::read(fs.path().join("hello")).unwrap(), b"world");
    // The image is sparse: far fewer bytes allocated than its size.
    let image = std::fs::metadata(fs.image()).unwrap();
    assert_eq!(image.len(), SIZE);
    assert!(image.blocks() * 512 < SIZE / 2, "image not sparse: {} blocks", image.blocks());

    let (mountpoint, device) = (fs.path().to_owned(), fs.device().to_owned());
    drop(fs);
    assert_cleaned_up(&mountpoint, &device);
}

#[test]
fn ext4_mounts_writes_and_cleans_up() {
    require_root!();
    mounts_writes_and_cleans_up(FsKind::Ext4);
}

#[test]
fn btrfs_mounts_writes_and_cleans_up() {
    require_root!();
    mounts_writes_and_cleans_up(FsKind::Btrfs);
}

/// A test that panics with the file system mounted still leaves nothing behind.
#[test]
fn cleans_up_after_a_panic() {
    require_root!();
    let mut seen: Option<(PathBuf, PathBuf)> = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let fs = LoopFs::new(FsKind::Ext4, 64 << 20, "").unwrap();
        seen = Some((fs.path().to_owned(), fs.device().to_owned()));
        panic!("test failure while mounted");
    }));
    assert!(result.is_err());
    let (mountpoint, device) = seen.unwrap();
    assert_cleaned_up(&mountpoint, &device);
}

/// A file still open on the file system: drop falls back to a lazy unmount, and the loop
/// device goes away once the file is closed.
#[test]
fn busy_file_system_is_unmounted_lazily() {
    require_root!();
    let fs = LoopFs::new(FsKind::Btrfs, SIZE, "").unwrap();
    let open = std::fs::File::create(fs.path().join("held-open")).unwrap();
    let (mountpoint, device) = (fs.path().to_owned(), fs.device().to_owned());
    drop(fs);
    assert_eq!(mount_line(&mountpoint), None, "still mounted");
    drop(open);
    assert_cleaned_up(&mountpoint, &device);
}
