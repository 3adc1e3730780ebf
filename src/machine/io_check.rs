//! Whether IO properties can be enforced where a machine's data lives: the disk under it,
//! that disk's scheduler (BFQ, or io.cost, is what makes IOWeight work), and whether its
//! fsyncs share a filesystem journal with other machines. berth only reads the host's
//! settings; changing them is the admin's decision (`berth doctor` says how).

use std::fs;
use std::path::{Path, PathBuf};

/// One finding: fine or not, what was found, and how to fix it (empty when fine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub ok: bool,
    pub text: String,
    pub fix: String,
}

impl Finding {
    fn ok(text: String) -> Self {
        Self {
            ok: true,
            text,
            fix: String::new(),
        }
    }

    fn problem(text: String, fix: String) -> Self {
        Self {
            ok: false,
            text,
            fix,
        }
    }
}

/// The disk (whole device, not the partition) holding `path`, as (name, "MAJ:MIN").
fn disk_of(path: &Path) -> Option<(String, String)> {
    let meta = fs::metadata(path).ok()?;
    let dev = std::os::unix::fs::MetadataExt::dev(&meta);
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    if major == 0 {
        return None;
    }
    let sys = fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    let disk: PathBuf = if sys.join("partition").exists() {
        sys.parent()?.to_path_buf()
    } else {
        sys
    };
    let name = disk.file_name()?.to_string_lossy().into_owned();
    let numbers = fs::read_to_string(disk.join("dev")).ok()?.trim().to_owned();
    Some((name, numbers))
}

/// The active scheduler of disk `name` (the bracketed one in queue/scheduler).
fn scheduler(name: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/sys/block/{name}/queue/scheduler")).ok()?;
    let start = text.find('[')?;
    let end = text[start..].find(']')? + start;
    Some(text[start + 1..end].to_owned())
}

/// Whether io.cost is enabled for disk `numbers` (MAJ:MIN).
fn io_cost_enabled(numbers: &str) -> bool {
    fs::read_to_string("/sys/fs/cgroup/io.cost.qos").is_ok_and(|qos| {
        qos.lines()
            .any(|l| l.starts_with(&format!("{numbers} ")) && l.contains("enable=1"))
    })
}

/// Checks where `data` (a machine's root directory, or its volume file) lives. `own_fs` says
/// whether the machine has a filesystem of its own (`--storage volume`); `None` checks only
/// the disk (for berth's directories as a whole).
pub fn check(data: &Path, own_fs: Option<bool>) -> Vec<Finding> {
    let mut findings = Vec::new();
    match disk_of(data) {
        None => findings.push(Finding::problem(
            format!(
                "{} is on a filesystem without a single disk of its own (btrfs, overlay, tmpfs, network): IO limits apply to the disks below it, if any",
                data.display()
            ),
            "put /var/lib/berth on a plain disk or partition (ext4 or xfs) to control IO per machine".into(),
        )),
        Some((name, numbers)) => {
            let scheduler = scheduler(&name).unwrap_or_else(|| "unknown".into());
            if scheduler == "bfq" {
                findings.push(Finding::ok(format!(
                    "disk {name} ({numbers}) uses the BFQ scheduler: IOWeight and IODeviceWeight are enforced"
                )));
            } else if io_cost_enabled(&numbers) {
                findings.push(Finding::ok(format!(
                    "disk {name} ({numbers}) has io.cost enabled: IOWeight and IODeviceWeight are enforced"
                )));
            } else {
                findings.push(Finding::problem(
                    format!(
                        "disk {name} ({numbers}) uses the '{scheduler}' scheduler without io.cost: IOWeight and IODeviceWeight have no effect there (bandwidth and IOPS limits still work)"
                    ),
                    format!(
                        "echo bfq > /sys/block/{name}/queue/scheduler, and keep it with a udev rule: ACTION==\"add|change\", KERNEL==\"{name}\", ATTR{{queue/scheduler}}=\"bfq\""
                    ),
                ));
            }
            // systemd enables it below the root when a unit needs it; it must be available.
            if fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
                .is_ok_and(|c| c.split_whitespace().any(|w| w == "io"))
            {
                findings.push(Finding::ok(
                    "the io cgroup controller is available to systemd's units".into(),
                ));
            } else {
                findings.push(Finding::problem(
                    "the io cgroup controller is not available (cgroup.controllers at the root lacks it): no IO property works".into(),
                    "boot with the unified cgroup hierarchy (systemd.unified_cgroup_hierarchy=1) on a kernel with CONFIG_BLK_CGROUP".into(),
                ));
            }
        }
    }
    if own_fs == Some(true) {
        findings.push(Finding::ok(
            "the machine has a filesystem of its own: its fsyncs don't wait on other machines' writes".into(),
        ));
    } else if own_fs == Some(false) {
        findings.push(Finding::problem(
            "the machine shares its filesystem (and that filesystem's journal) with other machines: its fsyncs wait while a neighbour's buffered writes are flushed, whatever the IO limits".into(),
            "create the machine with --storage volume --disk-size SIZE to give it its own filesystem".into(),
        ));
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_filesystem_is_reported_with_its_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let findings = check(dir.path(), Some(false));
        let shared = findings.last().expect("findings");
        assert!(!shared.ok);
        assert!(shared.fix.contains("--storage volume"), "{shared:?}");
        assert!(check(dir.path(), Some(true)).last().is_some_and(|f| f.ok));
        assert!(
            check(dir.path(), None)
                .iter()
                .all(|f| !f.text.contains("filesystem of its own"))
        );
    }
}
