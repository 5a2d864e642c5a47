//! The container around the copied tree: its storage prepared before the first file
//! arrives (quota plan, btrfs subvolume, ploop image), and the finalisation after the last
//! pass (config, guest rewrite, verification against the manifest, quotas).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use p2c_common::inventory::Inventory;
use p2c_common::migration::{MigrateOptions, VerifySummary};
use p2c_common::paths::RelPath;
use p2c_common::scan::ScanResult;
use tracing::warn;

use crate::context::Controller;
use crate::ctconf::CtConf;
use crate::migration::{MigrateError, MigrationHandle, QuotaState};
use crate::quota::{self, QuotaPlan};

/// Plans the quotas, picks how the node applies them and prepares the private area (a btrfs
/// subvolume, a ploop image mounted at the container's root...) before any file arrives.
pub fn prepare_storage(
    ctl: &Controller,
    h: &MigrationHandle,
    inv: &Inventory,
    scan: Option<&ScanResult>,
    opts: &MigrateOptions,
) -> Result<(), MigrateError> {
    if h.with_quota(|q| q.is_some()) {
        return Ok(());
    }
    // A directory source says nothing true about its usage through its mounts (they are the
    // node's): use what the scan counted instead.
    let mut sized = inv.clone();
    if let (true, Some(scan)) = (inv.facts_from == "tree", scan) {
        let mut first = true;
        for m in sized.mounts.iter_mut().filter(|m| m.kind == p2c_common::inventory::MountKind::Local) {
            m.used_bytes = if first { scan.used_bytes } else { 0 };
            m.inodes_used = if first { scan.inodes } else { 0 };
            first = false;
        }
    }
    let plan = QuotaPlan::compute(&sized, opts).map_err(|e| MigrateError::Quota(e.to_string()))?;
    let private_root = ctl.settings.vz_root.join("private");
    root_only_dir(&private_root)
        .map_err(|e| MigrateError::Quota(format!("{}: {e}", private_root.display())))?;
    let selection = quota::select(&quota::Node::linux(), opts.layout, opts.made_for(), &private_root);
    let area = ctl.settings.private_area(h.ctid(), opts);
    area.prepare().map_err(|e| MigrateError::Quota(format!("{}: {e}", area.dir.display())))?;
    let private = area.dir.clone();
    selection.backend.prepare(h.ctid(), &private, &plan).map_err(|e| MigrateError::Quota(e.to_string()))?;
    h.log(format!("quotas will be applied by {}", selection.backend.name()));
    let (root, mount) = if opts.layout == p2c_common::migration::Layout::Ploop {
        let mp = ctl.settings.root_dir(h.ctid());
        if let Some(parent) = mp.parent() {
            root_only_dir(parent).map_err(|e| MigrateError::Quota(format!("{}: {e}", parent.display())))?;
        }
        // A crashed run may have left the image mounted there.
        let _ = std::process::Command::new("umount").arg(&mp).stderr(std::process::Stdio::null()).status();
        let format = quota::ploop::Format::of(opts.made_for());
        let g = quota::ploop::Ploop::new(quota::Node::linux(), format)
            .mount(&private, &mp)
            .map_err(|e| MigrateError::Quota(e.to_string()))?;
        (mp, Some(g))
    } else {
        (area.tree(), None)
    };
    h.with_quota(|q| *q = Some(QuotaState { plan, selection, root, mount }));
    Ok(())
}

/// Creates `dir` for root only, or takes group and other access away from it.
///
/// Container trees hold what the source server held: setuid-root binaries, device nodes such
/// as `/dev/mem` (mode 0666), and each tree's own root takes the source root's mode (0755).
/// What keeps unprivileged users of the node from running or opening those is the directory
/// above the trees, which must therefore be root-only, as vzctl keeps `/vz/private`.
fn root_only_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        warn!(dir = %dir.display(), "container trees were open to other users of the node ({mode:o}); making it 0700");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o7700))?;
    }
    Ok(())
}

/// Mounts the ploop image of finished container `ctid` at its mount point, for a check
/// after the fact (`p2c verify`, a boot check); returns the mount point and the guard.
pub fn mount_image(
    ctl: &Controller,
    ctid: u32,
    opts: &MigrateOptions,
) -> Result<(PathBuf, quota::ploop::MountGuard), quota::QuotaError> {
    let mp = ctl.settings.root_dir(ctid);
    let format = quota::ploop::Format::of(opts.made_for());
    let guard =
        quota::ploop::Ploop::new(quota::Node::linux(), format).mount(&ctl.settings.private_dir(ctid), &mp)?;
    Ok((mp, guard))
}

/// Where the container's files are (the private area's tree, or its mounted image).
pub fn ct_root(ctl: &Controller, h: &MigrationHandle) -> PathBuf {
    h.with_quota(|q| q.as_ref().map(|q| q.root.clone()))
        .unwrap_or_else(|| ctl.settings.private_area(h.ctid(), h.options()).tree())
}

pub fn write_conf(
    ctl: &Controller,
    h: &MigrationHandle,
    inv: &Inventory,
    opts: &MigrateOptions,
) -> Result<CtConf, MigrateError> {
    let mut c =
        CtConf::from_inventory(h.ctid(), h.agent(), &ctl.settings.vz_root, opts.layout, opts.made_for(), inv);
    c.created = time_string();
    c.quota = h.with_quota(|q| q.as_ref().map(|q| q.plan.conf_keys())).unwrap_or_default();
    let area = ctl.settings.private_area(h.ctid(), opts);
    area.write_conf(&c.render())
        .map_err(|e| MigrateError::Finalise(format!("{}: {e}", area.conf_file().display())))?;
    Ok(c)
}

fn time_string() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("unix time {}", crate::state::now()))
}

