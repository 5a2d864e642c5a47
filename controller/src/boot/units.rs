//! Failed units of a systemd guest with their last journal lines (crashed services of an
//! OpenRC one), and whether the check's isolated network explains the failure: a remote
//! file system, a wait for the network to be online, or a log that says a server elsewhere
//! could not be reached. Such a unit would most likely start on the node, so it is reported
//! as isolated rather than as a blocker.

use std::collections::BTreeMap;

use super::FailedUnit;
use super::machine::{GUEST_LIMIT, Machine};

/// Journal lines kept per failed unit.
const LOG_LINES: usize = 15;
/// Failed units looked at (the rest are named only).
const MAX_UNITS: usize = 40;

/// File system types served from elsewhere.
const REMOTE_FS: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ceph",
    "glusterfs",
    "fuse.glusterfs",
    "fuse.sshfs",
    "sshfs",
    "davfs",
    "fuse.davfs",
    "ncpfs",
    "afs",
    "lustre",
    "fuse.s3fs",
    "9p",
];
/// Units that wait for the network to be online (nothing to wait for behind an isolated peer).
const WAIT_ONLINE: &[&str] = &[
    "systemd-networkd-wait-online.service",
    "NetworkManager-wait-online.service",
    "ifupdown-wait-online.service",
    "systemd-time-wait-sync.service",
];
/// The guest's own network bring-up: its failure is never the isolation's doing.
const BRINGUP: &[&str] = &[
    "networking.service",
    "systemd-networkd.service",
    "NetworkManager.service",
    "network.service",
    "wicked.service",
];
/// What a log says when a server elsewhere cannot be reached from an isolated network.
const UNREACHABLE: &[&str] = &[
    "network is unreachable",
    "no route to host",
    "temporary failure in name resolution",
    "name or service not known",
    "could not resolve",
    "unknown host",
    "server can't find",
    "connection timed out",
];

/// The names of `systemctl list-units --state=failed --plain --no-legend` lines.
pub(super) fn parse_failed(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.contains('.') && *n != "●")
        .map(str::to_string)
        .collect()
}

/// `systemctl show` output as properties.
pub(super) fn parse_show(text: &str) -> BTreeMap<String, String> {
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Why the isolated network explains the unit's failure, if it does.
pub(super) fn isolation(name: &str, props: &BTreeMap<String, String>, log: &[String]) -> Option<String> {
    let prop = |k: &str| props.get(k).map(String::as_str).unwrap_or_default();
    if name.ends_with(".mount") || name.ends_with(".automount") {
        let fstype = prop("Type");
        let what = prop("What");
        if REMOTE_FS.contains(&fstype) {
            return Some(format!(
                "a {fstype} file system from {what}, which the isolated check cannot reach"
            ));
        }
        let remote_what = what.starts_with("//")
            || what.contains("://")
            || what.split_once(":/").is_some_and(|(host, _)| !host.is_empty() && !host.contains('/'));
        if remote_what {
            return Some(format!("a remote file system ({what}), which the isolated check cannot reach"));
        }
    }
    if WAIT_ONLINE.contains(&name) {
        return Some("it waits for a network to be online, which the isolated check never is".to_string());
    }
    if BRINGUP.contains(&name) {
        return None;
    }
    let unreachable = log.iter().find_map(|l| {
        let lower = l.to_lowercase();
        UNREACHABLE.iter().find(|m| lower.contains(*m))
    });
    unreachable
        .map(|m| format!("its log says \"{m}\": a server elsewhere that the isolated check cannot reach"))
}

/// The guest's failed units (systemd), each with its journal tail.
pub(super) async fn failed(m: &Machine) -> Vec<FailedUnit> {
    let listed = m
        .exec(
            &[
                "systemctl",
                "list-units",
                "--state=failed",
                "--all",
                "--plain",
                "--no-legend",
                "--no-pager",
                "--full",
            ],
            GUEST_LIMIT,
        )
        .await;
    let names = match listed {
        Ok(out) => parse_failed(&out.stdout),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the guest's failed units");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if i >= MAX_UNITS {
            out.push(FailedUnit {
                name: name.clone(),
                description: String::new(),
                result: String::new(),
                log_tail: Vec::new(),
                isolated: false,
                isolated_because: None,
            });
            continue;
        }
        let props = m
            .exec(
                &[
                    "systemctl",
                    "show",
                    "--no-pager",
                    "-p",
                    "Description",
                    "-p",
                    "Result",
                    "-p",
                    "Type",
                    "-p",
                    "What",
                    "--",
                    name,
                ],
                GUEST_LIMIT,
            )
            .await
            .map(|o| parse_show(&o.stdout))
            .unwrap_or_default();
        let lines = LOG_LINES.to_string();
        let log_tail: Vec<String> = m
            .exec(
                &["journalctl", "--no-pager", "--no-hostname", "-o", "short", "-n", &lines, "-u", name],
                GUEST_LIMIT,
            )
            .await
            .map(|o| o.stdout.lines().filter(|l| !l.starts_with("-- ")).map(str::to_string).collect())
            .unwrap_or_default();
        let because = isolation(name, &props, &log_tail);
        out.push(FailedUnit {
            name: name.clone(),
            description: props.get("Description").cloned().unwrap_or_default(),
            result: props.get("Result").cloned().unwrap_or_default(),
            log_tail,
            isolated: because.is_some(),
            isolated_because: because,
        });
    }
    out
}

