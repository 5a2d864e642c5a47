//! The check's network: two namespaces of its own, so nothing reaches the real network and
//! the node's routing is never touched (the source may still run with the same addresses).
//!
//! * `<name>-ct`, the container's, whose only device is `venet0`;
//! * `<name>-node`, standing in for the node: the peer `p2c-peer`, addresses of its own on
//!   `lo` (the probes' source) and a host route (/32, /128) to every container address
//!   through the peer.
//!
//! For openvz and vz7, venet0 is a veth made to look like OpenVZ's venet: both ends share
//! one MAC address, no ARP, no multicast and no IPv6 link-local address on the container's
//! end (a NOARP device sends to its own address, which the peer accepts as its own). For vz9
//! it is what Virtuozzo 9 makes of `IP_ADDRESS` (libvzctl's `vz-netns_dev_add`, type
//! routed): an ordinary veth whose node end has proxy ARP on and `fe80::ffff:1:1`, the
//! guests' IPv6 gateway. venet0 is set up, as the node's own tools do; the guest's own
//! network config brings its addresses up.
//!
//! Both namespaces are created with `ip netns add` (the controller has no `unsafe`), so each
//! is a bind mount in `/run/netns` that [`Net::remove`] deletes; the veth pair goes with them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use p2c_common::migration::Target;

use super::BootError;
use super::cmd;
use super::tools::Tools;

/// The node-side end of the venet link, inside the node-side namespace.
pub(super) const PEER: &str = "p2c-peer";
/// The MAC address both ends of a venet-like link share.
const VENET_MAC: &str = "02:00:00:00:00:01";
/// Virtuozzo 9's IPv6 gateway for routed veths, on the node end.
pub(super) const ROUTED_GW6: &str = "fe80::ffff:1:1";
/// Virtuozzo 9's IPv4 gateway in its NetworkManager profile for routed veths.
pub(super) const ROUTED_GW4: &str = "169.254.0.1";
/// Candidate node-side addresses (documentation and unique-local ranges); the first that is
/// not a container address is taken.
const NODE_V4: &[&str] = &["203.0.113.254", "198.51.100.254", "192.0.2.254", "10.255.255.254"];
const NODE_V6: &[&str] = &["fd00:b007::1", "fd00:b007::2", "fd00:b007::3"];

pub(super) struct Net {
    ip: PathBuf,
    ct: String,
    node: String,
    /// Namespaces created so far (removed in reverse).
    created: Vec<String>,
    node_v4: Ipv4Addr,
    node_v6: Ipv6Addr,
}

fn pick<T: std::str::FromStr + Into<IpAddr> + Copy>(candidates: &[&str], taken: &[IpAddr]) -> Option<T> {
    candidates.iter().filter_map(|c| c.parse::<T>().ok()).find(|a| !taken.contains(&(*a).into()))
}

impl Net {
    /// Creates both namespaces and the link for `target`, with routes to `addresses`.
    pub async fn create(
        tools: &Tools,
        name: &str,
        target: Target,
        addresses: &[IpAddr],
    ) -> Result<Net, BootError> {
        let none_free = || BootError::Command {
            cmd: "choosing a node-side address".to_string(),
            status: "every candidate is a container address".to_string(),
            stderr: String::new(),
        };
        let mut net = Net {
            ip: tools.ip.clone(),
            ct: format!("{name}-ct"),
            node: format!("{name}-node"),
            created: Vec::new(),
            node_v4: pick(NODE_V4, addresses).ok_or_else(none_free)?,
            node_v6: pick(NODE_V6, addresses).ok_or_else(none_free)?,
        };
        // On error, dropping `net` removes whatever was created.
        net.setup(target, addresses).await?;
        tracing::debug!(ct = %net.ct, node = %net.node, %target, "boot check network ready");
        Ok(net)
    }

    async fn ip(&self, args: &[&str]) -> Result<cmd::Output, BootError> {
        cmd::run(&self.ip, args).await
    }

