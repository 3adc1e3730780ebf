//! A test hook for the fault tests: with `BERTH_CRASH_AFTER=STEP` in its environment, berthd
//! kills itself with SIGKILL (what `kill -9` does) right after that step of a machine start:
//! `spawn` (PID 1 cloned, not yet in its scope), `scope` (in machine-NAME.scope, not yet
//! registered) or `register` (registered with machined, the payload not yet running). The
//! system tests use it to show that a start cut off at any point leaves either a running,
//! managed machine or nothing. Unset, as in any real deployment, a crash point is one
//! comparison.

use std::sync::OnceLock;

/// The steps a crash can be asked for.
pub const STEPS: [&str; 3] = ["spawn", "scope", "register"];

fn crash_after() -> Option<&'static str> {
    static CRASH_AFTER: OnceLock<Option<String>> = OnceLock::new();
    CRASH_AFTER
        .get_or_init(|| {
            std::env::var("BERTH_CRASH_AFTER")
                .ok()
                .filter(|step| STEPS.contains(&step.as_str()))
        })
        .as_deref()
}

/// Dies here, as if killed, when berthd was told to crash after `step`.
pub fn reached(step: &str) {
    if crash_after() == Some(step) {
        tracing::warn!("BERTH_CRASH_AFTER={step}: killing berthd as a test asked");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}
