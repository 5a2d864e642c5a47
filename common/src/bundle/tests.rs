use super::*;

fn header() -> BundleHeader {
    BundleHeader {
        format: FORMAT,
        name: "web01".into(),
        root: "/".into(),
        facts: "live".into(),
        chunking: ChunkParams::default(),
        excludes: Vec::new(),
        agent_version: "test".into(),
        created_unix: 1,
    }
}

/// A batch payload for these tests: `seq`, then (hash, offset) pairs.
fn batch_payload(seq: u64, refs: &[(Hash32, u64)]) -> Vec<u8> {
    let mut p = seq.to_le_bytes().to_vec();
    for (h, o) in refs {
        p.extend_from_slice(&h.0);
        p.extend_from_slice(&o.to_le_bytes());
    }
    p
}

fn decode_batch(p: &[u8]) -> Result<BatchInfo, String> {
    if p.len() < 8 || !(p.len() - 8).is_multiple_of(40) {
        return Err("bad test batch".into());
    }
    let seq = u64::from_le_bytes(p[..8].try_into().unwrap());
    let refs = p[8..]
        .chunks(40)
        .map(|c| (Hash32(c[..32].try_into().unwrap()), u64::from_le_bytes(c[32..].try_into().unwrap())))
        .collect::<Vec<_>>();
    Ok(BatchInfo { seq, entries: refs.len() as u64, objects: refs.len() as u64, refs, ..Default::default() })
}

/// A complete bundle with two chunks (one compressed) and two batches.
fn sample(path: &Path) -> Trailer {
    let mut w = Writer::create(path).unwrap();
    w.append(Kind::Header, &serde_json::to_vec(&header()).unwrap()).unwrap();
    w.append(Kind::Inventory, b"{}").unwrap();
    w.append(Kind::Scan, b"{}").unwrap();
    let a = vec![7u8; 5000];
    let b: Vec<u8> = (0..3000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let za = zstd::bulk::compress(&a, 1).unwrap();
    let oa = w.append(Kind::Chunk, &ChunkRecord::encode(&Hash32::of(&a), 5000, Codec::Zstd, &za)).unwrap();
    w.append(Kind::Batch, &batch_payload(0, &[(Hash32::of(&a), oa)])).unwrap();
    let ob = w.append(Kind::Chunk, &ChunkRecord::encode(&Hash32::of(&b), 3000, Codec::Plain, &b)).unwrap();
    w.append(Kind::Batch, &batch_payload(1, &[(Hash32::of(&b), ob), (Hash32::of(&a), oa)])).unwrap();
    let t = Trailer {
        batches: 2,
        entries: 3,
        objects: 3,
        chunks: 2,
        chunk_bytes: 8000,
        stored_bytes: (za.len() + b.len()) as u64,
        ..Default::default()
    };
    w.finish(t).unwrap()
}

fn run_verify(path: &Path) -> Result<Verified, BundleError> {
    verify(path, &mut decode_batch, &mut |_| {})
}

#[test]
fn a_complete_bundle_verifies() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("b");
    let t = sample(&p);
    let v = run_verify(&p).unwrap();
    assert_eq!(v.trailer, t);
    assert_eq!(v.header, header());
    assert_eq!(v.size, std::fs::metadata(&p).unwrap().len());
    assert_eq!(read_header(&p).unwrap(), header());
}

#[test]
fn every_flipped_byte_is_found() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("b");
    sample(&p);
    let good = std::fs::read(&p).unwrap();
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x20;
        std::fs::write(&p, &bad).unwrap();
        let e = run_verify(&p).expect_err(&format!("byte {i} flipped and accepted"));
        let msg = e.to_string();
        assert!(
            msg.contains("corrupted") || msg.contains("not a p2c bundle") || msg.contains("truncated"),
            "byte {i}: {msg}"
        );
    }
}

#[test]
fn truncations_are_named() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("b");
    sample(&p);
    let good = std::fs::read(&p).unwrap();
    for len in 0..good.len() {
        std::fs::write(&p, &good[..len]).unwrap();
        let e = run_verify(&p).expect_err(&format!("truncated to {len} and accepted"));
        match e {
            BundleError::NotABundle { .. } => assert!(len < MAGIC.len()),
            BundleError::Truncated { offset, .. } | BundleError::Incomplete { offset, .. } => {
                assert!(offset <= len as u64)
            }
            other => panic!("truncated to {len}: {other}"),
        }
    }
    // Appended garbage is refused too.
    let mut longer = good.clone();
    longer.push(0);
    std::fs::write(&p, &longer).unwrap();
    assert!(run_verify(&p).unwrap_err().to_string().contains("data after the trailer"));
}

