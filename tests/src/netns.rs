//! Network namespaces standing in for separate source hosts.
//!
//! Each [`NetHost`] is an `ip netns` with one veth pair: the end inside the namespace is called
//! `eth0` and carries the host's MAC and addresses; the other end stays in the node's (root)
//! namespace with one node address per host subnet. Connected routes cover both directions and
//! the host gets a default route through the node. The node does not forward between hosts
//! (forwarding is a machine-wide setting the tests leave alone), so hosts reach the node, not
//! each other.

use std::ffi::OsStr;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::util::{run, run_cmd, unique_name};

/// An address with its prefix length, e.g. `(10.1.2.3, 24)` or `(fd00::2, 64)`.
pub type HostAddr = (IpAddr, u8);

/// Name of the host's interface inside its namespace.
pub const HOST_IF: &str = "eth0";

/// One source host: a network namespace joined to the node by a veth pair.
/// Dropping it kills everything running in the namespace and removes namespace and link.
#[derive(Debug)]
pub struct NetHost {
    /// Name of the network namespace; also the name of the node-side veth end.
    name: String,
    mac: String,
    addrs: Vec<HostAddr>,
    /// Addresses the node end of the veth carries, one per host subnet.
    node_addrs: Vec<HostAddr>,
    /// Host addresses without a subnet to share (/32, /128), routed to the veth on the node.
    host_routes: Vec<HostAddr>,
    children: Mutex<Vec<Child>>,
}

impl NetHost {
    /// Creates a namespace named after `name` (made unique and short), a veth pair, gives the
    /// namespace end `mac` (a locally administered one when `None`) and `addrs` (IPv6 without
    /// duplicate address detection), and configures the node end and the routes.
    ///
    /// Each family in `addrs` needs at least one address with a real subnet (IPv4 shorter than
    /// /31, IPv6 shorter than /127): the node takes a free address in it and the host routes
    /// through that. Subnets already present on the node are refused, so hosts cannot collide.
    pub fn new(name: &str, addrs: &[HostAddr], mac: Option<&str>) -> anyhow::Result<Self> {
        let name = unique_name(name);
        let mac = mac.map_or_else(|| local_mac(&name), str::to_owned);
        let (node_addrs, host_routes) = plan_node_side(addrs)?;
        for subnet in &node_addrs {
            if node_uses_subnet(*subnet)? {
                bail!(
                    "subnet {}/{} is already in use on the node; pick another (see netns::unique_addrs)",
                    subnet.0,
                    subnet.1
                );
            }
        }
        // The pid in the name is unique among live processes, so anything left under this name
        // belongs to a test process that died without cleaning up.
        let _ = run("ip", &["netns", "del", &name]);
        let _ = run("ip", &["link", "del", &name]);

        run("ip", &["netns", "add", &name])?;
        // From here on, Drop undoes whatever part of the set-up succeeded.
        let host = Self {
            name,
            mac,
            addrs: addrs.to_vec(),
            node_addrs,
            host_routes,
            children: Mutex::new(Vec::new()),
        };
        let n = host.name.as_str();
        run("ip", &["link", "add", n, "type", "veth", "peer", "name", HOST_IF, "netns", n])?;
        host.ip_in(&["link", "set", HOST_IF, "address", &host.mac])?;
        host.ip_in(&["link", "set", "lo", "up"])?;
        host.configure().with_context(|| format!("configuring network namespace {n}"))?;
        Ok(host)
    }

    /// Name of the network namespace (for `ip netns exec` and friends).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Name of the veth end in the node's namespace.
    pub fn node_interface(&self) -> &str {
        &self.name
    }

    /// The MAC address of the host's `eth0`.
    pub fn mac(&self) -> &str {
        &self.mac
    }

    /// The host's addresses, as given to [`NetHost::new`].
    pub fn addrs(&self) -> &[HostAddr] {
        &self.addrs
    }

