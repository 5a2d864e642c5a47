//! Searching file contents for MAC addresses in any common spelling, in bounded memory.
//!
//! Spellings: `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff` (one separator throughout),
//! `aabbccddeeff` and Cisco's `aabb.ccdd.eeff`, each in any case. Files are read in blocks;
//! the last [`OVERLAP`] bytes of a block are searched again with the next, so a spelling
//! that straddles two blocks is still found.

use std::io::{self, Read};

/// The longest spelling (`aa:bb:cc:dd:ee:ff`).
const MAX_SPELLING: usize = 17;
/// Bytes carried from one block to the next.
pub(super) const OVERLAP: usize = MAX_SPELLING - 1;
/// Bytes read at a time.
const BLOCK: usize = 64 * 1024;
/// Distinct (MAC, spelling) pairs reported per file.
const MAX_HITS_PER_FILE: usize = 16;

/// Finds a fixed set of MAC addresses.
pub(super) struct MacMatcher {
    macs: Vec<[u8; 6]>,
    /// Bytes that can start a spelling of one of the MACs.
    first: [bool; 256],
}

/// What searching one file found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct FileSearch {
    /// (index of the MAC, spelling as found), distinct.
    pub hits: Vec<(usize, Vec<u8>)>,
    pub bytes_read: u64,
    /// The file looked binary and was too large to search.
    pub binary: bool,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn byte_at(buf: &[u8], i: usize) -> Option<u8> {
    Some(hex(*buf.get(i)?)? << 4 | hex(*buf.get(i + 1)?)?)
}

/// `aa:bb:cc:dd:ee:ff` or `aa-bb-cc-dd-ee-ff` at `i`.
fn separated(buf: &[u8], i: usize) -> Option<[u8; 6]> {
    let sep = *buf.get(i + 2)?;
    if sep != b':' && sep != b'-' {
        return None;
    }
    let mut mac = [0u8; 6];
    for (k, m) in mac.iter_mut().enumerate() {
        *m = byte_at(buf, i + 3 * k)?;
        if k < 5 && *buf.get(i + 3 * k + 2)? != sep {
            return None;
        }
    }
    Some(mac)
}

/// `aabb.ccdd.eeff` at `i`.
fn dotted(buf: &[u8], i: usize) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    for g in 0..3 {
        let at = i + 5 * g;
        mac[2 * g] = byte_at(buf, at)?;
        mac[2 * g + 1] = byte_at(buf, at + 2)?;
        if g < 2 && *buf.get(at + 4)? != b'.' {
            return None;
        }
    }
    Some(mac)
}

/// `aabbccddeeff` at `i`.
fn plain(buf: &[u8], i: usize) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    for (k, m) in mac.iter_mut().enumerate() {
        *m = byte_at(buf, i + 2 * k)?;
    }
    Some(mac)
}

impl MacMatcher {
    pub fn new(macs: Vec<[u8; 6]>) -> Self {
        let mut first = [false; 256];
        for m in &macs {
            let digit = b"0123456789abcdef"[usize::from(m[0] >> 4)];
            first[usize::from(digit)] = true;
            first[usize::from(digit.to_ascii_uppercase())] = true;
        }
        MacMatcher { macs, first }
    }

    pub fn is_empty(&self) -> bool {
        self.macs.is_empty()
    }

    /// Calls `hit(index of the MAC, spelling)` for every spelling of a MAC in `buf`.
    pub fn find(&self, buf: &[u8], mut hit: impl FnMut(usize, &[u8])) {
        for i in 0..buf.len() {
            if !self.first[usize::from(buf[i])] {
                continue;
            }
            for (found, len) in [(separated(buf, i), 17), (dotted(buf, i), 14), (plain(buf, i), 12)] {
                let idx = found.and_then(|mac| self.macs.iter().position(|m| *m == mac));
                if let Some(idx) = idx {
                    hit(idx, &buf[i..i + len]);
                }
            }
        }
    }

