//! The source's listening sockets against the booted container's: each present, missing or
//! new, by protocol, address and port. A wildcard bind (`0.0.0.0`, `::`) on either side
//! matches every address of its family (`::` also IPv4: Linux's dual-stack default); an
//! IPv4-mapped IPv6 address counts as the IPv4 address.

use std::net::IpAddr;

use p2c_common::inventory::Listener;
use serde::{Deserialize, Serialize};

use super::probe::ProbeResult;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerStatus {
    /// The source had it and the container has it.
    Present,
    /// The source had it; the container does not.
    Missing,
    /// The container has it; the source did not.
    New,
    /// The source had it and a container is not meant to: a DHCP client (venet0's addresses
    /// are static).
    Retired,
}

/// One listener of either side and what became of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListenerCheck {
    /// `tcp`, `tcp6`, `udp`, `udp6`, as the side it comes from lists it.
    pub proto: String,
    pub address: String,
    pub port: u16,
    /// The program holding it on the source (the container's for a new one).
    pub program: Option<String>,
    /// The program holding it in the container, where it is there.
    pub container_program: Option<String>,
    pub status: ListenerStatus,
    /// Why, where the status needs a word (the address is not the container's...).
    pub note: Option<String>,
    /// From the node side, one per address the listener answers on (TCP only).
    pub probes: Vec<ProbeResult>,
}

impl ListenerCheck {
    pub fn is_tcp(&self) -> bool {
        self.proto.starts_with("tcp")
    }

    /// The listener's address, IPv4-mapped ones as IPv4; `None` if it does not parse.
    pub fn ip(&self) -> Option<IpAddr> {
        ip_of(&self.address)
    }
}

fn transport(proto: &str) -> &str {
    proto.strip_suffix('6').unwrap_or(proto)
}

fn ip_of(address: &str) -> Option<IpAddr> {
    let a: IpAddr = address.split('%').next()?.parse().ok()?;
    Some(match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(a),
        v4 => v4,
    })
}

/// Whether a socket bound to `wild` (unspecified) accepts connections to `to`.
fn covers(wild: IpAddr, to: IpAddr) -> bool {
    match (wild, to) {
        (IpAddr::V4(_), IpAddr::V4(_)) => true,
        (IpAddr::V6(_), _) => true,
        (IpAddr::V4(_), IpAddr::V6(_)) => false,
    }
}

/// Whether the container's listener `c` serves the source's `s` as a client sees it: the
/// same address, a container wildcard that covers the source's address, or a source wildcard
/// and a container bind to one of the addresses it covered (two wildcards: the container's
/// must cover the source's family).
fn matches(s: &Listener, c: &Listener) -> bool {
    if transport(&s.proto) != transport(&c.proto) || s.port != c.port {
        return false;
    }
    let (Some(x), Some(y)) = (ip_of(&s.address), ip_of(&c.address)) else {
        return s.address == c.address;
    };
    x == y
        || (y.is_unspecified() && covers(y, x))
        || (x.is_unspecified() && !y.is_unspecified() && covers(x, y))
}

/// A DHCP client's socket: the container's addresses are static, so it is not missed.
fn dhcp_client(l: &Listener) -> bool {
    let udp = transport(&l.proto) == "udp";
    let program = l.process.as_deref().unwrap_or_default();
    udp && (matches!(l.port, 68 | 546)
        || matches!(program, "dhclient" | "dhcpcd" | "udhcpc" | "dhcp6c" | "wide-dhcpv6-cl"))
}