    /// The node's IPv4 address on this host's link: what an agent in the host dials.
    pub fn node_v4(&self) -> Option<Ipv4Addr> {
        self.node_addrs.iter().find_map(|(ip, _)| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
    }

    /// The node's IPv6 address on this host's link.
    pub fn node_v6(&self) -> Option<Ipv6Addr> {
        self.node_addrs.iter().find_map(|(ip, _)| match ip {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        })
    }

    /// A command that runs `program` inside the namespace (through `ip netns exec`). Processes
    /// started from it are killed when the host is dropped.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `args` (program first) inside the namespace and returns its stdout; a non-zero exit
    /// is an error carrying stderr.
    pub fn exec<S: AsRef<OsStr>>(&self, args: &[S]) -> anyhow::Result<String> {
        run_cmd(&mut self.argv(args)?)
    }

    /// Runs `args` inside the namespace and returns its output whatever the exit status.
    pub fn output<S: AsRef<OsStr>>(&self, args: &[S]) -> anyhow::Result<Output> {
        let mut cmd = self.argv(args)?;
        cmd.stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot start a command in netns {}", self.name))
    }

    /// Starts `args` inside the namespace in the background, in a process group of its own,
    /// and returns its pid. The group is killed when the host is dropped.
    pub fn spawn<S: AsRef<OsStr>>(&self, args: &[S]) -> anyhow::Result<u32> {
        use std::os::unix::process::CommandExt;
        let child = self
            .argv(args)?
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start a command in netns {}", self.name))?;
        let pid = child.id();
        self.children.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(child);
        Ok(pid)
    }

    /// Runs `f` on a new thread that has joined the namespace, so sockets it opens (e.g. an
    /// in-process agent on its own tokio runtime) belong to this host. Threads it spawns
    /// inherit the namespace. Fails before running `f` if the namespace cannot be joined.
    pub fn thread<T, F>(&self, f: F) -> anyhow::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let path = format!("/run/netns/{}", self.name);
        let ns = File::open(&path).with_context(|| format!("cannot open {path}"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(format!("netns-{}", self.name))
            .spawn(move || {
                // SAFETY: `ns` is an open namespace file descriptor owned by this closure for
                // the duration of the call; setns only changes this thread's namespace.
                let rc = unsafe { nix::libc::setns(ns.as_raw_fd(), nix::libc::CLONE_NEWNET) };
                let joined = if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
                let failed = joined.is_err();
                let _ = tx.send(joined);
                if failed {
                    // Never run `f` in the wrong namespace; `thread` reports the error. Unwinding
                    // without the panic hook keeps the test output clean.
                    std::panic::resume_unwind(Box::new(()));
                }
                f()
            })
            .context("cannot spawn a thread")?;
        match rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(e)) => bail!("cannot join netns {}: {e}", self.name),
            Err(_) => bail!("the thread for netns {} died before joining it", self.name),
        }
    }

    /// Takes the link down (node end, admin down): the host loses carrier and nothing passes.
    pub fn link_down(&self) -> anyhow::Result<()> {
        run("ip", &["link", "set", &self.name, "down"]).map(drop)
    }

    /// Brings the link back and restores what taking it down removed on the node end (IPv6
    /// addresses, routes).
    pub fn link_up(&self) -> anyhow::Result<()> {
        self.configure()
    }

    /// True when one ping from inside the host to `addr` is answered within a second.
    pub fn can_reach(&self, addr: IpAddr) -> bool {
        self.output(&ping_args(addr)).is_ok_and(|out| out.status.success())
    }

    fn argv<S: AsRef<OsStr>>(&self, args: &[S]) -> anyhow::Result<Command> {
        let Some((program, rest)) = args.split_first() else {
            bail!("no command given to run in netns {}", self.name);
        };
        let mut cmd = self.command(program);
        cmd.args(rest);
        Ok(cmd)
    }

