//! Starting a machine's processes: namespaces, ID maps, mounts, hostname, the payload cgroup.
//! Never talks D-Bus: [`crate::machine::lifecycle`] drives the steps that need systemd.
//!
//! berthd never forks itself (it is multi-threaded): its spawn server (`berthd
//! --spawn-machine`, [`spawn_server`]) forks a spawn helper per start ([`helper`]), and berthd
//! talks to the helper and to the machine's PID 1 over a socket.

pub mod confine;
pub mod copy;
pub mod exec;
mod fdpass;
pub mod guest_etc;
pub mod helper;
mod init;
pub mod login;
pub mod shell;
pub mod signals;
mod spawn_server;

pub use spawn_server::{SpawnHelper, prepare as prepare_spawn_server};

pub use init::ExitStatus;

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::machine::{Bind, RANGE_SIZE};

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("{what}: {source}")]
    Step {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("starting the machine failed: {0}")]
    Machine(String),
    /// `berth exec` could not run its command.
    #[error("{0}")]
    Exec(String),
    /// A timezone or locale berth can't use.
    #[error("{0}")]
    Setting(String),
}

impl RuntimeError {
    pub fn step(what: &str, source: io::Error) -> Self {
        Self::Step {
            what: what.to_owned(),
            source,
        }
    }
}

/// `N` bytes from the kernel's random pool (for machine-ids and unit names).
pub fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    io::Read::read_exact(&mut fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes)
}

/// A bind mount as the helper needs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpawnBind {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub read_only: bool,
}

impl From<&Bind> for SpawnBind {
    fn from(b: &Bind) -> Self {
        Self {
            source: b.source.clone(),
            destination: b.destination.clone(),
            read_only: b.read_only,
        }
    }
}

/// What the spawn helper needs to know.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpawnConfig {
    /// The machine name: the journal identifier of an app's output.
    pub name: String,
    /// The machine's scope unit, which an app's journal stream names as its unit.
    pub unit: String,
    pub root: PathBuf,
    pub hostname: String,
    pub machine_id: String,
    pub uid_base: u32,
    pub binds: Vec<SpawnBind>,
    /// The machine's own filesystem image, mounted on `root` in the machine's namespace.
    pub volume: Option<PathBuf>,
    pub payload: Payload,
    /// Where PID 1's standard input and output go.
    pub stdio: StdioMode,
    /// `TERM` for a terminal (the caller's).
    pub term: String,
    /// Timezone and locale to write into the machine's /etc before it starts (the settings
    /// that follow the host).
    pub etc: guest_etc::GuestEtc,
    /// Give a boot machine's PID 1 `NOTIFY_SOCKET=/run/host/notify`, where berthd binds a
    /// socket before PID 1 execs and its systemd reports READY=1.
    pub notify: bool,
    /// How an app machine's command runs (ignored when booting).
    pub app: AppSettings,
    /// A network namespace of its own (every network mode but host).
    pub own_network: bool,
}

/// How an app machine's command runs: as whom, where, with which variables (an OCI config's
/// or a build's defaults, or `--user`, `--workdir`, `--env` at create).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppSettings {
    /// `USER[:GROUP]` of the machine's /etc/passwd and /etc/group; empty for root.
    pub user: String,
    /// Where the command starts; empty for the user's home (or / when it has none).
    pub working_directory: String,
    /// `NAME`, `VALUE` set over the login environment, in order.
    pub environment: Vec<(String, String)>,
}

