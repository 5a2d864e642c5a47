//! File systems: `fs-merge`, `network-mounts`, `disk-space`.

use std::collections::HashSet;

use p2c_common::findings::{Finding, Severity, codes};
use p2c_common::inventory::{Mount, MountKind};
use p2c_common::mountinfo::is_beneath;
use p2c_common::units::human_bytes;
use serde_json::json;

use super::{Ctx, ct_path, finding};

fn excluded(cx: &Ctx<'_>, m: &Mount) -> bool {
    cx.opts.excludes.iter().any(|x| is_beneath(m.mountpoint.as_bytes(), x.as_bytes()))
}

fn of_kind<'a>(cx: &Ctx<'a>, kind: MountKind) -> impl Iterator<Item = &'a Mount> {
    cx.inv.mounts.iter().filter(move |m| m.kind == kind)
}

/// What the copy needs on the node.
pub(super) struct Need {
    pub bytes: u64,
    pub inodes: u64,
    /// Where the figures come from, for the evidence.
    pub basis: &'static str,
}

/// The source's used space and inodes, excludes left out: the scan's count when there
/// is one (it walked the tree with the excludes), else the local mounts' usage (a device
/// mounted twice counted once; excludes that are whole mounts subtracted).
pub(super) fn need(cx: &Ctx<'_>) -> Need {
    if let Some(s) = cx.scan.filter(|s| s.entries > 0) {
        return Need { bytes: s.used_bytes, inodes: s.inodes, basis: "files found by the source scan" };
    }
    let mut seen = HashSet::new();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    for m in of_kind(cx, MountKind::Local) {
        if excluded(cx, m) || (!m.device.is_empty() && !seen.insert(m.device.as_str())) {
            continue;
        }
        bytes = bytes.saturating_add(m.used_bytes);
        inodes = inodes.saturating_add(m.inodes_used);
    }
    Need { bytes, inodes, basis: "used space of the local file systems" }
}

fn inodes_text(n: u64) -> String {
    if n == u64::MAX { "no inode limit".to_string() } else { format!("{n} inodes") }
}

pub(super) fn fs_merge(cx: &Ctx<'_>, out: &mut Vec<Finding>) {
    let mut evidence = Vec::new();
    let mut local = Vec::new();
    let mut first_of: Vec<(&str, &str)> = Vec::new();
    let mut doubles = Vec::new();
    for m in of_kind(cx, MountKind::Local) {
        match first_of.iter().find(|(dev, _)| !dev.is_empty() && *dev == m.device) {
            Some((_, mp)) => doubles.push(format!(
                "{}: the same device as {mp} (a bind mount or another subvolume): files \
                 reachable through both are copied twice unless one is excluded",
                m.mountpoint
            )),
            None => first_of.push((&m.device, &m.mountpoint)),
        }
        let skip = excluded(cx, m);
        evidence.push(format!(
            "{}: {} {}, {} size, {} used, {} inodes{}",
            m.mountpoint,
            m.device,
            m.fs_type,
            human_bytes(m.size_bytes),
            human_bytes(m.used_bytes),
            m.inodes_used,
            if skip {
                " — excluded, not copied".to_string()
            } else {
                format!(" → {}", ct_path(cx.opts, &m.mountpoint))
            }
        ));
        local.push(json!({
            "mountpoint": m.mountpoint, "device": m.device, "fs_type": m.fs_type,
            "size_bytes": m.size_bytes, "used_bytes": m.used_bytes,
            "inodes_used": m.inodes_used, "excluded": skip,
        }));
    }
    evidence.extend(doubles);
    let named = |kind| -> Vec<(String, String)> {
        of_kind(cx, kind).map(|m| (m.mountpoint.clone(), m.fs_type.clone())).collect()
    };
    let (pseudo, network) = (named(MountKind::Pseudo), named(MountKind::Network));
    let list =
        |v: &[(String, String)]| v.iter().map(|(mp, t)| format!("{mp} ({t})")).collect::<Vec<_>>().join(", ");
    if !pseudo.is_empty() {
        evidence.push(format!("not copied, the container has its own: {}", list(&pseudo)));
    }
    if !network.is_empty() {
        evidence.push(format!("not copied, network file systems (see network-mounts): {}", list(&network)));
    }
    if local.is_empty() {
        evidence.push("the inventory names no local file system".to_string());
    }
    let n = need(cx);
    evidence.push(format!(
        "to copy: {}, {} ({}); the node has {} and {} free on {}",
        human_bytes(n.bytes),
        inodes_text(n.inodes),
        n.basis,
        human_bytes(cx.node.free_bytes),
        inodes_text(cx.node.free_inodes),
        cx.node.fs_type
    ));
    evidence.extend(cx.node.gaps.iter().map(|g| format!("node: {g}")));
    let pairs = |v: &[(String, String)]| -> Vec<serde_json::Value> {
        v.iter().map(|(mp, t)| json!({"mountpoint": mp, "fs_type": t})).collect()
    };
    out.push(finding(
        codes::FS_MERGE,
        Severity::Info,
        format!(
            "{} local file system(s) are merged into one container tree",
            local.iter().filter(|l| l["excluded"] == false).count()
        ),
        evidence,
        "the files of every local file system are copied into the container's one tree at \
         the same path; the guest's fstab keeps only pseudo and network lines; pseudo file \
         systems are provided by the container",
        json!({
            "local": local, "pseudo": pairs(&pseudo), "network": pairs(&network),
            "need_bytes": n.bytes, "need_inodes": n.inodes,
            "node_free_bytes": cx.node.free_bytes, "node_free_inodes": cx.node.free_inodes,
        }),
    ));
}

