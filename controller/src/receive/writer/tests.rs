//! The writer over the in-memory tree and store: merge, accounting and reassembly without
//! a file system.

use super::*;
use crate::receive::testing::{
    MemBase, MemFs, MemManifest, MemStore, chunks_of, dir, file, hardlink, job, record, rel, symlink,
};
use crate::receive::{Batch, Changes, ChunkBody, Listing, planner, verifier};
use std::sync::Arc;

/// The peer's side of a pass: the bytes of every chunk it may be asked for.
#[derive(Default)]
struct Peer {
    data: HashMap<Hash32, Vec<u8>>,
    /// Chunks it cannot read: what it answers instead.
    unreadable: HashMap<Hash32, String>,
    /// (seq, index) the writer will ask for late, sent ahead (the writer takes them when it
    /// asks).
    late: Vec<(u64, u32)>,
}

impl Peer {
    fn add(&mut self, f: &[u8], chunk: usize) -> Vec<ChunkRef> {
        let cs = chunks_of(f, chunk);
        for (c, d) in cs.iter().zip(f.chunks(chunk)) {
            self.data.insert(c.hash, d.to_vec());
        }
        cs
    }
}

struct Ran {
    summary: PassSummary,
    written: Option<Vec<RelPath>>,
    error: Option<ReceiveError>,
    fs: MemFs,
    store: MemStore,
    manifest: Vec<Entry>,
    finished: bool,
    down: Vec<Down>,
}

impl Ran {
    fn ok(self) -> Self {
        if let Some(e) = &self.error {
            panic!("the pass failed: {e}");
        }
        self
    }

    fn err(&self) -> String {
        self.error.as_ref().map(|e| e.to_string()).unwrap_or_default()
    }

    fn written(&self) -> Vec<String> {
        self.written.iter().flatten().map(|p| p.to_string()).collect()
    }
}

/// Plans `batches` as the planner would, has `peer` send what is asked for (through the
/// verifier), and runs the writer over `fs` and `store`.
fn pass(
    job: &PassJob,
    fs: MemFs,
    store: MemStore,
    batches: Vec<Vec<Entry>>,
    peer: &Peer,
    base: Option<Vec<Entry>>,
) -> Ran {
    let (expected, in_flight): (Expected, InFlight) = Default::default();
    let (down_tx, mut down_rx) = mpsc::unbounded_channel::<Down>();
    let (chunk_tx, chunk_rx) = mpsc::channel::<Vec<ChunkMsg>>(4096);
    let (msg_tx, msg_rx) = mpsc::channel::<WriterMsg>(4096);
    let mut plan_store = store.clone();
    let progress = crate::receive::Progress::default();
    for (seq, entries) in batches.into_iter().enumerate() {
        let seq = seq as u64;
        let all: Vec<ChunkRef> = entries
            .iter()
            .flat_map(|e| match &e.data {
                EntryData::Regular { chunks, .. } => chunks.clone(),
                _ => Vec::new(),
            })
            .collect();
        let (planned, need) =
            planner::plan(job, &mut plan_store, Batch { seq, entries }, &expected, &in_flight).unwrap();
        let Down::Need { indexes, .. } = &need else { unreachable!() };
        let mut sent = Vec::new();
        for &i in indexes {
            let c = &all[i as usize];
            let body = match peer.unreadable.get(&c.hash) {
                Some(why) => ChunkBody::Unavailable(why.clone()),
                None => ChunkBody::Plain(bytes::Bytes::from(peer.data[&c.hash].clone())),
            };
            let mut dec = None;
            sent.push(verifier::verify(
                crate::receive::Chunk { seq, index: i, body },
                &expected,
                &progress,
                &mut dec,
            ));
        }
        for &(s, i) in peer.late.iter().filter(|(s, _)| *s == seq) {
            let data = bytes::Bytes::from(peer.data[&all[i as usize].hash].clone());
            sent.push(ChunkMsg::Data { seq: s, index: i, data });
        }
        down_tx.send(need).unwrap();
        chunk_tx.try_send(sent).unwrap();
        msg_tx.try_send(WriterMsg::Batch(planned)).unwrap();
    }
    msg_tx.try_send(WriterMsg::Done { changed: Vec::new(), skipped: Vec::new() }).unwrap();
    drop((chunk_tx, msg_tx));

    let manifest = MemManifest::default();
    let mut merge = Merge::new(job.changes.clone(), store.records(), base.map(|b| MemBase(b.into())));
    let mut w =
        Writer::new(job, fs, store, manifest.clone(), Inbox::new(chunk_rx), down_tx, expected, in_flight);
    let (summary, written, error) = drive(&mut merge, &mut w, msg_rx);
    let Writer { fs, store, .. } = w;
    let mut down = Vec::new();
    while let Ok(d) = down_rx.try_recv() {
        down.push(d);
    }
    let entries = manifest.entries.borrow().clone();
    let finished = *manifest.finished.borrow();
    Ran { summary, written, error, fs, store, manifest: entries, finished, down }
}

