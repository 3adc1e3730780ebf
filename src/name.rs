//! Names of images and machines.
//!
//! One rule for both, so a machine can be named after its image and both work as hostnames
//! (systemd-machined requires `hostname_is_valid()` for machine names): 1 to 64 characters of
//! `[A-Za-z0-9._-]`, not starting with `.` or `-`, no `..`.

use thiserror::Error;

/// The longest name systemd accepts as a hostname (HOST_NAME_MAX).
pub const MAX_NAME_LEN: usize = 64;

/// Why a name was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NameError {
    #[error("{kind} name is empty")]
    Empty { kind: &'static str },
    #[error("{kind} name '{name}' is longer than {MAX_NAME_LEN} characters")]
    TooLong { kind: &'static str, name: String },
    #[error("{kind} name '{name}' contains '{bad}': only {allowed} are allowed")]
    BadCharacter {
        kind: &'static str,
        name: String,
        bad: char,
        allowed: &'static str,
    },
    #[error("{kind} name '{name}' must not start with '{first}'")]
    BadStart {
        kind: &'static str,
        name: String,
        first: char,
    },
    #[error("{kind} name '{name}' must not contain '..'")]
    DotDot { kind: &'static str, name: String },
    #[error(
        "{kind} name '{name}' is not a valid hostname: {why} (use letters, digits and '-', with '.' between labels)"
    )]
    NotHostname {
        kind: &'static str,
        name: String,
        why: &'static str,
    },
}

/// Checks a machine name: an image name's rules, and a valid hostname as systemd-machined
/// requires (so no '_', no label starting or ending with '-', no empty label).
pub fn validate_machine(name: &str) -> Result<(), NameError> {
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-')))
    {
        return Err(NameError::BadCharacter {
            kind: "machine",
            name: name.to_owned(),
            bad,
            allowed: "letters, digits, '-' and '.' (it becomes the hostname)",
        });
    }
    validate("machine", name)?;
    validate_hostname("machine", name)
}

/// Checks a hostname as systemd's `hostname_is_valid()` does.
pub fn validate_hostname(kind: &'static str, name: &str) -> Result<(), NameError> {
    validate(kind, name)?;
    let bad = |why| {
        Err(NameError::NotHostname {
            kind,
            name: name.to_owned(),
            why,
        })
    };
    if name.contains('_') {
        return bad("'_' is not allowed in hostnames");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return bad("it has an empty label");
        }
        if label.ends_with('-') {
            return bad("a label ends with '-'");
        }
        if label.starts_with('-') {
            return bad("a label starts with '-'");
        }
    }
    Ok(())
}

/// Checks an image or machine name; `kind` ("image", "machine") names it in the error.
pub fn validate(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            kind,
            name: name.to_owned(),
        });
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(NameError::BadCharacter {
            kind,
            name: name.to_owned(),
            bad,
            allowed: "letters, digits, '.', '_' and '-'",
        });
    }
    if let Some(first) = name.chars().next().filter(|c| matches!(c, '.' | '-')) {
        return Err(NameError::BadStart {
            kind,
            name: name.to_owned(),
            first,
        });
    }
    if name.contains("..") {
        return Err(NameError::DotDot {
            kind,
            name: name.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hostname_like_names() {
        for name in ["deb", "web-1", "a.b_c", "X", &"a".repeat(64)] {
            assert_eq!(validate("image", name), Ok(()), "{name}");
        }
    }

    #[test]
    fn refuses_each_bad_shape_with_its_reason() {
        assert!(matches!(
            validate("image", ""),
            Err(NameError::Empty { .. })
        ));
        assert!(matches!(
            validate("image", &"a".repeat(65)),
            Err(NameError::TooLong { .. })
        ));
        assert!(matches!(
            validate("image", "a/b"),
            Err(NameError::BadCharacter { bad: '/', .. })
        ));
        assert!(matches!(
            validate("image", "a b"),
            Err(NameError::BadCharacter { bad: ' ', .. })
        ));
        assert!(matches!(
            validate("image", "ünï"),
            Err(NameError::BadCharacter { .. })
        ));
        assert!(matches!(
            validate("image", "-rf"),
            Err(NameError::BadStart { first: '-', .. })
        ));
        assert!(matches!(
            validate("image", ".hidden"),
            Err(NameError::BadStart { first: '.', .. })
        ));
        assert!(matches!(
            validate("image", "a..b"),
            Err(NameError::DotDot { .. })
        ));
    }

    #[test]
    fn machine_names_must_be_hostnames() {
        for good in ["web", "web-1", "a.b.c", "x1", &"a".repeat(64)] {
            assert_eq!(validate_machine(good), Ok(()), "{good}");
        }
        for bad in ["a_b", "web-", "a.-b", "a.", "", "a..b", "-a", "a b", "a/b"] {
            assert!(validate_machine(bad).is_err(), "{bad}");
        }
        let err = validate_machine("my_box")
            .expect_err("underscore")
            .to_string();
        assert!(err.contains("'my_box'") && err.contains("'_'"), "{err}");
    }

    #[test]
    fn error_message_names_the_problem() {
        let err = validate("image", "a/b").expect_err("invalid").to_string();
        assert!(err.contains("'a/b'") && err.contains("'/'"), "{err}");
    }
}