    async fn setup(&mut self, target: Target, addresses: &[IpAddr]) -> Result<(), BootError> {
        for ns in [self.ct.clone(), self.node.clone()] {
            self.ip(&["netns", "add", &ns]).await?;
            self.created.push(ns);
        }
        let (ct, node) = (self.ct.as_str(), self.node.as_str());
        self.ip(&["-n", node, "link", "add", PEER, "type", "veth", "peer", "name", "venet0", "netns", ct])
            .await?;
        self.ip(&["-n", node, "link", "set", "lo", "up"]).await?;
        self.ip(&["-n", node, "addr", "add", &format!("{}/32", self.node_v4), "dev", "lo"]).await?;
        self.ip(&["-n", node, "-6", "addr", "add", &format!("{}/128", self.node_v6), "dev", "lo"]).await?;
        if target.has_venet() {
            self.ip(&["-n", ct, "link", "set", "venet0", "addrgenmode", "none"]).await?;
            self.ip(&[
                "-n",
                ct,
                "link",
                "set",
                "venet0",
                "address",
                VENET_MAC,
                "arp",
                "off",
                "multicast",
                "off",
            ])
            .await?;
            self.ip(&[
                "-n",
                node,
                "link",
                "set",
                PEER,
                "address",
                VENET_MAC,
                "arp",
                "off",
                "multicast",
                "off",
            ])
            .await?;
        } else {
            let path = self.node_path();
            in_netns(&path, || std::fs::write(format!("/proc/sys/net/ipv4/conf/{PEER}/proxy_arp"), "1"))
                .await
                .and_then(|r| {
                    r.map_err(|source| BootError::Io { what: "turn on proxy ARP in", path, source })
                })?;
            self.ip(&["-n", node, "-6", "addr", "add", &format!("{ROUTED_GW6}/128"), "dev", PEER, "nodad"])
                .await?;
            // The IPv4 gateway libvzctl 8's NetworkManager profile names (IP4_ROUTED_GW): a
            // node answers for it by proxy ARP through its default route; this node side has
            // no default route, so it holds the address itself.
            self.ip(&["-n", node, "addr", "add", &format!("{ROUTED_GW4}/32"), "dev", "lo"]).await?;
        }
        self.ip(&["-n", node, "link", "set", PEER, "up"]).await?;
        for a in addresses {
            let (fam, host, src) = match a {
                IpAddr::V4(a) => ("-4", format!("{a}/32"), self.node_v4.to_string()),
                IpAddr::V6(a) => ("-6", format!("{a}/128"), self.node_v6.to_string()),
            };
            self.ip(&["-n", node, fam, "route", "add", &host, "dev", PEER, "src", &src]).await?;
        }
        // The node's tools bring venet0 up before the guest starts; the guest adds addresses.
        self.ip(&["-n", ct, "link", "set", "venet0", "up"]).await?;
        Ok(())
    }

    /// The container's namespace, for systemd-nspawn.
    pub fn ct_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.ct)
    }

    /// The node-side namespace, for the probes.
    pub fn node_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.node)
    }

    /// The node side's own addresses (the probes' source).
    pub fn node_addresses(&self) -> Vec<IpAddr> {
        vec![self.node_v4.into(), self.node_v6.into()]
    }

    /// The global addresses on the container's venet0 now.
    pub async fn guest_addresses(&self, tools: &Tools) -> Result<Vec<IpAddr>, BootError> {
        let out = cmd::run(&tools.ip, &["-n", &self.ct, "-o", "addr", "show", "dev", "venet0"]).await?;
        Ok(parse_addresses(&out.stdout))
    }

    /// Deletes both namespaces (the veth pair goes with them); what could not be removed.
    pub fn remove(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        while let Some(ns) = self.created.pop() {
            if let Err(e) = cmd::run_sync(&self.ip, &["netns", "del", &ns])
                && Path::new("/run/netns").join(&ns).exists()
            {
                problems.push(format!("cannot delete network namespace {ns}: {e}"));
            }
        }
        problems
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for p in self.remove() {
            tracing::error!(problem = %p, "boot check network left behind");
        }
    }
}

/// The addresses of `ip -o addr show` lines (`2: venet0 inet 198.51.100.10/32 ...`).
fn parse_addresses(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|t| *t == "inet" || *t == "inet6")?;
            let a = w.next()?;
            a.split('/').next()?.parse().ok()
        })
        .collect()
}

/// Runs `f` on a thread of its own that first enters the network namespace at `ns`, so the
/// sockets it opens and the `/proc/sys/net` files it writes are that namespace's.
///
/// setns(2) on a dedicated std thread, not a tokio worker or blocking-pool thread: the change
/// is per thread, and this thread runs nothing else and ends with `f`, so no other code ever
/// runs in that namespace. It keeps the probes inside the process (precise errors and
/// timeouts, nothing needed on the node like curl) without `unsafe` (nix's setns is safe).
pub(super) async fn in_netns<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BootError> {
    let path = ns.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread_path = path.clone();
    std::thread::Builder::new()
        .name("p2c-boot-netns".to_string())
        .spawn(move || {
            let entered = std::fs::File::open(&thread_path).and_then(|file| {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
            let _ = tx.send(entered.map(|()| f()));
        })
        .map_err(|source| BootError::Netns { path: path.clone(), source })?;
    match rx.await {
        Ok(r) => r.map_err(|source| BootError::Netns { path, source }),
        Err(_) => {
            Err(BootError::Netns { path, source: std::io::Error::other("the namespace thread panicked") })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_addresses_of_ip_o_addr() {
        let text = "2: venet0    inet 127.0.0.1/32 scope host venet0\\       valid_lft forever\n\
                    2: venet0    inet 198.51.100.10/32 brd 0.0.0.0 scope global venet0:0\\ valid_lft forever\n\
                    2: venet0    inet6 fd00:51::20/128 scope global \\       valid_lft forever\n";
        let a = parse_addresses(text);
        assert_eq!(
            a,
            ["127.0.0.1", "198.51.100.10", "fd00:51::20"].map(|s| s.parse::<IpAddr>().unwrap()).to_vec()
        );
    }

    #[test]
    fn node_addresses_avoid_the_containers() {
        let taken: Vec<IpAddr> = vec!["203.0.113.254".parse().unwrap()];
        assert_eq!(pick::<Ipv4Addr>(NODE_V4, &taken), Some(Ipv4Addr::new(198, 51, 100, 254)));
        assert_eq!(pick::<Ipv6Addr>(NODE_V6, &taken), "fd00:b007::1".parse().ok());
    }
}
