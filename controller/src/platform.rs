//! Which platform this node is, so that containers are made the way its own tools expect:
//! legacy OpenVZ (vzctl 4), OpenVZ 7 / Virtuozzo 7 (libvzctl 7) or Virtuozzo 9 (libvzctl 8).
//!
//! The marks, strongest first:
//! - `vzctl --version`: "vzctl version 4.11.1" on legacy OpenVZ (vzctl 4's `src/vzctl.c`),
//!   "vzctl v.7.0.254" on Virtuozzo 7, "vzctl v.9.0.1" (or v.8.0.x) on Virtuozzo 9 (vzctl 7
//!   and 9's `src/vz.c`);
//! - `prlctl --version`: "prlctl version 7.0.253", "prlctl version 9.0.26";
//! - the release file the platform's packages install, `/etc/virtuozzo-release` ("OpenVZ
//!   release 7.0.7 (27)", "Virtuozzo release 7.5.4 (15)"), or `/etc/openvz-release`.
//!   (`/etc/vzlinux-release` is not a mark: a Virtuozzo Linux guest has it too.)
//!
//! A node with none of them (a plain Linux machine preparing containers for another node, a
//! test machine) is taken to be [`Target::DEFAULT`].

use std::path::Path;
use std::process::{Command, Stdio};

use p2c_common::migration::Target;

/// Release files, in the order they are believed.
pub const RELEASE_FILES: &[&str] = &["etc/virtuozzo-release", "etc/openvz-release"];

/// What the node is taken to be, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeTarget {
    pub target: Target,
    /// Where the answer came from, for `p2c assess` and the logs.
    pub evidence: String,
    /// Whether a platform was recognised (false: the default for a node with no marks).
    pub detected: bool,
}

/// What the node offers to tell its platform.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    /// `(path, first line)` of each release file present.
    pub release: Vec<(String, String)>,
    /// First line of `vzctl --version`, if it ran.
    pub vzctl: Option<String>,
    /// First line of `prlctl --version`, if it ran.
    pub prlctl: Option<String>,
}

impl Marks {
    /// Reads the marks of the node whose root is `root` (`/` on a node), running its tools
    /// only when `root` is `/`.
    pub fn read(root: &Path) -> Marks {
        let release = RELEASE_FILES
            .iter()
            .filter_map(|f| {
                let text = std::fs::read_to_string(root.join(f)).ok()?;
                let line = text.lines().find(|l| !l.trim().is_empty())?.trim().to_string();
                Some((format!("/{f}"), line.chars().take(200).collect()))
            })
            .collect();
        let live = root == Path::new("/");
        Marks {
            release,
            vzctl: live.then(|| version_line("vzctl")).flatten(),
            prlctl: live.then(|| version_line("prlctl")).flatten(),
        }
    }

    /// The platform these marks show, if any.
    pub fn classify(&self) -> Option<NodeTarget> {
        let found = |target: Target, evidence: String| NodeTarget { target, evidence, detected: true };
        for (tool, line) in [("vzctl", &self.vzctl), ("prlctl", &self.prlctl)] {
            if let Some(line) = line
                && let Some(major) = version_after(&line.to_ascii_lowercase(), tool)
            {
                return Some(found(by_platform_major(major), format!("{tool} --version: {line}")));
            }
        }
        for (path, line) in &self.release {
            let lower = line.to_ascii_lowercase();
            if !(lower.contains("virtuozzo") || lower.contains("openvz")) {
                continue;
            }
            if let Some(major) = version_after(&lower, "release") {
                return Some(found(by_platform_major(major), format!("{path}: {line}")));
            }
        }
        None
    }
}

/// A platform or tool version: 6 and older are legacy OpenVZ's generation (vzctl 4), 7 is
/// Virtuozzo 7 (and OpenVZ 7), later ones are Virtuozzo 9's (libvzctl 8, vzctl 8 and 9).
fn by_platform_major(major: u32) -> Target {
    match major {
        0..=6 => Target::Openvz,
        7 => Target::Vz7,
        _ => Target::Vz9,
    }
}

