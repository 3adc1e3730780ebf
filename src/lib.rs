//! berth: machines as first-class systemd citizens.
//!
//! The crate is one library with two binaries: `berthd`, the daemon on the system bus that owns
//! all privileged work, and `berth`, the thin CLI that talks to it over D-Bus.
//!
//! Module ownership (arrows point one way: `cli` → `api` → `image`/… → `sys`):
//! - [`cli`]: clap definitions and output formatting only.
//! - [`api`]: berthd's D-Bus interface, its typed errors and polkit checks; no syscalls.
//! - [`image`]: the image pool under `/var/lib/machines`, safe tar and directory import.
//! - [`sys`]: the only module exempt from `#![deny(unsafe_code)]`.
#![deny(unsafe_code)]

pub mod api;
pub mod cli;
pub mod image;
pub mod logging;
pub mod machine;
pub mod name;
pub mod runtime;
pub mod sys;
pub mod systemd;
