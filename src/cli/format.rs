//! Output formatting for the CLI.

use crate::api::{ImageEntry, MachineEntry, MachineStatus, PortEntry, SnapshotEntry, UsageEntry};
use crate::machine::RANGE_SIZE;

/// Bytes in the binary units `ls -h` and systemctl use: `512B`, `1.5K`, `271.3M`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["K", "M", "G", "T", "P", "E"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    #[allow(clippy::cast_precision_loss)] // display only
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// Microseconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC`; `-` for 0.
pub fn timestamp(usec: u64) -> String {
    if usec == 0 {
        return "-".into();
    }
    let secs = usec / 1_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(i64::MAX));
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        u32::try_from(m).unwrap_or(0),
        u32::try_from(d).unwrap_or(0),
    )
}

/// A digest shortened for tables: `sha256:0123456789ab`.
pub fn short_digest(digest: &str) -> String {
    match digest.split_once(':') {
        Some((algo, hex)) => format!("{algo}:{}", &hex[..hex.len().min(12)]),
        None if digest.is_empty() => "-".into(),
        None => digest.into(),
    }
}

/// Left-aligned columns separated by two spaces, header first.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// `NAME` or `NAME@VERSION`.
fn image_reference(name: &str, version: &str) -> String {
    if version.is_empty() {
        name.to_owned()
    } else {
        format!("{name}@{version}")
    }
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.to_owned()
    }
}

/// The `berth images` table: one line per image version, each name's newest first.
pub fn images_table(images: &[ImageEntry]) -> String {
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                or_dash(&i.version),
                size(i.size_bytes),
                timestamp(i.created_usec),
                short_digest(&i.digest),
                or_dash(&i.origin),
            ]
        })
        .collect();
    table(
        &["NAME", "VERSION", "SIZE", "CREATED", "DIGEST", "ORIGIN"],
        &rows,
    )
}

/// `NAME@VERSION` of the image an entry's base (`NAME[@VERSION][@DIGEST]`) names.
fn base_reference(base: &str) -> String {
    let mut parts = base.split('@');
    let name = parts.next().unwrap_or_default();
    let version = parts.find(|p| !p.contains(':')).unwrap_or_default();
    image_reference(name, version)
}

/// `berth images --tree`: every image under the image it was built or committed from.
pub fn images_tree(images: &[ImageEntry]) -> String {
    let references: Vec<String> = images
        .iter()
        .map(|i| image_reference(&i.name, &i.version))
        .collect();
    let parent = |i: &ImageEntry| {
        let base = base_reference(&i.base);
        references
            .iter()
            .position(|r| !i.base.is_empty() && *r == base)
    };
    let mut out = Vec::new();
    // Depth-first from each image without a parent in the pool.
    let mut stack: Vec<(usize, usize)> = (0..images.len())
        .rev()
        .filter(|&i| parent(&images[i]).is_none())
        .map(|i| (i, 0))
        .collect();
    let mut shown = vec![false; images.len()];
    while let Some((index, depth)) = stack.pop() {
        if std::mem::replace(&mut shown[index], true) {
            continue;
        }
        let image = &images[index];
        let mut line = format!(
            "{}{}",
            if depth == 0 {
                String::new()
            } else {
                format!("{}└─ ", "   ".repeat(depth - 1))
            },
            references[index]
        );
        if !image.digest.is_empty() {
            line.push_str(&format!("  {}", short_digest(&image.digest)));
        }
        if !image.base.is_empty() && depth == 0 {
            line.push_str(&format!("  (built from {}, no longer here)", image.base));
        }
        if !image.commit.is_empty() {
            line.push_str(&format!(
                "  commit {}",
                &image.commit[..image.commit.len().min(12)]
            ));
        }
        line.push_str(&format!("  {}", or_dash(&image.origin)));
        out.push(line);
        for child in (0..images.len()).rev() {
            if parent(&images[child]) == Some(index) {
                stack.push((child, depth + 1));
            }
        }
    }
    out.join("\n")
}