impl AppSettings {
    /// Checks a `USER[:GROUP]` spec: names or numbers, no blanks or line breaks.
    pub fn validate_user(spec: &str) -> Result<(), String> {
        let ok = |part: &str| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-$".contains(&b))
        };
        let valid = match spec.split_once(':') {
            Some((user, group)) => ok(user) && ok(group),
            None => ok(spec),
        };
        if valid {
            Ok(())
        } else {
            Err(format!(
                "user '{spec}' is not USER or USER:GROUP (names or numbers of the machine's \
                 /etc/passwd and /etc/group)"
            ))
        }
    }

    /// Checks a working directory: an absolute path without `..` or line breaks.
    pub fn validate_working_directory(path: &str) -> Result<(), String> {
        if path.starts_with('/') && !path.split('/').any(|c| c == "..") && !path.contains('\n') {
            Ok(())
        } else {
            Err(format!(
                "working directory '{path}' is not an absolute path (e.g. --workdir /srv/app)"
            ))
        }
    }

    /// Parses a `NAME=VALUE` assignment: NAME of letters, digits and '_', not starting with a
    /// digit; VALUE without line breaks.
    pub fn parse_variable(assignment: &str) -> Result<(String, String), String> {
        let bad = |why: &str| format!("environment variable '{assignment}': {why}");
        let (name, value) = assignment
            .split_once('=')
            .ok_or_else(|| bad("expected NAME=VALUE (e.g. --env LOG_LEVEL=debug)"))?;
        let name_ok = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            return Err(bad(
                "the name must be letters, digits and '_', not starting with a digit",
            ));
        }
        if value.contains(['\n', '\r', '\0']) {
            return Err(bad("the value must not contain a line break"));
        }
        Ok((name.to_owned(), value.to_owned()))
    }

    /// Sets `name` to `value`, replacing an earlier value.
    pub fn set_variable(&mut self, name: String, value: String) {
        self.environment.retain(|(k, _)| *k != name);
        self.environment.push((name, value));
    }
}

/// What PID 1 is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Payload {
    /// The image's init (systemd).
    Boot,
    /// berth's small init, running this command.
    App(Vec<String>),
}

/// Where the payload's standard input, output and error go.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum StdioMode {
    /// Output to the journal (SYSLOG_IDENTIFIER=NAME, attributed to the machine's scope),
    /// input from /dev/null. A booted init gets /dev/null and logs to its own journal.
    Journal,
    /// The three descriptors passed with [`SpawnFds::stdio`] (a caller's pipes or files).
    Passed,
    /// A new pseudo-terminal in the machine's own devpts; berthd gets its master side
    /// ([`Launch::terminal`]). A booted init also gets it as /dev/console.
    Terminal,
}

/// Descriptors berthd hands to the machine's PID 1.
#[derive(Debug)]
pub struct SpawnFds {
    /// Open for writing: PID 1 (berth's init) writes the payload's exit status here.
    pub status: OwnedFd,
    /// stdin, stdout, stderr for [`StdioMode::Passed`].
    pub stdio: Option<[OwnedFd; 3]>,
}

/// A machine being started: its PID 1 exists but waits for berthd.
#[derive(Debug)]
pub struct Launch {
    socket: UnixStream,
    reader: BufReader<UnixStream>,
    /// While open, the helper that cloned PID 1 stays (see [`Launch::release_helper`]).
    helper_hold: Option<OwnedFd>,
    /// The helper's PID (it is in the machine's scope until released).
    pub helper_pid: i32,
    pub pid: i32,
    /// The master side of the machine's terminal ([`StdioMode::Terminal`]).
    pub terminal: Option<OwnedFd>,
    /// How long the helper's steps took (`30.1 ms: mount namespace 0.4, …`), for the log.
    pub setup: String,
}

/// How long each step may take (the VM test host runs code ~20x slower than natively).
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

impl Launch {
    /// Hands the machine's config to `helper` and waits for the PID of the machine's PID 1.
    /// The helper stays until [`Launch::release_helper`] (or the launch's end).
    pub fn spawn(
        helper: SpawnHelper,
        config: &SpawnConfig,
        fds: &SpawnFds,
    ) -> Result<Self, RuntimeError> {
        let SpawnHelper {
            pid: helper,
            socket: ours,
        } = helper;
        let (hold_read, hold_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| RuntimeError::step("creating a pipe", e.into()))?;
        let config_line = serde_json::to_string(config).map_err(io::Error::other);
        let reader = ours
            .try_clone()
            .map_err(|e| RuntimeError::step("cloning the socket", e))?;
        let mut launch = Self {
            socket: ours,
            reader: BufReader::new(reader),
            helper_hold: Some(hold_write),
            helper_pid: helper.as_raw_nonzero().get(),
            pid: 0,
            terminal: None,
            setup: String::new(),
        };
        let mut passed = vec![hold_read.as_fd(), fds.status.as_fd()];
        if let Some(stdio) = &fds.stdio {
            passed.extend(stdio.iter().map(AsFd::as_fd));
        }
        let sent = fdpass::send(&launch.socket, b"F", &passed)
            .and(config_line)
            .and_then(|line| writeln!(&launch.socket, "{line}"));
        drop(hold_read);
        let reply = sent
            .map_err(|e| RuntimeError::step("sending the spawn config", e))
            .and_then(|()| launch.receive_with_fd());
        let (reply, terminal) = match reply {
            Ok(answer) => answer,
            Err(e) => {
                launch.release_helper();
                spawn_server::wait_helper(helper);
                return Err(e);
            }
        };
        launch.terminal = terminal;
        // "pid N", then how long the helper's steps took.
        let answer = reply
            .strip_prefix("pid ")
            .map(|rest| rest.split_once(' ').unwrap_or((rest, "")))
            .and_then(|(pid, setup)| Some((pid.parse().ok()?, setup)));
        let Some((pid, setup)) = answer else {
            launch.release_helper();
            let status = spawn_server::wait_helper(helper);
            return Err(RuntimeError::Machine(format!(
                "the spawn helper answered '{reply}' (exit status {status:?})"
            )));
        };
        launch.pid = pid;
        launch.setup = setup.to_owned();
        // The helper exits once released, tearing down its mount namespace (a copy of the
        // host's mounts and the machine's tree): reaped later, off the start's path.
        spawn_server::answered(helper);
        Ok(launch)
    }

