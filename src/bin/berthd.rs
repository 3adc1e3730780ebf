//! berthd: the berth daemon. Owns `org.berth.Berth1` on the system bus and does all
//! privileged work; started by D-Bus activation through berthd.service.

use anyhow::Context;
use berth::api::{BUS_NAME, Manager, OBJECT_PATH};
use berth::image::{DEFAULT_IMAGE_DIR, DEFAULT_STATE_DIR, Pool};
use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> std::process::ExitCode {
    // The spawn helper must stay single-threaded: dispatch before any runtime exists.
    if std::env::args().nth(1).as_deref() == Some("--spawn-machine") {
        return berth::runtime::helper::helper_main();
    }
    if std::env::args().nth(1).as_deref() == Some("--exec-machine") {
        return berth::runtime::exec::exec_main();
    }
    berth::logging::init("berthd");
    let runtime = match tokio::runtime::Runtime::new() {
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
    if cleaned > 0 {
        tracing::info!(cleaned, "removed leftovers of interrupted imports");
    }
    let connection = zbus::connection::Builder::system()
        .name(BUS_NAME)
        .serve_at(OBJECT_PATH, Manager::new(pool, machines.clone(), helper))
        .build()
        .await
        .with_context(|| {
            format!("cannot serve {BUS_NAME} on the system bus (is another berthd running?)")
        })?;
    berth::machine::lifecycle::adopt(&connection, &machines).await;
    berth::machine::network::restore(&connection, &machines).await;
    sd_notify::notify(&[NotifyState::Ready]).context("notifying systemd of readiness")?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "berthd ready");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    tracing::info!("berthd stopping");
    Ok(())
}
