//! What a pass counts: entries, data, what it wrote, against the container's quota.

use p2c_common::manifest::{Entry, EntryData, Problem};
use p2c_common::migration::PassSummary;
use p2c_common::paths::RelPath;

use super::{PassJob, ReceiveError};

/// Files written by a pass listed for verification; past this, verification checks all.
const MAX_WRITTEN_LIST: usize = 100_000;

pub(crate) struct Tally {
    pub summary: PassSummary,
    /// File data the tree holds after the pass so far (listed and carried).
    total_bytes: u64,
    /// Entries the tree holds after the pass so far; hard links are no inodes of their own.
    total_inodes: u64,
    byte_limit: Option<u64>,
    inode_limit: Option<u64>,
    /// Regular files this pass wrote (`None` when too many to list).
    written: Option<Vec<RelPath>>,
    written_max: usize,
    /// Files the pass could not write as listed (the peer could not read a chunk).
    pub problems: Vec<Problem>,
}

impl Tally {
    pub fn new(job: &PassJob) -> Self {
        Tally {
            summary: PassSummary::default(),
            total_bytes: 0,
            total_inodes: 0,
            byte_limit: job.byte_limit,
            inode_limit: job.inode_limit,
            written: Some(Vec::new()),
            written_max: MAX_WRITTEN_LIST,
            problems: Vec::new(),
        }
    }

    /// Counts an entry (or one segment of a large file) into the pass; refused past the
    /// quota's limits.
    pub fn count(&mut self, e: &Entry) -> Result<(), ReceiveError> {
        if e.segment == 0 {
            self.summary.entries += 1;
            if !matches!(e.data, EntryData::HardLink { .. }) {
                self.total_inodes += 1;
            }
        }
        let bytes = e.data_bytes();
        self.total_bytes += bytes;
        self.summary.data_bytes += bytes;
        self.check_limits()
    }

    fn check_limits(&self) -> Result<(), ReceiveError> {
        if let Some(l) = self.byte_limit
            && self.total_bytes > l
        {
            return Err(ReceiveError::Quota {
                what: format!("{} of file data > DISKSPACE hard limit {}", self.total_bytes, l),
            });
        }
        if let Some(l) = self.inode_limit
            && self.total_inodes > l
        {
            return Err(ReceiveError::Quota {
                what: format!("{} entries > DISKINODES hard limit {}", self.total_inodes, l),
            });
        }
        Ok(())
    }

    /// A regular file the pass wrote, for verification to re-read.
    pub fn wrote_file(&mut self, p: &RelPath) {
        if let Some(w) = self.written.as_mut() {
            if w.len() < self.written_max {
                w.push(p.clone());
            } else {
                self.written = None;
            }
        }
    }

    /// What the pass counted and wrote, whatever happens next.
    pub fn take(&mut self) -> (PassSummary, Option<Vec<RelPath>>) {
        (std::mem::take(&mut self.summary), self.written.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receive::testing::{dir, file, hardlink, job, rel};
    use p2c_common::manifest::{ChunkRef, Hash32};

    fn chunks(n: u32) -> Vec<ChunkRef> {
        vec![ChunkRef { hash: Hash32([1; 32]), offset: 0, len: n }]
    }

    #[test]
    fn limits_count_data_and_inodes_but_not_hard_links() {
        let mut j = job(1);
        j.byte_limit = Some(100);
        j.inode_limit = Some(2);
        let mut t = Tally::new(&j);
        t.count(&dir("")).unwrap();
        t.count(&file("a", &chunks(60))).unwrap();
        t.count(&hardlink("b", "a")).unwrap();
        assert_eq!((t.summary.entries, t.summary.data_bytes), (3, 60));
        let e = t.count(&file("c", &chunks(10))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the container would exceed its disk quota: 3 entries > DISKINODES hard limit 2; \
             raise --diskspace/--diskinodes or exclude data (what was copied is kept)"
        );
        let mut t = Tally::new(&j);
        t.count(&file("a", &chunks(60))).unwrap();
        // A later segment is data, not another entry.
        let mut seg = file("a", &chunks(50));
        seg.segment = 1;
        let e = t.count(&seg).unwrap_err();
        assert!(e.to_string().contains("110 of file data > DISKSPACE hard limit 100"), "{e}");
        assert_eq!(t.summary.entries, 1);
    }

    #[test]
    fn the_written_list_gives_up_past_its_limit() {
        let mut t = Tally::new(&job(1));
        t.written_max = 2;
        t.wrote_file(&rel("a"));
        t.wrote_file(&rel("b"));
        assert_eq!(t.written.as_deref(), Some(&[rel("a"), rel("b")][..]));
        t.wrote_file(&rel("c"));
        assert_eq!(t.take().1, None);
    }
}
