//! berth's init: PID 1 of an app machine. It starts the command, forwards signals to it,
//! reaps every process that ends up orphaned in the machine, and when the command ends writes
//! its exit status to the status file and exits with the same code (the kernel then kills
//! whatever else was left in the machine's PID namespace).

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::sys::process::Forked;

/// journald's stream socket (what systemd connects services' stdout to).
const JOURNAL_STREAM: &str = "/run/systemd/journal/stdout";

/// How the payload ended, as written to the status file and read back by berthd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Killed(i32),
}

impl ExitStatus {
    /// The exit code a shell would report: the code, or 128 + the signal.
    pub fn code(self) -> i32 {
        match self {
            Self::Exited(code) => code,
            Self::Killed(signal) => 128 + signal,
        }
    }

    /// The status file's line: `exited N` or `killed SIGNAL`.
    pub fn to_line(self) -> String {
        match self {
            Self::Exited(code) => format!("exited {code}"),
            Self::Killed(signal) => format!("killed {signal}"),
        }
    }

    pub fn parse(line: &str) -> Option<Self> {
        let (kind, number) = line.trim().split_once(' ')?;
        let number = number.parse().ok()?;
        match kind {
            "exited" => Some(Self::Exited(number)),
            "killed" => Some(Self::Killed(number)),
            _ => None,
        }
    }

    /// For people: "exited with status 7", "killed by signal 9 (SIGKILL)".
    pub fn describe(self) -> String {
        match self {
            Self::Exited(code) => format!("exited with status {code}"),
            Self::Killed(signal) => match Signal::try_from(signal) {
                Ok(s) => format!("killed by signal {signal} ({})", s.as_str()),
                Err(_) => format!("killed by signal {signal}"),
            },
        }
    }
}

/// Connects a journal stream whose lines are logged with SYSLOG_IDENTIFIER=`identifier`,
/// naming `unit` as theirs. journald takes that name (from a stream connected by host root
/// only) when the connecting process is gone by the time it reads a line.
pub fn connect_journal(identifier: &str, unit: &str) -> io::Result<OwnedFd> {
    let mut stream = UnixStream::connect(JOURNAL_STREAM)?;
    // identifier, unit id, priority, level prefix, forward to syslog, kmsg, console.
    write!(stream, "{identifier}\n{unit}\n6\n1\n0\n0\n0\n")?;
    rustix::net::shutdown(&stream, rustix::net::Shutdown::Read)?;
    Ok(OwnedFd::from(stream))
}

/// What the payload is and how it runs.
pub struct Launch<'a> {
    pub command: &'a [String],
    pub env: &'a [(String, String)],
    pub user: &'a super::login::User,
    pub working_directory: &'a str,
}

/// Runs the launch's command as the machine's payload and never returns. `socket` (to berthd) is shut
/// down once the command has been executed, or carries the error when it could not be.
pub fn run(
    launch: &Launch<'_>,
    stdio: [OwnedFd; 3],
    tty: bool,
    status_file: Option<OwnedFd>,
    null: OwnedFd,
    socket: &UnixStream,
) -> ! {
    // Forked from berthd's spawn server without an exec, it would show as "berthd" in the
    // machine's `ps` and `top` (named before the fork: the command execs before it looks).
    let _ = rustix::thread::set_name(c"berth-init");
    // Blocked before the fork, so no signal is lost or acted on before the loop below.
    let all = SigSet::all();
    let _ = all.thread_block();
    let (error_read, error_write) = match rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
    {
        Ok(pipe) => pipe,
        Err(e) => fail(socket, &format!("creating a pipe: {e}")),
    };
    let child = match crate::sys::process::fork() {
        Err(e) => fail(socket, &format!("forking the command: {e}")),
        Ok(Forked::Child) => {
            drop(error_read);
            let error = exec_payload(launch, stdio, tty);
            let mut pipe = std::fs::File::from(error_write);
            let _ = write!(pipe, "{error}");
            std::process::exit(127)
        }
        Ok(Forked::Parent { child }) => Pid::from_raw(child),
    };
    drop(error_write);
    drop(stdio);
    let mut error = String::new();
    let _ = std::fs::File::from(error_read).read_to_string(&mut error);
    if !error.is_empty() {
        let _ = nix::sys::wait::waitpid(child, None);
        fail(socket, &format!("executing {}: {error}", launch.command[0]))
    }
    // Done with berthd: it sees EOF. Nothing of the helper's stays open here.
    let _ = rustix::net::shutdown(socket, rustix::net::Shutdown::Both);
    let _ = rustix::stdio::dup2_stdin(&null)
        .and_then(|()| rustix::stdio::dup2_stdout(&null))
        .and_then(|()| rustix::stdio::dup2_stderr(&null));
    drop(null);
    let status = supervise(child, &all, None);
    if let Some(file) = status_file {
        let _ = writeln!(std::fs::File::from(file), "{}", status.to_line());
    }
    std::process::exit(status.code() & 0xff)
}