    /// `ip -n <netns> ...`
    fn ip_in(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name]).args(args);
        run_cmd(&mut cmd)
    }

    /// Idempotent: addresses, link state and routes on both ends.
    fn configure(&self) -> anyhow::Result<()> {
        let n = self.name.as_str();
        for (ip, prefix) in &self.addrs {
            let mut args = vec!["addr", "replace"];
            let cidr = format!("{ip}/{prefix}");
            args.extend([cidr.as_str(), "dev", HOST_IF]);
            if ip.is_ipv6() {
                args.push("nodad");
            }
            self.ip_in(&args)?;
        }
        self.ip_in(&["link", "set", HOST_IF, "up"])?;
        for (ip, prefix) in &self.node_addrs {
            let cidr = format!("{ip}/{prefix}");
            let mut args = vec!["addr", "replace", cidr.as_str(), "dev", n];
            if ip.is_ipv6() {
                args.push("nodad");
            }
            run("ip", &args)?;
        }
        run("ip", &["link", "set", n, "up"])?;
        for (ip, prefix) in &self.host_routes {
            run("ip", &["route", "replace", &format!("{ip}/{prefix}"), "dev", n])?;
        }
        for gw in [self.node_v4().map(IpAddr::V4), self.node_v6().map(IpAddr::V6)].into_iter().flatten() {
            let family = if gw.is_ipv6() { "-6" } else { "-4" };
            self.ip_in(&[family, "route", "replace", "default", "via", &gw.to_string()])?;
        }
        Ok(())
    }
}

