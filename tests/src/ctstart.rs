//! Starts a container root the way a container node would, close enough to prove that the
//! guest's rewritten network configuration brings every address up on `venet0`.
//!
//! - The node is a network namespace of its own (`p2c-node-<id>`), so nothing touches the
//!   host's network; it owns an address of its own on `lo` and a host route (/32, /128)
//!   for every container address through its end of the link.
//! - The container gets fresh network (`p2c-ct-<id>`), mount, UTS and PID namespaces; its
//!   PID 1 is a `sleep` chrooted into the root with `/proc` mounted inside.
//! - For legacy OpenVZ and Virtuozzo 7 ([`Link::Venet`]) `venet0` is a veth pair whose
//!   container end is named `venet0`, with ARP and multicast off and no IPv6 link-local
//!   address, like OpenVZ's venet (NOARP, point-to-point). Both ends share one MAC address:
//!   a NOARP device sends to its own address, which the peer then accepts as its own. (A
//!   veth keeps the BROADCAST flag, which userspace cannot clear; the guest's configs give
//!   broadcast 0.0.0.0.)
//! - For Virtuozzo 9 ([`Link::Routed`]) it is what libvzctl 8 makes of `IP_ADDRESS`: a
//!   routed veth named venet0, set up as its `vz-functions` `vzcreatepair` and
//!   `vz-netns_dev_add` `add_routed_ips` do: the container end up, the host end up with
//!   `proxy_arp=1` and `fe80::ffff:1:1/128`, and `ip route replace <ip> dev <host end>` for
//!   every address (no `src`, as `vzaddrouting` without `VE_ROUTE_SRC_DEV`). ARP stays on.
//!   The link-local address is added `nodad` so the test does not wait a second for DAD.
//! - Then the guest's own bring-up runs inside the container: `ifup -a` if the guest has
//!   `/etc/network/interfaces`, `systemd-networkd` if it has `.network` files, and for a
//!   guest with both `ifup -a` again after networkd (boot runs both, in no fixed order).
//!
//! [`RunningCt`] removes everything on drop: processes (the PID namespace dies with its
//! init), the mounts (private to the container's mount namespace), the veth pair and both
//! network namespaces.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::debian::run;

/// The MAC address both ends of the venet link share.
const VENET_MAC: &str = "02:00:00:00:00:01";
/// How long the guest's network bring-up may take.
const BRINGUP_TIMEOUT: Duration = Duration::from_secs(60);

/// What `venet0` is on the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// A venet device (legacy OpenVZ, Virtuozzo 7): emulated by a NOARP veth.
    Venet,
    /// Virtuozzo 9's routed veth named venet0.
    Routed,
}

impl Link {
    /// The link a container for `target` gets.
    pub fn of(target: p2c_common::migration::Target) -> Link {
        if target.has_venet() { Link::Venet } else { Link::Routed }
    }
}

/// A started container; dropped, it is gone.
pub struct RunningCt {
    id: String,
    node_ns: String,
    ct_ns: String,
    root: PathBuf,
    holder: Option<Child>,
    init_pid: Option<i32>,
    /// The node's own addresses, the source of its pings.
    pub node_v4: Ipv4Addr,
    pub node_v6: Ipv6Addr,
    /// What the guest's network bring-up printed.
    pub bringup_log: String,
    /// For a guest with ifupdown and systemd-networkd: venet0's global addresses right
    /// after the first `ifup -a`, before networkd ran (`ip -o addr`).
    pub venet0_after_ifupdown: Option<String>,
}

/// Starts the container at `root` with `addresses` routed to it from the node over a venet
/// link, and runs the guest's network bring-up.
pub fn start_container(root: &Path, addresses: &[IpAddr]) -> anyhow::Result<RunningCt> {
    start_container_on(root, addresses, Link::Venet)
}

/// [`start_container`] over `link`.
pub fn start_container_on(root: &Path, addresses: &[IpAddr], link: Link) -> anyhow::Result<RunningCt> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let id = format!("{}x{}", std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::Relaxed));
    let node_v4 = ["203.0.113.254", "198.51.100.254", "192.0.2.254"]
        .iter()
        .filter_map(|a| a.parse::<Ipv4Addr>().ok())
        .find(|a| !addresses.contains(&IpAddr::V4(*a)))
        .context("no free node address")?;
    let node_v6 = ["fd00:feed::1", "fd00:feed::2"]
        .iter()
        .filter_map(|a| a.parse::<Ipv6Addr>().ok())
        .find(|a| !addresses.contains(&IpAddr::V6(*a)))
        .context("no free node address")?;
    // From here on, dropping `ct` undoes whatever was set up.
    let mut ct = RunningCt {
        node_ns: format!("p2c-node-{id}"),
        ct_ns: format!("p2c-ct-{id}"),
        id,
        root: root.canonicalize().with_context(|| format!("container root {}", root.display()))?,
        holder: None,
        init_pid: None,
        node_v4,
        node_v6,
        bringup_log: String::new(),
        venet0_after_ifupdown: None,
    };
    match link {
        Link::Venet => ct.network(addresses)?,
        Link::Routed => ct.routed_network(addresses)?,
    }
    ct.start_init()?;
    ct.bring_up()?;
    Ok(ct)
}

