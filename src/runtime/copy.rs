//! `berth copy-to` and `berth copy-from`: a file or directory tree copied into or out of a
//! machine, as a tar stream.
//!
//! The client writes a tar stream of the source as the calling user (so it holds only what
//! the caller may read): one top-level entry, named as the source, then [`END_MARK`]. berthd
//! runs the exec helper in copy mode with that stream as its stdin: the helper enters the
//! machine (namespaces, cgroup, confinement) as for `berth exec`, and its forked child, the
//! machine's root, unpacks the stream here, in the machine's own root. What it writes is
//! therefore the machine's root's, modes keep their permission bits (not set-ID or sticky
//! bits), times are kept. The stream is unpacked into a temporary directory beside the
//! target and renamed into place only once it is complete, so a copy that fails leaves
//! nothing behind and an existing file is replaced at once.
//!
//! A stopped machine's root is made by the helper itself (its volume mounted, the root
//! idmapped, entered as the machine's root: see `helper::enter_stopped_root`), and a copy
//! into a place the machine's own mounts will cover (/tmp, /run, a --bind) is refused.
//!
//! `berth copy-from` is the same the other way: the helper's child, the machine's root,
//! writes the stream of a path of the machine to a socket the client passed, and the client
//! unpacks it on the host as the calling user, with the same checks (an entry that would
//! leave the staging directory, a hard link, a FIFO or a device node is refused; set-ID bits
//! are dropped; what it writes is the caller's).

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use super::exec::{Exec, ExecConfig};
use super::init::ExitStatus;

/// What ends a complete copy stream, after the tar's end-of-archive blocks. A stream cut
/// short (the client failed reading a source file, or died) lacks it and is not committed,
/// though it may end at an entry's boundary, which tar alone can't tell from an end.
pub const END_MARK: &[u8] = b"berth copy-to: end of stream\n";

/// The longest tail (zero blocks and the mark) read after the archive's last entry.
const MAX_TAIL: u64 = 64 * 1024;

/// The name prefix of a copy's staging directory.
const STAGING_PREFIX: &str = ".#berth-copy-";

/// The longest path an entry may have (PATH_MAX), and the longest message the child sends
/// berthd (which reads it once the child has ended, so it must fit in a pipe).
const MAX_PATH: usize = 4096;
const MAX_MESSAGE: usize = 8192;

/// The child's exit code for a path the caller has to change.
const EXIT_PATH: i32 = 2;

/// What the machine's side of `berth copy-from` fails with when the client stopped reading
/// (its unpacking failed): the client reports its own error then.
pub const RECEIVER_GONE: &str = "the receiving side stopped reading the copy stream";

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A path the caller has to change: a missing directory or source, an existing
    /// directory in the way; the message says what to change.
    #[error("{0}")]
    Path(String),
    /// The stream or the writing failed.
    #[error("{0}")]
    Failed(String),
}

fn failed(what: &str, e: impl std::fmt::Display) -> CopyError {
    CopyError::Failed(format!("{what}: {e}"))
}

/// Where a copy stream is unpacked, for the words of its errors.
#[derive(Clone, Copy, Debug)]
pub enum Side {
    /// In a machine, by `berth copy-to`.
    Machine,
    /// On the host, by `berth copy-from`.
    Host,
}

impl Side {
    fn verb(self) -> &'static str {
        match self {
            Side::Machine => "berth copy-to",
            Side::Host => "berth copy-from",
        }
    }

    /// " in the machine", or nothing on the host.
    fn place(self) -> &'static str {
        match self {
            Side::Machine => " in the machine",
            Side::Host => "",
        }
    }

    /// How to create directory `dir` here.
    fn mkdir(self, dir: &Path) -> String {
        match self {
            Side::Machine => format!("berth exec NAME -- mkdir -p {}", dir.display()),
            Side::Host => format!("mkdir -p {}", dir.display()),
        }
    }
}

/// A writer to a socket that fails with EPIPE once the reader has gone, instead of raising
/// SIGPIPE (berth and the exec helper's child keep SIGPIPE at its default); it writes to
/// anything else (a pipe) as it is. Its writing side is shut down when it is dropped, so the
/// stream ends even where a clone of the socket stays open.
#[derive(Debug)]
pub struct SocketWriter(pub OwnedFd);

