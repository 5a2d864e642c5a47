//! Block devices from `/sys/class/block`, with what is on the unmounted ones (a few
//! superblock bytes), so that the assessment can list devices used without a file system.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use p2c_common::inventory::BlockDevice;

use super::fsread::{self, ReadError};
use super::mounts::MountInfo;

/// The block devices of the running kernel, or only those numbered in `only`. `sys` and
/// `dev` are normally `/sys` and `/dev`.
pub fn block_devices(
    sys: &Path,
    dev: &Path,
    mounts: &[MountInfo],
    only: Option<&[(u32, u32)]>,
) -> Result<Vec<BlockDevice>, ReadError> {
    let class = sys.join("class/block");
    let mut devs: Vec<BlockDevice> = Vec::new();
    // Kernel name → (index in devs, kernel name of the parent disk for partitions).
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut parents: Vec<(usize, String)> = Vec::new();
    for name in fsread::list_dir(&class)? {
        let Some(kname) = name.to_str().map(str::to_string) else {
            continue;
        };
        let dir = class.join(&kname);
        let read = |f: &str| {
            fsread::read_text(&dir.join(f), 4096)
                .map(|t| t.trim().to_string())
                .ok()
        };
        let Some((major, minor)) = read("dev").and_then(|d| {
            let (a, b) = d.split_once(':')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        }) else {
            continue;
        };
        let size_bytes = read("size")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
            .saturating_mul(512);
        if kname.starts_with("ram")
            || (kname.starts_with("loop") && size_bytes == 0)
            || only.is_some_and(|o| !o.contains(&(major, minor)))
        {
            continue;
        }
        let kind = if dir.join("partition").exists() {
            "part"
        } else if kname.starts_with("loop") {
            "loop"
        } else if kname.starts_with("md") {
            "md"
        } else if kname.starts_with("dm-") {
            match read("dm/uuid") {
                Some(u) if u.starts_with("LVM-") => "lvm",
                Some(u) if u.starts_with("CRYPT-") => "crypt",
                Some(u) if u.starts_with("mpath-") => "mpath",
                _ => "dm",
            }
        } else if kname.starts_with("sr") {
            "rom"
        } else {
            "disk"
        };
        let display = if kname.starts_with("dm-") {
            read("dm/name")
                .filter(|n| !n.is_empty())
                .unwrap_or(kname.clone())
        } else {
            kname.clone()
        };
        let mount = mounts.iter().find(|m| m.major == major && m.minor == minor);
        let fs_type = match mount {
            Some(m) => Some(m.fs_type.clone()),
            None if size_bytes > 0 => probe(&dev.join(&kname)),
            None => None,
        };
        if kind == "part"
            && let Ok(real) = std::fs::canonicalize(&dir)
            && let Some(p) = real.parent().and_then(|p| p.file_name())
        {
            parents.push((devs.len(), p.to_string_lossy().into_owned()));
        }
        let holders = fsread::list_dir(&dir.join("holders"))
            .unwrap_or_default()
            .into_iter()
            .map(|h| h.to_string_lossy().into_owned())
            .collect();
        index.insert(kname.clone(), devs.len());
        devs.push(BlockDevice {
            name: display,
            major,
            minor,
            size_bytes,
            kind: kind.to_string(),
            fs_type,
            mountpoint: mount.map(|m| String::from_utf8_lossy(&m.mount_point).into_owned()),
            holders,
        });
    }
    for (child, parent) in parents {
        if let Some(&p) = index.get(&parent) {
            let name = devs[child].name.clone();
            devs[p].holders.push(name);
        }
    }
    // Holders were read as kernel names (`dm-0`); report the names the devices go by.
    let names: HashMap<String, String> = index
        .iter()
        .map(|(k, &i)| (k.clone(), devs[i].name.clone()))
        .collect();
    for d in &mut devs {
        for h in &mut d.holders {
            if let Some(n) = names.get(h.as_str()) {
                h.clone_from(n);
            }
        }
        d.holders.sort();
        d.holders.dedup();
    }
    Ok(devs)
}

/// Identifies the content of a device or image from its first 68 KiB.
pub fn probe(path: &Path) -> Option<String> {
    let f = File::open(path).ok()?;
    probe_reader(&f)
}

