use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use p2c_tests::fixtures::{
    Case, CaseList, CompareOptions, DiffKind, FileKind, assert_trees_equal, build_every_case_tree,
    compare_trees,
};
use p2c_tests::loopfs::{FsKind, LoopFs};
use p2c_tests::util::run_cmd;
use p2c_tests::{require_root, trace_init};
use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, XattrFlags};

/// A source tree in a fresh temporary directory.
fn source() -> (tempfile::TempDir, PathBuf, CaseList) {
    trace_init();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let cases = build_every_case_tree(&src).unwrap();
    (tmp, src, cases)
}

/// `cp -a src dst`: the reference copy, exact for everything the fixture holds.
fn cp_a(src: &Path, dst: &Path) {
    run_cmd(Command::new("cp").arg("-a").arg(src).arg(dst)).unwrap();
}

/// What a p2c copy leaves out on purpose.
fn skip_sockets(cases: &CaseList) -> CompareOptions {
    cases.skipped().into_iter().fold(CompareOptions::default(), |o, p| o.exclude(p))
}

#[test]
fn every_case_tree_holds_every_case() {
    require_root!();
    let (_tmp, src, cases) = source();
    let at = |case| src.join(cases.path(case));
    let meta = |case| std::fs::symlink_metadata(at(case)).unwrap();

    assert_eq!(meta(Case::EmptyFile).len(), 0);
    assert_eq!(meta(Case::OneByteFile).len(), 1);
    assert_eq!(meta(Case::File64KiB).len(), 64 << 10);
    assert!(meta(Case::LargeFile).len() > 4 << 20);
    for case in [Case::SparseHoles, Case::SparseTailHole] {
        let m = meta(case);
        assert!(m.blocks() * 512 < m.len() / 2, "{case:?} is not sparse");
    }
    let links: BTreeSet<u64> =
        cases.paths(Case::HardLink).iter().map(|p| std::fs::metadata(src.join(p)).unwrap().ino()).collect();
    assert_eq!((links.len(), cases.paths(Case::HardLink).len()), (1, 3));
    assert_eq!(
        std::fs::read_link(at(Case::SymlinkNonUtf8Target)).unwrap().as_os_str().as_bytes(),
        b"caf\xe9-target"
    );
    assert!(at(Case::SymlinkToDir).join("one-byte").exists());
    assert!(!at(Case::SymlinkDangling).exists());
    let high = meta(Case::HighIds);
    assert_eq!((high.uid(), high.gid()), (70000, 80000));
    assert_eq!(meta(Case::BlockDevice).rdev(), rustix::fs::makedev(259, 70000));
    for (case, mode) in [
        (Case::Setuid, 0o4755),
        (Case::Setgid, 0o2755),
        (Case::SetgidDir, 0o2775),
        (Case::StickyDir, 0o1777),
        (Case::ModeZero, 0),
    ] {
        assert_eq!(meta(case).permissions().mode() & 0o7777, mode, "{case:?}");
    }
    assert_eq!(cases.path(Case::NonUtf8Name).file_name().unwrap().as_bytes(), b"caf\xe9");
    assert_eq!(cases.path(Case::LongName).file_name().unwrap().len(), 255);
    assert!(cases.path(Case::DeepNesting).components().count() > 32);
    for rel in walk(&src) {
        let m = std::fs::symlink_metadata(src.join(&rel)).unwrap();
        assert_ne!(m.mtime_nsec() % 1000, 0, "{} mtime has no nanoseconds", rel.display());
    }
    let trusted = rustix::fs::lgetxattr(at(Case::TrustedXattr), "trusted.p2c.secret", &mut [0u8; 64][..]);
    assert_eq!(trusted.unwrap(), 9);
    let acl = run_cmd(Command::new("getfacl").arg("-pn").arg(at(Case::PosixAcl))).unwrap();
    assert!(acl.contains("user:70000:rwx"), "{acl}");
    use std::os::unix::fs::FileTypeExt;
    assert!(meta(Case::Socket).file_type().is_socket());
    assert!(meta(Case::Fifo).file_type().is_fifo());
    assert_eq!(std::fs::read_dir(at(Case::EmptyDir)).unwrap().count(), 0);
    // Every case is there.
    let all = [
        Case::EmptyFile,
        Case::OneByteFile,
        Case::File64KiB,
        Case::LargeFile,
        Case::SparseHoles,
        Case::SparseTailHole,
        Case::HardLink,
        Case::SymlinkRelative,
        Case::SymlinkAbsolute,
        Case::SymlinkDangling,
        Case::SymlinkToDir,
        Case::SymlinkNonUtf8Target,
        Case::SymlinkOwned,
        Case::Fifo,
        Case::CharDevice,
        Case::BlockDevice,
        Case::HighIds,
        Case::UnnamedIds,
        Case::Setuid,
        Case::Setgid,
        Case::SetgidDir,
        Case::StickyDir,
        Case::ModeZero,
        Case::NonUtf8Name,
        Case::LongName,
        Case::DeepNesting,
        Case::OddCharacters,
        Case::UserXattr,
        Case::TrustedXattr,
        Case::PosixAcl,
        Case::DefaultAcl,
        Case::EmptyDir,
        Case::Socket,
    ];
    assert_eq!(cases.cases(), all.into_iter().collect());
}

