//! Quotas on a Virtuozzo/OpenVZ node, through its own tools.
//!
//! First level: `vzctl set CTID --diskspace S:H --diskinodes S:H --quotatime T
//! --quotaugidlimit U --save` (vzctl(8); stores the values in the container config and
//! applies them at once if the container runs, else at its start).
//!
//! Second level (per user and group, vzquota(8), vzdqload(8)):
//! * container stopped (the normal case right after a migration): `vzctl quotainit CTID`
//!   creates the quota file (`vzquota init` with `-s 1 -u U` from the saved
//!   `QUOTAUGIDLIMIT`), then `vzdqload CTID -G -U` loads grace times and limits from a
//!   dump on standard input. vzdqload needs the quota stopped.
//! * container running: `vzquota setlimit2 CTID -t -u|-g BLOCK_GRACE INODE_GRACE` and
//!   `vzquota setlimit2 CTID -u|-g ID BSOFT BHARD ISOFT IHARD` (1 KiB blocks), which need
//!   the quota running with second-level quota on.
//!
//! The dump is the format `vzdqdump -G -U` prints and `vzdqload` reads (vzquota's
//! `src/vzdqdump.c`, `src/vzdqload.c`, `include/quotadump.h`): tab-separated lines
//! `ugid_quota_status: 1`, then `grace_time: TYPE BLOCK INODE` for type 0 (users) and 1
//! (groups), then `ugid_number: N` and `N` lines `ugid: ID TYPE BSOFT BHARD ISOFT IHARD`.
//! Lines starting with `#` are comments; vzdqload reads the numbers with `%u`, so each must
//! fit 32 bits. Building the commands and the dump is pure and unit tested.

use std::path::Path;

use super::cmd::Cmd;
use super::plan::QuotaPlan;
use super::{Method, Node, QuotaBackend, QuotaError, QuotaOutcome, Result};

/// `USRQUOTA` and `GRPQUOTA` in vzquota's dump.
const USR: u32 = 0;
const GRP: u32 = 1;

/// Whether this is a Virtuozzo/OpenVZ node with the quota tools.
pub fn detect(node: &Node) -> std::result::Result<String, String> {
    let missing = node.missing(&["vzctl", "vzquota", "vzdqload"]);
    if !missing.is_empty() {
        return Err(format!("not a Virtuozzo/OpenVZ node: {} not found", missing.join(", ")));
    }
    if !node.probe.exists(Path::new("/proc/vz")) {
        return Err(
            "vzctl and vzquota are installed but the running kernel is not an OpenVZ kernel (no /proc/vz)"
                .into(),
        );
    }
    Ok("Virtuozzo/OpenVZ node: vzctl, vzquota and vzdqload found, /proc/vz present".into())
}

/// `vzctl set CTID --diskspace S:H --diskinodes S:H --quotatime T --quotaugidlimit U --save`.
pub fn vzctl_set(ctid: u32, plan: &QuotaPlan) -> Cmd {
    Cmd::new("vzctl").args([
        "set".to_string(),
        ctid.to_string(),
        "--diskspace".into(),
        format!("{}:{}", plan.diskspace.0, plan.diskspace.1),
        "--diskinodes".into(),
        format!("{}:{}", plan.diskinodes.0, plan.diskinodes.1),
        "--quotatime".into(),
        plan.quotatime.to_string(),
        "--quotaugidlimit".into(),
        plan.ugid_limit.to_string(),
        "--save".into(),
    ])
}

pub fn vzctl_status(ctid: u32) -> Cmd {
    Cmd::new("vzctl").args(["status".to_string(), ctid.to_string()])
}

pub fn vzctl_quotainit(ctid: u32) -> Cmd {
    Cmd::new("vzctl").args(["quotainit".to_string(), ctid.to_string()])
}

fn fits_u32(what: String, value: u64) -> Result<u64> {
    if value > u32::MAX as u64 {
        return Err(QuotaError::TooLarge { what, value, max: u32::MAX as u64, format: "vzdqload" });
    }
    Ok(value)
}

/// The second-level limits and grace times in `vzdqdump -G -U` format.
pub fn dump(plan: &QuotaPlan) -> Result<String> {
    let mut s = String::new();
    s.push_str("ugid_quota_status:\t1\n");
    s.push_str("#grace_time:\ttype\tblock\tinode\n");
    for t in [USR, GRP] {
        s.push_str(&format!("grace_time:\t{t}\t{}\t{}\n", plan.block_grace_secs, plan.inode_grace_secs));
    }
    s.push_str(&format!("ugid_number:\t{}\n", plan.users.len() + plan.groups.len()));
    s.push_str("#ugid:\tID\ttype\tbsoft\tbhard\tisoft\tihard\n");
    let all = plan.users.iter().map(|l| (USR, l)).chain(plan.groups.iter().map(|l| (GRP, l)));
    for (t, l) in all {
        let kind = if t == USR { "uid" } else { "gid" };
        let v = |field: &str, x: u64| fits_u32(format!("{kind} {} {field}", l.id), x);
        s.push_str(&format!(
            "ugid:\t{}\t{t}\t{}\t{}\t{}\t{}\n",
            l.id,
            v("block soft limit", l.block_soft)?,
            v("block hard limit", l.block_hard)?,
            v("inode soft limit", l.inode_soft)?,
            v("inode hard limit", l.inode_hard)?,
        ));
    }
    Ok(s)
}

