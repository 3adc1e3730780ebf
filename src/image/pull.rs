//! Pulling an image from a plain registry: a directory on an HTTP(S) server holding
//! `NAME_VERSION.tar.zst` (or `.tar.xz`), `SHA256SUMS` and optionally `SHA256SUMS.gpg`, the
//! layout `machinectl pull-tar` pulls from and [`super::export`] writes.
//!
//! Checksums and the signature are fetched (and checked) before the image itself, so a source
//! that can't be verified costs no big download. Every transfer is bounded in time: a connect
//! timeout, and a read timeout that fails a stalled transfer.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use thiserror::Error;

use super::ImageError;
use super::export::hex;

/// The checksum list of a registry directory.
pub const SUMS_FILE: &str = "SHA256SUMS";
/// The detached signature of [`SUMS_FILE`].
pub const SIGNATURE_FILE: &str = "SHA256SUMS.gpg";
/// Keyrings tried in order for signature checks; the first that exists is used. berth's own
/// first, then the ones `importctl` uses, so keys installed for systemd work too.
pub const DEFAULT_KEYRINGS: [&str; 3] = [
    "/etc/berth/import-pubring.gpg",
    "/etc/systemd/import-pubring.gpg",
    "/usr/lib/systemd/import-pubring.gpg",
];
/// Checksum lists and signatures are small; anything larger is not one.
pub const MAX_SMALL_FILE: u64 = 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const DOWNLOAD_BUFFER: usize = 256 * 1024;
/// How much of gpgv's complaint goes into an error message.
const MAX_GPGV_STDERR: usize = 2000;

/// Archive suffixes stripped to get an image name from a file name, longest first.
const TAR_SUFFIXES: [&str; 9] = [
    ".tar.zstd",
    ".tar.zst",
    ".tar.bz2",
    ".tar.xz",
    ".tar.gz",
    ".tzst",
    ".txz",
    ".tgz",
    ".tar",
];

/// What to check a download against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Nothing: trust the server and the connection.
    No,
    /// The file's line in `SHA256SUMS` of the same directory.
    Checksum,
    /// The checksum, and `SHA256SUMS.gpg` as a signature of `SHA256SUMS` by a trusted key.
    Signature,
}

/// What [`fetch_verified`] downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullReport {
    /// SHA-256 of the downloaded bytes, lowercase hex.
    pub sha256_hex: String,
    pub bytes: u64,
    pub verified: Verify,
}

/// Why exporting to or pulling from a plain registry failed.
#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("cannot pull '{url}': {why}")]
    BadUrl { url: String, why: &'static str },
    #[error("downloading {url} failed: {reason}")]
    Transfer { url: String, reason: String },
    #[error("downloading {url} failed: the server answered HTTP {status} {reason}{hint}", hint = status_hint(*.status))]
    Status {
        url: String,
        status: u16,
        reason: String,
    },
    #[error(
        "{url} is larger than {limit} bytes, too large for a checksum list or signature; refused"
    )]
    TooLarge { url: String, limit: u64 },
    #[error("{url} is not text, so it is not a checksum list")]
    SumsNotText { url: String },
    #[error("line {line} of the checksum list is not 'HEX *NAME' or 'HEX  NAME' ({why}): {text}")]
    BadSums {
        line: usize,
        why: &'static str,
        text: String,
    },
    #[error(
        "DOWNLOAD INVALID: {sums_url} has no checksum for '{file}', so it cannot be verified; nothing was kept"
    )]
    NoChecksum { file: String, sums_url: String },
    #[error(
        "DOWNLOAD INVALID: '{file}' has SHA-256 {actual}, but {SUMS_FILE} says {expected}; the file was tampered with or damaged in transit, and the download was discarded"
    )]
    Mismatch {
        file: String,
        expected: String,
        actual: String,
    },
    #[error(
        "no keyring to check signatures with: none of {} exists; install the publisher's public key as {}, or pull with checksum verification only",
        list_paths(.tried), list_paths(&.tried[..1])
    )]
    NoKeyring { tried: Vec<PathBuf> },
    #[error("cannot run gpgv to check the signature (is gpgv installed?): {0}")]
    Gpgv(#[source] io::Error),
    #[error(
        "DOWNLOAD INVALID: the signature {sig_url} does not check out with the keys in {}, so the checksums can't be trusted; nothing was kept. gpgv said: {stderr}",
        keyring.display()
    )]
    BadSignature {
        sig_url: String,
        keyring: PathBuf,
        stderr: String,
    },
    #[error("cannot list '{name}' in {SUMS_FILE}: {why}")]
    BadSumsEntry { name: String, why: &'static str },
}

fn status_hint(status: u16) -> &'static str {
    match status {
        404 | 410 => " (no such file there: check the URL)",
        401 | 403 => " (access denied)",
        500..=599 => " (a server error: try again later)",
        _ => "",
    }
}

