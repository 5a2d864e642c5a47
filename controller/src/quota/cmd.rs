//! External programs the quota methods drive (`vzctl`, `btrfs`, `mkfs.ext4`, `setquota`...).
//!
//! Every program runs through [`CommandRunner`], so unit tests can check the exact command
//! lines without running anything, and the outcome of a migration can list what was run.
//! Arguments are passed as a vector (no shell), so paths with spaces or quotes stay intact.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::QuotaError;

/// One command line: a program, its arguments and optional standard input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmd {
    pub program: String,
    pub args: Vec<OsString>,
    pub stdin: Option<Vec<u8>>,
}

impl Cmd {
    pub fn new(program: &str) -> Cmd {
        Cmd { program: program.to_string(), args: Vec::new(), stdin: None }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Cmd {
        self.args.push(a.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Cmd {
        self.stdin = Some(data.into());
        self
    }

    /// The arguments as (lossy) strings, for tests and reports.
    pub fn argv(&self) -> Vec<String> {
        std::iter::once(self.program.clone())
            .chain(self.args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect()
    }
}

impl fmt::Display for Cmd {
    /// Shell-like rendering for reports: words with unusual characters are single-quoted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words = self.argv();
        for (i, w) in words.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            let plain = !w.is_empty()
                && w.chars().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | ',' | '+')
                });
            if plain {
                f.write_str(w)?;
            } else {
                write!(f, "'{}'", w.replace('\'', r"'\''"))?;
            }
        }
        if self.stdin.is_some() {
            f.write_str(" <stdin>")?;
        }
        Ok(())
    }
}

/// What a finished command left behind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CmdOutput {
    /// Exit code; `None` when a signal ended the program.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

/// Runs programs on the node. The Linux implementation is [`SystemRunner`].
pub trait CommandRunner: Send + Sync {
    /// Runs the command to completion; a non-zero exit is not an error here.
    fn output(&self, cmd: &Cmd) -> Result<CmdOutput, QuotaError>;

    /// Full path of `program` if it can be run (found in `PATH` or the sbin directories).
    fn which(&self, program: &str) -> Option<PathBuf>;

    /// Runs the command and fails unless it exits 0.
    fn run(&self, cmd: &Cmd) -> Result<CmdOutput, QuotaError> {
        let out = self.output(cmd)?;
        if out.success() {
            Ok(out)
        } else {
            Err(QuotaError::Command {
                cmd: cmd.to_string(),
                status: match out.code {
                    Some(c) => format!("exit code {c}"),
                    None => "killed by a signal".to_string(),
                },
                stderr: out.stderr_str(),
            })
        }
    }
}

/// Runs programs with `std::process::Command`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemRunner;

/// Where programs are looked for besides `PATH` (daemons often run with a short `PATH`).
const EXTRA_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"];

impl CommandRunner for SystemRunner {
    fn output(&self, cmd: &Cmd) -> Result<CmdOutput, QuotaError> {
        let program = self.which(&cmd.program).unwrap_or_else(|| PathBuf::from(&cmd.program));
        let mut child = Command::new(&program)
            .args(&cmd.args)
            .stdin(if cmd.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("LC_ALL", "C")
            .spawn()
            .map_err(|source| QuotaError::Spawn { program: cmd.program.clone(), source })?;
        if let Some(data) = &cmd.stdin
            && let Some(mut stdin) = child.stdin.take()
        {
            // A program that exits without reading all of its input is judged by its
            // exit code below, so a broken pipe here is not an error of its own.
            let _ = stdin.write_all(data);
        }
        let out = child
            .wait_with_output()
            .map_err(|source| QuotaError::Spawn { program: cmd.program.clone(), source })?;
        Ok(CmdOutput { code: out.status.code(), stdout: out.stdout, stderr: out.stderr })
    }

    fn which(&self, program: &str) -> Option<PathBuf> {
        if program.contains('/') {
            let p = Path::new(program);
            return is_executable(p).then(|| p.to_path_buf());
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(EXTRA_DIRS.iter().map(PathBuf::from))
            .map(|d| d.join(program))
            .find(|p| is_executable(p))
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

#[cfg(test)]
pub(crate) mod fake {
    //! A runner that records command lines and answers from a script.

    use std::collections::HashSet;
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    pub struct FakeRunner {
        pub programs: HashSet<String>,
        pub ran: Mutex<Vec<Cmd>>,
        /// `(argv prefix joined by spaces, output)`: the first match answers.
        pub answers: Vec<(String, CmdOutput)>,
    }

    impl FakeRunner {
        pub fn with_programs(programs: &[&str]) -> FakeRunner {
            FakeRunner { programs: programs.iter().map(|p| p.to_string()).collect(), ..Default::default() }
        }

        pub fn answer(mut self, prefix: &str, code: i32, stdout: &str) -> FakeRunner {
            self.answers.push((
                prefix.to_string(),
                CmdOutput { code: Some(code), stdout: stdout.as_bytes().to_vec(), stderr: Vec::new() },
            ));
            self
        }

        pub fn ran(&self) -> Vec<Cmd> {
            self.ran.lock().map(|v| v.clone()).unwrap_or_default()
        }
    }

    impl CommandRunner for FakeRunner {
        fn output(&self, cmd: &Cmd) -> Result<CmdOutput, QuotaError> {
            if let Ok(mut v) = self.ran.lock() {
                v.push(cmd.clone());
            }
            let line = cmd.argv().join(" ");
            Ok(self
                .answers
                .iter()
                .find(|(p, _)| line.starts_with(p.as_str()))
                .map(|(_, o)| o.clone())
                .unwrap_or(CmdOutput { code: Some(0), ..Default::default() }))
        }

        fn which(&self, program: &str) -> Option<PathBuf> {
            self.programs.contains(program).then(|| PathBuf::from("/usr/sbin").join(program))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_odd_words() {
        let c = Cmd::new("btrfs").args(["qgroup", "limit", "1024"]).arg("/vz/private/my ct");
        assert_eq!(c.to_string(), "btrfs qgroup limit 1024 '/vz/private/my ct'");
        assert_eq!(Cmd::new("vzdqload").arg("101").stdin("x").to_string(), "vzdqload 101 <stdin>");
    }

    #[test]
    fn system_runner_reports_exit_codes() {
        let r = SystemRunner;
        assert!(r.which("sh").is_some());
        let out = r.output(&Cmd::new("sh").args(["-c", "cat; exit 3"]).stdin("hi"));
        let out = out.unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, b"hi");
        assert!(matches!(
            r.run(&Cmd::new("sh").args(["-c", "echo oops >&2; exit 1"])),
            Err(QuotaError::Command { stderr, .. }) if stderr == "oops"
        ));
    }
}
