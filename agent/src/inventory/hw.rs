//! Memory and CPUs of the running kernel, through sysinfo (for a tree source the live host
//! stands in).

use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

/// Totals of /proc/meminfo, in bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub memory_bytes: u64,
    pub swap_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum HwError {
    #[error("cannot read system information: {0}")]
    System(#[source] sysinfo::Error),
    /// sysinfo reports an unreadable /proc/meminfo as zero memory.
    #[error("/proc/meminfo gives no MemTotal")]
    NoMemTotal,
}

/// Memory of the running kernel: `MemTotal` and `SwapTotal` of /proc/meminfo.
pub fn memory() -> Result<MemInfo, HwError> {
    let kind = RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram().with_swap());
    let sys = System::new_with_specifics(kind).map_err(HwError::System)?;
    if sys.total_memory() == 0 {
        return Err(HwError::NoMemTotal);
    }
    Ok(MemInfo { memory_bytes: sys.total_memory(), swap_bytes: sys.total_swap() })
}

/// CPUs of the running kernel (the online ones, as /proc/stat lists them), else what the
/// scheduler lets us use.
pub fn cpus() -> u32 {
    let listed = System::new_with_specifics(RefreshKind::nothing().with_cpu(CpuRefreshKind::nothing()))
        .map(|s| s.cpus().len())
        .unwrap_or(0);
    if listed > 0 {
        return u32::try_from(listed).unwrap_or(u32::MAX);
    }
    std::thread::available_parallelism().map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX)).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_what_the_kernel_reports() {
        // sysinfo(2) counts the same pages as /proc/meminfo.
        let k = rustix::system::sysinfo();
        let unit = u64::from(k.mem_unit.max(1));
        let m = memory().unwrap();
        assert_eq!(m.memory_bytes, k.totalram * unit);
        assert_eq!(m.swap_bytes, k.totalswap * unit);
    }

    #[test]
    fn at_least_the_cpus_we_may_use() {
        let usable = std::thread::available_parallelism().unwrap().get();
        assert!(cpus() as usize >= usable, "{} < {usable}", cpus());
    }
}
