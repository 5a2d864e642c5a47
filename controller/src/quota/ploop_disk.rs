//! The disk inside an expanded ploop image, laid out as `ploop init` of ploop 7.x and 9.0
//! lays it out (lib/fsutils.c: `create_gpt_partition`, `make_fs`/`make_ext4`; lib/ploop.c:
//! `ploop_init_image`, `create_balloon_file`):
//!
//! * a GPT label (`parted -s DEV mklabel gpt`: first usable sector 34, last usable the disk's
//!   size minus 34) with one partition from sector `blocksize` (2048, 1 MiB) to
//!   `(size - blocksize) / blocksize * blocksize` exclusive (`sgdisk -n 1:START:END-1`), of
//!   type Linux filesystem (sgdisk's default 8300);
//! * ext4 on it: `mkfs -t ext4 -j -b4096 -Elazy_itable_init=1,resize=<50 TiB / 4096>
//!   -Jsize=128` and `tune2fs -ouser_xattr,acl -c0 -i0 -eremount-ro`;
//! * the balloon file at the file system's root (an empty file, mode 0600), which
//!   `ploop mount` stats to pass `balloon_ino=` and refuses to mount without.
//!
//! Here the label and the partition are written with `sfdisk`, which writes the same
//! structure (`parted` and `sgdisk` are not needed on the node).

use std::path::Path;

use serde::Deserialize;

use super::cmd::Cmd;

/// GPT type GUID of a Linux file-system partition (gdisk's 8300).
pub const LINUX_FS_TYPE: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
/// The name gdisk gives a new partition of that type.
pub const PARTITION_NAME: &str = "Linux filesystem";
/// ploop's balloon file (`BALLOON_FNAME`, lib/ploop.h).
pub const BALLOON_FILE: &str = ".balloon-c3a5ae3d-ce7f-43c4-a1ea-c61e2b4504e8";
/// ploop's largest file system (`PLOOP_MAX_FS_SIZE`): its ext4 reserves room to grow to it.
pub const MAX_FS_BYTES: u64 = 50 << 40;
/// File-system block size ploop makes ext4 with.
pub const FS_BLOCK: u64 = 4096;
/// Journal size ploop makes ext4 with, in MiB (`-Jsize=128`).
pub const JOURNAL_MIB: u64 = 128;
/// Sectors a GPT keeps at each end of the disk (protective MBR, header, 128 entries).
pub const GPT_RESERVED: u64 = 34;

/// A partition in 512-byte sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    pub start: u64,
    pub size: u64,
}

impl Partition {
    pub fn offset_bytes(&self) -> u64 {
        self.start * 512
    }

    pub fn size_bytes(&self) -> u64 {
        self.size * 512
    }
}

/// The partition ploop makes on a disk of `size` sectors with clusters of `blocksize`
/// sectors; `None` when the disk is too small to hold one (ploop refuses it too).
pub fn ploop_partition(size: u64, blocksize: u64) -> Option<Partition> {
    let start = blocksize;
    let end = (size.checked_sub(blocksize)? / blocksize * blocksize) / 8 * 8;
    (end > start).then_some(Partition { start, size: end - start })
}

/// The `sfdisk` script writing ploop's label and partition on a disk of `size` sectors.
pub fn sfdisk_script(size: u64, part: Partition) -> String {
    format!(
        "label: gpt\nfirst-lba: {GPT_RESERVED}\nlast-lba: {last}\nstart={start}, size={len}, type={LINUX_FS_TYPE}, name=\"{PARTITION_NAME}\"\n",
        last = size.saturating_sub(GPT_RESERVED),
        start = part.start,
        len = part.size,
    )
}

#[derive(Deserialize)]
struct SfdiskDump {
    partitiontable: SfdiskTable,
}

#[derive(Deserialize)]
struct SfdiskTable {
    label: String,
    #[serde(default)]
    partitions: Vec<SfdiskPartition>,
}

#[derive(Deserialize)]
struct SfdiskPartition {
    start: u64,
    size: u64,
    #[serde(rename = "type", default)]
    kind: String,
}

