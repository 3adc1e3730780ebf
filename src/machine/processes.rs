//! The processes of a running machine, read from its scope's cgroup directory (systemd owns
//! the cgroup; berth only reads it).

use std::fs;
use std::path::Path;

/// One process: the cgroup it is in (relative to the scope), its PID and command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub cgroup: String,
    pub pid: u32,
    pub command: String,
}

/// Every process below `scope` (e.g. `/sys/fs/cgroup/machine.slice/machine-web.scope`), by
/// cgroup then PID.
pub fn list(scope: &Path) -> Vec<Process> {
    let mut out = Vec::new();
    walk(scope, scope, &mut out);
    out
}

fn walk(scope: &Path, dir: &Path, out: &mut Vec<Process>) {
    let relative = dir
        .strip_prefix(scope)
        .map(|p| format!("/{}", p.display()))
        .unwrap_or_default();
    let mut pids: Vec<u32> = fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        out.push(Process {
            cgroup: relative.clone(),
            pid,
            command: command_line(pid),
        });
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut children: Vec<_> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    children.sort();
    for child in children {
        walk(scope, &child, out);
    }
}

/// `/proc/PID/cmdline` with spaces between arguments (the name in brackets for kernel threads
/// or processes that just ended).
fn command_line(pid: u32) -> String {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let text: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if text.is_empty() {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        format!("[{}]", comm.trim())
    } else {
        text.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_nested_cgroups_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let scope = dir.path();
        fs::create_dir_all(scope.join("payload/init.scope")).expect("dirs");
        fs::write(scope.join("cgroup.procs"), "").expect("procs");
        fs::write(scope.join("payload/cgroup.procs"), "").expect("procs");
        let me = std::process::id();
        fs::write(
            scope.join("payload/init.scope/cgroup.procs"),
            format!("{me}\n"),
        )
        .expect("procs");
        let procs = list(scope);
        assert_eq!(procs.len(), 1);
        assert_eq!(procs[0].cgroup, "/payload/init.scope");
        assert_eq!(procs[0].pid, me);
        assert!(!procs[0].command.is_empty());
    }
}