fn list_paths(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}

/// Downloads and verifies with the default keyrings and timeouts.
#[derive(Debug, Clone)]
pub struct Fetcher {
    /// Tried in order; the first that exists checks signatures.
    pub keyrings: Vec<PathBuf>,
    pub connect_timeout: Duration,
    /// A transfer fails when no data arrives for this long.
    pub read_timeout: Duration,
}

impl Default for Fetcher {
    fn default() -> Self {
        Self {
            keyrings: DEFAULT_KEYRINGS.iter().map(PathBuf::from).collect(),
            connect_timeout: CONNECT_TIMEOUT,
            read_timeout: READ_TIMEOUT,
        }
    }
}

/// Downloads `url` (http or https) into `dest` (a file the caller created in a private staging
/// place), and verifies it: with Checksum, fetches SHA256SUMS from the same directory URL and
/// requires a line for the file name whose hash matches; with Signature, also fetches
/// SHA256SUMS.gpg and checks it with `gpgv --keyring KEYRING` against the first keyring that
/// exists of [`DEFAULT_KEYRINGS`] (use [`Fetcher`] for others).
/// Returns the sha256 hex of the download; `dest` is left positioned at its start. On a failed
/// verification `dest` is truncated; the caller deletes it.
pub fn fetch_verified(
    url: &str,
    dest: &mut File,
    verify: Verify,
) -> Result<PullReport, ImageError> {
    Fetcher::default().fetch_verified(url, dest, verify)
}

impl Fetcher {
    /// [`fetch_verified`] with this fetcher's keyrings and timeouts.
    pub fn fetch_verified(
        &self,
        url: &str,
        dest: &mut File,
        verify: Verify,
    ) -> Result<PullReport, ImageError> {
        let remote = RemoteFile::parse(url, verify)?;
        // Before any request: without a keyring, nothing fetched could be trusted.
        let keyring = match verify {
            Verify::Signature => Some(self.keyring()?),
            Verify::No | Verify::Checksum => None,
        };
        let agent = self.agent();
        let expected = match verify {
            Verify::No => None,
            Verify::Checksum | Verify::Signature => {
                let sums_url = remote.sibling(SUMS_FILE);
                let sums = self.fetch_small(&agent, &sums_url)?;
                if let Some(keyring) = keyring {
                    let sig_url = remote.sibling(SIGNATURE_FILE);
                    let signature = self.fetch_small(&agent, &sig_url)?;
                    check_signature(keyring, &sums, &signature, &sig_url)?;
                }
                let text = String::from_utf8(sums).map_err(|_| RegistryError::SumsNotText {
                    url: sums_url.clone(),
                })?;
                let listed = parse_sums(&text)?
                    .into_iter()
                    .find(|(name, _)| *name == remote.file_name)
                    .map(|(_, hex)| hex);
                Some(listed.ok_or_else(|| RegistryError::NoChecksum {
                    file: remote.file_name.clone(),
                    sums_url,
                })?)
            }
        };
        let result = self
            .download(&agent, &remote.url, dest)
            .and_then(|(actual, bytes)| match expected {
                Some(expected) if expected != actual => Err(RegistryError::Mismatch {
                    file: remote.file_name.clone(),
                    expected,
                    actual,
                }
                .into()),
                _ => Ok((actual, bytes)),
            });
        let (sha256_hex, bytes) = match result {
            Ok(done) => done,
            Err(e) => {
                // Nothing unverified stays readable, whatever the caller does next.
                let _ = dest.set_len(0);
                return Err(e);
            }
        };
        dest.flush()
            .and_then(|()| dest.seek(SeekFrom::Start(0)))
            .map_err(ImageError::io("rewinding the download"))?;
        tracing::info!(url = %remote.url, %sha256_hex, bytes, ?verify, "downloaded");
        Ok(PullReport {
            sha256_hex,
            bytes,
            verified: verify,
        })
    }

    fn agent(&self) -> ureq::Agent {
        ureq::Agent::config_builder()
            .timeout_connect(Some(self.connect_timeout))
            .timeout_per_read(Some(self.read_timeout))
            .http_status_as_error(false)
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()
            .into()
    }

    fn get(&self, agent: &ureq::Agent, url: &str) -> Result<ureq::Body, RegistryError> {
        let response = agent.get(url).call().map_err(|e| RegistryError::Transfer {
            url: url.to_owned(),
            reason: self.describe(&e),
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(RegistryError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
                reason: status.canonical_reason().unwrap_or("").to_owned(),
            });
        }
        Ok(response.into_body())
    }

