//! Paths relative to a source root, carried as raw bytes.
//!
//! A [`RelPath`] is the only path type that crosses the wire. Its invariants are what lets
//! the controller write agent-supplied names beneath a container's private area: no empty,
//! `.` or `..` components, no NUL, no leading `/`, bounded lengths. The empty path is the
//! root directory itself.

use std::cmp::Ordering;
use std::fmt;

/// Longest path accepted, in bytes (PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest file name accepted, in bytes (NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("path {0} is longer than {MAX_PATH_LEN} bytes")]
    TooLong(String),
    #[error("path {0} has a component longer than {MAX_NAME_LEN} bytes")]
    NameTooLong(String),
    #[error("path {0} is absolute")]
    Absolute(String),
    #[error("path {0} has an empty, '.' or '..' component")]
    BadComponent(String),
    #[error("path {0} contains a NUL byte")]
    Nul(String),
}

/// A validated relative path (see the module docs).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct RelPath(Vec<u8>);

impl RelPath {
    /// The root directory of the tree.
    pub const ROOT: RelPath = RelPath(Vec::new());

    /// Validates `bytes` as a relative path.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, PathError> {
        let bytes = bytes.into();
        let shown = || escape_bytes(&bytes);
        if bytes.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong(shown()));
        }
        if bytes.contains(&0) {
            return Err(PathError::Nul(shown()));
        }
        if bytes.is_empty() {
            return Ok(Self::ROOT);
        }
        if bytes[0] == b'/' {
            return Err(PathError::Absolute(shown()));
        }
        for c in bytes.split(|b| *b == b'/') {
            if c.is_empty() || c == b"." || c == b".." {
                return Err(PathError::BadComponent(shown()));
            }
            if c.len() > MAX_NAME_LEN {
                return Err(PathError::NameTooLong(shown()));
            }
        }
        Ok(Self(bytes))
    }

    /// Builds a path from an absolute or relative user-supplied string, dropping leading
    /// slashes (`/home/x` → `home/x`), for operator input such as `--exclude`.
    pub fn from_user(s: &[u8]) -> Result<Self, PathError> {
        let trimmed: Vec<u8> = {
            let mut t = s;
            while let [b'/', rest @ ..] = t {
                t = rest;
            }
            while let [rest @ .., b'/'] = t {
                t = rest;
            }
            t.to_vec()
        };
        Self::new(trimmed)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The components, outermost first; none for the root.
    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        let empty = self.0.is_empty();
        self.0.split(|b| *b == b'/').filter(move |_| !empty)
    }

    /// The last component; empty for the root.
    pub fn file_name(&self) -> &[u8] {
        match self.0.iter().rposition(|b| *b == b'/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    /// The parent path; `None` for the root.
    pub fn parent(&self) -> Option<RelPath> {
        if self.is_root() {
            return None;
        }
        Some(match self.0.iter().rposition(|b| *b == b'/') {
            Some(i) => RelPath(self.0[..i].to_vec()),
            None => RelPath::ROOT,
        })
    }

    /// Appends one file name.
    pub fn join(&self, name: &[u8]) -> Result<RelPath, PathError> {
        let mut v = Vec::with_capacity(self.0.len() + 1 + name.len());
        v.extend_from_slice(&self.0);
        if !v.is_empty() {
            v.push(b'/');
        }
        v.extend_from_slice(name);
        if name.contains(&b'/') {
            return Err(PathError::BadComponent(escape_bytes(&v)));
        }
        RelPath::new(v)
    }

    /// True when `self` is `other` or lies beneath it (component-wise).
    pub fn starts_with(&self, other: &RelPath) -> bool {
        if other.is_root() {
            return true;
        }
        self.0.starts_with(&other.0) && (self.0.len() == other.0.len() || self.0[other.0.len()] == b'/')
    }

    /// Depth in components (root is 0).
    pub fn depth(&self) -> usize {
        self.components().count()
    }

    /// The order of a depth-first walk that visits each directory's names in byte order:
    /// component lists compared lexicographically. Both ends rely on it to merge sorted
    /// streams (pass manifests, the agent's cache) without loading them.
    pub fn walk_cmp(&self, other: &RelPath) -> Ordering {
        self.components().cmp(other.components())
    }

    /// The key that sorts in walk order as plain bytes: the path with `/` as NUL (which no
    /// name contains). Pass records and the agent's cache are kept in this order.
    pub fn walk_key(&self) -> Vec<u8> {
        self.0.iter().map(|b| if *b == b'/' { 0 } else { *b }).collect()
    }

    /// The path for display: UTF-8 kept, other bytes as `\xNN`.
    pub fn display(&self) -> String {
        if self.is_root() { "/".to_string() } else { format!("/{}", escape_bytes(&self.0)) }
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.display())
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

impl serde::Serialize for RelPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.display())
    }
}

