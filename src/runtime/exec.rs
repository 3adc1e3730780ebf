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
use std::process::{Command, ExitCode, Stdio};

use nix::sched::CloneFlags;
use nix::sys::signal::SigSet;
use nix::unistd::{Gid, Pid, Uid};
use serde::{Deserialize, Serialize};

use super::RuntimeError;
use super::init::{self, ExitStatus};
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
}

/// A command running in a machine.
#[derive(Debug)]
pub struct Exec {
    reader: BufReader<UnixStream>,
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
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| RuntimeError::step("creating a socket pair", e))?;
        // The helper's own messages (before it reaches the machine) go to berthd's journal.
        let _child = Command::new(helper_binary)
            .arg("--exec-machine")
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| RuntimeError::step(&format!("starting {}", helper_binary.display()), e))?;
        let passed: Vec<_> = stdio.iter().flatten().map(AsFd::as_fd).collect();
        let config_line = serde_json::to_string(config).map_err(io::Error::other);
        super::fdpass::send(&ours, b"F", &passed)
            .and(config_line)
            .and_then(|line| writeln!(&ours, "{line}"))
            .map_err(|e| RuntimeError::step("sending the exec config", e))?;
        drop(stdio);
        let mut buffer = [0u8; 4096];
        let (n, fds) = super::fdpass::receive(&ours, &mut buffer)
            .map_err(|e| RuntimeError::step("waiting for the command to start", e))?;
        let mut reply = String::from_utf8_lossy(&buffer[..n]).into_owned();
        let mut reader = BufReader::new(ours);
        if n > 0 && !reply.ends_with('\n') {
            let _ = reader.read_line(&mut reply);
        }
        let reply = reply.trim_end();
        if let Some(message) = reply.strip_prefix("error: ") {
            return Err(RuntimeError::Exec(message.to_owned()));
        }
        if reply != "started" {
            return Err(RuntimeError::Exec(format!(
                "the exec helper answered '{reply}'"
            )));
        }
        Ok(Self {
            reader,
            terminal: fds.into_iter().next(),
        })
    }

    /// Waits for the command to end (blocking).
    pub fn wait(mut self) -> Result<ExitStatus, RuntimeError> {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| RuntimeError::step("waiting for the command", e))?;
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
    join_cgroup(&config.scope_cgroup, config.join_payload)?;
    let leader = rustix::process::Pid::from_raw(config.leader)
        .ok_or_else(|| RuntimeError::Exec(format!("bad leader PID {}", config.leader)))?;
    let pidfd = step(
        "opening the machine's leader",
        rustix::process::pidfd_open(leader, rustix::process::PidfdFlags::empty())
            .map_err(io::Error::from),
    )?;
    step(
        "entering the machine's namespaces (needs kernel 5.8+)",
        nix::sched::setns(
            &pidfd,
            CloneFlags::CLONE_NEWUSER
                | CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWPID
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWCGROUP,
        )
        .map_err(io::Error::from),
    )?;
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
    Ok(init::supervise(child, &all))
}

/// Joins the machine's payload cgroup, or, for a boot machine (or when the payload is an
/// inner node), an `exec` cgroup beside it in the same scope.
fn join_cgroup(scope: &Path, payload: bool) -> Result<(), RuntimeError> {
    if payload && fs::write(scope.join("payload/cgroup.procs"), "0").is_ok() {
        return Ok(());
    }
    let exec = scope.join("exec");
    match fs::create_dir(&exec) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(RuntimeError::step(
                &format!("creating {}", exec.display()),
                e,
            ));
        }
    }
    step(
        &format!("joining {}", exec.display()),
        fs::write(exec.join("cgroup.procs"), "0"),
    )
}

/// A user of the machine's /etc/passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
    pub groups: Vec<u32>,
}

