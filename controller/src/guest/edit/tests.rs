use std::os::unix::fs::{FileTypeExt, MetadataExt};

use super::*;
use crate::guest::tests::Fixture;

#[test]
fn write_backs_up_once_and_keeps_mode_and_owner() {
    let f = Fixture::new();
    f.file_mode("etc/conf", "original\n", 0o640);
    let tree = f.tree();
    let p = rel("etc/conf");

    let mut ed = Editor::open(&tree).unwrap();
    ed.write(&p, "new\n", 0o644, "why").unwrap();
    assert_eq!(f.read("etc/conf"), "new\n");
    assert_eq!(f.mode("etc/conf"), 0o640);
    assert_eq!(f.read("etc/p2c/backup/etc/conf"), "original\n");
    assert_eq!(f.mode("etc/p2c/backup/etc/conf"), 0o640);
    assert_eq!(f.mode("etc/p2c"), 0o700);
    let first = ed.finish().unwrap();
    assert_eq!(
        first,
        [GuestChange {
            path: "/etc/conf".into(),
            action: "rewritten".into(),
            backup: Some("/etc/p2c/backup/etc/conf".into()),
            reason: "why".into(),
        }]
    );

    // Same content again: the first run's record, nothing written.
    let mut ed = Editor::open(&tree).unwrap();
    ed.write(&p, "new\n", 0o644, "other reason").unwrap();
    assert_eq!(ed.finish().unwrap(), first);

    // Different content (say other addresses): the backup stays the original.
    let mut ed = Editor::open(&tree).unwrap();
    ed.write(&p, "newer\n", 0o644, "why").unwrap();
    ed.finish().unwrap();
    assert_eq!(f.read("etc/p2c/backup/etc/conf"), "original\n");
}

#[test]
fn generated_files_are_not_originals() {
    let f = Fixture::new();
    let tree = f.tree();
    let p = rel("etc/gen");
    let mut ed = Editor::open(&tree).unwrap();
    ed.write(&p, &format!("# {MARKER}\nv1\n"), 0o600, "made").unwrap();
    ed.write(&p, &format!("# {MARKER}\nv2\n"), 0o600, "made").unwrap();
    assert!(!f.exists("etc/p2c/backup/etc/gen"));
    assert_eq!(f.mode("etc/gen"), 0o600);
    let c = ed.finish().unwrap();
    assert_eq!((c[0].action.as_str(), c[0].backup.as_deref()), ("created", None));
    assert_eq!(c.len(), 1);
}

#[test]
fn remove_rename_symlink_and_ghost_entries() {
    let f = Fixture::new();
    f.file("etc/a.d/gone", "x\n");
    f.link("etc/a.d/S01x", "../init.d/x");
    f.link("etc/link", "old-target");
    let tree = f.tree();
    let mut ed = Editor::open(&tree).unwrap();
    ed.remove(&rel("etc/a.d/gone"), "r").unwrap();
    ed.rename(&rel("etc/a.d/S01x"), &rel("etc/a.d/K99x"), "d").unwrap();
    ed.symlink(&rel("etc/link"), "/dev/null", Action::Disabled, "m").unwrap();
    ed.symlink(&rel("etc/new"), "/proc/mounts", Action::Created, "c").unwrap();
    let first = ed.finish().unwrap();
    let actions: Vec<(&str, &str)> = first.iter().map(|c| (c.path.as_str(), c.action.as_str())).collect();
    assert_eq!(
        actions,
        [
            ("/etc/a.d/gone", "removed"),
            ("/etc/a.d/S01x", "disabled"),
            ("/etc/link", "disabled"),
            ("/etc/new", "created"),
        ]
    );
    assert_eq!(f.read("etc/p2c/backup/etc/a.d/gone"), "x\n");
    assert_eq!(f.readlink("etc/p2c/backup/etc/a.d/S01x"), "../init.d/x");
    assert_eq!(f.readlink("etc/p2c/backup/etc/link"), "old-target");
    assert_eq!(f.readlink("etc/link"), "/dev/null");

    // The next run sees what the first one took away.
    let mut ed = Editor::open(&tree).unwrap();
    let names: Vec<(String, bool)> =
        ed.entries("etc/a.d").unwrap().into_iter().map(|e| (e.name, e.kind.is_some())).collect();
    assert_eq!(names, [("K99x".to_string(), true), ("S01x".to_string(), false), ("gone".to_string(), false)]);
    ed.remove(&rel("etc/a.d/gone"), "").unwrap();
    ed.rename(&rel("etc/a.d/S01x"), &rel("etc/a.d/K99x"), "").unwrap();
    ed.symlink(&rel("etc/link"), "/dev/null", Action::Disabled, "").unwrap();
    ed.symlink(&rel("etc/new"), "/proc/mounts", Action::Created, "").unwrap();
    assert_eq!(ed.finish().unwrap(), first);
}

#[test]
fn device_nodes_are_backed_up_as_devices() {
    let f = Fixture::new();
    let tree = f.tree();
    let mut ed = Editor::open(&tree).unwrap();
    ed.char_device(&rel("dev/null"), (1, 5), 0o666, 0, "wrong numbers").unwrap();
    ed.char_device(&rel("dev/null"), (1, 3), 0o666, 0, "right").unwrap();
    let b = std::fs::symlink_metadata(f.path().join("etc/p2c/backup/dev/null")).unwrap();
    assert!(b.file_type().is_char_device());
    assert_eq!(b.rdev(), rustix::fs::makedev(1, 5));
    let c = ed.finish().unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].reason, "right");
}

#[test]
fn a_planted_journal_or_backup_link_changes_nothing_outside() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("victim"), "keep\n").unwrap();
    let victim = outside.path().join("victim").to_string_lossy().into_owned();
    let f = Fixture::new();
    f.file("etc/p2c/changes.json", "not json");
    f.file("etc/fstab", "x\n");
    f.file("var/conf", "v\n");
    // The backup itself planted as a link out, and a backup directory planted as one.
    f.link("etc/p2c/backup/etc/fstab", &victim);
    f.link("etc/p2c/backup/var", &outside.path().to_string_lossy());
    let tree = f.tree();
    let mut ed = Editor::open(&tree).unwrap();
    ed.write(&rel("etc/fstab"), "y\n", 0o644, "r").unwrap();
    ed.write(&rel("var/conf"), "w\n", 0o644, "r").unwrap();
    ed.finish().unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep\n");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
    assert_eq!(f.read("etc/p2c/backup/etc/fstab"), "x\n");
    assert_eq!(f.read("etc/p2c/backup/var/conf"), "v\n");
}
