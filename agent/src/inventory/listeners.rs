//! Listening sockets of the running kernel: LISTEN TCP and bound, unconnected UDP sockets
//! from `/proc/net/{tcp,tcp6,udp,udp6}`, with the owning process where `/proc/*/fd` says.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use p2c_common::inventory::Listener;

use super::fsread;

/// Most processes and file descriptors looked at to name socket owners.
const MAX_PIDS: usize = 32_768;
const MAX_FDS: usize = 500_000;

const TCP_LISTEN: &str = "0A";
const UDP_UNCONNECTED: &str = "07";

/// One socket: the listener and its inode.
#[derive(Debug, PartialEq)]
pub struct Socket {
    pub listener: Listener,
    pub inode: u64,
}

/// Most listening sockets kept from one table.
const MAX_SOCKETS: usize = 65_536;

/// One table line, if it is a listening socket of `proto`.
fn parse_socket(line: &str, proto: &str) -> Option<Socket> {
    let want = if proto.starts_with("tcp") { TCP_LISTEN } else { UDP_UNCONNECTED };
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 || f[3] != want {
        return None;
    }
    let (addr, port) = f[1].split_once(':')?;
    Some(Socket {
        listener: Listener {
            proto: proto.to_string(),
            address: decode_addr(addr)?,
            port: u16::from_str_radix(port, 16).ok()?,
            process: None,
        },
        inode: f[9].parse().unwrap_or(0),
    })
}

/// Parses one of /proc/net/{tcp,tcp6,udp,udp6} (`proto` is the file name) line by line:
/// a busy server's established connections may fill many megabytes, of which only the
/// listening sockets are kept.
pub fn parse_proc_net(table: impl BufRead, proto: &str) -> io::Result<Vec<Socket>> {
    let mut out = Vec::new();
    for (i, line) in table.split(b'\n').enumerate() {
        let line = line?;
        if i == 0 {
            continue;
        }
        if let Some(s) = parse_socket(&String::from_utf8_lossy(&line), proto) {
            out.push(s);
            if out.len() >= MAX_SOCKETS {
                break;
            }
        }
    }
    Ok(out)
}

fn read_proc_net(path: &Path, proto: &str) -> Result<Vec<Socket>, fsread::ReadError> {
    let file = File::open(path).map_err(|e| fsread::ReadError::io(path, e))?;
    parse_proc_net(BufReader::new(file), proto).map_err(|e| fsread::ReadError::io(path, e))
}

/// The kernel prints addresses as native-endian 32-bit words.
fn decode_addr(hex: &str) -> Option<String> {
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(Ipv4Addr::from(word(0)?).to_string()),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(Ipv6Addr::from(b).to_string())
        }
        _ => None,
    }
}

/// Socket inode → process name, from `/proc/<pid>/fd` links and `/proc/<pid>/comm`.
fn socket_owners(proc: &Path, wanted: &HashSet<u64>) -> HashMap<u64, String> {
    let mut owners = HashMap::new();
    let Ok(pids) = fsread::list_dir(proc) else {
        return owners;
    };
    let mut fds_seen = 0;
    for pid in pids.iter().take(MAX_PIDS) {
        if !pid.to_string_lossy().chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let dir = proc.join(pid);
        let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
            continue;
        };
        let mut name: Option<String> = None;
        for fd in fds.flatten() {
            fds_seen += 1;
            if fds_seen > MAX_FDS {
                return owners;
            }
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let link = link.to_string_lossy();
            let Some(ino) = link
                .strip_prefix("socket:[")
                .and_then(|l| l.strip_suffix(']'))
                .and_then(|i| i.parse::<u64>().ok())
            else {
                continue;
            };
            if !wanted.contains(&ino) || owners.contains_key(&ino) {
                continue;
            }
            let n = name.get_or_insert_with(|| {
                fsread::read_text(&dir.join("comm"), 256).map(|c| c.trim().to_string()).unwrap_or_default()
            });
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
   1: 0100007F:0CEA 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 12346 1 0 100 0 0 10 0\n\
   2: garbage\n";
        let s = parse_proc_net(tcp.as_bytes(), "tcp").unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].listener.address, "127.0.0.1");
        assert_eq!(s[0].listener.port, 3306);
        assert_eq!(s[0].inode, 12345);
        let tcp6 = "header\n   0: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 999 1\n";
        let s = parse_proc_net(tcp6.as_bytes(), "tcp6").unwrap();
        assert_eq!(s[0].listener.address, "::1");
        assert_eq!(s[0].listener.port, 22);
        let udp = "header\n  1: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   0   0 77 2\n";
        assert_eq!(parse_proc_net(udp.as_bytes(), "udp").unwrap()[0].listener.port, 53);
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
        assert!(me.process.is_some());
        let uport = udp.local_addr().unwrap().port();
        assert!(l.iter().any(|l| l.proto == "udp" && l.port == uport));
    }
}