/// Config, guest rewrite, verification against the last manifest, then quotas.
pub async fn finalise(
    ctl: &Controller,
    h: &MigrationHandle,
    inv: &Inventory,
    opts: &MigrateOptions,
) -> Result<(), MigrateError> {
    let conf = write_conf(ctl, h, inv, opts)?;
    let root = ct_root(ctl, h);
    let changes = crate::preflight::containerise(&root, inv, &conf).map_err(MigrateError::Finalise)?;
    h.log(format!(
        "guest rewritten for a container: {} file(s) changed, backups in /etc/p2c/backup",
        changes.len()
    ));
    let rewritten = changes.iter().filter_map(|c| RelPath::from_user(c.path.as_bytes()).ok()).collect();
    h.update_summary(|s| s.guest_changes = changes);
    let only = h.written_since_verify();
    let v = verify_tree(ctl, h.ctid(), &root, rewritten, opts.assess.keep_xattrs, only).await?;
    if !v.ok {
        let first = v.mismatches.first().cloned().unwrap_or_default();
        h.update_summary(|s| s.verify = Some(v.clone()));
        return Err(MigrateError::Finalise(format!(
            "verification found {} difference(s) between the container and the source (first: {first}); run the migration again",
            v.mismatches.len()
        )));
    }
    h.log(format!("verified {} entries against the source manifest", v.checked));
    let start = ctl.settings.private_area(h.ctid(), opts).start_commands(h.ctid());
    h.update_summary(|s| {
        s.verify = Some(v);
        s.start_commands = start;
    });
    let tree = crate::tree::Tree::open(&root).map_err(|e| MigrateError::Finalise(e.to_string()))?;
    tokio::task::spawn_blocking(move || rustix::fs::syncfs(tree.root_fd()))
        .await
        .map_err(|e| MigrateError::Finalise(e.to_string()))?
        .map_err(|e| MigrateError::Finalise(format!("sync: {e}")))?;
    apply_quota(ctl, h).await
}

/// Applies the quota plan with the selected method (after unmounting a ploop image).
async fn apply_quota(ctl: &Controller, h: &MigrationHandle) -> Result<(), MigrateError> {
    let Some(mut q) = h.with_quota(Option::take) else { return Ok(()) };
    if let Some(m) = q.mount.take() {
        m.unmount().map_err(|e| MigrateError::Quota(e.to_string()))?;
    }
    let private = ctl.settings.private_dir(h.ctid());
    let ctid = h.ctid();
    let (outcome, q) = tokio::task::spawn_blocking(move || {
        let o = q.selection.backend.apply(ctid, &private, &q.plan);
        (o, q)
    })
    .await
    .map_err(|e| MigrateError::Quota(e.to_string()))?;
    let outcome = outcome.map_err(|e| MigrateError::Quota(e.to_string()))?;
    if outcome.applied {
        h.log(format!("quotas applied by {}", outcome.method.as_str()));
    } else {
        let why = outcome.details.first().cloned().unwrap_or_default();
        h.log(format!("quotas recorded, not enforced: {why}"));
        h.update_summary(|s| s.warnings.push(format!("quotas not enforced on this node: {why}")));
    }
    h.update_summary(|s| {
        s.quota = serde_json::to_value(&outcome).ok();
        s.warnings.extend(q.plan.warnings.iter().cloned());
    });
    Ok(())
}

/// Verifies a container tree against its last complete manifest.
pub async fn verify_tree(
    ctl: &Controller,
    ctid: u32,
    root: &Path,
    rewritten: HashSet<RelPath>,
    keep_xattrs: bool,
    content_only: Option<HashSet<RelPath>>,
) -> Result<VerifySummary, MigrateError> {
    let dir = ctl.settings.manifest_dir(ctid);
    let (_, manifest) = crate::receive::manifest::latest(&dir)
        .ok_or_else(|| MigrateError::Other(format!("CT {ctid} has no complete copy pass to verify")))?;
    let tree = root.to_path_buf();
    let mut own_dirs = vec![crate::tree::rel("etc/p2c")];
    let mut rewritten = rewritten;
    // A ploop image's file system has its own lost+found (mkfs.ext4 makes it), not the
    // source's unless the source sent one (which the manifest then checks as any entry),
    // its own quota files at its root, written when the quotas are applied, and (vz7/vz9)
    // ploop's balloon file.
    if quota::ploop::image_path(&ctl.settings.private_dir(ctid)).exists() {
        own_dirs.push(crate::tree::rel("lost+found"));
        rewritten.extend(quota::ploop::OWN_FILES.map(crate::tree::rel));
    }
    let opts =
        crate::verify::VerifyOptions { rewritten, own_dirs, keep_xattrs, sweep_temps: true, content_only };
    tokio::task::spawn_blocking(move || crate::verify::verify(&tree, &manifest, &opts))
        .await
        .map_err(|e| MigrateError::Other(e.to_string()))?
        .map_err(|e| MigrateError::Other(e.to_string()))
}

/// Verifies every file's content now (before a cutover stops anything), so that the
/// verification inside the downtime only re-reads what the final pass writes. Files found
/// different lose their record, so the final pass copies them again.
pub async fn verify_before_cutover(ctl: &Controller, h: &MigrationHandle) -> Result<(), MigrateError> {
    let root = ct_root(ctl, h);
    let keep = h.options().assess.keep_xattrs;
    h.log("verifying the container's content before the cutover");
    let v = verify_tree(ctl, h.ctid(), &root, Default::default(), keep, None).await?;
    if !v.ok {
        h.log(format!("{} difference(s) found; the final pass copies them again", v.mismatches.len()));
        ctl.store.forget_files(h.ctid(), &v.mismatched_paths)?;
    }
    h.verified_except(v.mismatched_paths);
    Ok(())
}
