use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use p2c_common::services::{ServiceAction, ServiceManager, ServiceStatus};

use super::*;

/// A temp dir holding fake tools and init scripts that log what they are asked into `log`.
struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn new() -> Self {
        let f = Fake { dir: tempfile::tempdir().unwrap() };
        std::fs::create_dir_all(f.init_d()).unwrap();
        f
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn init_d(&self) -> PathBuf {
        self.root().join("etc/init.d")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root().join("log")).unwrap_or_default()
    }

    fn script(&self, path: &Path, body: &str) -> PathBuf {
        std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_path_buf()
    }

    /// An init script that logs `NAME ACTION` (and fails with `exit`).
    fn service(&self, name: &str, exit: i32) {
        let body = format!(
            "echo \"{name} $1\" >> \"$P2C_ROOT/log\"\n[ {exit} -eq 0 ] || echo \"{name}: cannot $1\" >&2\nexit {exit}"
        );
        self.script(&self.init_d().join(name), &body);
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn sysv_scripts_stop_in_order_and_start_in_reverse() {
    let f = Fake::new();
    f.service("db", 0);
    f.service("web", 0);
    let ctl = ServiceControl::for_root(f.root());
    let r = ctl.apply(&names(&["web", "db"]), ServiceAction::Stop).await;
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.done(), ["web", "db"]);
    assert!(r.services.iter().all(|s| s.manager == Some(ServiceManager::Sysv)));
    let r = ctl.apply(&names(&["web", "db"]), ServiceAction::Start).await;
    assert!(r.ok(), "{r:?}");
    assert_eq!(f.log(), "web stop\ndb stop\ndb start\nweb start\n");
}

#[tokio::test]
async fn an_unknown_service_is_named_and_nothing_is_stopped() {
    let f = Fake::new();
    f.service("web", 0);
    let r =
        ServiceControl::for_root(f.root()).apply(&names(&["web", "nosuch", "-x"]), ServiceAction::Stop).await;
    assert!(!r.ok());
    assert_eq!(r.services[0].status, ServiceStatus::NotAttempted);
    assert_eq!(r.services[1].status, ServiceStatus::Failed);
    assert!(r.services[1].error.as_deref().unwrap().contains("unknown service nosuch"), "{r:?}");
    assert_eq!(r.services[2].status, ServiceStatus::Failed);
    let msg = r.failure_message();
    assert!(msg.contains("nosuch") && msg.contains("-x"), "{msg}");
    assert_eq!(f.log(), "", "nothing may run when a name is unknown");
}

#[tokio::test]
async fn a_failed_stop_ends_the_stopping_and_reports_code_and_output() {
    let f = Fake::new();
    f.service("a", 0);
    f.service("b", 3);
    f.service("c", 0);
    let r = ServiceControl::for_root(f.root()).apply(&names(&["a", "b", "c"]), ServiceAction::Stop).await;
    let st: Vec<_> = r.services.iter().map(|s| s.status).collect();
    assert_eq!(st, [ServiceStatus::Done, ServiceStatus::Failed, ServiceStatus::NotAttempted]);
    let b = &r.services[1];
    assert_eq!(b.exit_code, Some(3));
    let err = b.error.as_deref().unwrap();
    assert!(err.contains("exited with code 3") && err.contains("b: cannot stop"), "{err}");
    assert_eq!(r.done(), ["a"]);
    assert_eq!(f.log(), "a stop\nb stop\n");
    // Starting goes on past a failure: every service gets its chance.
    let r = ServiceControl::for_root(f.root()).apply(&names(&["a", "b", "c"]), ServiceAction::Start).await;
    assert_eq!(r.done(), ["c", "a"]);
}

#[tokio::test]
async fn systemd_is_used_when_it_is_the_init_system() {
    let f = Fake::new();
    f.service("legacy", 0);
    let systemctl = f.script(
        &f.root().join("systemctl"),
        "echo \"systemctl $*\" >> \"$P2C_ROOT/log\"\n\
         if [ \"$1\" = show ]; then case \"$4\" in nginx|legacy) echo loaded;; *) echo not-found;; esac; fi",
    );
    let ctl = ServiceControl::with_tools(f.root(), Some(systemctl), &f.init_d(), None);
    let r = ctl.apply(&names(&["nginx", "legacy"]), ServiceAction::Stop).await;
    assert!(r.ok(), "{r:?}");
    assert!(r.services.iter().all(|s| s.manager == Some(ServiceManager::Systemd)));
    assert!(f.log().contains("systemctl stop nginx\n") && f.log().contains("systemctl stop legacy\n"));
    let r = ctl.apply(&names(&["ghost"]), ServiceAction::Stop).await;
    assert!(r.failure_message().contains("unknown service ghost: systemd has no unit"), "{r:?}");
    assert!(!f.log().contains("stop ghost"));
}

