//! The boot check's findings: stable codes, severities as `p2c assess` uses them (a blocker
//! stops a cutover unless forced), evidence lines and the structured data.

use std::time::Duration;

use p2c_common::findings::{Finding, Severity};
use serde_json::json;

use super::compare::ListenerStatus;
use super::probe::{HttpOutcome, TcpOutcome};
use super::{BootReport, InitState};
use crate::assess::finding;

/// Stable finding codes of the boot check (part of the CLI's JSON contract).
pub mod codes {
    /// The init did not settle within the timeout.
    pub const BOOT_TIMEOUT: &str = "boot-timeout";
    /// The init exited, or settled in maintenance (rescue) or another unexpected state.
    pub const BOOT_INIT_FAILED: &str = "boot-init-failed";
    /// Units failed in the container.
    pub const BOOT_FAILED_UNIT: &str = "boot-failed-unit";
    /// Units failed only because the check's network is isolated.
    pub const BOOT_UNIT_ISOLATED: &str = "boot-unit-isolated";
    /// A former address is not up on the container's venet0.
    pub const BOOT_ADDRESS_MISSING: &str = "boot-address-missing";
    /// The source listened where the container does not.
    pub const BOOT_LISTENER_MISSING: &str = "boot-listener-missing";
    /// The container listens where the source did not.
    pub const BOOT_LISTENER_NEW: &str = "boot-listener-new";
    /// The source's DHCP clients, which a container with static addresses does not run.
    pub const BOOT_LISTENER_RETIRED: &str = "boot-listener-retired";
    /// A listener the container has does not answer from the node side.
    pub const BOOT_UNREACHABLE: &str = "boot-unreachable";
    /// An HTTP listener answers with a server error (5xx).
    pub const BOOT_HTTP_ERROR: &str = "boot-http-error";
    /// Something the check set up could not be removed.
    pub const BOOT_CLEANUP: &str = "boot-cleanup";
    /// The container booted and serves what the source served.
    pub const BOOT_PASSED: &str = "boot-passed";
}

fn listener_line(proto: &str, address: &str, port: u16, program: &Option<String>) -> String {
    let at = if address.contains(':') { format!("[{address}]:{port}") } else { format!("{address}:{port}") };
    match program {
        Some(p) => format!("{proto} {at} ({p})"),
        None => format!("{proto} {at}"),
    }
}

fn tcp_word(t: &TcpOutcome) -> String {
    match t {
        TcpOutcome::Connected => "connected".to_string(),
        TcpOutcome::Refused => "connection refused".to_string(),
        TcpOutcome::TimedOut => "no answer (timed out)".to_string(),
        TcpOutcome::Error { message } => message.clone(),
    }
}