    /// A checksum list or signature: at most [`MAX_SMALL_FILE`] bytes.
    fn fetch_small(&self, agent: &ureq::Agent, url: &str) -> Result<Vec<u8>, RegistryError> {
        let body = self.get(agent, url)?;
        body.into_with_config()
            .limit(MAX_SMALL_FILE)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => RegistryError::TooLarge {
                    url: url.to_owned(),
                    limit: MAX_SMALL_FILE,
                },
                e => RegistryError::Transfer {
                    url: url.to_owned(),
                    reason: self.describe(&e),
                },
            })
    }

    /// Streams `url` into `dest`, hashing it on the way.
    fn download(
        &self,
        agent: &ureq::Agent,
        url: &str,
        dest: &mut File,
    ) -> Result<(String, u64), ImageError> {
        let mut body = self.get(agent, url)?.into_reader();
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; DOWNLOAD_BUFFER];
        let mut bytes = 0u64;
        loop {
            let n = match body.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let reason = match e.get_ref().and_then(|i| i.downcast_ref::<ureq::Error>()) {
                        Some(inner) => self.describe(inner),
                        None => e.to_string(),
                    };
                    return Err(RegistryError::Transfer {
                        url: url.to_owned(),
                        reason: format!("after {bytes} bytes: {reason}"),
                    }
                    .into());
                }
            };
            hasher.update(&buffer[..n]);
            dest.write_all(&buffer[..n])
                .map_err(ImageError::io(format!("writing the download of {url}")))?;
            bytes += n as u64;
        }
        Ok((hex(&hasher.finalize()), bytes))
    }

    fn describe(&self, e: &ureq::Error) -> String {
        match e {
            ureq::Error::Timeout(ureq::Timeout::Connect) => format!(
                "no connection within {} s: is the server up and reachable?",
                self.connect_timeout.as_secs()
            ),
            ureq::Error::Timeout(ureq::Timeout::PerRead) => format!(
                "no data for {} s: the transfer stalled",
                self.read_timeout.as_secs()
            ),
            ureq::Error::HostNotFound => "the host name does not resolve".into(),
            e => e.to_string(),
        }
    }

    /// The first keyring that exists.
    fn keyring(&self) -> Result<PathBuf, RegistryError> {
        let keyring =
            self.keyrings
                .iter()
                .find(|k| k.exists())
                .ok_or_else(|| RegistryError::NoKeyring {
                    tried: self.keyrings.clone(),
                })?;
        // gpgv takes a keyring name without a slash as relative to its home directory.
        std::path::absolute(keyring).map_err(RegistryError::Gpgv)
    }
}

/// Checks `signature` as a detached signature of `sums` with gpgv and the keys in `keyring`.
fn check_signature(
    keyring: PathBuf,
    sums: &[u8],
    signature: &[u8],
    sig_url: &str,
) -> Result<(), RegistryError> {
    let home = PrivateDir::create().map_err(RegistryError::Gpgv)?;
    let sig_path = home.path.join(SIGNATURE_FILE);
    fs::write(&sig_path, signature).map_err(RegistryError::Gpgv)?;
    // Not std's Command: berthd may hold other callers' descriptors (see sys::process::command).
    let mut child = crate::sys::process::command("gpgv")
        .arg("--homedir")
        .arg(&home.path)
        .arg("--keyring")
        .arg(&keyring)
        .arg(&sig_path)
        .arg("-")
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(RegistryError::Gpgv)?;
    if let Some(mut stdin) = child.stdin.take() {
        match stdin.write_all(sums) {
            // gpgv stops reading when the signature itself is unusable; its status says why.
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
            Err(e) => return Err(RegistryError::Gpgv(e)),
        }
    }
    let output = child.wait_with_output().map_err(RegistryError::Gpgv)?;
    if output.status.success() {
        return Ok(());
    }
    // gpgv writes several "gpgv: …" lines; one error message should be one line.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .map(|l| l.trim().trim_start_matches("gpgv:").trim())
        .filter(|l| !l.is_empty())
        .collect();
    let mut stderr: String = lines.join("; ").chars().take(MAX_GPGV_STDERR).collect();
    if stderr.is_empty() {
        stderr = format!("nothing ({})", output.status);
    }
    Err(RegistryError::BadSignature {
        sig_url: sig_url.to_owned(),
        keyring,
        stderr,
    })
}

/// A directory only we can read, removed on drop: gpgv's home and the signature file.
struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    fn create() -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "berth-gpgv-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        // mkdir fails on anything already there, a planted symlink included.
        fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Self { path })
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A URL split into what verification needs.
#[derive(Debug)]
struct RemoteFile {
    /// The URL without its fragment.
    url: String,
    /// Everything up to and including the last `/` of the path.
    directory: String,
    file_name: String,
}

