//! When a started machine counts as up. A boot machine's systemd says so itself: berth binds
//! a notify socket of its own at `/run/host/notify` inside and gives PID 1
//! `NOTIFY_SOCKET=/run/host/notify`, as `systemd-nspawn --notify-ready=yes` does; the guest's
//! systemd sends `READY=1` once it has finished booting. The socket lives in the machine's
//! own /run (berthd binds it there through PID 1's root before PID 1 execs), so no host path
//! shows in the machine's mount table. An app machine is ready once its
//! command runs. Readiness is recorded as `/run/berth/machines/NAME.ready`, so it survives a
//! berthd restart.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use super::MachineError;
use super::lifecycle::STATUS_DIR;

fn ready_path(name: &str) -> PathBuf {
    Path::new(STATUS_DIR).join(format!("{name}.ready"))
}

/// Forgets an earlier run's readiness (at each start).
pub fn clear(name: &str) {
    let _ = fs::remove_file(ready_path(name));
}

pub fn mark_ready(name: &str) {
    let _ = fs::create_dir_all(STATUS_DIR);
    if let Err(e) = fs::write(ready_path(name), "READY=1\n") {
        tracing::warn!(%name, "cannot record readiness: {e}");
    }
}

pub fn is_ready(name: &str) -> bool {
    ready_path(name).exists()
}

/// Binds the notify socket `notify` in `dir` (the machine's /run/host, reached through its
/// PID 1's root), owned by the machine's root (host UID `base`), so the guest's systemd may
/// send to it.
pub fn bind(dir: &Path, base: u32) -> Result<UnixDatagram, MachineError> {
    let io_error = |source| MachineError::Io {
        context: format!("creating the notify socket in {}", dir.display()),
        source,
    };
    // A short path for bind() (sun_path holds 108 bytes; `dir` may be longer).
    let dirfd = rustix::fs::open(
        dir,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| io_error(e.into()))?;
    let short = format!("/proc/self/fd/{}/notify", dirfd.as_raw_fd());
    let socket = UnixDatagram::bind(&short).map_err(io_error)?;
    std::os::unix::fs::chown(&short, Some(base), Some(base)).map_err(io_error)?;
    fs::set_permissions(&short, fs::Permissions::from_mode(0o600)).map_err(io_error)?;
    socket.set_nonblocking(true).map_err(io_error)?;
    Ok(socket)
}

/// Whether a notify datagram (newline-separated `KEY=VALUE`) says `READY=1`.
pub fn says_ready(datagram: &[u8]) -> bool {
    datagram
        .split(|b| *b == b'\n')
        .any(|line| line == b"READY=1")
}

/// Reads machine `name`'s notify socket until its PID 1 (`pidfd`) exits, recording
/// `READY=1`. (The socket file goes away with the machine's /run.)
pub async fn listen(name: String, socket: UnixDatagram, pidfd: OwnedFd) {
    let (Ok(socket), Ok(exited)) = (
        tokio::net::UnixDatagram::from_std(socket),
        crate::sys::process::register_async(pidfd),
    ) else {
        tracing::warn!(%name, "cannot watch the machine's notify socket");
        return;
    };
    let mut buffer = vec![0u8; 4096];
    loop {
        tokio::select! {
            received = socket.recv(&mut buffer) => match received {
                Ok(n) if says_ready(&buffer[..n]) => {
                    tracing::info!(%name, "machine reported READY=1");
                    mark_ready(&name);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%name, "reading the notify socket: {e}");
                    break;
                }
            },
            _ = exited.readable() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_is_one_line_of_the_datagram() {
        assert!(says_ready(b"READY=1"));
        assert!(says_ready(b"STATUS=Startup finished\nREADY=1\n"));
        assert!(!says_ready(b"READY=0"));
        assert!(!says_ready(b"STATUS=READY=1 soon"));
    }
}
