//! Invariants the build enforces (issue 11): prost and tonic types only in the gRPC adapter
//! modules, no import cycle among the controller's modules, a controller that does not depend on the agent, systemd units that run real
//! binaries with real flags, `deploy/` files named where they exist, and the README's first
//! command. None needs root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use p2c_tests::procs::bin;

/// What marks a use of the wire types.
const WIRE: [&str; 4] = ["p2c_proto::v1", "v1::", "prost::", "tonic::"];

/// Where the scan looks: every `.rs` file below these folders.
const SCANNED: [&str; 3] = ["controller/src", "agent/src", "common/src"];

/// The files allowed to touch prost/tonic types. `common/` has none and must keep none.
const ADAPTERS: &[&str] = &[
    // The agent's one outbound connection: builds the tonic channel over TCP/TLS.
    "agent/src/connect.rs",
    // The Enrollment gRPC client (token and CSR out, certificate in).
    "agent/src/enroll.rs",
    // The bundle writer: a bundle's records are p2c.v1 messages (the format is the proto).
    "agent/src/export/mod.rs",
    // Unit tests of the bundle writer, reading its p2c.v1 records back.
    "agent/src/export/tests.rs",
    // The AgentSession gRPC client: controller commands in, replies out.
    "agent/src/session.rs",
    // The transfer stream: a pass's entries and chunks as v1::TransferUp messages.
    "agent/src/upload.rs",
    // The Admin gRPC service behind the admin socket.
    "controller/src/admin.rs",
    // The Admin gRPC client: the CLI's one door to the daemon, in domain types for the rest.
    "controller/src/cli/client.rs",
    // The Enrollment gRPC service.
    "controller/src/enroll.rs",
    // The bundle's side of a pass: a bundle's records are p2c.v1 messages fed to the receive path.
    "controller/src/import/feed.rs",
    // The receive path's gRPC edge: TransferUp/TransferDown to and from its domain messages,
    // and the on-disk manifest's length-delimited p2c.v1.Entry records.
    "controller/src/receive/wire.rs",
    // The daemon's wiring: the tonic servers over the TLS listener and the admin socket.
    "controller/src/server.rs",
    // The AgentSession gRPC service: one agent's session, commands and replies.
    "controller/src/session.rs",
];

/// The workspace root (the parent of this crate).
fn workspace() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Every `.rs` file below `dir`, as paths relative to the workspace root, sorted.
fn rust_files(root: &Path, dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![root.join(dir)];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("cannot list {}: {e}", d.display())) {
            let path = e.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// The lines of `text` that use a wire type: (line number, line).
fn wire_uses(text: &str) -> Vec<(usize, &str)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| WIRE.iter().any(|w| l.contains(w)))
        .map(|(i, l)| (i + 1, l))
        .collect()
}

/// The files of the scanned folders that use wire types, with their uses.
fn wire_users(root: &Path) -> BTreeMap<String, Vec<String>> {
    let mut users = BTreeMap::new();
    for dir in SCANNED {
        for f in rust_files(root, dir) {
            let text = std::fs::read_to_string(root.join(&f)).unwrap();
            let uses: Vec<String> =
                wire_uses(&text).into_iter().map(|(n, l)| format!("{f}:{n}: {}", l.trim())).collect();
            if !uses.is_empty() {
                users.insert(f, uses);
            }
        }
    }
    users
}

