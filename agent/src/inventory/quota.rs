//! Per-user and per-group quotas of the source's local file systems: from the kernel with
//! quotactl(2) where quotas are active (live facts), else from the quota files at each
//! file system's root (see [`super::quotafile`]). Never from tool output.

use std::path::{Path, PathBuf};

use p2c_common::inventory::{FsQuota, QuotaLimit, QuotaSource};

use super::mounts::LocatedMount;
use super::names::Names;
use super::quotactl::{KernelInfo, QuotaCtl, QuotactlError, format_name};
use super::quotafile::{self, DiskQuota, MAX_ENTRIES, QuotaFile, QuotaType};

/// Limits and usage of one quota type of one file system.
#[derive(Debug, PartialEq)]
struct TypeQuota {
    source: QuotaSource,
    format: String,
    grace: KernelInfo,
    entries: Vec<DiskQuota>,
    truncated: bool,
}

/// The quotas of every local mount in `mounts` that has quota options, quota files at its
/// root, or is the root file system. `live` allows asking the kernel through `ctl`.
pub fn collect_quotas(
    mounts: &[LocatedMount],
    live: bool,
    ctl: &dyn QuotaCtl,
    names: &Names,
) -> (Vec<FsQuota>, Vec<String>) {
    let mut out = Vec::new();
    let mut gaps = Vec::new();
    for m in mounts {
        if m.mount.kind != p2c_common::inventory::MountKind::Local {
            continue;
        }
        let opts: Vec<String> = m.mount.quota_options().into_iter().map(str::to_string).collect();
        let files: Vec<(QuotaType, Option<PathBuf>)> = [QuotaType::User, QuotaType::Group]
            .into_iter()
            .map(|k| (k, quota_file(&m.live_path, &opts, k)))
            .collect();
        let has_files = files.iter().any(|(_, f)| f.is_some());
        if opts.is_empty() && !has_files && m.mount.mountpoint != "/" {
            continue;
        }
        let mp = &m.mount.mountpoint;
        let mut per_type: Vec<(QuotaType, TypeQuota)> = Vec::new();
        for (kind, file) in files {
            // Kernel quotas of a mount the tree merely sits in are not the tree's.
            let kernel = if live && m.is_mount_point {
                let ids = || file_ids(file.as_deref(), kind);
                match kernel_quota(ctl, Path::new(&m.mount.device), kind, &m.mount.fs_type, ids) {
                    Ok(q) => Some(q),
                    Err(QuotactlError::NotActive { .. } | QuotactlError::Unsupported { .. }) => None,
                    Err(e) => {
                        gaps.push(format!("quotas of {mp}: {e}; reading the quota files instead"));
                        None
                    }
                }
            } else {
                None
            };
            let q = match (kernel, file) {
                (Some(q), _) => Some(q),
                (None, Some(f)) => match quotafile::read_quota_file(&f, kind) {
                    Ok(qf) => Some(from_file(qf)),
                    Err(e) => {
                        gaps.push(format!("quotas of {mp}: {e}"));
                        None
                    }
                },
                (None, None) => None,
            };
            if let Some(q) = q {
                if q.truncated {
                    gaps.push(format!(
                        "quotas of {mp}: only the first {MAX_ENTRIES} {} entries were read",
                        kind.name()
                    ));
                }
                per_type.push((kind, q));
            }
        }
        if per_type.is_empty() {
            if !opts.is_empty() {
                gaps.push(no_quota_reason(m, &opts, live));
            }
            continue;
        }
        out.push(fs_quota(m, per_type, names));
    }
    (out, gaps)
}

fn no_quota_reason(m: &LocatedMount, opts: &[String], live: bool) -> String {
    let mp = &m.mount.mountpoint;
    let why = if m.mount.fs_type == "xfs" {
        "xfs keeps quotas inside the file system, readable only while they are active (live facts)"
    } else if live {
        "quotas are not active in the kernel and no aquota.user/aquota.group files are at its root (ext4's internal quota feature keeps them in hidden inodes, readable only while active)"
    } else {
        "no aquota.user/aquota.group files are at its root (ext4's internal quota feature keeps them in hidden inodes, readable only while active)"
    };
    format!("quotas of {mp}: mounted with {} but none could be read: {why}", opts.join(","))
}

