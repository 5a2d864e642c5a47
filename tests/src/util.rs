//! Small pieces every integration test uses: the root check, tracing set-up, bounded polling and
//! unique short names for kernel objects (network namespaces, interfaces).

use std::ffi::OsStr;
use std::fmt::Display;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tracing_subscriber::EnvFilter;

/// True when the test process runs with effective uid 0.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Returns early from the calling test, with a message saying why, unless it runs as root.
///
/// `require_root!()` is for tests returning `()`; `require_root!(value)` returns `value` instead
/// (e.g. `require_root!(Ok(()))` in a test returning a `Result`).
#[macro_export]
macro_rules! require_root {
    () => {
        $crate::require_root!(())
    };
    ($ret:expr) => {
        if !$crate::is_root() {
            fn __p2c_here() {}
            eprintln!(
                "skipping {}: needs root (run the suite as root, as CI does)",
                $crate::util::test_name(::std::any::type_name_of_val(&__p2c_here))
            );
            return $ret;
        }
    };
}

/// Turns the type name of a function item declared inside a test into the test's path
/// (`integration::harness::netns::ping::__p2c_here` → `harness::netns::ping`).
#[doc(hidden)]
pub fn test_name(marker: &str) -> String {
    marker
        .split("::")
        .skip(1) // the crate name of the test binary
        .filter(|part| *part != "{{closure}}" && *part != "__p2c_here")
        .collect::<Vec<_>>()
        .join("::")
}

/// Installs a `tracing` subscriber that writes through the test harness's capture, filtered by
/// `RUST_LOG` (default `info`). Safe to call from every test.
pub fn trace_init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        // Another subscriber may already be installed (e.g. by code under test); keep it.
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    });
}

/// What one attempt of a polled condition produced: done with a value, or not yet (with the
/// reason, if there is one, for the timeout message).
pub trait Attempt {
    /// The value a successful attempt yields.
    type Output;
    /// `Ok(value)` when the condition holds, `Err(reason)` otherwise.
    fn settle(self) -> Result<Self::Output, Option<String>>;
}

impl Attempt for bool {
    type Output = ();
    fn settle(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}

impl<T> Attempt for Option<T> {
    type Output = T;
    fn settle(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Display> Attempt for Result<T, E> {
    type Output = T;
    fn settle(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(format!("{e:#}")))
    }
}

/// Delay between attempts: starts short so fast conditions finish fast, grows to 200 ms.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((10u64 << attempt.min(5)).min(200))
}

fn timed_out(what: &str, timeout: Duration, attempts: u32, last: Option<String>) -> ! {
    match last {
        Some(reason) => panic!(
            "timed out after {timeout:?} ({attempts} attempts) waiting for {what}; last error: {reason}"
        ),
        None => panic!("timed out after {timeout:?} ({attempts} attempts) waiting for {what}"),
    }
}

/// Polls `f` until it reports success (`true`, `Some(v)` or `Ok(v)`) and returns the value.
/// Each attempt is itself bounded by the time left. Panics naming `what` (and the last error,
/// for `Result`) once `timeout` has passed.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut f: F) -> <Fut::Output as Attempt>::Output
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Attempt,
{
    let deadline = Instant::now() + timeout;
    let mut attempts = 0;
    let mut last = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        attempts += 1;
        match tokio::time::timeout(left, f()).await {
            Ok(outcome) => match outcome.settle() {
                Ok(value) => return value,
                Err(reason) => last = reason.or(last),
            },
            Err(_) => last = Some("the attempt itself did not finish in time".to_owned()),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            timed_out(what, timeout, attempts, last);
        }
        tokio::time::sleep(backoff(attempts).min(left)).await;
    }
}

/// Blocking twin of [`wait_for`] for code outside an async runtime. An attempt that blocks
/// cannot be interrupted, so keep each attempt short.
pub fn wait_for_sync<F, A>(what: &str, timeout: Duration, mut f: F) -> A::Output
where
    F: FnMut() -> A,
    A: Attempt,
{
    let deadline = Instant::now() + timeout;
    let mut attempts = 0;
    let mut last = None;
    loop {
        attempts += 1;
        match f().settle() {
            Ok(value) => return value,
            Err(reason) => last = reason.or(last),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            timed_out(what, timeout, attempts, last);
        }
        std::thread::sleep(backoff(attempts).min(left));
    }
}

/// Longest name the kernel accepts for a network interface (`IFNAMSIZ - 1`).
pub const MAX_IFNAME: usize = 15;

/// A name no other live test process or earlier call in this one uses: `prefix` (cut to 5
/// bytes) followed by the process id and a per-process counter in hex. At most 15 bytes, so it
/// is valid as an interface name as well as a netns, directory or CTID-like label.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xffff;
    let prefix: String =
        prefix.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').take(5).collect();
    // pid_max is at most 2^22, so the pid fits six hex digits: 5 + 6 + 4 = 15.
    let name = format!("{prefix}{:x}{n:x}", std::process::id());
    debug_assert!(name.len() <= MAX_IFNAME);
    name
}

/// Runs `cmd` to completion and returns its stdout. A spawn failure or a non-zero exit is an
/// error naming the command line, the exit status and stderr.
pub fn run_cmd(cmd: &mut Command) -> anyhow::Result<String> {
    let line = command_line(cmd);
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot start `{line}`"))?;
    if !out.status.success() {
        bail!("`{line}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// [`run_cmd`] for the common case of a program and its arguments.
pub fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> anyhow::Result<String> {
    run_cmd(Command::new(program).args(args))
}

/// `cmd` as a shell-like line for messages (arguments escaped where not printable).
pub fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.as_bytes().escape_ascii().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_short_and_distinct() {
        let a = unique_name("netns-host");
        let b = unique_name("netns-host");
        assert_ne!(a, b);
        assert!(a.len() <= MAX_IFNAME && b.len() <= MAX_IFNAME, "{a} {b}");
        assert!(a.starts_with("netns"));
    }

    #[test]
    fn test_name_strips_binary_and_marker() {
        assert_eq!(
            test_name("integration::harness::netns::ping::{{closure}}::__p2c_here"),
            "harness::netns::ping"
        );
    }

    #[test]
    fn wait_for_sync_returns_value_and_panics_with_reason() {
        let mut n = 0;
        let v = wait_for_sync("counter to reach 3", Duration::from_secs(5), || {
            n += 1;
            (n >= 3).then_some(n)
        });
        assert_eq!(v, 3);
        let err = std::panic::catch_unwind(|| {
            wait_for_sync("nothing", Duration::from_millis(50), || Err::<(), _>("connection refused"))
        })
        .expect_err("must time out");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("waiting for nothing"), "{msg}");
        assert!(msg.contains("connection refused"), "{msg}");
    }
}
