use std::net::IpAddr;

use p2c_common::migration::Target;

use super::*;
use crate::boot::compare::ListenerCheck;
use crate::boot::probe::ProbeResult;
use crate::boot::{AddressCheck, FailedUnit, InitKind};

fn report(init: InitState) -> BootReport {
    BootReport {
        ctid: 101,
        target: Target::Vz7,
        init_kind: InitKind::Systemd,
        init,
        boot_secs: 3.2,
        failed_units: Vec::new(),
        pending_jobs: Vec::new(),
        addresses: vec![AddressCheck { address: "198.51.100.10".parse().unwrap(), up: true }],
        listeners: Vec::new(),
        probe_sources: vec!["203.0.113.254".parse().unwrap()],
        console_tail: Vec::new(),
        cleanup_problems: Vec::new(),
        findings: Vec::new(),
    }
}

fn listener(status: ListenerStatus, port: u16, probes: Vec<ProbeResult>) -> ListenerCheck {
    ListenerCheck {
        proto: "tcp".into(),
        address: "0.0.0.0".into(),
        port,
        program: Some("httpd".into()),
        container_program: None,
        status,
        note: None,
        probes,
    }
}

fn probe(tcp: TcpOutcome, http: Option<HttpOutcome>) -> ProbeResult {
    ProbeResult { address: "198.51.100.10".parse::<IpAddr>().unwrap(), tcp, http, millis: 1 }
}

fn codes_of(f: &[Finding]) -> Vec<(&str, Severity)> {
    f.iter().map(|f| (f.code.as_str(), f.severity)).collect()
}

#[test]
fn a_clean_boot_passes() {
    let mut r = report(InitState::Running);
    r.listeners = vec![listener(
        ListenerStatus::Present,
        80,
        vec![probe(TcpOutcome::Connected, Some(HttpOutcome::Response { status: 200 }))],
    )];
    r.findings = build(&r, Duration::from_secs(60));
    assert_eq!(codes_of(&r.findings), [(codes::BOOT_PASSED, Severity::Info)]);
    assert!(r.passed());
    assert!(
        r.findings[0].title.contains("1 listener(s) present, 1 probe(s) answered"),
        "{}",
        r.findings[0].title
    );
    assert!(r.render().contains("boot check passed"));
}

#[test]
fn each_problem_has_its_code_and_severity() {
    let mut r = report(InitState::Degraded);
    r.failed_units = vec![
        FailedUnit {
            name: "p2c-sdz.service".into(),
            description: "needs sdz".into(),
            result: "exit-code".into(),
            log_tail: vec![
                "Dec 03 14:57:57 blockdev[80]: blockdev: cannot open /dev/sdz: No such file or directory".into(),
                "Dec 03 14:57:57 systemd[1]: p2c-sdz.service: Main process exited, code=exited, status=1/FAILURE".into(),
                "Dec 03 14:57:57 systemd[1]: p2c-sdz.service: Failed with result 'exit-code'.".into(),
            ],
            isolated: false,
            isolated_because: None,
        },
        FailedUnit {
            name: "srv-nfs.mount".into(),
            description: String::new(),
            result: "exit-code".into(),
            log_tail: Vec::new(),
            isolated: true,
            isolated_because: Some("a nfs4 file system".into()),
        },
    ];
    r.addresses.push(AddressCheck { address: "198.51.100.11".parse().unwrap(), up: false });
    r.listeners = vec![
        listener(ListenerStatus::Present, 22, vec![probe(TcpOutcome::TimedOut, None)]),
        listener(
            ListenerStatus::Present,
            80,
            vec![probe(TcpOutcome::Connected, Some(HttpOutcome::Response { status: 502 }))],
        ),
        listener(ListenerStatus::Missing, 8081, Vec::new()),
        listener(ListenerStatus::New, 25, Vec::new()),
    ];
    r.cleanup_problems = vec!["cannot delete network namespace x".into()];
    r.findings = build(&r, Duration::from_secs(60));
    assert_eq!(
        codes_of(&r.findings),
        [
            (codes::BOOT_FAILED_UNIT, Severity::Blocker),
            (codes::BOOT_UNIT_ISOLATED, Severity::Warning),
            (codes::BOOT_ADDRESS_MISSING, Severity::Blocker),
            (codes::BOOT_LISTENER_MISSING, Severity::Blocker),
            (codes::BOOT_LISTENER_NEW, Severity::Info),
            (codes::BOOT_UNREACHABLE, Severity::Blocker),
            (codes::BOOT_HTTP_ERROR, Severity::Warning),
            (codes::BOOT_CLEANUP, Severity::Warning),
        ]
    );
    assert!(!r.passed());
    let failed = r.find(codes::BOOT_FAILED_UNIT).unwrap();
    assert_eq!(failed.evidence[0], "p2c-sdz.service (exit-code): needs sdz");
    assert_eq!(
        failed.evidence[1..],
        ["    Dec 03 14:57:57 blockdev[80]: blockdev: cannot open /dev/sdz: No such file or directory"]
    );
    let unreachable = r.find(codes::BOOT_UNREACHABLE).unwrap();
    assert_eq!(unreachable.evidence, ["tcp 198.51.100.10:22 (httpd): no answer (timed out)"]);
    assert!(unreachable.action.contains("203.0.113.254"));
    let text = r.render();
    assert!(
        text.contains("MISSING  tcp 0.0.0.0:8081 (httpd)") && text.contains("boot check FAILED"),
        "{text}"
    );
}

#[test]
fn a_timeout_is_a_blocker_with_the_queued_jobs() {
    let mut r = report(InitState::StartingTimedOut { last: "starting".into() });
    r.pending_jobs = vec!["slow.service start running".into()];
    r.findings = build(&r, Duration::from_secs(5));
    let f = r.find(codes::BOOT_TIMEOUT).unwrap();
    assert_eq!(f.severity, Severity::Blocker);
    assert!(f.title.contains("within 5 s (it said `starting`)"), "{}", f.title);
    assert_eq!(f.evidence, ["still queued: slow.service start running"]);
    assert!(!r.passed());
}
