//! The booted guest's listening sockets, in the inventory's form: LISTEN TCP and bound,
//! unconnected UDP sockets from `/proc/<init>/net/{tcp,tcp6,udp,udp6}` (the tables of the
//! init's network namespace, parsed by procfs), each with the program that holds it, found
//! through the file descriptors of the processes in the guest's PID namespace.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;

use p2c_common::inventory::Listener;
use procfs::net::{TcpState, UdpState};
use procfs::process::{FDTarget, Process};

use super::machine::{ns_inode, pids_in};

/// The guest's listeners, sorted by protocol, port and address.
pub(super) fn listeners(init_pid: i32) -> Result<Vec<Listener>, procfs::ProcError> {
    let init = Process::new(init_pid)?;
    let mut sockets: Vec<(Listener, u64)> = Vec::new();
    let entry = |proto: &str, a: SocketAddr, inode: u64| {
        (
            Listener { proto: proto.to_string(), address: a.ip().to_string(), port: a.port(), process: None },
            inode,
        )
    };
    for (proto, table) in [("tcp", init.tcp()), ("tcp6", init.tcp6())] {
        for e in table? {
            if e.state == TcpState::Listen {
                sockets.push(entry(proto, e.local_address, e.inode));
            }
        }
    }
    for (proto, table) in [("udp", init.udp()), ("udp6", init.udp6())] {
        for e in table? {
            if e.state == UdpState::Close {
                sockets.push(entry(proto, e.local_address, e.inode));
            }
        }
    }
    let wanted: HashSet<u64> = sockets.iter().map(|(_, i)| *i).filter(|i| *i != 0).collect();
    let owners = owners(init_pid, &wanted);
    let mut out: Vec<Listener> = Vec::new();
    for (mut l, inode) in sockets {
        l.process = owners.get(&inode).cloned();
        if !out.contains(&l) {
            out.push(l);
        }
    }
    out.sort_by(|a, b| (&a.proto, a.port, &a.address).cmp(&(&b.proto, b.port, &b.address)));
    Ok(out)
}

/// Socket inode → the `comm` of a guest process holding it.
fn owners(init_pid: i32, wanted: &HashSet<u64>) -> HashMap<u64, String> {
    let mut owners = HashMap::new();
    let Some(ns) = ns_inode(Path::new(&format!("/proc/{init_pid}/ns/pid"))) else { return owners };
    for pid in pids_in("pid", ns) {
        let Ok(p) = Process::new(pid) else { continue };
        let Ok(fds) = p.fd() else { continue };
        let mut name: Option<String> = None;
        for fd in fds.flatten() {
            let FDTarget::Socket(ino) = fd.target else { continue };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_own_listener_with_its_program() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        let me = i32::try_from(std::process::id()).unwrap();
        let l = listeners(me).unwrap();
        let mine = l.iter().find(|l| l.proto == "tcp" && l.port == port).unwrap();
        assert_eq!(mine.address, "127.0.0.1");
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(mine.process.as_deref(), Some(comm.trim()));
    }
}
