//! Logging: to journald with structured fields when berthd runs as a service, to stderr when
//! run in a terminal or when there is no journal.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the global subscriber. The level comes from `BERTH_LOG` (default `info`).
pub fn init(identifier: &str) {
    let filter = EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = if std::io::stderr().is_terminal() {
        None
    } else {
        tracing_journald::layer()
            .ok()
            .map(|layer| layer.with_syslog_identifier(identifier.to_owned()))
    };
    match journald {
        Some(layer) => tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .init(),
        None => tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init(),
    }
}
