//! What quotas the container gets, computed from the source's inventory and the operator's
//! options. Pure: nothing here touches the node.
//!
//! The seed's rule: only one source partition keeps its quotas. Its per-user and per-group
//! limits become the container's second-level quotas and apply to the whole container
//! (every source partition is merged into one tree); quotas of every other partition are
//! dropped, and the plan counts what is carried and what is dropped.
//!
//! First-level quota (`DISKSPACE`, `DISKINODES`) is the container's total:
//!
//! * operator-given values (`MigrateOptions::diskspace` / `diskinodes`) are used as they are;
//! * otherwise they are computed from the source's usage, summed over its local mounts
//!   (a device mounted twice counts once), with headroom: by default the soft limit is
//!   usage + 20 % and the hard limit usage + 25 %. `headroom_percent = P` makes them
//!   usage + P % and usage + 1.25·P %. The percentage is taken of at least 256 MiB and
//!   16384 inodes, so a tiny source still gets room to work (≥ 51 MiB / 3277 inodes soft,
//!   ≥ 64 MiB / 4096 inodes hard with the defaults).
//!
//! `QUOTAUGIDLIMIT` (how many distinct uids and gids the second-level quota tracks) covers
//! every uid and gid the source's quota files know about, on every partition, since all of
//! them end up owning files in the one container tree, plus a margin of half that count
//! (at least 64), rounded up to a multiple of 100. vzquota does not load the records past
//! the limit ("ugid limit was exceeded"), so too small a value silently loses limits. With
//! no partition kept it is 0, which switches second-level quota off.
//!
//! `QUOTATIME` (the first-level grace period, seconds) is the kept partition's longer grace
//! period; the second-level grace periods are that partition's block and inode grace.

use std::collections::{BTreeMap, BTreeSet};

use p2c_common::inventory::{FsQuota, Inventory, MountKind, QuotaLimit, QuotaSource};
use p2c_common::migration::{Layout, MigrateOptions};
use serde::{Deserialize, Serialize};

use super::QuotaError;

pub const DEFAULT_SOFT_HEADROOM_PERCENT: u32 = 20;
pub const DEFAULT_HARD_HEADROOM_PERCENT: u32 = 25;
/// Headroom percentages are taken of at least this much usage (1 KiB blocks; 256 MiB).
pub const MIN_HEADROOM_BASIS_KIB: u64 = 256 * 1024;
/// Headroom percentages are taken of at least this many inodes.
pub const MIN_HEADROOM_BASIS_INODES: u64 = 16_384;
/// Largest accepted `headroom_percent`.
pub const MAX_HEADROOM_PERCENT: u32 = 1000;

/// Room above the source's usage for computed limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Headroom {
    pub soft_percent: u32,
    pub hard_percent: u32,
}

impl Default for Headroom {
    fn default() -> Self {
        Headroom { soft_percent: DEFAULT_SOFT_HEADROOM_PERCENT, hard_percent: DEFAULT_HARD_HEADROOM_PERCENT }
    }
}

impl Headroom {
    /// The operator's single percentage `P` as soft `P` and hard `1.25·P` (rounded up);
    /// the defaults without one.
    pub fn from_option(percent: Option<u32>) -> Result<Headroom, QuotaError> {
        match percent {
            None => Ok(Headroom::default()),
            Some(p) if p > MAX_HEADROOM_PERCENT => Err(QuotaError::InvalidOption(format!(
                "headroom of {p}% is more than the {MAX_HEADROOM_PERCENT}% accepted"
            ))),
            Some(p) => Ok(Headroom { soft_percent: p, hard_percent: p + p.div_ceil(4) }),
        }
    }

    /// `(soft, hard)` for `used`, the percentages taken of at least `min_basis`.
    pub fn limits(&self, used: u64, min_basis: u64) -> (u64, u64) {
        let basis = used.max(min_basis) as u128;
        let room = |pct: u32| (basis * pct as u128).div_ceil(100);
        let cap = |v: u128| u64::try_from(v).unwrap_or(u64::MAX);
        (cap(used as u128 + room(self.soft_percent)), cap(used as u128 + room(self.hard_percent)))
    }
}

/// Where a first-level limit came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum LimitOrigin {
    /// From the source's usage with headroom.
    Computed { used: u64, headroom: Headroom },
    /// Given by the operator.
    Operator,
}

