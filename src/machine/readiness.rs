//! When a started machine counts as up. A boot machine's systemd says so itself: berth binds
//! a notify socket of its own at `/run/host/notify` inside and gives PID 1
//! `NOTIFY_SOCKET=/run/host/notify`, as `systemd-nspawn --notify-ready=yes` does; the guest's
//! systemd sends `READY=1` once it has finished booting. An app machine is ready once its
//! command runs. Readiness is recorded as `/run/berth/machines/NAME.ready`, so it survives a
//! berthd restart.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use super::MachineError;
use super::lifecycle::STATUS_DIR;

/// Where berthd binds each boot machine's notify socket on the host.
pub const NOTIFY_DIR: &str = "/run/berth/notify";

/// The host path of machine `name`'s notify socket.
pub fn socket_path(name: &str) -> PathBuf {
    Path::new(NOTIFY_DIR).join(name)
}

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

/// A fresh notify socket for machine `name`, owned by its root (host UID `base`), so the
/// guest's systemd may send to it and nobody else on the host can.
pub fn bind(name: &str, base: u32) -> Result<UnixDatagram, MachineError> {
    let path = socket_path(name);
    let io_error = |source| MachineError::Io {
        context: format!("creating the notify socket {}", path.display()),
        source,
    };
    fs::create_dir_all(NOTIFY_DIR).map_err(io_error)?;
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(e)),
    }
    let socket = UnixDatagram::bind(&path).map_err(io_error)?;
    std::os::unix::fs::chown(&path, Some(base), Some(base)).map_err(io_error)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(io_error)?;
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
/// `READY=1`; then removes the socket.
pub async fn listen(name: String, socket: UnixDatagram, pidfd: OwnedFd) {
    let path = socket_path(&name);
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
    let _ = fs::remove_file(path);
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
