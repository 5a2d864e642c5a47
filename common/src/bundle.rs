//! The bundle: what an online copy pass would carry — the inventory, the scan and the data of
//! a source server — in one file on removable media, for sources the node cannot reach
//! (`p2c-agent export` on the source, `p2c import` on the node).
//!
//! ```text
//! bundle := MAGIC record*
//! record := kind:u8  len:u32le  payload[len]  check[16]       check = BLAKE3(kind, len, payload)[..16]
//! ```
//!
//! | # | kind | payload |
//! | --- | --- | --- |
//! | 1 | header | JSON [`BundleHeader`]: format, source name and root, facts, chunking parameters, excludes |
//! | 2 | inventory | JSON of [`crate::inventory::Inventory`] |
//! | 3 | scan | JSON of [`crate::scan::ScanResult`] |
//! | … | chunk | `hash[32] len:u32le codec:u8 data`: one distinct chunk, zstd or plain, stored once, before the first batch that refers to it |
//! | … | batch | `p2c.v1.BundleBatch` (prost): entries in walk order, the offset of each chunk reference's record, problems |
//! | last | trailer | JSON [`Trailer`]: counts and the BLAKE3 digest of every byte before it; nothing follows |
//!
//! The file only grows: an interrupted export leaves a prefix of records whose last one may be
//! torn; the export run again with the same `--out` keeps every record up to the last complete
//! batch and goes on from there. A reader checks each record's length and checksum as it goes,
//! each chunk against its BLAKE3 hash, each batch's chunk references against the chunk records,
//! and the trailer's counts and digest, so a short, torn or corrupted file is refused with the
//! record and byte offset where it goes wrong.
//!
//! This module knows the framing and the domain payloads; decoding batch payloads (prost) is
//! the business of the adapters (`p2c-proto`'s `bundle` module), handed in as a callback.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::chunking::{ChunkParams, MAX_CHUNK};
use crate::manifest::Hash32;
use crate::migration::MigrateOptions;

/// The first bytes of every bundle.
pub const MAGIC: [u8; 8] = *b"P2CBNDL\n";
/// The format this build writes and reads.
pub const FORMAT: u32 = 1;
/// Largest record payload accepted (a batch of entries; chunks are at most 1 MiB).
pub const MAX_RECORD: usize = 32 << 20;
/// Bytes of a record before its payload (kind, length) and after it (checksum).
const HEAD: usize = 5;
const CHECK: usize = 16;
/// Bytes of a chunk record's payload before its data.
const CHUNK_HEAD: usize = 32 + 4 + 1;

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Header = 1,
    Inventory = 2,
    Scan = 3,
    Chunk = 4,
    Batch = 5,
    Trailer = 6,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Header,
            2 => Kind::Inventory,
            3 => Kind::Scan,
            4 => Kind::Chunk,
            5 => Kind::Batch,
            6 => Kind::Trailer,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Header => "header",
            Kind::Inventory => "inventory",
            Kind::Scan => "scan",
            Kind::Chunk => "chunk",
            Kind::Batch => "batch",
            Kind::Trailer => "trailer",
        }
    }
}

/// One record as read, checked against its checksum.
#[derive(Debug)]
pub struct Record {
    pub kind: Kind,
    /// Byte offset of the record's first byte in the file.
    pub offset: u64,
    /// Empty for a chunk record read by [`Reader::skip_chunks`].
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path} is not a p2c bundle (it does not start with the bundle signature)")]
    NotABundle { path: String },
    #[error(
        "{path} is truncated: record {record} at byte {offset} is incomplete ({what}); the export was interrupted or the copy is short: run the export again with the same --out to complete it, or copy the file again"
    )]
    Truncated { path: String, record: u64, offset: u64, what: String },
    #[error(
        "{path} is corrupted: record {record} at byte {offset}: {what}; copy the bundle again from the source's media, or export again"
    )]
    Corrupt { path: String, record: u64, offset: u64, what: String },
    #[error(
        "{path} is corrupted at byte {offset}: {what}; copy the bundle again from the source's media, or export again"
    )]
    CorruptAt { path: String, offset: u64, what: String },
    #[error(
        "{path} is incomplete: it ends after record {records} (byte {offset}) without its trailer; the export did not finish: run it again with the same --out to complete it"
    )]
    Incomplete { path: String, records: u64, offset: u64 },
    #[error("{path}: {what}")]
    Invalid { path: String, what: String },
}

