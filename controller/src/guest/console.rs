//! Gettys: a container has no virtual terminals or serial lines, only `/dev/console` (what
//! `vzctl console` attaches to). Gettys on real terminals go; one on the console comes on,
//! following vzctl's `set_console.sh` for each init system.
//!
//! - systemd: `getty@tty1..6` and every enabled `serial-getty@` instance are masked
//!   (`/etc/systemd/system/<unit>` → `/dev/null`), and `console-getty.service` is enabled
//!   in `getty.target.wants` if the guest has it.
//! - sysvinit (and OpenRC, which runs gettys from inittab too): getty lines on ttys are
//!   commented out in `/etc/inittab` and a console getty line is added.
//! - upstart: the tty jobs get an `.override` with `manual`, and `console.conf` is
//!   created with vzctl's job text.

use rustix::fs::FileType;

use super::GuestError;
use super::distro::{Distro, InitSystem};
use super::edit::{Action, Editor, MARKER, join};
use crate::tree::rel;

const UNIT_DIRS: [&str; 2] = ["usr/lib/systemd/system", "lib/systemd/system"];

pub(super) fn apply(ed: &mut Editor, distro: &Distro) -> Result<(), GuestError> {
    match distro.init {
        InitSystem::Systemd => systemd(ed),
        InitSystem::Sysvinit | InitSystem::Openrc => inittab(ed),
        InitSystem::Upstart => upstart(ed),
        InitSystem::Unknown => Ok(()),
    }
}

/// Where the guest keeps unit `name`, as an absolute path (e.g.
/// `/lib/systemd/system/console-getty.service`).
pub(super) fn unit_path(ed: &Editor, name: &str) -> Result<Option<String>, GuestError> {
    for d in UNIT_DIRS {
        let p = format!("{d}/{name}");
        if ed.kind_guest(&rel(&p))?.is_some() {
            return Ok(Some(format!("/{p}")));
        }
    }
    Ok(None)
}

fn systemd(ed: &mut Editor) -> Result<(), GuestError> {
    if unit_path(ed, "getty@.service")?.is_some() {
        for n in 1..=6 {
            ed.symlink(
                &rel(&format!("etc/systemd/system/getty@tty{n}.service")),
                "/dev/null",
                Action::Disabled,
                format!("tty{n} is a virtual terminal the container does not have; masked"),
            )?;
        }
    }
    let mut serial: Vec<String> = Vec::new();
    for wants in ["getty.target.wants", "multi-user.target.wants"] {
        for e in ed.entries(&format!("etc/systemd/system/{wants}"))? {
            if e.name.starts_with("serial-getty@") && e.name != "serial-getty@.service" {
                serial.push(e.name);
            }
        }
    }
    serial.sort();
    serial.dedup();
    for unit in serial {
        ed.symlink(
            &join(&rel("etc/systemd/system"), unit.as_bytes())?,
            "/dev/null",
            Action::Disabled,
            "serial line the container does not have; masked",
        )?;
    }
    if let Some(target) = unit_path(ed, "console-getty.service")? {
        ed.symlink(
            &rel("etc/systemd/system/getty.target.wants/console-getty.service"),
            &target,
            Action::Created,
            "a login prompt on the container's console (vzctl console)",
        )?;
    }
    Ok(())
}

/// The guest's getty for the console line, in vzctl's order of preference.
fn console_getty(ed: &Editor) -> Result<Option<&'static str>, GuestError> {
    for (bin, cmd) in [
        ("sbin/mingetty", "/sbin/mingetty console"),
        ("sbin/getty", "/sbin/getty 38400 console"),
        ("sbin/agetty", "/sbin/agetty console 38400"),
    ] {
        if ed.kind_guest(&rel(bin))?.is_some() {
            return Ok(Some(cmd));
        }
    }
    Ok(None)
}

fn inittab(ed: &mut Editor) -> Result<(), GuestError> {
    let path = rel("etc/inittab");
    let getty = console_getty(ed)?;
    ed.rewrite(
        &path,
        "gettys on terminals the container does not have commented out; a getty on the console added",
        |t| rewrite_inittab(t, getty),
    )?;
    Ok(())
}

/// Comments out getty lines on terminals and adds `getty` on the console if no getty runs
/// there yet. Busybox-style inittabs (`tty1::respawn:...`, the id being the terminal) get
/// `console::respawn:`, sysvinit ones vzctl's `1:2345:respawn:` (or `co:` if `1` is
/// taken).
pub(crate) fn rewrite_inittab(text: &str, getty: Option<&str>) -> String {
    let mut out = String::new();
    let mut ids: Vec<String> = Vec::new();
    let mut console = false;
    let mut busybox = false;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        let fields: Vec<&str> = body.splitn(4, ':').collect();
        let active = !body.trim_start().starts_with('#') && fields.len() == 4;
        if !active {
            out.push_str(line);
            continue;
        }
        let process = fields[3];
        if process.contains("getty") {
            let words: Vec<&str> = process.split_whitespace().collect();
            if words.contains(&"console") {
                console = true;
            } else {
                busybox |= fields[1].is_empty() && fields[0].starts_with("tty");
                out.push_str("#p2c# ");
                out.push_str(line);
                continue;
            }
        }
        ids.push(fields[0].to_string());
        out.push_str(line);
    }
    if let (false, Some(cmd)) = (console, getty) {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        let line = if busybox {
            format!("console::respawn:{cmd}")
        } else if ids.iter().any(|i| i == "1") {
            format!("co:2345:respawn:{cmd}")
        } else {
            format!("1:2345:respawn:{cmd}")
        };
        out.push_str(&format!("# {MARKER}: a getty on the container's console.\n{line}\n"));
    }
    out
}

fn upstart(ed: &mut Editor) -> Result<(), GuestError> {
    for e in ed.entries("etc/init")? {
        let Some(job) = e.name.strip_suffix(".conf") else {
            continue;
        };
        let tty = job.starts_with("tty") || matches!(job, "serial" | "start-ttys");
        if !tty || e.kind != Some(FileType::RegularFile) {
            continue;
        }
        ed.write_as(
            &join(&rel("etc/init"), format!("{job}.override").as_bytes())?,
            "manual\n",
            0o644,
            Some(Action::Disabled),
            format!("upstart job {job} runs gettys on terminals the container does not have"),
        )?;
    }
    let cmd = match console_getty(ed)? {
        Some(c) if c.starts_with("/sbin/mingetty") => "exec /sbin/mingetty console",
        Some(_) => "exec /sbin/getty 38400 console",
        None => return Ok(()),
    };
    ed.create_if_missing(
        &rel("etc/init/console.conf"),
        &format!(
            "# {MARKER}: a getty on the container's console.\n\
             start on stopped rc RUNLEVEL=[2345]\nstop on runlevel [!2345]\nrespawn\n{cmd}\n"
        ),
        0o644,
        "a login prompt on the container's console (vzctl console)",
    )
}

#[cfg(test)]
mod tests;
