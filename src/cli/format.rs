//! Output formatting for the CLI.

use crate::api::{ImageEntry, MachineEntry};
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

/// The `berth images` table.
pub fn images_table(images: &[ImageEntry]) -> String {
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                size(i.size_bytes),
                timestamp(i.created_usec),
                short_digest(&i.digest),
                if i.origin.is_empty() {
                    "-".into()
                } else {
                    i.origin.clone()
                },
            ]
        })
        .collect();
    table(&["NAME", "SIZE", "CREATED", "DIGEST", "ORIGIN"], &rows)
}

/// The `berth list` table.
pub fn machines_table(machines: &[MachineEntry]) -> String {
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
            "NAME", "STATE", "UNIT", "LEADER", "IMAGE", "MODE", "HOSTNAME", "UIDS", "CREATED",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
            mode: "boot".into(),
            hostname: "web".into(),
            command: Vec::new(),
            uid_base: 524_288,
            machine_id: "0".repeat(32),
            created_usec: 0,
            root: "/r".into(),
            leader: 42,
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