/// One source partition that has quotas, and what happens to them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionQuota {
    pub mountpoint: String,
    pub device: String,
    pub fs_type: String,
    pub format: String,
    pub source: QuotaSource,
    /// Users and groups with at least one non-zero limit.
    pub user_limits: usize,
    pub group_limits: usize,
    /// Whether this partition's limits become the container's second-level quotas.
    pub kept: bool,
}

impl PartitionQuota {
    pub fn limits(&self) -> usize {
        self.user_limits + self.group_limits
    }
}

/// Everything about the container's quotas, before anything is applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuotaPlan {
    /// Mount point of the source partition whose limits are kept.
    pub chosen: Option<String>,
    /// Every source partition with quota records, kept or dropped.
    pub partitions: Vec<PartitionQuota>,
    /// Usage of the source's local file systems: 1 KiB blocks and inodes.
    pub used_kib: u64,
    pub used_inodes: u64,
    /// First-level limits `(soft, hard)`: 1 KiB blocks and inodes.
    pub diskspace: (u64, u64),
    pub diskspace_origin: LimitOrigin,
    pub diskinodes: (u64, u64),
    pub diskinodes_origin: LimitOrigin,
    /// First-level grace period in seconds.
    pub quotatime: u64,
    /// Distinct uids + gids the second-level quota tracks; 0 turns it off.
    pub ugid_limit: u64,
    /// Second-level limits (only ids with a non-zero limit), sorted by id.
    pub users: Vec<QuotaLimit>,
    pub groups: Vec<QuotaLimit>,
    /// Second-level grace periods in seconds.
    pub block_grace_secs: u64,
    pub inode_grace_secs: u64,
    pub layout: Layout,
    /// Things the operator should know (limits below usage, ...).
    pub warnings: Vec<String>,
}

fn check_pair(what: &'static str, pair: (u64, u64)) -> Result<(u64, u64), QuotaError> {
    let (soft, hard) = pair;
    if hard == 0 || soft > hard {
        return Err(QuotaError::InvalidLimit { what, soft, hard });
    }
    Ok(pair)
}

/// Limits with a bound, one per id (the last record of an id wins), sorted by id.
fn limited(records: &[QuotaLimit]) -> Vec<QuotaLimit> {
    let by_id: BTreeMap<u32, &QuotaLimit> =
        records.iter().filter(|q| q.has_limits()).map(|q| (q.id, q)).collect();
    by_id.into_values().cloned().collect()
}

/// `vzquota`'s ugid limit for `ids` distinct uids and gids (see the module docs).
pub fn ugid_limit_for(ids: u64) -> u64 {
    if ids == 0 {
        return 0;
    }
    let with_margin = ids + (ids / 2).max(64);
    with_margin.div_ceil(100) * 100
}