/// The one Linux partition of a GPT disk, from `sfdisk -J`'s output.
pub fn parse_sfdisk_json(json: &str) -> Result<Partition, String> {
    let d: SfdiskDump =
        serde_json::from_str(json).map_err(|e| format!("unreadable sfdisk -J output: {e}"))?;
    let t = d.partitiontable;
    if t.label != "gpt" {
        return Err(format!("the disk has a {} label, not the GPT ploop makes", t.label));
    }
    match t.partitions.as_slice() {
        [p] if p.kind.eq_ignore_ascii_case(LINUX_FS_TYPE) => Ok(Partition { start: p.start, size: p.size }),
        [p] => Err(format!("its partition is of type {}, not a Linux file system", p.kind)),
        ps => Err(format!("the disk has {} partitions, not the one ploop makes", ps.len())),
    }
}

/// The file system as ploop makes it on the partition device `dev`.
pub fn mkfs_commands(dev: &str) -> Vec<Cmd> {
    vec![
        // ploop runs `mkfs -t ext4`, which runs mkfs.ext4 with the same arguments.
        Cmd::new("mkfs.ext4").args([
            "-j".to_string(),
            format!("-b{FS_BLOCK}"),
            format!("-Elazy_itable_init=1,resize={}", MAX_FS_BYTES / FS_BLOCK),
            format!("-Jsize={JOURNAL_MIB}"),
            dev.to_string(),
        ]),
        Cmd::new("tune2fs").args(["-ouser_xattr,acl", "-c0", "-i0", "-eremount-ro", dev]),
    ]
}

/// Creates the balloon file at the root of the file system mounted at `root`.
pub fn create_balloon(root: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(root.join(BALLOON_FILE))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_ploop_makes() {
        // 1 GiB: from 1 MiB to 1 MiB before the end.
        assert_eq!(ploop_partition(2_097_152, 2048), Some(Partition { start: 2048, size: 2_093_056 }));
        // Not a multiple of the cluster (a hand-made descriptor): the end rounds down.
        assert_eq!(ploop_partition(2_097_152 + 1000, 2048), Some(Partition { start: 2048, size: 2_093_056 }));
        assert_eq!(ploop_partition(4096, 2048), None);
        assert_eq!(ploop_partition(1000, 2048), None);
    }

    #[test]
    fn sfdisk_writes_ploops_label() {
        let p = ploop_partition(2_097_152, 2048).unwrap();
        assert_eq!(
            sfdisk_script(2_097_152, p),
            "label: gpt\nfirst-lba: 34\nlast-lba: 2097118\n\
             start=2048, size=2093056, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"Linux filesystem\"\n"
        );
    }

    #[test]
    fn the_partition_is_read_back_from_sfdisk() {
        let one = r#"{"partitiontable": {"label": "gpt", "id": "X", "device": "disk", "unit": "sectors",
            "firstlba": 34, "lastlba": 2097118, "sectorsize": 512, "partitions": [
            {"node": "disk1", "start": 2048, "size": 2093056,
             "type": "0FC63DAF-8483-4772-8E79-3D69D8477DE4", "uuid": "U", "name": "Linux filesystem"}]}}"#;
        assert_eq!(parse_sfdisk_json(one), Ok(Partition { start: 2048, size: 2_093_056 }));
        let dos = r#"{"partitiontable": {"label": "dos", "partitions": []}}"#;
        assert!(parse_sfdisk_json(dos).unwrap_err().contains("dos label"));
        let none = r#"{"partitiontable": {"label": "gpt"}}"#;
        assert!(parse_sfdisk_json(none).unwrap_err().contains("0 partitions"));
        let swap =
            one.replace("0FC63DAF-8483-4772-8E79-3D69D8477DE4", "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F");
        assert!(parse_sfdisk_json(&swap).unwrap_err().contains("not a Linux file system"));
        assert!(parse_sfdisk_json("sfdisk: cannot open").unwrap_err().contains("unreadable"));
    }

    #[test]
    fn ext4_as_ploop_makes_it() {
        let lines: Vec<String> = mkfs_commands("/dev/loop3").iter().map(|c| c.to_string()).collect();
        assert_eq!(
            lines,
            [
                "mkfs.ext4 -j -b4096 -Elazy_itable_init=1,resize=13421772800 -Jsize=128 /dev/loop3",
                "tune2fs -ouser_xattr,acl -c0 -i0 -eremount-ro /dev/loop3",
            ]
        );
    }
}
