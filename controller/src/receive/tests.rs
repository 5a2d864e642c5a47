use super::*;
use crate::receive::testing::job;

fn keys(paths: &[&str]) -> Vec<Vec<u8>> {
    paths.iter().map(|p| RelPath::new(p.as_bytes().to_vec()).unwrap().walk_key()).collect()
}

#[test]
fn walk_keys_nest_as_paths_do() {
    let [root, a, ab, abc, a_b] = [&[][..], b"a", b"a\0b", b"a\0b\0c", b"a-b"];
    assert!(key_under(a, root) && key_under(abc, a) && key_under(abc, ab));
    assert!(!key_under(a, a) && !key_under(a_b, a) && !key_under(root, root));
    assert_eq!((parent_key(abc), parent_key(a), parent_key(root)), (Some(ab), Some(root), None));
    let outer = outermost(keys(&["a/b/c", "z", "a/b", "a-b", "a/b"]));
    assert_eq!(outer, keys(&["a/b", "a-b", "z"]));
    assert!(
        in_any(&outer, b"a\0b\0c\0d")
            && in_any(&outer, b"z")
            && !in_any(&outer, b"a")
            && !in_any(&outer, b"a\0c")
    );
}

#[test]
fn a_listing_speaks_for_its_directories_their_children_and_new_subtrees() {
    let mut j = job(1);
    j.changes_offered = Some((4, "/m".into()));
    let (dirs, subtrees) = (vec![b"etc".to_vec()], vec![b"srv/www".to_vec()]);
    let l = Listing { since: Some(4), changed_dirs: &dirs, new_subtrees: &subtrees };
    let c = Changes::from_listing(&j, &l).unwrap().unwrap();
    assert_eq!((c.base, c.base_manifest.as_path()), (4, std::path::Path::new("/m")));
    for covered in ["etc", "etc/motd", "srv/www", "srv/www/a/b"] {
        assert!(c.covers(&keys(&[covered])[0]), "{covered}");
    }
    for outside in ["", "etc/ssh/sshd_config", "srv", "usr"] {
        assert!(!c.covers(&keys(&[outside])[0]), "{outside}");
    }
}

#[test]
fn a_listing_must_be_what_was_offered() {
    let mut j = job(1);
    let dirs = [b"etc".to_vec()];
    let everything = Listing { changed_dirs: &dirs, ..Listing::default() };
    assert_eq!(
        Changes::from_listing(&j, &everything).unwrap_err(),
        "changed directories sent for a pass that walks everything"
    );
    assert!(Changes::from_listing(&j, &Listing::default()).unwrap().is_none());
    let since = |n| Listing { since: Some(n), changed_dirs: &dirs, new_subtrees: &[] };
    assert_eq!(Changes::from_listing(&j, &since(7)).unwrap_err(), "changes since pass 7 were not offered");
    j.changes_offered = Some((6, "/m".into()));
    assert_eq!(Changes::from_listing(&j, &since(7)).unwrap_err(), "changes since pass 6 were offered, not 7");
    let bad = [b"../x".to_vec()];
    let l = Listing { since: Some(6), changed_dirs: &bad, new_subtrees: &[] };
    assert!(Changes::from_listing(&j, &l).unwrap_err().contains("'..'"));
}

#[test]
fn pass_errors_name_their_peer() {
    let invalid = PassError::from(&protocol("batch 3 out of sequence (expected 2)"));
    assert_eq!(invalid.to_string(), "agent sent an invalid stream: batch 3 out of sequence (expected 2)");
    assert_eq!(
        invalid.describe("the bundle"),
        "the bundle sent an invalid stream: batch 3 out of sequence (expected 2)"
    );
    let other = PassError::from(&ReceiveError::Internal("the writer stopped".into()));
    assert_eq!(other, PassError::Other("receive pipeline stopped: the writer stopped".into()));
    assert_eq!(other.describe("the bundle"), other.to_string());
}
