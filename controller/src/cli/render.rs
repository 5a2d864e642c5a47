//! Text output of `p2c` (the `--json` forms print the domain types as they are).

use p2c_common::inventory::Inventory;
use p2c_common::migration::{AgentStatus, MigrationSummary, StatusEntry, VerifySummary};
use p2c_common::units::{human_bytes, human_duration};

fn ago(t: Option<u64>) -> String {
    match t {
        None => "never".into(),
        Some(t) => {
            let now = crate::state::now();
            format!("{} ago", human_duration(std::time::Duration::from_secs(now.saturating_sub(t))))
        }
    }
}

pub fn agents(list: &[AgentStatus]) -> String {
    if list.is_empty() {
        return "no agents enrolled; create a token with `p2c token create NAME`\n".into();
    }
    let mut out =
        format!("{:<20} {:<12} {:<24} {:<14} {}\n", "NAME", "STATE", "HOST", "LAST SEEN", "ACTIVITY");
    for a in list {
        let state = if a.revoked {
            "revoked"
        } else if a.connected {
            "connected"
        } else {
            "offline"
        };
        out.push_str(&format!(
            "{:<20} {:<12} {:<24} {:<14} {}\n",
            a.name,
            state,
            a.hostname.clone().unwrap_or_default(),
            if a.connected { "now".into() } else { ago(a.last_seen_unix) },
            a.summary.clone().unwrap_or_default()
        ));
    }
    out
}

pub fn inventory(inv: &Inventory) -> String {
    let mut out = format!(
        "hostname   {}\nos         {} ({:?})\nkernel     {}\ncpus       {}\nmemory     {}\n",
        inv.hostname,
        if inv.os.pretty_name.is_empty() { &inv.os.id } else { &inv.os.pretty_name },
        inv.os.family,
        inv.kernel.release,
        inv.cpus,
        human_bytes(inv.memory_bytes)
    );
    out.push_str("mounts\n");
    for m in &inv.mounts {
        out.push_str(&format!(
            "  {:<20} {:<8} {:<8?} {:>10} used of {:>10}  {}\n",
            m.mountpoint,
            m.fs_type,
            m.kind,
            human_bytes(m.used_bytes),
            human_bytes(m.size_bytes),
            m.device
        ));
    }
    out.push_str("interfaces\n");
    for i in &inv.interfaces {
        let addrs: Vec<String> = i.addresses.iter().map(|a| format!("{}/{}", a.address, a.prefix)).collect();
        out.push_str(&format!(
            "  {:<10} {:<18} {:<5} {}{}\n",
            i.name,
            i.mac.clone().unwrap_or_default(),
            if i.up { "up" } else { "down" },
            addrs.join(" "),
            if i.dhcp { " (dhcp)" } else { "" }
        ));
    }
    for r in &inv.routes {
        out.push_str(&format!(
            "route      {} via {} dev {}\n",
            r.destination,
            r.gateway.map(|g| g.to_string()).unwrap_or_else(|| "-".into()),
            r.interface
        ));
    }
    out.push_str(&format!(
        "dns        {} search {}\n",
        inv.dns.nameservers.join(" "),
        inv.dns.search.join(" ")
    ));
    out.push_str(&format!("selinux    {:?}\n", inv.selinux.mode));
    for q in &inv.quotas {
        out.push_str(&format!(
            "quotas     {}: {} user and {} group limits ({:?})\n",
            q.mountpoint,
            q.limited_users().count(),
            q.limited_groups().count(),
            q.source
        ));
    }
    for g in &inv.gaps {
        out.push_str(&format!("not known  {g}\n"));
    }
    out
}

pub fn status(list: &[StatusEntry]) -> String {
    if list.is_empty() {
        return "no migrations; start one with `p2c migrate NAME --ctid N`\n".into();
    }
    let mut out = format!(
        "{:<8} {:<16} {:<13} {:>4} {:>22} {:>12} {:>8}  {}\n",
        "CTID", "AGENT", "STATE", "PASS", "BYTES", "RATE", "ETA", "NOTE"
    );
    for s in list {
        out.push_str(&format!(
            "{:<8} {:<16} {:<13} {:>4} {:>22} {:>12} {:>8}  {}\n",
            s.ctid,
            s.agent,
            s.state.as_str(),
            s.pass,
            format!("{}/{}", human_bytes(s.bytes_done), human_bytes(s.bytes_total)),
            if s.rate_bytes_per_sec > 0 {
                format!("{}/s", human_bytes(s.rate_bytes_per_sec))
            } else {
                "-".into()
            },
            s.eta_seconds
                .map(|e| human_duration(std::time::Duration::from_secs(e)))
                .unwrap_or_else(|| "-".into()),
            note(s)
        ));
    }
    if let [one] = list
        && let Some(b) = &one.boot_check
    {
        out.push_str(&format!("boot check {}\n", b.line()));
        for f in b.findings.iter().filter(|f| f.severity != p2c_common::findings::Severity::Info) {
            out.push_str(&format!("  {} {}: {}\n", f.severity.tag(), f.code, f.title));
        }
    }
    out
}

