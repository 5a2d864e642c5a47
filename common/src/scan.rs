//! The source scan behind the pre-flight report: what the controller asks the agent to look
//! for in the source tree ([`ScanOptions`], sent as `ScanRequest`) and what the agent finds
//! ([`ScanResult`], returned as JSON in `CommandResult.payload_json`).
//!
//! Field names are part of the agent↔controller contract. Every list is capped so a result
//! stays small whatever the tree: a [`Capped`] list keeps its total and the first
//! [`limits::MAX_EXAMPLES`] items, and `truncated` says some cap was hit. The result comes
//! from an untrusted machine, so the controller reads it with [`ScanResult::from_json`],
//! which enforces the caps again.

use serde::{Deserialize, Serialize};

use crate::manifest::Problem;
use crate::paths::{PathError, RelPath};

/// Bumped when a field changes meaning; the controller refuses other schemas.
pub const SCAN_SCHEMA: u32 = 1;

/// Where the agent looks for files naming a source MAC address unless told otherwise.
pub const DEFAULT_MAC_SCAN_ROOTS: [&str; 5] = ["/etc", "/opt", "/usr/local", "/var/lib", "/srv"];

/// Bounds on a request and on a result.
pub mod limits {
    /// Example items kept per capped list (totals are always counted).
    pub const MAX_EXAMPLES: usize = 200;
    /// (file, MAC, spelling) hits reported.
    pub const MAX_MAC_HITS: usize = 1000;
    /// Device paths named in service configs reported.
    pub const MAX_DEVICE_REFS: usize = 1000;
    /// Mount points the scan did not cross, reported.
    pub const MAX_SKIPPED_MOUNTS: usize = 1000;
    /// Files larger than this are not searched for MAC addresses.
    pub const MAX_MAC_FILE_SIZE: u64 = 64 << 20;
    /// Binary files (a NUL byte in the first block) larger than this are not searched.
    pub const MAX_BINARY_FILE_SIZE: u64 = 4 << 20;
    /// Bytes read in all by the MAC search; past it the search stops and says so.
    pub const MAX_MAC_SCAN_BYTES: u64 = 8 << 30;
    /// Bytes of one service or database config read for device paths.
    pub const MAX_CONFIG_FILE_SIZE: u64 = 1 << 20;
    /// MAC addresses, roots or excludes one request may carry.
    pub const MAX_REQUEST_ITEMS: usize = 256;
    /// Bytes of JSON result the controller accepts.
    pub const MAX_RESULT_JSON: usize = 8 << 20;
    /// Bytes kept of one text field (a config line, a reason, a type name).
    pub const MAX_TEXT: usize = 512;
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("scan request has {count} {what}, more than {max}", max = limits::MAX_REQUEST_ITEMS)]
    TooMany { what: &'static str, count: usize },
    #[error(
        "{0:?} is not a mac address (expected aa:bb:cc:dd:ee:ff, aa-bb-.., aabbccddeeff or aabb.ccdd.eeff)"
    )]
    BadMac(String),
    #[error("scan path {path:?}: {source}")]
    BadPath { path: String, source: PathError },
    #[error("scan path {0:?} is not absolute")]
    NotAbsolute(String),
    #[error("scan result is {0} bytes, more than {max}", max = limits::MAX_RESULT_JSON)]
    TooLarge(usize),
    #[error("scan result has schema {found}, this controller reads {SCAN_SCHEMA}")]
    Schema { found: u32 },
    #[error("scan result is not valid json: {0}")]
    Json(#[from] serde_json::Error),
}

/// What the controller asks the agent to scan for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScanOptions {
    /// Source MAC addresses to search for, in any common spelling.
    pub mac_addresses: Vec<String>,
    /// Absolute source directories whose files are searched for the MAC addresses.
    pub mac_scan_roots: Vec<String>,
    /// Absolute source paths left out of the scan (the migration's `--exclude`s).
    pub excludes: Vec<String>,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            mac_addresses: Vec::new(),
            mac_scan_roots: DEFAULT_MAC_SCAN_ROOTS.iter().map(|s| s.to_string()).collect(),
            excludes: Vec::new(),
        }
    }
}

impl ScanOptions {
    /// What to scan a source for, from its inventory: the MACs of its interfaces (loopback
    /// and all-zero ones left out) under the default roots, leaving out `excludes` (source
    /// paths as the operator gave them). The controller asks this of a connected agent; an
    /// export computes the same on its own.
    pub fn for_inventory(inv: &crate::inventory::Inventory, excludes: &[String]) -> ScanOptions {
        let mut macs: Vec<String> = inv
            .interfaces
            .iter()
            .filter(|i| !i.loopback)
            .filter_map(|i| parse_mac(i.mac.as_deref()?))
            .filter(|m| *m != [0; 6])
            .map(|m| format_mac(&m))
            .collect();
        macs.sort();
        macs.dedup();
        let excludes =
            excludes.iter().map(|x| if x.starts_with('/') { x.clone() } else { format!("/{x}") }).collect();
        ScanOptions { mac_addresses: macs, excludes, ..ScanOptions::default() }
    }