#[test]
fn references_must_point_to_the_right_chunk() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("b");
    let mut w = Writer::create(&p).unwrap();
    w.append(Kind::Header, &serde_json::to_vec(&header()).unwrap()).unwrap();
    w.append(Kind::Inventory, b"{}").unwrap();
    w.append(Kind::Scan, b"{}").unwrap();
    let a = b"some data".to_vec();
    let oa = w.append(Kind::Chunk, &ChunkRecord::encode(&Hash32::of(&a), 9, Codec::Plain, &a)).unwrap();
    w.append(Kind::Batch, &batch_payload(0, &[(Hash32::of(b"other"), oa)])).unwrap();
    w.finish(Trailer {
        batches: 1,
        entries: 1,
        objects: 1,
        chunks: 1,
        chunk_bytes: 9,
        stored_bytes: 9,
        ..Default::default()
    })
    .unwrap();
    let e = run_verify(&p).unwrap_err().to_string();
    assert!(e.contains("points to another chunk"), "{e}");
}

#[test]
fn a_bundle_can_be_continued_after_a_cut() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("b");
    sample(&p);
    // Read up to the first batch, then cut everything after it and write the rest again.
    let mut r = Reader::open(&p).unwrap();
    let (mut keep, mut records, mut digest) = (0, 0, r.digest());
    while let Some(rec) = r.next_record().unwrap() {
        if rec.kind == Kind::Batch {
            (keep, records, digest) = (r.offset(), r.records(), r.digest());
            break;
        }
    }
    let mut w = Writer::resume(&p, keep, records, digest).unwrap();
    let b: Vec<u8> = (0..3000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let a = vec![7u8; 5000];
    let first_chunk = {
        let mut r = Reader::open(&p).unwrap();
        loop {
            let rec = r.next_record().unwrap().unwrap();
            if rec.kind == Kind::Chunk {
                break rec.offset;
            }
        }
    };
    let ob = w.append(Kind::Chunk, &ChunkRecord::encode(&Hash32::of(&b), 3000, Codec::Plain, &b)).unwrap();
    w.append(Kind::Batch, &batch_payload(1, &[(Hash32::of(&b), ob), (Hash32::of(&a), first_chunk)])).unwrap();
    let za = zstd::bulk::compress(&a, 1).unwrap();
    w.finish(Trailer {
        batches: 2,
        entries: 3,
        objects: 3,
        chunks: 2,
        chunk_bytes: 8000,
        stored_bytes: (za.len() + b.len()) as u64,
        ..Default::default()
    })
    .unwrap();
    run_verify(&p).unwrap();
}

#[test]
fn chunk_records_are_checked() {
    let mut dec = zstd::bulk::Decompressor::new().unwrap();
    let data = b"hello".to_vec();
    let ok = ChunkRecord::encode(&Hash32::of(&data), 5, Codec::Plain, &data);
    ChunkRecord::decode(&ok).unwrap().check(&mut dec).unwrap();
    let wrong = ChunkRecord::encode(&Hash32::of(b"other"), 5, Codec::Plain, &data);
    assert!(ChunkRecord::decode(&wrong).unwrap().check(&mut dec).is_err());
    // A frame that inflates past its announced length fails, it does not fill memory.
    let big = zstd::bulk::compress(&vec![0u8; 1 << 20], 1).unwrap();
    let bomb = ChunkRecord::encode(&Hash32::of(b"x"), 10, Codec::Zstd, &big);
    assert!(ChunkRecord::decode(&bomb).unwrap().check(&mut dec).is_err());
    assert!(ChunkRecord::decode(&[0u8; 10]).is_err());
}

#[test]
fn records_are_read_where_they_are_and_checked() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("b");
    sample(&p);
    let mut r = Reader::open(&p).unwrap();
    let chunk = loop {
        let rec = r.next_record().unwrap().unwrap();
        if rec.kind == Kind::Chunk {
            break rec;
        }
    };
    let f = File::open(&p).unwrap();
    let again = read_record_at(&f, "b", chunk.offset).unwrap();
    assert_eq!((again.kind, again.payload), (Kind::Chunk, chunk.payload));
    // Not a record boundary, or a damaged record: refused, naming the byte.
    let e = read_record_at(&f, "b", chunk.offset + 1).unwrap_err().to_string();
    assert!(e.contains(&format!("corrupted at byte {}", chunk.offset + 1)), "{e}");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[chunk.offset as usize + 40] ^= 1;
    std::fs::write(&p, &bytes).unwrap();
    let f = File::open(&p).unwrap();
    let e = read_record_at(&f, "b", chunk.offset).unwrap_err().to_string();
    assert!(e.contains("does not match its checksum"), "{e}");
}
