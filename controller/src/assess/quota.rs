//! `quota-partition`: only one source partition keeps its quotas, and its per-user and
//! per-group limits then apply to the whole container.

use std::collections::BTreeMap;

use p2c_common::findings::{Finding, Severity, codes};
use p2c_common::inventory::{FsQuota, MountKind, QuotaChoiceError};
use p2c_common::units::human_bytes;
use serde_json::json;

use super::{Ctx, finding};

/// ` (/dev/sdb1 ext4, vfsv1 quota)`, leaving out what the inventory does not say.
fn describe(q: &FsQuota) -> String {
    let dev: Vec<&str> =
        [q.device.as_str(), q.fs_type.as_str()].into_iter().filter(|s| !s.is_empty()).collect();
    let mut parts = Vec::new();
    if !dev.is_empty() {
        parts.push(dev.join(" "));
    }
    if !q.format.is_empty() {
        parts.push(format!("{} quota", q.format));
    }
    if parts.is_empty() { String::new() } else { format!(" ({})", parts.join(", ")) }
}

fn counts(q: &FsQuota) -> (usize, usize) {
    (q.limited_users().count(), q.limited_groups().count())
}

/// Users whose usage on all partitions with quotas together passes the hard block limit
/// they keep: once the limit applies container-wide they cannot write.
fn over_limit(cx: &Ctx<'_>, kept: &FsQuota) -> Vec<(u32, Option<String>, u64, u64)> {
    let mut used: BTreeMap<u32, u64> = BTreeMap::new();
    for q in &cx.inv.quotas {
        for u in &q.users {
            *used.entry(u.id).or_default() += u.used_bytes;
        }
    }
    kept.limited_users()
        .filter(|l| l.block_hard > 0)
        .filter_map(|l| {
            let total = used.get(&l.id).copied().unwrap_or(0);
            let hard = l.block_hard.saturating_mul(1024);
            (total > hard).then(|| (l.id, l.name.clone(), total, hard))
        })
        .collect()
}

pub(super) fn quota_partition(cx: &Ctx<'_>, out: &mut Vec<Finding>) {
    let inv = cx.inv;
    let requested = cx.opts.quota_partition.as_deref();
    // Partitions mounted with quota options whose limits the agent could not read.
    let unread: Vec<&str> = inv
        .mounts
        .iter()
        .filter(|m| m.kind == MountKind::Local && !m.quota_options().is_empty())
        .filter(|m| !inv.quotas.iter().any(|q| q.mountpoint == m.mountpoint))
        .map(|m| m.mountpoint.as_str())
        .collect();
    if inv.quotas.is_empty() && requested.is_none() && unread.is_empty() {
        return;
    }
    let choice = inv.choose_quota_partition(requested);
    let chosen = match &choice {
        Ok(Some(q)) => Some(q.mountpoint.as_str()),
        _ => None,
    };
    let mut evidence = Vec::new();
    let mut partitions = Vec::new();
    let (mut carried, mut dropped) = ((0, 0), (0, 0));
    let candidates = inv.quota_candidates();
    for q in &inv.quotas {
        let (u, g) = counts(q);
        let kept = chosen == Some(q.mountpoint.as_str());
        let undecided = choice.is_err() && candidates.contains(&q.mountpoint);
        if kept {
            carried = (u, g);
        } else if !undecided {
            dropped = (dropped.0 + u, dropped.1 + g);
        }
        evidence.push(format!(
            "{}{}: {u} user and {g} group limit(s) — {}",
            q.mountpoint,
            describe(q),
            match (kept, undecided) {
                (true, _) => "kept",
                (false, true) => "candidate",
                (false, false) => "dropped",
            }
        ));
        partitions.push(json!({
            "mountpoint": q.mountpoint, "device": q.device, "fs_type": q.fs_type,
            "format": q.format, "users": u, "groups": g, "kept": kept,
        }));
    }
    for mp in &unread {
        evidence
            .push(format!("{mp}: mounted with quota options, but its limits could not be read — dropped"));
    }
    let over = chosen
        .and_then(|mp| inv.quotas.iter().find(|q| q.mountpoint == mp))
        .map(|q| over_limit(cx, q))
        .unwrap_or_default();
    for (id, name, used, hard) in &over {
        evidence.push(format!(
            "uid {id}{}: uses {} on all partitions with quotas, over the {} hard limit that \
             now applies to the whole container",
            name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default(),
            human_bytes(*used),
            human_bytes(*hard)
        ));
    }
    let (severity, title, action) = match &choice {
        Err(QuotaChoiceError::Ambiguous { candidates }) => (
            Severity::Blocker,
            format!(
                "{} partitions have quotas and only one can keep them: {}",
                candidates.len(),
                candidates.join(", ")
            ),
            "choose the partition whose limits the container keeps with --quota-partition MP; \
             the limits of the others are dropped"
                .to_string(),
        ),
        Err(QuotaChoiceError::NotFound { requested, .. }) => (
            Severity::Blocker,
            format!("--quota-partition {requested}: no source partition with quotas is mounted there"),
            "name a partition listed here, or leave --quota-partition out".to_string(),
        ),
        Ok(Some(q)) if requested.is_some() && counts(q) == (0, 0) => (
            Severity::Blocker,
            format!("--quota-partition {}: that partition sets no quota limits", q.mountpoint),
            "name a partition that has limits, or leave --quota-partition out".to_string(),
        ),
        Ok(Some(q)) => (
            if dropped != (0, 0) || !unread.is_empty() || !over.is_empty() {
                Severity::Warning
            } else {
                Severity::Info
            },
            format!(
                "the quotas of {} are kept: {} user and {} group limit(s) apply to the whole container",
                q.mountpoint, carried.0, carried.1
            ),
            format!(
                "the limits of {} become the container's second-level (per-user and per-group) \
                 quotas, applied container-wide; quota limits on every other partition are \
                 dropped ({} user and {} group limit(s))",
                q.mountpoint, dropped.0, dropped.1
            ),
        ),
        Ok(None) => (
            if unread.is_empty() { Severity::Info } else { Severity::Warning },
            "quotas are on, but no partition sets a limit: nothing to carry".to_string(),
            "the container gets only its first-level quota (DISKSPACE, DISKINODES)".to_string(),
        ),
    };
    let over_json: Vec<_> = over
        .iter()
        .map(|(id, name, used, hard)| json!({"id": id, "name": name, "used_bytes": used, "hard_bytes": hard}))
        .collect();
    out.push(finding(
        codes::QUOTA_PARTITION,
        severity,
        title,
        evidence,
        action,
        json!({
            "partitions": partitions, "chosen": chosen, "requested": requested,
            "candidates": candidates, "unread": unread,
            "carried": {"users": carried.0, "groups": carried.1},
            "dropped": {"users": dropped.0, "groups": dropped.1},
            "over_limit": over_json,
        }),
    ));
}
