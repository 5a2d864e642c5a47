//! Service control and hooks on the source around a cutover: what the controller asks the
//! agent to stop, start or run, and what the agent reports back (the JSON payload of its
//! `CommandResult`).

use serde::{Deserialize, Serialize};

/// Most bytes of a command's stdout, and of its stderr, kept in a report (the last ones).
pub const MAX_OUTPUT: usize = 64 * 1024;

/// Longest service name accepted (systemd's unit name limit).
pub const MAX_SERVICE_NAME: usize = 255;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ServiceNameError {
    #[error("a service name is empty")]
    Empty,
    #[error("service name {0:?} is longer than 255 bytes")]
    TooLong(String),
    #[error(
        "service name {0:?} may hold only letters, digits and . _ @ : + - and must not start with - or ."
    )]
    BadChars(String),
}

/// Checks a service name before it reaches `systemctl`, an init script or a path: a unit
/// or script name, never an option, a path or shell syntax.
pub fn validate_service_name(name: &str) -> Result<(), ServiceNameError> {
    if name.is_empty() {
        return Err(ServiceNameError::Empty);
    }
    if name.len() > MAX_SERVICE_NAME {
        return Err(ServiceNameError::TooLong(name.chars().take(32).collect()));
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | ':' | '+' | '-');
    if name.starts_with(['-', '.']) || !name.chars().all(ok_char) {
        return Err(ServiceNameError::BadChars(name.to_string()));
    }
    Ok(())
}

/// Stop or start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceAction {
    Stop,
    Start,
}

impl ServiceAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceAction::Stop => "stop",
            ServiceAction::Start => "start",
        }
    }
}

/// How a service was controlled on the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceManager {
    /// `systemctl stop|start NAME`.
    Systemd,
    /// `/etc/init.d/NAME stop|start`.
    Sysv,
    /// `service NAME stop|start`.
    Service,
}

/// What happened to one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceStatus {
    /// The action ran and succeeded.
    Done,
    /// The action ran and failed, or the service is unknown.
    Failed,
    /// Not attempted (an earlier service failed, or an unknown one stopped the whole request).
    NotAttempted,
}

/// One service's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceOutcome {
    pub name: String,
    pub status: ServiceStatus,
    /// How it was (or would have been) controlled; `None` when the source does not know it.
    pub manager: Option<ServiceManager>,
    pub exit_code: Option<i32>,
    /// The command's output (stderr after stdout), the last bytes only.
    pub output: String,
    /// Why it failed or was not attempted.
    pub error: Option<String>,
}

/// The payload of a `StopServices` answer: one outcome per requested service, in the order
/// they were handled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicesReport {
    pub action: ServiceAction,
    pub services: Vec<ServiceOutcome>,
}

impl ServicesReport {
    /// True when every service was handled successfully.
    pub fn ok(&self) -> bool {
        self.services.iter().all(|s| s.status == ServiceStatus::Done)
    }

    /// Names of the services the action was applied to (e.g. those stopped, to start again).
    pub fn done(&self) -> Vec<String> {
        self.services.iter().filter(|s| s.status == ServiceStatus::Done).map(|s| s.name.clone()).collect()
    }

    /// One line for the operator: every failure with its reason.
    pub fn failure_message(&self) -> String {
        let failed: Vec<String> = self
            .services
            .iter()
            .filter(|s| s.status == ServiceStatus::Failed)
            .map(|s| format!("{}: {}", s.name, s.error.as_deref().unwrap_or("failed")))
            .collect();
        format!("cannot {} {}", self.action.as_str(), failed.join("; "))
    }
}

/// The payload of a `RunHook` answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HookReport {
    pub command: String,
    /// Exit code, when the command exited (not killed by a signal).
    pub exit_code: Option<i32>,
    /// Signal that ended the command, if one did.
    pub signal: Option<i32>,
    /// It ran past its timeout and was killed (with its whole process group).
    pub timed_out: bool,
    pub seconds: f64,
    /// The last [`MAX_OUTPUT`] bytes of stdout, lossily decoded.
    pub stdout: String,
    pub stderr: String,
    /// Bytes of stdout and stderr left out at the front.
    pub stdout_dropped: u64,
    pub stderr_dropped: u64,
}

impl HookReport {
    pub fn ok(&self) -> bool {
        !self.timed_out && self.exit_code == Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names() {
        for good in ["nginx", "postgresql@15-main", "foo.service", "a_b:c+d", "x1"] {
            assert_eq!(validate_service_name(good), Ok(()), "{good}");
        }
        for bad in ["", "-h", ".hidden", "a/b", "../x", "a b", "a;b", "$(x)", "a\nb"] {
            assert!(validate_service_name(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(validate_service_name(&"a".repeat(256)), Err(ServiceNameError::TooLong(_))));
    }

    #[test]
    fn report_lists_done_and_failures() {
        let o = |name: &str, status, error: Option<&str>| ServiceOutcome {
            name: name.into(),
            status,
            manager: Some(ServiceManager::Sysv),
            exit_code: None,
            output: String::new(),
            error: error.map(str::to_string),
        };
        let r = ServicesReport {
            action: ServiceAction::Stop,
            services: vec![
                o("a", ServiceStatus::Done, None),
                o("b", ServiceStatus::Failed, Some("exit code 1")),
                o("c", ServiceStatus::NotAttempted, Some("b failed")),
            ],
        };
        assert!(!r.ok());
        assert_eq!(r.done(), ["a"]);
        assert_eq!(r.failure_message(), "cannot stop b: exit code 1");
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"not-attempted\""), "{json}");
        assert_eq!(serde_json::from_str::<ServicesReport>(&json).unwrap(), r);
    }
}
