use std::io::Write;
use std::os::unix::fs::FileExt;

use super::*;
use crate::inventory::testfs::{LoopFs, parse_repquota_csv};

/// Builds a quota file the way the kernel lays it out (see the module docs).
pub(crate) fn build(
    format: QuotaFormat,
    kind: QuotaType,
    entries: &[DiskQuota],
    grace: (u32, u32),
) -> Vec<u8> {
    let mut blocks: Vec<[u8; BLOCK]> = vec![[0; BLOCK], [0; BLOCK]];
    let size = format.entry_size();
    let slots = (BLOCK - DATA_HEADER_LEN) / size;
    let mut data: Option<(usize, usize)> = None; // (block, used slots)
    let get = |b: &[u8; BLOCK], i: usize| le32(b, i * 4) as usize;
    for e in entries {
        let mut cur = 1usize;
        for depth in 0..TREE_DEPTH - 1 {
            let idx = ((e.id >> (8 * (3 - depth))) & 0xff) as usize;
            let mut next = get(&blocks[cur], idx);
            if next == 0 {
                blocks.push([0; BLOCK]);
                next = blocks.len() - 1;
                blocks[cur][idx * 4..idx * 4 + 4].copy_from_slice(&(next as u32).to_le_bytes());
            }
            cur = next;
        }
        let (db, used) = match data {
            Some((b, u)) if u < slots => (b, u),
            _ => {
                blocks.push([0; BLOCK]);
                (blocks.len() - 1, 0)
            }
        };
        let off = DATA_HEADER_LEN + used * size;
        blocks[db][off..off + size].copy_from_slice(&encode(format, e));
        blocks[db][8..10].copy_from_slice(&((used + 1) as u16).to_le_bytes());
        data = Some((db, used + 1));
        let idx = (e.id & 0xff) as usize;
        blocks[cur][idx * 4..idx * 4 + 4].copy_from_slice(&(db as u32).to_le_bytes());
    }
    let h = &mut blocks[0];
    h[0..4].copy_from_slice(&kind.magic().to_le_bytes());
    let version: u32 = if format == QuotaFormat::VfsV0 { 0 } else { 1 };
    h[4..8].copy_from_slice(&version.to_le_bytes());
    h[8..12].copy_from_slice(&grace.0.to_le_bytes());
    h[12..16].copy_from_slice(&grace.1.to_le_bytes());
    let n = blocks.len() as u32;
    blocks[0][20..24].copy_from_slice(&n.to_le_bytes());
    blocks.concat()
}