impl QuotaPlan {
    /// Computes the plan; fails on an ambiguous or unknown quota partition and on
    /// inconsistent operator limits.
    pub fn compute(inv: &Inventory, opts: &MigrateOptions) -> Result<QuotaPlan, QuotaError> {
        let chosen: Option<&FsQuota> = inv.choose_quota_partition(opts.assess.quota_partition.as_deref())?;
        let chosen_mp = chosen.map(|q| q.mountpoint.clone());
        let mut warnings = Vec::new();

        let partitions: Vec<PartitionQuota> = inv
            .quotas
            .iter()
            .map(|q| PartitionQuota {
                mountpoint: q.mountpoint.clone(),
                device: q.device.clone(),
                fs_type: q.fs_type.clone(),
                format: q.format.clone(),
                source: q.source,
                user_limits: limited(&q.users).len(),
                group_limits: limited(&q.groups).len(),
                kept: chosen_mp.as_deref() == Some(q.mountpoint.as_str()),
            })
            .collect();

        // Usage of the local file systems, each device once.
        let mut seen = BTreeSet::new();
        let (mut used_bytes, mut used_inodes) = (0u64, 0u64);
        for m in inv.mounts.iter().filter(|m| m.kind == MountKind::Local) {
            let key = if m.device.is_empty() || m.device == "none" {
                m.mountpoint.clone()
            } else {
                m.device.clone()
            };
            if seen.insert(key) {
                used_bytes = used_bytes.saturating_add(m.used_bytes);
                used_inodes = used_inodes.saturating_add(m.inodes_used);
            }
        }
        let used_kib = used_bytes.div_ceil(1024);

        let headroom = Headroom::from_option(opts.headroom_percent)?;
        let (diskspace, diskspace_origin) = match opts.diskspace {
            Some(pair) => (check_pair("diskspace", pair)?, LimitOrigin::Operator),
            None => (
                headroom.limits(used_kib, MIN_HEADROOM_BASIS_KIB),
                LimitOrigin::Computed { used: used_kib, headroom },
            ),
        };
        let (diskinodes, diskinodes_origin) = match opts.diskinodes {
            Some(pair) => (check_pair("diskinodes", pair)?, LimitOrigin::Operator),
            None => (
                headroom.limits(used_inodes, MIN_HEADROOM_BASIS_INODES),
                LimitOrigin::Computed { used: used_inodes, headroom },
            ),
        };
        if diskspace.1 < used_kib {
            warnings.push(format!(
                "DISKSPACE hard limit {} KiB is below the source's usage of {used_kib} KiB: the copy will not fit",
                diskspace.1
            ));
        }
        if diskinodes.1 < used_inodes {
            warnings.push(format!(
                "DISKINODES hard limit {} is below the source's {used_inodes} inodes in use: the copy will not fit",
                diskinodes.1
            ));
        }

        let (users, groups, block_grace_secs, inode_grace_secs) = match chosen {
            Some(q) => (limited(&q.users), limited(&q.groups), q.block_grace_secs, q.inode_grace_secs),
            None => (Vec::new(), Vec::new(), 0, 0),
        };

        // Every id any partition's quota knows about owns files in the merged tree.
        let uids: BTreeSet<u32> = inv.quotas.iter().flat_map(|q| q.users.iter().map(|l| l.id)).collect();
        let gids: BTreeSet<u32> = inv.quotas.iter().flat_map(|q| q.groups.iter().map(|l| l.id)).collect();
        let ugid_limit = if chosen.is_some() { ugid_limit_for((uids.len() + gids.len()) as u64) } else { 0 };

        for p in partitions.iter().filter(|p| !p.kept && p.limits() > 0) {
            warnings.push(format!(
                "quotas of {} ({} user and {} group limits) are dropped: only {} keeps its quotas",
                p.mountpoint,
                p.user_limits,
                p.group_limits,
                chosen_mp.as_deref().unwrap_or("no partition")
            ));
        }
        for l in users.iter().chain(groups.iter()) {
            if l.block_hard > diskspace.1 {
                warnings.push(format!(
                    "id {}: block hard limit {} KiB is above the container's DISKSPACE hard limit {} KiB",
                    l.id, l.block_hard, diskspace.1
                ));
            }
        }

        Ok(QuotaPlan {
            chosen: chosen_mp,
            partitions,
            used_kib,
            used_inodes,
            diskspace,
            diskspace_origin,
            diskinodes,
            diskinodes_origin,
            quotatime: block_grace_secs.max(inode_grace_secs),
            ugid_limit,
            users,
            groups,
            block_grace_secs,
            inode_grace_secs,
            layout: opts.layout,
            warnings,
        })
    }

    /// User and group limits that become the container's second-level quotas.
    pub fn carried_limits(&self) -> usize {
        self.users.len() + self.groups.len()
    }

    /// User and group limits of the partitions that are not kept.
    pub fn dropped_limits(&self) -> usize {
        self.partitions.iter().filter(|p| !p.kept).map(PartitionQuota::limits).sum()
    }

    /// Whether there are second-level limits to apply.
    pub fn has_second_level(&self) -> bool {
        self.ugid_limit > 0 && self.carried_limits() > 0
    }

    /// The container config's quota keys in OpenVZ format (`soft:hard`).
    pub fn conf_keys(&self) -> Vec<(String, String)> {
        vec![
            ("DISKSPACE".into(), format!("{}:{}", self.diskspace.0, self.diskspace.1)),
            ("DISKINODES".into(), format!("{}:{}", self.diskinodes.0, self.diskinodes.1)),
            ("QUOTATIME".into(), self.quotatime.to_string()),
            ("QUOTAUGIDLIMIT".into(), self.ugid_limit.to_string()),
        ]
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