/// The findings for a finished report; `timeout` is the one the check was given.
pub(super) fn build(r: &BootReport, timeout: Duration) -> Vec<Finding> {
    let mut out = Vec::new();
    match &r.init {
        InitState::StartingTimedOut { last } => out.push(finding(
            codes::BOOT_TIMEOUT,
            Severity::Blocker,
            format!("the guest's init did not finish booting within {} s (it said `{last}`)", timeout.as_secs_f64()),
            r.pending_jobs.iter().map(|j| format!("still queued: {j}")).collect(),
            "look at the units still starting (the console and the jobs above); a unit waiting for \
             hardware or a remote server may need a timeout or to be disabled; run the check again \
             with a longer --timeout if the server is just slow to boot",
            json!({"last_state": last, "timeout_secs": timeout.as_secs_f64(), "pending_jobs": r.pending_jobs}),
        )),
        InitState::Exited { status } => out.push(finding(
            codes::BOOT_INIT_FAILED,
            Severity::Blocker,
            format!("the guest's init exited while booting ({status})"),
            r.console_tail.iter().rev().take(15).rev().cloned().collect(),
            "read the console lines: the tree may lack a working /sbin/init, or the init refused \
             to run in a container",
            json!({"status": status}),
        )),
        InitState::Maintenance | InitState::Other { .. } => out.push(finding(
            codes::BOOT_INIT_FAILED,
            Severity::Blocker,
            format!("the guest's init settled in `{}`, not running", r.init.as_str()),
            r.console_tail.iter().rev().take(15).rev().cloned().collect(),
            "systemd dropped to its rescue or emergency mode: usually a file system in /etc/fstab \
             that cannot be mounted in a container; see the failed units",
            json!({"state": r.init.as_str()}),
        )),
        InitState::Running | InitState::Degraded => {}
    }

    let (isolated, failed): (Vec<_>, Vec<_>) = r.failed_units.iter().partition(|u| u.isolated);
    if !failed.is_empty() {
        let mut evidence = Vec::new();
        for u in &failed {
            evidence.push(format!("{} ({}): {}", u.name, u.result, u.description));
            // The unit's own words (its program's output) say more than systemd's lines.
            let own: Vec<&String> = u.log_tail.iter().filter(|l| !l.contains(" systemd[1]: ")).collect();
            let lines = if own.is_empty() { u.log_tail.iter().collect() } else { own };
            evidence.extend(lines.iter().rev().take(3).rev().map(|l| format!("    {l}")));
        }
        out.push(finding(
            codes::BOOT_FAILED_UNIT,
            Severity::Blocker,
            format!("{} unit(s) failed in the container", failed.len()),
            evidence,
            "fix or disable each unit in the container (systemctl disable/mask), e.g. one that needs \
             a disk, a device or a kernel module the container does not have, then check again",
            json!(failed),
        ));
    }
    if !isolated.is_empty() {
        let evidence = isolated
            .iter()
            .map(|u| format!("{}: {}", u.name, u.isolated_because.as_deref().unwrap_or("isolated")))
            .collect();
        out.push(finding(
            codes::BOOT_UNIT_ISOLATED,
            Severity::Warning,
            format!("{} unit(s) failed only because the check's network is isolated", isolated.len()),
            evidence,
            "nothing to do for the check: these reach servers elsewhere, which the check's network \
             cannot; make sure the node can reach them after the cutover",
            json!(isolated),
        ));
    }

    let down: Vec<String> = r.addresses.iter().filter(|a| !a.up).map(|a| a.address.to_string()).collect();
    if !down.is_empty() && r.init.booted() {
        out.push(finding(
            codes::BOOT_ADDRESS_MISSING,
            Severity::Blocker,
            format!("{} former address(es) are not up on the container's venet0", down.len()),
            down.iter().map(|a| format!("{a} is not on venet0")).collect(),
            "the guest's network config did not bring them up: see the failed units (networking, \
             systemd-networkd) and the venet0 config p2c wrote in the container",
            json!({"addresses": down}),
        ));
    }

    let by = |s: ListenerStatus| r.listeners.iter().filter(move |l| l.status == s);
    let missing: Vec<_> = by(ListenerStatus::Missing).collect();
    if !missing.is_empty() && (r.init.booted() || matches!(r.init, InitState::StartingTimedOut { .. })) {
        out.push(finding(
            codes::BOOT_LISTENER_MISSING,
            Severity::Blocker,
            format!("{} listener(s) of the source are missing in the container", missing.len()),
            missing
                .iter()
                .map(|l| {
                    let line = listener_line(&l.proto, &l.address, l.port, &l.program);
                    match &l.note {
                        Some(n) => format!("{line}: {n}"),
                        None => line,
                    }
                })
                .collect(),
            "start the service in the container (see the failed units); a service bound to an \
             address the container does not have must be bound to one it has",
            json!(missing),
        ));
    }
    let new: Vec<_> = by(ListenerStatus::New).collect();
    if !new.is_empty() {
        out.push(finding(
            codes::BOOT_LISTENER_NEW,
            Severity::Info,
            format!("{} listener(s) in the container the source did not have", new.len()),
            new.iter().map(|l| listener_line(&l.proto, &l.address, l.port, &l.program)).collect(),
            "nothing to do unless a service should not run in the container",
            json!(new),
        ));
    }
    let retired: Vec<_> = by(ListenerStatus::Retired).collect();
    if !retired.is_empty() {
        out.push(finding(
            codes::BOOT_LISTENER_RETIRED,
            Severity::Info,
            format!("{} listener(s) of the source are not needed in a container", retired.len()),
            retired
                .iter()
                .map(|l| {
                    format!(
                        "{}: {}",
                        listener_line(&l.proto, &l.address, l.port, &l.program),
                        l.note.as_deref().unwrap_or_default()
                    )
                })
                .collect(),
            "nothing to do",
            json!(retired),
        ));
    }

    let mut unreachable = Vec::new();
    let mut server_errors = Vec::new();
    for l in by(ListenerStatus::Present) {
        for p in &l.probes {
            let at = listener_line(&l.proto, &p.address.to_string(), l.port, &l.program);
            if p.tcp != TcpOutcome::Connected {
                unreachable.push(format!("{at}: {}", tcp_word(&p.tcp)));
            } else if let Some(HttpOutcome::Error { message }) = &p.http {
                unreachable.push(format!("{at}: HTTP: {message}"));
            } else if let Some(HttpOutcome::Response { status }) = &p.http
                && *status >= 500
            {
                server_errors.push(format!("{at}: HTTP {status}"));
            }
        }
    }
    if !unreachable.is_empty() {
        out.push(finding(
            codes::BOOT_UNREACHABLE,
            Severity::Blocker,
            format!("{} listener address(es) do not answer from the node side", unreachable.len()),
            unreachable.clone(),
            format!(
                "the service listens but its clients would not get through: check the guest's \
                 firewall (the probes came from {}) and its routes on venet0",
                r.probe_sources.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ),
            json!({"unreachable": unreachable}),
        ));
    }
    if !server_errors.is_empty() {
        out.push(finding(
            codes::BOOT_HTTP_ERROR,
            Severity::Warning,
            format!("{} HTTP listener(s) answer with a server error", server_errors.len()),
            server_errors.clone(),
            "the web server runs but its application fails: look at its log in the container (a \
             database or backend elsewhere is not reachable from the check)",
            json!({"errors": server_errors}),
        ));
    }
    if !r.cleanup_problems.is_empty() {
        out.push(finding(
            codes::BOOT_CLEANUP,
            Severity::Warning,
            "the boot check could not remove everything it set up",
            r.cleanup_problems.clone(),
            "remove what is listed by hand (umount, ip netns del, kill); the container's tree \
             itself was not changed",
            json!({"problems": r.cleanup_problems}),
        ));
    }
    if !out.iter().any(|f| f.severity == Severity::Blocker) {
        let present = by(ListenerStatus::Present).count();
        let answering = by(ListenerStatus::Present).flat_map(|l| &l.probes).filter(|p| p.answered()).count();
        out.push(finding(
            codes::BOOT_PASSED,
            Severity::Info,
            format!(
                "the container booted ({}) in {:.1} s; {present} listener(s) present, {answering} \
                 probe(s) answered",
                r.init.as_str(),
                r.boot_secs
            ),
            Vec::new(),
            "nothing to do",
            json!({"boot_secs": r.boot_secs, "present": present, "answered": answering}),
        ));
    }
    out
}