fn encode(format: QuotaFormat, q: &DiskQuota) -> Vec<u8> {
    let mut v = Vec::new();
    let itime = if *q == DiskQuota::default() { 1 } else { q.itime };
    v.extend_from_slice(&q.id.to_le_bytes());
    match format {
        QuotaFormat::VfsV0 => {
            for x in [q.inode_hard, q.inode_soft, q.cur_inodes, q.block_hard, q.block_soft] {
                v.extend_from_slice(&(x as u32).to_le_bytes());
            }
        }
        QuotaFormat::VfsV1 => {
            v.extend_from_slice(&0u32.to_le_bytes());
            for x in [q.inode_hard, q.inode_soft, q.cur_inodes, q.block_hard, q.block_soft] {
                v.extend_from_slice(&x.to_le_bytes());
            }
        }
    }
    for x in [q.cur_space, q.btime, itime] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

fn parse_bytes(bytes: &[u8], kind: QuotaType) -> Result<QuotaFile, QuotaFileError> {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(bytes).unwrap();
    parse_quota_file(&f, bytes.len() as u64, kind, "test.quota")
}

fn sample() -> Vec<DiskQuota> {
    let mut v: Vec<DiskQuota> = (0..40u32)
        .map(|i| DiskQuota {
            id: 1000 + i * 7,
            block_soft: u64::from(i) * 100,
            block_hard: u64::from(i) * 200,
            inode_soft: u64::from(i),
            inode_hard: u64::from(i) * 2,
            cur_space: u64::from(i) * 4096,
            cur_inodes: u64::from(i) + 1,
            ..Default::default()
        })
        .collect();
    // The id-0 entry with nothing in it, and ids that spread over every tree level.
    v.push(DiskQuota::default());
    for id in [65_536, 16_777_216 + 5, u32::MAX - 1] {
        v.push(DiskQuota { id, block_hard: 5, ..Default::default() });
    }
    v.sort_by_key(|q| q.id);
    v
}

#[test]
fn reads_built_files_in_both_formats() {
    for format in [QuotaFormat::VfsV0, QuotaFormat::VfsV1] {
        for kind in [QuotaType::User, QuotaType::Group] {
            let want = sample();
            let q = parse_bytes(&build(format, kind, &want, (3600, 7200)), kind).unwrap();
            assert_eq!(q.format, format);
            assert_eq!((q.block_grace, q.inode_grace), (3600, 7200));
            assert_eq!(q.entries, want);
            assert!(!q.truncated);
        }
    }
}

#[test]
fn v1_keeps_64_bit_limits() {
    let big = DiskQuota {
        id: 42,
        block_hard: 1 << 40,
        inode_hard: u64::MAX >> 1,
        cur_space: 1 << 50,
        ..Default::default()
    };
    let bytes = build(QuotaFormat::VfsV1, QuotaType::User, std::slice::from_ref(&big), (0, 0));
    assert_eq!(parse_bytes(&bytes, QuotaType::User).unwrap().entries, vec![big]);
}

#[test]
fn empty_tree() {
    let bytes = build(QuotaFormat::VfsV1, QuotaType::User, &[], (1, 2));
    let q = parse_bytes(&bytes, QuotaType::User).unwrap();
    assert!(q.entries.is_empty());
}

#[test]
fn refuses_bad_headers() {
    let good = build(QuotaFormat::VfsV1, QuotaType::User, &sample(), (1, 2));
    assert!(matches!(
        parse_bytes(&good[..20], QuotaType::User),
        Err(QuotaFileError::TooShort { len: 20, .. })
    ));
    assert!(matches!(
        parse_bytes(&good, QuotaType::Group),
        Err(QuotaFileError::BadMagic { kind: "group", .. })
    ));
    let mut v = good.clone();
    v[4] = 7;
    assert!(matches!(parse_bytes(&v, QuotaType::User), Err(QuotaFileError::BadVersion { version: 7, .. })));
    let msg = parse_bytes(&[0u8; 64], QuotaType::User).unwrap_err().to_string();
    assert!(msg.contains("test.quota"), "{msg}");
    assert!(msg.starts_with("quota file"), "{msg}");
}

#[test]
fn refuses_corrupt_trees() {
    let good = build(QuotaFormat::VfsV1, QuotaType::User, &sample(), (1, 2));
    // Cut inside the tree: references now point past the end of the file.
    let err = parse_bytes(&good[..BLOCK * 3 + 100], QuotaType::User).unwrap_err();
    assert!(matches!(err, QuotaFileError::Corrupt { .. }), "{err}");
    // A reference beyond the block count.
    let mut v = good.clone();
    v[BLOCK..BLOCK + 4].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    let err = parse_bytes(&v, QuotaType::User).unwrap_err();
    assert!(err.to_string().contains("outside"), "{err}");
    // A loop back to the root block.
    let mut v = good.clone();
    let first_child = le32(&v, BLOCK) as usize;
    let child = if first_child != 0 {
        first_child
    } else {
        let i = (0..256).find(|i| le32(&v, BLOCK + i * 4) != 0).unwrap();
        le32(&v, BLOCK + i * 4) as usize
    };
    v[child * BLOCK + 8..child * BLOCK + 12].copy_from_slice(&1u32.to_le_bytes());
    let err = parse_bytes(&v, QuotaType::User).unwrap_err();
    assert!(err.to_string().contains("referenced twice"), "{err}");
    // Two references to one tree block (which would multiply the work).
    let mut v = good;
    let i = (0..256).find(|i| le32(&v, BLOCK + i * 4) != 0).unwrap();
    let r = le32(&v, BLOCK + i * 4);
    let j = (i + 1) % 256;
    v[BLOCK + j * 4..BLOCK + j * 4 + 4].copy_from_slice(&r.to_le_bytes());
    assert!(parse_bytes(&v, QuotaType::User).is_err());
}

#[test]
fn header_block_count_cannot_force_big_allocations() {
    let mut v = build(QuotaFormat::VfsV1, QuotaType::User, &sample(), (1, 2));
    v[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(parse_bytes(&v, QuotaType::User).unwrap().entries.len(), sample().len());
    // A sparse file past the cap is refused before anything is read.
    let f = tempfile::tempfile().unwrap();
    f.set_len(MAX_FILE_BYTES + 1).unwrap();
    assert!(matches!(
        parse_quota_file(&f, MAX_FILE_BYTES + 1, QuotaType::User, "big"),
        Err(QuotaFileError::TooLarge { .. })
    ));
}

#[test]
fn random_damage_never_panics() {
    let good = build(QuotaFormat::VfsV0, QuotaType::Group, &sample(), (1, 2));
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(&good).unwrap();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..500 {
        let mut v = good.clone();
        for _ in 0..1 + next() % 8 {
            let at = (next() % v.len() as u64) as usize;
            v[at] = next() as u8;
        }
        let cut = if next() % 4 == 0 { (next() % v.len() as u64) as usize } else { v.len() };
        f.write_all_at(&v[..cut], 0).unwrap();
        f.set_len(cut as u64).unwrap();
        if let Ok(q) = parse_quota_file(&f, cut as u64, QuotaType::Group, "fuzz") {
            assert!(q.entries.len() <= MAX_ENTRIES);
        }
    }
}

#[test]
fn caps_entries() {
    let many: Vec<DiskQuota> = (0..MAX_ENTRIES as u32 + 10)
        .map(|id| DiskQuota { id, cur_inodes: 1, ..Default::default() })
        .collect();
    let bytes = build(QuotaFormat::VfsV0, QuotaType::User, &many, (0, 0));
    let q = parse_bytes(&bytes, QuotaType::User).unwrap();
    assert!(q.truncated);
    assert_eq!(q.entries.len(), MAX_ENTRIES);
}

/// Checks the parser against quota-tools on a real file system, in `format`.
fn against_quota_tools(format: &str) {
    let Some(fs) = LoopFs::new() else {
        return;
    };
    let users: Vec<u32> = (1001..1031).chain([70_000, 2_000_000_000]).collect();
    for (n, uid) in users.iter().enumerate() {
        fs.file(&format!("d/u{uid}"), n % 7 + 1, *uid, uid + 1);
    }
    fs.tool("quotacheck", &["-cug", "-F", format]);
    let limits: &[(&str, u32, [u64; 4])] = &[
        ("-u", 1001, [100, 200, 10, 20]),
        ("-u", 1005, [1000, 0, 0, 50]),
        ("-u", 70_000, [4_000_000, 4_200_000, 4000, 4200]),
        ("-u", 2_000_000_000, [1, 2, 3, 4]),
        // A user with limits and no files.
        ("-u", 5555, [u64::from(u32::MAX), u64::from(u32::MAX), 7, 8]),
        ("-g", 1002, [300, 400, 30, 40]),
        ("-g", 9999, [10, 20, 0, 0]),
    ];
    for (flag, id, l) in limits {
        let id = id.to_string();
        let l: Vec<String> = l.iter().map(u64::to_string).collect();
        let mut args = vec!["-F", format, flag, &id];
        args.extend(l.iter().map(String::as_str));
        fs.tool("setquota", &args);
    }
    fs.tool("setquota", &["-F", format, "-t", "-u", "3600", "7200"]);
    fs.tool("setquota", &["-F", format, "-t", "-g", "86400", "172800"]);
    for (kind, flag, grace) in
        [(QuotaType::User, "-u", (3600, 7200)), (QuotaType::Group, "-g", (86400, 172800))]
    {
        let q = read_quota_file(&fs.mnt.join(kind.file_names()[0]), kind).unwrap();
        assert_eq!(q.format.name(), format);
        assert_eq!((q.block_grace, q.inode_grace), grace);
        let rep = parse_repquota_csv(&fs.tool("repquota", &["-F", format, "-n", "-v", "-O", "csv", flag]));
        assert!(rep.len() >= limits.len() / 2, "{rep:?}");
        for row in &rep {
            let e = q
                .entries
                .iter()
                .find(|e| e.id == row.id)
                .unwrap_or_else(|| panic!("id {} missing from {:?}", row.id, q.entries));
            assert_eq!(e.cur_space.div_ceil(1024), row.block_used, "id {}", row.id);
            assert_eq!(
                (e.block_soft, e.block_hard, e.cur_inodes, e.inode_soft, e.inode_hard),
                (row.block_soft, row.block_hard, row.inode_used, row.inode_soft, row.inode_hard),
                "id {}",
                row.id
            );
        }
        // Every entry with usage or limits is one repquota shows.
        for e in q.entries.iter().filter(|e| e.cur_space | e.cur_inodes | e.block_hard > 0) {
            assert!(rep.iter().any(|r| r.id == e.id), "extra id {}", e.id);
        }
    }
    // The limits set above, exactly.
    let u = read_quota_file(&fs.mnt.join("aquota.user"), QuotaType::User).unwrap();
    let e = u.entries.iter().find(|e| e.id == 70_000).unwrap();
    assert_eq!((e.block_soft, e.block_hard, e.inode_soft, e.inode_hard), (4_000_000, 4_200_000, 4000, 4200));
    let e = u.entries.iter().find(|e| e.id == 5555).unwrap();
    assert_eq!((e.cur_space, e.cur_inodes), (0, 0));

    // A damaged copy of the real file fails cleanly.
    let bytes = std::fs::read(fs.mnt.join("aquota.user")).unwrap();
    let mut v = bytes.clone();
    v[BLOCK..BLOCK * 2].fill(0xff);
    assert!(matches!(parse_bytes(&v, QuotaType::User), Err(QuotaFileError::Corrupt { .. })));
    assert!(parse_bytes(&bytes[..BLOCK + 10], QuotaType::User).is_err());
}

#[test]
fn matches_quota_tools_vfsv1() {
    against_quota_tools("vfsv1");
}

#[test]
fn matches_quota_tools_vfsv0() {
    against_quota_tools("vfsv0");
}