#[tokio::test]
async fn service_command_is_the_fallback_without_an_init_script() {
    let f = Fake::new();
    let service = f.script(&f.root().join("service"), "echo \"service $*\" >> \"$P2C_ROOT/log\"");
    let ctl = ServiceControl::with_tools(f.root(), None, &f.init_d(), Some(service));
    let r = ctl.apply(&names(&["httpd"]), ServiceAction::Stop).await;
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.services[0].manager, Some(ServiceManager::Service));
    assert_eq!(f.log(), "service httpd stop\n");
}

#[tokio::test]
async fn a_hung_stop_is_killed_after_the_timeout() {
    let f = Fake::new();
    f.script(&f.init_d().join("slow"), "sleep 30");
    let ctl = ServiceControl::for_root(f.root()).with_timeout(Duration::from_millis(300));
    let r = ctl.apply(&names(&["slow"]), ServiceAction::Stop).await;
    assert!(r.failure_message().contains("did not finish within"), "{r:?}");
}

#[tokio::test]
async fn stop_services_answer_carries_the_report() {
    let f = Fake::new();
    f.service("web", 0);
    let (ok, msg, payload) = stop_services(f.root(), &names(&["web"]), false).await;
    assert!(ok, "{msg}");
    assert_eq!(msg, "stopped web");
    let r: p2c_common::services::ServicesReport = serde_json::from_slice(&payload).unwrap();
    assert_eq!(r.action, ServiceAction::Stop);
    let (ok, msg, _) = stop_services(f.root(), &names(&["nope"]), true).await;
    assert!(!ok && msg.contains("cannot start nope: unknown service nope"), "{msg}");
}

#[test]
fn only_a_real_server_or_an_explicit_option_allows_service_control() {
    assert_eq!(refusal(Path::new("/"), false), None);
    assert_eq!(refusal(Path::new("/srv/tree"), true), None);
    let why = refusal(Path::new("/srv/tree"), false).unwrap();
    assert!(why.contains("/srv/tree") && why.contains("--allow-service-control"), "{why}");
}

#[tokio::test]
async fn hook_failure_names_the_exit_code_and_output() {
    let f = Fake::new();
    let (ok, msg, payload) = hook::run_hook(f.root(), "echo flushing; echo disk full >&2; exit 4", 10).await;
    assert!(!ok);
    assert!(msg.contains("exited with code 4") && msg.contains("disk full"), "{msg}");
    let r: p2c_common::services::HookReport = serde_json::from_slice(&payload).unwrap();
    assert_eq!((r.exit_code, r.stdout.as_str(), r.stderr.as_str()), (Some(4), "flushing\n", "disk full\n"));
}

#[tokio::test]
async fn hook_runs_in_the_root_and_keeps_only_the_tail_of_its_output() {
    let f = Fake::new();
    // 200 KiB of output, then the working directory and P2C_ROOT.
    let cmd = "head -c 204800 /dev/zero | tr '\\0' x; echo; pwd; echo \"$P2C_ROOT\"";
    let (ok, msg, payload) = hook::run_hook(f.root(), cmd, 10).await;
    assert!(ok, "{msg}");
    let r: p2c_common::services::HookReport = serde_json::from_slice(&payload).unwrap();
    assert_eq!(r.stdout.len(), p2c_common::services::MAX_OUTPUT);
    assert!(r.stdout_dropped > 0);
    let root = f.root().display().to_string();
    assert!(r.stdout.ends_with(&format!("\n{root}\n{root}\n")), "{}", &r.stdout[r.stdout.len() - 200..]);
}

#[tokio::test]
async fn hook_is_killed_after_its_timeout() {
    let f = Fake::new();
    let started = std::time::Instant::now();
    let (ok, msg, payload) = hook::run_hook(f.root(), "echo waiting; sleep 30", 1).await;
    assert!(!ok);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(msg.contains("did not finish within 1s and was killed") && msg.contains("waiting"), "{msg}");
    let r: p2c_common::services::HookReport = serde_json::from_slice(&payload).unwrap();
    assert!(r.timed_out);
    let (ok, msg, _) = hook::run_hook(f.root(), "  ", 1).await;
    assert!(!ok && msg.contains("could not run"), "{msg}");
}
