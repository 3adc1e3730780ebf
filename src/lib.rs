//! berth: machines as first-class systemd citizens.
//!
//! The crate is one library with two binaries: `berthd`, the daemon on the system bus that owns
//! all privileged work, and `berth`, the thin CLI that talks to it over D-Bus.
//!
//! Module ownership (arrows point one way: `cli` → `api` → `image`/… → `sys`):
//! - [`cli`]: clap definitions and output formatting only.
//! - [`api`]: berthd's D-Bus interface, its typed errors and polkit checks; no syscalls.
//! - [`image`]: the image pool under `/var/lib/machines`, safe tar and directory import.
//! - [`machine`]: machine definitions, roots, and the start/stop lifecycle.
//! - [`build`]: images built from a Containerfile in transient machines.
//! - [`source`]: the client's side of a build: a git commit or directory as a tar stream.
//! - [`net`]: network modes, berth's bridge and address pool, nftables and the machines' DNS.
//! - [`runtime`]: namespaces, mounts, ID maps, berth's init and exec; never D-Bus.
//! - [`systemd`]: the only client of systemd1 and machine1.
//! - [`terminal`]: the CLI's relay to a machine's terminal.
//! - [`sys`]: the only module exempt from `#![deny(unsafe_code)]`.
#![deny(unsafe_code)]

pub mod api;
pub mod build;
pub mod cli;
pub mod image;
pub mod logging;
pub mod machine;
pub mod name;
pub mod net;
pub mod runtime;
pub mod source;
pub mod stopwatch;
pub mod sys;
pub mod systemd;
pub mod terminal;
