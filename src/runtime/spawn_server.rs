//! berthd's spawn server: `berthd --spawn-machine` ([`super::helper::server_main`]), started
//! once and kept for berthd's life. berthd is multi-threaded and may not fork; exec'ing its
//! binary for every machine start was the largest single cost of an app start in the VM test
//! host (loading a 13 MB binary, and under emulation translating its code anew at the new
//! addresses ASLR gives each exec). The server is single-threaded and forks one spawn helper
//! per start instead, with CLONE_PARENT: the helper, and the PID 1 it clones the same way, are
//! berthd's children, so berthd reaps them and reads PID 1's exit status as before.
//!
//! Protocol on the server's socket (its standard input): berthd sends one byte with the
//! helper's end of a new socket pair attached; the server answers `pid N` or `error: MESSAGE`.
//! The helper then speaks the spawn protocol on its own socket (see [`super::helper`]).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rustix::process::{Pid, WaitOptions};

use super::{RuntimeError, STEP_TIMEOUT, fdpass};

/// A spawn helper forked for one machine start, before it has the machine's config: a child
/// of berthd that waits on `socket` for the machine's descriptors and spawn config. Its PID can
/// go into the machine's scope first, so systemd starts the scope while the helper builds the
/// machine's tree ([`super::Launch::spawn`]).
#[derive(Debug)]
pub struct SpawnHelper {
    pub(super) pid: Pid,
    pub(super) socket: UnixStream,
}

impl SpawnHelper {
    /// A new helper, forked by the spawn server running `helper_binary`.
    pub fn fork(helper_binary: &Path) -> Result<Self, RuntimeError> {
        fork_helper(helper_binary)
    }

    pub fn pid(&self) -> u32 {
        self.pid.as_raw_nonzero().get().unsigned_abs()
    }

    /// A pidfd of the helper (it is berthd's child, not reaped yet, so the PID is still its).
    pub fn pidfd(&self) -> Option<OwnedFd> {
        rustix::process::pidfd_open(self.pid, rustix::process::PidfdFlags::NONBLOCK).ok()
    }
}

/// The running server, and the binary it runs.
#[derive(Debug)]
struct Server {
    binary: PathBuf,
    process: Child,
    socket: UnixStream,
}

static SERVER: Mutex<Option<Server>> = Mutex::new(None);

/// Helpers that gave their answer and exit on their own (tearing down a mount namespace takes
/// a while); reaped by the next [`prepare`] (which runs after each start) or a later start.
static ANSWERED_HELPERS: Mutex<Vec<Pid>> = Mutex::new(Vec::new());

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Neither is ever left half-changed, so a panic elsewhere doesn't spoil it.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Server {
    fn start(binary: &Path) -> Result<Self, RuntimeError> {
        let (mut process, ours) = super::start_helper_mode(binary, "--spawn-machine")?;
        if let Err(e) = ours.set_read_timeout(Some(STEP_TIMEOUT)) {
            let _ = process.kill();
            let _ = process.wait();
            return Err(RuntimeError::step("socket timeout", e));
        }
        Ok(Self {
            binary: binary.to_owned(),
            process,
            socket: ours,
        })
    }

    fn fork_helper(&mut self) -> io::Result<SpawnHelper> {
        let (ours, theirs) = UnixStream::pair()?;
        ours.set_read_timeout(Some(STEP_TIMEOUT))?;
        fdpass::send(&self.socket, b"F", &[theirs.as_fd()])?;
        drop(theirs);
        let answer = read_answer(&self.socket)?;
        match answer.strip_prefix("pid ").map(str::parse::<i32>) {
            Some(Ok(raw)) => Pid::from_raw(raw)
                .map(|pid| SpawnHelper { pid, socket: ours })
                .ok_or_else(|| io::Error::other(format!("the spawn server answered '{answer}'"))),
            _ => Err(io::Error::other(format!(
                "the spawn server answered '{}'",
                answer.trim_start_matches("error: ")
            ))),
        }
    }

    fn stop(mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// One answer line of the server (nothing after it is read: that is the next answer's).
fn read_answer(socket: &UnixStream) -> io::Result<String> {
    match fdpass::receive_line(socket)? {
        Some((answer, _)) => Ok(answer),
        None => Err(io::Error::other("the spawn server went away")),
    }
}

/// A new spawn helper for one machine start, forked by the server running `binary` (started
/// first when none runs, or when the one running has died or runs another binary).
fn fork_helper(binary: &Path) -> Result<SpawnHelper, RuntimeError> {
    reap_answered_helpers(false);
    let mut server = lock(&SERVER);
    if server.as_ref().is_some_and(|s| s.binary != binary)
        && let Some(old) = server.take()
    {
        old.stop();
    }
    // A server that died since the last start fails its first request: one more try with a
    // new one.
    let mut last_error = None;
    for _ in 0..2 {
        let running = match server.as_mut() {
            Some(running) => running,
            None => server.insert(Server::start(binary)?),
        };
        match running.fork_helper() {
            Ok(helper) => return Ok(helper),
            Err(e) => {
                tracing::warn!("the spawn server failed ({e}); starting a new one");
                if let Some(broken) = server.take() {
                    broken.stop();
                }
                last_error = Some(e);
            }
        }
    }
    Err(RuntimeError::step(
        "forking a spawn helper",
        last_error.unwrap_or_else(|| io::Error::other("no spawn server")),
    ))
}

/// Starts the spawn server running `binary` unless it runs, and reaps the helpers of earlier
/// starts. Called when berthd starts and after each start, off the start's critical path.
pub fn prepare(binary: &Path) {
    reap_answered_helpers(true);
    let mut server = lock(&SERVER);
    if server.is_some() {
        return;
    }
    match Server::start(binary) {
        Ok(started) => *server = Some(started),
        Err(e) => tracing::warn!("cannot start the spawn server: {e}"),
    }
}

/// Records a helper that answered, to be reaped later.
pub(super) fn answered(pid: Pid) {
    lock(&ANSWERED_HELPERS).push(pid);
}

/// Waits for a helper that failed (it exits right after its error).
pub(super) fn wait_helper(pid: Pid) -> Option<rustix::process::WaitStatus> {
    rustix::process::waitpid(Some(pid), WaitOptions::empty())
        .ok()
        .flatten()
        .map(|(_, status)| status)
}

/// Reaps the answered helpers: those that have exited, or all of them when `wait` (outside
/// the lock, so a start handing over its helper never waits for this).
fn reap_answered_helpers(wait: bool) {
    if wait {
        let answered = std::mem::take(&mut *lock(&ANSWERED_HELPERS));
        for pid in answered {
            wait_helper(pid);
        }
    } else {
        lock(&ANSWERED_HELPERS).retain(|pid| {
            matches!(
                rustix::process::waitpid(Some(*pid), WaitOptions::NOHANG),
                Ok(None)
            )
        });
    }
}
