//! `berth copy-to`: a tar stream of the source, read as the calling user, sent to berthd
//! through a socket whose other end travels with the D-Bus call.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{Context, bail};
use berth::api::ManagerProxy;
use berth::runtime::copy::write_stream;

/// Our end of the stream. berth keeps SIGPIPE at its default (so `berth list | head` ends
/// quietly); a write after the machine's side gave up must fail instead of killing us.
struct Sender(UnixStream);

impl Write for Sender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        rustix::net::send(&self.0, buf, rustix::net::SendFlags::NOSIGNAL).map_err(io::Error::from)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Sender {
    /// The stream ends when the writer is done, failed or not: the caller holds a clone of
    /// this socket (to end a write left waiting), which would otherwise keep it open.
    fn drop(&mut self) {
        let _ = self.0.shutdown(std::net::Shutdown::Write);
    }
}

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
        std::thread::spawn(move || write_stream(&source, &entry_name, Sender(ours)))
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