impl Write for SocketWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match rustix::net::send(&self.0, buf, rustix::net::SendFlags::NOSIGNAL) {
            Err(rustix::io::Errno::NOTSOCK) => rustix::io::write(&self.0, buf),
            sent => sent,
        }
        .map_err(io::Error::from)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SocketWriter {
    fn drop(&mut self) {
        let _ = rustix::net::shutdown(self.0.as_fd(), rustix::net::Shutdown::Write);
    }
}

/// berthd's side of `berth copy-to`: runs the exec helper (`config.unpack_to` set) with
/// `archive` as its input and returns the path it wrote in the machine.
pub fn copy_in(helper: &Path, config: &ExecConfig, archive: OwnedFd) -> Result<PathBuf, CopyError> {
    match run_helper(helper, config, archive)? {
        written if written.is_empty() => Err(CopyError::Failed(
            "the copy in the machine reported no path written".into(),
        )),
        written => Ok(PathBuf::from(written)),
    }
}

/// berthd's side of `berth copy-from`: runs the exec helper (`config.pack_from` set), which
/// writes the copy stream to `archive`.
pub fn copy_out(helper: &Path, config: &ExecConfig, archive: OwnedFd) -> Result<(), CopyError> {
    run_helper(helper, config, archive).map(drop)
}

/// Runs the exec helper in copy mode with `archive` as the copy's stream; returns what its
/// child printed on success.
fn run_helper(helper: &Path, config: &ExecConfig, archive: OwnedFd) -> Result<String, CopyError> {
    let pipe = || {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| failed("creating a pipe", e))
    };
    let (out_read, out_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    let exec = Exec::start(helper, config, Some([archive, out_write, err_write]))
        .map_err(|e| failed("starting the copy in the machine", e))?;
    let status = exec
        .wait()
        .map_err(|e| failed("waiting for the copy in the machine", e))?;
    // The helper and its child have ended, so both pipes are at their end.
    let read = |fd: OwnedFd| {
        let mut text = String::new();
        let _ = fs::File::from(fd).take(MAX_TAIL).read_to_string(&mut text);
        text.trim().to_owned()
    };
    let (written, message) = (read(out_read), read(err_read));
    match status {
        ExitStatus::Exited(0) => Ok(written),
        ExitStatus::Exited(EXIT_PATH) => Err(CopyError::Path(message)),
        ExitStatus::Exited(_) if !message.is_empty() => Err(CopyError::Failed(message)),
        status => Err(CopyError::Failed(format!(
            "the copy in the machine ended without a result ({}); was the machine stopped?",
            status.describe()
        ))),
    }
}

/// The exec helper's child, inside the machine as its root. For `berth copy-to`
/// (`config.unpack_to`) it unpacks the stream on `stdio[0]` and prints the path written on
/// `stdio[1]`; for `berth copy-from` (`config.pack_from`) it writes the stream to `stdio[0]`.
/// An error goes to `stdio[2]`. Returns the exit code.
pub fn child_main(config: &ExecConfig, stdio: [OwnedFd; 3]) -> i32 {
    let [stream, output, errors] = stdio;
    let covered = config.stopped.as_ref().map_or(&[][..], |s| &s.covered[..]);
    let result = match (&config.unpack_to, &config.pack_from) {
        (Some(destination), _) => check_uncovered(Path::new(destination), covered)
            .and_then(|()| {
                unpack(
                    fs::File::from(stream),
                    Path::new(destination),
                    Side::Machine,
                )
            })
            .map(|written| written.display().to_string()),
        (None, Some(source)) => {
            pack(Path::new(source), SocketWriter(stream)).map(|()| String::new())
        }
        (None, None) => Err(CopyError::Failed("internal error: no copy to make".into())),
    };
    match result {
        Ok(written) => {
            let _ = writeln!(fs::File::from(output), "{written}");
            0
        }
        Err(e) => {
            let mut message = e.to_string();
            if message.len() > MAX_MESSAGE {
                let mut end = MAX_MESSAGE;
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                message.truncate(end);
                message.push('…');
            }
            let _ = write!(fs::File::from(errors), "{message}");
            match e {
                CopyError::Path(_) => EXIT_PATH,
                CopyError::Failed(_) => 1,
            }
        }
    }
}

