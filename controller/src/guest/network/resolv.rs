//! `/etc/resolv.conf` and `/etc/hostname` are the guest's own; they are only created,
//! from what the controller knows, when the guest has none (not even a link to a resolver
//! that fills it at boot).

use p2c_common::inventory::OsFamily;

use super::super::distro::{Distro, InitSystem};
use super::super::edit::{Editor, MARKER};
use super::super::{GuestError, GuestOptions};
use crate::tree::rel;

pub(super) fn apply(ed: &mut Editor, distro: &Distro, opts: &GuestOptions) -> Result<(), GuestError> {
    if !opts.nameservers.is_empty() || !opts.search.is_empty() {
        let mut s = format!("# {MARKER} from the source server's DNS settings.\n");
        if !opts.search.is_empty() {
            s.push_str(&format!("search {}\n", opts.search.join(" ")));
        }
        for n in &opts.nameservers {
            s.push_str(&format!("nameserver {n}\n"));
        }
        ed.create_if_missing(
            &rel("etc/resolv.conf"),
            &s,
            0o644,
            "the guest had no resolv.conf; made from the source server's DNS settings",
        )?;
    }
    let uses_etc_hostname = distro.init == InitSystem::Systemd || distro.family == OsFamily::Debian;
    let hostname = opts.hostname.as_deref().filter(|h| !h.is_empty());
    if let Some(h) = hostname.filter(|_| uses_etc_hostname) {
        ed.create_if_missing(
            &rel("etc/hostname"),
            &format!("{h}\n"),
            0o644,
            "the guest had no /etc/hostname; the source server's name",
        )?;
    }
    Ok(())
}