/// The last column of `p2c status`: the error, or what the migration waits for.
fn note(s: &StatusEntry) -> String {
    match (&s.error, &s.waiting) {
        (Some(e), _) => e.clone(),
        (None, Some(w)) => format!("waiting for {w}"),
        (None, None) => String::new(),
    }
}

pub fn verify(ctid: u32, v: &VerifySummary) -> String {
    let mut out = if v.ok {
        format!(
            "CT {ctid}: verified {} entries against the source manifest ({} rewritten on purpose)\n",
            v.checked, v.rewritten
        )
    } else {
        format!("CT {ctid}: {} difference(s) found in {} entries\n", v.mismatches.len(), v.checked)
    };
    for m in &v.mismatches {
        out.push_str(&format!("  {m}\n"));
    }
    out
}

pub fn summary(s: &MigrationSummary) -> String {
    let mut out = format!("\nCT {} from {}: {}\n", s.ctid, s.agent, s.state.as_str());
    out.push_str(&format!("  private area  {}\n  config        {}\n", s.private_dir, s.conf_path));
    if let Some(t) = s.target {
        out.push_str(&format!("  made for      {t} ({})\n", t.title()));
    }
    for p in &s.passes {
        out.push_str(&format!(
            "  pass {:<3} {:>7} entries, {:>6} written, {:>5} deleted, {:>10} data, {:>10} sent, {:>10} local, {:.1}s\n",
            p.pass,
            p.entries,
            p.written,
            p.deleted,
            human_bytes(p.data_bytes),
            human_bytes(p.wire_bytes),
            human_bytes(p.local_bytes),
            p.seconds
        ));
        if let Some(base) = p.changes_since {
            out.push_str(&format!(
                "    listed only what changed since pass {base}: {} entries (change tracking)\n",
                p.listed
            ));
        }
        for c in p.changed_during_read.iter().take(10) {
            out.push_str(&format!("    changed while read: {} ({})\n", c.path, c.reason));
        }
        for c in p.skipped.iter().take(10) {
            out.push_str(&format!("    not copied: {} ({})\n", c.path, c.reason));
        }
    }
    if let Some(v) = &s.verify {
        out.push_str(&format!(
            "  verify        {} ({} entries checked, {} rewritten on purpose)\n",
            if v.ok { "ok" } else { "FAILED" },
            v.checked,
            v.rewritten
        ));
    }
    if let Some(d) = s.downtime_seconds {
        out.push_str(&format!("  downtime      {d:.1}s\n"));
    }
    if !s.guest_changes.is_empty() {
        out.push_str(&format!(
            "  guest changes {} file(s); backups in /etc/p2c/backup inside the container\n",
            s.guest_changes.len()
        ));
    }
    for b in &s.boot_checks {
        out.push_str(&format!("  boot check    {}\n", b.line()));
        for f in b.findings.iter().filter(|f| f.severity != p2c_common::findings::Severity::Info) {
            out.push_str(&format!("    {} {}: {}\n", f.severity.tag(), f.code, f.title));
        }
    }
    for w in &s.warnings {
        out.push_str(&format!("  warning: {w}\n"));
    }
    if let Some(e) = &s.error {
        out.push_str(&format!("  error: {e}\n"));
    }
    if s.state == p2c_common::migration::MigrationState::Done && !s.start_commands.is_empty() {
        out.push_str(&format!("  start it with: {}\n", s.start_commands.join(" && ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2c_common::migration::PassSummary;

    #[test]
    fn a_pass_that_listed_changes_says_so() {
        let s = MigrationSummary {
            passes: vec![
                PassSummary { pass: 0, entries: 100, listed: 100, ..Default::default() },
                PassSummary {
                    pass: 1,
                    entries: 100,
                    listed: 3,
                    changes_since: Some(0),
                    ..Default::default()
                },
            ],
            ..MigrationSummary::new(
                101,
                "web1",
                p2c_common::migration::MigrationState::Synced,
                "/vz/private/101".into(),
                "/etc/vz/conf/101.conf".into(),
                0,
            )
        };
        let text = summary(&s);
        assert!(text.contains("listed only what changed since pass 0: 3 entries"), "{text}");
        assert_eq!(text.matches("listed only what changed").count(), 1, "{text}");
    }
}
