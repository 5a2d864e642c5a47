//! Running one command on the source with a timeout, keeping only the tail of its output.

use p2c_common::sync::Locked;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::task::JoinHandle;

/// How long output is still read after the command exited: background processes it started
/// (a daemon an init script launched) may hold its pipes open for ever.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// The last `cap` bytes written to a stream, and how many came before them.
#[derive(Debug, Default)]
pub struct Tail {
    buf: Vec<u8>,
    cap: usize,
    dropped: u64,
}

impl Tail {
    pub fn new(cap: usize) -> Self {
        Self { buf: Vec::new(), cap, dropped: 0 }
    }

    pub fn push(&mut self, data: &[u8]) {
        if data.len() >= self.cap {
            self.dropped += (self.buf.len() + data.len() - self.cap) as u64;
            self.buf.clear();
            self.buf.extend_from_slice(&data[data.len() - self.cap..]);
            return;
        }
        let over = (self.buf.len() + data.len()).saturating_sub(self.cap);
        if over > 0 {
            self.buf.drain(..over);
            self.dropped += over as u64;
        }
        self.buf.extend_from_slice(data);
    }

    /// The kept bytes, lossily decoded.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    /// Bytes left out at the front.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// How a command ended.
#[derive(Debug)]
pub struct Finished {
    /// `None` when it could not be waited for after being killed.
    pub status: Option<ExitStatus>,
    pub timed_out: bool,
    pub stdout: Tail,
    pub stderr: Tail,
    pub elapsed: Duration,
}

impl Finished {
    pub fn exit_code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    pub fn signal(&self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        self.status.and_then(|s| s.signal())
    }

    pub fn success(&self) -> bool {
        !self.timed_out && self.status.is_some_and(|s| s.success())
    }

    /// stderr after stdout, for messages.
    pub fn output(&self) -> String {
        let (o, e) = (self.stdout.text(), self.stderr.text());
        match (o.trim().is_empty(), e.trim().is_empty()) {
            (_, true) => o,
            (true, false) => e,
            (false, false) => format!("{o}{}{e}", if o.ends_with('\n') { "" } else { "\n" }),
        }
    }

    /// Why it failed, in a few words: exit code, signal or timeout.
    pub fn failure(&self, timeout: Duration) -> String {
        if self.timed_out {
            format!("did not finish within {}s and was killed", timeout.as_secs())
        } else if let Some(c) = self.exit_code() {
            format!("exited with code {c}")
        } else if let Some(s) = self.signal() {
            format!("was killed by signal {s}")
        } else {
            "ended without an exit status".into()
        }
    }
}

/// Runs `cmd` (stdin from /dev/null, in a process group of its own) for at most `timeout`,
/// then kills the whole group. Keeps the last `cap` bytes of stdout and of stderr.
pub async fn run(mut cmd: Command, timeout: Duration, cap: usize) -> std::io::Result<Finished> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = cmd.spawn()?;
    let out = Arc::new(Mutex::new(Tail::new(cap)));
    let err = Arc::new(Mutex::new(Tail::new(cap)));
    let readers: Vec<JoinHandle<()>> = [
        child.stdout.take().map(|s| tokio::spawn(drain(s, out.clone()))),
        child.stderr.take().map(|s| tokio::spawn(drain(s, err.clone()))),
    ]
    .into_iter()
    .flatten()
    .collect();
    let (status, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => (Some(status?), false),
        Err(_) => {
            kill_group(child.id());
            let _ = child.start_kill();
            (child.wait().await.ok(), true)
        }
    };
    for mut r in readers {
        if tokio::time::timeout(DRAIN_GRACE, &mut r).await.is_err() {
            r.abort();
        }
    }
    let take = |t: &Arc<Mutex<Tail>>| std::mem::take(&mut *t.locked());
    Ok(Finished { status, timed_out, stdout: take(&out), stderr: take(&err), elapsed: started.elapsed() })
}

/// SIGKILL to the process group led by `pid` (the command and whatever it started).
fn kill_group(pid: Option<u32>) {
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) else { return };
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
}

async fn drain(mut r: impl AsyncRead + Unpin, into: Arc<Mutex<Tail>>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => into.locked().push(&buf[..n]),
        }
    }
}

/// The last `max` characters of `s`, trimmed, for one-line messages.
pub fn last_chars(s: &str, max: usize) -> String {
    let t = s.trim();
    let n = t.chars().count();
    if n <= max {
        return t.to_string();
    }
    let tail: String = t.chars().skip(n - max).collect();
    format!("...{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut t = Tail::new(8);
        t.push(b"abc");
        t.push(b"defgh");
        assert_eq!((t.text().as_str(), t.dropped()), ("abcdefgh", 0));
        t.push(b"ij");
        assert_eq!((t.text().as_str(), t.dropped()), ("cdefghij", 2));
        t.push(b"0123456789");
        assert_eq!((t.text().as_str(), t.dropped()), ("23456789", 12));
    }

    #[test]
    fn last_chars_marks_the_cut() {
        assert_eq!(last_chars("  short \n", 10), "short");
        assert_eq!(last_chars("0123456789abc", 3), "...abc");
    }

    #[tokio::test]
    async fn a_background_child_holding_the_pipe_does_not_hang_the_run() {
        let mut c = Command::new("/bin/sh");
        c.args(["-c", "echo started; sleep 30 & exit 0"]);
        let f = run(c, Duration::from_secs(10), 1024).await.unwrap();
        assert!(f.success(), "{f:?}");
        assert_eq!(f.stdout.text(), "started\n");
        assert!(f.elapsed < Duration::from_secs(5), "{:?}", f.elapsed);
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(format!("(sleep 2; touch {}) & sleep 30", marker.display()));
        let f = run(c, Duration::from_millis(300), 1024).await.unwrap();
        assert!(f.timed_out && !f.success());
        assert_eq!(f.failure(Duration::from_secs(7)), "did not finish within 7s and was killed");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!marker.exists(), "the background child outlived the timeout");
    }
}