impl RemoteFile {
    fn parse(url: &str, verify: Verify) -> Result<Self, RegistryError> {
        let bad = |why| RegistryError::BadUrl {
            url: url.to_owned(),
            why,
        };
        let without_fragment = url.split('#').next().unwrap_or(url);
        let Some((scheme, rest)) = without_fragment.split_once("://") else {
            return Err(bad("it is not a URL (http://… or https://…)"));
        };
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(bad("only http:// and https:// URLs can be pulled"));
        }
        let path_start = rest
            .find('/')
            .ok_or(bad("it names no file, only a server"))?;
        let without_query = rest.split('?').next().unwrap_or(rest);
        if without_query.len() <= path_start {
            return Err(bad("it names no file, only a server"));
        }
        let last_slash = without_query.rfind('/').unwrap_or(path_start);
        let file_name = &without_query[last_slash + 1..];
        if file_name.is_empty() {
            return Err(bad("it names a directory, not a file"));
        }
        if verify != Verify::No && (file_name == SUMS_FILE || file_name.ends_with(".gpg")) {
            return Err(bad(
                "a checksum list or signature cannot be verified by itself",
            ));
        }
        let directory_end = scheme.len() + "://".len() + last_slash + 1;
        Ok(Self {
            url: without_fragment.to_owned(),
            directory: without_fragment[..directory_end].to_owned(),
            file_name: file_name.to_owned(),
        })
    }

    /// The URL of another file in the same directory.
    fn sibling(&self, name: &str) -> String {
        format!("{}{name}", self.directory)
    }
}

/// Parses SHA256SUMS text into (file name, hex) pairs; accepts `HEX *NAME` and `HEX  NAME`
/// (and `HEX NAME`, which systemd accepts too), with coreutils' `\`-escaped names. Hex is
/// returned in lowercase; empty lines are skipped, anything else is an error naming the line.
pub fn parse_sums(text: &str) -> Result<Vec<(String, String)>, ImageError> {
    let mut sums = Vec::new();
    for (index, line) in text.split('\n').enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let entry = parse_sums_line(line).map_err(|why| RegistryError::BadSums {
            line: index + 1,
            why,
            text: printable_line(line),
        })?;
        sums.push(entry);
    }
    Ok(sums)
}

/// One line of SHA256SUMS: (file name, lowercase hex), or why it isn't one.
pub(super) fn parse_sums_line(line: &str) -> Result<(String, String), &'static str> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    // coreutils marks a line whose name has `\`, newline or CR escaped with a leading `\`.
    let (escaped, line) = match line.strip_prefix('\\') {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let not_hex = "it does not start with a SHA-256 of 64 hex digits";
    let hex = line.get(..64).ok_or(not_hex)?;
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_hex);
    }
    let rest = &line[64..];
    let name = rest
        .strip_prefix(" *")
        .or_else(|| rest.strip_prefix("  "))
        .or_else(|| rest.strip_prefix(' '))
        .ok_or("the checksum is not followed by a space and a file name")?;
    if name.is_empty() {
        return Err("the file name is missing");
    }
    let name = if escaped {
        unescape(name)?
    } else {
        name.to_owned()
    };
    Ok((name, hex.to_ascii_lowercase()))
}

fn unescape(name: &str) -> Result<String, &'static str> {
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            _ => return Err("the file name has a bad '\\' escape"),
        }
    }
    Ok(out)
}

/// A line quoted in an error: control characters replaced, cut at 100 characters.
fn printable_line(line: &str) -> String {
    const MAX: usize = 100;
    let mut shown: String = line
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(MAX)
        .collect();
    if line.chars().count() > MAX {
        shown.push_str("...");
    }
    shown
}