    /// Checks sizes, MAC spellings and paths; an agent refuses a request that fails.
    pub fn validate(&self) -> Result<(), ScanError> {
        for (what, count) in [
            ("mac addresses", self.mac_addresses.len()),
            ("mac scan roots", self.mac_scan_roots.len()),
            ("excludes", self.excludes.len()),
        ] {
            if count > limits::MAX_REQUEST_ITEMS {
                return Err(ScanError::TooMany { what, count });
            }
        }
        self.macs()?;
        self.roots()?;
        self.exclude_paths()?;
        Ok(())
    }

    /// The MAC addresses as bytes.
    pub fn macs(&self) -> Result<Vec<[u8; 6]>, ScanError> {
        self.mac_addresses.iter().map(|m| parse_mac(m).ok_or_else(|| ScanError::BadMac(m.clone()))).collect()
    }

    /// The MAC scan roots relative to the source root.
    pub fn roots(&self) -> Result<Vec<RelPath>, ScanError> {
        self.mac_scan_roots.iter().map(|p| rel_of(p)).collect()
    }

    /// The excludes relative to the source root.
    pub fn exclude_paths(&self) -> Result<Vec<RelPath>, ScanError> {
        self.excludes.iter().map(|p| rel_of(p)).collect()
    }
}

fn rel_of(p: &str) -> Result<RelPath, ScanError> {
    if !p.starts_with('/') {
        return Err(ScanError::NotAbsolute(p.to_string()));
    }
    RelPath::from_user(&crate::paths::unescape_bytes(p))
        .map_err(|source| ScanError::BadPath { path: p.to_string(), source })
}

/// Parses a MAC address in any of the spellings the scan searches for:
/// `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff`, `aabbccddeeff`, `aabb.ccdd.eeff` (any case).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let s = s.trim();
    let digits: String = match s.len() {
        17 => {
            let sep = s.as_bytes()[2];
            if sep != b':' && sep != b'-' {
                return None;
            }
            let parts: Vec<&str> = s.split(sep as char).collect();
            if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
                return None;
            }
            parts.concat()
        }
        14 => {
            let parts: Vec<&str> = s.split('.').collect();
            if parts.len() != 3 || parts.iter().any(|p| p.len() != 4) {
                return None;
            }
            parts.concat()
        }
        12 => s.to_string(),
        _ => return None,
    };
    let mut out = [0u8; 6];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = digits.get(2 * i..2 * i + 2)?;
        if !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// The canonical spelling, `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A list that counts every item and keeps the first [`limits::MAX_EXAMPLES`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Capped<T> {
    /// How many there are.
    pub total: u64,
    /// The first ones found.
    pub examples: Vec<T>,
}

impl<T> Default for Capped<T> {
    fn default() -> Self {
        Capped { total: 0, examples: Vec::new() }
    }
}

impl<T> Capped<T> {
    /// Counts `item` and keeps it if there is room; false when it was not kept.
    pub fn push(&mut self, item: T) -> bool {
        self.total += 1;
        if self.examples.len() < limits::MAX_EXAMPLES {
            self.examples.push(item);
            true
        } else {
            false
        }
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// More were counted than kept.
    pub fn is_truncated(&self) -> bool {
        self.total > self.examples.len() as u64
    }

    /// Enforces the cap on a list read from a peer; true when it had to cut.
    fn clamp(&mut self) -> bool {
        let cut = self.examples.len() > limits::MAX_EXAMPLES;
        self.examples.truncate(limits::MAX_EXAMPLES);
        self.total = self.total.max(self.examples.len() as u64);
        cut
    }
}

/// A file that contains a source MAC address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacHit {
    pub path: RelPath,
    /// The MAC, canonical (`aa:bb:cc:dd:ee:ff`).
    pub mac: String,
    /// How the file spells it, as found (`AA-BB-CC-DD-EE-FF`).
    pub spelling: String,
}

/// Extended attributes and ACLs found below the root.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct XattrCensus {
    /// Entries with at least one attribute other than `security.selinux`.
    pub files: u64,
    /// Bytes of the names and values of those attributes.
    pub bytes: u64,
    /// Entries with `user.*` attributes.
    pub user: Capped<RelPath>,
    /// Entries with `trusted.*` attributes.
    pub trusted: Capped<RelPath>,
    /// Entries with `security.*` attributes other than `security.selinux`.
    pub security: Capped<RelPath>,
    /// Entries with `system.*` attributes (POSIX ACLs included).
    pub system: Capped<RelPath>,
    /// Entries with a POSIX access or default ACL.
    pub acl: Capped<RelPath>,
    /// Entries with file capabilities (`security.capability`, e.g. ping's cap_net_raw).
    pub capabilities: Capped<RelPath>,
    /// Entries with attributes in any other namespace.
    pub other: Capped<RelPath>,
}

