//! Image versions: which strings berth accepts as a version, and how versions are ordered.
//!
//! The order is systemd's (`strverscmp_improved()`, what `systemd-analyze compare-versions`
//! and sd-boot use), so berth sorts versions as the rest of the system does.

use std::cmp::Ordering;

use thiserror::Error;

/// The longest version berth accepts (it is part of a directory name).
pub const MAX_VERSION_LEN: usize = 64;

const ALLOWED: &str =
    "letters, digits and '.', '~', '^', '+', '-', starting with a letter or digit";

/// Why a version (or a `NAME@VERSION` reference) was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum VersionError {
    #[error(
        "the image version is empty: write NAME@VERSION with a version such as 1.0, or NAME alone"
    )]
    Empty,
    #[error("image version '{version}' is longer than {MAX_VERSION_LEN} characters")]
    TooLong { version: String },
    #[error("image version '{version}' contains '{bad}': only {ALLOWED} are allowed")]
    BadCharacter { version: String, bad: char },
    #[error("image version '{version}' starts with '{first}': only {ALLOWED} are allowed")]
    BadStart { version: String, first: char },
}

/// Checks a version as berth stores it: the directory `NAME.v/NAME_VERSION`, so no `_` (the
/// separator) and no `/`.
pub fn validate(version: &str) -> Result<(), VersionError> {
    let Some(first) = version.chars().next() else {
        return Err(VersionError::Empty);
    };
    if version.len() > MAX_VERSION_LEN {
        return Err(VersionError::TooLong {
            version: version.to_owned(),
        });
    }
    if let Some(bad) = version
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '~' | '^' | '+' | '-')))
    {
        return Err(VersionError::BadCharacter {
            version: version.to_owned(),
            bad,
        });
    }
    if !first.is_ascii_alphanumeric() {
        return Err(VersionError::BadStart {
            version: version.to_owned(),
            first,
        });
    }
    Ok(())
}

/// Splits `NAME` or `NAME@VERSION`; the version is validated here, the name is left to the
/// caller (`crate::name::validate`).
pub fn parse_reference(text: &str) -> Result<(String, Option<String>), VersionError> {
    match text.split_once('@') {
        None => Ok((text.to_owned(), None)),
        Some((name, version)) => {
            validate(version)?;
            Ok((name.to_owned(), Some(version.to_owned())))
        }
    }
}

/// The newest of `versions` by [`compare`]; of versions that compare equal (`1.01` and
/// `1.1`) the bytewise greatest, so the answer doesn't depend on the input's order.
pub fn newest<'a>(versions: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    versions.into_iter().max_by(|a, b| total_order(a, b))
}

/// Sorts newest first, in the same total order as [`newest`].
pub fn sort_newest_first(versions: &mut [String]) {
    versions.sort_by(|a, b| total_order(b, a));
}

fn total_order(a: &str, b: &str) -> Ordering {
    compare(a, b).then_with(|| a.cmp(b))
}