impl User {
    /// Looks `who` (a name or a number; empty for root) up in the machine's /etc/passwd.
    fn lookup(who: &str) -> Result<Self, RuntimeError> {
        let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
        let group = fs::read_to_string("/etc/group").unwrap_or_default();
        let who = if who.is_empty() { "root" } else { who };
        Self::find(&passwd, &group, who).ok_or_else(|| {
            RuntimeError::Exec(format!(
                "no user '{who}' in the machine's /etc/passwd; give a name or UID it has"
            ))
        })
    }

    pub fn find(passwd: &str, group: &str, who: &str) -> Option<Self> {
        let numeric: Option<u32> = who.parse().ok();
        let mut user = passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let [name, _, uid, gid, _, home, rest @ ..] = fields.as_slice() else {
                return None;
            };
            let uid: u32 = uid.parse().ok()?;
            (*name == who || numeric == Some(uid)).then(|| Self {
                name: (*name).to_owned(),
                uid,
                gid: gid.parse().unwrap_or(uid),
                home: (*home).to_owned(),
                shell: rest
                    .first()
                    .filter(|s| !s.is_empty())
                    .map_or("/bin/sh", |s| *s)
                    .to_owned(),
                groups: Vec::new(),
            })
        });
        if user.is_none()
            && let Some(uid) = numeric
        {
            // A number the machine doesn't name still works, as with `setpriv`.
            user = Some(Self {
                name: uid.to_string(),
                uid,
                gid: uid,
                home: "/".into(),
                shell: "/bin/sh".into(),
                groups: Vec::new(),
            });
        }
        let mut user = user?;
        user.groups = group
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                let [_, _, gid, members] = fields.as_slice() else {
                    return None;
                };
                members
                    .split(',')
                    .any(|m| m == user.name)
                    .then(|| gid.parse().ok())
                    .flatten()
            })
            .collect();
        Some(user)
    }
}

