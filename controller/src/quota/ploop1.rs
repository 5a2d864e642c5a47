//! The ploop1 image format (`root.hds` of an *expanded* ploop image), as ploop's
//! `include/ploop1_image.h` defines it and `do_create_delta` (lib/ploop.c) writes a new one:
//! a 64-byte header (`struct ploop_pvd_header`, little-endian) followed by the block
//! allocation table (one 32-bit entry per cluster, 0 for a cluster never written), both
//! padded to whole clusters; data clusters follow. Version 2 (signature
//! `WithouFreSpacExt`, 64-bit size, BAT entries in clusters) is what ploop 7 and 9 make by
//! default. qemu's `parallels` driver reads and writes the same format.
//!
//! The header of a new image is ploop's `generate_pvd_header`: `m_Sectors` holds the cluster
//! size in sectors, `m_Heads`/`m_Cylinders` the geometry of `ConvertToCHS`, `m_Size` the
//! number of clusters, `m_FirstBlockOffset` where data starts, and `m_Flags` is `CIF_Empty`.
//! (`qemu-img create -f parallels` writes the same header except for the geometry, which it
//! computes as 16 heads of 32 sectors, and the flags, which it leaves 0.)

use std::io::Write;
use std::path::Path;

use super::{QuotaError, Result, io_err};

/// Signature of a version 2 image (`SIGNATURE_STRUCTURED_DISK_V2`).
pub const SIGNATURE_V2: &[u8; 16] = b"WithouFreSpacExt";
/// `m_Type` of every ploop1 image (`PRL_IMAGE_COMPRESSED`).
pub const TYPE_COMPRESSED: u32 = 2;
/// `m_DiskInUse` while ploop (or qemu) has the image open for writing.
pub const DISK_IN_USE: u32 = 0x746F_6E59;
/// `m_Flags` of a new image: no data written yet.
pub const CIF_EMPTY: u32 = 1;
/// Bytes of the header before the BAT.
pub const HEADER_LEN: usize = 64;
/// ploop's sector.
pub const SECTOR: u64 = 512;

/// `struct ploop_pvd_header`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub signature: [u8; 16],
    pub kind: u32,
    pub heads: u32,
    pub cylinders: u32,
    /// Cluster size in sectors (ploop's `m_Sectors`, qemu's `tracks`).
    pub cluster_sectors: u32,
    /// Clusters (BAT entries).
    pub clusters: u32,
    /// Virtual disk size in sectors.
    pub size_sectors: u64,
    pub in_use: u32,
    /// Where data begins, in sectors.
    pub first_block_offset: u32,
    pub flags: u32,
    pub format_extension_offset: u64,
}

impl Header {
    /// What ploop writes for a new empty image of `size` sectors with clusters of
    /// `cluster_sectors` (`generate_pvd_header` + `m_Flags = CIF_Empty`).
    pub fn new_empty(size: u64, cluster_sectors: u32) -> Header {
        let cs = u64::from(cluster_sectors.max(1));
        let size = size.div_ceil(cs) * cs;
        let geometry = super::ploop::chs(size);
        let clusters = u32::try_from(size / cs).unwrap_or(u32::MAX);
        let cluster_bytes = cs * SECTOR;
        let fill = Self::header_bytes(clusters).div_ceil(cluster_bytes) * cluster_bytes;
        Header {
            signature: *SIGNATURE_V2,
            kind: TYPE_COMPRESSED,
            heads: geometry.heads as u32,
            cylinders: geometry.cylinders as u32,
            cluster_sectors,
            clusters,
            size_sectors: size,
            in_use: 0,
            first_block_offset: u32::try_from(fill / SECTOR).unwrap_or(u32::MAX),
            flags: CIF_EMPTY,
            format_extension_offset: 0,
        }
    }

    /// Header and BAT in bytes, rounded up to a sector (ploop's `GetHeaderSize`).
    fn header_bytes(clusters: u32) -> u64 {
        (HEADER_LEN as u64 + u64::from(clusters) * 4).div_ceil(SECTOR) * SECTOR
    }