/// The major number of the first version after `word` ("… release 7.5.0 (12)" → 7, "vzctl
/// v.7.0.254" → 7).
fn version_after(line: &str, word: &str) -> Option<u32> {
    let rest = &line[line.find(word)? + word.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn version_line(tool: &str) -> Option<String> {
    let out = Command::new(tool).arg("--version").stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| !l.trim().is_empty())?.trim().to_string();
    out.status.success().then(|| line.chars().take(200).collect())
}

/// The node's target: the configured one, else the detected one, else the default.
pub fn resolve(configured: Option<Target>, marks: &Marks) -> NodeTarget {
    if let Some(target) = configured {
        return NodeTarget {
            target,
            evidence: format!("node.target = \"{target}\" in controller.toml"),
            detected: false,
        };
    }
    marks.classify().unwrap_or(NodeTarget {
        target: Target::DEFAULT,
        evidence: format!(
            "no Virtuozzo or OpenVZ release file, vzctl or prlctl on this node; taken as {} (set node.target in controller.toml, or --target, to choose)",
            Target::DEFAULT
        ),
        detected: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(line: &str) -> Marks {
        Marks { release: vec![("/etc/virtuozzo-release".into(), line.into())], ..Marks::default() }
    }

    #[test]
    fn release_files_name_the_platform() {
        let t = |l: &str| release(l).classify().map(|n| n.target);
        assert_eq!(t("OpenVZ release 7.0.11 (207)"), Some(Target::Vz7));
        assert_eq!(t("Virtuozzo release 7.5.4 (15)"), Some(Target::Vz7));
        assert_eq!(t("Virtuozzo Hybrid Server release 7.5.0 (1)"), Some(Target::Vz7));
        assert_eq!(t("Virtuozzo Hybrid Server release 9.0.1 (42)"), Some(Target::Vz9));
        assert_eq!(t("Virtuozzo release 6.0.12 (3331)"), Some(Target::Openvz));
        assert_eq!(t("Debian GNU/Linux 12"), None, "a release file of another system is no mark");
        let n = release("OpenVZ release 7.0.11 (207)").classify().unwrap();
        assert!(n.detected && n.evidence.contains("/etc/virtuozzo-release: OpenVZ release 7.0.11"));
    }

    #[test]
    fn tool_versions_name_the_platform() {
        let vzctl =
            |v: &str| Marks { vzctl: Some(v.into()), ..Marks::default() }.classify().map(|n| n.target);
        assert_eq!(vzctl("vzctl version 4.11.1"), Some(Target::Openvz));
        assert_eq!(vzctl("vzctl v.7.0.254"), Some(Target::Vz7));
        assert_eq!(vzctl("vzctl v.8.0.90"), Some(Target::Vz9));
        assert_eq!(vzctl("vzctl v.9.0.1"), Some(Target::Vz9));
        let prl = Marks { prlctl: Some("prlctl version 9.0.26".into()), ..Marks::default() };
        assert_eq!(prl.classify().map(|n| n.target), Some(Target::Vz9));
        // The tools win over the release file (whose Virtuozzo 9 wording is not documented).
        let both = Marks { vzctl: Some("vzctl v.9.0.1".into()), ..release("Virtuozzo release 7.5.0 (1)") };
        assert_eq!(both.classify().map(|n| n.target), Some(Target::Vz9));
    }

    #[test]
    fn configured_wins_and_a_bare_node_is_the_default() {
        let marks = release("OpenVZ release 7.0.11 (207)");
        let n = resolve(Some(Target::Vz9), &marks);
        assert_eq!((n.target, n.detected), (Target::Vz9, false));
        assert!(n.evidence.contains("controller.toml"));
        let bare = resolve(None, &Marks::default());
        assert_eq!((bare.target, bare.detected), (Target::Vz7, false));
        assert!(bare.evidence.contains("taken as vz7"), "{}", bare.evidence);
    }

    #[test]
    fn reads_release_files_below_a_root() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/openvz-release"), "\nOpenVZ release 7.0.15 (49)\n").unwrap();
        let m = Marks::read(d.path());
        assert_eq!(
            m.release,
            [("/etc/openvz-release".to_string(), "OpenVZ release 7.0.15 (49)".to_string())]
        );
        assert_eq!(m.vzctl, None, "tools only run for the live root");
        assert_eq!(m.classify().map(|n| n.target), Some(Target::Vz7));
    }
}