/// `berth list --outdated`: (machine, image, newer image, reason).
pub fn outdated_table(rows: &[(String, String, String, String)]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(m, i, n, r)| vec![m.clone(), i.clone(), n.clone(), r.clone()])
        .collect();
    table(&["NAME", "IMAGE", "NEWER", "WHY"], &rows)
}

/// The `berth ports` table: IPv4 goes by nftables DNAT, IPv6 through berthd's relay.
pub fn ports_table(ports: &[PortEntry]) -> String {
    let rows: Vec<Vec<String>> = ports
        .iter()
        .map(|p| {
            vec![
                p.machine.clone(),
                p.protocol.clone(),
                p.host_port.to_string(),
                format!("{}:{}", p.ipv4, p.machine_port),
                format!("[{}]:{}", p.ipv6, p.machine_port),
                if p.active { "active" } else { "stopped" }.to_owned(),
            ]
        })
        .collect();
    table(
        &[
            "MACHINE",
            "PROTO",
            "HOST PORT",
            "IPV4 (NFT DNAT)",
            "IPV6 (RELAY)",
            "STATE",
        ],
        &rows,
    )
}

/// The `berth snapshot list` table.
pub fn snapshots_table(snapshots: &[SnapshotEntry]) -> String {
    let rows: Vec<Vec<String>> = snapshots
        .iter()
        .map(|s| {
            vec![
                s.snapshot.clone(),
                timestamp(s.created_usec),
                s.image.clone(),
                s.storage.clone(),
            ]
        })
        .collect();
    table(&["SNAPSHOT", "CREATED", "IMAGE", "STORAGE"], &rows)
}

/// The `berth list` table.
pub fn machines_table(machines: &[MachineEntry]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(0));
    let rows: Vec<Vec<String>> = machines
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.state.clone(),
                if m.unit.is_empty() {
                    "-".into()
                } else {
                    m.unit.clone()
                },
                if m.leader == 0 {
                    "-".into()
                } else {
                    m.leader.to_string()
                },
                uptime(m.started_usec, now),
                m.image.clone(),
                m.mode.clone(),
                m.hostname.clone(),
                format!("{}-{}", m.uid_base, m.uid_base + (RANGE_SIZE - 1)),
                timestamp(m.created_usec),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "STATE", "UNIT", "LEADER", "UPTIME", "IMAGE", "MODE", "HOSTNAME", "UIDS",
            "CREATED",
        ],
        &rows,
    )
}

/// How long since `since_usec`: "45s", "12min 3s", "3h 2min", "2d 4h"; "-" for 0.
pub fn uptime(since_usec: u64, now_usec: u64) -> String {
    if since_usec == 0 {
        return "-".into();
    }
    let s = now_usec.saturating_sub(since_usec) / 1_000_000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}min {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}min", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

fn limit(value: u64) -> String {
    if value == u64::MAX {
        "-".into()
    } else {
        size(value)
    }
}

