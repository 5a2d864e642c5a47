//! User and group names of the source, from its `/etc/passwd` and `/etc/group`.

use std::collections::HashMap;
use std::path::Path;

use super::fsread::{self, TABLE_CAP};

/// id → name of a passwd(5) or group(5) file (first name wins for a shared id).
pub fn parse_id_names(text: &str) -> HashMap<u32, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.starts_with('+') || line.starts_with('-') {
            continue;
        }
        let mut f = line.split(':');
        let (Some(name), Some(_), Some(id)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if name.is_empty() {
            continue;
        }
        if let Ok(id) = id.trim().parse::<u32>() {
            out.entry(id).or_insert_with(|| name.to_string());
        }
    }
    out
}

/// The users and groups of the tree at `root`.
#[derive(Debug, Default)]
pub struct Names {
    pub users: HashMap<u32, String>,
    pub groups: HashMap<u32, String>,
}

/// Reads root's passwd and group; a missing file gives no names.
pub fn read_names(root: &Path) -> (Names, Vec<String>) {
    let mut gaps = Vec::new();
    let mut read = |abs: &str| -> HashMap<u32, String> {
        match fsread::read_text_opt(&fsread::below(root, abs), TABLE_CAP) {
            Ok(t) => t.map(|t| parse_id_names(&t)).unwrap_or_default(),
            Err(e) => {
                gaps.push(format!("names: {e}"));
                HashMap::new()
            }
        }
    };
    let users = read("/etc/passwd");
    let groups = read("/etc/group");
    (Names { users, groups }, gaps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_and_group() {
        let u = parse_id_names(
            "root:x:0:0:root:/root:/bin/bash\n# comment\n+nisuser::::::\nalice:x:1001:1001::/home/alice:/bin/sh\n\
             bob:x:notanumber:1\ntoor:x:0:0::/:/bin/sh\n:x:5:5\nbroken\n",
        );
        assert_eq!(u.get(&0).map(String::as_str), Some("root"));
        assert_eq!(u.get(&1001).map(String::as_str), Some("alice"));
        assert_eq!(u.len(), 2);
        let g = parse_id_names("wheel:x:10:alice,bob\n");
        assert_eq!(g.get(&10).map(String::as_str), Some("wheel"));
    }
}