/// For a stopped machine: refuses a `destination` that its own mounts (`covered`: each mount
/// point with what covers it) will hide once it runs. Symlinks on the way are followed,
/// inside the machine's root, as the copy would follow them.
fn check_uncovered(destination: &Path, covered: &[(PathBuf, String)]) -> Result<(), CopyError> {
    let mut existing = destination.to_path_buf();
    let mut rest = Vec::new();
    while fs::symlink_metadata(&existing).is_err() {
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_owned());
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut resolved = fs::canonicalize(&existing).unwrap_or(existing);
    resolved.extend(rest.iter().rev());
    match covered
        .iter()
        .find(|(mount_point, _)| resolved.starts_with(mount_point))
    {
        Some((mount_point, what)) => Err(CopyError::Path(format!(
            "'{}' is below {}, which {what} covers once the machine runs: what is copied \
             there now would be hidden; start the machine and copy then, or choose another \
             place",
            destination.display(),
            mount_point.display()
        ))),
        None => Ok(()),
    }
}

/// Unpacks a copy stream at `destination` (absolute) on `side`: into it when it is a
/// directory, else as it (its parent must be a directory). An existing file there is
/// replaced; an existing directory is not. Returns the path written.
pub fn unpack(input: impl Read, destination: &Path, side: Side) -> Result<PathBuf, CopyError> {
    if !destination.is_absolute() {
        return Err(CopyError::Path(format!(
            "'{}' is not an absolute path",
            destination.display()
        )));
    }
    let (parent, rename_to) = match fs::metadata(destination) {
        Ok(meta) if meta.is_dir() => (destination.to_path_buf(), None),
        _ if destination.as_os_str().to_string_lossy().ends_with('/') => {
            return Err(CopyError::Path(format!(
                "there is no directory {}{}; create it first ({})",
                destination.display(),
                side.place(),
                side.mkdir(destination)
            )));
        }
        _ => {
            let (Some(parent), Some(name)) = (destination.parent(), destination.file_name()) else {
                return Err(CopyError::Path(format!(
                    "'{}' names no file or directory",
                    destination.display()
                )));
            };
            if !fs::metadata(parent).is_ok_and(|m| m.is_dir()) {
                return Err(CopyError::Path(format!(
                    "there is no directory {}{} to copy into; create it first ({})",
                    parent.display(),
                    side.place(),
                    side.mkdir(parent)
                )));
            }
            (parent.to_path_buf(), Some(name.to_owned()))
        }
    };
    remove_stale_staging(&parent);
    // Beside the target, so the final rename stays on one filesystem; removed when dropped,
    // with whatever a failed copy left in it. Locked while in use: a copy killed with its
    // machine leaves it unlocked, and the next copy into this directory removes it.
    let staging = tempfile::Builder::new()
        .prefix(STAGING_PREFIX)
        .tempdir_in(&parent)
        .map_err(|e| failed(&format!("creating a directory in {}", parent.display()), e))?;
    let _lock = fs::File::open(staging.path())
        .and_then(|dir| {
            rustix::fs::flock(&dir, rustix::fs::FlockOperation::LockExclusive)?;
            Ok(dir)
        })
        .map_err(|e| failed("locking the staging directory", e))?;
    let top = unpack_entries(input, staging.path(), side)?;
    let source = staging.path().join(&top);
    let target = parent.join(rename_to.unwrap_or(top));
    let source_is_dir = fs::symlink_metadata(&source).is_ok_and(|m| m.is_dir());
    if let Ok(existing) = fs::symlink_metadata(&target)
        && (existing.is_dir() || source_is_dir)
    {
        let what = if existing.is_dir() {
            "a directory"
        } else {
            "a file"
        };
        return Err(CopyError::Path(format!(
            "{} exists{} as {what}; remove it first or copy to another path",
            target.display(),
            side.place()
        )));
    }
    fs::rename(&source, &target)
        .map_err(|e| failed(&format!("moving the copy to {}", target.display()), e))?;
    Ok(target)
}

