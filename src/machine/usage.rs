//! What a running machine uses now, read from its scope's cgroup files (systemd owns the
//! cgroup; berth only reads it).

use std::fs;
use std::path::Path;

/// One sample of a scope's cgroup counters. `None` where the kernel has no such file (the
/// controller is off, or `memory.peak` before Linux 5.19).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// `cpu.stat` usage_usec.
    pub cpu_usec: Option<u64>,
    /// `memory.current`.
    pub memory_bytes: Option<u64>,
    /// `memory.peak`.
    pub memory_peak_bytes: Option<u64>,
    /// `io.stat` rbytes and wbytes summed over devices.
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
    /// `pids.current`.
    pub tasks: Option<u64>,
}

/// Reads `cgroup` (a directory such as /sys/fs/cgroup/machine.slice/machine-web.scope).
pub fn read(cgroup: &Path) -> Usage {
    let text = |file: &str| fs::read_to_string(cgroup.join(file)).ok();
    let number = |file: &str| text(file).and_then(|t| t.trim().parse().ok());
    let (io_read_bytes, io_write_bytes) = match text("io.stat") {
        Some(stat) => {
            let (r, w) = io_bytes(&stat);
            (Some(r), Some(w))
        }
        None => (None, None),
    };
    Usage {
        cpu_usec: text("cpu.stat").and_then(|s| key_value(&s, "usage_usec")),
        memory_bytes: number("memory.current"),
        memory_peak_bytes: number("memory.peak"),
        io_read_bytes,
        io_write_bytes,
        tasks: number("pids.current"),
    }
}

/// A `key value` line of a flat-keyed cgroup file.
fn key_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Sums `rbytes=` and `wbytes=` over the devices of `io.stat`.
fn io_bytes(stat: &str) -> (u64, u64) {
    let mut read = 0u64;
    let mut written = 0u64;
    for field in stat.split_whitespace() {
        if let Some(v) = field.strip_prefix("rbytes=") {
            read = read.saturating_add(v.parse().unwrap_or(0));
        } else if let Some(v) = field.strip_prefix("wbytes=") {
            written = written.saturating_add(v.parse().unwrap_or(0));
        }
    }
    (read, written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_cgroup_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cg = dir.path();
        fs::write(
            cg.join("cpu.stat"),
            "usage_usec 1500000\nuser_usec 1000000\n",
        )
        .expect("w");
        fs::write(cg.join("memory.current"), "1048576\n").expect("w");
        fs::write(
            cg.join("io.stat"),
            "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n8:0 rbytes=1 wbytes=2\n",
        )
        .expect("w");
        fs::write(cg.join("pids.current"), "7\n").expect("w");
        let usage = read(cg);
        assert_eq!(usage.cpu_usec, Some(1_500_000));
        assert_eq!(usage.memory_bytes, Some(1_048_576));
        assert_eq!(usage.memory_peak_bytes, None);
        assert_eq!(
            (usage.io_read_bytes, usage.io_write_bytes),
            (Some(4097), Some(8194))
        );
        assert_eq!(usage.tasks, Some(7));
    }
}