/// [`probe`] on anything that reads at an offset.
pub fn probe_reader(f: &impl FileExt) -> Option<String> {
    let at = |off: u64, len: usize| -> Option<Vec<u8>> {
        let mut b = vec![0u8; len];
        f.read_exact_at(&mut b, off).ok()?;
        Some(b)
    };
    let is = |off: u64, magic: &[u8]| at(off, magic.len()).is_some_and(|b| b == magic);
    if is(0, b"XFSB") {
        return Some("xfs".into());
    }
    if is(65600, b"_BHRfS_M") {
        return Some("btrfs".into());
    }
    if let Some(sb) = at(1024, 0x68)
        && sb[0x38..0x3a] == [0x53, 0xef]
    {
        let le = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]);
        let (compat, incompat) = (le(0x5c), le(0x60));
        // extents, 64bit, flex_bg, ... only ext4 sets; a journal makes ext3.
        let t = if incompat & !0x1f != 0 {
            "ext4"
        } else if compat & 0x4 != 0 {
            "ext3"
        } else {
            "ext2"
        };
        return Some(t.into());
    }
    for page in [4096u64, 8192, 16384, 65536] {
        if is(page - 10, b"SWAPSPACE2") || is(page - 10, b"SWAP-SPACE") {
            return Some("swap".into());
        }
    }
    for sector in 0..4u64 {
        if is(sector * 512, b"LABELONE") && is(sector * 512 + 24, b"LVM2 001") {
            return Some("LVM2_member".into());
        }
    }
    // md superblocks 1.1 (at 0) and 1.2 (at 4 KiB).
    const MD_MAGIC: [u8; 4] = 0xa92b_4efc_u32.to_le_bytes();
    if is(0, &MD_MAGIC) || is(4096, &MD_MAGIC) {
        return Some("linux_raid_member".into());
    }
    if is(3, b"NTFS    ") {
        return Some("ntfs".into());
    }
    if is(82, b"FAT32   ") || is(54, b"FAT16   ") || is(54, b"FAT12   ") {
        return Some("vfat".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn image(len: u64, writes: &[(u64, &[u8])]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(len).unwrap();
        for (off, b) in writes {
            f.as_file().write_all_at(b, *off).unwrap();
        }
        f
    }

    #[test]
    fn signatures() {
        type Case = (Vec<(u64, &'static [u8])>, Option<&'static str>);
        let cases: Vec<Case> = vec![
            (vec![(4086, b"SWAPSPACE2")], Some("swap")),
            (vec![(65526, b"SWAPSPACE2")], Some("swap")),
            (
                vec![(512, b"LABELONE"), (536, b"LVM2 001")],
                Some("LVM2_member"),
            ),
            (vec![(0, b"XFSB")], Some("xfs")),
            (vec![(65600, b"_BHRfS_M")], Some("btrfs")),
            (vec![(1080, &[0x53, 0xef])], Some("ext2")),
            (
                vec![(1080, &[0x53, 0xef]), (1024 + 0x5c, &[4])],
                Some("ext3"),
            ),
            (
                vec![(1080, &[0x53, 0xef]), (1024 + 0x60, &[0xc2, 0x02])],
                Some("ext4"),
            ),
            (
                vec![(4096, &[0xfc, 0x4e, 0x2b, 0xa9])],
                Some("linux_raid_member"),
            ),
            (vec![], None),
        ];
        for (writes, want) in cases {
            let f = image(128 << 10, &writes);
            assert_eq!(probe(f.path()).as_deref(), want, "{writes:?}");
        }
        // A tiny device: every read past its end fails cleanly.
        let f = image(100, &[]);
        assert_eq!(probe(f.path()), None);
        assert_eq!(probe(Path::new("/nonexistent/dev")), None);
    }

    #[test]
    fn real_mkfs() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        let ok = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&img)
            .status();
        if !ok.is_ok_and(|s| s.success()) {
            eprintln!("skipping: mkfs.ext4 is not available");
            return;
        }
        assert_eq!(probe(&img).as_deref(), Some("ext4"));
        if Command::new("mkswap")
            .arg(&img)
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert_eq!(probe(&img).as_deref(), Some("swap"));
        }
    }

    #[test]
    fn sysfs_tree() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path().join("sys");
        let devices = sys.join("devices/pci/block/sda");
        let class = sys.join("class/block");
        std::fs::create_dir_all(devices.join("sda1")).unwrap();
        std::fs::create_dir_all(devices.join("sda2/holders/dm-0")).unwrap();
        std::fs::create_dir_all(sys.join("devices/virtual/block/dm-0/dm")).unwrap();
        std::fs::create_dir_all(&class).unwrap();
        let w = |p: &Path, s: &str| std::fs::write(p, s).unwrap();
        w(&devices.join("dev"), "8:0\n");
        w(&devices.join("size"), "2048\n");
        w(&devices.join("sda1/dev"), "8:1\n");
        w(&devices.join("sda1/size"), "1024\n");
        w(&devices.join("sda1/partition"), "1\n");
        w(&devices.join("sda2/dev"), "8:2\n");
        w(&devices.join("sda2/size"), "1024\n");
        w(&devices.join("sda2/partition"), "2\n");
        let dm = sys.join("devices/virtual/block/dm-0");
        w(&dm.join("dev"), "253:0\n");
        w(&dm.join("size"), "512\n");
        w(&dm.join("dm/uuid"), "LVM-abcdef\n");
        w(&dm.join("dm/name"), "vg0-data\n");
        std::os::unix::fs::symlink(&devices, class.join("sda")).unwrap();
        std::os::unix::fs::symlink(devices.join("sda1"), class.join("sda1")).unwrap();
        std::os::unix::fs::symlink(devices.join("sda2"), class.join("sda2")).unwrap();
        std::os::unix::fs::symlink(&dm, class.join("dm-0")).unwrap();
        let mounts = vec![MountInfo {
            major: 8,
            minor: 1,
            mount_point: b"/boot".to_vec(),
            fs_type: "ext4".into(),
            ..Default::default()
        }];
        let dev = t.path().join("dev");
        let d = block_devices(&sys, &dev, &mounts, None).unwrap();
        let only = block_devices(&sys, &dev, &mounts, Some(&[(8, 1)])).unwrap();
        assert_eq!(only.len(), 1);
        let by = |n: &str| d.iter().find(|b| b.name == n).unwrap();
        assert_eq!(by("sda").kind, "disk");
        assert_eq!(by("sda").size_bytes, 2048 * 512);
        assert_eq!(by("sda").holders, vec!["sda1", "sda2"]);
        assert_eq!(by("sda1").mountpoint.as_deref(), Some("/boot"));
        assert_eq!(by("sda1").fs_type.as_deref(), Some("ext4"));
        assert_eq!(by("sda2").holders, vec!["vg0-data"]);
        assert_eq!(by("vg0-data").kind, "lvm");
        assert_eq!((by("vg0-data").major, by("vg0-data").minor), (253, 0));
        assert_eq!(by("vg0-data").fs_type, None);
    }
}
