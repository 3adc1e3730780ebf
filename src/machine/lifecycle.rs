//! Starting and stopping machines: the runtime builds the processes, systemd gets the scope
//! and the registration. Any failure kills what was started, so no scope, registration or
//! process is left behind (the scope is collected once empty).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use zbus::Connection;

use super::{Definition, MachineError, Machines, Mode};
use crate::runtime::{self, Launch, SpawnBind, SpawnConfig};
use crate::systemd::{self, RunningMachine, ScopeSpec, unit_name};

/// What boot mode can run as PID 1, relative to the root (the helper tries them in order).
const INITS: [&str; 3] = [
    "usr/lib/systemd/systemd",
    "lib/systemd/systemd",
    "sbin/init",
];

/// Where systemd puts machine scopes in the cgroup tree.
const MACHINE_SLICE_CGROUP: &str = "/sys/fs/cgroup/machine.slice";

/// The state `berth list` shows: machined's view, so it survives berthd restarts and sees
/// machines stopped by any tool.
pub async fn state(conn: &Connection, name: &str) -> Result<Option<RunningMachine>, MachineError> {
    Ok(systemd::running_machine(conn, name).await?)
}

/// Starts machine `name`; returns once its init runs inside `machine-NAME.scope`.
pub async fn start(
    conn: &Connection,
    machines: &Machines,
    helper: PathBuf,
    name: &str,
) -> Result<RunningMachine, MachineError> {
    let definition = machines.get(name)?;
    if state(conn, name).await?.is_some() {
        return Err(MachineError::AlreadyRunning(name.to_owned()));
    }
    if let Mode::App(_) = definition.mode {
        return Err(MachineError::InvalidArgument(format!(
            "machine '{name}' is an app machine; this berth starts boot machines only (app mode is the next step of issue #3)"
        )));
    }
    let root = machines.root_of(name);
    if !INITS.iter().any(|init| root.join(init).exists()) {
        return Err(MachineError::InvalidArgument(format!(
            "image '{}' of machine '{name}' has no init to boot ({}); use an image with systemd, or create an app machine",
            definition.image,
            INITS.map(|i| format!("/{i}")).join(", ")
        )));
    }
    let config = spawn_config(machines, &definition);
    let base = definition.uid_range.base;
    let launch = blocking(move || {
        let mut launch = Launch::spawn(&helper, &config)?;
        if let Err(e) = launch.map_ids(base) {
            launch.abort();
            return Err(e);
        }
        Ok(launch)
    })
    .await?;
    let pid = launch.pid;
    let pidfd = rustix::process::Pid::from_raw(pid)
        .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::NONBLOCK).ok());
    let result = bring_up(conn, machines, &definition, launch, pidfd.as_ref()).await;
    match pidfd {
        Some(pidfd) => {
            tokio::spawn(reap(name.to_owned(), pidfd));
        }
        None => {
            tracing::warn!(%name, pid, "no pidfd for the machine's PID 1; it won't be reaped by berthd")
        }
    }
    result?;
    state(conn, name).await?.ok_or_else(|| {
        MachineError::InvalidArgument(format!(
            "machine '{name}' exited right after it started; see 'journalctl -u {}'",
            unit_name::machine_scope(name)
        ))
    })
}

async fn bring_up(
    conn: &Connection,
    machines: &Machines,
    definition: &Definition,
    launch: Launch,
    pidfd: Option<&OwnedFd>,
) -> Result<(), MachineError> {
    let pid = launch.pid;
    let base = definition.uid_range.base;
    let result = async {
        let unit = unit_name::machine_scope(&definition.name);
        let spec = ScopeSpec {
            unit: unit.clone(),
            description: format!("Container {}", definition.name),
            leader: u32::try_from(pid)
                .map_err(|_| MachineError::InvalidArgument("bad pid".into()))?,
            leader_pidfd: pidfd.map(std::os::fd::AsFd::as_fd),
        };
        systemd::start_scope(conn, &spec).await?;
        runtime::delegate_payload_cgroup(&Path::new(MACHINE_SLICE_CGROUP).join(&unit), pid, base)?;
        let root = machines.root_of(&definition.name).display().to_string();
        systemd::register_machine(
            conn,
            &definition.name,
            machine_id_bytes(&definition.machine_id),
            spec.leader,
            &root,
        )
        .await?;
        Ok::<(), MachineError>(())
    }
    .await;
    if let Err(e) = result {
        launch.abort();
        return Err(e);
    }
    let abort_pid = launch.pid;
    blocking(move || launch.go()).await.inspect_err(|_| {
        if let Some(pid) = rustix::process::Pid::from_raw(abort_pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    })?;
    tracing::info!(name = %definition.name, pid, "machine started");
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
    match systemd::kill_machine_leader(conn, name, signal).await {
        Ok(()) => {}
        // It ended on its own just now.
        Err(e) if e.is_gone() => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    if wait_gone(conn, name, timeout).await? {
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

async fn wait_gone(conn: &Connection, name: &str, timeout: Duration) -> Result<bool, MachineError> {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if state(conn, name).await?.is_none() {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(state(conn, name).await?.is_none())
}

/// Waits for the machine's PID 1 (a child of berthd) to exit and reaps it.
async fn reap(name: String, pidfd: OwnedFd) {
    let Ok(fd) = crate::sys::process::register_async(pidfd) else {
        return;
    };
    if fd.readable().await.is_ok() {
        let status = rustix::process::waitid(
            rustix::process::WaitId::PidFd(std::os::fd::AsFd::as_fd(fd.get_ref())),
            rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOHANG,
        );
        tracing::info!(%name, ?status, "machine's PID 1 exited");
    }
}

fn spawn_config(machines: &Machines, d: &Definition) -> SpawnConfig {
    SpawnConfig {
        root: machines.root_of(&d.name),
        hostname: d.hostname.clone(),
        machine_id: d.machine_id.clone(),
        uid_base: d.uid_range.base,
        binds: d.binds.iter().map(SpawnBind::from).collect(),
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
