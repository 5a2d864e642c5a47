use std::sync::Arc;

use p2c_common::migration::{MigrateOptions, MigrationState};

use super::*;

fn setup() -> (tempfile::TempDir, Store, Registry) {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(&d.path().join("state.db")).unwrap();
    (d, store, Registry::default())
}

fn claim<'a>(d: &tempfile::TempDir, store: &'a Store, ctid: u32) -> Claim<'a> {
    Claim {
        store,
        private_dir: d.path().join(format!("private/{ctid}")),
        conf_path: d.path().join(format!("conf/{ctid}.conf")),
    }
}

fn opts(agent: &str, ctid: u32) -> MigrateOptions {
    MigrateOptions { agent: agent.into(), ctid, ..Default::default() }
}

#[test]
fn the_allowed_moves() {
    use Phase::*;
    let synced = Synced { aborted: None };
    let failed = Failed { error: "x".into() };
    let all = [Copying, synced.clone(), CuttingOver, Finalising, Done, failed.clone()];
    let allowed: Vec<(MigrationState, MigrationState)> = all
        .iter()
        .flat_map(|a| all.iter().map(move |b| (a, b)))
        .filter(|(a, b)| a.may_become(b))
        .map(|(a, b)| (a.state(), b.state()))
        .collect();
    use MigrationState as S;
    assert_eq!(
        allowed,
        [
            (S::Copying, S::Synced),
            (S::Copying, S::CuttingOver),
            (S::Copying, S::Finalising),
            (S::Copying, S::Failed),
            (S::Synced, S::CuttingOver),
            (S::CuttingOver, S::Synced),
            (S::CuttingOver, S::Finalising),
            (S::CuttingOver, S::Failed),
            (S::Finalising, S::Done),
            (S::Finalising, S::Failed),
        ]
    );
}

#[test]
fn a_move_is_recorded_in_the_store_with_the_summary() {
    let (d, store, reg) = setup();
    let h = reg.begin(claim(&d, &store, 101), opts("web01", 101)).unwrap();
    assert_eq!(store.migration(101).unwrap().unwrap().state, MigrationState::Copying);
    let mut sub = h.subscribe();
    reg.transition(&store, &h, Phase::Synced { aborted: None }).unwrap();
    let row = store.migration(101).unwrap().unwrap();
    assert_eq!(row.state, MigrationState::Synced);
    assert_eq!(row.summary.unwrap().state, MigrationState::Synced);
    // Watchers learn the summary once the migration is idle.
    assert!(matches!(sub.try_recv(), Ok(Event::Summary(s)) if s.state == MigrationState::Synced));
}

#[test]
fn of_two_cutovers_one_moves_and_the_other_is_refused() {
    let (d, store, reg) = setup();
    let h = reg.begin(claim(&d, &store, 7), opts("web01", 7)).unwrap();
    reg.transition(&store, &h, Phase::Synced { aborted: None }).unwrap();
    let (reg, store) = (Arc::new(reg), Arc::new(store));
    let results: Vec<_> = (0..8)
        .map(|_| {
            let (reg, store, h) = (reg.clone(), store.clone(), h.clone());
            std::thread::spawn(move || reg.transition(&store, &h, Phase::CuttingOver))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    let refusal = results.into_iter().find_map(Result::err).unwrap().to_string();
    assert_eq!(refusal, "CT 7 is cutting-over: a cutover already runs; watch it with `p2c status --watch`");
}

#[test]
fn of_two_beginnings_of_one_ctid_one_begins() {
    let (d, store, reg) = setup();
    let _first = reg.begin(claim(&d, &store, 9), opts("web01", 9)).unwrap();
    let e = reg.begin(claim(&d, &store, 9), opts("web01", 9)).err().unwrap();
    assert!(matches!(e, BeginError::Running(9, "copying")), "{e}");
    // Another agent cannot take over a CTID that has a migration.
    let h = reg.get(9).unwrap();
    reg.transition(&store, &h, Phase::Failed { error: "boom".into() }).unwrap();
    let e = reg.begin(claim(&d, &store, 9), opts("db01", 9)).err().unwrap();
    assert_eq!(
        e.to_string(),
        "CT 9 is the migration of agent web01; use another --ctid or `p2c discard 9` first"
    );
    // The same agent resumes a failed one, with its error cleared.
    let again = reg.begin(claim(&d, &store, 9), opts("web01", 9)).unwrap();
    assert_eq!((again.state(), again.summary().error), (MigrationState::Copying, None));
}

#[test]
fn a_new_ctid_whose_private_area_exists_is_refused() {
    let (d, store, reg) = setup();
    std::fs::create_dir_all(d.path().join("private/5")).unwrap();
    let e = reg.begin(claim(&d, &store, 5), opts("web01", 5)).err().unwrap();
    assert!(matches!(e, BeginError::Occupied(ref p) if p.ends_with("private/5")), "{e}");
    assert!(store.migration(5).unwrap().is_none());
}

#[test]
fn a_failed_record_refuses_the_move_and_keeps_the_phase() {
    let (d, store, reg) = setup();
    let h = reg.begin(claim(&d, &store, 3), opts("web01", 3)).unwrap();
    store.delete_migration(3).unwrap();
    let e = reg.transition(&store, &h, Phase::Synced { aborted: None }).unwrap_err();
    assert!(e.to_string().starts_with("cannot record the state of CT 3"), "{e}");
    assert_eq!(h.state(), MigrationState::Copying);
    // A stop is a stop even when it cannot be recorded.
    assert!(reg.transition(&store, &h, Phase::Failed { error: "x".into() }).is_err());
    assert_eq!(h.state(), MigrationState::Failed);
}

#[test]
fn forgetting_a_running_migration_is_refused() {
    let (d, store, reg) = setup();
    let h = reg.begin(claim(&d, &store, 4), opts("web01", 4)).unwrap();
    assert_eq!(reg.forget(4), Err(MigrationState::Copying));
    reg.transition(&store, &h, Phase::Failed { error: "x".into() }).unwrap();
    assert_eq!(reg.forget(4), Ok(()));
    assert!(reg.get(4).is_none());
}