/// A small tree: two files with the same content, a symlink and a hard link.
fn tree(peer: &mut Peer, motd: &[u8]) -> Vec<Entry> {
    let cs = peer.add(motd, 4);
    vec![
        dir(""),
        dir("etc"),
        file("etc/dup", &cs),
        file("etc/motd", &cs),
        hardlink("etc/motd.link", "etc/motd"),
        symlink("lnk", "etc/motd"),
    ]
}

#[test]
fn a_first_pass_writes_counts_and_records_everything() {
    let mut peer = Peer::default();
    let entries = tree(&mut peer, b"hello, world");
    let job = job(100);
    let r = pass(&job, MemFs::new(), MemStore::default(), vec![entries.clone()], &peer, None).ok();
    let s = &r.summary;
    assert_eq!((s.entries, s.listed, s.written, s.deleted), (6, 6, 6, 0));
    assert_eq!((s.data_bytes, s.changed_bytes), (24, 24));
    assert_eq!(r.written(), ["/etc/dup", "/etc/motd"]);
    assert_eq!(r.fs.data("etc/motd"), Some(&b"hello, world"[..]));
    assert_eq!(r.fs.data("etc/dup"), Some(&b"hello, world"[..]));
    assert_eq!(r.fs.nodes[&rel("etc/motd.link")].ino, r.fs.nodes[&rel("etc/motd")].ino);
    // The second copy of the content came from the first (done in this batch), not the wire.
    assert_eq!(job.progress.local_bytes.load(Ordering::Relaxed), 12);
    assert_eq!(r.down, [Down::Need { seq: 0, indexes: vec![0, 1, 2] }, Down::Written { seq: 0 }]);
    let mut want: Vec<_> = entries.iter().map(record).collect();
    want.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(r.store.files.values().cloned().collect::<Vec<_>>(), want);
    assert_eq!(r.store.chunks.len(), 3);
    assert_eq!(r.manifest, entries);
    assert!(r.finished);
    // A new file nothing was at is written at its name, not renamed over it.
    assert!(r.fs.log.contains(&"create /etc/motd".to_string()), "{:?}", r.fs.log);
}

#[test]
fn a_pass_over_what_the_tree_holds_writes_nothing() {
    let mut peer = Peer::default();
    let entries = tree(&mut peer, b"hello, world");
    let job = job(100);
    let first = pass(&job, MemFs::new(), MemStore::default(), vec![entries.clone()], &peer, None).ok();
    let (mut fs, commits) = (first.fs, first.store.commits);
    fs.log.clear();
    let r = pass(&job, fs, first.store, vec![entries], &peer, None).ok();
    assert_eq!((r.summary.entries, r.summary.written, r.summary.changed_bytes), (6, 0, 0));
    assert!(r.written().is_empty());
    assert!(r.fs.log.is_empty(), "{:?}", r.fs.log);
    assert_eq!(r.down, [Down::Need { seq: 0, indexes: vec![] }, Down::Written { seq: 0 }]);
    assert_eq!(r.store.commits, commits, "nothing to record");
}

#[test]
fn changed_metadata_is_rewritten_from_the_node_and_gone_entries_removed() {
    let mut peer = Peer::default();
    let entries = tree(&mut peer, b"hello, world");
    let first = pass(&job(100), MemFs::new(), MemStore::default(), vec![entries.clone()], &peer, None).ok();
    let mut next: Vec<Entry> = entries.into_iter().filter(|e| e.path != rel("etc/dup")).collect();
    next[2].meta.mode = 0o600;
    let j = job(100);
    let r = pass(&j, first.fs, first.store, vec![next], &peer, None).ok();
    // The file, and its other name (which named the version it replaced).
    assert_eq!((r.summary.written, r.summary.deleted), (2, 1));
    assert_eq!(r.written(), ["/etc/motd"]);
    assert_eq!(r.down[0], Down::Need { seq: 0, indexes: vec![] }, "no chunk sent again");
    assert_eq!(j.progress.local_bytes.load(Ordering::Relaxed), 12);
    let motd = &r.fs.nodes[&rel("etc/motd")];
    assert_eq!((motd.meta.mode, &motd.data[..]), (0o600, &b"hello, world"[..]));
    assert!(r.fs.log.contains(&"create /etc/motd (temporary)".to_string()), "{:?}", r.fs.log);
    assert!(!r.fs.nodes.contains_key(&rel("etc/dup")));
    assert!(!r.store.files.contains_key(b"etc\0dup".as_slice()));
}