impl XattrCensus {
    fn clamp(&mut self) -> bool {
        let mut cut = false;
        for c in [
            &mut self.user,
            &mut self.trusted,
            &mut self.security,
            &mut self.system,
            &mut self.acl,
            &mut self.capabilities,
            &mut self.other,
        ] {
            cut |= c.clamp();
        }
        cut
    }
}

/// An entry owned by a user or group id above 65535.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HighId {
    pub path: RelPath,
    pub uid: u32,
    pub gid: u32,
}

/// A `/dev` path named by a service, mount or database configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRef {
    /// The device path as written (`/dev/sdb`, `/dev/raw/raw1`, `/dev/disk/by-id/...`).
    pub device: String,
    /// The file that names it.
    pub file: RelPath,
    /// 1-based line number.
    pub line: u32,
    /// Where on the line: `ExecStart`, `DeviceAllow`, `What`, `fstab swap`, `crypttab`,
    /// `udev rule`, `config`.
    pub context: String,
    /// The line, trimmed.
    pub text: String,
}

/// A mount point below the root that the scan did not enter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedMount {
    pub path: RelPath,
    /// The file-system type, or why the path is never scanned (`pseudo`).
    pub fs_type: String,
}

/// What the agent found in the source tree.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScanResult {
    pub schema: u32,
    /// Entries looked at (excludes and non-disk file systems left out).
    pub entries: u64,
    /// Disk space those entries use (allocated blocks; hard links counted once).
    pub used_bytes: u64,
    /// Inodes those entries use (hard links counted once, sockets not counted).
    pub inodes: u64,
    /// Files under the MAC roots containing a source MAC, one item per distinct spelling.
    pub mac_hits: Vec<MacHit>,
    /// Files searched for MAC addresses.
    pub mac_files_searched: u64,
    /// Files under the MAC roots that were not searched, with the reason.
    pub mac_skipped: Capped<Problem>,
    pub xattrs: XattrCensus,
    /// Entries with a `security.selinux` label.
    pub selinux_labelled: u64,
    /// Entries owned by a uid or gid above 65535.
    pub high_ids: Capped<HighId>,
    /// `/dev` paths named in service, mount and database configs.
    pub device_refs: Vec<DeviceRef>,
    /// Sockets (never copied).
    pub sockets: Capped<RelPath>,
    /// Mount points not entered (pseudo and network file systems, `/proc`, `/sys`...).
    pub skipped_mounts: Vec<SkippedMount>,
    /// Entries that could not be read.
    pub errors: Capped<Problem>,
    /// Some cap was hit: lists hold the first items only, or the MAC search stopped early.
    pub truncated: bool,
}

impl ScanResult {
    pub fn new() -> Self {
        ScanResult { schema: SCAN_SCHEMA, ..Default::default() }
    }

    pub fn to_json(&self) -> Result<Vec<u8>, ScanError> {
        Ok(serde_json::to_vec(self)?)
    }

    /// Reads a result sent by an agent, enforcing the schema and every cap.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ScanError> {
        if bytes.len() > limits::MAX_RESULT_JSON {
            return Err(ScanError::TooLarge(bytes.len()));
        }
        let mut r: ScanResult = serde_json::from_slice(bytes)?;
        if r.schema != SCAN_SCHEMA {
            return Err(ScanError::Schema { found: r.schema });
        }
        r.clamp();
        Ok(r)
    }

    /// Cuts lists and texts to their caps, setting `truncated` if anything was cut.
    pub fn clamp(&mut self) {
        let mut cut = false;
        cut |= truncate_vec(&mut self.mac_hits, limits::MAX_MAC_HITS);
        cut |= truncate_vec(&mut self.device_refs, limits::MAX_DEVICE_REFS);
        cut |= truncate_vec(&mut self.skipped_mounts, limits::MAX_SKIPPED_MOUNTS);
        cut |= self.mac_skipped.clamp();
        cut |= self.xattrs.clamp();
        cut |= self.high_ids.clamp();
        cut |= self.sockets.clamp();
        cut |= self.errors.clamp();
        for h in &mut self.mac_hits {
            clip(&mut h.mac);
            clip(&mut h.spelling);
        }
        for d in &mut self.device_refs {
            clip(&mut d.device);
            clip(&mut d.context);
            clip(&mut d.text);
        }
        for m in &mut self.skipped_mounts {
            clip(&mut m.fs_type);
        }
        for p in self.mac_skipped.examples.iter_mut().chain(self.errors.examples.iter_mut()) {
            clip(&mut p.reason);
        }
        self.truncated |= cut;
    }
}

fn truncate_vec<T>(v: &mut Vec<T>, max: usize) -> bool {
    let cut = v.len() > max;
    v.truncate(max);
    cut
}

/// Cuts a text to [`limits::MAX_TEXT`] bytes at a character boundary.
pub fn clip(s: &mut String) {
    if s.len() > limits::MAX_TEXT {
        let mut end = limits::MAX_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

#[cfg(test)]
mod tests;
