//! Signal names on the command line: `TERM`, `SIGTERM`, `15`, `RTMIN+3`.

/// Parses a signal name or number into its number.
pub fn parse(text: &str) -> Result<i32, String> {
    let bad = || {
        format!(
            "'{text}' is not a signal; give a name such as TERM, KILL, HUP, INT, USR1, RTMIN+3, or a number"
        )
    };
    if let Ok(number) = text.parse::<i32>() {
        return if (1..=libc::SIGRTMAX()).contains(&number) {
            Ok(number)
        } else {
            Err(bad())
        };
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(rt) = name.strip_prefix("RTMIN") {
        let offset: i32 = match rt.strip_prefix('+') {
            Some(n) => n.parse().map_err(|_| bad())?,
            None if rt.is_empty() => 0,
            None => return Err(bad()),
        };
        let number = libc::SIGRTMIN() + offset;
        return if number <= libc::SIGRTMAX() {
            Ok(number)
        } else {
            Err(bad())
        };
    }
    nix::sys::signal::Signal::iterator()
        .find(|s| s.as_str().strip_prefix("SIG") == Some(name))
        .map(|s| s as i32)
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse("TERM"), Ok(libc::SIGTERM));
        assert_eq!(parse("sigkill"), Ok(libc::SIGKILL));
        assert_eq!(parse("9"), Ok(9));
        assert_eq!(parse("RTMIN+3"), Ok(libc::SIGRTMIN() + 3));
        assert!(parse("BOGUS").is_err());
        assert!(parse("0").is_err());
        assert!(parse("RTMIN+99").is_err());
        assert!(parse("BOGUS").expect_err("bogus").contains("'BOGUS'"));
    }
}
