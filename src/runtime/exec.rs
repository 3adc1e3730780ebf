//! `berth exec`: running a command inside a running machine. berthd starts `berthd
//! --exec-machine` (single-threaded, so it may enter a user namespace) with a socket as its
//! standard input. The helper joins the machine's cgroup, enters all of its namespaces
//! through a pidfd of its leader, becomes the requested user of the machine's /etc/passwd
//! and runs the command; it forwards signals and reports how the command ended.
//!
//! Protocol (lines on the socket): berthd → helper: one byte carrying stdin, stdout and stderr
//! (or none, for a terminal), then the config as JSON; helper → berthd: `started` (with the
//! terminal's master side attached when one was asked for) or `error: MESSAGE`; later
//! `exited N` or `killed SIGNAL`.

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use nix::sched::CloneFlags;
use nix::sys::signal::SigSet;
use nix::unistd::{Gid, Pid, Uid};
use serde::{Deserialize, Serialize};

use super::RuntimeError;
use super::init::{self, ExitStatus};
use super::login::{self, GuestFiles, User, login_environment};
use crate::sys::process::Forked;

/// What the exec helper needs to know.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecConfig {
    /// The machine's PID 1, as the host sees it.
    pub leader: i32,
    /// The machine's scope cgroup directory (`/sys/fs/cgroup/machine.slice/machine-N.scope`).
    pub scope_cgroup: PathBuf,
    /// Join the machine's `payload` cgroup (an app machine's, where berth's init runs);
    /// otherwise (a boot machine, whose systemd owns `payload` and may be enabling
    /// controllers there, which a process in it would make fail) `exec` beside it.
    pub join_payload: bool,
    /// A user name or number of the machine's /etc/passwd; empty for root.
    pub user: String,
    pub command: Vec<String>,
    /// Give the command a new terminal of the machine's devpts.
    pub tty: bool,
    /// The caller's TERM and COLORTERM (`NAME`, `VALUE`).
    pub environment: Vec<(String, String)>,
    /// The caller's window size (rows, columns), set on the new terminal before the command
    /// starts; (0, 0) when unknown.
    pub window: (u16, u16),
    pub machine_id: String,
    /// Variables set over the login environment (a build's ENV), `NAME`, `VALUE`.
    #[serde(default)]
    pub extra_environment: Vec<(String, String)>,
    /// Where the command starts (empty: the user's home, else /).
    #[serde(default)]
    pub working_dir: String,
    /// Instead of running the command, unpack the copy stream on stdin at this path, as the
    /// machine's root (`berth copy-to`; see [`super::copy`]).
    #[serde(default)]
    pub unpack_to: Option<String>,
    /// Instead of running the command, write a copy stream of this path of the machine to
    /// stdin's descriptor, as the machine's root (`berth copy-from`).
    #[serde(default)]
    pub pack_from: Option<String>,
    /// A hangup (the caller left) goes to this unit of the machine's systemd, with its own
    /// `systemctl kill`, instead of to the command. For `berth shell`, whose command is
    /// systemd-run: the session gets SIGHUP, as from a closed terminal (systemd-run, killed
    /// itself, would have its service stopped, with SIGTERM first).
    #[serde(default)]
    pub hangup_unit: Option<String>,
    /// A copy into or out of a stopped machine: the helper makes its root itself instead of
    /// entering the namespaces of a running machine's leader.
    #[serde(default)]
    pub stopped: Option<StoppedRoot>,
}

/// A stopped machine's root, which the exec helper makes for a copy as the machine would
/// have it (see `helper::enter_stopped_root`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoppedRoot {
    pub root: PathBuf,
    pub uid_base: u32,
    /// The machine's own filesystem, mounted on `root`.
    pub volume: Option<PathBuf>,
    /// Where the machine's own mounts cover its root once it runs (/tmp, /run, a --bind's
    /// destination), each with what covers it: a copy there would be hidden.
    pub covered: Vec<(PathBuf, String)>,
}

