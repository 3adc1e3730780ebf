//! berthd: the berth daemon. Owns `org.berth.Berth1` on the system bus and does all
//! privileged work; started by D-Bus activation through berthd.service.

use anyhow::Context;
use berth::api::{BUS_NAME, Manager, OBJECT_PATH};
use berth::image::{DEFAULT_IMAGE_DIR, DEFAULT_STATE_DIR, Pool};
use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    berth::logging::init("berthd");
    if let Err(e) = run().await {
        tracing::error!("{e:#}");
        return Err(e);
    }
    Ok(())
}

async fn run() -> anyhow::Result<()> {
    let pool = Pool::new(DEFAULT_IMAGE_DIR, DEFAULT_STATE_DIR);
    let machines = berth::machine::default_store(pool.clone());
    let cleaned = pool.clean_stale() + machines.clean_stale();
    if cleaned > 0 {
        tracing::info!(cleaned, "removed leftovers of interrupted imports");
    }
    let _connection = zbus::connection::Builder::system()
        .name(BUS_NAME)
        .serve_at(OBJECT_PATH, Manager::new(pool, machines))
        .build()
        .await
        .with_context(|| {
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
    tracing::info!("berthd stopping");
    Ok(())
}