/// Image name and version suggested by a URL's file name: `foo_1.2.tar.zst` → ("foo",
/// Some("1.2")); the version is what follows the last `_`. None when the file name (less its
/// archive suffix) is not a valid image name.
pub fn name_from_url(url: &str) -> Option<(String, Option<String>)> {
    let without_fragment = url.split('#').next()?;
    let without_query = without_fragment.split('?').next()?;
    let (_, after_scheme) = without_query
        .split_once("://")
        .unwrap_or(("", without_query));
    let (_, path) = after_scheme.split_once('/')?;
    let file_name = path.rsplit('/').next()?;
    let stem = TAR_SUFFIXES
        .iter()
        .find_map(|suffix| file_name.strip_suffix(suffix))
        .unwrap_or(file_name);
    let (name, version) = match stem.rsplit_once('_') {
        Some((name, version)) if !name.is_empty() && !version.is_empty() => {
            (name, Some(version.to_owned()))
        }
        _ => (stem, None),
    };
    crate::name::validate("image", name).ok()?;
    Some((name.to_owned(), version))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader};
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::process::Command;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use super::*;

    const BODY: &[u8] = b"pretend this is a compressed tar archive";

    fn sha256(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    /// What the test server answers for one path.
    #[derive(Clone)]
    enum Reply {
        Body(Vec<u8>),
        /// Promises `declared` bytes, sends `sent`, then goes quiet.
        Stall {
            declared: usize,
            sent: Vec<u8>,
        },
    }

    /// A tiny HTTP/1.1 server on 127.0.0.1, one thread per connection; 404 for unknown paths.
    struct Server {
        base: String,
        requested: Arc<Mutex<Vec<String>>>,
    }

    impl Server {
        fn start(routes: Vec<(&str, Reply)>) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let base = format!("http://{}", listener.local_addr().expect("addr"));
            let routes: Arc<HashMap<String, Reply>> = Arc::new(
                routes
                    .into_iter()
                    .map(|(path, reply)| (path.to_owned(), reply))
                    .collect(),
            );
            let requested = Arc::new(Mutex::new(Vec::new()));
            let log = Arc::clone(&requested);
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let (routes, log) = (Arc::clone(&routes), Arc::clone(&log));
                    std::thread::spawn(move || serve(stream, &routes, &log));
                }
            });
            Self { base, requested }
        }

        fn url(&self, path: &str) -> String {
            format!("{}{path}", self.base)
        }

        fn requested(&self) -> Vec<String> {
            self.requested.lock().expect("log").clone()
        }
    }

    fn serve(mut stream: TcpStream, routes: &HashMap<String, Reply>, log: &Mutex<Vec<String>>) {
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).is_err() {
            return;
        }
        loop {
            let mut header = String::new();
            match reader.read_line(&mut header) {
                Ok(0) | Err(_) => return,
                Ok(_) if header == "\r\n" => break,
                Ok(_) => {}
            }
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_owned();
        log.lock().expect("log").push(path.clone());
        let _ = match routes.get(&path) {
            Some(Reply::Body(body)) => write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .and_then(|()| stream.write_all(body)),
            Some(Reply::Stall { declared, sent }) => write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n"
            )
            .and_then(|()| stream.write_all(sent))
            .map(|()| std::thread::sleep(Duration::from_secs(30))),
            None => stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            ),
        };
    }

    fn dest(dir: &Path) -> File {
        tempfile::tempfile_in(dir).expect("dest")
    }

    fn fetcher() -> Fetcher {
        Fetcher {
            keyrings: vec![PathBuf::from("/nonexistent/berth-test-keyring.gpg")],
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(5),
        }
    }

    fn registry(sums: String) -> Server {
        Server::start(vec![
            ("/images/deb_12.tar.zst", Reply::Body(BODY.to_vec())),
            ("/images/SHA256SUMS", Reply::Body(sums.into_bytes())),
        ])
    }

    #[test]
    fn parse_sums_accepts_binary_text_and_escaped_lines() {
        let (a, b, c, d) = (
            "a".repeat(64),
            "B".repeat(64),
            "c".repeat(64),
            "d".repeat(64),
        );
        let text = format!(
            "{a} *one_1.tar.zst\n{b}  two.tar.xz\r\n\n{c} lxc-style.tar\n\\{d}  odd\\\\name\\n.tar\n"
        );
        let sums = parse_sums(&text).expect("parse");
        assert_eq!(
            sums,
            [
                ("one_1.tar.zst".to_owned(), a),
                ("two.tar.xz".to_owned(), "b".repeat(64)),
                ("lxc-style.tar".to_owned(), c),
                ("odd\\name\n.tar".to_owned(), d),
            ]
        );
        assert_eq!(parse_sums("").expect("empty"), []);
        // A name may itself contain spaces and stars after the separator.
        let sums = parse_sums(&format!("{} * spaced *name\n", "0".repeat(64))).expect("parse");
        assert_eq!(sums[0].0, " spaced *name");
    }

    #[test]
    fn parse_sums_refuses_junk_naming_the_line() {
        let good = format!("{} *ok.tar\n", "0".repeat(64));
        for (junk, why) in [
            ("-----BEGIN PGP SIGNED MESSAGE-----", "64 hex digits"),
            (&format!("{} *short.tar", "0".repeat(63)), "64 hex digits"),
            (&format!("{}x *bad.tar", "0".repeat(63)), "64 hex digits"),
            (&"0".repeat(64), "a space and a file name"),
            (
                &format!("{}\t*tab.tar", "0".repeat(64)),
                "a space and a file name",
            ),
            (&format!("{} *", "0".repeat(64)), "file name is missing"),
            (&format!("\\{} *bad\\escape", "0".repeat(64)), "escape"),
        ] {
            let err = parse_sums(&format!("{good}{junk}\n")).expect_err(junk);
            let text = err.to_string();
            assert!(text.contains("line 2 "), "{text}");
            assert!(text.contains(why), "{junk:?}: {text}");
            assert!(!text.contains('\t'), "{text}");
        }
    }

    #[test]
    fn name_from_url_splits_name_and_version() {
        type Suggested<'a> = Option<(&'a str, Option<&'a str>)>;
        let cases: [(&str, Suggested); 9] = [
            (
                "https://example.org/images/foo_1.2.tar.zst",
                Some(("foo", Some("1.2"))),
            ),
            (
                "http://h/debian-12_2024.06.tar.xz?x=y#frag",
                Some(("debian-12", Some("2024.06"))),
            ),
            ("https://h/my_img_3.tar.gz", Some(("my_img", Some("3")))),
            ("https://h/plain.tar", Some(("plain", None))),
            ("https://h/noext", Some(("noext", None))),
            ("https://h/trailing_.tar", Some(("trailing_", None))),
            ("https://h/dir/", None),
            ("https://h", None),
            ("https://h/bad%20name.tar", None),
        ];
        for (url, want) in cases {
            let want = want.map(|(n, v)| (n.to_owned(), v.map(str::to_owned)));
            assert_eq!(name_from_url(url), want, "{url}");
        }
    }

    #[test]
    fn matching_checksum_passes_and_leaves_dest_at_its_start() {
        let server = registry(format!("{} *deb_12.tar.zst\n", sha256(BODY)));
        let dir = tempfile::tempdir().expect("tempdir");
        let mut file = dest(dir.path());
        let report = fetcher()
            .fetch_verified(
                &server.url("/images/deb_12.tar.zst"),
                &mut file,
                Verify::Checksum,
            )
            .expect("fetch");
        assert_eq!(report.sha256_hex, sha256(BODY));
        assert_eq!(report.bytes, BODY.len() as u64);
        assert_eq!(report.verified, Verify::Checksum);
        let mut content = Vec::new();
        file.read_to_end(&mut content).expect("read");
        assert_eq!(content, BODY);
        assert_eq!(
            server.requested(),
            ["/images/SHA256SUMS", "/images/deb_12.tar.zst"]
        );
    }

    #[test]
    fn tampered_body_is_refused_and_truncated() {
        let listed = sha256(b"the original archive");
        let server = registry(format!(
            "{} *other.tar\n{listed}  deb_12.tar.zst\n",
            "1".repeat(64)
        ));
        let dir = tempfile::tempdir().expect("tempdir");
        let mut file = dest(dir.path());
        let err = fetcher()
            .fetch_verified(
                &server.url("/images/deb_12.tar.zst"),
                &mut file,
                Verify::Checksum,
            )
            .expect_err("tampered");
        let text = err.to_string();
        assert!(
            matches!(err, ImageError::Registry(RegistryError::Mismatch { .. })),
            "{err:?}"
        );
        for part in ["deb_12.tar.zst", &listed, &sha256(BODY), "discarded"] {
            assert!(text.contains(part), "{part} missing from: {text}");
        }
        assert_eq!(file.metadata().expect("stat").len(), 0);
    }

    #[test]
    fn missing_line_is_refused_before_downloading() {
        let server = registry(format!("{} *other_1.tar.zst\n", sha256(BODY)));
        let dir = tempfile::tempdir().expect("tempdir");
        let url = server.url("/images/deb_12.tar.zst");
        let err = fetcher()
            .fetch_verified(&url, &mut dest(dir.path()), Verify::Checksum)
            .expect_err("no line");
        let text = err.to_string();
        assert!(text.contains("no checksum for 'deb_12.tar.zst'"), "{text}");
        assert!(text.contains(&server.url("/images/SHA256SUMS")), "{text}");
        assert_eq!(server.requested(), ["/images/SHA256SUMS"]);
    }

    #[test]
    fn not_found_names_the_url_and_status() {
        let server = Server::start(vec![("/a/x.tar.zst", Reply::Body(BODY.to_vec()))]);
        let dir = tempfile::tempdir().expect("tempdir");
        let url = server.url("/a/missing.tar.zst");
        let err = fetcher()
            .fetch_verified(&url, &mut dest(dir.path()), Verify::No)
            .expect_err("404");
        let text = err.to_string();
        assert!(text.contains(&url), "{text}");
        assert!(text.contains("HTTP 404 Not Found"), "{text}");

        // Without SHA256SUMS there is nothing to verify against: the same error, for it.
        let err = fetcher()
            .fetch_verified(
                &server.url("/a/x.tar.zst"),
                &mut dest(dir.path()),
                Verify::Checksum,
            )
            .expect_err("no SHA256SUMS");
        let text = err.to_string();
        assert!(text.contains(&server.url("/a/SHA256SUMS")), "{text}");
        assert!(text.contains("404"), "{text}");
    }

    #[test]
    fn oversized_sums_are_refused() {
        let huge = format!("{} *x\n", "0".repeat(64)).repeat(20_000);
        assert!(huge.len() as u64 > MAX_SMALL_FILE);
        let server = registry(huge);
        let dir = tempfile::tempdir().expect("tempdir");
        let err = fetcher()
            .fetch_verified(
                &server.url("/images/deb_12.tar.zst"),
                &mut dest(dir.path()),
                Verify::Checksum,
            )
            .expect_err("too large");
        assert!(
            matches!(err, ImageError::Registry(RegistryError::TooLarge { .. })),
            "{err:?}"
        );
        assert!(err.to_string().contains("SHA256SUMS"), "{err}");
    }

    #[test]
    fn stalled_transfer_fails_after_the_read_timeout() {
        let server = Server::start(vec![(
            "/slow.tar.zst",
            Reply::Stall {
                declared: 1_000_000,
                sent: vec![0; 1000],
            },
        )]);
        let dir = tempfile::tempdir().expect("tempdir");
        let fetcher = Fetcher {
            read_timeout: Duration::from_secs(1),
            ..fetcher()
        };
        let started = Instant::now();
        let err = fetcher
            .fetch_verified(
                &server.url("/slow.tar.zst"),
                &mut dest(dir.path()),
                Verify::No,
            )
            .expect_err("stalled");
        assert!(started.elapsed() < Duration::from_secs(10));
        let text = err.to_string();
        assert!(text.contains("stalled"), "{text}");
        assert!(text.contains("after 1000 bytes"), "{text}");
    }

    #[test]
    fn bad_urls_are_refused_without_a_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (url, verify, why) in [
            ("ftp://h/x.tar", Verify::No, "only http:// and https://"),
            ("/local/x.tar", Verify::No, "not a URL"),
            ("https://h", Verify::No, "names no file"),
            ("https://h/dir/", Verify::No, "a directory"),
            ("https://h/dir/SHA256SUMS", Verify::Checksum, "by itself"),
        ] {
            let err = fetcher()
                .fetch_verified(url, &mut File::open("/dev/null").expect("null"), verify)
                .expect_err(url);
            assert!(err.to_string().contains(why), "{url}: {err}");
        }
        drop(dir);
    }

    #[test]
    fn signature_without_any_keyring_names_the_keyrings_tried() {
        let server = registry(format!("{} *deb_12.tar.zst\n", sha256(BODY)));
        let dir = tempfile::tempdir().expect("tempdir");
        let tried = vec![dir.path().join("one.gpg"), dir.path().join("two.gpg")];
        let fetcher = Fetcher {
            keyrings: tried.clone(),
            ..fetcher()
        };
        let err = fetcher
            .fetch_verified(
                &server.url("/images/deb_12.tar.zst"),
                &mut dest(dir.path()),
                Verify::Signature,
            )
            .expect_err("no keyring");
        assert!(
            matches!(&err, ImageError::Registry(RegistryError::NoKeyring { tried: t }) if *t == tried),
            "{err:?}"
        );
        let text = err.to_string();
        for keyring in &tried {
            assert!(text.contains(&keyring.display().to_string()), "{text}");
        }
        assert!(server.requested().is_empty());
        let defaults: Vec<PathBuf> = DEFAULT_KEYRINGS.iter().map(PathBuf::from).collect();
        assert_eq!(Fetcher::default().keyrings, defaults);
    }

    fn installed(program: &str) -> bool {
        Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A throwaway signing key in its own GNUPGHOME; its agent is stopped on drop.
    struct TestKey {
        home: tempfile::TempDir,
    }

    impl TestKey {
        fn generate(user: &str) -> Self {
            let key = Self {
                home: tempfile::tempdir().expect("GNUPGHOME"),
            };
            fs::set_permissions(key.home.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
            key.gpg(&["--quick-gen-key", user, "ed25519", "sign", "never"]);
            key
        }

        fn gpg(&self, args: &[&str]) {
            let output = Command::new("gpg")
                .env("GNUPGHOME", self.home.path())
                .args([
                    "--batch",
                    "--yes",
                    "--pinentry-mode",
                    "loopback",
                    "--passphrase",
                    "",
                ])
                .args(args)
                .output()
                .expect("gpg");
            assert!(
                output.status.success(),
                "gpg {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }

        fn export_keyring(&self, to: &Path) {
            self.gpg(&["--output", to.to_str().expect("utf8"), "--export"]);
        }

        fn sign(&self, data: &[u8]) -> Vec<u8> {
            let input = self.home.path().join("data");
            let output = self.home.path().join("data.sig");
            fs::write(&input, data).expect("write");
            self.gpg(&[
                "--output",
                output.to_str().expect("utf8"),
                "--detach-sign",
                input.to_str().expect("utf8"),
            ]);
            fs::read(output).expect("signature")
        }
    }

    impl Drop for TestKey {
        fn drop(&mut self) {
            let _ = Command::new("gpgconf")
                .env("GNUPGHOME", self.home.path())
                .args(["--kill", "gpg-agent"])
                .status();
        }
    }

    #[test]
    fn signature_is_checked_with_gpgv() {
        if !installed("gpg") || !installed("gpgv") {
            eprintln!("skipped: gpg and gpgv are not both installed");
            return;
        }
        let trusted = TestKey::generate("berth test <trusted@berth.invalid>");
        let stranger = TestKey::generate("berth test <stranger@berth.invalid>");
        let dir = tempfile::tempdir().expect("tempdir");
        let keyring = dir.path().join("import-pubring.gpg");
        trusted.export_keyring(&keyring);
        let fetcher = Fetcher {
            keyrings: vec![dir.path().join("absent.gpg"), keyring.clone()],
            ..fetcher()
        };
        let sums = format!("{} *deb_12.tar.zst\n", sha256(BODY));
        let serve = |sums: String, signature: Vec<u8>| {
            Server::start(vec![
                ("/i/deb_12.tar.zst", Reply::Body(BODY.to_vec())),
                ("/i/SHA256SUMS", Reply::Body(sums.into_bytes())),
                ("/i/SHA256SUMS.gpg", Reply::Body(signature)),
            ])
        };

        let server = serve(sums.clone(), trusted.sign(sums.as_bytes()));
        let report = fetcher
            .fetch_verified(
                &server.url("/i/deb_12.tar.zst"),
                &mut dest(dir.path()),
                Verify::Signature,
            )
            .expect("good signature");
        assert_eq!(report.verified, Verify::Signature);
        assert_eq!(report.sha256_hex, sha256(BODY));

        let refused = |server: Server| {
            let err = fetcher
                .fetch_verified(
                    &server.url("/i/deb_12.tar.zst"),
                    &mut dest(dir.path()),
                    Verify::Signature,
                )
                .expect_err("bad signature");
            assert!(
                matches!(
                    err,
                    ImageError::Registry(RegistryError::BadSignature { .. })
                ),
                "{err:?}"
            );
            // The image itself is never fetched when its checksum list isn't trusted.
            assert!(!server.requested().contains(&"/i/deb_12.tar.zst".to_owned()));
            err.to_string()
        };
        let tampered = format!("{sums}{} *extra.tar\n", "0".repeat(64));
        let text = refused(serve(tampered, trusted.sign(sums.as_bytes())));
        assert!(text.contains("BAD signature"), "{text}");
        assert!(text.contains(&keyring.display().to_string()), "{text}");
        assert!(text.contains("nothing was kept"), "{text}");
        let text = refused(serve(sums.clone(), stranger.sign(sums.as_bytes())));
        assert!(text.contains("gpgv said: "), "{text}");
        let text = refused(serve(sums, b"not a signature".to_vec()));
        assert!(text.contains("gpgv said: "), "{text}");
    }

    /// An exported image, published with update_sums, pulls and imports back.
    #[test]
    fn exported_image_pulls_and_imports() {
        use std::os::fd::AsFd;

        use crate::image::export::{ExportCompression, update_sums, write_archive};
        use crate::image::tree::TreeWriter;
        use crate::image::{source, tar_import};

        let dir = tempfile::tempdir().expect("tempdir");
        let open = |path: &Path| {
            rustix::fs::open(
                path,
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
                rustix::fs::Mode::empty(),
            )
            .expect("open")
        };
        let image = dir.path().join("image");
        fs::create_dir_all(image.join("etc")).expect("etc");
        fs::write(image.join("etc/hostname"), b"pulled\n").expect("hostname");
        let published = dir.path().join("registry");
        fs::create_dir(&published).expect("registry");
        let file_name = format!("deb_12.{}", ExportCompression::Zstd.extension());
        let mut archive = Vec::new();
        let exported =
            write_archive(open(&image), &mut archive, ExportCompression::Zstd).expect("export");
        update_sums(open(&published).as_fd(), &file_name, &exported.sha256_hex).expect("sums");
        let sums = fs::read(published.join(SUMS_FILE)).expect("sums");

        let path = format!("/r/{file_name}");
        let server = Server::start(vec![
            (path.as_str(), Reply::Body(archive)),
            ("/r/SHA256SUMS", Reply::Body(sums)),
        ]);
        let url = server.url(&path);
        assert_eq!(
            name_from_url(&url),
            Some(("deb".to_owned(), Some("12".to_owned())))
        );
        let mut file = dest(dir.path());
        let report = fetcher()
            .fetch_verified(&url, &mut file, Verify::Checksum)
            .expect("pull");
        assert_eq!(report.sha256_hex, exported.sha256_hex);

        let target = dir.path().join("imported");
        fs::create_dir(&target).expect("target");
        let mut tree = TreeWriter::new(open(&target));
        tar_import::extract(
            source::decompress(&mut file).expect("decompress"),
            &mut tree,
        )
        .expect("import");
        tree.finish().expect("finish");
        assert_eq!(
            fs::read(target.join("etc/hostname")).expect("hostname"),
            b"pulled\n"
        );
    }
}
