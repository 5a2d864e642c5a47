//! What the scan looks at in one entry: space, ids, sockets, xattrs, MACs, device paths.

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::BorrowedFd;

use p2c_common::manifest::Problem;
use p2c_common::paths::RelPath;
use p2c_common::scan::{HighId, MacHit, limits};
use rustix::fs::{FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use super::{Scanner, devrefs, keep};

/// Ids above this do not fit a 16-bit id map or old quota formats.
const MAX_LOW_ID: u32 = 65535;

/// Which census lists one entry's attributes put it on.
#[derive(Default)]
struct XattrFlags {
    any: bool,
    selinux: bool,
    user: bool,
    trusted: bool,
    security: bool,
    system: bool,
    acl: bool,
    capability: bool,
    other: bool,
    bytes: u64,
}

impl Scanner {
    /// Takes the census of one entry. `at` is its directory and name (`None` for the root).
    pub(super) fn visit(
        &mut self,
        at: Option<(BorrowedFd<'_>, &CStr)>,
        rel: &RelPath,
        st: &Stat,
        ft: FileType,
    ) {
        self.out.entries += 1;
        if ft == FileType::Socket {
            keep(&mut self.out.sockets, rel.clone(), &mut self.out.truncated);
            return;
        }
        self.account(st, ft);
        if st.st_uid > MAX_LOW_ID || st.st_gid > MAX_LOW_ID {
            let id = HighId { path: rel.clone(), uid: st.st_uid, gid: st.st_gid };
            keep(&mut self.out.high_ids, id, &mut self.out.truncated);
        }
        self.xattrs(rel);
        let Some((dfd, name)) = at else { return };
        if ft != FileType::RegularFile {
            return;
        }
        if !self.matcher.is_empty() && self.mac_roots.iter().any(|r| rel.starts_with(r)) {
            self.search_macs(dfd, name, rel, st);
        }
        if let Some(kind) = devrefs::classify(rel) {
            let file = match open_file(dfd, name) {
                Ok(f) => f,
                Err(e) => return self.error(rel, "cannot open", e),
            };
            let r = BufReader::new(file.take(limits::MAX_CONFIG_FILE_SIZE));
            match devrefs::scan_config(kind, rel, r, &mut self.out.device_refs) {
                Ok(true) => {}
                Ok(false) => self.out.truncated = true,
                Err(e) => self.error(rel, "cannot read", e),
            }
        }
    }

    /// Space and inodes, hard links once.
    fn account(&mut self, st: &Stat, ft: FileType) {
        if ft != FileType::Directory && st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if self.seen_links.contains(&key) {
                return;
            }
            if self.seen_links.len() < super::MAX_SEEN_LINKS {
                self.seen_links.insert(key);
            }
        }
        self.out.inodes += 1;
        let blocks = u64::try_from(st.st_blocks).unwrap_or(0);
        self.out.used_bytes = self.out.used_bytes.saturating_add(blocks * 512);
    }

    fn xattrs(&mut self, rel: &RelPath) {
        let path = self.abs(rel);
        let n = match rustix::fs::llistxattr(&path, &mut self.xbuf[..]) {
            Ok(n) => n,
            Err(e) if e == Errno::OPNOTSUPP || e == Errno::NOENT => return,
            Err(e) => return self.error(rel, "cannot list extended attributes", e.into()),
        };
        let names: Vec<Vec<u8>> =
            self.xbuf[..n].split(|b| *b == 0).filter(|s| !s.is_empty()).map(<[u8]>::to_vec).collect();
        let mut f = XattrFlags::default();
        for name in &names {
            if name == b"security.selinux" {
                f.selinux = true;
                continue;
            }
            f.any = true;
            let value = rustix::fs::lgetxattr_query(&path, name.as_slice()).unwrap_or(0);
            f.bytes += (name.len() + value) as u64;
            let ns = name.split(|b| *b == b'.').next().unwrap_or_default();
            match ns {
                b"user" => f.user = true,
                b"trusted" => f.trusted = true,
                b"security" => f.security = true,
                b"system" => f.system = true,
                _ => f.other = true,
            }
            f.acl |= name == b"system.posix_acl_access" || name == b"system.posix_acl_default";
            f.capability |= name == b"security.capability";
        }
        if f.selinux {
            self.out.selinux_labelled += 1;
        }
        if !f.any {
            return;
        }
        let t = &mut self.out.truncated;
        let c = &mut self.out.xattrs;
        c.files += 1;
        c.bytes += f.bytes;
        for (on, list) in [
            (f.user, &mut c.user),
            (f.trusted, &mut c.trusted),
            (f.security, &mut c.security),
            (f.system, &mut c.system),
            (f.acl, &mut c.acl),
            (f.capability, &mut c.capabilities),
            (f.other, &mut c.other),
        ] {
            if on {
                keep(list, rel.clone(), t);
            }
        }
    }

    fn skip_mac_search(&mut self, rel: &RelPath, reason: String) {
        let p = Problem { path: rel.clone(), reason };
        keep(&mut self.out.mac_skipped, p, &mut self.out.truncated);
    }

    fn search_macs(&mut self, dfd: BorrowedFd<'_>, name: &CStr, rel: &RelPath, st: &Stat) {
        let size = u64::try_from(st.st_size).unwrap_or(0);
        if size > limits::MAX_MAC_FILE_SIZE {
            let reason =
                format!("{size} bytes, larger than the {} MiB searched", limits::MAX_MAC_FILE_SIZE >> 20);
            return self.skip_mac_search(rel, reason);
        }
        if self.mac_read.saturating_add(size) > limits::MAX_MAC_SCAN_BYTES {
            self.out.truncated = true;
            let reason = format!("mac search stopped after reading {} GiB", limits::MAX_MAC_SCAN_BYTES >> 30);
            return self.skip_mac_search(rel, reason);
        }
        let file = match open_file(dfd, name) {
            Ok(f) => f,
            Err(e) => return self.error(rel, "cannot open", e),
        };
        let found = match self.matcher.search(file, size, limits::MAX_BINARY_FILE_SIZE) {
            Ok(found) => found,
            Err(e) => return self.error(rel, "cannot read", e),
        };
        self.mac_read += found.bytes_read;
        if found.binary {
            let reason =
                format!("binary file larger than {} MiB, not searched", limits::MAX_BINARY_FILE_SIZE >> 20);
            return self.skip_mac_search(rel, reason);
        }
        self.out.mac_files_searched += 1;
        for (idx, spelling) in found.hits {
            if self.out.mac_hits.len() >= limits::MAX_MAC_HITS {
                self.out.truncated = true;
                break;
            }
            self.out.mac_hits.push(MacHit {
                path: rel.clone(),
                mac: self.mac_names.get(idx).cloned().unwrap_or_default(),
                spelling: String::from_utf8_lossy(&spelling).into_owned(),
            });
        }
    }
}

/// Opens a regular file for reading without following a symlink, blocking on a fifo or
/// touching its access time.
fn open_file(dfd: BorrowedFd<'_>, name: &CStr) -> io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = match rustix::fs::openat(dfd, name, flags | OFlags::NONBLOCK | OFlags::NOATIME, Mode::empty()) {
        Err(Errno::PERM) => rustix::fs::openat(dfd, name, flags | OFlags::NONBLOCK, Mode::empty()),
        other => other,
    }?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io::Error::other("no longer a regular file"));
    }
    Ok(File::from(fd))
}
