//! Kernel modules: loaded ones (/proc/modules) or the ones the tree loads at boot.

use std::path::Path;

use super::fsread::{self, CONFIG_CAP, ReadError};

/// Module names of /proc/modules.
pub fn parse_proc_modules(text: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

/// Module names of `/etc/modules` or a modules-load.d(5) file (`#` and `;` comments,
/// `name [params]` per line).
pub fn parse_modules_list(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| is_module_name(n))
        .map(str::to_string)
        .collect()
}

/// Modules loaded by a RHEL `/etc/sysconfig/modules/*.modules` script (`modprobe NAME`).
pub fn parse_modules_script(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = fsread::strip_comment(line);
        let words: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == ';' || c == '&' || c == '|')
            .filter(|w| !w.is_empty())
            .collect();
        for (i, w) in words.iter().enumerate() {
            if (*w == "modprobe" || w.ends_with("/modprobe") || *w == "insmod")
                && let Some(n) = words[i + 1..].iter().find(|a| !a.starts_with('-'))
            {
                let n = n.rsplit('/').next().unwrap_or(n).trim_end_matches(".ko");
                if is_module_name(n) {
                    out.push(n.to_string());
                }
            }
        }
    }
    out
}

fn is_module_name(n: &str) -> bool {
    !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The loaded modules of the running kernel, from `proc` (normally `/proc`).
pub fn live_modules(proc: &Path) -> Result<Vec<String>, ReadError> {
    let t = fsread::read_text(&proc.join("modules"), fsread::TABLE_CAP)?;
    let mut m = parse_proc_modules(&t);
    m.sort();
    m.dedup();
    Ok(m)
}

/// The modules the tree at `root` loads at boot: `/etc/modules`,
/// `/etc/modules-load.d/*.conf`, `/etc/sysconfig/modules/*.modules`.
pub fn tree_modules(root: &Path) -> (Vec<String>, Vec<String>) {
    let mut out = Vec::new();
    let mut gaps = Vec::new();
    read_list(root, "/etc/modules", parse_modules_list, &mut out, &mut gaps);
    for (dir, ext, parse) in [
        ("/etc/modules-load.d", ".conf", parse_modules_list as fn(&str) -> Vec<String>),
        ("/etc/sysconfig/modules", ".modules", parse_modules_script),
    ] {
        match fsread::list_dir(&fsread::below(root, dir)) {
            Ok(names) => {
                for n in names {
                    let n = n.to_string_lossy();
                    if n.ends_with(ext) {
                        read_list(root, &format!("{dir}/{n}"), parse, &mut out, &mut gaps);
                    }
                }
            }
            Err(e) => gaps.push(format!("kernel modules: {e}")),
        }
    }
    out.sort();
    out.dedup();
    (out, gaps)
}

fn read_list(
    root: &Path,
    abs: &str,
    parse: fn(&str) -> Vec<String>,
    out: &mut Vec<String>,
    gaps: &mut Vec<String>,
) {
    match fsread::read_text_opt(&fsread::below(root, abs), CONFIG_CAP) {
        Ok(Some(t)) => out.extend(parse(&t)),
        Ok(None) => {}
        Err(e) => gaps.push(format!("kernel modules: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        assert_eq!(
            parse_proc_modules("ext4 745472 1 - Live 0x0\nmbcache 16384 1 ext4, Live 0x0\n"),
            vec!["ext4", "mbcache"]
        );
        assert_eq!(
            parse_modules_list("# /etc/modules\nloop\n; old comment\nbonding mode=1\n\nbad/name\n"),
            vec!["loop", "bonding"]
        );
        assert_eq!(
            parse_modules_script(
                "#!/bin/sh\n/sbin/modprobe -q ipmi_si >/dev/null 2>&1\nexec /sbin/modprobe raw\n\
                 [ -x /bin/true ] && insmod /lib/modules/x/foo.ko # modprobe comment\n"
            ),
            vec!["ipmi_si", "raw", "foo"]
        );
    }

    #[test]
    fn tree() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("etc/modules-load.d")).unwrap();
        std::fs::create_dir_all(r.join("etc/sysconfig/modules")).unwrap();
        std::fs::write(r.join("etc/modules"), "loop\n").unwrap();
        std::fs::write(r.join("etc/modules-load.d/a.conf"), "br_netfilter\nloop\n").unwrap();
        std::fs::write(r.join("etc/modules-load.d/b.txt"), "ignored\n").unwrap();
        std::fs::write(r.join("etc/sysconfig/modules/raw.modules"), "modprobe raw\n").unwrap();
        let (m, gaps) = tree_modules(r);
        assert!(gaps.is_empty());
        assert_eq!(m, vec!["br_netfilter", "loop", "raw"]);
        // A kernel without module support has no /proc/modules.
        if let Err(e) = live_modules(Path::new("/proc")) {
            assert!(e.is_not_found(), "{e}");
        }
    }
}