fn walk(root: &Path) -> Vec<PathBuf> {
    p2c_tests::fixtures::walk_tree(root).unwrap()
}

#[test]
fn cp_a_copy_has_no_differences() {
    require_root!();
    let (tmp, src, cases) = source();
    let dst = tmp.path().join("dst");
    cp_a(&src, &dst);
    assert_trees_equal(&src, &dst, &skip_sockets(&cases));
}

#[test]
fn rsync_copy_has_no_differences_but_fills_holes_without_sparse() {
    require_root!();
    let (tmp, src, cases) = source();
    let opts = skip_sockets(&cases);
    let exact = tmp.path().join("exact");
    let dense = tmp.path().join("dense");
    let rsync = |extra: &[&str], dst: &Path| {
        let mut src_arg = src.as_os_str().to_owned();
        src_arg.push("/");
        run_cmd(Command::new("rsync").args(["-aHAX", "--numeric-ids"]).args(extra).arg(&src_arg).arg(dst))
            .unwrap()
    };
    rsync(&["--sparse"], &exact);
    assert_trees_equal(&src, &exact, &opts);
    rsync(&[], &dense);
    let diffs = compare_trees(&src, &dense, &opts);
    let kinds: BTreeSet<(PathBuf, &str)> = diffs.iter().map(|d| (d.path.clone(), d.kind.name())).collect();
    let expected: BTreeSet<(PathBuf, &str)> = [Case::SparseHoles, Case::SparseTailHole]
        .into_iter()
        .map(|c| (cases.path(c).to_owned(), "allocation"))
        .collect();
    assert_eq!(kinds, expected, "{diffs:#?}");
}

/// The source on ext4, the copy on btrfs (as on a node with qgroups): allocation and
/// everything else still match exactly.
#[test]
fn copy_across_file_systems_has_no_differences() {
    require_root!();
    trace_init();
    let ext4 = LoopFs::new(FsKind::Ext4, 64 << 20, "").unwrap();
    let btrfs = LoopFs::new(FsKind::Btrfs, 256 << 20, "").unwrap();
    let src = ext4.path().join("src");
    let cases = build_every_case_tree(&src).unwrap();
    let dst = btrfs.path().join("dst");
    cp_a(&src, &dst);
    assert_trees_equal(&src, &dst, &skip_sockets(&cases));
}