    /// Lets the helper that cloned PID 1 exit: once PID 1 is in the machine's scope, or the
    /// scope is not going to be.
    pub fn release_helper(&mut self) {
        self.helper_hold = None;
    }

    /// The helper's first answer, which may carry the terminal's master side.
    fn receive_with_fd(&mut self) -> Result<(String, Option<OwnedFd>), RuntimeError> {
        // Only the first line: the reader gets what follows it.
        let Some((line, fds)) = fdpass::receive_line(&self.socket)
            .map_err(|e| RuntimeError::step("waiting for the machine", e))?
        else {
            return Err(RuntimeError::Machine(
                "the machine's setup ended without a word".into(),
            ));
        };
        match line.strip_prefix("error: ") {
            Some(message) => Err(RuntimeError::Machine(message.to_owned())),
            None => Ok((line, fds.into_iter().next())),
        }
    }

    fn receive(&mut self) -> Result<String, RuntimeError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| RuntimeError::step("waiting for the machine", e))?;
        if n == 0 {
            return Err(RuntimeError::Machine(
                "the machine's setup ended without a word".into(),
            ));
        }
        let line = line.trim_end().to_owned();
        match line.strip_prefix("error: ") {
            Some(message) => Err(RuntimeError::Machine(message.to_owned())),
            None => Ok(line),
        }
    }

    fn send(&self, message: &str) -> Result<(), RuntimeError> {
        writeln!(&self.socket, "{message}")
            .map_err(|e| RuntimeError::step("signalling the machine", e))
    }

    /// Writes the machine's UID and GID maps and lets PID 1 mount /proc; returns once it has.
    pub fn map_ids(&mut self, uid_base: u32) -> Result<(), RuntimeError> {
        let map = format!("0 {uid_base} {RANGE_SIZE}\n");
        for file in ["uid_map", "gid_map"] {
            fs::write(format!("/proc/{}/{file}", self.pid), &map)
                .map_err(|e| RuntimeError::step(&format!("writing {file}"), e))?;
        }
        self.send("maps")?;
        match self.receive()?.as_str() {
            "proc" => Ok(()),
            other => Err(RuntimeError::Machine(format!(
                "unexpected '{other}' from the machine"
            ))),
        }
    }

    /// Lets PID 1 pivot and exec its init; returns once it has exec'd.
    pub fn go(mut self) -> Result<(), RuntimeError> {
        self.send("go")?;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Ok(()),
            Ok(_) => Err(RuntimeError::Machine(
                line.trim_end().trim_start_matches("error: ").to_owned(),
            )),
            Err(e) => Err(RuntimeError::step(
                "waiting for the machine's init to start",
                e,
            )),
        }
    }

    /// Kills PID 1 of a launch that will not complete, and reaps it (it is berthd's child;
    /// when a reaper task already waits for it, that one gets it instead).
    pub fn abort(&self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
        }
    }
}

/// A new pseudo-terminal from the devpts instance whose `ptmx` is given: (master, subsidiary),
/// the subsidiary owned by `uid`:`gid` (host IDs, or the machine's after entering its user
/// namespace).
pub(crate) fn open_pty(
    ptmx: &Path,
    uid: u32,
    gid: u32,
) -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    use rustix::fs::{Mode, OFlags};
    use rustix::pty::OpenptFlags;
    fn errno(what: &str) -> impl FnOnce(rustix::io::Errno) -> RuntimeError + '_ {
        move |e| RuntimeError::step(what, e.into())
    }
    let master = rustix::fs::open(
        ptmx,
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno("opening the machine's /dev/pts/ptmx"))?;
    rustix::pty::unlockpt(&master).map_err(errno("unlocking the terminal"))?;
    let subsidiary =
        rustix::pty::ioctl_tiocgptpeer(&master, OpenptFlags::RDWR | OpenptFlags::NOCTTY)
            .map_err(errno("opening the terminal"))?;
    rustix::fs::fchown(
        &subsidiary,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .map_err(errno("handing the terminal to the machine"))?;
    Ok((master, subsidiary))
}