/// Sets up the child's session, standard streams, user and directory, then executes the
/// command; returns only the error when that fails.
fn exec_payload(launch: &Launch<'_>, stdio: [OwnedFd; 3], tty: bool) -> String {
    if let Err(e) = enter_session(stdio, tty) {
        return e;
    }
    if let Err(e) = super::login::become_user(launch.user, launch.working_directory) {
        return e;
    }
    let error = Command::new(&launch.command[0])
        .args(&launch.command[1..])
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .exec();
    error.to_string()
}

/// In a forked child about to exec: unblocks signals, starts a new session, makes `stdio`
/// its standard streams and, for a terminal, takes it as the controlling one.
pub(super) fn enter_session(stdio: [OwnedFd; 3], tty: bool) -> Result<(), String> {
    let _ = SigSet::all().thread_unblock();
    rustix::process::setsid().map_err(|e| format!("new session: {e}"))?;
    let [stdin, stdout, stderr] = &stdio;
    rustix::stdio::dup2_stdin(stdin)
        .and_then(|()| rustix::stdio::dup2_stdout(stdout))
        .and_then(|()| rustix::stdio::dup2_stderr(stderr))
        .map_err(|e| format!("setting up standard input and output: {e}"))?;
    drop(stdio);
    if tty {
        rustix::process::ioctl_tiocsctty(io::stdin().as_fd())
            .map_err(|e| format!("taking the terminal: {e}"))?;
    }
    Ok(())
}

/// Forwards signals to `child` and reaps until it ends; returns how it ended.
/// `hangup`, when given, takes SIGHUP's place: the child doesn't get it.
pub(super) fn supervise(child: Pid, all: &SigSet, hangup: Option<&dyn Fn()>) -> ExitStatus {
    let signals = match SignalFd::new(all) {
        Ok(fd) => fd,
        Err(_) => return wait_only(child),
    };
    loop {
        if let Some(status) = reap(child) {
            return status;
        }
        let Ok(Some(info)) = signals.read_signal() else {
            continue;
        };
        let number = i32::try_from(info.ssi_signo).unwrap_or(0);
        if number == libc::SIGCHLD {
            continue;
        }
        if number == libc::SIGHUP
            && let Some(hangup) = hangup
        {
            hangup();
            continue;
        }
        if let Some(signal) = forwarded(number) {
            let _ = nix::sys::signal::kill(child, signal);
        }
    }
}

/// What the payload gets for a signal PID 1 received. machined's poweroff (SIGRTMIN+4),
/// systemd's halt requests and SIGPWR mean "end": the payload gets SIGTERM.
fn forwarded(number: i32) -> Option<Signal> {
    if number >= libc::SIGRTMIN() || number == libc::SIGPWR {
        return Some(Signal::SIGTERM);
    }
    Signal::try_from(number).ok()
}

/// Reaps every exited process; returns the child's status once it has ended.
fn reap(child: Pid) -> Option<ExitStatus> {
    let mut result = None;
    loop {
        match nix::sys::wait::waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                result = Some(ExitStatus::Exited(code));
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == child => {
                result = Some(ExitStatus::Killed(signal as i32));
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return result,
            Ok(_) => {}
        }
    }
}

fn wait_only(child: Pid) -> ExitStatus {
    loop {
        match nix::sys::wait::waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return ExitStatus::Exited(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => return ExitStatus::Killed(signal as i32),
            Ok(_) => {}
            Err(_) => return ExitStatus::Exited(255),
        }
    }
}

fn fail(socket: &UnixStream, message: &str) -> ! {
    let _ = writeln!(&*socket, "error: {message}");
    std::process::exit(127)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_lines_round_trip() {
        for status in [ExitStatus::Exited(7), ExitStatus::Killed(9)] {
            assert_eq!(ExitStatus::parse(&status.to_line()), Some(status));
        }
        assert_eq!(ExitStatus::Exited(7).code(), 7);
        assert_eq!(ExitStatus::Killed(15).code(), 143);
        assert_eq!(ExitStatus::parse("garbage"), None);
        assert_eq!(
            ExitStatus::Killed(9).describe(),
            "killed by signal 9 (SIGKILL)"
        );
    }

    #[test]
    fn poweroff_requests_become_sigterm() {
        assert_eq!(forwarded(libc::SIGRTMIN() + 4), Some(Signal::SIGTERM));
        assert_eq!(forwarded(libc::SIGINT), Some(Signal::SIGINT));
        assert_eq!(forwarded(libc::SIGHUP), Some(Signal::SIGHUP));
    }
}