impl Drop for NetHost {
    fn drop(&mut self) {
        let children =
            std::mem::take(self.children.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner()));
        for mut child in children {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Whatever else runs in the namespace (started through `command`, or children that left
        // the group), but never this test process itself.
        if let Ok(pids) = run("ip", &["netns", "pids", &self.name]) {
            let me = std::process::id().to_string();
            let others = pids.split_whitespace().filter(|pid| *pid != me);
            for pid in others.filter_map(|pid| pid.parse().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("warning: cannot delete netns {}: {e:#}", self.name);
        }
        // Usually gone with the namespace already.
        let _ = run("ip", &["link", "del", &self.name]);
    }
}

/// Arguments for one ping with a one-second deadline (iputils picks the family from `addr`).
pub fn ping_args(addr: IpAddr) -> [String; 6] {
    ["ping".into(), "-n".into(), "-c1".into(), "-W1".into(), "-q".into(), addr.to_string()]
}

/// True when one ping from the node to `addr` is answered within a second.
pub fn node_can_reach(addr: IpAddr) -> bool {
    Command::new("ping")
        .args(&ping_args(addr)[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One IPv4 /24 and one IPv6 /64 host address in test subnets no other host on the node uses
/// (10.x.y.2/24 and fd70:2c00:xxxx::2/64), for tests that need a host but no particular address.
pub fn unique_addrs() -> anyhow::Result<[HostAddr; 2]> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    for _ in 0..64 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let seed = blake3::hash(format!("{}:{n}", std::process::id()).as_bytes());
        let [a, b, ..] = *seed.as_bytes();
        let v4: HostAddr = (Ipv4Addr::new(10, a, b, 2).into(), 24);
        let v6: HostAddr =
            (Ipv6Addr::new(0xfd70, 0x2c00, u16::from_be_bytes([a, b]), 0, 0, 0, 0, 2).into(), 64);
        if !node_uses_subnet(v4)? && !node_uses_subnet(v6)? {
            return Ok([v4, v6]);
        }
    }
    bail!("no free test subnet found in 64 tries")
}

/// A locally administered unicast MAC derived from `seed`.
fn local_mac(seed: &str) -> String {
    let h = blake3::hash(seed.as_bytes());
    let b = h.as_bytes();
    format!("02:70:2c:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

/// An address as (value, bit width) so both families share the arithmetic.
fn bits(ip: IpAddr) -> (u128, u32) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

fn from_bits(value: u128, like: IpAddr) -> IpAddr {
    match like {
        // Truncation is intended: the value came from an IPv4 address and stays below 2^32.
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(value as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

/// The host part mask of a `prefix` in a `width`-bit address.
fn host_mask(prefix: u8, width: u32) -> u128 {
    let host_bits = width.saturating_sub(u32::from(prefix));
    1u128.checked_shl(host_bits).map_or(u128::MAX, |v| v - 1)
}

/// True when the two subnets share any address.
fn overlaps(a: HostAddr, b: HostAddr) -> bool {
    let ((va, wa), (vb, wb)) = (bits(a.0), bits(b.0));
    if wa != wb {
        return false;
    }
    let mask = !host_mask(a.1.min(b.1), wa);
    va & mask == vb & mask
}

/// For each host subnet, the node's address in it (the first free one), and the host addresses
/// that have no subnet and need a route of their own.
fn plan_node_side(addrs: &[HostAddr]) -> anyhow::Result<(Vec<HostAddr>, Vec<HostAddr>)> {
    let mut node = Vec::<HostAddr>::new();
    let mut routes = Vec::new();
    for &(ip, prefix) in addrs {
        let (value, width) = bits(ip);
        if u32::from(prefix) > width {
            bail!("bad prefix /{prefix} for {ip}");
        }
        if u32::from(prefix) + 1 >= width {
            routes.push((ip, prefix));
            continue;
        }
        if node.iter().any(|n| overlaps(*n, (ip, prefix))) {
            continue;
        }
        let hosts = host_mask(prefix, width);
        let network = value & !hosts;
        let last = if ip.is_ipv4() { hosts - 1 } else { hosts };
        let free = (1..=last)
            .map(|offset| from_bits(network | offset, ip))
            .find(|candidate| addrs.iter().all(|(a, _)| a != candidate))
            .with_context(|| format!("no free address for the node in {ip}/{prefix}"))?;
        node.push((free, prefix));
    }
    for v6 in [false, true] {
        let has_family = addrs.iter().any(|(ip, _)| ip.is_ipv6() == v6);
        if has_family && !node.iter().any(|(ip, _)| ip.is_ipv6() == v6) {
            bail!(
                "the {} addresses need at least one with a subnet the node can share",
                if v6 { "IPv6" } else { "IPv4" }
            );
        }
    }
    Ok((node, routes))
}

/// True when an address or route on the node overlaps `subnet`.
fn node_uses_subnet(subnet: HostAddr) -> anyhow::Result<bool> {
    let family = if subnet.0.is_ipv6() { "-6" } else { "-4" };
    let addrs: serde_json::Value = serde_json::from_str(&run("ip", &["-j", family, "addr"])?)?;
    let routes: serde_json::Value = serde_json::from_str(&run("ip", &["-j", family, "route"])?)?;
    let in_use = addrs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|link| link.get("addr_info")?.as_array())
        .flatten()
        .filter_map(|a| {
            let ip = a.get("local")?.as_str()?.parse().ok()?;
            let prefix = u8::try_from(a.get("prefixlen")?.as_u64()?).ok()?;
            Some((ip, prefix))
        })
        .chain(routes.as_array().into_iter().flatten().filter_map(|r| parse_cidr(r.get("dst")?.as_str()?)))
        .any(|used| overlaps(used, subnet));
    Ok(in_use)
}

/// `"10.0.0.0/8"` or `"10.0.0.1"`; `None` for `"default"` and other words.
fn parse_cidr(s: &str) -> Option<HostAddr> {
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => (ip.parse::<IpAddr>().ok()?, p.parse().ok()?),
        None => {
            let ip = s.parse::<IpAddr>().ok()?;
            (ip, if ip.is_ipv4() { 32 } else { 128 })
        }
    };
    Some((ip, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> HostAddr {
        parse_cidr(s).unwrap()
    }

    #[test]
    fn node_takes_first_free_address_per_subnet() {
        let (node, routes) =
            plan_node_side(&[a("10.9.8.1/24"), a("10.9.8.7/24"), a("198.51.100.9/32"), a("fd70::2/64")])
                .unwrap();
        assert_eq!(node, vec![a("10.9.8.2/24"), a("fd70::1/64")]);
        assert_eq!(routes, vec![a("198.51.100.9/32")]);
    }

    #[test]
    fn family_without_subnet_is_refused() {
        assert!(plan_node_side(&[a("10.9.8.1/24"), a("fd70::2/128")]).is_err());
    }

    #[test]
    fn overlap_uses_the_shorter_prefix() {
        assert!(overlaps(a("10.0.0.0/8"), a("10.9.8.2/24")));
        assert!(!overlaps(a("10.9.7.0/24"), a("10.9.8.2/24")));
        assert!(!overlaps(a("10.9.8.0/24"), a("fd70::/16")));
        assert!(overlaps(a("::/0"), a("fd70::1/128")));
    }
}