/// Sets the mtime of `dst/rel` back to that of `src/rel` (a mutation's side effect on it, or on
/// its parent directory, would otherwise be reported too).
fn restore_mtime(src: &Path, dst: &Path, rel: &Path) {
    let m = std::fs::symlink_metadata(src.join(rel)).unwrap();
    let t = Timespec { tv_sec: m.mtime(), tv_nsec: m.mtime_nsec() };
    let times = Timestamps { last_access: t, last_modification: t };
    rustix::fs::utimensat(CWD, dst.join(rel), &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

/// The differences a test expects after changing a copy, and every path it changed.
struct Changes {
    dst: PathBuf,
    expected: BTreeSet<(PathBuf, &'static str)>,
    touched: Vec<PathBuf>,
}

impl Changes {
    /// Records that changing `rel` must show as `kinds`; returns its path in the copy.
    fn expect(&mut self, rel: &Path, kinds: &[&'static str]) -> PathBuf {
        self.expected.extend(kinds.iter().map(|k| (rel.to_owned(), *k)));
        self.touched.push(rel.to_owned());
        self.dst.join(rel)
    }
}

/// Makes one change of each kind to a faithful copy and checks that the comparator reports
/// exactly those changes: it can fail, and it fails for the right reason at the right path.
#[test]
fn comparator_reports_each_kind_of_change() {
    require_root!();
    let (tmp, src, cases) = source();
    let dst = tmp.path().join("dst");
    cp_a(&src, &dst);
    let opts = skip_sockets(&cases);
    assert_eq!(compare_trees(&src, &dst, &opts), vec![]);

    let mut changes = Changes { dst: dst.clone(), expected: BTreeSet::new(), touched: Vec::new() };

    // A content byte, size and mtime kept.
    let path = changes.expect(cases.path(Case::File64KiB), &["content"]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1000] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    // Size.
    let path = changes.expect(cases.path(Case::LargeFile), &["size"]);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::File::options().write(true).open(&path).unwrap().set_len(len - 1).unwrap();
    // Mode: setuid dropped.
    let path = changes.expect(cases.path(Case::Setuid), &["mode"]);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Owner.
    let path = changes.expect(cases.path(Case::HighIds), &["uid", "gid"]);
    std::os::unix::fs::lchown(&path, Some(0), Some(0)).unwrap();
    // Mtime, one nanosecond later.
    let path = changes.expect(cases.path(Case::OneByteFile), &["mtime"]);
    let m = std::fs::metadata(&path).unwrap();
    let t = Timespec { tv_sec: m.mtime(), tv_nsec: m.mtime_nsec() + 1 };
    rustix::fs::utimensat(CWD, &path, &Timestamps { last_access: t, last_modification: t }, AtFlags::empty())
        .unwrap();
    // Symlink target.
    let path = changes.expect(cases.path(Case::SymlinkRelative), &["symlink-target"]);
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink("../files/64k", &path).unwrap();
    // A hard link broken: same content, own inode.
    let path = changes.expect(cases.path(Case::HardLink), &["hard-links"]);
    let second = cases.paths(Case::HardLink)[1];
    changes.touched.push(second.to_owned());
    let (second, tmp_copy) = (dst.join(second), dst.join("links/tmp"));
    cp_a(&second, &tmp_copy);
    std::fs::rename(&tmp_copy, &second).unwrap();
    assert!(path.exists());
    // A hole filled: same bytes, all allocated.
    let path = changes.expect(cases.path(Case::SparseHoles), &["allocation"]);
    let dense = dst.join("sparse/tmp");
    run_cmd(Command::new("cp").args(["-a", "--sparse=never"]).arg(&path).arg(&dense)).unwrap();
    std::fs::rename(&dense, &path).unwrap();
    // A file missing, a file extra.
    let path = changes.expect(cases.path(Case::EmptyFile), &["missing"]);
    std::fs::remove_file(&path).unwrap();
    std::fs::write(dst.join("names/extra"), b"x").unwrap();
    changes.expect(Path::new("names/extra"), &["extra"]);
    // Extended attribute and ACL values.
    let path = changes.expect(cases.path(Case::TrustedXattr), &["xattr"]);
    rustix::fs::lsetxattr(&path, "trusted.p2c.secret", b"changed", XattrFlags::empty()).unwrap();
    let path = changes.expect(cases.path(Case::UserXattr), &["xattr"]);
    rustix::fs::lremovexattr(&path, "user.p2c.binary").unwrap();
    let path = changes.expect(cases.path(Case::PosixAcl), &["xattr"]);
    run_cmd(Command::new("setfacl").args(["-n", "-m", "u:70000:r--"]).arg(&path)).unwrap();
    // Device numbers.
    let path = changes.expect(cases.path(Case::CharDevice), &["device"]);
    std::fs::remove_file(&path).unwrap();
    let dev = rustix::fs::makedev(1, 5);
    let mode = rustix::fs::Mode::from_raw_mode(0o640);
    rustix::fs::mknodat(CWD, &path, rustix::fs::FileType::CharacterDevice, mode, dev).unwrap();
    // File type: the fifo became a regular file.
    let path = changes.expect(cases.path(Case::Fifo), &["file-type"]);
    std::fs::remove_file(&path).unwrap();
    std::fs::File::create(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();

    // Side effects on times: put back those of every touched entry (unless the time is the
    // change) and of its parent directory.
    let Changes { expected, touched, .. } = changes;
    for rel in &touched {
        let mtime_is_the_change = expected.contains(&(rel.clone(), "mtime"));
        let parent = rel.parent().unwrap().to_owned();
        restore_mtime(&src, &dst, &parent);
        if !mtime_is_the_change
            && src.join(rel).symlink_metadata().is_ok()
            && dst.join(rel).symlink_metadata().is_ok()
        {
            restore_mtime(&src, &dst, rel);
        }
    }

    let diffs = compare_trees(&src, &dst, &opts);
    let found: BTreeSet<(PathBuf, &str)> = diffs.iter().map(|d| (d.path.clone(), d.kind.name())).collect();
    let shown: Vec<String> = diffs.iter().map(ToString::to_string).collect();
    assert_eq!(found, expected, "reported:\n{}", shown.join("\n"));

    // The reports carry the values a reader needs.
    let find = |rel: &Path, name: &str| {
        diffs.iter().find(|d| d.path == rel && d.kind.name() == name).unwrap().kind.clone()
    };
    assert_eq!(find(cases.path(Case::Setuid), "mode"), DiffKind::Mode(0o4755, 0o755));
    assert_eq!(find(cases.path(Case::HighIds), "uid"), DiffKind::Uid(70000, 0));
    assert_eq!(find(cases.path(Case::CharDevice), "device"), DiffKind::Device((1, 3), (1, 5)));
    assert_eq!(
        find(cases.path(Case::Fifo), "file-type"),
        DiffKind::FileType(FileKind::Fifo, FileKind::Regular)
    );
    let removed = find(cases.path(Case::UserXattr), "xattr");
    assert!(
        matches!(&removed, DiffKind::Xattr { name, copy: None, .. } if name == b"user.p2c.binary"),
        "{removed:?}"
    );
    let DiffKind::HardLinks(src_group, copy_group) = find(cases.path(Case::HardLink), "hard-links") else {
        unreachable!()
    };
    assert_eq!(src_group.len(), 3);
    assert_eq!(copy_group.len(), 2);
}

/// Options narrow the comparison: excluded paths, ignored xattrs, allocation tolerance, root.
#[test]
fn options_exclude_and_tolerate() {
    require_root!();
    let (tmp, src, cases) = source();
    let dst = tmp.path().join("dst");
    cp_a(&src, &dst);
    // Without the exclusion, a missing socket is reported.
    std::fs::remove_file(dst.join(cases.path(Case::Socket))).unwrap();
    restore_mtime(&src, &dst, Path::new("special"));
    let diffs = compare_trees(&src, &dst, &CompareOptions::default());
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert_eq!((diffs[0].path.as_path(), &diffs[0].kind), (cases.path(Case::Socket), &DiffKind::Missing));
    let opts = skip_sockets(&cases);
    assert_eq!(compare_trees(&src, &dst, &opts), vec![]);

    // A changed user xattr and a removed directory, then the options that hide them.
    let user = dst.join(cases.path(Case::UserXattr));
    rustix::fs::lsetxattr(&user, "user.p2c.comment", b"other", XattrFlags::empty()).unwrap();
    std::fs::remove_dir_all(dst.join("deep")).unwrap();
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o711)).unwrap();
    let diffs = compare_trees(&src, &dst, &opts);
    let found: Vec<(String, &str)> =
        diffs.iter().map(|d| (p2c_tests::fixtures::escape_path(&d.path), d.kind.name())).collect();
    // Only the top of the removed subtree is reported; the root's own mtime and mode changed.
    assert_eq!(
        found,
        vec![
            (".".to_owned(), "mode"),
            (".".to_owned(), "mtime"),
            ("deep".to_owned(), "missing"),
            ("xattrs/user".to_owned(), "xattr")
        ]
    );
    let opts = opts.exclude("deep").ignore_xattr("user.");
    let opts = CompareOptions { ignore_root: true, ..opts };
    assert_eq!(compare_trees(&src, &dst, &opts), vec![]);
    let exact_name = CompareOptions { ignore_xattrs: vec!["user.p2c.comment".into()], ..opts.clone() };
    assert_eq!(compare_trees(&src, &dst, &exact_name), vec![]);
    let all = CompareOptions { ignore_xattrs: vec![], ignore_all_xattrs: true, ..opts.clone() };
    assert_eq!(compare_trees(&src, &dst, &all), vec![]);

    // A filled hole within the tolerance passes; beyond it, it does not.
    let rel = cases.path(Case::SparseTailHole);
    let path = dst.join(rel);
    let before = std::fs::metadata(&path).unwrap().blocks();
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0u8; 8192], 1 << 20).unwrap();
    drop(f);
    restore_mtime(&src, &dst, rel);
    let grown = (std::fs::metadata(&path).unwrap().blocks() - before) * 512;
    assert!(grown >= 8192);
    let diffs = compare_trees(&src, &dst, &opts);
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert_eq!(diffs[0].kind.name(), "allocation");
    let tolerant = CompareOptions { alloc_tolerance: grown, ..opts };
    assert_eq!(compare_trees(&src, &dst, &tolerant), vec![]);
}

/// Differences print readably, non-UTF-8 and control bytes escaped.
#[test]
fn differences_print_escaped_paths() {
    let d = p2c_tests::fixtures::Difference {
        path: PathBuf::from(OsStr::from_bytes(b"names/caf\xe9/new\nline")),
        kind: DiffKind::Mode(0o4755, 0o755),
    };
    assert_eq!(d.to_string(), "names/caf\\xe9/new\\nline: mode 4755 != 0755");
}
