//! Probes from the node side: a TCP connect to every present TCP listener on every former
//! address it serves, and an HTTP GET where the source served HTTP (ports 80, 8000, 8008,
//! 8080, 8888, or an HTTP server's program). They run on threads inside the node-side
//! namespace ([`super::net::in_netns`]), so they take the routes a client's packets take
//! through the node.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use p2c_common::sync::Locked;
use serde::{Deserialize, Serialize};

use super::compare::{ListenerCheck, ListenerStatus};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Probes at once.
const WORKERS: usize = 8;
const HTTP_PORTS: &[u16] = &[80, 8000, 8008, 8080, 8888];
const HTTP_PROGRAMS: &[&str] =
    &["nginx", "apache2", "httpd", "lighttpd", "caddy", "h2o", "varnishd", "traefik", "haproxy"];

/// What one probe of one address found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub address: IpAddr,
    pub tcp: TcpOutcome,
    /// Only where the source served HTTP.
    pub http: Option<HttpOutcome>,
    /// How long the probe took.
    pub millis: u64,
}

impl ProbeResult {
    /// The listener answered as the source's did (TCP, and HTTP where it was asked).
    pub fn answered(&self) -> bool {
        self.tcp == TcpOutcome::Connected && !matches!(self.http, Some(HttpOutcome::Error { .. }))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum TcpOutcome {
    Connected,
    Refused,
    TimedOut,
    Error { message: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum HttpOutcome {
    /// An HTTP response with this status came back (any status: the server answers).
    Response {
        status: u16,
    },
    Error {
        message: String,
    },
}

/// Whether the source served HTTP on this listener.
fn serves_http(c: &ListenerCheck) -> bool {
    let program = |p: &Option<String>| p.as_deref().is_some_and(|p| HTTP_PROGRAMS.contains(&p));
    HTTP_PORTS.contains(&c.port) || program(&c.program) || program(&c.container_program)
}

/// The addresses to probe each listener on: `(index in checks, address, HTTP too)`.
pub(super) fn plan(checks: &[ListenerCheck], addresses: &[IpAddr]) -> Vec<(usize, SocketAddr, bool)> {
    let mut out = Vec::new();
    for (i, c) in checks.iter().enumerate() {
        if c.status != ListenerStatus::Present || !c.is_tcp() {
            continue;
        }
        let Some(ip) = c.ip() else { continue };
        let targets: Vec<IpAddr> = if ip.is_unspecified() {
            // `::` is dual-stack: it serves the IPv4 addresses too, unless an IPv4 wildcard
            // of the same port is probed for them.
            let v4_wild = checks.iter().any(|o| {
                o.status == ListenerStatus::Present
                    && o.is_tcp()
                    && o.port == c.port
                    && o.ip().is_some_and(|a| a.is_unspecified() && a.is_ipv4())
            });
            addresses
                .iter()
                .copied()
                .filter(|a| a.is_ipv6() == ip.is_ipv6() || (ip.is_ipv6() && !v4_wild))
                .collect()
        } else if addresses.contains(&ip) {
            vec![ip]
        } else {
            Vec::new()
        };
        let http = serves_http(c);
        out.extend(targets.into_iter().map(|a| (i, SocketAddr::new(a, c.port), http)));
    }
    out
}

/// Probes every present TCP listener from the node-side namespace at `node_ns`, filling in
/// `probes`. A namespace that cannot be entered leaves them empty (and says so in the log).
pub(super) async fn run(node_ns: &Path, checks: &mut [ListenerCheck], addresses: &[IpAddr]) {
    let jobs = plan(checks, addresses);
    if jobs.is_empty() {
        return;
    }
    let work = jobs.clone();
    let done = super::net::in_netns(node_ns, move || probe_all(work)).await;
    match done {
        Ok(results) => {
            for ((i, _, _), r) in jobs.iter().zip(results) {
                checks[*i].probes.push(r);
            }
        }
        Err(e) => tracing::warn!(error = %e, "boot check probes did not run"),
    }
}

/// Runs the jobs on up to [`WORKERS`] threads (spawned here, so inside this thread's
/// namespace); results in job order.
fn probe_all(jobs: Vec<(usize, SocketAddr, bool)>) -> Vec<ProbeResult> {
    let results: Vec<Mutex<Option<ProbeResult>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
    let next = Mutex::new(0usize);
    std::thread::scope(|s| {
        for _ in 0..WORKERS.min(jobs.len()) {
            s.spawn(|| {
                loop {
                    let k = {
                        let mut n = next.locked();
                        let k = *n;
                        *n += 1;
                        k
                    };
                    let Some((_, addr, http)) = jobs.get(k) else { return };
                    *results[k].locked() = Some(probe(*addr, *http));
                }
            });
        }
    });
    results
        .into_iter()
        .zip(&jobs)
        .map(|(r, (_, addr, _))| {
            r.into_inner().ok().flatten().unwrap_or(ProbeResult {
                address: addr.ip(),
                tcp: TcpOutcome::Error { message: "the probe did not run".to_string() },
                http: None,
                millis: 0,
            })
        })
        .collect()
}

/// Connects to `addr` (and asks for `/` over HTTP when `http`).
pub(super) fn probe(addr: SocketAddr, http: bool) -> ProbeResult {
    let started = Instant::now();
    let (tcp, http) = match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
        Ok(stream) => (TcpOutcome::Connected, http.then(|| http_get(stream, addr))),
        Err(e) => {
            let tcp = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => TcpOutcome::Refused,
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => TcpOutcome::TimedOut,
                _ => TcpOutcome::Error { message: e.to_string() },
            };
            (tcp, http.then(|| HttpOutcome::Error { message: "no connection".to_string() }))
        }
    };
    let millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    ProbeResult { address: addr.ip(), tcp, http, millis }
}

fn http_get(mut stream: TcpStream, addr: SocketAddr) -> HttpOutcome {
    let host = match addr.ip() {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    let request = format!(
        "GET / HTTP/1.0\r\nHost: {host}\r\nUser-Agent: p2c-boot-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    let sent = stream
        .set_read_timeout(Some(HTTP_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(HTTP_TIMEOUT)))
        .and_then(|()| stream.write_all(request.as_bytes()));
    if let Err(e) = sent {
        return HttpOutcome::Error { message: format!("sending the request: {e}") };
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return HttpOutcome::Error { message: format!("reading the response: {e}") },
        }
    }
    match status_of(&buf) {
        Some(status) => HttpOutcome::Response { status },
        None if buf.is_empty() => {
            HttpOutcome::Error { message: "the connection closed without a response".into() }
        }
        None => HttpOutcome::Error {
            message: format!(
                "not an HTTP response: {:?}",
                String::from_utf8_lossy(&buf[..buf.len().min(60)])
            ),
        },
    }
}

/// The status of an HTTP status line (`HTTP/1.1 200 OK`).
fn status_of(response: &[u8]) -> Option<u16> {
    let line = response.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_whitespace();
    words.next().filter(|v| v.starts_with("HTTP/"))?;
    words.next()?.parse().ok().filter(|s| (100..600).contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(proto: &str, address: &str, port: u16, status: ListenerStatus, program: &str) -> ListenerCheck {
        ListenerCheck {
            proto: proto.into(),
            address: address.into(),
            port,
            program: (!program.is_empty()).then(|| program.to_string()),
            container_program: None,
            status,
            note: None,
            probes: Vec::new(),
        }
    }

    #[test]
    fn plans_every_present_tcp_listener_on_every_address_it_serves() {
        let addrs: Vec<IpAddr> =
            ["198.51.100.10", "198.51.100.11", "fd00:51::20"].iter().map(|a| a.parse().unwrap()).collect();
        let checks = [
            check("tcp", "0.0.0.0", 22, ListenerStatus::Present, "sshd"),
            check("tcp6", "::", 22, ListenerStatus::Present, "sshd"),
            check("tcp6", "::", 80, ListenerStatus::Present, ""),
            check("tcp", "198.51.100.11", 8443, ListenerStatus::Present, "nginx"),
            check("tcp", "127.0.0.1", 3306, ListenerStatus::Present, ""),
            check("tcp", "198.51.100.50", 81, ListenerStatus::Missing, ""),
            check("udp", "0.0.0.0", 53, ListenerStatus::Present, ""),
        ];
        let p: Vec<(usize, String, bool)> =
            plan(&checks, &addrs).into_iter().map(|(i, a, h)| (i, a.to_string(), h)).collect();
        let want = [
            (0, "198.51.100.10:22", false),
            (0, "198.51.100.11:22", false),
            (1, "[fd00:51::20]:22", false),
            // `::` alone on port 80 serves IPv4 as well.
            (2, "198.51.100.10:80", true),
            (2, "198.51.100.11:80", true),
            (2, "[fd00:51::20]:80", true),
            (3, "198.51.100.11:8443", true),
        ];
        let want: Vec<(usize, String, bool)> = want.iter().map(|(i, a, h)| (*i, a.to_string(), *h)).collect();
        assert_eq!(p, want);
    }

    #[test]
    fn probes_a_real_listener_and_a_closed_port() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            let mut req = [0u8; 512];
            let n = s.read(&mut req).unwrap();
            assert!(String::from_utf8_lossy(&req[..n]).starts_with("GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n"));
            s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").unwrap();
        });
        let r = probe(addr, true);
        t.join().unwrap();
        assert_eq!(r.tcp, TcpOutcome::Connected);
        assert_eq!(r.http, Some(HttpOutcome::Response { status: 404 }));
        assert!(r.answered());
        // Nothing listens there any more.
        let r = probe(addr, true);
        assert_eq!(r.tcp, TcpOutcome::Refused);
        assert!(!r.answered());
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.0 200 OK\r\n"), Some(200));
        assert_eq!(status_of(b"SSH-2.0-OpenSSH_9.2\r\n"), None);
        assert_eq!(status_of(b"HTTP/1.1 999 x\r\n"), None);
    }
}
