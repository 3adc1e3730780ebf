//! Starting and stopping machines: the runtime builds the processes, systemd gets the scope
//! and the registration. Any failure kills what was started, so no scope, registration or
//! process is left behind (the scope is collected once empty).

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use zbus::Connection;

use super::reapers::Reaping;
use super::{Definition, MachineError, Machines, Mode, readiness};
use crate::runtime::{
    self, ExitStatus, Launch, Payload, SpawnBind, SpawnConfig, SpawnFds, StdioMode,
    exec::{Exec, ExecConfig, StoppedRoot},
};
use crate::stopwatch::Stopwatch;
use crate::systemd::{self, RunningMachine, ScopeSpec, unit_name};

/// Where each machine's last exit status is kept (`NAME.status`: `exited N` or `killed S`).
pub const STATUS_DIR: &str = "/run/berth/machines";

/// How a started machine's PID 1 is attached.
#[derive(Debug)]
pub enum Attach {
    /// Detached: an app's output goes to the journal; a booted init logs to its own.
    Journal,
    /// The caller's stdin, stdout and stderr.
    Streams([OwnedFd; 3]),
    /// A new terminal; its master side is returned in [`Started::terminal`].
    Terminal { term: String },
}

/// A machine that has started.
#[derive(Debug)]
pub struct Started {
    pub running: RunningMachine,
    /// The master side of its terminal, with [`Attach::Terminal`].
    pub terminal: Option<OwnedFd>,
}

/// What boot mode can run as PID 1, relative to the root (the helper tries them in order).
const INITS: [&str; 3] = [
    "usr/lib/systemd/systemd",
    "lib/systemd/systemd",
    "sbin/init",
];

/// Where systemd puts machine scopes in the cgroup tree.
const MACHINE_SLICE_CGROUP: &str = "/sys/fs/cgroup/machine.slice";

/// The cgroup directory of scope `unit` (`machine-NAME.scope`).
pub fn scope_cgroup(unit: &str) -> PathBuf {
    Path::new(MACHINE_SLICE_CGROUP).join(unit)
}

/// Whether cgroup `cgroup` (or one below it) still holds a process, from its
/// `cgroup.events`; a cgroup that is gone holds none, and one that can't be read is taken to.
fn scope_populated(cgroup: &Path) -> bool {
    match fs::read_to_string(cgroup.join("cgroup.events")) {
        Ok(events) => !events.lines().any(|line| line.trim() == "populated 0"),
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    }
}

/// The state `berth list` shows: machined's view, so it survives berthd restarts and sees
/// machines stopped by any tool.
pub async fn state(conn: &Connection, name: &str) -> Result<Option<RunningMachine>, MachineError> {
    Ok(systemd::running_machine(conn, name).await?)
}

/// Starts machine `name`; returns once its init runs inside `machine-NAME.scope`.
pub fn start<'a>(
    conn: &'a Connection,
    machines: &'a Machines,
    helper: PathBuf,
    name: &'a str,
    attach: Attach,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Started, MachineError>> + Send + 'a>>
{
    // Boxed: a rebooting machine's reaper starts it again, so the future refers to itself.
    Box::pin(start_machine(conn, machines, helper, name, attach))
}