impl RunningCt {
    fn node_if(&self) -> String {
        format!("vz{}", self.id)
    }

    /// The node side: namespaces, the venet link, the node's addresses and host routes.
    fn network(&self, addresses: &[IpAddr]) -> anyhow::Result<()> {
        let (node, ct, vz) = (self.node_ns.as_str(), self.ct_ns.as_str(), self.node_if());
        ip(&["netns", "add", node])?;
        ip(&["netns", "add", ct])?;
        ip(&["-n", node, "link", "add", &vz, "type", "veth", "peer", "name", "venet0", "netns", ct])?;
        ip(&["-n", ct, "link", "set", "venet0", "addrgenmode", "none"])?;
        ip(&["-n", ct, "link", "set", "venet0", "address", VENET_MAC, "arp", "off", "multicast", "off"])?;
        ip(&["-n", node, "link", "set", &vz, "address", VENET_MAC, "arp", "off", "multicast", "off", "up"])?;
        ip(&["-n", node, "link", "set", "lo", "up"])?;
        ip(&["-n", node, "addr", "add", &format!("{}/32", self.node_v4), "dev", "lo"])?;
        ip(&["-n", node, "-6", "addr", "add", &format!("{}/128", self.node_v6), "dev", "lo"])?;
        for a in addresses {
            let (fam, host, src) = match a {
                IpAddr::V4(a) => ("-4", format!("{a}/32"), self.node_v4.to_string()),
                IpAddr::V6(a) => ("-6", format!("{a}/128"), self.node_v6.to_string()),
            };
            ip(&["-n", node, fam, "route", "add", &host, "dev", &vz, "src", &src])?;
        }
        Ok(())
    }

    /// The node side of Virtuozzo 9's routed veth (see the module docs).
    fn routed_network(&self, addresses: &[IpAddr]) -> anyhow::Result<()> {
        let (node, ct, vz) = (self.node_ns.as_str(), self.ct_ns.as_str(), self.node_if());
        ip(&["netns", "add", node])?;
        ip(&["netns", "add", ct])?;
        ip(&["-n", node, "link", "add", &vz, "type", "veth", "peer", "name", "venet0", "netns", ct])?;
        ip(&["-n", ct, "link", "set", "venet0", "up"])?;
        ip(&["-n", node, "link", "set", &vz, "up"])?;
        run(Command::new("ip")
            .args(["netns", "exec", node, "sysctl", "-q", "-w"])
            .arg(format!("net.ipv4.conf.{vz}.proxy_arp=1")))?;
        ip(&["-n", node, "-6", "addr", "add", "fe80::ffff:1:1/128", "dev", &vz, "nodad"])?;
        ip(&["-n", node, "link", "set", "lo", "up"])?;
        ip(&["-n", node, "addr", "add", &format!("{}/32", self.node_v4), "dev", "lo"])?;
        ip(&["-n", node, "-6", "addr", "add", &format!("{}/128", self.node_v6), "dev", "lo"])?;
        for a in addresses {
            let fam = if a.is_ipv4() { "-4" } else { "-6" };
            ip(&["-n", node, fam, "route", "replace", &a.to_string(), "dev", &vz])?;
        }
        Ok(())
    }

