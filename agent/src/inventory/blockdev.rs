//! Block devices from `/sys/class/block`, with what is on the unmounted ones (a few
//! superblock bytes), so that the assessment can list devices used without a file system.

use std::collections::HashMap;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
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
        let read = |f: &str| fsread::read_text(&dir.join(f), 4096).map(|t| t.trim().to_string()).ok();
        let Some((major, minor)) = read("dev").and_then(|d| {
            let (a, b) = d.split_once(':')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        }) else {
            continue;
        };
        let size_bytes = read("size").and_then(|s| s.parse::<u64>().ok()).unwrap_or(0).saturating_mul(512);
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
            read("dm/name").filter(|n| !n.is_empty()).unwrap_or(kname.clone())
        } else {
            kname.clone()
        };
        let mount = mounts.iter().find(|m| m.major == major && m.minor == minor);
        let fs_type = match mount {
            Some(m) => Some(m.fs_type.clone()),
            // Removable drives are not opened: a floppy or CD drive may stall the agent.
            None if size_bytes > 0 && kind != "rom" && !kname.starts_with("fd") => probe(&dev.join(&kname)),
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
    let names: HashMap<String, String> =
        index.iter().map(|(k, &i)| (k.clone(), devs[i].name.clone())).collect();
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
    let f = std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NONBLOCK).open(path).ok()?;
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
mod tests;