#[test]
fn quota_limits_refuse_the_pass_and_keep_what_was_copied() {
    let mut peer = Peer::default();
    let entries = tree(&mut peer, b"hello, world");
    // Five inodes: the hard link is none of its own.
    let mut j = job(100);
    j.inode_limit = Some(5);
    pass(&j, MemFs::new(), MemStore::default(), vec![entries.clone()], &peer, None).ok();
    j.inode_limit = Some(4);
    let r = pass(&j, MemFs::new(), MemStore::default(), vec![entries.clone()], &peer, None);
    assert!(matches!(r.error, Some(ReceiveError::Quota { .. })));
    assert!(r.err().contains("5 entries > DISKINODES hard limit 4"), "{}", r.err());
    let mut j = job(100);
    j.byte_limit = Some(20);
    let r = pass(&j, MemFs::new(), MemStore::default(), vec![entries], &peer, None);
    assert!(r.err().contains("24 of file data > DISKSPACE hard limit 20"), "{}", r.err());
    assert_eq!(r.written(), ["/etc/dup"], "the file before the refusal stays");
    assert!(!r.finished);
}

#[test]
fn carried_entries_count_against_the_quota() {
    let mut peer = Peer::default();
    let big = peer.add(&[7u8; 1000], 100);
    let base = vec![dir(""), dir("etc"), file("srv", &big)];
    let first = pass(&job(100), MemFs::new(), MemStore::default(), vec![base.clone()], &peer, None).ok();
    let mut j = job(100);
    j.changes_offered = Some((1, "/base".into()));
    let dirs = [b"etc".to_vec()];
    let listing = Listing { since: Some(1), changed_dirs: &dirs, new_subtrees: &[] };
    j.changes = Changes::from_listing(&j, &listing).unwrap().map(Arc::new);
    // The listing names only `etc`; `srv` is carried, and counted.
    let r = pass(&j, first.fs, first.store.clone(), vec![vec![dir("etc")]], &peer, Some(base.clone())).ok();
    assert_eq!((r.summary.entries, r.summary.listed, r.summary.data_bytes), (3, 1, 1000));
    assert_eq!(r.summary.changes_since, Some(1));
    assert_eq!(r.manifest, base, "carried entries are in the pass's manifest");
    j.byte_limit = Some(999);
    let r = pass(&j, MemFs::new(), first.store, vec![vec![dir("etc")]], &peer, Some(base));
    assert!(r.err().contains("1000 of file data > DISKSPACE hard limit 999"), "{}", r.err());
}

#[test]
fn a_chunk_the_peer_cannot_read_leaves_the_file_for_the_next_pass() {
    let mut peer = Peer::default();
    let cs = peer.add(b"changing file", 5);
    peer.unreadable.insert(cs[1].hash, "file changed while read".into());
    let r = pass(
        &job(100),
        MemFs::new(),
        MemStore::default(),
        vec![vec![dir(""), file("log", &cs)]],
        &peer,
        None,
    )
    .ok();
    assert_eq!(r.summary.written, 1, "the root only");
    assert!(r.written().is_empty());
    assert_eq!(r.summary.changed_during_read.len(), 1);
    assert_eq!(r.summary.changed_during_read[0].reason, "file changed while read");
    assert!(!r.fs.nodes.contains_key(&rel("log")), "the unfinished file is gone");
    assert!(!r.store.files.contains_key(b"log".as_slice()));
}