/// Compares two versions as systemd's `strverscmp_improved()` does (a port of
/// src/fundamental/string-util-fundamental.c).
///
/// Each string is split into numeric and alphabetic segments, each optionally prefixed:
/// `~` (pre-release, older than anything, even the end of the string), `-` (version/release
/// separator), `^` (patched release, newer than `-`), `.` (point release); no prefix is
/// newest. Leading zeros of numbers don't count, numbers are newer than letters, characters
/// other than ASCII letters, digits and `~-^.` are dropped and only separate segments.
///
/// Ordered oldest to newest: `122.1`, `123~rc1-1`, `123`, `123-a`, `123-a.1`, `123-1`,
/// `123-1.1`, `123^post1`, `123.a-1`, `123.1-1`, `123a-1`, `124-1`.
pub fn compare(a: &str, b: &str) -> Ordering {
    // C strings end at the first NUL.
    let mut a = Cursor::new(a.split('\0').next().unwrap_or_default());
    let mut b = Cursor::new(b.split('\0').next().unwrap_or_default());
    loop {
        a.skip_invalid();
        b.skip_invalid();

        // The string with '~' here is older, even than one that ends here.
        if let Some(order) = prefix_order(&mut a, &mut b, b'~') {
            return order;
        }

        // Otherwise the string with more segments is newer.
        if a.at_end() || b.at_end() {
            return a.c_char().cmp(&b.c_char());
        }

        for prefix in [b'-', b'^', b'.'] {
            if let Some(order) = prefix_order(&mut a, &mut b, prefix) {
                return order;
            }
        }

        let order = if a.peek().is_ascii_digit() || b.peek().is_ascii_digit() {
            // An empty numeric segment (the other string has letters or nothing here) is
            // older than any number.
            let (a_digits, b_digits) = (a.run(u8::is_ascii_digit), b.run(u8::is_ascii_digit));
            let (a_number, b_number) = (trim_zeros(a_digits), trim_zeros(b_digits));
            (!a_digits.is_empty())
                .cmp(&!b_digits.is_empty())
                .then(a_number.len().cmp(&b_number.len()))
                .then_with(|| a_number.cmp(b_number))
        } else {
            let (a_letters, b_letters) = (
                a.run(u8::is_ascii_alphabetic),
                b.run(u8::is_ascii_alphabetic),
            );
            // Bytewise, and a prefix is older: exactly strncmp() over the shorter, then length.
            a_letters.cmp(b_letters)
        };
        if order != Ordering::Equal {
            return order;
        }
    }
}

/// systemd's handling of one prefix character: if either string has it here, the one
/// without it is newer; if both have it, both step over it.
fn prefix_order(a: &mut Cursor, b: &mut Cursor, prefix: u8) -> Option<Ordering> {
    let (a_has, b_has) = (a.peek() == prefix, b.peek() == prefix);
    if !a_has && !b_has {
        return None;
    }
    let order = (!a_has).cmp(&!b_has);
    if order != Ordering::Equal {
        return Some(order);
    }
    a.advance();
    b.advance();
    None
}

fn trim_zeros(digits: &[u8]) -> &[u8] {
    let zeros = digits.iter().take_while(|&&d| d == b'0').count();
    &digits[zeros..]
}

/// A position in a version string, reading it as the C code reads a NUL-terminated one.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            bytes: text.as_bytes(),
            pos: 0,
        }
    }

    /// The current byte, 0 at the end (the C string's terminator).
    fn peek(&self) -> u8 {
        self.bytes.get(self.pos).copied().unwrap_or(0)
    }

    /// The current byte as the C code's `char`, which is signed on x86-64: the comparison at
    /// the end of one string sees a non-ASCII byte there as older than the end.
    fn c_char(&self) -> i8 {
        i8::from_ne_bytes([self.peek()])
    }

    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn advance(&mut self) {
        self.pos = (self.pos + 1).min(self.bytes.len());
    }

    fn skip_invalid(&mut self) {
        while !self.at_end() && !is_version_char(self.peek()) {
            self.pos += 1;
        }
    }

    /// Steps over the bytes matching `class` and returns them.
    fn run(&mut self, class: fn(&u8) -> bool) -> &'a [u8] {
        let start = self.pos;
        while !self.at_end() && class(&self.peek()) {
            self.pos += 1;
        }
        &self.bytes[start..self.pos]
    }
}