/// A command running in a machine.
#[derive(Debug)]
pub struct Exec {
    reader: BufReader<UnixStream>,
    /// The exec helper, berthd's child: reaped once it has reported (no zombie per exec).
    helper: std::process::Child,
    /// The master side of its terminal, when it has one.
    pub terminal: Option<OwnedFd>,
}

impl Exec {
    /// Starts `command` in the machine; returns once it runs.
    pub fn start(
        helper_binary: &Path,
        config: &ExecConfig,
        stdio: Option<[OwnedFd; 3]>,
    ) -> Result<Self, RuntimeError> {
        let (mut helper, ours) = super::start_helper_mode(helper_binary, "--exec-machine")?;
        match Self::handshake(ours, config, stdio) {
            Ok((reader, terminal)) => Ok(Self {
                reader,
                helper,
                terminal,
            }),
            Err(e) => {
                // It has reported an error and is ending, or can't go on: either way, reaped.
                let _ = helper.kill();
                let _ = helper.wait();
                Err(e)
            }
        }
    }

    /// Sends the helper its config and streams; its reply: started (the reader, and the
    /// terminal's master side when there is one) or the error it met.
    fn handshake(
        ours: UnixStream,
        config: &ExecConfig,
        stdio: Option<[OwnedFd; 3]>,
    ) -> Result<(BufReader<UnixStream>, Option<OwnedFd>), RuntimeError> {
        let passed: Vec<_> = stdio.iter().flatten().map(AsFd::as_fd).collect();
        let config_line = serde_json::to_string(config).map_err(io::Error::other);
        super::fdpass::send(&ours, b"F", &passed)
            .and(config_line)
            .and_then(|line| writeln!(&ours, "{line}"))
            .map_err(|e| RuntimeError::step("sending the exec config", e))?;
        drop(stdio);
        // Only the first line: a command that ends at once has its status line sent right
        // behind it, for `wait`.
        let (reply, fds) = super::fdpass::receive_line(&ours)
            .map_err(|e| RuntimeError::step("waiting for the command to start", e))?
            .ok_or_else(|| {
                RuntimeError::Exec(
                    "the exec helper ended without a word; see 'journalctl -u berthd'".into(),
                )
            })?;
        if let Some(message) = reply.strip_prefix("error: ") {
            return Err(RuntimeError::Exec(message.to_owned()));
        }
        if reply != "started" {
            return Err(RuntimeError::Exec(format!(
                "the exec helper answered '{reply}'"
            )));
        }
        Ok((BufReader::new(ours), fds.into_iter().next()))
    }

    /// A way to hang the command up later, while the helper runs.
    pub fn hangup(&self) -> Option<Hangup> {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.helper.id()).ok()?)?;
        rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
            .ok()
            .map(Hangup)
    }

    /// Waits for the command to end (blocking).
    pub fn wait(mut self) -> Result<ExitStatus, RuntimeError> {
        let mut line = String::new();
        let read = self.reader.read_line(&mut line);
        // The helper ends right after its status line (or was killed with the machine); one
        // that can't be heard any more is killed, so the wait can't hang.
        if read.is_err() {
            let _ = self.helper.kill();
        }
        let _ = self.helper.wait();
        read.map_err(|e| RuntimeError::step("waiting for the command", e))?;
        // The helper lives in the machine's cgroup: when the machine is killed (berth kill,
        // machinectl terminate, a stop that timed out), it dies with the command, unheard.
        if line.is_empty() {
            return Ok(ExitStatus::Killed(libc::SIGKILL));
        }
        ExitStatus::parse(&line).ok_or_else(|| {
            RuntimeError::Exec(format!(
                "the exec helper ended without an exit status ('{}')",
                line.trim()
            ))
        })
    }
}

/// Hangs a command up as a closed terminal would: SIGHUP to its exec helper, which passes it
/// on. A pidfd of the helper, so it reaches no other process once the helper is gone.
#[derive(Debug)]
pub struct Hangup(OwnedFd);

impl Hangup {
    pub fn send(&self) {
        let _ = rustix::process::pidfd_send_signal(&self.0, rustix::process::Signal::HUP);
    }
}

