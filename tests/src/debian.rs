//! A real Debian tree for tests, made with `debootstrap` from this machine's own apt
//! sources (suite and mirror are read at run time; no host name is written anywhere).
//!
//! The first call builds it into a cache outside the repository
//! (`/var/cache/p2c-tests/debootstrap-<suite>/`, about a minute); later calls copy the
//! cache. A lock file makes concurrent test runs wait for one build, and the cache only
//! appears (by rename) once it is complete.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// Where built trees are cached.
pub const CACHE_DIR: &str = "/var/cache/p2c-tests";
/// Packages added to the default variant (the network tools the start test uses).
const INCLUDE: &str = "ifupdown,iproute2,iputils-ping";

/// A suite and mirror from the machine's apt sources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AptSource {
    pub mirror: String,
    pub suite: String,
}

/// Copies a fresh debootstrapped Debian tree for this machine's release into `dest`
/// (created if missing; it should be empty).
pub fn debootstrap_tree(dest: &Path) -> anyhow::Result<()> {
    let src = machine_source()?;
    let cache = cached_tree(&src)?;
    copy_tree(&cache, dest).context("copying the cached Debian tree")
}

/// What [`debootstrap_lean_tree`] leaves out: documentation, translations, manual pages
/// and apt's caches, none of which a start test or a migration test looks at.
const LEAN_PRUNE: &[&str] = &[
    "usr/share/doc",
    "usr/share/locale",
    "usr/share/man",
    "usr/share/info",
    "var/cache/apt",
    "var/cache/debconf/templates.dat",
    "var/cache/debconf/templates.dat-old",
    "var/lib/apt/lists",
];

/// [`debootstrap_tree`] without documentation, translations, manual pages and apt caches:
/// the same system (packages, configs, the network tools) in about half the bytes, so that
/// tests which migrate a whole tree stay quick. Cached next to the full tree.
pub fn debootstrap_lean_tree(dest: &Path) -> anyhow::Result<()> {
    let src = machine_source()?;
    let full = cached_tree(&src)?;
    let lean = Path::new(CACHE_DIR).join(format!("debootstrap-{}-lean", src.suite));
    if !lean.is_dir() {
        let lock_path = Path::new(CACHE_DIR).join(format!("debootstrap-{}-lean.lock", src.suite));
        let lock = File::create(&lock_path)
            .with_context(|| format!("creating lock file {}", lock_path.display()))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .with_context(|| format!("locking {}", lock_path.display()))?;
        if !lean.is_dir() {
            let tmp = Path::new(CACHE_DIR).join(format!(
                "debootstrap-{}-lean.tmp-{}",
                src.suite,
                std::process::id()
            ));
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
            }
            copy_tree(&full, &tmp)?;
            for rel in LEAN_PRUNE {
                let p = tmp.join(rel);
                let gone = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
                match gone {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(anyhow::Error::new(e).context(format!("removing {}", p.display()))),
                }
            }
            std::fs::rename(&tmp, &lean)
                .with_context(|| format!("moving {} to {}", tmp.display(), lean.display()))?;
        }
    }
    copy_tree(&lean, dest)
}

/// `cp -a FROM/. DEST` (DEST created if missing).
fn copy_tree(from: &Path, dest: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut src = from.as_os_str().to_owned();
    src.push("/.");
    run(Command::new("cp").arg("-a").arg(&src).arg(dest))
        .with_context(|| format!("copying {} to {}", from.display(), dest.display()))?;
    Ok(())
}

/// Packages added for [`debootstrap_stacks_tree`]: every network stack a Debian server may
/// be configured with (netplan, NetworkManager, with the system bus and logind they need;
/// debootstrap does not pull in their virtual dependencies).
const STACKS_INCLUDE: &str = "dbus,libpam-systemd,netplan.io,network-manager";

/// [`debootstrap_tree`] with netplan and NetworkManager installed beside ifupdown and
/// systemd-networkd (cached apart, about a minute more the first time).
pub fn debootstrap_stacks_tree(dest: &Path) -> anyhow::Result<()> {
    let src = machine_source()?;
    let cache = cached_variant(&src, "-stacks", &format!("{INCLUDE},{STACKS_INCLUDE}"))?;
    copy_tree(&cache, dest).context("copying the cached Debian tree")
}

/// The cached tree for `src`, built first if needed.
fn cached_tree(src: &AptSource) -> anyhow::Result<PathBuf> {
    cached_variant(src, "", INCLUDE)
}

