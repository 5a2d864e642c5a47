//! Inventory collection (placeholder until the full collector lands).

use std::path::PathBuf;

use p2c_common::inventory::{INVENTORY_SCHEMA, Inventory, OsFamily};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FactsFrom {
    Live,
    Tree,
}

pub struct CollectOptions {
    pub root: PathBuf,
    pub facts: FactsFrom,
}

pub fn collect(opts: &CollectOptions) -> Inventory {
    let mut inv =
        Inventory { schema: INVENTORY_SCHEMA, root: opts.root.display().to_string(), ..Default::default() };
    inv.facts_from = match opts.facts {
        FactsFrom::Live => "live".into(),
        FactsFrom::Tree => "tree".into(),
    };
    inv.hostname = std::fs::read_to_string(opts.root.join("etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    if let Ok(text) = std::fs::read_to_string(opts.root.join("etc/os-release")) {
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=') {
                let v = v.trim_matches('"').to_string();
                match k {
                    "ID" => inv.os.id = v,
                    "NAME" => inv.os.name = v,
                    "VERSION_ID" => inv.os.version_id = v,
                    "PRETTY_NAME" => inv.os.pretty_name = v,
                    _ => {}
                }
            }
        }
    }
    inv.os.family = OsFamily::classify(&inv.os.id, &inv.os.id_like);
    inv
}
