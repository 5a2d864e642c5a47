//! The rest of the server and the node: `kernel-modules`, `nested-containers`,
//! `windows-version`, `skipped-entries`, `partial-retry`, `node-target`, `node-boot-check`.

use p2c_common::findings::{Finding, Severity, codes};
use p2c_common::inventory::OsFamily;
use p2c_common::units::human_bytes;
use serde_json::json;

use super::{Ctx, NodeOs, finding};

/// Module name prefixes for kernel features a container can use when the node loads the
/// module and allows it (netfilter, tunnels, network and fuse file systems...). Every
/// other module is taken for a hardware driver, which a container does not need.
const FEATURE_MODULES: &[&str] = &[
    "ip_tables",
    "ip6_tables",
    "iptable_",
    "ip6table_",
    "nf_",
    "nft_",
    "nfnetlink",
    "xt_",
    "x_tables",
    "ipt_",
    "ip6t_",
    "ebt",
    "arp_tables",
    "arptable",
    "ip_set",
    "ip_vs",
    "tun",
    "tap",
    "fuse",
    "nfs",
    "lockd",
    "sunrpc",
    "rpcsec",
    "cifs",
    "bridge",
    "br_netfilter",
    "stp",
    "llc",
    "8021q",
    "bonding",
    "veth",
    "macvlan",
    "ipvlan",
    "vxlan",
    "geneve",
    "ip_gre",
    "gre",
    "ipip",
    "sit",
    "wireguard",
    "openvswitch",
    "overlay",
    "loop",
    "dm_",
    "drbd",
    "zfs",
    "kvm",
    "vhost",
    "sch_",
    "cls_",
    "act_",
    "binfmt_misc",
    "ppp",
    "l2tp",
    "pptp",
    "ipv6",
    "autofs",
    "quota_",
    "iscsi",
    "xfrm",
    "af_key",
    "esp4",
    "esp6",
    "ah4",
    "ah6",
    "nbd",
    "rbd",
    "ceph",
    "squashfs",
    "isofs",
    "udf",
];

fn is_feature(module: &str) -> bool {
    let m = module.replace('-', "_");
    FEATURE_MODULES.iter().any(|p| m.starts_with(p))
}

pub(super) fn kernel_modules(cx: &Ctx<'_>, out: &mut Vec<Finding>) {
    let mods = &cx.inv.kernel_modules;
    if mods.is_empty() {
        return;
    }
    let (features, drivers): (Vec<&String>, Vec<&String>) = mods.iter().partition(|m| is_feature(m));
    let join = |v: &[&String]| v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
    let mut evidence = Vec::new();
    if !features.is_empty() {
        evidence.push(format!("the node must provide: {}", join(&features)));
    }
    if !drivers.is_empty() {
        evidence.push(format!("hardware drivers, not needed in a container: {}", join(&drivers)));
    }
    out.push(finding(
        codes::KERNEL_MODULES,
        if features.is_empty() { Severity::Info } else { Severity::Warning },
        format!("the guest loads {} kernel module(s); a container cannot load any", mods.len()),
        evidence,
        "the guest's module loading is disabled; the node must load the feature modules listed \
         and allow the container to use them (e.g. iptables, tun, fuse, nfs), or the services \
         that need them will fail",
        json!({"features": features, "drivers": drivers}),
    ));
}

pub(super) fn nested_containers(cx: &Ctx<'_>, out: &mut Vec<Finding>) {
    let rt = &cx.inv.container_runtimes;
    if rt.is_empty() {
        return;
    }
    out.push(finding(
        codes::NESTED_CONTAINERS,
        Severity::Warning,
        format!("container runtimes found: {}", rt.join(", ")),
        rt.iter().map(|r| format!("{r} is installed")).collect(),
        "copied as they are; running containers inside the container needs the node to allow \
         nesting (cgroup delegation, overlayfs or fuse, nested user namespaces, keyrings) — \
         check before cutover, or their containers will not start",
        json!({"runtimes": rt}),
    ));
}

/// `Windows Server 2008 R2` → `2008r2`.
fn windows_release(v: &str) -> String {
    let lower = v.to_lowercase();
    lower.split_whitespace().filter(|w| !matches!(*w, "microsoft" | "windows" | "server")).collect::<String>()
}

pub(super) fn windows_version(cx: &Ctx<'_>, out: &mut Vec<Finding>) {
    let os = &cx.inv.os;
    if os.family != OsFamily::Windows {
        return;
    }
    let src = os.windows_version.as_deref();
    let node = match &cx.node.os {
        NodeOs::Linux => format!("Linux ({})", cx.node.os_name),
        NodeOs::Windows { version } => format!("Windows Server {version}"),
    };
    let (severity, title) = match (src, &cx.node.os) {
        (None, _) => {
            (Severity::Blocker, "a Windows source whose Windows Server version is unknown".to_string())
        }
        (Some(v), NodeOs::Windows { version }) if windows_release(v) == windows_release(version) => {
            (Severity::Info, format!("Windows Server {v} moves to a node running the same version"))
        }
        (Some(v), _) => (
            Severity::Blocker,
            format!("Windows Server {v} can only move to a node running Windows Server {v}"),
        ),
    };
    out.push(finding(
        codes::WINDOWS_VERSION,
        severity,
        title,
        vec![
            format!("source: {} ({})", os.pretty_name, src.unwrap_or("version unknown")),
            format!("this node: {node}"),
        ],
        "a Windows server moves only to a node running the same Windows Server release \
         (2008 → 2008, 2003 → 2003); otherwise the migration does not start: use a node with \
         the source's release",
        json!({"source_version": src, "node_os": cx.node.os}),
    ));
}

