//! Stopping and starting the source's services for a cutover, and running the operator's
//! hooks (`StopServices`, `RunHook`).
//!
//! On a real server (root `/`) services are controlled through systemd when it is the init
//! system (`/run/systemd/system` exists), else through SysV init scripts or `service`. An
//! agent serving a directory (`--root DIR`) refuses unless it was started with
//! `--allow-service-control`, and even then runs only that tree's own init scripts
//! (`DIR/etc/init.d/NAME`), never the host's.

mod exec;
pub mod hook;

use std::path::{Path, PathBuf};
use std::time::Duration;

use p2c_common::services::{
    MAX_OUTPUT, ServiceAction, ServiceManager, ServiceOutcome, ServiceStatus, ServicesReport,
    validate_service_name,
};
use tokio::process::Command;
use tracing::{info, warn};

pub use exec::{Finished, Tail};

/// Longest wait for one service to stop or start.
const SERVICE_TIMEOUT: Duration = Duration::from_secs(120);

/// Characters of a command's output quoted in a one-line error.
const MESSAGE_OUTPUT: usize = 400;

/// Why the agent refuses service control and hooks, or `None` when it may run them.
pub fn refusal(root: &Path, allow: bool) -> Option<String> {
    if root == Path::new("/") || allow {
        return None;
    }
    Some(format!(
        "this agent serves the directory {} instead of a real server's /; it does not stop services or run hooks unless started with --allow-service-control",
        root.display()
    ))
}

/// How services are controlled for one source root.
#[derive(Clone, Debug)]
pub struct ServiceControl {
    /// The source root; the working directory of every command, and `P2C_ROOT` in its
    /// environment.
    root: PathBuf,
    /// `systemctl`, when systemd is the init system.
    systemctl: Option<PathBuf>,
    /// The directory of SysV init scripts.
    init_d: PathBuf,
    /// `service`, when it is installed (and systemd is not the init system).
    service: Option<PathBuf>,
    timeout: Duration,
}

impl ServiceControl {
    /// What the agent serving `root` uses: the system's tools on a real server, only the
    /// tree's init scripts for a directory.
    pub fn for_root(root: &Path) -> Self {
        if root == Path::new("/") {
            let systemd = Path::new("/run/systemd/system").is_dir();
            Self {
                root: root.to_path_buf(),
                systemctl: if systemd { which("systemctl") } else { None },
                init_d: PathBuf::from("/etc/init.d"),
                service: if systemd { None } else { which("service") },
                timeout: SERVICE_TIMEOUT,
            }
        } else {
            Self::with_tools(root, None, &root.join("etc/init.d"), None)
        }
    }

