use super::*;
use crate::receive::testing::{MemBase, MemRecords, dir, file, hardlink, job, symlink};
use crate::receive::{Changes, Listing};
use crate::state::index::key_path;
use p2c_common::manifest::{ChunkRef, Hash32};

type TestMerge = Merge<MemRecords, MemBase>;

fn c(b: u8) -> ChunkRef {
    ChunkRef { hash: Hash32([b; 32]), offset: 0, len: 100 }
}

fn cs(bs: &[u8]) -> Vec<ChunkRef> {
    bs.iter().enumerate().map(|(i, b)| ChunkRef { offset: i as u64 * 100, ..c(*b) }).collect()
}

fn show(op: Op<'_>) -> String {
    match op {
        Op::Carry(e) => format!("carry {}", e.path),
        Op::Delete { key, dropped_link } => {
            let p = key_path(&key).unwrap();
            if dropped_link { format!("delete {p} (dropped link)") } else { format!("delete {p}") }
        }
        Op::Apply { entry, change, first_chunk, key, digest } => {
            assert_eq!(key, entry.path.walk_key());
            assert_eq!(digest, entry.digest());
            match entry.data {
                EntryData::Regular { .. } => format!("{change:?} {} @{first_chunk}", entry.path),
                _ => format!("{change:?} {}", entry.path),
            }
        }
        Op::Segment { entry, first_chunk } => format!("segment {} @{first_chunk}", entry.path),
    }
}

/// A pass that walks everything over a tree that holds `records`.
fn full(records: &[&Entry]) -> TestMerge {
    Merge::new(None, MemRecords::of(records), None)
}

/// A pass listing changes since a base pass that listed `base` (also what the tree holds).
fn listing(changed_dirs: &[&str], new_subtrees: &[&str], base: &[&Entry]) -> TestMerge {
    let mut j = job(1);
    j.changes_offered = Some((3, "/base.manifest".into()));
    let bytes = |v: &[&str]| v.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
    let (dirs, subtrees) = (bytes(changed_dirs), bytes(new_subtrees));
    let l = Listing { since: Some(3), changed_dirs: &dirs, new_subtrees: &subtrees };
    let changes = Changes::from_listing(&j, &l).unwrap().unwrap();
    let base = MemBase(base.iter().map(|e| (*e).clone()).collect());
    Merge::new(
        Some(Arc::new(changes)),
        MemRecords::of(base.0.iter().collect::<Vec<_>>().as_slice()),
        Some(base),
    )
}

/// Runs the batches and the end of the pass: the operations, or those before the error and
/// the error.
fn run(m: &mut TestMerge, batches: &[Vec<Entry>]) -> Result<Vec<String>, (Vec<String>, String)> {
    let mut ops = Vec::new();
    let mut res = Ok(());
    for b in batches {
        let excluded = vec![false; b.len()];
        res = m.batch(b, &excluded, &mut |op| {
            ops.push(show(op));
            Ok(())
        });
        if res.is_err() {
            break;
        }
    }
    if res.is_ok() {
        res = m.finish(&mut |op| {
            ops.push(show(op));
            Ok(())
        });
    }
    match res {
        Ok(()) => Ok(ops),
        Err(e) => Err((ops, e.to_string())),
    }
}

fn chmod(mut e: Entry, mode: u32) -> Entry {
    e.meta.mode = mode;
    e
}

#[test]
fn new_entries_are_created_with_their_chunk_positions() {
    let mut m = full(&[]);
    let batch =
        vec![dir(""), dir("etc"), file("etc/a", &cs(&[1, 2])), symlink("lnk", "etc"), file("z", &cs(&[3]))];
    let ops = run(&mut m, &[batch]).unwrap();
    assert_eq!(ops, ["New /", "New /etc", "New /etc/a @0", "New /lnk", "New /z @2"]);
}

#[test]
fn unchanged_changed_content_and_changed_metadata() {
    let (root, a, b, m0) = (dir(""), file("a", &cs(&[1])), file("b", &cs(&[2])), file("m", &cs(&[3])));
    let mut m = full(&[&root, &a, &b, &m0]);
    // `b` has new content; `m` the same content with another mode: one digest in the record
    // covers both, so both are replaced (the data of `m` is then found on the node).
    let batch = vec![root.clone(), a.clone(), file("b", &cs(&[9])), chmod(m0.clone(), 0o600)];
    let ops = run(&mut m, &[batch]).unwrap();
    assert_eq!(ops, ["Unchanged /", "Unchanged /a @0", "Changed /b @1", "Changed /m @2"]);
}

