//! berthd: the berth daemon. Owns `org.berth.Berth1` on the system bus and does all
//! privileged work; started by D-Bus activation through berthd.service.

use anyhow::Context;
use berth::api::{BUS_NAME, Manager, OBJECT_PATH};
use berth::image::{DEFAULT_IMAGE_DIR, DEFAULT_STATE_DIR, Pool};
use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};

/// How long each machine has to power off at the host's shutdown before it is killed
/// (berthd.service's TimeoutStopSec leaves room for that and the kill).
const SHUTDOWN_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn main() -> std::process::ExitCode {
    // The spawn server must stay single-threaded (it forks): dispatch before any runtime exists.
    if std::env::args().nth(1).as_deref() == Some("--spawn-machine") {
        return berth::runtime::helper::server_main();
    }
    if std::env::args().nth(1).as_deref() == Some("--exec-machine") {
        return berth::runtime::exec::exec_main();
    }
    berth::sys::process::tune_malloc();
    berth::logging::init("berthd");
    // Two workers serve the bus; filesystem and process work runs on the blocking pool.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let pool = Pool::new(DEFAULT_IMAGE_DIR, DEFAULT_STATE_DIR);
    let machines = berth::machine::default_store(pool.clone());
    let cleaned = pool.clean_stale() + machines.clean_stale();
    let helper = std::env::current_exe().context("finding berthd's own binary")?;
    let helper_path = helper.clone();
    if cleaned > 0 {
        tracing::info!(cleaned, "removed leftovers of interrupted imports");
    }
    let connection = zbus::connection::Builder::system()
        .serve_at(OBJECT_PATH, Manager::new(pool, machines.clone(), helper))
        .build()
        .await
        .context("cannot connect to the system bus")?;
    if let Err(e) = berth::systemd::keep_job_signals(&connection).await {
        tracing::warn!("cannot subscribe to systemd's job signals: {e}");
    }
    let server_binary = helper_path.clone();
    tokio::task::spawn_blocking(move || berth::runtime::prepare_spawn_server(&server_binary));
    // Before the name: no client's request meets what berthd's previous run left half-done,
    // nor a network table that is being rewritten.
    let definitions = machines.list_readable();
    berth::machine::lifecycle::stop_empty_scopes(&connection, &definitions).await;
    berth::machine::lifecycle::adopt(&connection, &machines, &definitions);
    berth::machine::network::restore(&connection, &machines, &definitions).await;
    connection.request_name(BUS_NAME).await.with_context(|| {
        format!("cannot serve {BUS_NAME} on the system bus (is another berthd running?)")
    })?;
    sd_notify::notify(&[NotifyState::Ready]).context("notifying systemd of readiness")?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "berthd ready");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    // Machines outlive a restart of berthd, not the host: at its shutdown they are powered
    // off cleanly here (their scopes are ordered to stop after berthd).
    if berth::systemd::host_is_stopping(&connection)
        .await
        .unwrap_or(false)
    {
        tracing::info!("the host is shutting down; stopping the running machines");
        berth::machine::lifecycle::stop_all(&connection, &machines, SHUTDOWN_STOP_TIMEOUT).await;
    }
    tracing::info!("berthd stopping");
    Ok(())
}