/// The report as text for a terminal.
pub(super) fn render(r: &BootReport) -> String {
    let mut s = format!(
        "Boot check of CT {} ({}, {} init): {} after {:.1} s\n",
        r.ctid,
        r.target,
        r.init_kind.as_str(),
        r.init.as_str(),
        r.boot_secs
    );
    if !r.listeners.is_empty() {
        s.push_str("\nlisteners:\n");
        for l in &r.listeners {
            let status = match l.status {
                ListenerStatus::Present => "present",
                ListenerStatus::Missing => "MISSING",
                ListenerStatus::New => "new",
                ListenerStatus::Retired => "retired",
            };
            s.push_str(&format!(
                "  {status:<8} {}\n",
                listener_line(&l.proto, &l.address, l.port, &l.program)
            ));
            for p in &l.probes {
                let http = match &p.http {
                    Some(HttpOutcome::Response { status }) => format!(", HTTP {status}"),
                    Some(HttpOutcome::Error { message }) => format!(", HTTP: {message}"),
                    None => String::new(),
                };
                s.push_str(&format!(
                    "           {}: {}{http} ({} ms)\n",
                    p.address,
                    tcp_word(&p.tcp),
                    p.millis
                ));
            }
        }
    }
    for u in &r.failed_units {
        let isolated = if u.isolated { " (isolated network)" } else { "" };
        s.push_str(&format!("\nfailed unit {}{isolated}: {}\n", u.name, u.description));
        for l in &u.log_tail {
            s.push_str(&format!("    {l}\n"));
        }
    }
    let mut sorted: Vec<&Finding> = r.findings.iter().collect();
    sorted.sort_by_key(|f| f.severity);
    for f in sorted {
        let tag = match f.severity {
            Severity::Blocker => "BLOCKER",
            Severity::Warning => "WARNING",
            Severity::Info => "info",
        };
        s.push_str(&format!("\n[{tag}] {} — {}\n", f.code, f.title));
        for e in &f.evidence {
            s.push_str(&format!("    {e}\n"));
        }
        s.push_str(&format!("  → {}\n", f.action));
    }
    s.push_str(if r.passed() { "\nboot check passed\n" } else { "\nboot check FAILED\n" });
    s
}

#[cfg(test)]
mod tests;