/// Each source listener as present, missing or retired, then every container listener no
/// source listener matches as new; in protocol, port and address order.
pub fn compare(source: &[Listener], container: &[Listener], addresses: &[IpAddr]) -> Vec<ListenerCheck> {
    let mut out = Vec::new();
    let mut seen = vec![false; container.len()];
    for s in source {
        let found: Vec<usize> = (0..container.len()).filter(|&i| matches(s, &container[i])).collect();
        for &i in &found {
            seen[i] = true;
        }
        let here = found.first().map(|&i| &container[i]);
        let (status, note) = match here {
            Some(_) => (ListenerStatus::Present, None),
            None if dhcp_client(s) => (
                ListenerStatus::Retired,
                Some("a DHCP client: the container's addresses are static on venet0".to_string()),
            ),
            None => {
                let ip = ip_of(&s.address);
                let foreign =
                    ip.is_some_and(|a| !a.is_unspecified() && !a.is_loopback() && !addresses.contains(&a));
                let note = if foreign {
                    Some(format!("{} is not an address of the container", s.address))
                } else {
                    None
                };
                (ListenerStatus::Missing, note)
            }
        };
        out.push(ListenerCheck {
            proto: s.proto.clone(),
            address: s.address.clone(),
            port: s.port,
            program: s.process.clone(),
            container_program: here.and_then(|c| c.process.clone()),
            status,
            note,
            probes: Vec::new(),
        });
    }
    for (c, _) in container.iter().zip(&seen).filter(|(_, seen)| !**seen) {
        out.push(ListenerCheck {
            proto: c.proto.clone(),
            address: c.address.clone(),
            port: c.port,
            program: c.process.clone(),
            container_program: c.process.clone(),
            status: ListenerStatus::New,
            note: None,
            probes: Vec::new(),
        });
    }
    out.sort_by(|a, b| {
        (transport(&a.proto), a.port, &a.address, &a.proto).cmp(&(
            transport(&b.proto),
            b.port,
            &b.address,
            &b.proto,
        ))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(proto: &str, address: &str, port: u16, process: &str) -> Listener {
        Listener {
            proto: proto.into(),
            address: address.into(),
            port,
            process: (!process.is_empty()).then(|| process.to_string()),
        }
    }

    fn status(checks: &[ListenerCheck], proto: &str, address: &str, port: u16) -> ListenerStatus {
        checks
            .iter()
            .find(|c| c.proto == proto && c.address == address && c.port == port)
            .unwrap_or_else(|| panic!("no {proto} {address}:{port} in {checks:#?}"))
            .status
    }

    #[test]
    fn present_missing_new_and_retired() {
        let addrs: Vec<IpAddr> = vec!["198.51.100.10".parse().unwrap(), "fd00:51::20".parse().unwrap()];
        let source = [
            l("tcp", "0.0.0.0", 22, "sshd"),
            l("tcp6", "::", 22, "sshd"),
            l("tcp", "198.51.100.10", 80, "nginx"),
            l("tcp", "198.51.100.50", 8081, "httpd"),
            l("tcp", "127.0.0.1", 3306, "mariadbd"),
            l("udp", "0.0.0.0", 68, "dhclient"),
            l("tcp6", "::ffff:198.51.100.10", 8443, "java"),
        ];
        let container = [
            l("tcp", "0.0.0.0", 22, "sshd"),
            l("tcp6", "::", 22, "sshd"),
            l("tcp", "0.0.0.0", 80, "nginx"),
            l("tcp", "198.51.100.10", 8443, "java"),
            l("tcp", "127.0.0.1", 25, "exim4"),
        ];
        let c = compare(&source, &container, &addrs);
        assert_eq!(status(&c, "tcp", "0.0.0.0", 22), ListenerStatus::Present);
        assert_eq!(status(&c, "tcp6", "::", 22), ListenerStatus::Present);
        // A specific bind on the source, a wildcard in the container: still served.
        assert_eq!(status(&c, "tcp", "198.51.100.10", 80), ListenerStatus::Present);
        // IPv4-mapped is the IPv4 address.
        assert_eq!(status(&c, "tcp6", "::ffff:198.51.100.10", 8443), ListenerStatus::Present);
        let foreign = c.iter().find(|c| c.port == 8081).unwrap();
        assert_eq!(foreign.status, ListenerStatus::Missing);
        assert_eq!(foreign.note.as_deref(), Some("198.51.100.50 is not an address of the container"));
        assert_eq!(foreign.program.as_deref(), Some("httpd"));
        let db = c.iter().find(|c| c.port == 3306).unwrap();
        assert_eq!((db.status, db.note.as_deref()), (ListenerStatus::Missing, None));
        assert_eq!(status(&c, "udp", "0.0.0.0", 68), ListenerStatus::Retired);
        let new = c.iter().find(|c| c.port == 25).unwrap();
        assert_eq!((new.status, new.program.as_deref()), (ListenerStatus::New, Some("exim4")));
        assert_eq!(c.len(), source.len() + 1);
        let ports: Vec<u16> = c.iter().map(|c| c.port).collect();
        assert_eq!(ports, [22, 22, 25, 80, 3306, 8081, 8443, 68]);
    }

    #[test]
    fn families_and_protocols_do_not_mix() {
        let addrs: Vec<IpAddr> = vec!["fd00:51::20".parse().unwrap()];
        // A source serving IPv6 on :: is not served by an IPv4-only wildcard.
        let c = compare(&[l("tcp6", "::", 443, "")], &[l("tcp", "0.0.0.0", 443, "")], &addrs);
        assert_eq!(status(&c, "tcp6", "::", 443), ListenerStatus::Missing);
        assert_eq!(status(&c, "tcp", "0.0.0.0", 443), ListenerStatus::New);
        // ... while an IPv4 wildcard on the source is served by a dual-stack ::.
        let c = compare(&[l("tcp", "0.0.0.0", 443, "")], &[l("tcp6", "::", 443, "")], &addrs);
        assert_eq!(status(&c, "tcp", "0.0.0.0", 443), ListenerStatus::Present);
        assert_eq!(c.len(), 1);
        // UDP is not TCP, another port is another service.
        let c = compare(
            &[l("udp", "0.0.0.0", 53, "")],
            &[l("tcp", "0.0.0.0", 53, ""), l("udp", "0.0.0.0", 54, "")],
            &addrs,
        );
        assert_eq!(status(&c, "udp", "0.0.0.0", 53), ListenerStatus::Missing);
        assert_eq!(c.iter().filter(|c| c.status == ListenerStatus::New).count(), 2);
    }
}