/// Starts `binary MODE`, one of berthd's helper modes (`--spawn-machine`, `--exec-machine`),
/// with one end of a new socket pair as its standard input; returns it and the other end.
/// Its own messages go to berthd's journal (its standard error).
fn start_helper_mode(
    binary: &Path,
    mode: &str,
) -> Result<(std::process::Child, UnixStream), RuntimeError> {
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| RuntimeError::step("creating a socket pair", e))?;
    let child = crate::sys::process::command(binary)
        .arg(mode)
        .stdin(std::process::Stdio::from(OwnedFd::from(theirs)))
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| RuntimeError::step(&format!("starting {}", binary.display()), e))?;
    Ok((child, ours))
}

/// Moves `pid` (the machine's PID 1) into `CGROUP/payload` and hands that cgroup to the
/// machine's root, so systemd inside can manage its own subtree (the scope itself stays
/// systemd's). Moves `helper` (the spawn helper that cloned PID 1, still in the scope's own
/// cgroup) into `CGROUP/exec` beside it, so the scope holds no process itself and can enable
/// its controllers for its children: the machine's own systemd then sets the limits of its
/// units (MemoryMax=, CPUWeight=, TasksMax=...) as on a real machine, as systemd-nspawn's
/// guests do. Returns the controllers that could not be enabled.
pub fn delegate_payload_cgroup(
    scope_cgroup: &Path,
    pid: i32,
    helper: i32,
    uid_base: u32,
) -> Result<Vec<String>, RuntimeError> {
    let payload = scope_cgroup.join("payload");
    let context = |what: &str| format!("{what} {}", payload.display());
    create_cgroup(&payload)?;
    fs::write(payload.join("cgroup.procs"), pid.to_string())
        .map_err(|e| RuntimeError::step(&context("moving PID 1 into"), e))?;
    let owner = Some(rustix::fs::Uid::from_raw(uid_base));
    let group = Some(rustix::fs::Gid::from_raw(uid_base));
    let mut paths = vec![payload.clone()];
    for file in ["cgroup.procs", "cgroup.threads", "cgroup.subtree_control"] {
        paths.push(payload.join(file));
    }
    for path in paths {
        rustix::fs::chown(&path, owner, group)
            .map_err(|e| RuntimeError::step(&format!("chown {}", path.display()), e.into()))?;
    }
    let exec = scope_cgroup.join("exec");
    create_cgroup(&exec)?;
    match fs::write(exec.join("cgroup.procs"), helper.to_string()) {
        // Gone already: nothing left in the scope's own cgroup either.
        Err(e) if e.raw_os_error() != Some(libc::ESRCH) => {
            return Err(RuntimeError::step(
                &format!("moving the spawn helper into {}", exec.display()),
                e,
            ));
        }
        _ => {}
    }
    Ok(enable_controllers(scope_cgroup))
}

fn create_cgroup(path: &Path) -> Result<(), RuntimeError> {
    match fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(RuntimeError::step(
            &format!("creating {}", path.display()),
            e,
        )),
        _ => Ok(()),
    }
}

/// Enables, for the children of `cgroup`, every controller it has; returns those that could
/// not be (all in one write first: the kernel applies a list all or nothing).
fn enable_controllers(cgroup: &Path) -> Vec<String> {
    let available = fs::read_to_string(cgroup.join("cgroup.controllers")).unwrap_or_default();
    let controllers: Vec<&str> = available.split_whitespace().collect();
    let enable = |list: &[&str]| {
        let line: Vec<String> = list.iter().map(|c| format!("+{c}")).collect();
        fs::write(cgroup.join("cgroup.subtree_control"), line.join(" ")).is_ok()
    };
    if controllers.is_empty() || enable(&controllers) {
        return Vec::new();
    }
    controllers
        .into_iter()
        .filter(|c| !enable(&[c]))
        .map(str::to_owned)
        .collect()
}