/// `vzdqload CTID -G -U` with the dump on standard input.
pub fn vzdqload(ctid: u32, plan: &QuotaPlan) -> Result<Cmd> {
    Ok(Cmd::new("vzdqload").args([ctid.to_string(), "-G".into(), "-U".into()]).stdin(dump(plan)?))
}

/// `vzquota setlimit2` lines for a running container: grace times, then each id.
pub fn setlimit2(ctid: u32, plan: &QuotaPlan) -> Result<Vec<Cmd>> {
    let id = ctid.to_string();
    let mut cmds = Vec::new();
    for flag in ["-u", "-g"] {
        cmds.push(Cmd::new("vzquota").args([
            "setlimit2",
            &id,
            "-t",
            flag,
            &plan.block_grace_secs.to_string(),
            &plan.inode_grace_secs.to_string(),
        ]));
    }
    let all = plan.users.iter().map(|l| ("-u", l)).chain(plan.groups.iter().map(|l| ("-g", l)));
    for (flag, l) in all {
        // vzquota reads inode limits as 32-bit numbers, block limits as 64-bit.
        fits_u32(format!("id {} inode soft limit", l.id), l.inode_soft)?;
        fits_u32(format!("id {} inode hard limit", l.id), l.inode_hard)?;
        cmds.push(Cmd::new("vzquota").args([
            "setlimit2".to_string(),
            id.clone(),
            flag.into(),
            l.id.to_string(),
            l.block_soft.to_string(),
            l.block_hard.to_string(),
            l.inode_soft.to_string(),
            l.inode_hard.to_string(),
        ]));
    }
    Ok(cmds)
}

/// Whether `vzctl status` says the container runs (`CTID 101 exist mounted running`).
pub fn status_running(stdout: &str) -> bool {
    stdout.split_whitespace().nth(4).is_some_and(|w| w == "running")
}

pub struct VzToolsBackend {
    node: Node,
}

impl VzToolsBackend {
    pub fn new(node: Node) -> VzToolsBackend {
        VzToolsBackend { node }
    }

    fn run(&self, out: &mut QuotaOutcome, cmd: &Cmd) -> Result<String> {
        out.commands.push(cmd.to_string());
        Ok(self.node.runner.run(cmd)?.stdout_str())
    }
}

impl QuotaBackend for VzToolsBackend {
    fn method(&self) -> Method {
        Method::Vztools
    }

    fn prepare(&self, _ctid: u32, _private: &Path, _plan: &QuotaPlan) -> Result<()> {
        // vzctl sets quota up when the container is mounted or started.
        Ok(())
    }

    fn apply(&self, ctid: u32, _private: &Path, plan: &QuotaPlan) -> Result<QuotaOutcome> {
        let mut out = QuotaOutcome::new(Method::Vztools, plan);
        self.run(&mut out, &vzctl_set(ctid, plan))?;
        out.applied = true;
        out.details.push(format!(
            "container {ctid}: DISKSPACE {}:{} DISKINODES {}:{} QUOTATIME {} QUOTAUGIDLIMIT {} set with vzctl",
            plan.diskspace.0,
            plan.diskspace.1,
            plan.diskinodes.0,
            plan.diskinodes.1,
            plan.quotatime,
            plan.ugid_limit
        ));
        if !plan.has_second_level() {
            out.details.push(format!(
                "container {ctid}: no user or group limits are carried; second-level quota stays off"
            ));
            return Ok(out);
        }
        let status = self.run(&mut out, &vzctl_status(ctid))?;
        if status_running(&status) {
            for c in setlimit2(ctid, plan)? {
                self.run(&mut out, &c)?;
            }
            out.details.push(format!(
                "container {ctid} is running: {} user and {} group limits set with vzquota setlimit2",
                plan.users.len(),
                plan.groups.len()
            ));
        } else {
            let load = vzdqload(ctid, plan)?;
            self.run(&mut out, &vzctl_quotainit(ctid))?;
            self.run(&mut out, &load)?;
            out.details.push(format!(
                "container {ctid} is stopped: quota file initialised, {} user and {} group limits loaded with vzdqload",
                plan.users.len(),
                plan.groups.len()
            ));
        }
        out.second_level_applied = true;
        Ok(out)
    }
}

#[cfg(test)]
#[path = "vztools_tests.rs"]
mod tests;
