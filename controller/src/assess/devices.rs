//! `raw-device`: block devices the source uses without a file system, which cannot move
//! into a container.

use std::collections::HashSet;

use p2c_common::findings::{Finding, Severity, codes};
use p2c_common::inventory::{BlockDevice, Inventory, MountKind, RawBinding};
use p2c_common::units::human_bytes;
use serde_json::json;

use super::{Ctx, finding};

/// Partitions smaller than this without a file system are boot or reserved areas (BIOS
/// boot, an MBR extended partition), not data.
const MIN_DATA_DEVICE: u64 = 16 << 20;

/// Device kinds that are never data disks of the server.
const IGNORED_KINDS: [&str; 4] = ["loop", "rom", "ram", "zram"];

fn dev_path(name: &str) -> String {
    if name.starts_with('/') { name.to_string() } else { format!("/dev/{name}") }
}

/// Devices mounted as file systems (local or network) and swap devices: accounted for by
/// other findings.
fn known_devices(inv: &Inventory) -> HashSet<String> {
    inv.mounts
        .iter()
        .filter(|m| m.kind != MountKind::Pseudo)
        .map(|m| m.device.clone())
        .chain(inv.swaps.iter().map(|s| s.device.clone()))
        .collect()
}

/// Why an unmounted block device matters, or `None` when it does not.
fn unused(b: &BlockDevice, known: &HashSet<String>) -> Option<String> {
    let path = dev_path(&b.name);
    if IGNORED_KINDS.contains(&b.kind.as_str())
        || b.mountpoint.is_some()
        || !b.holders.is_empty()
        || known.contains(&path)
        || known.contains(&b.name)
    {
        return None;
    }
    let size = human_bytes(b.size_bytes);
    match b.fs_type.as_deref() {
        None if b.size_bytes < MIN_DATA_DEVICE => None,
        None => Some(format!(
            "{path} ({}, {size}) has no file system and is not mounted: raw data, not copied",
            b.kind
        )),
        Some("swap") => Some(format!("{path} ({}, {size}) is a swap area not in use: not carried", b.kind)),
        Some(t @ ("LVM2_member" | "linux_raid_member" | "crypto_LUKS")) => {
            Some(format!("{path} ({}, {size}) is an unused {t} with nothing built on it: not copied", b.kind))
        }
        Some(t) => Some(format!(
            "{path} ({}, {size}) holds a {t} file system that is not mounted: its files are not \
             copied (mount it on the source to include them)",
            b.kind
        )),
    }
}

pub(super) fn raw_device(cx: &Ctx<'_>, out: &mut Vec<Finding>) {
    let inv = cx.inv;
    let mut evidence = Vec::new();
    let mut raw = Vec::new();
    for r in &inv.raw_bindings {
        evidence.push(format!("raw binding {} → {} (from {})", r.raw_device, r.bound_to, r.source));
        raw.push(json!({"raw_device": r.raw_device, "bound_to": r.bound_to, "source": r.source}));
    }
    let mut swaps = Vec::new();
    for s in inv.swaps.iter().filter(|s| s.kind == "partition") {
        evidence.push(format!(
            "swap partition {} ({}{}{}): the container's swap is SWAPPAGES instead",
            s.device,
            human_bytes(s.size_bytes),
            if s.active { ", active" } else { "" },
            if s.in_fstab { ", in fstab" } else { "" }
        ));
        swaps.push(json!({"device": s.device, "size_bytes": s.size_bytes, "active": s.active}));
    }
    let known = known_devices(inv);
    let mut devices = Vec::new();
    for b in &inv.block_devices {
        if let Some(why) = unused(b, &known) {
            evidence.push(why.clone());
            devices.push(json!({"device": dev_path(&b.name), "kind": b.kind,
                "fs_type": b.fs_type, "size_bytes": b.size_bytes, "why": why}));
        }
    }
    let mut refs = Vec::new();
    let mut seen = HashSet::new();
    for d in cx.scan.map(|s| s.device_refs.as_slice()).unwrap_or_default() {
        // fstab lines mounting a file system are fs-merge's; swap lines are listed above
        if d.context.starts_with("fstab") || known.contains(&d.device) {
            continue;
        }
        // The line that makes a raw binding is the binding, listed above.
        let file = d.file.display();
        let binding =
            |r: &RawBinding| r.source == file && (r.raw_device == d.device || r.bound_to == d.device);
        if inv.raw_bindings.iter().any(binding) {
            continue;
        }
        if !seen.insert((d.device.as_str(), &d.file)) {
            continue;
        }
        evidence.push(format!("{} line {} ({}) names {}", d.file, d.line, d.context, d.device));
        refs.push(json!({"device": d.device, "file": d.file, "line": d.line,
            "context": d.context, "text": d.text}));
    }
    if evidence.is_empty() {
        return;
    }
    out.push(finding(
        codes::RAW_DEVICE,
        Severity::Warning,
        format!("{} block device use(s) cannot move into the container", evidence.len()),
        evidence,
        "raw devices are not migrated: the container has no block devices, data on raw \
         partitions and volumes is not copied, and services using them need file-backed \
         storage; the configs naming them are copied unchanged; swap becomes SWAPPAGES",
        json!({"raw_bindings": raw, "swap_partitions": swaps, "unused_devices": devices,
            "config_references": refs}),
    ));
}