/// The first record: what the bundle is of and how it was made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleHeader {
    /// [`FORMAT`] of the writer.
    pub format: u32,
    /// The name the node knows the source by (the agent name an online move would have).
    pub name: String,
    /// The directory exported as the server's root.
    pub root: String,
    /// Where the inventory's facts came from: `live` or `tree`.
    pub facts: String,
    /// FastCDC bounds the data was cut with.
    pub chunking: ChunkParams,
    /// Paths left out (`--exclude`), as the operator gave them.
    pub excludes: Vec<String>,
    /// Version of the agent that wrote it.
    pub agent_version: String,
    /// When the export started (seconds since the epoch).
    pub created_unix: u64,
}

impl BundleHeader {
    /// Checks what a reader relies on: the format, a valid name, chunking parameters.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "bundle format {} (this p2c reads format {FORMAT}); use the same p2c release on both sides",
                self.format
            ));
        }
        crate::pki::validate_agent_name(&self.name).map_err(|e| format!("source name: {e}"))?;
        self.chunking.validate().map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// The last record: what the bundle holds, checked by every reader.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trailer {
    /// Records before the trailer, the header included.
    pub records: u64,
    pub batches: u64,
    /// Entries (a large file's segments count once each).
    pub entries: u64,
    /// Objects of the source (every entry but continued segments).
    pub objects: u64,
    /// Apparent size of the regular files.
    pub file_bytes: u64,
    /// Chunk records (distinct chunks).
    pub chunks: u64,
    /// Their plain size.
    pub chunk_bytes: u64,
    /// Their size as stored (compressed where it helped).
    pub stored_bytes: u64,
    /// Files that changed while being read (not carried).
    pub changed: u64,
    /// Entries not carried (sockets, unreadable files).
    pub skipped: u64,
    /// BLAKE3 of every byte of the file before the trailer record, in hex.
    pub digest: String,
    pub finished_unix: u64,
}

/// What `p2c import` asks the daemon for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImportRequest {
    /// Absolute path of the bundle, readable by the controller.
    pub bundle: String,
    /// As for a migration; `agent` is taken from the bundle.
    pub options: MigrateOptions,
}

/// How a chunk's data is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Plain = 0,
    Zstd = 1,
}

/// A chunk record's payload.
#[derive(Debug)]
pub struct ChunkRecord<'a> {
    pub hash: Hash32,
    /// Plain length.
    pub len: u32,
    pub codec: Codec,
    pub data: &'a [u8],
}

impl<'a> ChunkRecord<'a> {
    pub fn encode(hash: &Hash32, len: u32, codec: Codec, data: &[u8]) -> Vec<u8> {
        let mut p = Vec::with_capacity(CHUNK_HEAD + data.len());
        p.extend_from_slice(&hash.0);
        p.extend_from_slice(&len.to_le_bytes());
        p.push(codec as u8);
        p.extend_from_slice(data);
        p
    }

    pub fn decode(payload: &'a [u8]) -> Result<ChunkRecord<'a>, String> {
        if payload.len() < CHUNK_HEAD {
            return Err("chunk record shorter than its header".into());
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&payload[..32]);
        let len = u32::from_le_bytes([payload[32], payload[33], payload[34], payload[35]]);
        let codec = match payload[36] {
            0 => Codec::Plain,
            1 => Codec::Zstd,
            c => return Err(format!("chunk record with unknown codec {c}")),
        };
        if len == 0 || len > MAX_CHUNK {
            return Err(format!("chunk length {len} out of range"));
        }
        Ok(ChunkRecord { hash: Hash32(hash), len, codec, data: &payload[CHUNK_HEAD..] })
    }

    /// The plain data, decompressed into no more than the announced length.
    pub fn plain(&self, dec: &mut zstd::bulk::Decompressor<'_>) -> Result<Vec<u8>, String> {
        match self.codec {
            Codec::Plain => Ok(self.data.to_vec()),
            Codec::Zstd => dec.decompress(self.data, self.len as usize).map_err(|e| {
                format!("chunk {:?} does not decompress within its {} bytes: {e}", self.hash, self.len)
            }),
        }
    }

    /// Checks the data against the chunk's length and BLAKE3 hash.
    pub fn check(&self, dec: &mut zstd::bulk::Decompressor<'_>) -> Result<(), String> {
        let plain = self.plain(dec)?;
        if plain.len() != self.len as usize {
            return Err(format!("chunk {:?} holds {} bytes, not {}", self.hash, plain.len(), self.len));
        }
        if Hash32::of(&plain) != self.hash {
            return Err(format!("chunk {:?} does not match its BLAKE3 hash", self.hash));
        }
        Ok(())
    }
}

fn check_of(kind: u8, len: u32, payload: &[u8]) -> [u8; CHECK] {
    let mut h = blake3::Hasher::new();
    h.update(&[kind]);
    h.update(&len.to_le_bytes());
    h.update(payload);
    let mut out = [0u8; CHECK];
    out.copy_from_slice(&h.finalize().as_bytes()[..CHECK]);
    out
}

fn io_err(path: &str) -> impl Fn(io::Error) -> BundleError + '_ {
    move |source| BundleError::Io { path: path.to_string(), source }
}

