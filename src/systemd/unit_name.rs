//! Unit names for machines, escaped as systemd-machined and systemd-nspawn do, so systemd's
//! tools and berth agree on `machine-NAME.scope`.

/// systemd's `unit_name_escape()`: `/` becomes `-`; `-`, `\` and characters outside
/// `[A-Za-z0-9:_.]` become `\xNN`; a leading `.` is escaped too.
pub fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.') => {
                out.push(b as char)
            }
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// The scope of machine `name`: `machine-NAME.scope`, escaped.
pub fn machine_scope(name: &str) -> String {
    format!("machine-{}.scope", escape(name))
}

/// The boot-time service of machine `name`: `berth@NAME.service`, the instance escaped the
/// same way (as `systemd-nspawn@NAME.service` is).
pub fn machine_service(name: &str) -> String {
    format!("berth@{}.service", escape(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_systemd() {
        assert_eq!(machine_scope("web"), "machine-web.scope");
        assert_eq!(machine_scope("web-1"), "machine-web\\x2d1.scope");
        assert_eq!(machine_scope("a.b_c"), "machine-a.b_c.scope");
        assert_eq!(escape(".x"), "\\x2ex");
        assert_eq!(machine_service("web-1"), "berth@web\\x2d1.service");
    }
}