#[test]
fn what_the_source_no_longer_has_is_deleted_in_walk_order() {
    let (root, a, b, bx, c) = (dir(""), file("a", &[]), dir("b"), file("b/x", &[]), file("c", &[]));
    let mut m = full(&[&root, &a, &b, &bx, &c]);
    let ops = run(&mut m, &[vec![root.clone(), b.clone()]]).unwrap();
    assert_eq!(ops, ["Unchanged /", "delete /a", "Unchanged /b", "delete /b/x", "delete /c"]);
}

#[test]
fn a_type_change_replaces_what_was_there_and_what_was_beneath() {
    let (root, a, ax) = (dir(""), dir("a"), file("a/x", &[]));
    let mut m = full(&[&root, &a, &ax]);
    let ops = run(&mut m, &[vec![root.clone(), file("a", &cs(&[1]))]]).unwrap();
    assert_eq!(ops, ["Unchanged /", "Retyped /a @0", "delete /a/x"]);

    // In a listing of changes, `a/x` is outside the changed directory (the root): what was
    // beneath the directory that became a file goes all the same, and is not carried.
    let z = file("z", &[]);
    let mut m = listing(&[""], &[], &[&root, &a, &ax, &z]);
    let ops = run(&mut m, &[vec![root.clone(), file("a", &cs(&[1]))]]).unwrap();
    assert_eq!(ops, ["Unchanged /", "Retyped /a @0", "delete /a/x", "delete /z"]);
}

#[test]
fn a_listing_carries_the_base_where_it_does_not_speak() {
    let base = [
        dir(""),
        dir("etc"),
        file("etc/motd", &cs(&[1])),
        file("etc/old", &cs(&[2])),
        dir("usr"),
        dir("usr/bin"),
        file("usr/bin/ls", &cs(&[3])),
        file("var", &[]),
    ];
    let mut m = listing(&["etc"], &["srv"], &base.iter().collect::<Vec<_>>());
    let batch = vec![dir("etc"), file("etc/motd", &cs(&[7])), dir("srv"), file("srv/x", &cs(&[8]))];
    let ops = run(&mut m, &[batch]).unwrap();
    assert_eq!(
        ops,
        [
            // Uncovered: carried, records kept.
            "carry /",
            // Covered (the changed directory, its children, the new subtree): merged.
            "Unchanged /etc",
            "Changed /etc/motd @0",
            "delete /etc/old",
            "New /srv",
            "New /srv/x @1",
            "carry /usr",
            "carry /usr/bin",
            "carry /usr/bin/ls",
            "carry /var",
        ]
    );
}

#[test]
fn covered_and_uncovered_records() {
    let base =
        [dir(""), dir("a"), file("a/gone", &[]), dir("a/sub"), file("a/sub/deep", &[]), file("b", &[])];
    // `a` changed: its direct children are listed, what is deeper only if `a/sub` changed.
    let mut m = listing(&["a"], &[], &base.iter().collect::<Vec<_>>());
    let ops = run(&mut m, &[vec![dir("a"), dir("a/sub")]]).unwrap();
    assert_eq!(
        ops,
        ["carry /", "Unchanged /a", "delete /a/gone", "Unchanged /a/sub", "carry /a/sub/deep", "carry /b"]
    );
    // `a/sub` gone from the source: so is what was beneath it, though not covered.
    let mut m = listing(&["a"], &[], &base.iter().collect::<Vec<_>>());
    let ops = run(&mut m, &[vec![dir("a")]]).unwrap();
    assert_eq!(
        ops,
        ["carry /", "Unchanged /a", "carry /b", "delete /a/gone", "delete /a/sub", "delete /a/sub/deep"]
    );
}

#[test]
fn hard_links_first_name_and_later_names() {
    let batch = vec![dir(""), file("a", &cs(&[1])), hardlink("b", "a"), hardlink("c", "a")];
    let mut m = full(&[]);
    assert_eq!(
        run(&mut m, std::slice::from_ref(&batch)).unwrap(),
        ["New /", "New /a @0", "New /b", "New /c"]
    );
    let mut m = full(&batch.iter().collect::<Vec<_>>());
    let ops = run(&mut m, std::slice::from_ref(&batch)).unwrap();
    assert_eq!(ops, ["Unchanged /", "Unchanged /a @0", "Unchanged /b", "Unchanged /c"]);
}