#[test]
fn wire_types_only_in_adapter_modules() {
    let sample = "use p2c_proto::v1;\nlet a = 1;\n#[tonic::async_trait]\nuse prost::Message;\nx: v1::Entry";
    assert_eq!(wire_uses(sample).iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 3, 4, 5]);
    assert!(ADAPTERS.iter().all(|a| !a.starts_with("common/")), "common/ must not touch wire types");

    let users = wire_users(&workspace());
    assert!(users.len() > 10, "the scan found too few files to be looking in the right place: {users:?}");
    let outside: Vec<&String> =
        users.iter().filter(|(f, _)| !ADAPTERS.contains(&f.as_str())).flat_map(|(_, u)| u).collect();
    assert!(
        outside.is_empty(),
        "prost/tonic types used outside the gRPC adapter modules (convert to p2c_common types at the \
         edge, or add the file to ADAPTERS in tests/tests/invariants.rs saying why it is an adapter):\n{}",
        outside.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn adapter_list_has_no_stale_entries() {
    let users = wire_users(&workspace());
    let stale: Vec<&&str> = ADAPTERS.iter().filter(|a| !users.contains_key(**a)).collect();
    assert!(
        stale.is_empty(),
        "these ADAPTERS entries in tests/tests/invariants.rs no longer use prost/tonic types (or are gone): \
         remove them from the list: {stale:?}"
    );
}

/// The names of the dependencies (any kind, any target) of a Cargo.toml that are package `name`.
fn depends_on(manifest: &str, name: &str) -> Vec<String> {
    let doc: toml::Table = toml::from_str(manifest).unwrap();
    let mut tables: Vec<(String, &toml::Table)> = Vec::new();
    let kinds = ["dependencies", "dev-dependencies", "build-dependencies"];
    for k in kinds {
        if let Some(t) = doc.get(k).and_then(toml::Value::as_table) {
            tables.push((k.to_string(), t));
        }
    }
    for (cfg, t) in doc.get("target").and_then(toml::Value::as_table).into_iter().flatten() {
        for k in kinds {
            if let Some(t) = t.get(k).and_then(toml::Value::as_table) {
                tables.push((format!("target.{cfg}.{k}"), t));
            }
        }
    }
    let mut found = Vec::new();
    for (kind, t) in tables {
        for (key, v) in t {
            let package = v.get("package").and_then(toml::Value::as_str).unwrap_or(key);
            if package == name {
                found.push(format!("[{kind}] {key}"));
            }
        }
    }
    found
}

#[test]
fn controller_does_not_depend_on_the_agent() {
    let sample = "[dependencies]\nagent = { package = \"p2c-agent\", path = \"../agent\" }\n\
                  [target.'cfg(unix)'.dev-dependencies]\np2c-agent.workspace = true\n";
    assert_eq!(
        depends_on(sample, "p2c-agent"),
        ["[dependencies] agent", "[target.cfg(unix).dev-dependencies] p2c-agent"]
    );

    let path = workspace().join("controller/Cargo.toml");
    let manifest = std::fs::read_to_string(&path).unwrap();
    let found = depends_on(&manifest, "p2c-agent");
    assert!(
        found.is_empty(),
        "{} depends on p2c-agent ({found:?}): the node's binaries are built without the agent; \
         code that needs both belongs in p2c-demo",
        path.display()
    );
}

/// The names of the workspace's binaries: `[[bin]]` entries, or a package's `src/main.rs`.
fn workspace_bins(root: &Path) -> Vec<String> {
    let ws: toml::Table = toml::from_str(&std::fs::read_to_string(root.join("Cargo.toml")).unwrap()).unwrap();
    let members = ws["workspace"]["members"].as_array().unwrap();
    let mut bins = Vec::new();
    for m in members.iter().filter_map(toml::Value::as_str) {
        let dir = root.join(m);
        let pkg: toml::Table =
            toml::from_str(&std::fs::read_to_string(dir.join("Cargo.toml")).unwrap()).unwrap();
        match pkg.get("bin").and_then(toml::Value::as_array) {
            Some(list) => {
                bins.extend(list.iter().filter_map(|b| b.get("name")?.as_str()).map(str::to_string))
            }
            None if dir.join("src/main.rs").is_file() => {
                bins.extend(pkg["package"]["name"].as_str().map(str::to_string));
            }
            None => {}
        }
    }
    bins
}

/// A systemd unit's `ExecStart=` as argv, with `${VAR}`/`$VAR` from its `Environment=` lines.
fn exec_start(unit: &str) -> Result<Vec<String>, String> {
    let mut section = "";
    let mut env = BTreeMap::new();
    let mut exec = None;
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s;
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("not a section, comment or key=value line: {line:?}"));
        };
        match (section, key.trim()) {
            ("Service", "Environment") => {
                for kv in value.split_whitespace() {
                    let (k, v) =
                        kv.trim_matches('"').split_once('=').ok_or(format!("bad Environment {kv:?}"))?;
                    env.insert(k.to_string(), v.to_string());
                }
            }
            ("Service", "ExecStart") => {
                exec = Some(value.trim().trim_start_matches(['-', '@', ':', '+', '!']))
            }
            _ => {}
        }
    }
    let exec = exec.ok_or("no ExecStart= in [Service]")?;
    exec.split_whitespace()
        .map(|w| {
            let mut w = w.to_string();
            for (k, v) in &env {
                w = w.replace(&format!("${{{k}}}"), v).replace(&format!("${k}"), v);
            }
            if w.contains('$') { Err(format!("{w}: a variable no Environment= line sets")) } else { Ok(w) }
        })
        .collect()
}

