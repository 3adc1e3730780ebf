//! A build's source as the `berth` client resolves it, as the calling user: a git URL or a
//! local git checkout at a ref (its commit is what gets built, and recorded), or a plain
//! directory. The result is a tar stream of the tree (`git archive` of the commit, or `tar`
//! of the directory) that berthd unpacks as the build context, so berthd never runs git on
//! a user's files.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SourceError {
    #[error("{0}")]
    Git(String),
    #[error("'{0}' is neither a directory nor a git URL (give PATH or GIT-URL[#REF])")]
    Unknown(String),
    #[error("cannot run {program}: {source}; is it installed?")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A source resolved to one tree.
#[derive(Debug)]
pub struct Resolved {
    /// As it is recorded: the URL, or the absolute path.
    pub source: String,
    /// The ref asked for (empty: the default branch / HEAD).
    pub reference: String,
    /// The commit (empty for a plain directory).
    pub commit: String,
    /// The default version: the commit's date and short hash (UTC), e.g.
    /// `20261201.153000.gabc1234`, or now for a plain directory.
    pub default_version: String,
    /// The repository the commit is in (for `archive`).
    repository: Option<PathBuf>,
    /// A temporary clone, removed when this is dropped.
    clone: Option<tempfile::TempDir>,
}

/// Splits `GIT-URL#REF` / `PATH#REF`.
fn split_reference(spec: &str) -> (&str, &str) {
    match spec.rsplit_once('#') {
        Some((location, reference)) => (location, reference),
        None => (spec, ""),
    }
}

fn looks_like_url(location: &str) -> bool {
    location.contains("://") || location.starts_with("git@") || location.ends_with(".git")
}

fn git(dir: Option<&Path>, args: &[&str]) -> Result<String, SourceError> {
    let mut command = Command::new("git");
    if let Some(dir) = dir {
        command.arg("-C").arg(dir);
    }
    let output = command
        .args(args)
        .env("TZ", "UTC")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| SourceError::Spawn {
            program: "git",
            source,
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(SourceError::Git(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Resolves `spec` (`PATH`, `PATH#REF`, `GIT-URL` or `GIT-URL#REF`) to one tree.
pub fn resolve(spec: &str) -> Result<Resolved, SourceError> {
    let (location, reference) = split_reference(spec);
    let path = Path::new(location);
    let (source, repository, clone) = if path.is_dir() {
        let absolute = std::fs::canonicalize(path)
            .map_err(|e| SourceError::Git(format!("{location}: {e}")))?;
        let is_git = git(Some(&absolute), &["rev-parse", "--git-dir"]).is_ok();
        let repository: Option<PathBuf> = is_git.then(|| absolute.clone());
        (absolute.display().to_string(), repository, None)
    } else if looks_like_url(location) {
        let dir = tempfile::Builder::new()
            .prefix("berth-build-")
            .tempdir()
            .map_err(|e| SourceError::Git(format!("making a directory for the clone: {e}")))?;
        git(
            None,
            &[
                "clone",
                "--quiet",
                "--bare",
                location,
                &dir.path().to_string_lossy(),
            ],
        )?;
        let repository = dir.path().to_owned();
        (location.to_owned(), Some(repository), Some(dir))
    } else {
        return Err(SourceError::Unknown(location.to_owned()));
    };
    let Some(repository) = repository else {
        if !reference.is_empty() {
            return Err(SourceError::Git(format!(
                "{source} is not a git repository, so it has no ref '{reference}'"
            )));
        }
        return Ok(Resolved {
            source,
            reference: String::new(),
            commit: String::new(),
            default_version: utc_now_version(),
            repository: None,
            clone,
        });
    };
    let wanted = if reference.is_empty() {
        "HEAD"
    } else {
        reference
    };
    let commit = git(
        Some(&repository),
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{wanted}^{{commit}}"),
        ],
    )
    .map_err(|_| SourceError::Git(format!("{source} has no commit '{wanted}'")))?;
    let date = git(
        Some(&repository),
        &[
            "show",
            "-s",
            "--format=%cd",
            "--date=format-local:%Y%m%d.%H%M%S",
            &commit,
        ],
    )?;
    Ok(Resolved {
        source,
        reference: reference.to_owned(),
        default_version: format!("{date}.g{}", &commit[..commit.len().min(7)]),
        commit,
        repository: Some(repository),
        clone,
    })
}

fn utc_now_version() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let text = crate::cli::format::timestamp(secs * 1_000_000);
    // "YYYY-MM-DD HH:MM:SS UTC" → "YYYYMMDD.HHMMSS"
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    format!(
        "{}.{}",
        &digits[..8.min(digits.len())],
        &digits[8.min(digits.len())..]
    )
}

impl Resolved {
    /// Starts the tar stream of the tree; read it from the child's stdout.
    pub fn archive(&self) -> Result<Child, SourceError> {
        let mut command = match &self.repository {
            Some(repository) => {
                let mut c = Command::new("git");
                c.arg("-C")
                    .arg(repository)
                    .args(["archive", "--format=tar", &self.commit]);
                c
            }
            None => {
                let mut c = Command::new("tar");
                c.args([
                    "--numeric-owner",
                    "--owner=0",
                    "--group=0",
                    "-C",
                    &self.source,
                ])
                .args(["-cf", "-", "."]);
                c
            }
        };
        let program = if self.repository.is_some() {
            "git"
        } else {
            "tar"
        };
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|source| SourceError::Spawn { program, source })
    }

    /// Whether the tree to be built has a file at `path`.
    pub fn has_file(&self, path: &str) -> bool {
        match &self.repository {
            Some(repository) => git(
                Some(repository),
                &["cat-file", "-e", &format!("{}:{path}", self.commit)],
            )
            .is_ok(),
            None => Path::new(&self.source).join(path).is_file(),
        }
    }

    /// Whether a local checkout has changes that are not committed (they are not built).
    pub fn is_dirty(&self) -> bool {
        match (&self.repository, &self.clone) {
            (Some(repository), None) => git(Some(repository), &["status", "--porcelain"])
                .is_ok_and(|status| !status.is_empty()),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_and_urls() {
        assert_eq!(
            split_reference("https://h/r.git#main"),
            ("https://h/r.git", "main")
        );
        assert_eq!(split_reference("/srv/app"), ("/srv/app", ""));
        assert!(looks_like_url("https://example.org/x"));
        assert!(looks_like_url("git@host:x.git"));
        assert!(!looks_like_url("/srv/app"));
    }

    #[test]
    fn a_plain_directory_gets_a_dated_version() {
        let v = utc_now_version();
        assert!(crate::image::version::validate(&v).is_ok(), "{v}");
        assert_eq!(v.len(), 15, "{v}");
    }
}
