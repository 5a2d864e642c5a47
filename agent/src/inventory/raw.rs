//! Raw device bindings: `/etc/sysconfig/rawdevices` (RHEL ≤ 5) and udev rules that run
//! `raw /dev/raw/rawN ...` (RHEL 6 and later).

use std::path::Path;

use p2c_common::inventory::RawBinding;

use super::fsread::{self, CONFIG_CAP};

/// Parses rawdevices lines: `/dev/raw/raw1 /dev/sdb1` or `/dev/raw/raw1 8 17`.
pub fn parse_rawdevices(text: &str, source: &str) -> Vec<RawBinding> {
    text.lines()
        .map(fsread::strip_comment)
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let raw = *w.first()?;
            if !raw.starts_with("/dev/raw/") {
                return None;
            }
            let bound_to = match w.as_slice() {
                [_, dev] => dev.to_string(),
                [_, maj, min, ..] if maj.parse::<u32>().is_ok() && min.parse::<u32>().is_ok() => {
                    format!("{maj}:{min}")
                }
                _ => return None,
            };
            Some(RawBinding { raw_device: raw.to_string(), bound_to, source: source.to_string() })
        })
        .collect()
}

/// The `KEY=="value"`, `KEY+="value"`... pairs of a udev rule line.
fn udev_pairs(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(q) = rest.find('"') {
        let head = rest[..q].trim_end();
        let key = head
            .trim_end_matches(['=', '+', '!', ':'])
            .rsplit([',', ' '])
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let after = &rest[q + 1..];
        let Some(end) = after.find('"') else {
            break;
        };
        out.push((key, after[..end].to_string()));
        rest = &after[end + 1..];
    }
    out
}

/// Parses udev rules that bind raw devices, e.g.
/// `ACTION=="add", KERNEL=="sdb1", RUN+="/bin/raw /dev/raw/raw1 %N"` or
/// `ACTION=="add", ENV{MAJOR}=="8", ENV{MINOR}=="17", RUN+="/bin/raw /dev/raw/raw2 %M %m"`.
pub fn parse_udev_raw_rules(text: &str, source: &str) -> Vec<RawBinding> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || !line.contains("/dev/raw/raw") {
            continue;
        }
        let pairs = udev_pairs(line);
        let get = |k: &str| pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        for (key, value) in &pairs {
            if key != "RUN" {
                continue;
            }
            let w: Vec<&str> = value.split_whitespace().collect();
            let Some(cmd) = w.first() else {
                continue;
            };
            if !(cmd.ends_with("/raw") || *cmd == "raw") {
                continue;
            }
            let Some(raw) = w.get(1).filter(|r| r.starts_with("/dev/raw/raw")) else {
                continue;
            };
            let args = &w[2..];
            let bound_to = match args {
                ["%N"] | ["$devnode"] | ["$tempnode"] | ["%k"] | ["$kernel"] => match get("KERNEL") {
                    Some(k) => format!("/dev/{k}"),
                    None => continue,
                },
                ["%M", "%m"] | ["$major", "$minor"] => match (get("ENV{MAJOR}"), get("ENV{MINOR}")) {
                    (Some(a), Some(b)) => format!("{a}:{b}"),
                    _ => match get("KERNEL") {
                        Some(k) => format!("/dev/{k}"),
                        None => continue,
                    },
                },
                [dev] => dev.to_string(),
                [maj, min] => format!("{maj}:{min}"),
                _ => continue,
            };
            out.push(RawBinding { raw_device: raw.to_string(), bound_to, source: source.to_string() });
        }
    }
    out
}

/// All raw bindings configured in the tree at `root`.
pub fn raw_bindings(root: &Path) -> (Vec<RawBinding>, Vec<String>) {
    let mut out = Vec::new();
    let mut gaps = Vec::new();
    let rawdevices = "/etc/sysconfig/rawdevices";
    match fsread::read_text_opt(&fsread::below(root, rawdevices), CONFIG_CAP) {
        Ok(Some(t)) => out.extend(parse_rawdevices(&t, rawdevices)),
        Ok(None) => {}
        Err(e) => gaps.push(format!("raw devices: {e}")),
    }
    for dir in ["/etc/udev/rules.d"] {
        let names = match fsread::list_dir(&fsread::below(root, dir)) {
            Ok(n) => n,
            Err(e) => {
                gaps.push(format!("raw devices: {e}"));
                continue;
            }
        };
        for n in names {
            let n = n.to_string_lossy();
            if !n.ends_with(".rules") {
                continue;
            }
            let abs = format!("{dir}/{n}");
            match fsread::read_text(&fsread::below(root, &abs), CONFIG_CAP) {
                Ok(t) => out.extend(parse_udev_raw_rules(&t, &abs)),
                Err(e) => gaps.push(format!("raw devices: {e}")),
            }
        }
    }
    (out, gaps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rawdevices() {
        let b = parse_rawdevices(
            "# raw device bindings\n/dev/raw/raw1 /dev/sdb1\n/dev/raw/raw2 8 17\n\
             /dev/raw/raw3\n/dev/sdc1 /dev/raw/raw4\n/dev/raw/raw5 x y\n",
            "/etc/sysconfig/rawdevices",
        );
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].bound_to, "/dev/sdb1");
        assert_eq!(b[1].bound_to, "8:17");
        assert_eq!(b[1].raw_device, "/dev/raw/raw2");
    }

    #[test]
    fn udev_rules() {
        let b = parse_udev_raw_rules(
            "# comment /dev/raw/raw9\n\
             ACTION==\"add\", KERNEL==\"sdb1\", RUN+=\"/bin/raw /dev/raw/raw1 %N\"\n\
             ACTION==\"add\", ENV{MAJOR}==\"8\", ENV{MINOR}==\"17\", RUN+=\"/usr/bin/raw /dev/raw/raw2 %M %m\"\n\
             ACTION==\"add\", KERNEL==\"raw*\", OWNER=\"oracle\", MODE=\"0660\" # /dev/raw/raw*\n\
             ACTION==\"add\", RUN+=\"/bin/raw /dev/raw/raw3 /dev/sdd1\"\n\
             ACTION==\"add\", RUN+=\"/bin/raw /dev/raw/raw4 8 33\"\n\
             RUN+=\"/bin/raw /dev/raw/raw5 %N\"\nRUN+=\"unterminated /dev/raw/raw6\n",
            "/etc/udev/rules.d/60-raw.rules",
        );
        let got: Vec<(&str, &str)> = b.iter().map(|b| (b.raw_device.as_str(), b.bound_to.as_str())).collect();
        assert_eq!(
            got,
            vec![
                ("/dev/raw/raw1", "/dev/sdb1"),
                ("/dev/raw/raw2", "8:17"),
                ("/dev/raw/raw3", "/dev/sdd1"),
                ("/dev/raw/raw4", "8:33"),
            ]
        );
    }

    #[test]
    fn tree() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("etc/sysconfig")).unwrap();
        std::fs::create_dir_all(r.join("etc/udev/rules.d")).unwrap();
        std::fs::write(r.join("etc/sysconfig/rawdevices"), "/dev/raw/raw1 /dev/sdb1\n").unwrap();
        std::fs::write(
            r.join("etc/udev/rules.d/60-raw.rules"),
            "ACTION==\"add\", KERNEL==\"sdc1\", RUN+=\"/bin/raw /dev/raw/raw2 %N\"\n",
        )
        .unwrap();
        let (b, gaps) = raw_bindings(r);
        assert!(gaps.is_empty());
        assert_eq!(b.len(), 2);
        assert_eq!(b[1].source, "/etc/udev/rules.d/60-raw.rules");
    }
}