/// The quota file of `kind` at the root of the mount at `dir`: the one a `usrjquota=` /
/// `grpjquota=` option names, else `aquota.*`, else `quota.*`.
fn quota_file(dir: &Path, opts: &[String], kind: QuotaType) -> Option<PathBuf> {
    let opt = match kind {
        QuotaType::User => "usrjquota=",
        QuotaType::Group => "grpjquota=",
    };
    let named = opts
        .iter()
        .filter_map(|o| o.strip_prefix(opt))
        .map(|n| n.trim_start_matches('/'))
        .filter(|n| !n.is_empty() && !n.contains(".."));
    named.chain(kind.file_names()).map(|n| dir.join(n)).find(|p| p.is_file())
}

/// The ids a quota file holds, for kernels without Q_GETNEXTQUOTA.
fn file_ids(file: Option<&Path>, kind: QuotaType) -> Vec<u32> {
    file.and_then(|f| quotafile::read_quota_file(f, kind).ok())
        .map(|q| q.entries.iter().map(|e| e.id).collect())
        .unwrap_or_default()
}

fn from_file(q: QuotaFile) -> TypeQuota {
    TypeQuota {
        source: QuotaSource::Files,
        format: q.format.name().to_string(),
        grace: KernelInfo { block_grace: q.block_grace, inode_grace: q.inode_grace },
        entries: q.entries,
        truncated: q.truncated,
    }
}

/// Reads active kernel quotas: every id with Q_GETNEXTQUOTA, or, where the kernel lacks
/// it, the ids `file_ids` gives with Q_GETQUOTA.
fn kernel_quota(
    ctl: &dyn QuotaCtl,
    device: &Path,
    kind: QuotaType,
    fs_type: &str,
    file_ids: impl FnOnce() -> Vec<u32>,
) -> Result<TypeQuota, QuotactlError> {
    let grace = ctl.info(device, kind)?;
    let format = match ctl.format(device, kind) {
        Ok(f) => format_name(f).to_string(),
        Err(_) if fs_type == "xfs" => "xfs".to_string(),
        Err(_) => "unknown".to_string(),
    };
    let mut entries = Vec::new();
    let mut truncated = false;
    let mut id = 0u32;
    loop {
        match ctl.next(device, kind, id) {
            Ok(Some(q)) => {
                // A kernel answering with an id below the one asked for would loop.
                if q.id < id {
                    break;
                }
                let found = q.id;
                entries.push(q);
                if entries.len() >= MAX_ENTRIES {
                    truncated = true;
                    break;
                }
                match found.checked_add(1) {
                    Some(n) => id = n,
                    None => break,
                }
            }
            Ok(None) => break,
            Err(QuotactlError::Unsupported { .. }) => {
                entries.clear();
                for id in file_ids().into_iter().take(MAX_ENTRIES) {
                    entries.push(ctl.get(device, kind, id)?);
                }
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(TypeQuota { source: QuotaSource::Kernel, format, grace, entries, truncated })
}

fn limit(q: &DiskQuota, name: Option<&String>) -> QuotaLimit {
    QuotaLimit {
        id: q.id,
        name: name.cloned(),
        block_soft: q.block_soft,
        block_hard: q.block_hard,
        inode_soft: q.inode_soft,
        inode_hard: q.inode_hard,
        used_bytes: q.cur_space,
        used_inodes: q.cur_inodes,
    }
}

fn fs_quota(m: &LocatedMount, per_type: Vec<(QuotaType, TypeQuota)>, names: &Names) -> FsQuota {
    let mut fq = FsQuota {
        mountpoint: m.mount.mountpoint.clone(),
        device: m.mount.device.clone(),
        fs_type: m.mount.fs_type.clone(),
        source: QuotaSource::Files,
        ..Default::default()
    };
    // The user quotas' format and grace times describe the file system; group quotas
    // stand in when there are no user quotas.
    let mut described = false;
    for (kind, q) in per_type {
        if !described {
            fq.format = q.format.clone();
            fq.block_grace_secs = q.grace.block_grace;
            fq.inode_grace_secs = q.grace.inode_grace;
            described = true;
        }
        if q.source == QuotaSource::Kernel {
            fq.source = QuotaSource::Kernel;
        }
        match kind {
            QuotaType::User => {
                fq.users = q.entries.iter().map(|e| limit(e, names.users.get(&e.id))).collect();
            }
            QuotaType::Group => {
                fq.groups = q.entries.iter().map(|e| limit(e, names.groups.get(&e.id))).collect();
            }
        }
    }
    fq
}

#[cfg(test)]
mod tests;
