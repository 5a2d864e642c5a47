//! Memory and CPUs of the running kernel (for a tree source the live host stands in).

use std::path::Path;

use super::fsread::{self, CONFIG_CAP, ReadError};

/// Totals from /proc/meminfo, in bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub memory_bytes: u64,
    pub swap_bytes: u64,
}

/// Parses /proc/meminfo (`MemTotal:  16316412 kB`).
pub fn parse_meminfo(text: &str) -> MemInfo {
    let mut m = MemInfo::default();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let Some(n) = words.next().and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        let bytes = match words.next() {
            Some("kB") => n.saturating_mul(1024),
            _ => n,
        };
        match key {
            "MemTotal" => m.memory_bytes = bytes,
            "SwapTotal" => m.swap_bytes = bytes,
            _ => {}
        }
    }
    m
}

/// Counts the `processor` entries of /proc/cpuinfo.
pub fn parse_cpuinfo(text: &str) -> u32 {
    let n = text.lines().filter(|l| l.split_once(':').is_some_and(|(k, _)| k.trim() == "processor")).count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Memory of the running kernel, read from `proc` (normally `/proc`).
pub fn memory(proc: &Path) -> Result<MemInfo, ReadError> {
    fsread::read_text(&proc.join("meminfo"), CONFIG_CAP).map(|t| parse_meminfo(&t))
}

/// CPUs of the running kernel: /proc/cpuinfo, else what the scheduler lets us use.
pub fn cpus(proc: &Path) -> u32 {
    let from_proc =
        fsread::read_text(&proc.join("cpuinfo"), fsread::TABLE_CAP).map(|t| parse_cpuinfo(&t)).unwrap_or(0);
    if from_proc > 0 {
        return from_proc;
    }
    std::thread::available_parallelism().map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX)).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo() {
        let m = parse_meminfo(
            "MemTotal:       16316412 kB\nMemFree:  1 kB\nSwapTotal:       2097148 kB\n\
             HugePages_Total:       0\ngarbage line\nMemTotal: notanumber kB\n",
        );
        assert_eq!(m.memory_bytes, 16316412 * 1024);
        assert_eq!(m.swap_bytes, 2097148 * 1024);
        assert_eq!(parse_meminfo(""), MemInfo::default());
    }

    #[test]
    fn cpuinfo() {
        let t = "processor\t: 0\nmodel name\t: x\n\nprocessor\t: 1\nflags: processor\n";
        assert_eq!(parse_cpuinfo(t), 2);
        // s390 style has no per-CPU `processor` key lines of this form.
        assert_eq!(parse_cpuinfo("vendor_id : IBM/S390\n"), 0);
    }

    #[test]
    fn live_host() {
        let p = Path::new("/proc");
        assert!(memory(p).unwrap().memory_bytes > 0);
        assert!(cpus(p) >= 1);
        assert!(cpus(Path::new("/nonexistent")) >= 1);
    }
}