/// In the forked child: session, terminal, credentials, environment, exec. Returns the error.
fn run_child(config: &ExecConfig, user: &User, stdio: [OwnedFd; 3]) -> String {
    if let Err(e) = init::enter_session(stdio, config.tty) {
        return e;
    }
    let groups: Vec<Gid> = user.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    let gid = Gid::from_raw(user.gid);
    let uid = Uid::from_raw(user.uid);
    if let Err(e) = nix::unistd::setgroups(&groups)
        .and_then(|()| nix::unistd::setresgid(gid, gid, gid))
        .and_then(|()| nix::unistd::setresuid(uid, uid, uid))
    {
        return format!("becoming user {} (UID {}): {e}", user.name, user.uid);
    }
    let home = if Path::new(&user.home).is_dir() {
        user.home.as_str()
    } else {
        "/"
    };
    if config.working_dir.is_empty() {
        let _ = std::env::set_current_dir(home);
    } else if let Err(e) = std::env::set_current_dir(&config.working_dir) {
        return format!("changing to the directory {}: {e}", config.working_dir);
    }
    let files = GuestFiles::read();
    let mut environment = login_environment(user, home, &files, &config.environment);
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

/// The guest files a login reads its environment from (empty when missing).
#[derive(Debug, Default)]
pub struct GuestFiles {
    pub environment: String,
    pub locale_conf: String,
    pub default_locale: String,
    pub login_defs: String,
}

impl GuestFiles {
    /// Reads them from the machine's /etc (the caller runs inside the machine).
    pub fn read() -> Self {
        let read = |path: &str| fs::read_to_string(path).unwrap_or_default();
        Self {
            environment: read("/etc/environment"),
            locale_conf: read("/etc/locale.conf"),
            default_locale: read("/etc/default/locale"),
            login_defs: read("/etc/login.defs"),
        }
    }
}

/// The environment a login of `user` gets from the guest's own files, as login(1) and
/// pam_env build it: PATH from login.defs (ENV_SUPATH for root, ENV_PATH for others), then
/// /etc/environment, the locale (LANG, LANGUAGE, LC_*) of /etc/locale.conf and
/// /etc/default/locale, HOME, SHELL, USER and LOGNAME from passwd; last the caller's TERM
/// and COLORTERM.
pub fn login_environment(
    user: &User,
    home: &str,
    files: &GuestFiles,
    caller: &[(String, String)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |key: &str, value: &str| {
        env.retain(|(k, _)| k != key);
        env.push((key.to_owned(), value.to_owned()));
    };
    let path_key = if user.uid == 0 {
        "ENV_SUPATH"
    } else {
        "ENV_PATH"
    };
    let path = files
        .login_defs
        .lines()
        .filter_map(|line| line.trim().strip_prefix(path_key))
        .filter_map(|rest| rest.trim().strip_prefix("PATH="))
        .next_back()
        .map(str::to_owned)
        .unwrap_or_else(|| {
            if user.uid == 0 {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
            } else {
                "/usr/local/bin:/usr/bin:/bin".into()
            }
        });
    set("PATH", &path);
    for (key, value) in super::guest_etc::parse_env_file(&files.environment) {
        set(&key, &value);
    }
    for text in [&files.locale_conf, &files.default_locale] {
        for (key, value) in super::guest_etc::parse_env_file(text) {
            if key == "LANG" || key == "LANGUAGE" || key.starts_with("LC_") {
                set(&key, &value);
            }
        }
    }
    set("HOME", home);
    set("SHELL", &user.shell);
    set("USER", &user.name);
    set("LOGNAME", &user.name);
    for (key, value) in caller {
        if (key == "TERM" || key == "COLORTERM") && !value.is_empty() {
            set(key, value);
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_environment_comes_from_the_guests_files() {
        let alice = User::find(PASSWD, GROUP, "alice").expect("alice");
        let files = GuestFiles {
            environment: "EDITOR=vi\n".into(),
            locale_conf: String::new(),
            default_locale: "LANG=de_DE.UTF-8\nLC_TIME=en_GB.UTF-8\nFOO=bar\n".into(),
            login_defs: "ENV_SUPATH\tPATH=/sbin:/bin\nENV_PATH\tPATH=/usr/bin:/bin:/usr/games\n"
                .into(),
        };
        let env = login_environment(
            &alice,
            "/home/alice",
            &files,
            &[
                ("TERM".into(), "xterm-256color".into()),
                ("COLORTERM".into(), "truecolor".into()),
                ("LD_PRELOAD".into(), "/x.so".into()),
            ],
        );
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("PATH"), Some("/usr/bin:/bin:/usr/games"));
        assert_eq!(get("LANG"), Some("de_DE.UTF-8"));
        assert_eq!(get("LC_TIME"), Some("en_GB.UTF-8"));
        assert_eq!(get("FOO"), None);
        assert_eq!(get("EDITOR"), Some("vi"));
        assert_eq!(get("HOME"), Some("/home/alice"));
        assert_eq!(get("SHELL"), Some("/bin/sh"));
        assert_eq!(get("LOGNAME"), Some("alice"));
        assert_eq!(get("TERM"), Some("xterm-256color"));
        assert_eq!(get("COLORTERM"), Some("truecolor"));
        assert_eq!(get("LD_PRELOAD"), None);
        let root = User::find(PASSWD, GROUP, "root").expect("root");
        let env = login_environment(&root, "/root", &files, &[]);
        assert!(env.contains(&("PATH".into(), "/sbin:/bin".into())));
        assert!(env.contains(&("SHELL".into(), "/bin/bash".into())));
    }

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:alice,bob\nalice:x:1000:\n";

    #[test]
    fn users_are_found_by_name_or_number() {
        let alice = User::find(PASSWD, GROUP, "alice").expect("alice");
        assert_eq!(
            (alice.uid, alice.gid, alice.home.as_str()),
            (1000, 1000, "/home/alice")
        );
        assert_eq!(alice.groups, vec![10]);
        assert_eq!(
            User::find(PASSWD, GROUP, "1000").expect("1000").name,
            "alice"
        );
        assert_eq!(User::find(PASSWD, GROUP, "root").expect("root").uid, 0);
        assert_eq!(User::find(PASSWD, GROUP, "4242").expect("number").uid, 4242);
        assert!(User::find(PASSWD, GROUP, "mallory").is_none());
    }
}