/// Appends records to a bundle.
pub struct Writer {
    file: BufWriter<File>,
    path: String,
    offset: u64,
    records: u64,
    digest: blake3::Hasher,
}

impl Writer {
    /// Starts a new bundle at `path` (replacing any file there).
    pub fn create(path: &Path) -> Result<Writer, BundleError> {
        let shown = path.display().to_string();
        let file = File::create(path).map_err(io_err(&shown))?;
        let mut w = Writer {
            file: BufWriter::with_capacity(1 << 20, file),
            path: shown,
            offset: 0,
            records: 0,
            digest: blake3::Hasher::new(),
        };
        w.put(&MAGIC)?;
        Ok(w)
    }

    /// Continues the bundle at `path` after its first `keep` bytes (whatever follows is cut),
    /// `records` records and the digest of those bytes having been read by a [`Reader`].
    pub fn resume(
        path: &Path,
        keep: u64,
        records: u64,
        digest: blake3::Hasher,
    ) -> Result<Writer, BundleError> {
        let shown = path.display().to_string();
        let mut file = std::fs::OpenOptions::new().write(true).open(path).map_err(io_err(&shown))?;
        file.set_len(keep).map_err(io_err(&shown))?;
        file.seek(SeekFrom::Start(keep)).map_err(io_err(&shown))?;
        Ok(Writer {
            file: BufWriter::with_capacity(1 << 20, file),
            path: shown,
            offset: keep,
            records,
            digest,
        })
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), BundleError> {
        self.file.write_all(bytes).map_err(io_err(&self.path))?;
        self.digest.update(bytes);
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Appends a record; returns its offset.
    pub fn append(&mut self, kind: Kind, payload: &[u8]) -> Result<u64, BundleError> {
        if payload.len() > MAX_RECORD {
            return Err(BundleError::Invalid {
                path: self.path.clone(),
                what: format!(
                    "a {} record of {} bytes is larger than {MAX_RECORD}",
                    kind.name(),
                    payload.len()
                ),
            });
        }
        let at = self.offset;
        let len = payload.len() as u32;
        let mut head = [0u8; HEAD];
        head[0] = kind as u8;
        head[1..].copy_from_slice(&len.to_le_bytes());
        self.put(&head)?;
        self.put(payload)?;
        self.put(&check_of(kind as u8, len, payload))?;
        self.records += 1;
        Ok(at)
    }

    /// Bytes written so far (the offset of the next record).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    /// Makes everything written so far durable.
    pub fn sync(&mut self) -> Result<(), BundleError> {
        self.file.flush().map_err(io_err(&self.path))?;
        self.file.get_ref().sync_data().map_err(io_err(&self.path))
    }

    /// Appends the trailer (its `records` and `digest` filled in here) and syncs the file.
    pub fn finish(mut self, mut trailer: Trailer) -> Result<Trailer, BundleError> {
        trailer.records = self.records;
        trailer.digest = self.digest.finalize().to_hex().to_string();
        let json = serde_json::to_vec(&trailer)
            .map_err(|e| BundleError::Invalid { path: self.path.clone(), what: e.to_string() })?;
        self.append(Kind::Trailer, &json)?;
        self.sync()?;
        Ok(trailer)
    }
}

/// Reads a bundle's records in order, checking each one.
pub struct Reader {
    r: BufReader<File>,
    path: String,
    offset: u64,
    records: u64,
    digest: blake3::Hasher,
    skip_chunks: bool,
}

impl Reader {
    /// Opens `path` and checks the signature.
    pub fn open(path: &Path) -> Result<Reader, BundleError> {
        let shown = path.display().to_string();
        let file = File::open(path).map_err(io_err(&shown))?;
        let mut r = BufReader::with_capacity(1 << 20, file);
        let mut magic = [0u8; 8];
        let n = read_full(&mut r, &mut magic).map_err(io_err(&shown))?;
        if n < MAGIC.len() || magic != MAGIC {
            return Err(BundleError::NotABundle { path: shown });
        }
        let mut digest = blake3::Hasher::new();
        digest.update(&MAGIC);
        Ok(Reader { r, path: shown, offset: MAGIC.len() as u64, records: 0, digest, skip_chunks: false })
    }

