//! Source servers for migration tests: a small server tree with bulk data of its own, and a
//! live "service" that keeps writing, creating and deleting files until it is stopped through
//! its SysV init script.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

/// A small Debian-like server (the demo's sample) at `root`, plus `files` files of
/// `file_size` bytes under `srv/data`, random and different for every `seed` (so nothing
/// deduplicates across servers). Returns the bytes of bulk data written.
pub fn server_tree(root: &Path, seed: &str, files: usize, file_size: usize) -> anyhow::Result<u64> {
    p2c_demo::build_sample(root).with_context(|| format!("sample server in {}", root.display()))?;
    let data = root.join("srv/data");
    std::fs::create_dir_all(&data)?;
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..files {
        let mut out = blake3::Hasher::new_derive_key("p2c tests random file")
            .update(seed.as_bytes())
            .update(&(i as u64).to_le_bytes())
            .finalize_xof();
        let path = data.join(format!("blob-{i:04}"));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut left = file_size;
        while left > 0 {
            let n = left.min(buf.len());
            out.fill(&mut buf[..n]);
            f.write_all(&buf[..n])?;
            left -= n;
        }
        f.flush()?;
    }
    Ok((files * file_size) as u64)
}

/// Name of the test service's init script.
pub const WRITER_SERVICE: &str = "p2c-writer";

/// The writer loop: every round appends to a journal, creates a file (through a temp name),
/// deletes an old one and rewrites a counter. It leaves at a command boundary on SIGTERM.
const WRITER: &str = r#"#!/bin/sh
dir="$1"
mkdir -p "$dir"
trap 'exit 0' TERM INT
i=0
while :; do
    i=$((i + 1))
    echo "round $i" >> "$dir/journal.log"
    head -c 3000 /dev/urandom > "$dir/f$i.tmp" && mv "$dir/f$i.tmp" "$dir/f$i"
    rm -f "$dir/f$((i - 25))"
    echo "$i" > "$dir/counter"
    sleep 0.02
done
"#;

/// A SysV init script for the writer. Paths are under `$P2C_ROOT` (the agent sets it to the
/// tree it serves); `stop` returns once the writer is gone.
const INIT_SCRIPT: &str = r#"#!/bin/sh
root="${P2C_ROOT:-}"
pidfile="$root/run/p2c-writer.pid"
running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
case "$1" in
start)
    running && exit 0
    mkdir -p "$root/run"
    "$root/usr/local/bin/p2c-writer" "$root/srv/live" </dev/null >/dev/null 2>&1 &
    echo $! > "$pidfile"
    ;;
stop)
    running || { rm -f "$pidfile"; exit 0; }
    pid="$(cat "$pidfile")"
    kill "$pid"
    n=0
    while kill -0 "$pid" 2>/dev/null; do
        n=$((n + 1))
        [ "$n" -gt 200 ] && { echo "p2c-writer ($pid) does not stop" >&2; exit 1; }
        sleep 0.05
    done
    rm -f "$pidfile"
    ;;
status)
    running
    ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
"#;

/// The writer service installed in a source tree. Dropping it stops the writer.
#[derive(Debug)]
pub struct Writer {
    root: PathBuf,
}

impl Writer {
    /// Installs `ROOT/etc/init.d/p2c-writer` and the writer it controls.
    pub fn install(root: &Path) -> anyhow::Result<Writer> {
        write_exec(&root.join("usr/local/bin/p2c-writer"), WRITER)?;
        write_exec(&root.join("etc/init.d").join(WRITER_SERVICE), INIT_SCRIPT)?;
        Ok(Writer { root: root.to_path_buf() })
    }

    /// Runs the init script with `action`, as the agent would; true when it exits 0.
    pub fn service(&self, action: &str) -> anyhow::Result<bool> {
        let status = Command::new(self.root.join("etc/init.d").join(WRITER_SERVICE))
            .arg(action)
            .env("P2C_ROOT", &self.root)
            .current_dir(&self.root)
            .status()
            .with_context(|| format!("cannot run the {WRITER_SERVICE} init script"))?;
        Ok(status.success())
    }

    pub fn running(&self) -> bool {
        self.service("status").unwrap_or(false)
    }

    /// The writer's round counter (how far it got).
    pub fn rounds(&self) -> u64 {
        std::fs::read_to_string(self.root.join("srv/live/counter"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.service("stop");
    }
}

/// Writes an executable script.
pub fn write_exec(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}
