//! Reading a source file for chunking: opening it without following links or touching its
//! atime, and the units it is chunked in — its data extents (holes skipped), cut at every
//! multiple of [`REGION`]. Online passes and bundle exports chunk the same way, so their
//! chunks dedup against each other.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use rustix::fs::{OFlags, Stat};

/// Chunking restarts at every multiple of this offset, so a big file's regions can be
/// chunked by several threads with the same result as one.
pub const REGION: u64 = 32 << 20;

/// Opens a regular file of the source for reading: never through a symlink, and without
/// updating its atime where the kernel allows it (it refuses O_NOATIME on files the caller
/// does not own unless it is root).
pub fn open_source(path: &Path) -> std::io::Result<File> {
    let open =
        |flags: OFlags| std::fs::OpenOptions::new().read(true).custom_flags(flags.bits() as i32).open(path);
    open(OFlags::NOFOLLOW | OFlags::NOATIME).or_else(|_| open(OFlags::NOFOLLOW))
}

/// The (offset, length) units `file` is chunked in: its data extents — found with
/// SEEK_DATA/SEEK_HOLE only when its allocated blocks say it has holes — cut at every
/// multiple of [`REGION`].
pub fn chunk_regions(file: &File, st: &Stat, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut extents = Vec::new();
    if (st.st_blocks as u64) * 512 < size {
        let mut off = 0u64;
        while off < size {
            let start = match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(off)) {
                Ok(s) => s,
                Err(rustix::io::Errno::NXIO) => break,
                Err(e) => return Err(e.into()),
            };
            let end = rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(start))?.min(size);
            if end > start {
                extents.push((start, end - start));
            }
            off = end;
        }
    } else if size > 0 {
        extents.push((0, size));
    }
    let mut regions = Vec::new();
    for (start, len) in extents {
        let end = start + len;
        let mut at = start;
        while at < end {
            let next = ((at / REGION) + 1) * REGION;
            regions.push((at, next.min(end) - at));
            at = next.min(end);
        }
    }
    Ok(regions)
}

/// `Read` over a file from an offset, with positioned reads (no shared file position).
pub struct OffsetReader<'a> {
    pub file: &'a File,
    pub pos: u64,
}

impl Read for OffsetReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_skip_holes_and_cut_at_region_boundaries() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let f = File::create(&p).unwrap();
        let size = REGION * 3;
        f.set_len(size).unwrap();
        f.write_all_at(&vec![1u8; 1 << 20], REGION - (1 << 19)).unwrap();
        f.write_all_at(&vec![2u8; 4096], size - 4096).unwrap();
        f.sync_all().unwrap();
        let file = open_source(&p).unwrap();
        let st = rustix::fs::fstat(&file).unwrap();
        let r = chunk_regions(&file, &st, size).unwrap();
        assert_eq!(r, vec![(REGION - (1 << 19), 1 << 19), (REGION, 1 << 19), (size - 4096, 4096)]);
    }
}
