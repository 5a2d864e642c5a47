//! What the wave tests share: checking a container against its source.

use std::path::{Path, PathBuf};

use p2c_common::migration::{MigrationState, MigrationSummary};
use p2c_tests::fixtures::{CompareOptions, DiffKind, compare_trees};
use p2c_tests::node::rewritten;

/// The container tree `private` holds exactly the source tree `src`, except the files the
/// guest rewrite changed on purpose (listed in the summary), its backups, the times of the
/// directories it wrote into, and the `excluded` paths the migration did not copy.
pub fn assert_container_matches(src: &Path, private: &Path, s: &MigrationSummary, excluded: &[&str]) {
    let changed = rewritten(s);
    let parents: Vec<PathBuf> =
        changed.iter().flat_map(|p| p.ancestors().skip(1).map(Path::to_path_buf)).collect();
    let opts = changed
        .iter()
        .fold(CompareOptions { ignore_root: true, ..Default::default() }, |o, p| o.exclude(p))
        .exclude("etc/p2c");
    let opts = excluded.iter().fold(opts, |o, p| o.exclude(p));
    let diffs: Vec<String> = compare_trees(src, private, &opts)
        .into_iter()
        .filter(|d| !(matches!(d.kind, DiffKind::Mtime(..)) && parents.contains(&d.path)))
        .map(|d| format!("  {d}"))
        .collect();
    assert!(
        diffs.is_empty(),
        "CT {} differs from its source {} in {} ways:\n{}",
        s.ctid,
        src.display(),
        diffs.len(),
        diffs.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// The migration finished with a verified container.
pub fn assert_done(s: &MigrationSummary) {
    assert_eq!(s.state, MigrationState::Done, "CT {} from {}: {:?}", s.ctid, s.agent, s.error);
    let v = s.verify.as_ref().expect("a finished migration is verified");
    assert!(v.ok, "CT {} verification: {:?}", s.ctid, v.mismatches);
}
