use std::collections::HashSet;

use p2c_common::migration::Layout;

use super::*;

fn known(names: &[&str]) -> HashSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_example_plan_parses_and_takes_its_defaults() {
    let text = include_str!("../../../deploy/examples/wave.toml");
    let plan = Plan::parse(text, "wave.toml", Some(&known(&["web01", "web02", "db01"]))).unwrap();
    assert_eq!(plan.max_parallel, 3);
    let m: Vec<_> = plan.migrations.iter().map(|m| (m.agent.as_str(), m.ctid)).collect();
    assert_eq!(m, [("web01", 101), ("web02", 102), ("db01", 110)]);
    let (web01, web02, db01) = (&plan.migrations[0], &plan.migrations[1], &plan.migrations[2]);
    assert!(web01.cutover && !web02.cutover && !db01.cutover);
    assert_eq!(web01.assess.quota_partition.as_deref(), Some("/home"));
    assert_eq!(web01.stop_services, ["nginx", "php8.2-fpm"]);
    assert_eq!((web01.bwlimit, db01.bwlimit), (50 << 20, 20 << 20));
    assert_eq!(web02.assess.excludes, ["/tmp", "/var/tmp", "/var/cache/apt/archives", "/srv/www/cache"]);
    assert_eq!(web01.assess.ctid, Some(101));
    assert_eq!((db01.layout, db01.pre_cutover_hook.as_deref()), (Layout::Ploop, Some("sync")));
    assert_eq!(web01.max_passes, 5);
    // A server's target is its own; the others take the node's (None here).
    assert_eq!((db01.target, db01.assess.target), (Some(p2c_common::migration::Target::Vz7), db01.target));
    assert_eq!((web01.target, web02.target), (None, None));
}

#[test]
fn a_target_that_is_no_platform_is_refused() {
    let text = "[[server]]\nagent = \"web01\"\nctid = 101\ntarget = \"vz8\"\n";
    let err = Plan::parse(text, "wave.toml", None).unwrap_err().to_string();
    assert!(err.contains("vz8") && err.contains("vz9"), "{err}");
}

#[test]
fn every_problem_is_listed_at_once() {
    let text = r#"
max_parallel = 0
[defaults]
bwlimit = "fast"
[[server]]
agent = "web01"
ctid = 101
[[server]]
agent = "web01"
ctid = 101
stop_services = ["nginx; rm -rf /"]
[[server]]
agent = "ghost"
ctid = 0
quota_partition = "home"
excludes = ["../etc"]
"#;
    let err = Plan::parse(text, "w.toml", Some(&known(&["web01"]))).unwrap_err().to_string();
    for want in [
        "plan w.toml has 9 problem(s); nothing was started",
        "max_parallel must be at least 1",
        "[defaults]: bwlimit \"fast\" is not a size",
        "server 2 (agent \"web01\", CT 101): agent web01 is already server 1",
        "server 2 (agent \"web01\", CT 101): CT 101 is already server 1",
        "stop_services: service name \"nginx; rm -rf /\"",
        "server 3 (agent \"ghost\", CT 0): agent ghost is not enrolled on this node",
        "server 3 (agent \"ghost\", CT 0): ctid must be a positive number",
        "quota_partition \"home\" must be an absolute mount point",
        "exclude \"../etc\"",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn unknown_keys_and_an_empty_plan_are_refused() {
    let err = Plan::parse("[[server]]\nagent = \"a\"\nctid = 1\nctdi = 2\n", "p", None).unwrap_err();
    assert!(err.to_string().contains("unknown field `ctdi`"), "{err}");
    let err = Plan::parse("[defaults]\nbwlimt = \"1M\"\n", "p", None).unwrap_err();
    assert!(err.to_string().contains("unknown field `bwlimt`"), "{err}");
    let err = Plan::parse("max_parallel = 2\n", "p", None).unwrap_err();
    assert!(err.to_string().contains("lists no [[server]]"), "{err}");
}

#[test]
fn without_max_parallel_all_run_at_once_and_servers_override_defaults() {
    let text = r#"
[defaults]
cutover = true
stop_services = ["a"]
[[server]]
agent = "x1"
ctid = 1
[[server]]
agent = "x2"
ctid = 2
cutover = false
stop_services = []
"#;
    let plan = Plan::parse(text, "p", None).unwrap();
    assert_eq!(plan.max_parallel, 2);
    assert!(plan.migrations[0].cutover && !plan.migrations[1].cutover);
    assert_eq!(plan.migrations[0].stop_services, ["a"]);
    assert!(plan.migrations[1].stop_services.is_empty());
}

#[test]
fn a_missing_file_is_named() {
    let err = Plan::load(std::path::Path::new("/nonexistent/wave.toml"), None).unwrap_err();
    assert!(err.to_string().starts_with("cannot read the plan /nonexistent/wave.toml"), "{err}");
}
