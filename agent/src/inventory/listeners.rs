//! Listening sockets of the running kernel: LISTEN TCP and bound, unconnected UDP sockets
//! from `/proc/net/{tcp,tcp6,udp,udp6}` (parsed by procfs), with the owning process where
//! `/proc/*/fd` says.
//!
//! The owner is found by socket inode through procfs's `Process::fd()`: sysinfo, which the
//! inventory uses for the rest of the process facts it has, lists no file descriptors.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;

use p2c_common::inventory::Listener;
use procfs::net::{TcpNetEntries, TcpState, UdpNetEntries, UdpState};
use procfs::process::FDTarget;
use procfs::{FromBufReadSI, ProcError};

/// Most processes and file descriptors looked at to name socket owners.
const MAX_PIDS: usize = 32_768;
const MAX_FDS: usize = 500_000;

/// Most listening sockets kept from one table.
const MAX_SOCKETS: usize = 65_536;

/// Table lines handed to procfs at a time: a busy server's established connections may fill
/// many megabytes, of which only the listening sockets are kept.
const BATCH_LINES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("cannot parse {path}: {source}")]
    Parse { path: String, source: ProcError },
}

impl TableError {
    fn is_not_found(&self) -> bool {
        matches!(self, TableError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// One socket: the listener and its inode.
#[derive(Debug, PartialEq)]
pub struct Socket {
    pub listener: Listener,
    pub inode: u64,
}

impl Socket {
    fn new(proto: &str, local: SocketAddr, inode: u64) -> Socket {
        let listener = Listener {
            proto: proto.to_string(),
            address: local.ip().to_string(),
            port: local.port(),
            process: None,
        };
        Socket { listener, inode }
    }
}

/// Why a table could not be read to the end.
#[derive(Debug)]
enum Stop {
    Io(io::Error),
    Parse(ProcError),
}

impl Stop {
    fn at(self, path: &Path) -> TableError {
        let path = path.display().to_string();
        match self {
            Stop::Io(source) => TableError::Read { path, source },
            Stop::Parse(source) => TableError::Parse { path, source },
        }
    }
}

/// The listening sockets of one of /proc/net/{tcp,tcp6,udp,udp6} (`proto` is the file name).
fn listening_in(table: impl BufRead, proto: &str) -> Result<Vec<Socket>, Stop> {
    let si = procfs::current_system_info();
    if proto.starts_with("tcp") {
        listening(
            table,
            |batch| TcpNetEntries::from_buf_read(batch, si).map(|t| t.0),
            |e| (e.state == TcpState::Listen).then(|| Socket::new(proto, e.local_address, e.inode)),
        )
    } else {
        listening(
            table,
            |batch| UdpNetEntries::from_buf_read(batch, si).map(|t| t.0),
            |e| (e.state == UdpState::Close).then(|| Socket::new(proto, e.local_address, e.inode)),
        )
    }
}

/// Hands the table to `parse` [`BATCH_LINES`] lines at a time (each batch behind the header
/// line, as procfs expects) and keeps what `keep` picks, at most [`MAX_SOCKETS`].
fn listening<E>(
    mut table: impl BufRead,
    parse: impl Fn(&[u8]) -> Result<Vec<E>, ProcError>,
    keep: impl Fn(E) -> Option<Socket>,
) -> Result<Vec<Socket>, Stop> {
    let mut batch = Vec::new();
    table.read_until(b'\n', &mut batch).map_err(Stop::Io)?;
    let header = batch.len();
    let mut lines = 0;
    let mut out = Vec::new();
    loop {
        let start = batch.len();
        let n = table.read_until(b'\n', &mut batch).map_err(Stop::Io)?;
        if batch[start..].iter().all(u8::is_ascii_whitespace) {
            batch.truncate(start);
        } else {
            lines += 1;
        }
        if lines > 0 && (lines == BATCH_LINES || n == 0) {
            for e in parse(&batch).map_err(Stop::Parse)? {
                if let Some(s) = keep(e) {
                    out.push(s);
                    if out.len() >= MAX_SOCKETS {
                        return Ok(out);
                    }
                }
            }
            batch.truncate(header);
            lines = 0;
        }
        if n == 0 {
            return Ok(out);
        }
    }
}

fn read_proc_net(path: &Path, proto: &str) -> Result<Vec<Socket>, TableError> {
    let file = File::open(path).map_err(|e| Stop::Io(e).at(path))?;
    listening_in(BufReader::new(file), proto).map_err(|s| s.at(path))
}

/// Socket inode → process name (`comm`), from the `/proc/<pid>/fd` links.
fn socket_owners(proc: &Path, wanted: &HashSet<u64>) -> HashMap<u64, String> {
    let mut owners = HashMap::new();
    let Ok(processes) = procfs::process::all_processes_with_root(proc) else {
        return owners;
    };
    let mut fds_seen = 0;
    // A process that exited or that we may not look into is skipped.
    for p in processes.take(MAX_PIDS).flatten() {
        let Ok(fds) = p.fd() else {
            continue;
        };
        let mut name: Option<String> = None;
        for fd in fds.flatten() {
            fds_seen += 1;
            if fds_seen > MAX_FDS {
                return owners;
            }
            let FDTarget::Socket(ino) = fd.target else {
                continue;
            };
            if !wanted.contains(&ino) || owners.contains_key(&ino) {
                continue;
            }
            let n = name.get_or_insert_with(|| p.stat().map(|s| s.comm).unwrap_or_default());
            if !n.is_empty() {
                owners.insert(ino, n.clone());
            }
        }
    }
    owners
}

/// The listeners of the running kernel (the agent's network namespace).
pub fn live_listeners(proc: &Path) -> (Vec<Listener>, Vec<String>) {
    let mut sockets = Vec::new();
    let mut gaps = Vec::new();
    for proto in ["tcp", "tcp6", "udp", "udp6"] {
        match read_proc_net(&proc.join("net").join(proto), proto) {
            Ok(s) => sockets.extend(s),
            Err(e) if e.is_not_found() => {}
            Err(e) => gaps.push(format!("listeners: {e}")),
        }
    }
    let inodes: HashSet<u64> = sockets.iter().map(|s| s.inode).filter(|i| *i != 0).collect();
    let owners = if inodes.is_empty() { HashMap::new() } else { socket_owners(proc, &inodes) };
    let mut out: Vec<Listener> = Vec::new();
    for mut s in sockets {
        s.listener.process = owners.get(&s.inode).cloned();
        if !out.contains(&s.listener) {
            out.push(s.listener);
        }
    }
    out.sort_by(|a, b| (&a.proto, a.port, &a.address).cmp(&(&b.proto, b.port, &b.address)));
    (out, gaps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, UdpSocket};

    #[test]
    fn parses_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0 100 0 0 10 0\n\
   1: 0100007F:0CEA 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 12346 1 0 100 0 0 10 0\n";
        let s = listening_in(tcp.as_bytes(), "tcp").unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].listener.address, "127.0.0.1");
        assert_eq!(s[0].listener.port, 3306);
        assert_eq!(s[0].inode, 12345);
        let tcp6 = "header\n   0: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 999 1\n";
        let s = listening_in(tcp6.as_bytes(), "tcp6").unwrap();
        assert_eq!(s[0].listener.address, "::1");
        assert_eq!(s[0].listener.port, 22);
        let udp = "header\n  1: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   0   0 77 2\n";
        assert_eq!(listening_in(udp.as_bytes(), "udp").unwrap()[0].listener.port, 53);
    }