    /// Searches a stream block by block. Files larger than `binary_limit` whose first block
    /// holds a NUL byte are not searched (`binary` is set).
    pub fn search(&self, mut r: impl Read, size: u64, binary_limit: u64) -> io::Result<FileSearch> {
        let mut out = FileSearch::default();
        let mut buf = vec![0u8; OVERLAP + BLOCK];
        let mut carry = 0;
        let mut first = true;
        loop {
            let n = match r.read(&mut buf[carry..]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            out.bytes_read += n as u64;
            let len = carry + n;
            if first {
                first = false;
                if size > binary_limit && buf[..len].contains(&0) {
                    out.binary = true;
                    return Ok(out);
                }
            }
            self.find(&buf[..len], |idx, spelling| {
                if out.hits.len() < MAX_HITS_PER_FILE
                    && !out.hits.iter().any(|(i, s)| *i == idx && s == spelling)
                {
                    out.hits.push((idx, spelling.to_vec()));
                }
            });
            carry = OVERLAP.min(len);
            buf.copy_within(len - carry..len, 0);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];

    fn spellings(text: &[u8]) -> Vec<String> {
        let m = MacMatcher::new(vec![MAC]);
        let mut got = Vec::new();
        m.find(text, |_, s| got.push(String::from_utf8_lossy(s).into_owned()));
        got
    }

    #[test]
    fn finds_every_spelling_in_any_case() {
        let text = b"a=52:54:00:ab:cd:ef b=52-54-00-AB-CD-EF c=525400ABcdef d=5254.00ab.CDEF";
        assert_eq!(
            spellings(text),
            ["52:54:00:ab:cd:ef", "52-54-00-AB-CD-EF", "525400ABcdef", "5254.00ab.CDEF"]
        );
    }

    #[test]
    fn ignores_near_misses() {
        for text in [
            &b"52:54:00:ab:cd:ee"[..],
            b"52:54-00:ab:cd:ef",
            b"52:54:00:ab:cd",
            b"5254.00abcdef",
            b"525400abcde",
            b"",
        ] {
            assert!(spellings(text).is_empty(), "{text:?}");
        }
    }

    /// A reader that hands out at most `step` bytes per call.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(self.1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn finds_spellings_across_block_boundaries() {
        let m = MacMatcher::new(vec![[0; 6], MAC]);
        for cut in [BLOCK - 17, BLOCK - 9, BLOCK - 1, BLOCK, BLOCK + 3] {
            let mut data = vec![b'x'; cut];
            data.extend_from_slice(b"52-54-00-ab-cd-ef");
            data.extend(std::iter::repeat_n(b'y', 100));
            let r = m.search(&data[..], data.len() as u64, 1 << 20).unwrap();
            assert_eq!(r.hits, [(1, b"52-54-00-ab-cd-ef".to_vec())], "cut {cut}");
            assert_eq!(r.bytes_read, data.len() as u64);
            let r = m.search(Trickle(&data, 7), data.len() as u64, 1 << 20).unwrap();
            assert_eq!(r.hits.len(), 1, "trickle cut {cut}");
        }
    }

    #[test]
    fn reports_each_spelling_once_and_skips_big_binaries() {
        let m = MacMatcher::new(vec![MAC]);
        let data = b"525400abcdef 525400abcdef 525400ABCDEF".repeat(3);
        let r = m.search(&data[..], data.len() as u64, 1 << 20).unwrap();
        assert_eq!(r.hits.len(), 2);
        let mut bin = vec![0u8; 100];
        bin.extend_from_slice(b"525400abcdef");
        let r = m.search(&bin[..], 5 << 20, 4 << 20).unwrap();
        assert!(r.binary && r.hits.is_empty());
        let r = m.search(&bin[..], bin.len() as u64, 4 << 20).unwrap();
        assert_eq!(r.hits.len(), 1);
    }
}
