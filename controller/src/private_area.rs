//! A container's private area (`<vz_root>/private/<CTID>`) laid out as its platform's own
//! tools expect, and its config put where they look for it.
//!
//! - Legacy OpenVZ (vzctl 4): the tree itself is the private area (simfs), or the area holds
//!   `root.hdd/` (ploop); the config is a regular file `<conf_dir>/<CTID>.conf` whose
//!   `VE_LAYOUT` names the layout.
//! - OpenVZ 7 / Virtuozzo 7 and Virtuozzo 9 (libvzctl 7 and 8): the area is versioned. Its
//!   `.ve.layout` is a symlink whose target is the layout version (libvzctl's
//!   `vzctl2_env_layout_version` reads it with `readlink`; a regular file counts as layout 0
//!   and registration is refused): `4` for a directory tree, which lives in `fs/`, or `5` for
//!   a ploop image in `root.hdd/`; both have `fs/`, `dump/` and `scripts/` (libvzctl's
//!   `vzctl2_create_env_private`). The config lives in the area as `ve.conf` (register stats
//!   `<realpath>/ve.conf`), and `<conf_dir>/<CTID>.conf` is absent or a symlink to it:
//!   `vzctl register` refuses a regular file there ("is not a link") and a link to another
//!   file ("Container ID … is used"). `VE_LAYOUT` is not a key there; the link says it. No
//!   `VEID` is written: register refuses a `ve.conf` whose `VEID`'s conf link already
//!   reaches it ("already registered"), and writes `VEID`, `UUID` and `VE_PRIVATE` itself.

use std::io::Write;
use std::path::{Path, PathBuf};

use p2c_common::migration::{Layout, Target};

/// The layout link and the config inside a versioned area.
pub const LAYOUT_LINK: &str = ".ve.layout";
pub const VE_CONF: &str = "ve.conf";
/// Where a versioned area keeps a directory tree (and where a ploop image is mounted).
pub const FS_DIR: &str = "fs";
/// Directories every versioned area has (a ploop one has `root.hdd/` too).
pub const VERSIONED_DIRS: &[&str] = &[FS_DIR, "dump", "scripts"];

/// One container's private area and config path, for one platform and layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrivateArea {
    pub dir: PathBuf,
    pub conf_path: PathBuf,
    pub target: Target,
    pub layout: Layout,
}

impl PrivateArea {
    pub fn new(dir: PathBuf, conf_path: PathBuf, target: Target, layout: Layout) -> PrivateArea {
        PrivateArea { dir, conf_path, target, layout }
    }

    /// Where a directory tree's files go: `fs/` of a versioned area, else the area itself.
    /// (A ploop image's files are in the image, mounted elsewhere.)
    pub fn tree(&self) -> PathBuf {
        if self.target.versioned_private() { self.dir.join(FS_DIR) } else { self.dir.clone() }
    }

    /// Where the config itself is written: `ve.conf` in a versioned area, else the conf path.
    pub fn conf_file(&self) -> PathBuf {
        if self.target.versioned_private() { self.dir.join(VE_CONF) } else { self.conf_path.clone() }
    }

    /// Makes the area's skeleton: for a versioned area the layout link and its directories
    /// (kept as they are when a resumed run finds them). The area itself is root-only: the
    /// trees and images below it hold what the source held.
    pub fn prepare(&self) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir)?;
        let Some(version) = self.target.ve_layout(self.layout) else { return Ok(()) };
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        let link = self.dir.join(LAYOUT_LINK);
        let want = PathBuf::from(version.to_string());
        match std::fs::read_link(&link) {
            Ok(t) if t == want => {}
            Ok(_) => {
                std::fs::remove_file(&link)?;
                std::os::unix::fs::symlink(&want, &link)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::os::unix::fs::symlink(&want, &link)?,
            Err(e) => return Err(e),
        }
        for d in VERSIONED_DIRS {
            let p = self.dir.join(d);
            if !p.is_dir() {
                std::fs::DirBuilder::new().mode(0o755).create(&p)?;
            }
        }
        Ok(())
    }

    /// Writes the config atomically (a temporary file, then rename), and for a versioned area
    /// points `<conf_dir>/<CTID>.conf` at it (a symlink, replaced atomically too).
    pub fn write_conf(&self, text: &str) -> std::io::Result<()> {
        let file = self.conf_file();
        if let Some(d) = file.parent() {
            std::fs::create_dir_all(d)?;
        }
        let tmp = file.with_extension("p2c-new");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &file)?;
        if file != self.conf_path {
            if let Some(d) = self.conf_path.parent() {
                std::fs::create_dir_all(d)?;
            }
            // The link names the real path, as `vzctl register` makes it.
            let real = file.canonicalize()?;
            let tmp = self.conf_path.with_extension("p2c-new");
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&real, &tmp)?;
            std::fs::rename(&tmp, &self.conf_path)?;
        }
        Ok(())
    }

    /// The commands that register (where the platform needs it) and start the container.
    pub fn start_commands(&self, ctid: u32) -> Vec<String> {
        match self.target {
            Target::Openvz => vec![format!("vzctl start {ctid}")],
            Target::Vz7 | Target::Vz9 => {
                vec![format!("vzctl register {} {ctid}", self.dir.display()), format!("vzctl start {ctid}")]
            }
        }
    }
}

