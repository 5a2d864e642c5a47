use std::collections::BTreeMap;
use std::io::Write;

use p2c_common::bundle::Reader;

use super::*;

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A small source: directories, files (two with the same content), a sparse file, a hard
/// link, a symlink, a socket, and enough data for several batches and many chunks.
fn source(root: &Path) {
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("srv/data")).unwrap();
    std::fs::write(root.join("etc/hostname"), "web01\n").unwrap();
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    let big = pseudo_random(3 << 20, 1);
    std::fs::write(root.join("srv/big"), &big).unwrap();
    std::fs::write(root.join("srv/big-copy"), &big).unwrap();
    for i in 0..1500 {
        std::fs::write(root.join(format!("srv/data/f{i:04}")), pseudo_random(100 + i, i as u64)).unwrap();
    }
    let mut sparse = std::fs::File::create(root.join("srv/sparse")).unwrap();
    sparse.set_len(8 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    sparse.write_all_at(b"middle", 4 << 20).unwrap();
    sparse.flush().unwrap();
    std::fs::hard_link(root.join("etc/hosts"), root.join("srv/hosts-link")).unwrap();
    std::os::unix::fs::symlink("../etc/hosts", root.join("srv/link")).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(root.join("srv/sock")).unwrap();
    // Last in walk order: its problem comes after every entry.
    let _last = std::os::unix::net::UnixListener::bind(root.join("zz.sock")).unwrap();
}

fn options(out: &Path, root: &Path) -> ExportOptions {
    let mut o = ExportOptions::new(out, root);
    o.no_descend = Some(HashSet::new());
    o.name = Some("web01".into());
    o
}

/// What a bundle holds, whatever the order its chunks were stored in: the header (without
/// its creation time), every entry in order, every chunk's plain data, the problems.
#[derive(Debug, PartialEq)]
struct Contents {
    header: BundleHeader,
    entries: Vec<v1::Entry>,
    chunks: BTreeMap<Hash32, Vec<u8>>,
    problems: Vec<v1::Problem>,
}

fn contents(path: &Path) -> Contents {
    let mut r = Reader::open(path).unwrap();
    let mut c =
        Contents { header: read_header_of(path), entries: vec![], chunks: BTreeMap::new(), problems: vec![] };
    c.header.created_unix = 0;
    let mut dec = zstd::bulk::Decompressor::new().unwrap();
    while let Some(rec) = r.next_record().unwrap() {
        match rec.kind {
            Kind::Chunk => {
                let ch = ChunkRecord::decode(&rec.payload).unwrap();
                assert!(
                    c.chunks.insert(ch.hash, ch.plain(&mut dec).unwrap()).is_none(),
                    "a chunk stored twice"
                );
            }
            Kind::Batch => {
                let b = p2c_proto::bundle::decode(&rec.payload).unwrap();
                c.entries.extend(b.batch.unwrap().entries);
                c.problems.extend(b.changed);
                c.problems.extend(b.skipped);
            }
            _ => {}
        }
    }
    c
}

fn read_header_of(path: &Path) -> BundleHeader {
    p2c_common::bundle::read_header(path).unwrap()
}

#[test]
fn an_export_verifies_and_stores_each_chunk_once() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    source(&root);
    let out = d.path().join("web01.p2cb");
    let r = export(&options(&out, &root), &AtomicBool::new(false)).unwrap();
    assert!(!r.already_complete);
    assert!(!index::path_for(&out).exists(), "the chunk index was left behind");
    let v = verify(&out).unwrap();
    assert_eq!(v.trailer, r.trailer);
    assert_eq!(v.header.name, "web01");
    assert!(v.trailer.batches >= 2, "{:?}", v.trailer);
    // The socket is reported, not carried.
    assert_eq!(r.skipped.len(), 2, "{:?}", r.skipped);
    assert!(r.skipped[0].reason.starts_with("socket"));
    let c = contents(&out);
    let paths: Vec<String> =
        c.entries.iter().map(|e| String::from_utf8_lossy(&e.path).into_owned()).collect();
    assert_eq!(paths[..4], ["", "etc", "etc/hostname", "etc/hosts"]);
    assert!(paths.contains(&"srv/hosts-link".to_string()));
    // The copy's chunks are the original's; the sparse file's holes are not data.
    let big = c.entries.iter().find(|e| e.path == b"srv/big").unwrap();
    let copy = c.entries.iter().find(|e| e.path == b"srv/big-copy").unwrap();
    assert_eq!(big.chunks, copy.chunks);
    let sparse = c.entries.iter().find(|e| e.path == b"srv/sparse").unwrap();
    assert!(sparse.chunks.iter().map(|c| u64::from(c.len)).sum::<u64>() < 1 << 20);
    let refs: std::collections::BTreeSet<Vec<u8>> =
        c.entries.iter().flat_map(|e| e.chunks.iter().map(|c| c.hash.clone())).collect();
    assert_eq!(refs.len(), c.chunks.len());
    // Running it again finds it complete.
    let again = export(&options(&out, &root), &AtomicBool::new(false)).unwrap();
    assert!(again.already_complete);
}