pub(super) fn network_mounts(cx: &Ctx<'_>, out: &mut Vec<Finding>) {
    let mounts: Vec<&Mount> = of_kind(cx, MountKind::Network).collect();
    if mounts.is_empty() {
        return;
    }
    let evidence = mounts
        .iter()
        .map(|m| format!("{}: {} ({}, {})", m.mountpoint, m.device, m.fs_type, m.options.join(",")))
        .collect();
    let data: Vec<_> = mounts
        .iter()
        .map(|m| json!({"mountpoint": m.mountpoint, "device": m.device, "fs_type": m.fs_type, "options": m.options}))
        .collect();
    out.push(finding(
        codes::NETWORK_MOUNTS,
        Severity::Warning,
        format!("{} network file system(s) are not copied", mounts.len()),
        evidence,
        "their files stay on the server that exports them; the fstab lines are kept, so the \
         container mounts them itself at boot: the node must allow these file systems in \
         containers (e.g. FEATURES=\"nfs:on\") and the exporting server must accept the \
         container's addresses",
        json!({ "mounts": data }),
    ));
}

pub(super) fn disk_space(cx: &Ctx<'_>, out: &mut Vec<Finding>) {
    let n = need(cx);
    let node = cx.node;
    let (have_bytes, have_files) = cx.node.existing_private.as_ref().map_or((0, 0), |e| (e.bytes, e.files));
    let bytes = n.bytes.saturating_sub(have_bytes);
    let inodes = n.inodes.saturating_sub(have_files);
    let margin = |need: u64| need.saturating_add(need / 10);
    let inode_limit = node.free_inodes != u64::MAX;
    let short = node.free_bytes < bytes || (inode_limit && node.free_inodes < inodes);
    let tight = node.free_bytes < margin(bytes) || (inode_limit && node.free_inodes < margin(inodes));
    if !short && !tight {
        return;
    }
    let mut evidence = vec![
        format!("the source uses {} and {} ({})", human_bytes(n.bytes), inodes_text(n.inodes), n.basis),
        format!(
            "the node has {} and {} free on {}",
            human_bytes(node.free_bytes),
            inodes_text(node.free_inodes),
            node.fs_type
        ),
    ];
    if have_bytes > 0 {
        evidence.push(format!(
            "{} of it is already in the private area from an earlier run",
            human_bytes(have_bytes)
        ));
    }
    evidence.extend(node.gaps.iter().map(|g| format!("node: {g}")));
    let (severity, title, action) = if short {
        (
            Severity::Blocker,
            "the source does not fit on the node".to_string(),
            "the migration would fill the node's disk: free space on the node, exclude paths \
             with --exclude, or choose another node",
        )
    } else {
        (
            Severity::Warning,
            "the source fits on the node with less than 10% to spare".to_string(),
            "the migration goes on; the node's file system will be nearly full afterwards",
        )
    };
    out.push(finding(
        codes::DISK_SPACE,
        severity,
        title,
        evidence,
        action,
        json!({
            "need_bytes": n.bytes, "need_inodes": n.inodes, "already_copied_bytes": have_bytes,
            "free_bytes": node.free_bytes, "free_inodes": node.free_inodes, "basis": n.basis,
        }),
    ));
}