/// Where the directory tree of an existing private area is, whatever its platform: `fs/` of
/// a versioned area (it has a layout link), else the area itself.
pub fn tree_of(dir: &Path) -> PathBuf {
    if std::fs::symlink_metadata(dir.join(LAYOUT_LINK)).is_ok() {
        dir.join(FS_DIR)
    } else {
        dir.to_path_buf()
    }
}

/// Removes a config path whatever it is (a file, or a symlink even when it dangles).
pub fn remove_conf(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(d: &Path, target: Target, layout: Layout) -> PrivateArea {
        PrivateArea::new(d.join("vz/private/101"), d.join("etc/vz/conf/101.conf"), target, layout)
    }

    #[test]
    fn legacy_openvz_keeps_the_tree_in_the_area_and_a_regular_config() {
        let d = tempfile::tempdir().unwrap();
        let a = area(d.path(), Target::Openvz, Layout::Simfs);
        a.prepare().unwrap();
        assert_eq!(a.tree(), a.dir);
        assert!(
            std::fs::symlink_metadata(a.dir.join(LAYOUT_LINK)).is_err(),
            "no layout link on legacy OpenVZ"
        );
        a.write_conf("HOSTNAME=\"web\"\n").unwrap();
        let m = std::fs::symlink_metadata(&a.conf_path).unwrap();
        assert!(m.file_type().is_file());
        assert!(!a.dir.join(VE_CONF).exists());
        assert_eq!(a.start_commands(101), ["vzctl start 101"]);
    }

    #[test]
    fn versioned_areas_follow_libvzctl() {
        let d = tempfile::tempdir().unwrap();
        for (target, layout, version, dirs) in [
            (Target::Vz7, Layout::Simfs, "4", VERSIONED_DIRS),
            (Target::Vz9, Layout::Ploop, "5", VERSIONED_DIRS),
        ] {
            let d = d.path().join(target.as_str());
            let a = area(&d, target, layout);
            a.prepare().unwrap();
            a.prepare().unwrap();
            assert_eq!(std::fs::read_link(a.dir.join(LAYOUT_LINK)).unwrap(), Path::new(version));
            for dir in dirs {
                assert!(a.dir.join(dir).is_dir(), "{target}: {dir}/ missing");
            }
            assert_eq!(a.tree(), a.dir.join("fs"));
            a.write_conf("HOSTNAME=\"web\"\n").unwrap();
            a.write_conf("HOSTNAME=\"web2\"\n").unwrap();
            // The conf dir's entry is a symlink to the area's ve.conf, which holds the keys.
            assert_eq!(
                std::fs::read_link(&a.conf_path).unwrap(),
                a.dir.canonicalize().unwrap().join(VE_CONF)
            );
            assert_eq!(std::fs::read_to_string(&a.conf_path).unwrap(), "HOSTNAME=\"web2\"\n");
            let left: Vec<_> = std::fs::read_dir(a.conf_path.parent().unwrap()).unwrap().collect();
            assert_eq!(left.len(), 1, "no temporary file left in the conf dir");
            assert_eq!(
                a.start_commands(101),
                [format!("vzctl register {} 101", a.dir.display()), "vzctl start 101".to_string()]
            );
            std::fs::remove_dir_all(&a.dir).unwrap();
            remove_conf(&a.conf_path).unwrap();
            assert!(std::fs::symlink_metadata(&a.conf_path).is_err(), "a dangling conf link is removed too");
        }
    }

    #[test]
    fn a_wrong_layout_link_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let a = area(d.path(), Target::Vz7, Layout::Simfs);
        std::fs::create_dir_all(&a.dir).unwrap();
        std::os::unix::fs::symlink("5", a.dir.join(LAYOUT_LINK)).unwrap();
        a.prepare().unwrap();
        assert_eq!(std::fs::read_link(a.dir.join(LAYOUT_LINK)).unwrap(), Path::new("4"));
    }
}