#[test]
fn a_stale_copy_on_the_node_is_forgotten_and_asked_for() {
    let mut peer = Peer::default();
    let cs = peer.add(b"original data", 13);
    let first =
        pass(&job(100), MemFs::new(), MemStore::default(), vec![vec![dir(""), file("a", &cs)]], &peer, None)
            .ok();
    let mut fs = first.fs;
    // Changed on the node behind the store's back, same size.
    fs.nodes.get_mut(&rel("a")).unwrap().data = b"tampered data".to_vec();
    // `b` has the content `a` had: the index says the node holds it, but it no longer does.
    peer.late.push((0, 1));
    let r =
        pass(&job(100), fs, first.store, vec![vec![dir(""), file("a", &cs), file("b", &cs)]], &peer, None)
            .ok();
    assert_eq!(
        r.down,
        [
            Down::Need { seq: 0, indexes: vec![] },
            Down::Need { seq: 0, indexes: vec![1] },
            Down::Written { seq: 0 }
        ]
    );
    assert_eq!(r.fs.data("b"), Some(&b"original data"[..]));
    assert_eq!(r.store.forgotten, [cs[0].hash]);
    // Where the chunk lives now.
    assert_eq!(r.store.chunks[&cs[0].hash].key, b"b");
}

#[test]
fn a_file_that_is_not_its_chunks_is_refused_and_removed() {
    let mut peer = Peer::default();
    let cs = peer.add(b"some content", 6);
    let mut f = file("f", &cs);
    if let EntryData::Regular { digest, .. } = &mut f.data {
        *digest = Hash32([9; 32]);
    }
    let r = pass(&job(100), MemFs::new(), MemStore::default(), vec![vec![dir(""), f]], &peer, None);
    assert_eq!(r.err(), "agent sent an invalid stream: /f: content digest does not match its chunks");
    assert!(!r.fs.nodes.contains_key(&rel("f")));
    assert!(r.fs.log.contains(&"discard /f".to_string()));
}

#[test]
fn a_large_file_mostly_there_is_updated_in_place() {
    let mut peer = Peer::default();
    let size = IN_PLACE_MIN;
    let at = |off: u64, d: &[u8]| ChunkRef { hash: Hash32::of(d), offset: off, len: d.len() as u32 };
    let parts: [&[u8]; 4] = [b"part zero", b"part one", b"part two", b"part three"];
    for p in parts {
        peer.data.insert(Hash32::of(p), p.to_vec());
    }
    let sparse = |cs: Vec<ChunkRef>| {
        let digest = ContentHasher::digest(size, &cs);
        let mut e = file("big", &[]);
        e.data = EntryData::Regular { size, chunks: cs, digest };
        e
    };
    let old = sparse(vec![at(0, parts[0]), at(16 << 20, parts[1]), at(32 << 20, parts[2])]);
    let first =
        pass(&job(100), MemFs::new(), MemStore::default(), vec![vec![dir(""), old]], &peer, None).ok();
    let ino = first.fs.nodes[&rel("big")].ino;
    // Two of three chunks where they were, one new; the old third chunk's place is a hole.
    let new = sparse(vec![at(0, parts[0]), at(16 << 20, parts[1]), at(48 << 20, parts[3])]);
    let mut fs = first.fs;
    fs.log.clear();
    let r = pass(&job(100), fs, first.store, vec![vec![dir(""), new]], &peer, None).ok();
    assert_eq!(r.down[0], Down::Need { seq: 0, indexes: vec![2] });
    let big = &r.fs.nodes[&rel("big")];
    assert_eq!(big.ino, ino, "the same file, not a copy");
    assert_eq!(big.data.len() as u64, size);
    assert_eq!(&big.data[48 << 20..(48 << 20) + 10], b"part three");
    assert!(big.data[32 << 20..(32 << 20) + 8].iter().all(|b| *b == 0), "the old chunk is a hole now");
    assert!(!r.fs.log.iter().any(|l| l.starts_with("create")), "{:?}", r.fs.log);
    let (gap, next) = ((16u64 << 20) + 8, 48u64 << 20);
    assert!(r.fs.log.contains(&format!("punch /big {gap}+{}", next - gap)), "{:?}", r.fs.log);
    assert_eq!(r.written(), ["/big"]);
}

#[test]
fn holes_are_the_gaps_between_chunks() {
    let c = |offset, len| ChunkRef { hash: Hash32([0; 32]), offset, len };
    assert_eq!(holes(&[c(0, 10), c(10, 5)], 15).collect::<Vec<_>>(), []);
    assert_eq!(holes(&[c(5, 10), c(20, 5)], 30).collect::<Vec<_>>(), [(0, 5), (15, 5), (25, 5)]);
    assert_eq!(holes(&[], 7).collect::<Vec<_>>(), [(0, 7)]);
}