    /// Bytes before the first data cluster: header and BAT padded to whole clusters.
    pub fn metadata_bytes(&self) -> u64 {
        u64::from(self.first_block_offset) * SECTOR
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..16].copy_from_slice(&self.signature);
        let words = [self.kind, self.heads, self.cylinders, self.cluster_sectors, self.clusters];
        for (i, w) in words.iter().enumerate() {
            b[16 + 4 * i..20 + 4 * i].copy_from_slice(&w.to_le_bytes());
        }
        b[36..44].copy_from_slice(&self.size_sectors.to_le_bytes());
        b[44..48].copy_from_slice(&self.in_use.to_le_bytes());
        b[48..52].copy_from_slice(&self.first_block_offset.to_le_bytes());
        b[52..56].copy_from_slice(&self.flags.to_le_bytes());
        b[56..64].copy_from_slice(&self.format_extension_offset.to_le_bytes());
        b
    }

    /// Reads a version 2 header; `None` if `b` is not one.
    pub fn parse(b: &[u8]) -> Option<Header> {
        let b = b.get(..HEADER_LEN)?;
        if &b[..16] != SIGNATURE_V2 {
            return None;
        }
        let u32_at = |o: usize| b.get(o..o + 4).and_then(|s| s.try_into().ok()).map(u32::from_le_bytes);
        let u64_at = |o: usize| b.get(o..o + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes);
        let mut signature = [0u8; 16];
        signature.copy_from_slice(&b[..16]);
        Some(Header {
            signature,
            kind: u32_at(16)?,
            heads: u32_at(20)?,
            cylinders: u32_at(24)?,
            cluster_sectors: u32_at(28)?,
            clusters: u32_at(32)?,
            size_sectors: u64_at(36)?,
            in_use: u32_at(44)?,
            first_block_offset: u32_at(48)?,
            flags: u32_at(52)?,
            format_extension_offset: u64_at(56)?,
        })
    }

    /// Left open for writing by a program that did not close it (a crash).
    pub fn in_use(&self) -> bool {
        self.in_use == DISK_IN_USE
    }
}

/// Writes a new empty ploop1 image of `size` sectors at `path` (which must not exist), as
/// `ploop init` does before it attaches it: the header and a zeroed BAT, nothing else.
pub fn create_empty(path: &Path, size: u64, cluster_sectors: u32) -> Result<Header> {
    use std::os::unix::fs::OpenOptionsExt;
    let h = Header::new_empty(size, cluster_sectors);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path, "create image"))?;
    f.write_all(&h.to_bytes()).map_err(io_err(path, "write image header"))?;
    // The BAT is all zeros: a sparse tail is enough, and ploop reads holes as zeros.
    f.set_len(h.metadata_bytes()).map_err(io_err(path, "size image"))?;
    f.sync_all().map_err(io_err(path, "sync image"))?;
    Ok(h)
}

/// The header of the image at `path`.
pub fn read_header(path: &Path) -> Result<Header> {
    use std::io::Read;
    let mut b = [0u8; HEADER_LEN];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(io_err(path, "read image header"))?;
    Header::parse(&b).ok_or_else(|| QuotaError::Io {
        path: path.to_path_buf(),
        op: "read image header",
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a ploop1 version 2 image (no WithouFreSpacExt signature)",
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_image_header_is_ploops() {
        // 1 GiB: ConvertToCHS gives 16 heads of 63 sectors, 2080 cylinders.
        let h = Header::new_empty(2_097_152, 2048);
        assert_eq!((h.heads, h.cylinders, h.cluster_sectors, h.clusters), (16, 2080, 2048, 1024));
        assert_eq!((h.size_sectors, h.first_block_offset, h.flags, h.in_use), (2_097_152, 2048, 1, 0));
        let b = h.to_bytes();
        // The bytes qemu-img create -f parallels writes for 1 GiB, but for the geometry
        // (offset 24: qemu's 4096 cylinders of 16 x 32) and the flags (offset 52).
        let mut qemu = [0u8; 64];
        qemu[..16].copy_from_slice(b"WithouFreSpacExt");
        for (o, v) in [(16, 2u32), (20, 16), (24, 4096), (28, 2048), (32, 1024), (48, 2048)] {
            qemu[o..o + 4].copy_from_slice(&v.to_le_bytes());
        }
        qemu[36..44].copy_from_slice(&2_097_152u64.to_le_bytes());
        let differ: Vec<usize> = (0..64).filter(|i| b[*i] != qemu[*i]).collect();
        assert_eq!(differ, [24, 25, 52]);
        assert_eq!(Header::parse(&b), Some(h));
    }

    #[test]
    fn sizes_round_up_to_clusters_and_the_bat_grows_past_one_cluster() {
        // 100 MiB + 1 sector: 101 clusters.
        let h = Header::new_empty(204_801, 2048);
        assert_eq!((h.size_sectors, h.clusters), (206_848, 101));
        // 512 GiB: 524288 BAT entries (2 MiB) after the 64-byte header: 3 clusters.
        let h = Header::new_empty(1 << 30, 2048);
        assert_eq!((h.clusters, h.first_block_offset), (524_288, 3 * 2048));
    }

    #[test]
    fn an_empty_image_is_header_and_bat() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("root.hds");
        let h = create_empty(&p, 131_072, 2048).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 1 << 20);
        assert_eq!(read_header(&p).unwrap(), h);
        assert!(create_empty(&p, 131_072, 2048).is_err(), "an existing image is never overwritten");
        std::fs::write(&p, [0u8; 64]).unwrap();
        let e = read_header(&p).unwrap_err().to_string();
        assert!(e.contains("not a ploop1"), "{e}");
        assert!(Header::parse(b"short").is_none());
        let mut busy = Header::new_empty(131_072, 2048);
        busy.in_use = DISK_IN_USE;
        assert!(busy.in_use() && !h.in_use());
    }
}