impl<'de> serde::Deserialize<'de> for RelPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let raw = unescape_bytes(s.strip_prefix('/').unwrap_or(&s));
        RelPath::new(raw).map_err(serde::de::Error::custom)
    }
}

/// Shows bytes as text: valid UTF-8 as is, every other byte as `\xNN`, and `\` as `\\` so
/// the result is unambiguous.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for ch in chunk.valid().chars() {
            match ch {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Reverses [`escape_bytes`] (for paths typed by an operator or read back from JSON).
pub fn unescape_bytes(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            if b[i + 1] == b'\\' {
                out.push(b'\\');
                i += 2;
                continue;
            }
            if b[i + 1] == b'x' && i + 4 <= b.len() {
                let hex = |c: u8| (c as char).to_digit(16);
                if let (Some(h), Some(l)) = (hex(b[i + 2]), hex(b[i + 3])) {
                    out.push((h * 16 + l) as u8);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_escapes() {
        for bad in [&b"/etc"[..], b"a/../b", b"..", b".", b"a//b", b"a/", b"a\0b"] {
            assert!(RelPath::new(bad.to_vec()).is_err(), "{bad:?} accepted");
        }
        assert!(RelPath::new(vec![b'a'; 256]).is_err());
        assert!(RelPath::new(vec![b'a'; 255]).is_ok());
        assert!(RelPath::new([b"x/".repeat(2048), b"y".to_vec()].concat()).is_err());
    }

    #[test]
    fn accepts_non_utf8_and_dots_inside_names() {
        let p = RelPath::new(b"a/..b/\xff\xfe.c".to_vec()).unwrap();
        assert_eq!(p.components().count(), 3);
        assert_eq!(p.file_name(), b"\xff\xfe.c");
        assert_eq!(p.parent().unwrap().as_bytes(), b"a/..b");
        assert_eq!(p.display(), "/a/..b/\\xff\\xfe.c");
        assert_eq!(unescape_bytes("a/..b/\\xff\\xfe.c"), b"a/..b/\xff\xfe.c");
    }

    #[test]
    fn walk_order_is_depth_first_by_name() {
        let mut v: Vec<RelPath> = ["a-b", "a/b", "a", "", "a/b/c", "b"]
            .iter()
            .map(|s| RelPath::new(s.as_bytes().to_vec()).unwrap())
            .collect();
        v.sort_by(|a, b| a.walk_cmp(b));
        let got: Vec<String> = v.iter().map(|p| p.display()).collect();
        assert_eq!(got, ["/", "/a", "/a/b", "/a/b/c", "/a-b", "/b"]);
    }

    #[test]
    fn prefix_is_component_wise() {
        let a = RelPath::new(b"home/x".to_vec()).unwrap();
        assert!(a.starts_with(&RelPath::new(b"home".to_vec()).unwrap()));
        assert!(!a.starts_with(&RelPath::new(b"hom".to_vec()).unwrap()));
        assert!(a.starts_with(&RelPath::ROOT));
        assert_eq!(RelPath::from_user(b"/home/").unwrap().as_bytes(), b"home");
    }
}