/// Entry point of `berthd --exec-machine`.
pub fn exec_main() -> ExitCode {
    let socket = match io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => UnixStream::from(fd),
        Err(e) => {
            eprintln!("berthd --exec-machine: no socket on stdin: {e}");
            return ExitCode::FAILURE;
        }
    };
    match helper(&socket) {
        Ok(status) => {
            let _ = writeln!(&socket, "{}", status.to_line());
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(&socket, "error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn step<T>(what: &str, result: io::Result<T>) -> Result<T, RuntimeError> {
    result.map_err(|e| RuntimeError::step(what, e))
}

fn helper(socket: &UnixStream) -> Result<ExitStatus, RuntimeError> {
    let mut byte = [0u8; 1];
    let (_, fds) = step(
        "receiving descriptors",
        super::fdpass::receive(socket, &mut byte),
    )?;
    let mut line = String::new();
    step(
        "reading the exec config",
        BufReader::new(step("cloning the socket", socket.try_clone())?).read_line(&mut line),
    )?;
    let config: ExecConfig = step(
        "reading the exec config",
        serde_json::from_str(&line).map_err(io::Error::other),
    )?;
    if config.command.first().is_none_or(String::is_empty) {
        return Err(RuntimeError::Exec("no command to run".into()));
    }
    let own_network = match &config.stopped {
        Some(stopped) => {
            super::helper::enter_stopped_root(stopped)?;
            false
        }
        None => enter_running(&config)?,
    };
    // Become the machine's root, so what it creates (the terminal) is the machine's.
    let root_uid = Uid::from_raw(0);
    let root_gid = Gid::from_raw(0);
    step(
        "becoming root in the machine",
        nix::unistd::setresgid(root_gid, root_gid, root_gid)
            .and_then(|()| nix::unistd::setgroups(&[]))
            .and_then(|()| nix::unistd::setresuid(root_uid, root_uid, root_uid))
            .map_err(io::Error::from),
    )?;
    // The same confinement as the machine's PID 1, which nothing here inherits.
    super::confine::apply(own_network)?;
    let user = User::lookup(&config.user)?;
    let (stdio, terminal) = if config.tty {
        // Group tty (5), as a login terminal is.
        let (master, subsidiary) = super::open_pty(Path::new("/dev/pts/ptmx"), user.uid, 5)?;
        let (rows, columns) = config.window;
        if rows > 0 && columns > 0 {
            let size = rustix::termios::Winsize {
                ws_row: rows,
                ws_col: columns,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            let _ = rustix::termios::tcsetwinsize(&master, size);
        }
        let dup = |fd: &OwnedFd| step("dup", fd.try_clone());
        (
            [dup(&subsidiary)?, dup(&subsidiary)?, subsidiary],
            Some(master),
        )
    } else {
        let mut fds = fds.into_iter();
        match (fds.next(), fds.next(), fds.next()) {
            (Some(a), Some(b), Some(c)) => ([a, b, c], None),
            _ => return Err(RuntimeError::Exec("no standard streams passed".into())),
        }
    };
    let all = SigSet::all();
    let _ = all.thread_block();
    let (error_read, error_write) = step(
        "creating a pipe",
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(io::Error::from),
    )?;
    let child = match step("forking", crate::sys::process::fork())? {
        Forked::Child => {
            drop(error_read);
            if config.unpack_to.is_some() || config.pack_from.is_some() {
                // Nothing to exec: it has started once it runs. Stopping the machine ends it.
                drop(error_write);
                let _ = SigSet::all().thread_unblock();
                std::process::exit(super::copy::child_main(&config, stdio));
            }
            let error = run_child(&config, &user, stdio);
            let _ = write!(fs::File::from(error_write), "{error}");
            std::process::exit(127)
        }
        Forked::Parent { child } => Pid::from_raw(child),
    };
    drop(error_write);
    drop(stdio);
    let mut error = String::new();
    let _ = io::Read::read_to_string(&mut fs::File::from(error_read), &mut error);
    if !error.is_empty() {
        let _ = nix::sys::wait::waitpid(child, None);
        return Err(RuntimeError::Exec(format!(
            "executing {}: {error}",
            config.command[0]
        )));
    }
    let passed: Vec<_> = terminal.iter().map(AsFd::as_fd).collect();
    step(
        "reporting the start",
        super::fdpass::send(socket, b"started\n", &passed),
    )?;
    drop(terminal);
    let hangup_unit = config
        .hangup_unit
        .as_deref()
        .map(|unit| move || hang_up_unit(unit));
    Ok(init::supervise(
        child,
        &all,
        hangup_unit.as_ref().map(|f| f as &dyn Fn()),
    ))
}

/// Joins running machine `config.leader`'s cgroup and enters its namespaces; returns whether
/// it has a network namespace of its own.
fn enter_running(config: &ExecConfig) -> Result<bool, RuntimeError> {
    join_cgroup(&config.scope_cgroup, config.join_payload)?;
    let leader = rustix::process::Pid::from_raw(config.leader)
        .ok_or_else(|| RuntimeError::Exec(format!("bad leader PID {}", config.leader)))?;
    let pidfd = step(
        "opening the machine's leader",
        rustix::process::pidfd_open(leader, rustix::process::PidfdFlags::empty())
            .map_err(io::Error::from),
    )?;
    // A machine on the host's network has no namespace of its own to enter (and the host's
    // isn't the machine's root's to join).
    let own_network = netns_of(&format!("/proc/{leader}/ns/net")) != netns_of("/proc/self/ns/net");
    let mut namespaces = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWCGROUP;
    if own_network {
        namespaces |= CloneFlags::CLONE_NEWNET;
    }
    step(
        "entering the machine's namespaces (needs kernel 5.8+)",
        nix::sched::setns(&pidfd, namespaces).map_err(io::Error::from),
    )?;
    Ok(own_network)
}

/// SIGHUP to every process of `unit`, by the machine's own systemctl (a child that
/// `supervise` reaps like any other).
fn hang_up_unit(unit: &str) {
    let spawned = Command::new("systemctl")
        .args(["kill", "--signal=SIGHUP", unit])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(e) = spawned {
        eprintln!("berthd --exec-machine: systemctl kill {unit}: {e}");
    }
}

/// The inode of a network namespace file (`None` when it can't be read).
fn netns_of(path: &str) -> Option<u64> {
    fs::metadata(path)
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
}

/// Joins the machine's payload cgroup, or, for a boot machine (or when the payload is an
/// inner node), an `exec` cgroup beside it in the same scope.
fn join_cgroup(scope: &Path, payload: bool) -> Result<(), RuntimeError> {
    if payload && fs::write(scope.join("payload/cgroup.procs"), "0").is_ok() {
        return Ok(());
    }
    let exec = scope.join("exec");
    super::create_cgroup(&exec)?;
    step(
        &format!("joining {}", exec.display()),
        fs::write(exec.join("cgroup.procs"), "0"),
    )
}

/// In the forked child: session, terminal, credentials, environment, exec. Returns the error.
fn run_child(config: &ExecConfig, user: &User, stdio: [OwnedFd; 3]) -> String {
    if let Err(e) = init::enter_session(stdio, config.tty) {
        return e;
    }
    let home = match login::become_user(user, &config.working_dir) {
        Ok(home) => home,
        Err(e) => return e,
    };
    let files = GuestFiles::read();
    let mut environment = login_environment(user, &home, &files, &config.environment);
    for (key, value) in &config.extra_environment {
        environment.retain(|(k, _)| k != key);
        environment.push((key.clone(), value.clone()));
    }
    let mut command = Command::new(&config.command[0]);
    command
        .args(&config.command[1..])
        .env_clear()
        .envs(environment)
        .env("container", "berth")
        .env("container_uuid", super::helper::uuid(&config.machine_id));
    if config.tty && !config.environment.iter().any(|(k, _)| k == "TERM") {
        command.env("TERM", "vt220");
    }
    command.exec().to_string()
}