/// What systemd still had queued (when the boot timed out).
pub(super) async fn pending_jobs(m: &Machine) -> Vec<String> {
    match m
        .exec(&["systemctl", "list-jobs", "--plain", "--no-legend", "--no-pager", "--full"], GUEST_LIMIT)
        .await
    {
        Ok(out) => out
            .stdout
            .lines()
            .map(|l| l.split_whitespace().skip(1).take(3).collect::<Vec<_>>().join(" "))
            .filter(|l| !l.is_empty())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Crashed services of an OpenRC guest (`rc-status --crashed`).
pub(super) async fn openrc_crashed(m: &Machine) -> Vec<FailedUnit> {
    let Ok(out) = m.exec(&["rc-status", "--crashed"], GUEST_LIMIT).await else { return Vec::new() };
    out.stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|name| FailedUnit {
            name: name.to_string(),
            description: String::new(),
            result: "crashed".to_string(),
            log_tail: Vec::new(),
            isolated: false,
            isolated_because: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn reads_failed_units_and_properties() {
        let list = "p2c-sdz.service loaded failed failed Needs a disk the container lacks\n\
                    srv-data.mount  loaded failed failed /srv/data\n";
        assert_eq!(parse_failed(list), ["p2c-sdz.service", "srv-data.mount"]);
        assert!(parse_failed("").is_empty());
        let p = parse_show("Description=Web\nResult=exit-code\nType=simple\nWhat=\n");
        assert_eq!(p.get("Result").map(String::as_str), Some("exit-code"));
        assert_eq!(p.get("What").map(String::as_str), Some(""));
    }

    #[test]
    fn the_isolated_network_explains_remote_mounts_waits_and_unreachable_servers() {
        let nfs = props(&[("Type", "nfs4"), ("What", "files.example:/export")]);
        assert!(isolation("srv-data.mount", &nfs, &[]).unwrap().contains("nfs4"));
        let cifs = props(&[("Type", ""), ("What", "//fs1/share")]);
        assert!(isolation("mnt-share.mount", &cifs, &[]).is_some());
        let local = props(&[("Type", "ext4"), ("What", "/dev/sdb1")]);
        assert_eq!(isolation("srv.mount", &local, &[]), None);
        assert!(isolation("systemd-networkd-wait-online.service", &props(&[]), &[]).is_some());
        let log = vec!["app[12]: connect to db1:5432: No route to host".to_string()];
        assert!(isolation("app.service", &props(&[]), &log).unwrap().contains("no route to host"));
        // The guest's own bring-up failing is the guest's problem, whatever its log says.
        assert_eq!(isolation("networking.service", &props(&[]), &log), None);
        let own = vec!["busybox[80]: bind: Cannot assign requested address".to_string()];
        assert_eq!(isolation("web.service", &props(&[]), &own), None);
    }
}
