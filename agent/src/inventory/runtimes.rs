//! Container runtimes installed on the source (a nested runtime needs features a system
//! container may not give it).

use std::path::Path;

use super::fsread;

/// Each runtime with the paths (below root) that show it is there.
const RUNTIMES: &[(&str, &[&str])] = &[
    ("docker", &["/usr/bin/dockerd", "/usr/bin/docker", "/usr/local/bin/dockerd", "/var/lib/docker"]),
    ("containerd", &["/usr/bin/containerd", "/usr/local/bin/containerd", "/var/lib/containerd"]),
    ("podman", &["/usr/bin/podman", "/var/lib/containers/storage"]),
    ("cri-o", &["/usr/bin/crio", "/var/lib/crio"]),
    ("lxc", &["/usr/bin/lxc-start", "/var/lib/lxc"]),
    ("lxd", &["/usr/bin/lxd", "/usr/sbin/lxd", "/snap/bin/lxd", "/var/lib/lxd", "/var/snap/lxd"]),
];

/// The runtimes present in the tree at `root`, by name.
pub fn runtimes(root: &Path) -> Vec<String> {
    RUNTIMES
        .iter()
        .filter(|(_, paths)| paths.iter().any(|p| std::fs::symlink_metadata(fsread::below(root, p)).is_ok()))
        .map(|(name, _)| name.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_binaries_and_state() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        assert!(runtimes(r).is_empty());
        std::fs::create_dir_all(r.join("var/lib/docker")).unwrap();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::write(r.join("usr/bin/lxc-start"), "").unwrap();
        assert_eq!(runtimes(r), vec!["docker", "lxc"]);
    }
}