/// `berth top`'s table: each machine's use now, CPU % from the two samples.
pub fn usage_table(before: &[UsageEntry], now: &[UsageEntry]) -> String {
    let known = |v: u64, f: &dyn Fn(u64) -> String| {
        if v == u64::MAX { "-".to_owned() } else { f(v) }
    };
    let rows: Vec<Vec<String>> = now
        .iter()
        .map(|u| {
            vec![
                u.name.clone(),
                cpu_percent(before.iter().find(|b| b.name == u.name), u),
                known(u.cpu_usec, &|v| format!("{:.1}s", v as f64 / 1e6)),
                known(u.memory_bytes, &size),
                known(u.memory_peak_bytes, &size),
                known(u.io_read_bytes, &size),
                known(u.io_write_bytes, &size),
                known(u.tasks, &|v| v.to_string()),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "CPU%", "CPU-TIME", "MEMORY", "PEAK", "IO-READ", "IO-WRITE", "TASKS",
        ],
        &rows,
    )
}

/// CPU use between two samples, in percent of one CPU.
pub fn cpu_percent(before: Option<&UsageEntry>, now: &UsageEntry) -> String {
    match before {
        Some(b)
            if b.cpu_usec != u64::MAX
                && now.cpu_usec != u64::MAX
                && now.sample_usec > b.sample_usec =>
        {
            let used = now.cpu_usec.saturating_sub(b.cpu_usec) as f64;
            let elapsed = (now.sample_usec - b.sample_usec) as f64;
            format!("{:.1}", 100.0 * used / elapsed)
        }
        _ => "-".into(),
    }
}

/// The usage lines of `berth status`.
pub fn usage_lines(before: Option<&UsageEntry>, now: &UsageEntry) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:>12}: {v}\n"));
    let known = |v: u64, f: &dyn Fn(u64) -> String| {
        if v == u64::MAX { "-".to_owned() } else { f(v) }
    };
    line(
        "CPU now",
        format!(
            "{}% of one CPU, {} in all",
            cpu_percent(before, now),
            known(now.cpu_usec, &|v| format!("{:.3}s", v as f64 / 1e6))
        ),
    );
    line(
        "Memory now",
        format!(
            "{} (peak {})",
            known(now.memory_bytes, &size),
            known(now.memory_peak_bytes, &size)
        ),
    );
    line(
        "IO",
        format!(
            "{} read, {} written",
            known(now.io_read_bytes, &size),
            known(now.io_write_bytes, &size)
        ),
    );
    out
}