#[test]
fn a_carried_hard_link_whose_first_name_went_away_is_dropped() {
    let base =
        [dir(""), dir("d"), file("d/first", &cs(&[1])), dir("keep"), hardlink("keep/later", "d/first")];
    let base: Vec<&Entry> = base.iter().collect();
    // The first name is gone from the changed directory.
    let mut m = listing(&["d"], &[], &base);
    let ops = run(&mut m, &[vec![dir("d")]]).unwrap();
    assert_eq!(
        ops,
        ["carry /", "Unchanged /d", "carry /keep", "delete /d/first", "delete /keep/later (dropped link)"]
    );
    // The first name is there, but another file now: the later name cannot stay either.
    let mut m = listing(&["d"], &[], &base);
    let ops = run(&mut m, &[vec![dir("d"), file("d/first", &cs(&[2]))]]).unwrap();
    assert_eq!(
        ops,
        [
            "carry /",
            "Unchanged /d",
            "Changed /d/first @0",
            "carry /keep",
            "delete /keep/later (dropped link)"
        ]
    );
}

#[test]
fn excluded_entries_leave_the_container() {
    let (root, tmp, x) = (dir(""), dir("tmp"), file("tmp/x", &[]));
    let mut m = full(&[&root, &tmp, &x]);
    let batch = vec![root.clone(), tmp.clone(), x.clone(), file("tmp/y", &[])];
    let mut ops = Vec::new();
    m.batch(&batch, &[false, true, true, true], &mut |op| {
        ops.push(show(op));
        Ok(())
    })
    .unwrap();
    assert_eq!(ops, ["Unchanged /", "delete /tmp", "delete /tmp/x"]);
}

#[test]
fn segments_follow_their_file_across_batches() {
    let mut first = file("big", &cs(&[1, 2, 3]));
    let EntryData::Regular { chunks, .. } = &mut first.data else { unreachable!() };
    let rest = chunks.split_off(2);
    first.more = true;
    let mut second = first.clone();
    second.segment = 1;
    second.more = false;
    if let EntryData::Regular { chunks, .. } = &mut second.data {
        *chunks = rest;
    }
    let mut m = full(&[]);
    let ops =
        run(&mut m, &[vec![dir(""), first.clone()], vec![second.clone(), file("z", &cs(&[4]))]]).unwrap();
    assert_eq!(ops, ["New /", "New /big @0", "segment /big @0", "New /z @1"]);

    let err = |batches: &[Vec<Entry>]| run(&mut full(&[]), batches).unwrap_err().1;
    assert_eq!(
        err(&[vec![dir(""), second.clone()]]),
        "agent sent an invalid stream: /big: segment without a file"
    );
    let mut other = second.clone();
    other.path = crate::receive::testing::rel("other");
    assert_eq!(
        err(&[vec![dir(""), first.clone(), other]]),
        "agent sent an invalid stream: /other: segment of another file"
    );
    assert_eq!(
        err(&[vec![dir(""), first.clone(), file("z", &[])]]),
        "agent sent an invalid stream: /z: a new entry started inside a segmented file"
    );
    assert_eq!(
        err(&[vec![dir(""), first.clone()]]),
        "agent sent an invalid stream: the pass ended inside a segmented file"
    );
}

#[test]
fn walk_order_is_strict_across_batches() {
    let err = |batches: &[Vec<Entry>]| run(&mut full(&[]), batches).unwrap_err();
    let (ops, e) = err(&[vec![dir(""), dir("etc"), dir("etc")]]);
    assert_eq!(ops, ["New /", "New /etc"], "what came before the error was applied");
    assert_eq!(e, "agent sent an invalid stream: /etc is out of walk order or repeated");
    let (_, e) = err(&[vec![dir(""), dir("usr"), dir("etc")]]);
    assert_eq!(e, "agent sent an invalid stream: /etc is out of walk order or repeated");
    // The same path in a later batch, as something else.
    let (_, e) = err(&[vec![dir(""), dir("etc")], vec![symlink("etc", "../../outside")]]);
    assert_eq!(e, "agent sent an invalid stream: /etc is out of walk order or repeated");
}

#[test]
fn records_are_read_in_pages_and_never_behind_the_listing() {
    let files: Vec<Entry> = (0..2500).map(|i| file(&format!("f{i:04}"), &[])).collect();
    let root = dir("");
    let mut all: Vec<&Entry> = vec![&root];
    all.extend(files.iter());
    let mut m = full(&all);
    let ops = run(&mut m, &[vec![root.clone(), files[1000].clone()]]).unwrap();
    assert_eq!(ops.len(), 2501);
    assert_eq!(ops[1000], "delete /f0999");
    assert_eq!(ops[1001], "Unchanged /f1000 @0");
    assert_eq!(ops.iter().filter(|o| o.starts_with("delete")).count(), 2499);
    let asked = &m.records.src.asked;
    assert_eq!(asked.len(), 4, "three pages and the empty one: {}", asked.len());
    assert_eq!(asked[0], None);
    assert!(asked.windows(2).skip(1).all(|w| w[0] < w[1]), "the cursor went back");
}