    /// Explicit tools (tests use fake ones).
    pub fn with_tools(
        root: &Path,
        systemctl: Option<PathBuf>,
        init_d: &Path,
        service: Option<PathBuf>,
    ) -> Self {
        Self {
            root: root.to_path_buf(),
            systemctl,
            init_d: init_d.to_path_buf(),
            service,
            timeout: SERVICE_TIMEOUT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Stops the services in the order given, up to the first failure; or starts them in
    /// the reverse order, each whatever happened to the others. Nothing is touched when a
    /// name is invalid or unknown on the source.
    pub async fn apply(&self, names: &[String], action: ServiceAction) -> ServicesReport {
        let mut resolved = Vec::with_capacity(names.len());
        let mut unknown = Vec::new();
        for name in names {
            let r = match validate_service_name(name) {
                Err(e) => Err((None, e.to_string())),
                Ok(()) => self.resolve(name).await,
            };
            if r.is_err() {
                unknown.push(name.clone());
            }
            resolved.push((name.clone(), r));
        }
        if !unknown.is_empty() {
            let why = format!("nothing was done because of {}", unknown.join(", "));
            let services = resolved
                .into_iter()
                .map(|(name, r)| match r {
                    Err((manager, e)) => outcome(name, ServiceStatus::Failed, manager, None, e),
                    Ok(m) => outcome(name, ServiceStatus::NotAttempted, Some(m), None, why.clone()),
                })
                .collect();
            return ServicesReport { action, services };
        }
        if action == ServiceAction::Start {
            resolved.reverse();
        }
        let mut services = Vec::with_capacity(resolved.len());
        let mut failed: Option<String> = None;
        for (name, r) in resolved {
            let Ok(manager) = r else { continue };
            if let (ServiceAction::Stop, Some(f)) = (action, &failed) {
                let why = format!("not stopped because {f} failed to stop");
                services.push(outcome(name, ServiceStatus::NotAttempted, Some(manager), None, why));
                continue;
            }
            let o = self.run(&name, manager, action).await;
            if o.status == ServiceStatus::Failed {
                warn!(service = %name, action = action.as_str(), error = ?o.error, "service control failed");
                failed.get_or_insert(name);
            } else {
                info!(service = %name, action = action.as_str(), manager = ?manager, "service controlled");
            }
            services.push(o);
        }
        ServicesReport { action, services }
    }

    /// How `name` is controlled here, or why it cannot be.
    async fn resolve(&self, name: &str) -> Result<ServiceManager, (Option<ServiceManager>, String)> {
        if let Some(systemctl) = &self.systemctl {
            let mut c = self.command(systemctl);
            c.args(["show", "--property=LoadState", "--value", name]);
            let f = exec::run(c, self.timeout, 4096).await.map_err(|e| {
                (Some(ServiceManager::Systemd), format!("cannot run {}: {e}", systemctl.display()))
            })?;
            let state = f.stdout.text().trim().to_string();
            return match (f.success(), state.as_str()) {
                (true, "not-found") | (true, "") => {
                    Err((None, format!("unknown service {name}: systemd has no unit of that name")))
                }
                (true, _) => Ok(ServiceManager::Systemd),
                (false, _) => Err((
                    Some(ServiceManager::Systemd),
                    format!(
                        "systemctl show {name} {}: {}",
                        f.failure(self.timeout),
                        exec::last_chars(&f.output(), MESSAGE_OUTPUT)
                    ),
                )),
            };
        }
        let script = self.init_d.join(name);
        if script.is_file() {
            return Ok(ServiceManager::Sysv);
        }
        if self.service.is_some() {
            return Ok(ServiceManager::Service);
        }
        Err((None, format!("unknown service {name}: no init script {}", script.display())))
    }

    async fn run(&self, name: &str, manager: ServiceManager, action: ServiceAction) -> ServiceOutcome {
        let verb = action.as_str();
        let c = match (manager, &self.systemctl, &self.service) {
            (ServiceManager::Systemd, Some(systemctl), _) => {
                let mut c = self.command(systemctl);
                c.args([verb, name]);
                c
            }
            (ServiceManager::Service, _, Some(service)) => {
                let mut c = self.command(service);
                c.args([name, verb]);
                c
            }
            _ => {
                let mut c = self.command(&self.init_d.join(name));
                c.arg(verb);
                c
            }
        };
        match exec::run(c, self.timeout, MAX_OUTPUT).await {
            Err(e) => outcome(
                name.to_string(),
                ServiceStatus::Failed,
                Some(manager),
                None,
                format!("cannot run the {} command: {e}", manager_name(manager)),
            ),
            Ok(f) => {
                let output = f.output();
                let mut o = outcome(name.to_string(), ServiceStatus::Done, Some(manager), f.exit_code(), "");
                if !f.success() {
                    o.status = ServiceStatus::Failed;
                    o.error = Some(format!(
                        "{} {verb} {}: {}",
                        manager_name(manager),
                        f.failure(self.timeout),
                        exec::last_chars(&output, MESSAGE_OUTPUT)
                    ));
                }
                o.error = o.error.filter(|e| !e.is_empty());
                o.output = output;
                o
            }
        }
    }

    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.current_dir(&self.root).env("P2C_ROOT", &self.root);
        c
    }
}

fn manager_name(m: ServiceManager) -> &'static str {
    match m {
        ServiceManager::Systemd => "systemctl",
        ServiceManager::Sysv => "init script",
        ServiceManager::Service => "service",
    }
}

fn outcome(
    name: String,
    status: ServiceStatus,
    manager: Option<ServiceManager>,
    exit_code: Option<i32>,
    error: impl Into<String>,
) -> ServiceOutcome {
    let error = error.into();
    ServiceOutcome {
        name,
        status,
        manager,
        exit_code,
        output: String::new(),
        error: if error.is_empty() { None } else { Some(error) },
    }
}

/// The first executable `name` on `PATH` (or the usual system directories).
fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Answers `StopServices`: (ok, message, JSON payload of a [`ServicesReport`]).
pub async fn stop_services(root: &Path, services: &[String], start: bool) -> (bool, String, Vec<u8>) {
    let action = if start { ServiceAction::Start } else { ServiceAction::Stop };
    let report = ServiceControl::for_root(root).apply(services, action).await;
    let payload = serde_json::to_vec(&report).unwrap_or_default();
    if report.ok() {
        let verb = if start { "started" } else { "stopped" };
        (true, format!("{verb} {}", services.join(", ")), payload)
    } else {
        (false, report.failure_message(), payload)
    }
}

#[cfg(test)]
mod tests;