fn is_version_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'~' | b'-' | b'^' | b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// systemd's test-string-util.c list: each entry is older than every later one.
    const ASCENDING: &[&str] = &[
        "~1",
        "",
        "ab",
        "abb",
        "abc",
        "0001",
        "002",
        "12",
        "122",
        "122.9",
        "123~rc1",
        "123",
        "123-a",
        "123-a.1",
        "123-a1",
        "123-a1.1",
        "123-3",
        "123-3.1",
        "123^patch1",
        "123^1",
        "123.a-1",
        "123.1-1",
        "123a-1",
        "124",
    ];

    fn assert_older(older: &str, newer: &str) {
        assert_eq!(compare(older, newer), Ordering::Less, "{older} < {newer}");
        assert_eq!(
            compare(newer, older),
            Ordering::Greater,
            "{newer} > {older}"
        );
        assert_eq!(compare(older, older), Ordering::Equal, "{older}");
        assert_eq!(compare(newer, newer), Ordering::Equal, "{newer}");
    }

    #[test]
    fn systemd_ordering_list() {
        for (i, older) in ASCENDING.iter().enumerate() {
            for newer in &ASCENDING[i + 1..] {
                assert_older(older, newer);
            }
        }
        let comment = [
            "122.1",
            "123~rc1-1",
            "123",
            "123-a",
            "123-a.1",
            "123-1",
            "123-1.1",
            "123^post1",
            "123.a-1",
            "123.1-1",
            "123a-1",
            "124-1",
        ];
        for pair in comment.windows(2) {
            assert_older(pair[0], pair[1]);
        }
        assert_older("1.9", "1.10");
        assert_older("1.0", "1.9");
    }

    #[test]
    fn systemd_pairs() {
        let pairs = [
            ("123.45-67.88", "123.45-67.89"),
            ("123.45-67.89", "123.45-67.89a"),
            ("123.45-67.ab", "123.45-67.89"),
            ("123.45-67.9", "123.45-67.89"),
            ("123.45-67", "123.45-67.89"),
            ("123.45-66.89", "123.45-67.89"),
            ("123.45-9.99", "123.45-67.89"),
            ("123.42-99.99", "123.45-67.89"),
            ("123-99.99", "123.45-67.89"),
            // '~': pre-releases
            ("123~rc1-99.99", "123.45-67.89"),
            ("123~rc1-99.99", "123-45.67.89"),
            ("123~rc1-99.99", "123~rc2-67.89"),
            ("123~rc1-99.99", "123^aa2-67.89"),
            ("123~rc1-99.99", "123aa2-67.89"),
            // '-': between version and release
            ("123-99.99", "123^aa2-67.89"),
            ("123-99.99", "123aa2-67.89"),
            // '^': patched releases
            ("123^45-67.89", "123.45-67.89"),
            ("123^aa1-99.99", "123^aa2-67.89"),
            ("123^aa2-67.89", "123aa2-67.89"),
            // '.': point releases
            ("123.aa2-67.89", "123aa2-67.89"),
            ("123.aa2-67.89", "123.ab2-67.89"),
        ];
        for (older, newer) in pairs {
            assert_older(older, newer);
        }
    }

    #[test]
    fn systemd_corner_cases_and_invalid_characters() {
        use Ordering::*;
        let cases = [
            ("123_aa2-67.89", "123aa+2-67.89", Equal),
            ("123.", "123", Greater),
            ("12_3", "123", Less),
            ("12_3", "12", Greater),
            ("12_3", "12.3", Greater),
            ("123.0", "123", Greater),
            ("123_0", "123", Greater),
            ("123..0", "123.0", Less),
            ("0_", "0", Equal),
            ("_0_", "0", Equal),
            ("_0", "0", Equal),
            ("0", "0___", Equal),
            ("", "_", Equal),
            ("_", "", Equal),
            ("_", "_", Equal),
            ("", "~", Greater),
            ("~", "", Less),
            ("~", "~", Equal),
            // C strings end at NUL; a signed char after '~' is older than the end.
            ("1\0garbage", "1", Equal),
            ("1~\u{e9}", "1~", Less),
            ("1~_", "1~", Greater),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare(a, b), want, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn rpm_compatibility_cases() {
        use Ordering::*;
        let cases = [
            ("1.0", "1.0", Equal),
            ("1.0", "2.0", Less),
            ("2.0.1", "2.0.1", Equal),
            ("2.0", "2.0.1", Less),
            ("2.0.1a", "2.0.1", Greater),
            ("5.5p1", "5.5p2", Less),
            ("5.5p10", "5.5p10", Equal),
            ("5.5p1", "5.5p10", Less),
            ("10xyz", "10.1xyz", Greater),
            ("xyz10", "xyz10.1", Less),
            ("xyz.4", "xyz.4", Equal),
            ("xyz.4", "8", Less),
            ("xyz.4", "2", Less),
            ("5.5p2", "5.6p1", Less),
            ("5.6p1", "6.5p1", Less),
            ("6.0.rc1", "6.0", Greater),
            ("10b2", "10a1", Greater),
            ("10a2", "10b2", Less),
            ("1.0a", "1.0aa", Less),
            ("10.0001", "10.1", Equal),
            ("10.0001", "10.0039", Less),
            ("4.999.9", "5.0", Less),
            ("20101121", "20101122", Less),
            ("2_0", "2_0", Equal),
            ("2.0", "2_0", Less),
            // tilde
            ("1.0~rc1", "1.0", Less),
            ("1.0~rc1", "1.0~rc2", Less),
            ("1.0~rc1~git123", "1.0~rc1", Less),
            // caret
            ("1.0^", "1.0", Greater),
            ("1.0^git1", "1.0", Greater),
            ("1.0^git1", "1.0^git2", Less),
            ("1.0^git1", "1.01", Less),
            ("1.0^20160101", "1.0^20160101", Equal),
            ("1.0^20160101", "1.0.1", Less),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare(a, b), want, "{a} vs {b}");
            assert_eq!(compare(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn newest_and_sorting_agree_and_ignore_input_order() {
        assert_eq!(newest(["1.9", "1.10", "1.0", "1.10~rc1"]), Some("1.10"));
        assert_eq!(newest(std::iter::empty()), None);
        assert_eq!(newest(["10.1", "10.0001"]), newest(["10.0001", "10.1"]));

        let mut versions: Vec<String> = ["1.0", "2~beta", "1.10", "2", "1.9", "2^fix1", "10.1"]
            .map(String::from)
            .to_vec();
        sort_newest_first(&mut versions);
        assert_eq!(
            versions,
            ["10.1", "2^fix1", "2", "2~beta", "1.10", "1.9", "1.0"]
        );
        let mut tied = vec!["10.1".to_owned(), "10.0001".to_owned()];
        sort_newest_first(&mut tied);
        assert_eq!(Some(tied[0].as_str()), newest(["10.0001", "10.1"]));
    }

    #[test]
    fn validate_accepts_berth_versions_only() {
        for good in [
            "1",
            "1.0",
            "12~rc1",
            "2^post1",
            "1.2-3",
            "1+git",
            "a",
            &"9".repeat(64),
        ] {
            assert_eq!(validate(good), Ok(()), "{good}");
        }
        assert_eq!(validate(""), Err(VersionError::Empty));
        assert!(matches!(
            validate(&"1".repeat(65)),
            Err(VersionError::TooLong { .. })
        ));
        for (bad, c) in [
            ("1_2", '_'),
            ("1/2", '/'),
            ("1 2", ' '),
            ("é", 'é'),
            ("1@2", '@'),
        ] {
            assert_eq!(
                validate(bad),
                Err(VersionError::BadCharacter {
                    version: bad.to_owned(),
                    bad: c
                }),
                "{bad}"
            );
        }
        for (bad, c) in [
            ("-1", '-'),
            (".1", '.'),
            ("~rc", '~'),
            ("^1", '^'),
            ("+1", '+'),
        ] {
            assert!(
                matches!(validate(bad), Err(VersionError::BadStart { first, .. }) if first == c),
                "{bad}"
            );
        }
        let message = validate("1_2").expect_err("underscore").to_string();
        assert!(
            message.contains("'1_2'") && message.contains("'_'"),
            "{message}"
        );
        assert!(message.contains("letters, digits"), "{message}");
    }

    #[test]
    fn parse_reference_splits_name_and_version() {
        assert_eq!(parse_reference("debian"), Ok(("debian".into(), None)));
        assert_eq!(
            parse_reference("debian@12.5"),
            Ok(("debian".into(), Some("12.5".into())))
        );
        assert_eq!(parse_reference("debian@"), Err(VersionError::Empty));
        assert!(matches!(
            parse_reference("a@1@2"),
            Err(VersionError::BadCharacter { bad: '@', .. })
        ));
        // The name is the caller's to check.
        assert_eq!(parse_reference("@1"), Ok((String::new(), Some("1".into()))));
    }
}