#[test]
fn a_cut_export_continues_to_the_same_content() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    source(&root);
    let whole = d.path().join("whole.p2cb");
    export(&options(&whole, &root), &AtomicBool::new(false)).unwrap();
    let want = contents(&whole);
    let bytes = std::fs::read(&whole).unwrap();
    // Cut anywhere (inside the header, the scan, a chunk, a batch, the trailer): the export
    // run again keeps what is complete and ends with the same content.
    for cut in [10, 200, bytes.len() / 3, bytes.len() / 2, bytes.len() - 100, bytes.len() - 1] {
        let out = d.path().join(format!("cut-{cut}.p2cb"));
        std::fs::write(&out, &bytes[..cut]).unwrap();
        let r = export(&options(&out, &root), &AtomicBool::new(false)).unwrap();
        verify(&out).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(contents(&out), want, "cut at {cut}");
        let kept = r.resumed_at.unwrap_or(0) as usize;
        assert!(kept <= cut, "cut at {cut}: kept {kept}");
        assert_eq!(
            std::fs::read(&out).unwrap()[..kept],
            bytes[..kept],
            "cut at {cut}: the kept prefix changed"
        );
    }
}

#[test]
fn a_cancelled_export_is_continued() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    source(&root);
    let out = d.path().join("web01.p2cb");
    let e = export(&options(&out, &root), &AtomicBool::new(true)).unwrap_err();
    assert!(matches!(e, ExportError::Cancelled(_)), "{e}");
    assert!(e.to_string().contains("run the same command again"), "{e}");
    assert!(verify(&out).unwrap_err().to_string().contains("incomplete"));
    let r = export(&options(&out, &root), &AtomicBool::new(false)).unwrap();
    assert!(r.resumed_at.is_some());
    verify(&out).unwrap();
    let whole = d.path().join("whole.p2cb");
    export(&options(&whole, &root), &AtomicBool::new(false)).unwrap();
    assert_eq!(contents(&out), contents(&whole));
}

#[test]
fn other_options_or_files_are_not_overwritten() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    source(&root);
    let out = d.path().join("web01.p2cb");
    export(&options(&out, &root), &AtomicBool::new(true)).unwrap_err();
    let mut other = options(&out, &root);
    other.excludes = vec!["/srv".into()];
    let e = export(&other, &AtomicBool::new(false)).unwrap_err().to_string();
    assert!(e.contains("holds an export of web01"), "{e}");
    let mine = d.path().join("notes.txt");
    std::fs::write(&mine, "not a bundle").unwrap();
    let e = export(&options(&mine, &root), &AtomicBool::new(false)).unwrap_err().to_string();
    assert!(e.contains("is not a p2c bundle"), "{e}");
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "not a bundle");
    assert!(!index::path_for(&mine).exists(), "a chunk index was left next to {}", mine.display());
    assert!(!index::path_for(&out).exists());
}

#[test]
fn the_bundle_is_not_exported_into_itself() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    std::fs::create_dir_all(root.join("media")).unwrap();
    std::fs::write(root.join("file"), "x").unwrap();
    let out = root.join("media/web01.p2cb");
    export(&options(&out, &root), &AtomicBool::new(false)).unwrap();
    let c = contents(&out);
    assert!(c.entries.iter().all(|e| !e.path.starts_with(b"media/web01")), "{:?}", c.entries);
}

#[test]
fn one_export_at_a_time_writes_a_bundle() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("file"), "x").unwrap();
    let out = d.path().join("web01.p2cb");
    let held = lock(&out).unwrap();
    let e = export(&options(&out, &root), &AtomicBool::new(false)).unwrap_err().to_string();
    assert!(e.contains("another export is writing"), "{e}");
    drop(held);
    // The empty file the lock made is no bundle to continue: the export starts afresh.
    let r = export(&options(&out, &root), &AtomicBool::new(false)).unwrap();
    assert!(r.resumed_at.is_none());
    verify(&out).unwrap();
}