    /// The container's PID 1: fresh mount, UTS and PID namespaces in the container's
    /// network namespace, chrooted into the root, `/proc` mounted inside.
    fn start_init(&mut self) -> anyhow::Result<()> {
        let mut proc_dir = self.root.clone().into_os_string();
        proc_dir.push("/proc");
        let mut mount_proc = std::ffi::OsString::from("--mount-proc=");
        mount_proc.push(&proc_dir);
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ct_ns))
            .args(["--", "unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child"])
            .arg(mount_proc)
            .arg("chroot")
            .arg(&self.root)
            .args(["/bin/sleep", "infinity"])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the container's init with nsenter/unshare")?;
        let holder = child.id();
        self.holder = Some(child);
        // unshare forks the namespace's PID 1; wait until it runs the guest's sleep.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let kids =
                std::fs::read_to_string(format!("/proc/{holder}/task/{holder}/children")).unwrap_or_default();
            if let Some(pid) = kids.split_whitespace().next().and_then(|p| p.parse().ok()) {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "sleep" {
                    self.init_pid = Some(pid);
                    return Ok(());
                }
            }
            let exited = match self.holder.as_mut() {
                Some(c) => c.try_wait()?,
                None => None,
            };
            if let Some(status) = exited {
                bail!(
                    "the container's init exited at once ({status}); is {} a root tree?",
                    self.root.display()
                );
            }
            if Instant::now() > deadline {
                bail!("the container's init did not start within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `script` with `/bin/sh` inside the container (all its namespaces and root),
    /// bounded in time; its output, or an error with it.
    pub fn exec(&self, script: &str) -> anyhow::Result<String> {
        let pid = self.init_pid.context("container not started")?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={pid}"))
            .args(["--mount", "--uts", "--net", "--pid", "--root", "--wd", "--"])
            .args(["/bin/sh", "-c", script])
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C");
        run_bounded(&mut cmd, BRINGUP_TIMEOUT)
    }

    /// The guest's own network bring-up, for the stacks its config uses.
    fn bring_up(&mut self) -> anyhow::Result<()> {
        let prepare = "set -e\n\
            grep -q ' /run ' /proc/mounts || mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run\n\
            grep -q ' /sys ' /proc/mounts || mount -t sysfs -o ro sysfs /sys\n\
            mkdir -p /run/network /run/lock /run/systemd/netif\n\
            hostname p2c-ct\n";
        let networkd_files = std::fs::read_dir(self.root.join("etc/systemd/network"))
            .map(|d| d.filter_map(Result::ok).any(|e| e.file_name().to_string_lossy().ends_with(".network")))
            .unwrap_or(false);
        let ifupdown = self.root.join("etc/network/interfaces").is_file();
        if !ifupdown && !networkd_files {
            bail!("{}: no ifupdown or systemd-networkd configuration to bring up", self.root.display())
        }
        self.exec(prepare)?;
        let mut log = String::new();
        if ifupdown {
            log.push_str(&self.exec("echo '# ifup -a'; ifup -a 2>&1\n")?);
            if networkd_files {
                self.venet0_after_ifupdown =
                    Some(self.ct_ip(&["-o", "addr", "show", "dev", "venet0", "scope", "global"]));
            }
        }
        if networkd_files {
            // networkd stays in the background (it dies with the container's init).
            log.push_str(&self.exec(
                "set -e\n\
                 chown systemd-network: /run/systemd/netif 2>/dev/null || true\n\
                 /lib/systemd/systemd-networkd >/run/networkd.log 2>&1 &\n\
                 for i in $(seq 100); do\n\
                   ip -o addr show dev venet0 scope global | grep -q . && ip route | grep -q default && break\n\
                   sleep 0.1\n\
                 done\n\
                 sleep 0.5; echo '# systemd-networkd'; cat /run/networkd.log\n",
            )?);
            if ifupdown {
                log.push_str(&self.exec("echo '# ifup -a after networkd'; ifup -a 2>&1\n")?);
            }
        }
        log.push_str(&self.exec("ip addr show dev venet0\n")?);
        self.bringup_log = log;
        Ok(())
    }

    /// Whether `addr` answers a ping sent from the node (three tries).
    pub fn ping_from_node(&self, addr: IpAddr) -> bool {
        (0..3).any(|_| {
            Command::new("ip")
                .args(["netns", "exec", &self.node_ns, "ping", "-n", "-c", "1", "-W", "2"])
                .arg(addr.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    }

    /// `ip <args>` in the container's network namespace, for diagnostics.
    pub fn ct_ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.ct_ns.as_str()];
        all.extend_from_slice(args);
        ip(&all).unwrap_or_else(|e| e.to_string())
    }
}

impl Drop for RunningCt {
    fn drop(&mut self) {
        // Killing the namespace's init kills every process in it; its mount namespace
        // (with /proc, /run and /sys mounted inside) goes with the last of them.
        if let Some(pid) = self.init_pid.and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        if let Some(mut c) = self.holder.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(pid) = self.init_pid {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // The veth pair goes with the namespaces.
        let _ = ip(&["netns", "del", &self.ct_ns]);
        let _ = ip(&["netns", "del", &self.node_ns]);
    }
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(args))
}

/// Runs a command with a time limit; its output, or an error with it.
fn run_bounded(cmd: &mut Command, limit: Duration) -> anyhow::Result<String> {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.join().unwrap_or_default()),
        String::from_utf8_lossy(&err.join().unwrap_or_default())
    );
    match status {
        Some(s) if s.success() => Ok(text),
        Some(s) => bail!("{cmd:?} failed ({s}):\n{text}"),
        None => bail!("{cmd:?} did not finish within {limit:?}:\n{text}"),
    }
}
