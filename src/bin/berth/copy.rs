//! `berth copy-to` and `berth copy-from`: a tar stream through a socket whose other end
//! travels with the D-Bus call. copy-to writes the source's stream, read as the calling
//! user; copy-from unpacks the machine's stream on the host, written as the calling user.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use berth::api::ManagerProxy;
use berth::runtime::copy::{self, Side, SocketWriter, write_stream};

pub async fn copy_to(
    manager: &ManagerProxy<'_>,
    name: &str,
    source: &Path,
    destination: Option<String>,
) -> anyhow::Result<()> {
    let meta =
        std::fs::metadata(source).with_context(|| format!("cannot read {}", source.display()))?;
    if !meta.is_dir() && !meta.is_file() {
        bail!(
            "{} is not a regular file or directory; berth copy-to copies files and directory trees",
            source.display()
        );
    }
    // SOURCE's own name and path, not its symlink target's: a symlink is followed only for
    // reading.
    let mut absolute = std::path::absolute(source)
        .with_context(|| format!("cannot resolve {}", source.display()))?;
    if absolute.file_name().is_none() {
        // It ends in "..": the directory it names.
        absolute = std::fs::canonicalize(source)
            .with_context(|| format!("cannot resolve {}", source.display()))?;
    }
    let Some(entry_name) = absolute.file_name().map(Path::new) else {
        bail!("berth copy-to does not copy the host's root directory; name a directory below it");
    };
    let destination = match destination {
        Some(destination) => destination,
        None => absolute
            .to_str()
            .with_context(|| {
                format!(
                    "{} is not UTF-8; give the destination in the machine",
                    absolute.display()
                )
            })?
            .to_owned(),
    };
    let (ours, theirs) = UnixStream::pair().context("creating a socket pair")?;
    let ours_again = ours.try_clone().context("creating a socket pair")?;
    let writer = {
        let (source, entry_name) = (absolute.clone(), entry_name.to_owned());
        std::thread::spawn(move || write_stream(&source, &entry_name, SocketWriter(ours.into())))
    };
    let copied = manager
        .copy_to_machine(name, &destination, theirs.as_fd().into())
        .await;
    // Once berthd has answered, a write still waiting for a reader fails (the machine's
    // side has ended either way).
    drop(theirs);
    let _ = ours_again.shutdown(std::net::Shutdown::Both);
    let target = match (copied, writer.join()) {
        (Ok(target), Ok(Ok(()))) => target,
        // Our reading failed, so the machine's side saw the stream end early (and kept
        // nothing): our error says why. A write that failed because the machine's side had
        // given up, or a call refused before the copy began, leaves berthd's error.
        (Err(e), Ok(Err(w))) if super::is_error(&e, "Failed") && !peer_gone(&w) => {
            bail!("reading {}: {w}; nothing was copied", source.display())
        }
        (Err(e), _) => return Err(e.into()),
        (Ok(_), _) => bail!("writing the copy stream failed"),
    };
    println!("Copied {} to {name}:{target}.", source.display());
    Ok(())
}

/// Whether a write failed because the other end of the stream was closed.
fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

pub async fn copy_from(
    manager: &ManagerProxy<'_>,
    name: &str,
    source: &str,
    destination: Option<PathBuf>,
) -> anyhow::Result<()> {
    let destination = destination.unwrap_or_else(|| PathBuf::from("."));
    // unpack() wants an absolute path; absolute() keeps a trailing "/" (a directory that
    // must exist).
    let absolute = std::path::absolute(&destination)
        .with_context(|| format!("cannot resolve {}", destination.display()))?;
    let (ours, theirs) = UnixStream::pair().context("creating a socket pair")?;
    let ours_again = ours.try_clone().context("creating a socket pair")?;
    let reader = std::thread::spawn(move || {
        let unpacked = copy::unpack(&ours, &absolute, Side::Host);
        // Done, or failed before the stream's end: the machine's side gets an error for the
        // rest rather than waiting for a reader forever.
        let _ = ours.shutdown(std::net::Shutdown::Both);
        unpacked
    });
    // Interrupted (Ctrl-C, SIGTERM, SIGHUP), the copy is abandoned like one that failed: the
    // unpacking sees the stream end early and removes what it wrote.
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let copied = tokio::select! {
        copied = manager.copy_from_machine(name, source, theirs.as_fd().into()) => Some(copied),
        _ = interrupt.recv() => None,
        _ = terminate.recv() => None,
        _ = hangup.recv() => None,
    };
    // Once berthd has answered, the stream holds all it will: what is left unread is in our
    // socket's queue, and a read past it ends instead of waiting.
    drop(theirs);
    let _ = ours_again.shutdown(std::net::Shutdown::Both);
    let unpacked = reader
        .join()
        .map_err(|_| anyhow::anyhow!("unpacking the copy stream failed"))?;
    let Some(copied) = copied else {
        bail!("interrupted; nothing was copied");
    };
    let written = match (copied, unpacked) {
        (Ok(()), Ok(written)) => written,
        // Our unpacking failed first (a destination in the way, a full disk): the machine's
        // side saw us stop reading, or finished writing; ours is the error to show.
        (Err(e), Err(ours)) if e.to_string().contains(copy::RECEIVER_GONE) => {
            return Err(ours.into());
        }
        (Ok(()), Err(ours)) => return Err(ours.into()),
        (Err(e), _) => return Err(e.into()),
    };
    println!("Copied {name}:{source} to {}.", written.display());
    Ok(())
}