/// The cached tree `debootstrap-<suite><variant>` with `include`d packages, built first if
/// needed.
fn cached_variant(src: &AptSource, variant: &str, include: &str) -> anyhow::Result<PathBuf> {
    let cache = Path::new(CACHE_DIR);
    let suite = format!("{}{variant}", src.suite);
    let tree = cache.join(format!("debootstrap-{suite}"));
    if tree.is_dir() {
        return Ok(tree);
    }
    std::fs::create_dir_all(cache).with_context(|| format!("creating {CACHE_DIR}"))?;
    let lock_path = cache.join(format!("debootstrap-{suite}.lock"));
    let lock =
        File::create(&lock_path).with_context(|| format!("creating lock file {}", lock_path.display()))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .with_context(|| format!("locking {}", lock_path.display()))?;
    if tree.is_dir() {
        // Another run built it while this one waited.
        return Ok(tree);
    }
    let tmp = cache.join(format!("debootstrap-{suite}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    eprintln!(
        "building the Debian {suite} test tree with debootstrap into {} (about a minute, once)",
        tree.display()
    );
    let built = run(Command::new("debootstrap")
        .arg(format!("--include={include}"))
        .arg(&src.suite)
        .arg(&tmp)
        .arg(&src.mirror));
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.context(format!("debootstrap {} from the apt mirror", src.suite)));
    }
    std::fs::rename(&tmp, &tree)
        .with_context(|| format!("moving {} to {}", tmp.display(), tree.display()))?;
    Ok(tree)
}

/// The first Debian (`deb`) source of this machine with a base suite (not `-updates` or
/// `-security`).
pub fn machine_source() -> anyhow::Result<AptSource> {
    let mut texts: Vec<(PathBuf, String)> = Vec::new();
    let list = Path::new("/etc/apt/sources.list");
    if let Ok(t) = std::fs::read_to_string(list) {
        texts.push((list.to_path_buf(), t));
    }
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default();
            if !matches!(ext, "list" | "sources") {
                continue;
            }
            if let Ok(t) = std::fs::read_to_string(&p) {
                texts.push((p, t));
            }
        }
    }
    for (path, text) in &texts {
        let found = if path.extension().is_some_and(|e| e == "sources") {
            parse_deb822(text)
        } else {
            parse_one_line(text)
        };
        if let Some(s) = found {
            return Ok(s);
        }
    }
    bail!("no Debian source with a base suite in /etc/apt/sources.list or /etc/apt/sources.list.d")
}

fn base_suite(s: &str) -> bool {
    !s.is_empty() && !s.contains('-') && !s.contains('/')
}

/// Deb822 `.sources` stanzas: `Types: deb`, `URIs:`, `Suites:`.
pub fn parse_deb822(text: &str) -> Option<AptSource> {
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim().eq_ignore_ascii_case(name) && !l.starts_with('#')).then(|| v.trim().to_string())
            })
        };
        let enabled = field("Enabled").is_none_or(|v| v != "no");
        let deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        let (Some(uris), Some(suites)) = (field("URIs"), field("Suites")) else {
            continue;
        };
        let (Some(uri), Some(suite)) =
            (uris.split_whitespace().next(), suites.split_whitespace().find(|s| base_suite(s)))
        else {
            continue;
        };
        if enabled && deb {
            return Some(AptSource { mirror: uri.to_string(), suite: suite.to_string() });
        }
    }
    None
}

/// One-line `deb [options] URI suite components` entries.
pub fn parse_one_line(text: &str) -> Option<AptSource> {
    text.lines().find_map(|l| {
        let mut words = l.split_whitespace().peekable();
        if words.next()? != "deb" {
            return None;
        }
        if words.peek()?.starts_with('[') {
            for w in words.by_ref() {
                if w.ends_with(']') {
                    break;
                }
            }
        }
        let uri = words.next()?;
        let suite = words.next()?;
        base_suite(suite).then(|| AptSource { mirror: uri.to_string(), suite: suite.to_string() })
    })
}

/// Runs a command, failing with its output if it fails.
pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{cmd:?} failed ({}):\n{text}", out.status);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_sources() {
        let deb822 = "Types: deb\n# comment: x\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
                      Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            parse_deb822(deb822),
            Some(AptSource { mirror: "http://mirror.invalid/debian".into(), suite: "bookworm".into() })
        );
        assert_eq!(parse_deb822("Types: deb-src\nURIs: u\nSuites: trixie\n"), None);
        let one = "# x\ndeb-src http://m.invalid/debian trixie main\ndeb [arch=amd64 signed-by=/k] http://m.invalid/debian trixie main\n";
        assert_eq!(
            parse_one_line(one),
            Some(AptSource { mirror: "http://m.invalid/debian".into(), suite: "trixie".into() })
        );
    }
}