async fn start_machine(
    conn: &Connection,
    machines: &Machines,
    helper: PathBuf,
    name: &str,
    attach: Attach,
) -> Result<Started, MachineError> {
    let mut watch = Stopwatch::start();
    // One start of a machine at a time: a second, concurrent one is refused here rather than
    // racing the first to systemd.
    let _starting = Claim::new(name, "starting")?;
    let definition = machines.get(name)?;
    if state(conn, name).await?.is_some() {
        return Err(MachineError::AlreadyRunning(name.to_owned()));
    }
    watch.lap("check");
    let root = machines.root_of(name);
    if definition.mode == Mode::Boot && !INITS.iter().any(|init| root.join(init).exists()) {
        return Err(MachineError::InvalidArgument(format!(
            "image '{}' of machine '{name}' has no init to boot ({}); use an image with systemd, or create an app machine",
            definition.image,
            INITS.map(|i| format!("/{i}")).join(", ")
        )));
    }
    let (stdio, streams, term) = match attach {
        Attach::Journal => (StdioMode::Journal, None, String::new()),
        Attach::Streams(fds) => (StdioMode::Passed, Some(fds), String::new()),
        Attach::Terminal { term } => (StdioMode::Terminal, None, term),
    };
    let mut config = spawn_config(machines, &definition);
    config.stdio = stdio;
    config.term = term;
    readiness::clear(name);
    config.notify = definition.mode == Mode::Boot;
    let fds = SpawnFds {
        status: new_status_file(name)?,
        stdio: streams,
    };
    let base = definition.uid_range.base;
    let helper_path = helper.clone();
    let reaper = Reaper {
        conn: conn.clone(),
        machines: machines.clone(),
        helper: helper.clone(),
    };
    let notify_dir = config.notify.then(|| config.root.join("run/host"));
    let unit = unit_name::machine_scope(name);
    let properties = scope_properties(&definition)?;
    // The scope is started with the spawn helper in it while the helper builds the machine's
    // tree: systemd's work on the scope (its job; ~70 ms in the VM test host) overlaps the
    // helper's instead of following it. Not when the helper opens devices that the scope's
    // device policy may refuse: a volume's loop device, or a device policy of the user's. Then
    // the scope starts once the tree is built, with the helper still in it (and PID 1, its
    // child, moved in by `delegate`), so both ways end the same.
    let overlap = config.volume.is_none()
        && !definition
            .properties
            .iter()
            .any(|property| property.starts_with("Device"));
    let helper_binary = helper.clone();
    let spawn_helper =
        blocking_machine(move || Ok(runtime::SpawnHelper::fork(&helper_binary)?)).await?;
    let helper_pidfd = spawn_helper.pidfd();
    let spec = ScopeSpec {
        unit: unit.clone(),
        description: format!("Container {name}"),
        leader: spawn_helper.pid(),
        leader_pidfd: helper_pidfd.as_ref().map(std::os::fd::AsFd::as_fd),
        properties,
    };
    let spawned = blocking_machine(move || {
        let mut launch = Launch::spawn(spawn_helper, &config, &fds)?;
        watch.lap("spawn");
        if !launch.setup.is_empty() {
            tracing::info!(name = %config.name, "spawn helper set up the machine in {}", launch.setup);
        }
        super::crash_points::reached("spawn");
        if let Err(e) = launch.map_ids(base) {
            launch.abort();
            return Err(e.into());
        }
        watch.lap("uid maps");
        // The notify socket, bound in the machine's own /run/host (a tmpfs of its mount
        // namespace, reached through its PID 1) before PID 1 execs: no host path shows inside.
        let notify = match notify_dir {
            Some(dir) => {
                let dir = Path::new(&format!("/proc/{}/root", launch.pid))
                    .join(dir.strip_prefix("/").unwrap_or(&dir));
                match readiness::bind(&dir, base) {
                    Ok(socket) => Some(socket),
                    Err(e) => {
                        launch.abort();
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        Ok::<_, MachineError>((launch, notify, watch))
    });
    // Whether the scope started (false: not tried, as the spawn failed first).
    let (spawned, scoped) = if overlap {
        let (spawned, scoped) = tokio::join!(spawned, systemd::start_scope(conn, &spec));
        (spawned, scoped.map(|()| true))
    } else {
        match spawned.await {
            Ok(spawned) => {
                let scoped = systemd::start_scope(conn, &spec).await.map(|()| true);
                (Ok(spawned), scoped)
            }
            Err(e) => (Err(e), Ok(false)),
        }
    };
    // The reaper waits for the helper too (see `reap`); the scope's spec borrowed this one.
    let helper_exit = helper_pidfd.as_ref().and_then(|fd| fd.try_clone().ok());
    drop(spec);
    drop(helper_pidfd);
    let (mut launch, notify, mut watch) = match (spawned, scoped) {
        (Ok(spawned), Ok(_)) => spawned,
        // A unit of that name (someone else's) or systemd refused: nothing of ours to stop.
        (Ok((launch, _, _)), Err(e)) => {
            launch.abort();
            return Err(e.into());
        }
        // The helper is gone (it failed), PID 1 too: the scope is empty.
        (Err(e), Ok(true)) => {
            stop_failed_scope(conn, &unit).await;
            return Err(e);
        }
        (Err(e), _) => return Err(e),
    };
    watch.lap("scope");
    super::crash_points::reached("scope");
    if let Err(e) = super::network::attach(conn, machines, &definition, launch.pid).await {
        launch.abort();
        stop_failed_scope(conn, &unit).await;
        return Err(e);
    }
    if definition.network != crate::net::Network::Host {
        watch.lap("network");
    }
    let pid = launch.pid;
    let terminal = launch.terminal.take();
    let pidfd = rustix::process::Pid::from_raw(pid)
        .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::NONBLOCK).ok());
    let result = bring_up(conn, machines, &definition, launch, &unit, &mut watch).await;
    if let (Some(socket), Some(pid)) = (notify, rustix::process::Pid::from_raw(pid)) {
        match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::NONBLOCK) {
            Ok(exited) => {
                tokio::spawn(readiness::listen(name.to_owned(), socket, exited));
            }
            Err(e) => tracing::warn!(%name, "cannot watch the machine's readiness: {e}"),
        }
    }
    // The scope is ours from here on: the reaper ends the machine, also after a failed start.
    match pidfd {
        Some(pidfd) => {
            // Registered before the start returns, so a WaitMachine right after finds it.
            let reaping = super::reapers::begin(name);
            tokio::spawn(reap(
                reaper,
                definition.clone(),
                pidfd,
                helper_exit,
                reaping,
            ));
        }
        None => {
            tracing::warn!(%name, pid, "no pidfd for the machine's PID 1; it won't be reaped by berthd")
        }
    }
    result?;
    let running = match definition.mode {
        // Its command runs (or has run: an app that ended already started successfully).
        Mode::App(_) => Some(RunningMachine {
            leader: u32::try_from(pid).unwrap_or(0),
            unit: unit_name::machine_scope(name),
            state: "running".into(),
            timestamp_usec: 0,
        }),
        Mode::Boot => state(conn, name).await?,
    };
    let running = match running {
        Some(running) => running,
        None => {
            return Err(MachineError::InvalidArgument(format!(
                "machine '{name}' exited right after it started; see 'journalctl -u {}'",
                unit_name::machine_scope(name)
            )));
        }
    };
    if running.state == "running" {
        generate_locale(&helper_path, &definition, running.leader);
    }
    if matches!(definition.mode, Mode::App(_)) {
        // An app machine is up once its command runs.
        readiness::mark_ready(name);
    }
    watch.lap("state");
    tracing::info!(%name, pid, "machine started in {watch}");
    tokio::task::spawn_blocking(move || runtime::prepare_spawn_server(&helper_path));
    Ok(Started { running, terminal })
}

/// Machine names shared by berthd's tasks.
struct NameSet(std::sync::Mutex<std::collections::BTreeSet<String>>);

impl NameSet {
    const fn new() -> Self {
        Self(std::sync::Mutex::new(std::collections::BTreeSet::new()))
    }

    fn names(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<String>> {
        // The set is never left half-changed, so a panic elsewhere doesn't spoil it.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds `name`; false when it was there already.
    fn insert(&self, name: &str) -> bool {
        self.names().insert(name.to_owned())
    }

    fn remove(&self, name: &str) {
        self.names().remove(name);
    }

    fn contains(&self, name: &str) -> bool {
        self.names().contains(name)
    }
}

/// The machines this berthd is starting, or working on while they are stopped (a rebase, a
/// copy of their root...), each with what is being done to it ("starting", "rebasing").
static CLAIMED: std::sync::Mutex<std::collections::BTreeMap<String, &'static str>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn claimed() -> std::sync::MutexGuard<'static, std::collections::BTreeMap<String, &'static str>> {
    // The map is never left half-changed, so a panic elsewhere doesn't spoil it.
    CLAIMED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A claim on one machine: while it is held, no other request starts the machine or works
/// on it while it is stopped. Released when dropped.
#[derive(Debug)]
pub struct Claim(String);

impl Claim {
    /// Claims machine `name` for `what` ("starting", "rebasing", "copying files into", ...).
    pub fn new(name: &str, what: &'static str) -> Result<Self, MachineError> {
        let mut claimed = claimed();
        match claimed.get(name) {
            Some(&"starting") => Err(MachineError::AlreadyStarting(name.to_owned())),
            Some(&other) => Err(MachineError::Busy {
                name: name.to_owned(),
                what: other,
            }),
            None => {
                claimed.insert(name.to_owned(), what);
                Ok(Self(name.to_owned()))
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        claimed().remove(&self.0);
    }
}

/// Ephemeral machines whose owner inside berthd removes them itself (a build, which stores
/// the stopped machine's root as the image first), so their reaper leaves them be.
static KEPT_AFTER_EXIT: NameSet = NameSet::new();

/// While held, the ephemeral machine stays after its PID 1 exits; the holder removes it.
#[derive(Debug)]
pub struct KeptAfterExit(String);

impl KeptAfterExit {
    pub fn hold(name: &str) -> Self {
        KEPT_AFTER_EXIT.insert(name);
        Self(name.to_owned())
    }

    fn is_held(name: &str) -> bool {
        KEPT_AFTER_EXIT.contains(name)
    }
}

impl Drop for KeptAfterExit {
    fn drop(&mut self) {
        KEPT_AFTER_EXIT.remove(&self.0);
    }
}

/// Compiles the machine's locale with its own `locale-gen`, in the background, when the
/// guest can but hasn't yet (a locale it lacked at create, or the host's new LANG).
fn generate_locale(helper: &std::path::Path, definition: &Definition, leader: u32) {
    let Some(locale) = definition.guest_etc().locale else {
        return;
    };
    let needed = fs::File::open(format!("/proc/{leader}/root"))
        .is_ok_and(|root| runtime::guest_etc::needs_locale_gen(&root, &locale));
    if !needed {
        return;
    }
    let name = definition.name.clone();
    let helper = helper.to_owned();
    let config = exec_config(
        definition,
        i32::try_from(leader).unwrap_or(0),
        String::new(),
        vec!["locale-gen".into()],
        false,
        Vec::new(),
    );
    tracing::info!(%name, %locale, "generating the machine's locale (locale-gen)");
    tokio::task::spawn_blocking(move || {
        let null = || {
            fs::File::options()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map(OwnedFd::from)
                .map_err(|e| runtime::RuntimeError::step("opening /dev/null", e))
        };
        let result = (|| {
            let stdio = [null()?, null()?, null()?];
            Exec::start(&helper, &config, Some(stdio))?.wait()
        })();
        match result {
            Ok(ExitStatus::Exited(0)) => {
                tracing::info!(%name, %locale, "generated the machine's locale");
            }
            Ok(status) => {
                tracing::warn!(%name, %locale, ?status, "locale-gen failed in the machine")
            }
            Err(e) => {
                tracing::warn!(%name, %locale, error = %e, "could not run locale-gen in the machine")
            }
        }
    });
}

/// The machine's `-p` properties, encoded for its scope.
fn scope_properties(
    definition: &Definition,
) -> Result<Vec<(String, zbus::OwnedVariant)>, MachineError> {
    let parsed = crate::systemd::properties::parse_all(&definition.properties)
        .map_err(|e| MachineError::InvalidArgument(e.to_string()))?;
    crate::systemd::properties::encode(&parsed).map_err(|source| {
        MachineError::Systemd(crate::systemd::SystemdError::Encode {
            name: "property",
            source,
        })
    })
}

/// Stops the scope of a start that failed before its PID 1 ran (it holds no process of the
/// machine then); a scope that is gone already is fine.
async fn stop_failed_scope(conn: &Connection, unit: &str) {
    if let Err(e) = systemd::stop_scope(conn, unit).await {
        tracing::warn!(%unit, "cannot stop the scope of a failed start: {e}");
    }
}

/// With PID 1 in the machine's scope: hands it the payload cgroup, registers the machine and
/// lets PID 1 exec its init. PID 1 is killed when a step fails.
async fn bring_up(
    conn: &Connection,
    machines: &Machines,
    definition: &Definition,
    mut launch: Launch,
    unit: &str,
    watch: &mut Stopwatch,
) -> Result<(), MachineError> {
    let pid = launch.pid;
    let base = definition.uid_range.base;
    let result = async {
        // PID 1 may have been cloned before systemd put the helper into the scope: it is moved
        // in explicitly. Only then may the helper go (the scope would be empty without it).
        let refused =
            runtime::delegate_payload_cgroup(&scope_cgroup(unit), pid, launch.helper_pid, base)?;
        if !refused.is_empty() {
            tracing::warn!(
                name = %definition.name,
                "the {} controllers could not be enabled for machine '{}''s own cgroups: limits its own systemd sets on its units will not apply to those",
                refused.join(", "),
                definition.name
            );
        }
        launch.release_helper();
        watch.lap("delegate");
        // A volume is mounted only in the machine's namespace: tools reach its files (e.g.
        // `journalctl -M`) through the leader's root.
        let root = if definition.volume.is_some() {
            format!("/proc/{pid}/root")
        } else {
            machines.root_of(&definition.name).display().to_string()
        };
        systemd::register_machine(
            conn,
            &definition.name,
            machine_id_bytes(&definition.machine_id),
            u32::try_from(pid).map_err(|_| MachineError::InvalidArgument("bad pid".into()))?,
            &root,
        )
        .await?;
        watch.lap("register");
        super::crash_points::reached("register");
        Ok::<(), MachineError>(())
    }
    .await;
    if let Err(error) = result {
        launch.abort();
        return Err(error);
    }
    let abort_pid = launch.pid;
    blocking(move || launch.go()).await.inspect_err(|_| {
        if let Some(pid) = rustix::process::Pid::from_raw(abort_pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    })?;
    watch.lap("exec");
    Ok(())
}

/// Stops machine `name`: SIGRTMIN+3 to a systemd PID 1 (a clean poweroff), SIGTERM to an app's
/// init; after `timeout`, SIGKILL to the whole scope.
pub async fn stop(
    conn: &Connection,
    machines: &Machines,
    name: &str,
    timeout: Duration,
) -> Result<(), MachineError> {
    let definition = machines.get(name)?;
    let Some(running) = state(conn, name).await? else {
        return Err(MachineError::NotRunning(name.to_owned()));
    };
    let signal = match definition.mode {
        Mode::Boot => libc::SIGRTMIN() + 3,
        Mode::App(_) => libc::SIGTERM,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    wait_until_init_takes(name, running.leader, signal, deadline).await;
    match systemd::kill_machine_leader(conn, name, signal).await {
        Ok(()) => {}
        // It ended on its own just now.
        Err(e) if e.is_gone() => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    if wait_gone(conn, name, left).await? {
        return Ok(());
    }
    tracing::warn!(%name, "machine did not stop in time; killing its scope");
    systemd::kill_unit(conn, &running.unit, libc::SIGKILL).await?;
    if wait_gone(conn, name, Duration::from_secs(30)).await? {
        Ok(())
    } else {
        Err(MachineError::InvalidArgument(format!(
            "machine '{name}' survived SIGKILL; see 'systemctl status {}'",
            running.unit
        )))
    }
}

/// How long `kill` waits for a machine's init to take a signal it would drop now: longer than
/// a booting guest's systemd takes to set up its signals (after its exec, which `start`
/// returns at), even on a slow host.
const LEADER_SIGNAL_WAIT: Duration = Duration::from_secs(10);

/// Sends `signal` to machine `name`: to its PID 1 only with `leader_only`, else to every
/// process of it. The kernel drops a signal to a namespace's init that ignores it, or neither
/// blocks nor catches it, silently; so to the leader only, berthd waits until the init takes the signal
/// (a guest's systemd right after its start), at most [`LEADER_SIGNAL_WAIT`], and sends nothing
/// but an error if it never does. SIGKILL and SIGSTOP, which the host can always send, go at once.
pub async fn kill(
    conn: &Connection,
    name: &str,
    leader_only: bool,
    signal: i32,
) -> Result<(), MachineError> {
    let Some(running) = state(conn, name).await? else {
        return Err(MachineError::NotRunning(name.to_owned()));
    };
    let deadline = tokio::time::Instant::now() + LEADER_SIGNAL_WAIT;
    if leader_only
        && ![libc::SIGKILL, libc::SIGSTOP].contains(&signal)
        && !wait_until_init_takes(name, running.leader, signal, deadline).await
    {
        let signal = runtime::signals::name(signal);
        return Err(MachineError::InvalidArgument(format!(
            "the init of machine '{name}' (host PID {}) does not handle {signal} (it ignores \
             it, or neither catches nor blocks it), so the kernel would drop it; nothing was \
             sent. Send it to every process of the machine (without --leader), or send SIGKILL",
            running.leader
        )));
    }
    tracing::info!(%name, signal, leader_only, "signalling machine");
    systemd::kill_machine(conn, name, !leader_only, signal).await?;
    Ok(())
}

/// Stops every running machine cleanly, side by side, each as [`stop`] does with `timeout`:
/// berthd does this when the host shuts down, before systemd stops the machines' scopes.
pub async fn stop_all(conn: &Connection, machines: &Machines, timeout: Duration) {
    let definitions = machines.list_readable();
    let stops = definitions.iter().map(|definition| async move {
        let name = definition.name.as_str();
        match stop(conn, machines, name, timeout).await {
            Ok(()) => tracing::info!(%name, "stopped machine for the host's shutdown"),
            Err(MachineError::NotRunning(_)) => {}
            Err(e) => tracing::warn!(%name, "cannot stop machine for the host's shutdown: {e}"),
        }
    });
    futures_util::future::join_all(stops).await;
}

/// Waits until `leader`, the init of machine `name`, would not drop `signal` (a booted
/// guest's systemd takes its signals a while after its start: see [`runtime::signals`]), at
/// most until `deadline`. Returns at once when it already takes it or is gone; false when it
/// still would drop it at `deadline`.
async fn wait_until_init_takes(
    name: &str,
    leader: u32,
    signal: i32,
    deadline: tokio::time::Instant,
) -> bool {
    let mut waited = false;
    loop {
        if !matches!(runtime::signals::takes_signal(leader, signal), Ok(false)) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        if !waited {
            let signal = runtime::signals::name(signal);
            tracing::info!(%name, "the machine's init does not handle {signal} yet; waiting to send it");
            waited = true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until machine `name` is gone from machined, at most `timeout`: on its reaper when
/// this berthd has one, else by asking machined every 50 ms. Whether it is gone.
async fn wait_gone(conn: &Connection, name: &str, timeout: Duration) -> Result<bool, MachineError> {
    let deadline = tokio::time::Instant::now() + timeout;
    if let Some(finished) = super::reapers::finished(name) {
        let _ = tokio::time::timeout_at(deadline, finished).await;
    }
    while tokio::time::Instant::now() < deadline {
        if state(conn, name).await?.is_none() {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(state(conn, name).await?.is_none())
}

/// How long the reaper waits for a released spawn helper to exit.
const HELPER_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the reaper needs besides the machine: the bus, the store, and the helper to start
/// a booted machine again when its systemd asks for a reboot.
struct Reaper {
    conn: Connection,
    machines: Machines,
    helper: PathBuf,
}

/// Waits for the machine's PID 1 (a child of berthd) to exit and reaps it, then ends the
/// machine at once instead of waiting for systemd and machined to notice: records the exit
/// status (unless berth's init wrote the payload's already), unregisters it from machined,
/// stops its scope and, for an ephemeral machine, removes it. Waiters on `reaping` wake after
/// that. A booted init killed by SIGHUP asked for a reboot (the kernel's reboot(2) in a PID
/// namespace): the machine is started again, as systemd-nspawn does.
async fn reap(
    reaper: Reaper,
    definition: Definition,
    pidfd: OwnedFd,
    helper: Option<OwnedFd>,
    reaping: Reaping,
) {
    let name = definition.name.clone();
    let Ok(fd) = crate::sys::process::register_async(pidfd) else {
        return;
    };
    if fd.readable().await.is_err() {
        return;
    }
    // The spawn helper that cloned PID 1 was in the machine's scope and exits on its own once
    // released (before PID 1 could run its payload), tearing down a mount namespace that holds
    // the machine's tree. Until it has, the scope is not empty, and the root is still mounted
    // there: wait for it (it is reaped elsewhere; its pidfd only tells that it has exited).
    if let Some(helper) = helper
        && let Ok(helper) = crate::sys::process::register_async(helper)
    {
        let _ = tokio::time::timeout(HELPER_EXIT_TIMEOUT, helper.readable()).await;
    }
    let mut watch = Stopwatch::start();
    super::network::detach(&definition);
    let waited = rustix::process::waitid(
        rustix::process::WaitId::PidFd(std::os::fd::AsFd::as_fd(fd.get_ref())),
        rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOHANG,
    );
    let status = match waited {
        Ok(Some(w)) => match (w.exit_status(), w.terminating_signal()) {
            (Some(code), _) => Some(ExitStatus::Exited(code)),
            (None, Some(signal)) => Some(ExitStatus::Killed(signal)),
            _ => None,
        },
        _ => None,
    };
    let boot = definition.mode == Mode::Boot;
    // A guest systemd ends a poweroff or halt by raising SIGINT (a reboot: SIGHUP), as
    // systemd-nspawn expects; that is a clean shutdown, reported as exit status 0 as nspawn does.
    let status = match status {
        Some(ExitStatus::Killed(libc::SIGINT)) if boot => Some(ExitStatus::Exited(0)),
        other => other,
    };
    if let Some(status) = status
        && read_status(&name).is_none()
    {
        let _ = fs::write(status_path(&name), format!("{}\n", status.to_line()));
    }
    watch.lap("status");
    // With its PID 1 its PID namespace is gone, so the scope's cgroup is empty, and systemd
    // deactivates an empty scope by itself: a StopUnit here would only queue behind that
    // (~170 ms in the VM test host). machined is told at once, so the machine is unregistered
    // when its end is reported. A process put into the scope from outside the machine keeps
    // it populated: then the scope is stopped, which kills that process.
    let unit = unit_name::machine_scope(&name);
    let populated = scope_populated(&scope_cgroup(&unit));
    let stop_if_populated = async {
        if populated {
            systemd::stop_scope(&reaper.conn, &unit).await
        } else {
            Ok(())
        }
    };
    let rebooting = boot && status == Some(ExitStatus::Killed(libc::SIGHUP));
    let remove = definition.ephemeral && !rebooting && !KeptAfterExit::is_held(&name);
    let remove_ephemeral = || {
        let machines = reaper.machines.clone();
        let name = name.clone();
        async move {
            if !remove {
                return;
            }
            let removing = name.clone();
            match blocking_machine(move || machines.remove(&removing)).await {
                Ok(()) | Err(MachineError::NotFound(_)) => {}
                Err(e) => tracing::warn!(%name, "cannot remove ephemeral machine: {e}"),
            }
        }
    };
    // An ephemeral machine's root goes while machined unregisters it, unless a process from
    // outside is still in its scope (it may use the root until the scope is stopped).
    let (unregistered, stopped, ()) = tokio::join!(
        systemd::unregister_machine(&reaper.conn, &name),
        stop_if_populated,
        async {
            if !populated {
                remove_ephemeral().await;
            }
        }
    );
    if let Err(e) = unregistered {
        tracing::warn!(%name, "cannot unregister the machine from machined: {e}");
    }
    if let Err(e) = stopped {
        tracing::warn!(%name, "cannot stop {unit}: {e}");
    }
    watch.lap(match (populated, remove) {
        (true, _) => "unregister and stop scope",
        (false, true) => "unregister and remove",
        (false, false) => "unregister",
    });
    tracing::info!(%name, ?status, "machine's PID 1 exited; ended the machine in {watch}");
    if populated {
        remove_ephemeral().await;
    }
    if rebooting {
        tracing::info!(%name, "machine asked for a reboot; starting it again");
        match start(
            &reaper.conn,
            &reaper.machines,
            reaper.helper,
            &name,
            Attach::Journal,
        )
        .await
        {
            Ok(_) => tracing::info!(%name, "machine rebooted"),
            Err(e) => tracing::warn!(%name, "cannot reboot the machine: {e}"),
        }
    }
    // Waiters wake now: after a reboot they find the new start's reaper.
    drop(reaping);
}

/// Carries a renamed machine's last exit status over to its new name.
pub fn rename_status(name: &str, new_name: &str) {
    let _ = fs::rename(status_path(name), status_path(new_name));
}

fn status_path(name: &str) -> PathBuf {
    Path::new(STATUS_DIR).join(format!("{name}.status"))
}

/// An empty status file for a start, open for PID 1 to write to.
fn new_status_file(name: &str) -> Result<OwnedFd, MachineError> {
    let path = status_path(name);
    let io_error = |source| MachineError::Io {
        context: format!("creating {}", path.display()),
        source,
    };
    fs::create_dir_all(STATUS_DIR).map_err(io_error)?;
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(e)),
    }
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&path)
        .map_err(io_error)?;
    Ok(OwnedFd::from(file))
}

/// The last exit status recorded for machine `name`.
pub fn read_status(name: &str) -> Option<ExitStatus> {
    ExitStatus::parse(&fs::read_to_string(status_path(name)).ok()?)
}

/// Waits until running machine `name` is ready: its systemd reported READY=1 (boot), or its
/// command runs (app). An error when it stops first or `timeout` passes.
pub async fn wait_ready(
    conn: &Connection,
    name: &str,
    timeout: Duration,
) -> Result<(), MachineError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if readiness::is_ready(name) {
            return Ok(());
        }
        if state(conn, name).await?.is_none() {
            return Err(MachineError::NotReady(format!(
                "machine '{name}' stopped before it was ready ({}); see 'berth logs {name}'",
                read_status(name)
                    .map_or_else(|| "exit status unknown".into(), ExitStatus::describe)
            )));
        }
        if std::time::Instant::now() >= deadline {
            return Err(MachineError::NotReady(format!(
                "machine '{name}' runs but is not ready after {} s: its init has not reported \
                 READY=1 (is it systemd?); see 'berth logs {name}', or wait longer with --timeout",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until machine `name` has stopped; returns how its payload ended (`None` when that
/// is unknown: it was killed while berthd was not its parent).
pub async fn wait(conn: &Connection, name: &str) -> Result<Option<ExitStatus>, MachineError> {
    loop {
        // Started by this berthd: its reaper says when it has ended (a reboot starts a new
        // reaper, which is waited for in turn).
        if let Some(finished) = super::reapers::finished(name) {
            finished.await;
            if super::reapers::finished(name).is_none() {
                break;
            }
            continue;
        }
        let Some(running) = state(conn, name).await? else {
            break;
        };
        // Sleep until the leader exits (a pidfd works for any process), then ask again.
        let pidfd = rustix::process::Pid::from_raw(i32::try_from(running.leader).unwrap_or(0))
            .and_then(|p| {
                rustix::process::pidfd_open(p, rustix::process::PidfdFlags::NONBLOCK).ok()
            });
        match pidfd.map(crate::sys::process::register_async) {
            Some(Ok(fd)) => {
                let _ = fd.readable().await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // The leader is gone already; machined drops the machine once its scope is
            // empty, a moment later.
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    // The reaper writes the status of a PID 1 killed outright; give it a moment.
    for _ in 0..100 {
        if let Some(status) = read_status(name) {
            return Ok(Some(status));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(None)
}

/// Whether this berthd reaps machine `name` (it started it): its reaper then ends it, and
/// removes it when it is ephemeral.
pub fn reaped_here(name: &str) -> bool {
    super::reapers::finished(name).is_some()
}

/// Removes ephemeral machine `name` (`berth run --rm`) once it has stopped.
pub async fn remove_when_stopped(conn: Connection, machines: Machines, name: String) {
    if let Err(e) = wait(&conn, &name).await {
        tracing::warn!(%name, "cannot watch ephemeral machine: {e}");
        return;
    }
    let removing = name.clone();
    match blocking_machine(move || machines.remove(&removing)).await {
        Ok(()) => tracing::info!(%name, "removed ephemeral machine"),
        Err(MachineError::NotFound(_)) => {}
        Err(e) => tracing::warn!(%name, "cannot remove ephemeral machine: {e}"),
    }
}

/// After berthd starts: removes ephemeral machines that stopped while it was away, and
/// watches the running ones.
pub fn adopt(conn: &Connection, machines: &Machines, definitions: &[Definition]) {
    for d in definitions.iter().filter(|d| d.ephemeral) {
        tokio::spawn(remove_when_stopped(
            conn.clone(),
            machines.clone(),
            d.name.clone(),
        ));
    }
}

/// After berthd starts, before it serves requests: stops the machine scopes that run with no
/// process in them. A start cut off by a crash of berthd leaves one when systemd attaches the
/// spawn helper while it is exiting (it exits when berthd dies): the kernel then moves nothing
/// and reports success, the scope runs empty, and systemd, never told that it emptied, keeps
/// it. Its unit name would refuse the machine's next start.
pub async fn stop_empty_scopes(conn: &Connection, definitions: &[Definition]) {
    for definition in definitions {
        let name = &definition.name;
        let unit = unit_name::machine_scope(name);
        let cgroup = scope_cgroup(&unit);
        if !cgroup.exists() || scope_populated(&cgroup) {
            continue;
        }
        tracing::info!(%name, %unit, "stopping the empty scope of a start that berthd did not finish");
        if let Err(e) = systemd::stop_scope(conn, &unit).await {
            tracing::warn!(%name, %unit, "cannot stop the empty scope of an unfinished start: {e}");
        }
    }
}

async fn blocking_machine<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, MachineError> + Send + 'static,
) -> Result<T, MachineError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| MachineError::InvalidArgument(format!("internal error: {e}")))?
}

/// What the exec helper needs to run `command` in `definition`'s machine.
pub fn exec_config(
    definition: &Definition,
    leader: i32,
    user: String,
    command: Vec<String>,
    tty: bool,
    environment: Vec<(String, String)>,
) -> ExecConfig {
    ExecConfig {
        leader,
        scope_cgroup: scope_cgroup(&unit_name::machine_scope(&definition.name)),
        join_payload: definition.mode != Mode::Boot,
        user,
        command,
        tty,
        environment,
        window: (0, 0),
        machine_id: definition.machine_id.clone(),
        extra_environment: Vec::new(),
        working_dir: String::new(),
        unpack_to: None,
        pack_from: None,
        hangup_unit: None,
        stopped: None,
    }
}

/// How the exec helper makes stopped machine `definition`'s root for a copy: what its own
/// mounts cover once it runs (as the spawn helper mounts them) is where a copy would hide.
pub fn stopped_root(machines: &Machines, definition: &Definition) -> StoppedRoot {
    let mut covered: Vec<(PathBuf, String)> = [
        ("/proc", "the machine's procfs"),
        ("/sys", "the machine's sysfs"),
        ("/dev", "the machine's own /dev (a tmpfs)"),
        ("/run", "the machine's own /run (a tmpfs)"),
        ("/tmp", "the machine's own /tmp (a tmpfs)"),
    ]
    .into_iter()
    .map(|(path, what)| (PathBuf::from(path), what.to_owned()))
    .collect();
    covered.extend(definition.binds.iter().map(|bind| {
        (
            bind.destination.clone(),
            format!(
                "the bind of {} (copy into that host directory instead)",
                bind.source.display()
            ),
        )
    }));
    StoppedRoot {
        root: machines.root_of(&definition.name),
        uid_base: definition.uid_range.base,
        volume: definition.volume.as_ref().map(|(path, _)| path.clone()),
        covered,
    }
}

fn spawn_config(machines: &Machines, d: &Definition) -> SpawnConfig {
    SpawnConfig {
        name: d.name.clone(),
        unit: crate::systemd::unit_name::machine_scope(&d.name),
        payload: match &d.mode {
            Mode::Boot => Payload::Boot,
            Mode::App(command) => Payload::App(command.clone()),
        },
        stdio: StdioMode::Journal,
        term: String::new(),
        root: machines.root_of(&d.name),
        volume: d.volume.as_ref().map(|(path, _)| path.clone()),
        hostname: d.hostname.clone(),
        machine_id: d.machine_id.clone(),
        uid_base: d.uid_range.base,
        binds: d.binds.iter().map(SpawnBind::from).collect(),
        etc: d.host_following_etc(),
        notify: false,
        app: d.app.clone(),
        own_network: d.network.is_own_namespace(),
    }
}

fn machine_id_bytes(hex: &str) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = hex
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
    }
    bytes
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, runtime::RuntimeError> + Send + 'static,
) -> Result<T, MachineError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| MachineError::InvalidArgument(format!("internal error: {e}")))?
        .map_err(MachineError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_is_started_or_worked_on_by_one_request_at_a_time() {
        let first = Claim::new("claimed", "starting").expect("first claim");
        let second = Claim::new("claimed", "starting")
            .map(drop)
            .expect_err("second claim");
        assert!(
            second
                .to_string()
                .contains("being started by another request"),
            "{second}"
        );
        let other = Claim::new("another", "rebasing").expect("another machine");
        let start = Claim::new("another", "starting")
            .map(drop)
            .expect_err("start while rebased");
        assert!(
            start
                .to_string()
                .contains("machine 'another' is busy: another request is rebasing it"),
            "{start}"
        );
        drop(first);
        drop(Claim::new("claimed", "starting").expect("claim after release"));
        drop(other);
    }

    #[test]
    fn a_scope_is_populated_until_its_cgroup_events_say_otherwise() {
        let dir = tempfile::tempdir().expect("tempdir");
        let events = dir.path().join("cgroup.events");
        fs::write(&events, "populated 1\nfrozen 0\n").expect("write");
        assert!(scope_populated(dir.path()));
        fs::write(&events, "populated 0\nfrozen 0\n").expect("write");
        assert!(!scope_populated(dir.path()));
        assert!(!scope_populated(&dir.path().join("gone.scope")));
    }
}