    /// Chunk records are passed over unread from now on (their payload is empty, their
    /// checksum not checked, the digest not kept): for a reader that only wants the batches
    /// and reads chunks where they are needed.
    pub fn skip_chunks(&mut self) {
        self.skip_chunks = true;
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Byte offset of the next record.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Records read so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The digest of every byte read so far (trailer excluded), to continue writing.
    pub fn digest(&self) -> blake3::Hasher {
        self.digest.clone()
    }

    pub fn corrupt(&self, offset: u64, what: impl Into<String>) -> BundleError {
        BundleError::Corrupt { path: self.path.clone(), record: self.records + 1, offset, what: what.into() }
    }

    /// The next record; `None` at the end of the file on a record boundary.
    pub fn next_record(&mut self) -> Result<Option<Record>, BundleError> {
        let at = self.offset;
        let mut head = [0u8; HEAD];
        let n = read_full(&mut self.r, &mut head).map_err(io_err(&self.path))?;
        if n == 0 {
            return Ok(None);
        }
        let truncated = |what: String| BundleError::Truncated {
            path: self.path.clone(),
            record: self.records + 1,
            offset: at,
            what,
        };
        if n < HEAD {
            return Err(truncated(format!("{n} of its {HEAD} header bytes")));
        }
        let kind = Kind::from_u8(head[0])
            .ok_or_else(|| self.corrupt(at, format!("unknown record kind {}", head[0])))?;
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        if len as usize > MAX_RECORD {
            return Err(
                self.corrupt(at, format!("{} record length {len} is larger than {MAX_RECORD}", kind.name()))
            );
        }
        if kind == Kind::Chunk && self.skip_chunks {
            self.r.seek_relative(len as i64 + CHECK as i64).map_err(io_err(&self.path))?;
            self.offset = at + (HEAD + len as usize + CHECK) as u64;
            self.records += 1;
            return Ok(Some(Record { kind, offset: at, payload: Vec::new() }));
        }
        let mut payload = vec![0u8; len as usize];
        let got = read_full(&mut self.r, &mut payload).map_err(io_err(&self.path))?;
        if got < payload.len() {
            return Err(truncated(format!("{got} of its {len} payload bytes")));
        }
        let mut check = [0u8; CHECK];
        let got = read_full(&mut self.r, &mut check).map_err(io_err(&self.path))?;
        if got < CHECK {
            return Err(truncated(format!("{got} of its {CHECK} checksum bytes")));
        }
        if check != check_of(head[0], len, &payload) {
            return Err(self.corrupt(at, format!("the {} record does not match its checksum", kind.name())));
        }
        if kind != Kind::Trailer {
            self.digest.update(&head);
            self.digest.update(&payload);
            self.digest.update(&check);
        }
        self.offset = at + (HEAD + payload.len() + CHECK) as u64;
        self.records += 1;
        Ok(Some(Record { kind, offset: at, payload }))
    }
}

/// Reads until `buf` is full or the end of the input; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads the record at `offset` (a chunk a batch points to), checking its checksum.
pub fn read_record_at(file: &File, path: &str, offset: u64) -> Result<Record, BundleError> {
    let bad = |what: String| BundleError::CorruptAt { path: path.to_string(), offset, what };
    let mut head = [0u8; HEAD];
    file.read_exact_at(&mut head, offset).map_err(|e| bad(format!("cannot read a record there: {e}")))?;
    let kind = Kind::from_u8(head[0]).ok_or_else(|| bad(format!("no record there (kind {})", head[0])))?;
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    if len as usize > MAX_RECORD {
        return Err(bad(format!("record length {len} is larger than {MAX_RECORD}")));
    }
    let mut rest = vec![0u8; len as usize + CHECK];
    file.read_exact_at(&mut rest, offset + HEAD as u64)
        .map_err(|e| bad(format!("cannot read the {} record there: {e}", kind.name())))?;
    let check = rest.split_off(len as usize);
    if check[..] != check_of(head[0], len, &rest) {
        return Err(bad(format!("the {} record does not match its checksum", kind.name())));
    }
    Ok(Record { kind, offset, payload: rest })
}

/// Reads the header of the bundle at `path` (the first record only).
pub fn read_header(path: &Path) -> Result<BundleHeader, BundleError> {
    let mut r = Reader::open(path)?;
    let rec = r.next_record()?.ok_or_else(|| BundleError::Incomplete {
        path: r.path.clone(),
        records: 0,
        offset: r.offset,
    })?;
    parse_header(&r, &rec)
}

fn parse_header(r: &Reader, rec: &Record) -> Result<BundleHeader, BundleError> {
    if rec.kind != Kind::Header {
        return Err(r.corrupt(
            rec.offset,
            format!("the first record is a {} record, not the header", rec.kind.name()),
        ));
    }
    let h: BundleHeader = serde_json::from_slice(&rec.payload)
        .map_err(|e| r.corrupt(rec.offset, format!("unreadable header: {e}")))?;
    h.validate().map_err(|what| BundleError::Invalid { path: r.path.clone(), what })?;
    Ok(h)
}

/// What a batch record says, as far as the framing needs it: read from its payload by the
/// caller of [`verify`] (the framing does not decode batches).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchInfo {
    pub seq: u64,
    pub entries: u64,
    pub objects: u64,
    pub file_bytes: u64,
    pub changed: u64,
    pub skipped: u64,
    /// Each chunk reference's hash and the offset of the record it points to.
    pub refs: Vec<(Hash32, u64)>,
}

/// A bundle that passed [`verify`].
#[derive(Clone, Debug)]
pub struct Verified {
    pub header: BundleHeader,
    /// The inventory and scan records' payloads (JSON), for the caller to parse.
    pub inventory: Vec<u8>,
    pub scan: Vec<u8>,
    pub trailer: Trailer,
    /// Size of the file.
    pub size: u64,
}

/// Reads the whole bundle and checks everything the framing can: the signature, the order
/// of the records, every record's checksum, every chunk against its hash, every batch's
/// chunk references (through `batch`, which decodes a batch payload), the sequence of the
/// batches, the trailer's counts and digest, and that nothing follows it. `progress` gets the
/// bytes read so far.
///
/// Memory: 40 bytes per chunk record (offset and hash), to check the references.
pub fn verify(
    path: &Path,
    batch: &mut dyn FnMut(&[u8]) -> Result<BatchInfo, String>,
    progress: &mut dyn FnMut(u64),
) -> Result<Verified, BundleError> {
    let mut r = Reader::open(path)?;
    let incomplete =
        |r: &Reader| BundleError::Incomplete { path: r.path.clone(), records: r.records, offset: r.offset };
    let next =
        |r: &mut Reader| -> Result<Record, BundleError> { r.next_record()?.ok_or_else(|| incomplete(r)) };
    let rec = next(&mut r)?;
    let header = parse_header(&r, &rec)?;
    let payload_of = |r: &mut Reader, kind: Kind| -> Result<Vec<u8>, BundleError> {
        let rec = next(r)?;
        if rec.kind != kind {
            return Err(BundleError::Corrupt {
                path: r.path.clone(),
                record: r.records,
                offset: rec.offset,
                what: format!("a {} record where the {} record belongs", rec.kind.name(), kind.name()),
            });
        }
        Ok(rec.payload)
    };
    let inventory = payload_of(&mut r, Kind::Inventory)?;
    let scan = payload_of(&mut r, Kind::Scan)?;
    let mut dec = zstd::bulk::Decompressor::new()
        .map_err(|e| BundleError::Invalid { path: r.path.clone(), what: format!("zstd: {e}") })?;
    let mut chunks: Vec<(u64, Hash32)> = Vec::new();
    let mut sum = Trailer::default();
    loop {
        let rec = next(&mut r)?;
        let here = |r: &Reader, what: String| BundleError::Corrupt {
            path: r.path.clone(),
            record: r.records,
            offset: rec.offset,
            what,
        };
        match rec.kind {
            Kind::Chunk => {
                let c = ChunkRecord::decode(&rec.payload).map_err(|w| here(&r, w))?;
                c.check(&mut dec).map_err(|w| here(&r, w))?;
                chunks.push((rec.offset, c.hash));
                sum.chunks += 1;
                sum.chunk_bytes += u64::from(c.len);
                sum.stored_bytes += c.data.len() as u64;
            }
            Kind::Batch => {
                let b = batch(&rec.payload).map_err(|w| here(&r, format!("batch: {w}")))?;
                if b.seq != sum.batches {
                    return Err(here(
                        &r,
                        format!("batch {} out of sequence (expected {})", b.seq, sum.batches),
                    ));
                }
                for (i, (hash, at)) in b.refs.iter().enumerate() {
                    match chunks.binary_search_by_key(at, |(o, _)| *o) {
                        Ok(k) if chunks[k].1 == *hash => {}
                        Ok(_) => {
                            return Err(here(
                                &r,
                                format!("chunk reference {i} points to another chunk at byte {at}"),
                            ));
                        }
                        Err(_) => {
                            return Err(here(
                                &r,
                                format!(
                                    "chunk reference {i} points to byte {at}, where no earlier chunk record is"
                                ),
                            ));
                        }
                    }
                }
                sum.batches += 1;
                sum.entries += b.entries;
                sum.objects += b.objects;
                sum.file_bytes += b.file_bytes;
                sum.changed += b.changed;
                sum.skipped += b.skipped;
            }
            Kind::Trailer => {
                let t: Trailer = serde_json::from_slice(&rec.payload)
                    .map_err(|e| here(&r, format!("unreadable trailer: {e}")))?;
                let digest = r.digest().finalize().to_hex().to_string();
                let records = r.records - 1;
                let mismatch = [
                    ("records", t.records, records),
                    ("batches", t.batches, sum.batches),
                    ("entries", t.entries, sum.entries),
                    ("objects", t.objects, sum.objects),
                    ("file bytes", t.file_bytes, sum.file_bytes),
                    ("chunks", t.chunks, sum.chunks),
                    ("chunk bytes", t.chunk_bytes, sum.chunk_bytes),
                    ("stored bytes", t.stored_bytes, sum.stored_bytes),
                    ("changed files", t.changed, sum.changed),
                    ("skipped entries", t.skipped, sum.skipped),
                ]
                .into_iter()
                .find(|(_, said, found)| said != found);
                if let Some((what, said, found)) = mismatch {
                    return Err(here(
                        &r,
                        format!("the trailer counts {said} {what}, the bundle holds {found}"),
                    ));
                }
                if t.digest != digest {
                    return Err(here(&r, "the trailer's digest does not match the bundle's content".into()));
                }
                if r.next_record_raw_eof()? {
                    progress(r.offset);
                    return Ok(Verified { header, inventory, scan, trailer: t, size: r.offset });
                }
                return Err(BundleError::Corrupt {
                    path: r.path.clone(),
                    record: r.records + 1,
                    offset: r.offset,
                    what: "data after the trailer".into(),
                });
            }
            Kind::Header | Kind::Inventory | Kind::Scan => {
                return Err(here(&r, format!("a second {} record", rec.kind.name())));
            }
        }
        progress(r.offset);
    }
}

impl Reader {
    /// True when nothing follows.
    fn next_record_raw_eof(&mut self) -> Result<bool, BundleError> {
        let mut b = [0u8; 1];
        Ok(read_full(&mut self.r, &mut b).map_err(io_err(&self.path))? == 0)
    }
}

#[cfg(test)]
mod tests;