    #[test]
    fn reads_long_tables_in_batches() {
        let line = |i: usize, st: &str| {
            format!(
                "{i}: 0100007F:{:04X} 00000000:0000 {st} 00000000:00000000 00:00000000 00000000 0 0 {} 1\n",
                i % 65536,
                1000 + i
            )
        };
        let mut t = String::from("header\n");
        let listen = [0, BATCH_LINES - 1, BATCH_LINES, 2 * BATCH_LINES + 7];
        for i in 0..=listen[3] {
            t.push_str(&line(i, if listen.contains(&i) { "0A" } else { "01" }));
        }
        t.pop();
        let s = listening_in(t.as_bytes(), "tcp").unwrap();
        let ports: Vec<usize> = s.iter().map(|s| usize::from(s.listener.port)).collect();
        assert_eq!(ports, listen);
        assert!(listening_in("header\n".as_bytes(), "tcp").unwrap().is_empty());
        assert!(listening_in("".as_bytes(), "udp").unwrap().is_empty());
    }

    #[test]
    fn finds_own_sockets() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (l, gaps) = live_listeners(Path::new("/proc"));
        assert!(gaps.is_empty(), "{gaps:?}");
        let port = tcp.local_addr().unwrap().port();
        let me = l.iter().find(|l| l.proto == "tcp" && l.port == port).unwrap();
        assert_eq!(me.address, "127.0.0.1");
        // The program: this test binary, as its main thread's `comm` names it.
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(me.process.as_deref(), Some(comm.trim()));
        let uport = udp.local_addr().unwrap().port();
        assert!(l.iter().any(|l| l.proto == "udp" && l.port == uport));
    }
}