/// `berth status`: like the top of `systemctl status`.
/// `usage` (from [`usage_lines`]) goes after the scope's accounting.
pub fn status(st: &MachineStatus, now_usec: u64, usage: &str) -> String {
    let m = &st.machine;
    let mut out = String::new();
    let line = |out: &mut String, k: &str, v: String| out.push_str(&format!("{k:>12}: {v}\n"));
    let dot = if m.state == "running" { "●" } else { "○" };
    line(
        &mut out,
        &format!("{dot} {}", m.name),
        format!("{} machine from image {}", m.mode, m.image),
    );
    let since = if m.started_usec == 0 {
        String::new()
    } else {
        format!(
            " since {}; {} ago",
            timestamp(m.started_usec),
            uptime(m.started_usec, now_usec)
        )
    };
    line(&mut out, "State", format!("{}{since}", m.state));
    if !m.last_exit.is_empty() {
        line(&mut out, "Last exit", m.last_exit.clone());
    }
    if !m.unit.is_empty() {
        line(
            &mut out,
            "Unit",
            format!("{} ({}/{})", m.unit, st.active_state, st.sub_state),
        );
        line(&mut out, "Leader", m.leader.to_string());
    }
    if m.mode == "app" {
        line(&mut out, "Command", m.command.join(" "));
    }
    line(&mut out, "Hostname", m.hostname.clone());
    let network = match m.addresses.as_slice() {
        [v4, v6, link] => format!("{} ({v4}, {v6}; host link {link})", m.network),
        _ => m.network.clone(),
    };
    line(&mut out, "Network", network);
    if !m.ports.is_empty() {
        line(&mut out, "Ports", m.ports.join(", "));
    }
    line(&mut out, "Machine ID", m.machine_id.clone());
    line(
        &mut out,
        "UIDs",
        format!("{}-{}", m.uid_base, m.uid_base + (RANGE_SIZE - 1)),
    );
    line(&mut out, "Root", format!("{} ({})", m.root, m.storage));
    if m.disk_size > 0 {
        line(
            &mut out,
            "Volume",
            format!(
                "{} ext4 of its own, {} of the host's disk in use",
                size(m.disk_size),
                size(m.disk_allocated)
            ),
        );
    }
    if !m.unit.is_empty() {
        line(&mut out, "Tasks", st.tasks_current.to_string());
        line(&mut out, "Memory", limit(st.memory_current));
        if st.cpu_usage_nsec != u64::MAX {
            line(
                &mut out,
                "CPU",
                format!("{:.3}s", st.cpu_usage_nsec as f64 / 1_000_000_000.0),
            );
        }
        out.push_str(usage);
        let limits: Vec<String> = st.limits.iter().map(|(k, v)| format!("{k}={v}")).collect();
        line(&mut out, "Limits", limits.join(" "));
        line(&mut out, "CGroup", st.control_group.clone());
        let mut group = None;
        for (cgroup, pid, command) in &st.processes {
            if group != Some(cgroup) {
                out.push_str(&format!(
                    "{:>14}{}\n",
                    "",
                    if cgroup.is_empty() { "/" } else { cgroup }
                ));
                group = Some(cgroup);
            }
            out.push_str(&format!("{:>16}{pid} {command}\n", ""));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_percent_comes_from_two_samples() {
        let sample = |t, cpu| UsageEntry {
            name: "web".into(),
            sample_usec: t,
            cpu_usec: cpu,
            memory_bytes: 1 << 20,
            memory_peak_bytes: u64::MAX,
            io_read_bytes: 0,
            io_write_bytes: 0,
            tasks: 3,
        };
        let (a, b) = (sample(1_000_000, 500_000), sample(3_000_000, 1_500_000));
        assert_eq!(cpu_percent(Some(&a), &b), "50.0");
        assert_eq!(cpu_percent(None, &b), "-");
        let t = usage_table(&[a], &[b]);
        assert!(
            t.lines()
                .nth(1)
                .is_some_and(|l| l.contains("50.0") && l.contains("1.0M")),
            "{t}"
        );
    }

    #[test]
    fn uptimes_read_like_systemctl() {
        assert_eq!(uptime(0, 5), "-");
        assert_eq!(uptime(1_000_000, 46_000_000), "45s");
        assert_eq!(uptime(1, 3_723_000_001), "1h 2min");
        assert_eq!(uptime(1, 2 * 86_400_000_000 + 1), "2d 0h");
    }

    #[test]
    fn sizes_read_like_ls_h() {
        assert_eq!(size(0), "0B");
        assert_eq!(size(1023), "1023B");
        assert_eq!(size(1536), "1.5K");
        assert_eq!(size(284_459_622), "271.3M");
        assert_eq!(size(u64::MAX), "16.0E");
    }

    #[test]
    fn timestamps_are_utc_dates() {
        assert_eq!(timestamp(0), "-");
        assert_eq!(timestamp(1_000_000), "1970-01-01 00:00:01 UTC");
        // 2026-11-23 18:54:42 UTC
        assert_eq!(timestamp(1_795_460_082_000_000), "2026-11-23 18:54:42 UTC");
        assert_eq!(timestamp(951_782_400_000_000), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y");
    }

    #[test]
    fn machines_table_has_a_header_per_column() {
        let m = MachineEntry {
            name: "web".into(),
            state: "running".into(),
            unit: "machine-web.scope".into(),
            image: "deb".into(),
            image_digest: String::new(),
            mode: "boot".into(),
            hostname: "web".into(),
            command: Vec::new(),
            uid_base: 524_288,
            machine_id: "0".repeat(32),
            created_usec: 0,
            root: "/r".into(),
            leader: 42,
            started_usec: 0,
            ephemeral: false,
            last_exit: String::new(),
            storage: "copy".into(),
            disk_size: 0,
            disk_allocated: 0,
            network: "host".into(),
            addresses: Vec::new(),
            ports: Vec::new(),
        };
        let t = machines_table(&[m]);
        let lines: Vec<Vec<&str>> = t.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(lines[0].len(), lines[1].len(), "{t}");
        assert_eq!(lines[1][..4], ["web", "running", "machine-web.scope", "42"]);
    }

    #[test]
    fn short_digest_keeps_algorithm() {
        assert_eq!(
            short_digest("sha256:0123456789abcdef"),
            "sha256:0123456789ab"
        );
        assert_eq!(short_digest(""), "-");
    }
}