/// What is wrong with a unit: its ExecStart must run a binary of this workspace with a
/// subcommand and flags that binary accepts (checked by its own parser: `ARGS... --help`).
fn check_unit(unit: &str, bins: &[String]) -> Result<(), String> {
    let argv = exec_start(unit)?;
    let name = argv.first().and_then(|p| Path::new(p).file_name()).map(|n| n.to_string_lossy().into_owned());
    let name = name.ok_or("ExecStart= is empty")?;
    if !bins.contains(&name) {
        return Err(format!("ExecStart= runs {name}, which is not a binary of this workspace ({bins:?})"));
    }
    let exe = bin(&name).map_err(|e| format!("{e:#}"))?;
    let out = Command::new(&exe).args(&argv[1..]).arg("--help").output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "`{name} {}` is refused by {name}: {}",
            argv[1..].join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

#[test]
fn systemd_units_run_real_binaries_with_real_flags() {
    let root = workspace();
    let bins = workspace_bins(&root);
    for b in ["p2c", "p2c-agent", "p2c-controller"] {
        assert!(bins.iter().any(|x| x == b), "{b} missing from the workspace's binaries {bins:?}");
    }
    let bad_flag = "[Service]\nEnvironment=D=/var/lib/x\nExecStart=/usr/bin/p2c-agent run --state-dir ${D} --no-such-flag\n";
    assert!(check_unit(bad_flag, &bins).unwrap_err().contains("--no-such-flag"));
    let bad_bin = "[Service]\nExecStart=/usr/bin/p2c-daemon serve\n";
    assert!(check_unit(bad_bin, &bins).unwrap_err().contains("p2c-daemon"));
    let unset = "[Service]\nExecStart=/usr/bin/p2c-controller serve --state-dir ${NOPE}\n";
    assert!(check_unit(unset, &bins).unwrap_err().contains("NOPE"));

    let dir = root.join("deploy/systemd");
    let mut units: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "service"))
        .collect();
    units.sort();
    assert!(units.len() >= 2, "expected the agent's and the controller's units in {}", dir.display());
    let problems: Vec<String> = units
        .iter()
        .filter_map(|u| {
            let text = std::fs::read_to_string(u).unwrap();
            check_unit(&text, &bins).err().map(|e| format!("{}: {e}", u.display()))
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The `deploy/...` paths a text names (`../../deploy/x` counts as `deploy/x`).
fn deploy_refs(text: &str) -> Vec<String> {
    let is_path = |c: char| c.is_ascii_alphanumeric() || "_.*/-".contains(c);
    text.split(|c: char| !is_path(c))
        .map(|t| t.trim_start_matches("../").trim_start_matches("./").trim_end_matches(['.', ':']))
        .filter(|t| t.starts_with("deploy/"))
        .map(str::to_string)
        .collect()
}

#[test]
fn deploy_files_named_in_docs_and_sources_exist() {
    assert_eq!(
        deploy_refs("see `deploy/examples/wave.toml`. include_str!(\"../../deploy/a.toml\") /opt/deploy/x"),
        ["deploy/examples/wave.toml", "deploy/a.toml"]
    );
    let root = workspace();
    let mut files: Vec<String> = ["README.md", "CONTRIBUTING.md", "ARCHITECTURE.md", "bench/README.md"]
        .into_iter()
        .map(str::to_string)
        .filter(|f| root.join(f).is_file())
        .collect();
    let members: toml::Table =
        toml::from_str(&std::fs::read_to_string(root.join("Cargo.toml")).unwrap()).unwrap();
    for m in members["workspace"]["members"].as_array().unwrap().iter().filter_map(toml::Value::as_str) {
        files.extend(rust_files(&root, m));
    }
    let this = "tests/tests/invariants.rs";
    let mut missing = Vec::new();
    for f in files.iter().filter(|f| *f != this) {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        for (n, line) in text.lines().enumerate() {
            for r in deploy_refs(line) {
                // A glob (`deploy/systemd/*.service`) names its folder.
                let path = match r.split_once('*') {
                    Some((dir, _)) => root.join(dir),
                    None => root.join(&r),
                };
                if !path.exists() {
                    missing.push(format!("{f}:{}: {r}", n + 1));
                }
            }
        }
    }
    assert!(files.len() > 50, "too few files scanned: {files:?}");
    assert!(missing.is_empty(), "these name deploy/ files that do not exist:\n{}", missing.join("\n"));
}

#[test]
fn readme_first_command_p2c_demo_builds_a_container() {
    p2c_tests::trace_init();
    let work = tempfile::Builder::new().prefix("p2c-demo-invariant").tempdir().unwrap();
    let out =
        Command::new(bin("p2c").unwrap()).args(["demo", "--workdir"]).arg(work.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "p2c demo failed ({}):\n{stderr}", out.status);
    let private = work.path().join("vz/private/101");
    let tree = private.join("fs");
    assert_eq!(std::fs::read_link(private.join(".ve.layout")).unwrap(), std::path::Path::new("4"));
    assert_eq!(std::fs::read_to_string(tree.join("etc/hostname")).unwrap(), "web01\n");
    assert_eq!(
        std::fs::read(tree.join("opt/app/data.bin")).unwrap(),
        std::fs::read(work.path().join("source/opt/app/data.bin")).unwrap()
    );
    let conf = std::fs::read_to_string(work.path().join("etc/vz/conf/101.conf")).unwrap();
    assert!(conf.lines().any(|l| l == "HOSTNAME=\"web01\""), "{conf}");
    assert!(conf.contains("IP_ADDRESS=\"192.0.2.10 2001:db8::10 192.0.2.11 198.51.100.7\""), "{conf}");
    assert!(stderr.contains(&format!("demo: container private area {}", private.display())), "{stderr}");
    // The summary (on stdout) ends with the commands that register and start the container.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    let start = format!("start it with: vzctl register {} 101 && vzctl start 101", private.display());
    assert_eq!(last.trim(), start, "{stdout}");
}

/// The controller's top-level modules each names (`crate::NAME`), outside comments and tests.
fn module_deps(root: &Path) -> BTreeMap<String, std::collections::BTreeSet<String>> {
    let src = root.join("controller/src");
    let mut deps: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for f in rust_files(root, "controller/src") {
        let rel = Path::new(&f).strip_prefix("controller/src").unwrap().to_string_lossy().into_owned();
        let top = rel.split('/').next().unwrap().trim_end_matches(".rs").to_string();
        if matches!(top.as_str(), "lib" | "bin") || rel.ends_with("tests.rs") || rel.contains("/tests/") {
            continue;
        }
        let text = std::fs::read_to_string(src.join(&rel)).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests {").next().unwrap_or_default();
        let entry = deps.entry(top.clone()).or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let name: String =
                    line[i + 7..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                if !name.is_empty() && name != top {
                    entry.insert(name);
                }
            }
        }
    }
    deps
}

/// A cycle in `deps`, if there is one, as the modules on it.
fn find_cycle(deps: &BTreeMap<String, std::collections::BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        deps: &BTreeMap<String, std::collections::BTreeSet<String>>,
        state: &mut BTreeMap<String, bool>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(true) => {
                let from = path.iter().position(|p| p == m).unwrap_or(0);
                let mut cycle = path[from..].to_vec();
                cycle.push(m.to_string());
                return Some(cycle);
            }
            Some(false) => return None,
            None => {}
        }
        state.insert(m.to_string(), true);
        path.push(m.to_string());
        for d in deps.get(m).into_iter().flatten().filter(|d| deps.contains_key(*d)) {
            if let Some(c) = visit(d, deps, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(m.to_string(), false);
        None
    }
    let mut state = BTreeMap::new();
    deps.keys().find_map(|m| visit(m, deps, &mut state, &mut Vec::new()))
}

#[test]
fn no_import_cycle_among_controller_modules() {
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<std::collections::BTreeSet<_>>();
    let sample: BTreeMap<String, _> =
        [("a".to_string(), set(&["b"])), ("b".to_string(), set(&["c"])), ("c".to_string(), set(&["a"]))]
            .into();
    assert_eq!(find_cycle(&sample), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));

    let deps = module_deps(&workspace());
    assert!(deps.len() > 20, "the scan found too few modules: {deps:?}");
    // The bottom of the service layer names no driver or adapter.
    for low in ["context", "migration", "link", "port", "state", "receive"] {
        let above: Vec<_> = deps[low]
            .iter()
            .filter(|d| {
                ["migrate", "cutover", "pass", "online", "import", "session", "admin", "server"]
                    .contains(&d.as_str())
            })
            .collect();
        assert!(above.is_empty(), "controller/src/{low} depends on {above:?}, above it");
    }
    assert_eq!(find_cycle(&deps), None, "an import cycle among controller modules");
}
