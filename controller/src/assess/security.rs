//! File metadata the container cannot keep as it is: `selinux`, `xattrs`, `high-ids`.

use p2c_common::findings::{Finding, Severity, codes};
use p2c_common::inventory::SelinuxMode;
use p2c_common::paths::RelPath;
use p2c_common::scan::Capped;
use p2c_common::units::human_bytes;
use serde_json::json;

use super::{Ctx, finding};

fn mode_name(m: SelinuxMode) -> &'static str {
    match m {
        SelinuxMode::Enforcing => "enforcing",
        SelinuxMode::Permissive => "permissive",
        SelinuxMode::Disabled => "disabled",
        SelinuxMode::Absent => "absent",
    }
}

fn on(m: SelinuxMode) -> bool {
    matches!(m, SelinuxMode::Enforcing | SelinuxMode::Permissive)
}

/// `N files, e.g. /a, /b, /c`.
fn sample(c: &Capped<RelPath>, n: usize) -> String {
    let eg: Vec<String> = c.examples.iter().take(n).map(RelPath::display).collect();
    format!("{} file(s), e.g. {}", c.total, eg.join(", "))
}

pub(super) fn selinux(cx: &Ctx<'_>, out: &mut Vec<Finding>) {
    let s = &cx.inv.selinux;
    let labelled = cx.scan.map(|s| s.selinux_labelled);
    let active = on(s.mode) || s.config_mode.is_some_and(on);
    if !active && labelled.unwrap_or(0) == 0 {
        return;
    }
    let mut evidence = vec![format!("running mode: {}", mode_name(s.mode))];
    if let Some(c) = s.config_mode {
        evidence.push(format!(
            "/etc/selinux/config: SELINUX={}{}",
            mode_name(c),
            s.policy.as_ref().map(|p| format!(", SELINUXTYPE={p}")).unwrap_or_default()
        ));
    }
    evidence.push(match labelled {
        Some(n) => format!("{n} file(s) carry a security.selinux label"),
        None => "labels were not counted (quick assessment)".to_string(),
    });
    out.push(finding(
        codes::SELINUX,
        if active { Severity::Warning } else { Severity::Info },
        match s.config_mode {
            // The config is what the server boots with: say so when the kernel runs otherwise.
            Some(c) if c != s.mode && on(c) => format!(
                "SELinux is configured {} on the source (running: {}); the container runs without it",
                mode_name(c),
                mode_name(s.mode)
            ),
            _ => format!("SELinux is {} on the source; the container runs without it", mode_name(s.mode)),
        },
        evidence,
        "the guest's /etc/selinux/config gets SELINUX=disabled and security.selinux labels are \
         not copied: the policy that confined services no longer applies",
        json!({
            "mode": s.mode, "config_mode": s.config_mode, "policy": s.policy,
            "labelled_files": labelled,
        }),
    ));
}

pub(super) fn xattrs(cx: &Ctx<'_>, out: &mut Vec<Finding>) {
    let keep = cx.opts.keep_xattrs;
    let node = cx.node;
    let Some(scan) = cx.scan else {
        out.push(finding(
            codes::XATTRS,
            Severity::Info,
            "extended attributes were not counted (quick assessment)",
            vec!["run the assessment without --quick to count them".to_string()],
            if keep {
                "extended attributes are kept where the node's file system can store them"
            } else {
                "extended attributes and ACLs are dropped (VZFS-compatible default)"
            },
            json!({"counted": false, "keep": keep}),
        ));
        return;
    };
    let c = &scan.xattrs;
    if c.files == 0 {
        return;
    }
    let mut evidence = Vec::new();
    for (label, list) in [
        ("user.*", &c.user),
        ("trusted.*", &c.trusted),
        ("security.* (not SELinux labels)", &c.security),
        ("system.*", &c.system),
        ("POSIX ACLs", &c.acl),
        ("other namespaces", &c.other),
    ] {
        if !list.is_empty() {
            evidence.push(format!("{label}: {}", sample(list, 5)));
        }
    }
    if !c.capabilities.is_empty() {
        evidence.push(format!(
            "file capabilities (security.capability): {}; without them these programs lose \
             their privileges",
            sample(&c.capabilities, 5)
        ));
    }
    if scan.truncated {
        evidence.push("lists hold the first files only; counts are complete".to_string());
    }
    let (severity, title, action) = match (keep, node.xattrs_supported) {
        (false, _) => (
            Severity::Warning,
            format!(
                "{} file(s) have extended attributes or ACLs ({}); the copy drops them",
                c.files,
                human_bytes(c.bytes)
            ),
            format!(
                "dropped, as VZFS does (the default); --keep-xattrs keeps them{}; \
                 security.selinux labels are always dropped",
                if node.xattrs_supported {
                    format!(" (the node's {} can store them)", node.fs_type)
                } else {
                    format!(", but the node's {} cannot store them", node.fs_type)
                }
            ),
        ),
        (true, true) => (
            Severity::Info,
            format!("{} file(s) have extended attributes or ACLs; they are kept", c.files),
            format!(
                "kept on the node's {} (--keep-xattrs); security.selinux labels are always dropped",
                node.fs_type
            ),
        ),
        (true, false) => (
            Severity::Warning,
            format!(
                "--keep-xattrs was asked, but the node's {} cannot store extended attributes",
                node.fs_type
            ),
            format!(
                "the extended attributes and ACLs of {} file(s) are dropped; keep the private \
                 area on a file system with xattr support to keep them",
                c.files
            ),
        ),
    };
    out.push(finding(
        codes::XATTRS,
        severity,
        title,
        evidence,
        action,
        json!({
            "counted": true, "keep": keep, "node_supports": node.xattrs_supported,
            "files": c.files, "bytes": c.bytes, "namespaces": c,
        }),
    ));
}

pub(super) fn high_ids(cx: &Ctx<'_>, out: &mut Vec<Finding>) {
    let Some(scan) = cx.scan else { return };
    let h = &scan.high_ids;
    if h.is_empty() {
        return;
    }
    let mut evidence = vec![format!("{} entries are owned by ids above 65535", h.total)];
    evidence.extend(h.examples.iter().take(20).map(|e| format!("{} (uid {}, gid {})", e.path, e.uid, e.gid)));
    out.push(finding(
        codes::HIGH_IDS,
        Severity::Warning,
        format!("{} entries are owned by a uid or gid above 65535", h.total),
        evidence,
        "copied with their numeric ids unchanged; a container whose user namespace maps only \
         65536 ids shows them as nobody, and second-level quotas must allow such ids: check the \
         node's id mapping before cutover",
        json!({"total": h.total, "examples": h.examples}),
    ));
}
