//! Persistent network device names: `70-persistent-net.rules` pins NIC names to MAC
//! addresses the container does not have, and `75-persistent-net-generator.rules` would
//! write it again; the first goes, the second is masked with a link to `/dev/null` in
//! `/etc/udev/rules.d` (how Debian documents turning it off).

use super::super::GuestError;
use super::super::edit::{Action, Editor};
use crate::tree::rel;

pub(super) fn apply(ed: &mut Editor) -> Result<(), GuestError> {
    ed.remove(
        &rel("etc/udev/rules.d/70-persistent-net.rules"),
        "names NICs by MAC addresses the container does not have",
    )?;
    let generator = "75-persistent-net-generator.rules";
    let mask = rel(&format!("etc/udev/rules.d/{generator}"));
    let present = ed.kind(&mask)?.is_some()
        || ed
            .first_existing(&[
                "lib/udev/rules.d/75-persistent-net-generator.rules",
                "usr/lib/udev/rules.d/75-persistent-net-generator.rules",
            ])?
            .is_some();
    if present {
        ed.symlink(
            &mask,
            "/dev/null",
            Action::Disabled,
            "would record the NICs' MAC addresses again; masked",
        )?;
    }
    Ok(())
}