pub(super) fn skipped_entries(cx: &Ctx<'_>, out: &mut Vec<Finding>) {
    let Some(scan) = cx.scan else { return };
    let (sockets, errors) = (&scan.sockets, &scan.errors);
    if sockets.is_empty() && errors.is_empty() {
        return;
    }
    let mut evidence = Vec::new();
    if !sockets.is_empty() {
        let eg: Vec<String> = sockets.examples.iter().take(10).map(|p| p.display()).collect();
        evidence.push(format!(
            "{} socket(s), not copied (services create them again when they start): {}",
            sockets.total,
            eg.join(", ")
        ));
    }
    evidence
        .extend(errors.examples.iter().map(|p| format!("could not be scanned: {}: {}", p.path, p.reason)));
    out.push(finding(
        codes::SKIPPED,
        Severity::Info,
        format!("{} socket(s) are not copied; {} entries could not be scanned", sockets.total, errors.total),
        evidence,
        "sockets are skipped and listed in each pass; entries the scan could not read are \
         tried again by the copy and reported if they still fail",
        json!({"sockets": sockets, "scan_errors": errors}),
    ));
}

pub(super) fn partial_retry(cx: &Ctx<'_>, out: &mut Vec<Finding>) {
    let ctid = cx.opts.ctid;
    let ct = ctid.map_or_else(|| "N".to_string(), |c| c.to_string());
    let existing = cx.node.existing_private.as_ref();
    let (title, evidence) = match (ctid, existing) {
        (_, Some(e)) => (
            format!("an earlier run left {} entries ({}) for container {ct}", e.files, human_bytes(e.bytes)),
            vec![format!(
                "{}: {} entries, {} — the next migrate resumes from them and sends only what \
                 is missing",
                e.path,
                e.files,
                human_bytes(e.bytes)
            )],
        ),
        (Some(c), None) => (
            "a failed or interrupted move can be resumed".to_string(),
            vec![format!("no private area for container {c} yet")],
        ),
        (None, None) => (
            "a failed or interrupted move can be resumed".to_string(),
            vec!["no container id given: earlier runs not looked for".to_string()],
        ),
    };
    out.push(finding(
        codes::PARTIAL_RETRY,
        Severity::Info,
        title,
        evidence,
        format!(
            "a failed or interrupted move keeps what it copied in the private area; running \
             the same `p2c migrate` again resumes and sends only what is missing; \
             `p2c discard {ct}` removes it"
        ),
        json!({"ctid": ctid, "existing": existing}),
    ));
}

/// `node-target`: the platform the container is made for, and why; a warning when it is not
/// the platform this node was recognised as.
pub(super) fn node_target(cx: &Ctx<'_>, out: &mut Vec<Finding>) {
    let Some(node) = &cx.node.target else { return };
    let made_for = cx.opts.target.unwrap_or(node.target);
    let data = json!({
        "target": made_for.as_str(),
        "node": node.target.as_str(),
        "detected": node.detected,
        "evidence": node.evidence,
    });
    if node.detected && made_for != node.target {
        out.push(finding(
            codes::NODE_TARGET,
            Severity::Warning,
            format!(
                "the container is made for {made_for} ({}), but this node is {} ({})",
                made_for.title(),
                node.target,
                node.target.title()
            ),
            vec![node.evidence.clone()],
            format!(
                "its tools may refuse the container; leave out --target to make it for {}, or move the private area to a {made_for} node",
                node.target
            ),
            data,
        ));
        return;
    }
    let why =
        if cx.opts.target.is_some() { "asked for with --target".to_string() } else { node.evidence.clone() };
    out.push(finding(
        codes::NODE_TARGET,
        Severity::Info,
        format!("the container is made for {made_for} ({})", made_for.title()),
        vec![why],
        "the private area, config and guest network are made the way that platform's tools expect; the summary ends with the commands that register and start the container (--target or node.target in controller.toml chooses another)",
        data,
    ));
}

/// `node-boot-check`: whether this node can boot containers for `p2c boot-check` and
/// `p2c migrate --boot-check`, and what to install when it cannot.
pub(super) fn node_boot_check(cx: &Ctx<'_>, out: &mut Vec<Finding>) {
    match &cx.node.boot_tools {
        None => {}
        Some(Ok(tools)) => out.push(finding(
            codes::NODE_BOOT_CHECK,
            Severity::Info,
            "the node can boot the container for a boot check",
            vec![format!("uses {tools}")],
            "`p2c migrate --boot-check` boots the copy before the cutover and the container after it; `p2c boot-check N` at any time",
            json!({ "available": true, "tools": tools }),
        )),
        Some(Err(m)) => out.push(finding(
            codes::NODE_BOOT_CHECK,
            Severity::Warning,
            format!("the node cannot boot containers for a boot check: {} is missing", m.what),
            vec![format!("the boot check needs {}, which this node lacks; install {}", m.what, m.package)],
            format!("install {} on the node for `--boot-check`; without it the migration goes on unchecked", m.package),
            json!({ "available": false, "missing": m.what, "package": m.package }),
        )),
    }
}