/// Removes the staging directories of copies that were killed (with their machine) in
/// `parent`: those no copy holds locked. Best effort: a copy goes on without it.
fn remove_stale_staging(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(STAGING_PREFIX)
            || !entry.file_type().is_ok_and(|t| t.is_dir())
        {
            continue;
        }
        let path = entry.path();
        let unlocked = fs::File::open(&path).is_ok_and(|dir| {
            rustix::fs::flock(&dir, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok()
        });
        if unlocked {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// Unpacks every entry into `staging`; returns the one top-level name they share. Fails on
/// a stream without [`END_MARK`] after its archive, an entry outside that name, or one that
/// would leave `staging`.
fn unpack_entries(
    input: impl Read,
    staging: &Path,
    side: Side,
) -> Result<std::ffi::OsString, CopyError> {
    let mut archive = tar::Archive::new(input);
    let mut top: Option<std::ffi::OsString> = None;
    // Set once everything is in them (writing a file changes its directory's time),
    // deepest first.
    let mut directory_times: Vec<(PathBuf, u64)> = Vec::new();
    for entry in archive
        .entries()
        .map_err(|e| failed("reading the copy stream", e))?
    {
        let mut entry = entry.map_err(|e| failed("reading the copy stream", e))?;
        let kind = entry.header().entry_type();
        // A sparse file (tar's builder writes files with holes as GNU sparse entries) is a
        // regular file whose holes stay holes.
        if !(kind.is_file() || kind.is_gnu_sparse() || kind.is_dir() || kind.is_symlink()) {
            let path = entry.path().map(|p| p.display().to_string());
            return Err(CopyError::Failed(format!(
                "'{}' is not a regular file, directory or symlink (a FIFO, socket or device node); {} copies only those",
                path.unwrap_or_default(),
                side.verb()
            )));
        }
        entry.set_preserve_permissions(false);
        entry.set_preserve_mtime(true);
        entry.set_unpack_xattrs(false);
        let path = entry
            .path()
            .map_err(|e| failed("reading the copy stream", e))?
            .into_owned();
        if path.as_os_str().len() > MAX_PATH {
            return Err(CopyError::Failed(format!(
                "the copy stream has a path longer than {MAX_PATH} bytes"
            )));
        }
        if kind.is_dir()
            && let Ok(mtime) = entry.header().mtime()
        {
            directory_times.push((staging.join(&path), mtime));
        }
        let first = match path.components().next() {
            Some(Component::Normal(name)) => name.to_owned(),
            _ => {
                return Err(CopyError::Failed(format!(
                    "the copy stream has an entry '{}' outside its top-level name",
                    path.display()
                )));
            }
        };
        match &top {
            None => top = Some(first),
            Some(name) if *name == first => {}
            Some(name) => {
                return Err(CopyError::Failed(format!(
                    "the copy stream has entries under both '{}' and '{}'; it must hold one file or directory",
                    Path::new(name).display(),
                    Path::new(&first).display()
                )));
            }
        }
        let unpacked = entry
            .unpack_in(staging)
            .map_err(|e| failed(&format!("writing {}", path.display()), e))?;
        if !unpacked {
            return Err(CopyError::Failed(format!(
                "the copy stream's entry '{}' would leave its directory",
                path.display()
            )));
        }
    }
    if !read_end_mark(archive.into_inner())? {
        return Err(CopyError::Failed(
            "the copy stream ended early (its sender stopped); nothing was copied".into(),
        ));
    }
    directory_times.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
    for (path, mtime) in directory_times {
        let time = crate::image::tree::timestamps(i64::try_from(mtime).unwrap_or(i64::MAX));
        let _ = rustix::fs::utimensat(
            rustix::fs::CWD,
            &path,
            &time,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        );
    }
    top.ok_or_else(|| CopyError::Failed("the copy stream holds no file or directory".into()))
}

/// Reads the rest of the archive's end blocks and [`END_MARK`]; false when the stream ends
/// (or holds anything else) before it. Reads no further than the mark: the client's end of
/// the stream stays open until berthd answers it.
fn read_end_mark(mut input: impl Read) -> Result<bool, CopyError> {
    let mut tail = Vec::new();
    let mut buffer = [0u8; 4096];
    while !tail.ends_with(END_MARK) {
        let n = match input.read(&mut buffer) {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(failed("reading the end of the copy stream", e)),
        };
        tail.extend_from_slice(&buffer[..n]);
        if tail.len() as u64 > MAX_TAIL {
            return Ok(false);
        }
    }
    let zeros = &tail[..tail.len() - END_MARK.len()];
    Ok(zeros.iter().all(|b| *b == 0))
}

/// The machine's side of `berth copy-from`: writes a copy stream of `source`, an absolute
/// path, named as it, to `output`.
fn pack(source: &Path, output: impl Write) -> Result<(), CopyError> {
    let shown = source.display();
    if !source.is_absolute() {
        return Err(CopyError::Path(format!(
            "'{shown}' is not an absolute path in the machine"
        )));
    }
    let Some(name) = source.file_name() else {
        return Err(CopyError::Path(format!(
            "'{shown}' names the machine's root directory; berth copy-from copies a file or a directory below it"
        )));
    };
    match fs::metadata(source) {
        Ok(meta) if meta.is_file() || meta.is_dir() => {}
        Ok(_) => {
            return Err(CopyError::Path(format!(
                "{shown} in the machine is not a regular file or directory; berth copy-from copies files and directory trees"
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(CopyError::Path(format!(
                "there is no {shown} in the machine"
            )));
        }
        Err(e) => return Err(failed(&format!("reading {shown}"), e)),
    }
    write_stream(source, Path::new(name), output).map_err(|e| {
        if matches!(
            e.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        ) {
            CopyError::Failed(RECEIVER_GONE.into())
        } else {
            failed(&format!("reading {shown}"), e)
        }
    })
}

/// Writes a copy stream of `source` (a file or directory, followed if it is a symlink; inside
/// a directory, symlinks are copied as links), named `name`, to `output`, ending with
/// [`END_MARK`]. The client's side.
pub fn write_stream(source: &Path, name: &Path, output: impl Write) -> io::Result<()> {
    let meta = fs::metadata(source)?;
    let mut builder = tar::Builder::new(output);
    builder.follow_symlinks(false);
    if meta.is_dir() {
        builder.append_dir_all(name, source)?;
    } else if meta.is_file() {
        builder.append_file(name, &mut fs::File::open(source)?)?;
    } else {
        return Err(io::Error::other(format!(
            "{} is not a regular file or directory",
            source.display()
        )));
    }
    let mut output = builder.into_inner()?;
    output.write_all(END_MARK)?;
    output.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(source: &Path, name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        write_stream(source, Path::new(name), &mut out).expect("test step");
        out
    }

    /// A complete copy stream of these entries, as no real source would give (a regular
    /// file holds "x").
    fn hand_made_stream(entries: &[(&str, tar::EntryType)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, kind) in entries {
            let data: &[u8] = if *kind == tar::EntryType::Regular {
                b"x"
            } else {
                b""
            };
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o755);
            header.set_cksum();
            builder
                .append_data(&mut header, name, data)
                .expect("test step");
        }
        let mut stream = builder.into_inner().expect("test step");
        stream.extend_from_slice(END_MARK);
        stream
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .expect("test step")
            .map(|e| {
                e.expect("test step")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|n| n.starts_with(".#berth-copy-"))
            .collect()
    }

    #[test]
    fn a_file_goes_into_a_directory_or_to_a_new_name() {
        let host = tempfile::tempdir().expect("test step");
        let machine = tempfile::tempdir().expect("test step");
        let file = host.path().join("app.conf");
        fs::write(&file, "port = 80\n").expect("test step");
        let stream = stream_of(&file, "app.conf");

        let written = unpack(&stream[..], machine.path(), Side::Machine).expect("test step");
        assert_eq!(written, machine.path().join("app.conf"));
        assert_eq!(
            fs::read_to_string(&written).expect("test step"),
            "port = 80\n"
        );

        let renamed = machine.path().join("other.conf");
        assert_eq!(
            unpack(&stream[..], &renamed, Side::Machine).expect("test step"),
            renamed
        );
        assert_eq!(
            fs::read_to_string(&renamed).expect("test step"),
            "port = 80\n"
        );
        assert!(leftovers(machine.path()).is_empty());
    }

    #[test]
    fn an_existing_file_is_replaced_but_a_directory_is_not() {
        let host = tempfile::tempdir().expect("test step");
        let machine = tempfile::tempdir().expect("test step");
        let file = host.path().join("f");
        fs::write(&file, "new").expect("test step");
        fs::write(machine.path().join("f"), "old").expect("test step");
        unpack(
            &stream_of(&file, "f")[..],
            &machine.path().join("f"),
            Side::Machine,
        )
        .expect("test step");
        assert_eq!(
            fs::read_to_string(machine.path().join("f")).expect("test step"),
            "new"
        );

        let tree = host.path().join("tree");
        fs::create_dir_all(tree.join("sub")).expect("test step");
        fs::write(tree.join("sub/x"), "x").expect("test step");
        std::os::unix::fs::symlink("sub/x", tree.join("link")).expect("test step");
        let stream = stream_of(&tree, "tree");
        let written = unpack(&stream[..], machine.path(), Side::Machine).expect("test step");
        assert_eq!(
            fs::read_to_string(written.join("sub/x")).expect("test step"),
            "x"
        );
        assert_eq!(
            fs::read_link(written.join("link")).expect("test step"),
            Path::new("sub/x")
        );
        // Again: tree exists now, as a directory.
        let again =
            unpack(&stream[..], machine.path(), Side::Machine).expect_err("the copy should fail");
        assert!(matches!(again, CopyError::Path(_)), "{again}");
        assert!(
            again
                .to_string()
                .contains("exists in the machine as a directory")
        );
        // A directory onto a file.
        let onto_file = unpack(&stream[..], &machine.path().join("f"), Side::Machine)
            .expect_err("the copy should fail");
        assert!(onto_file.to_string().contains("as a file"), "{onto_file}");
        assert!(leftovers(machine.path()).is_empty());
    }

    #[test]
    fn a_missing_directory_is_named() {
        let host = tempfile::tempdir().expect("test step");
        let machine = tempfile::tempdir().expect("test step");
        let file = host.path().join("f");
        fs::write(&file, "x").expect("test step");
        let stream = stream_of(&file, "f");
        let missing = machine.path().join("no/such");
        let e = unpack(&stream[..], &missing, Side::Machine).expect_err("the copy should fail");
        assert!(matches!(e, CopyError::Path(_)));
        assert!(e.to_string().contains("no directory"), "{e}");
        let e = unpack(
            &stream[..],
            Path::new(&format!("{}/", missing.display())),
            Side::Machine,
        )
        .expect_err("the copy should fail");
        assert!(e.to_string().contains("no directory"), "{e}");
        let e = unpack(&stream[..], Path::new("relative"), Side::Machine)
            .expect_err("the copy should fail");
        assert!(e.to_string().contains("absolute"), "{e}");
    }

    #[test]
    fn a_stream_cut_short_copies_nothing() {
        let host = tempfile::tempdir().expect("test step");
        let machine = tempfile::tempdir().expect("test step");
        let tree = host.path().join("tree");
        fs::create_dir_all(&tree).expect("test step");
        fs::write(tree.join("a"), vec![7u8; 2000]).expect("test step");
        fs::write(tree.join("b"), "b").expect("test step");
        let stream = stream_of(&tree, "tree");
        // Without the mark, or without the end blocks too: tar alone can't tell.
        for cut in [
            stream.len() - END_MARK.len(),
            stream.len() - END_MARK.len() - 1024,
        ] {
            let e = unpack(&stream[..cut], machine.path(), Side::Machine)
                .expect_err("the copy should fail");
            assert!(e.to_string().contains("ended early"), "{cut}: {e}");
            assert!(!machine.path().join("tree").exists());
            assert!(leftovers(machine.path()).is_empty());
        }
        // Anywhere else: at an entry's boundary or inside one.
        for cut in (512..stream.len() - END_MARK.len()).step_by(512) {
            assert!(
                unpack(&stream[..cut], machine.path(), Side::Machine).is_err(),
                "{cut}"
            );
            assert!(!machine.path().join("tree").exists());
            assert!(leftovers(machine.path()).is_empty());
        }
    }

    #[test]
    fn entries_outside_one_top_level_name_are_refused() {
        let machine = tempfile::tempdir().expect("test step");
        let stream = hand_made_stream(&[
            ("one", tar::EntryType::Regular),
            ("two", tar::EntryType::Regular),
        ]);
        let e =
            unpack(&stream[..], machine.path(), Side::Machine).expect_err("the copy should fail");
        assert!(e.to_string().contains("both 'one' and 'two'"), "{e}");
        assert!(!machine.path().join("one").exists());
        assert!(leftovers(machine.path()).is_empty());
    }

    #[test]
    fn set_id_bits_are_dropped() {
        use std::os::unix::fs::PermissionsExt;
        let host = tempfile::tempdir().expect("test step");
        let machine = tempfile::tempdir().expect("test step");
        let file = host.path().join("tool");
        fs::write(&file, "#!/bin/sh\n").expect("test step");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o4755)).expect("test step");
        let written = unpack(&stream_of(&file, "tool")[..], machine.path(), Side::Machine)
            .expect("test step");
        let mode = fs::metadata(written)
            .expect("test step")
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(mode, 0o755);
    }

    #[test]
    fn a_killed_copys_staging_directory_is_removed_by_the_next_copy() {
        let host = tempfile::tempdir().expect("test step");
        let machine = tempfile::tempdir().expect("test step");
        let stale = machine.path().join(".#berth-copy-stale");
        fs::create_dir_all(stale.join("half")).expect("test step");
        // One still in use by a running copy (it holds the lock) stays.
        let busy = machine.path().join(".#berth-copy-busy");
        fs::create_dir(&busy).expect("test step");
        let busy_lock = fs::File::open(&busy).expect("test step");
        rustix::fs::flock(&busy_lock, rustix::fs::FlockOperation::LockExclusive)
            .expect("test step");
        let file = host.path().join("f");
        fs::write(&file, "x").expect("test step");
        unpack(&stream_of(&file, "f")[..], machine.path(), Side::Machine).expect("test step");
        assert!(!stale.exists());
        assert_eq!(leftovers(machine.path()), vec![".#berth-copy-busy"]);
    }

    #[test]
    fn a_fifo_is_refused_by_name() {
        let machine = tempfile::tempdir().expect("test step");
        let stream = hand_made_stream(&[
            ("tree", tar::EntryType::Directory),
            ("tree/pipe", tar::EntryType::Fifo),
        ]);
        let e =
            unpack(&stream[..], machine.path(), Side::Machine).expect_err("the copy should fail");
        assert!(
            e.to_string().contains("'tree/pipe' is not a regular file"),
            "{e}"
        );
        assert!(!machine.path().join("tree").exists());
        assert!(leftovers(machine.path()).is_empty());
    }

    #[test]
    fn a_hard_link_is_refused() {
        let host = tempfile::tempdir().expect("test step");
        let stream = hand_made_stream(&[
            ("tree", tar::EntryType::Directory),
            ("tree/shadow", tar::EntryType::Link),
        ]);
        let e = unpack(&stream[..], host.path(), Side::Host).expect_err("the copy should fail");
        assert!(
            e.to_string()
                .contains("'tree/shadow' is not a regular file, directory or symlink"),
            "{e}"
        );
        assert!(
            e.to_string().contains("berth copy-from copies only those"),
            "{e}"
        );
        assert!(!host.path().join("tree").exists());
    }

    #[test]
    fn a_packed_tree_unpacks_on_the_host() {
        let machine = tempfile::tempdir().expect("test step");
        let host = tempfile::tempdir().expect("test step");
        let tree = machine.path().join("log");
        fs::create_dir_all(tree.join("app")).expect("test step");
        fs::write(tree.join("app/today"), "started\n").expect("test step");
        std::os::unix::fs::symlink("/etc/shadow", tree.join("app/link")).expect("test step");
        let mut stream = Vec::new();
        pack(&tree, &mut stream).expect("test step");
        let written = unpack(&stream[..], host.path(), Side::Host).expect("test step");
        assert_eq!(written, host.path().join("log"));
        assert_eq!(
            fs::read_to_string(written.join("app/today")).expect("test step"),
            "started\n"
        );
        // A symlink stays a symlink: nothing of the host's is read through it.
        assert_eq!(
            fs::read_link(written.join("app/link")).expect("test step"),
            Path::new("/etc/shadow")
        );
        // On the host the errors name host paths and commands.
        let e = unpack(&stream[..], host.path(), Side::Host).expect_err("the copy should fail");
        assert!(
            e.to_string()
                .ends_with("log exists as a directory; remove it first or copy to another path"),
            "{e}"
        );
        let missing = host.path().join("no/such/");
        let e = unpack(&stream[..], &missing, Side::Host).expect_err("the copy should fail");
        assert!(
            e.to_string().contains("; create it first (mkdir -p "),
            "{e}"
        );
        assert!(!e.to_string().contains("machine"), "{e}");
    }

    #[test]
    fn pack_names_what_it_cannot_copy() {
        let machine = tempfile::tempdir().expect("test step");
        for (source, message) in [
            (machine.path().join("nope"), "there is no "),
            (PathBuf::from("/"), "names the machine's root directory"),
            (PathBuf::from("etc/x"), "not an absolute path"),
            (
                PathBuf::from("/dev/null"),
                "not a regular file or directory",
            ),
        ] {
            let e = pack(&source, Vec::new()).expect_err("the pack should fail");
            assert!(matches!(e, CopyError::Path(_)), "{e}");
            assert!(e.to_string().contains(message), "{}: {e}", source.display());
        }
        // A receiver that went away: the error says so, and nothing raises SIGPIPE.
        fs::write(machine.path().join("big"), vec![1u8; 1 << 20]).expect("test step");
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("test step");
        drop(theirs);
        let e = pack(&machine.path().join("big"), SocketWriter(ours.into()))
            .expect_err("the pack should fail");
        assert_eq!(e.to_string(), RECEIVER_GONE);
    }

    #[test]
    fn a_sparse_file_is_copied_with_its_holes() {
        use std::os::unix::fs::MetadataExt;
        let host = tempfile::tempdir().expect("test step");
        let machine = tempfile::tempdir().expect("test step");
        let file = host.path().join("disk.img");
        let image = fs::File::create(&file).expect("test step");
        image.set_len(64 << 20).expect("test step");
        std::os::unix::fs::FileExt::write_at(&image, b"data", 32 << 20).expect("test step");
        let written = unpack(
            &stream_of(&file, "disk.img")[..],
            machine.path(),
            Side::Machine,
        )
        .expect("test step");
        let meta = fs::metadata(&written).expect("test step");
        assert_eq!(meta.len(), 64 << 20);
        let mut data = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(
            &fs::File::open(&written).expect("test step"),
            &mut data,
            32 << 20,
        )
        .expect("test step");
        assert_eq!(&data, b"data");
        // Far fewer 512-byte blocks than 64 MiB takes (on a filesystem with holes).
        assert!(meta.blocks() < 1024, "{} blocks", meta.blocks());
    }

    #[test]
    fn a_place_the_running_machines_mounts_cover_is_refused_also_through_a_symlink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("run");
        fs::create_dir(&run).expect("run");
        std::os::unix::fs::symlink(&run, dir.path().join("var-run")).expect("symlink");
        let covered = [(run.clone(), "the machine's own /run (a tmpfs)".to_owned())];
        for destination in [run.join("x"), dir.path().join("var-run/new/x"), run.clone()] {
            let e = check_uncovered(&destination, &covered).expect_err("covered");
            assert!(
                e.to_string().contains(&format!(
                    "is below {}, which the machine's own /run (a tmpfs) covers",
                    run.display()
                )),
                "{e}"
            );
        }
        check_uncovered(&dir.path().join("etc/x"), &covered).expect("not covered");
        check_uncovered(&dir.path().join("running"), &covered).expect("a name sharing a prefix");
    }

    #[test]
    fn directory_times_are_kept() {
        use std::os::unix::fs::MetadataExt;
        let host = tempfile::tempdir().expect("test step");
        let machine = tempfile::tempdir().expect("test step");
        let tree = host.path().join("tree");
        fs::create_dir_all(tree.join("sub")).expect("test step");
        fs::write(tree.join("sub/x"), "x").expect("test step");
        let old = rustix::fs::Timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 0,
        };
        let times = rustix::fs::Timestamps {
            last_access: old,
            last_modification: old,
        };
        for dir in [tree.join("sub"), tree.clone()] {
            rustix::fs::utimensat(rustix::fs::CWD, &dir, &times, rustix::fs::AtFlags::empty())
                .expect("test step");
        }
        let written = unpack(&stream_of(&tree, "tree")[..], machine.path(), Side::Machine)
            .expect("test step");
        for dir in [written.join("sub"), written] {
            assert_eq!(
                fs::metadata(&dir).expect("test step").mtime(),
                1_000_000_000,
                "{}",
                dir.display()
            );
        }
    }
}
