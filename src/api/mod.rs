//! berthd's D-Bus contract: the `org.berth.Berth1.Manager` interface, its typed errors, the
//! polkit checks and the client proxy the CLI uses. This module makes no syscalls of its own;
//! it hands work to [`crate::image`] on blocking threads.
//!
//! The interface is documented in `dbus/org.berth.Berth1.xml`; a test fails when the live
//! interface and that file differ.

mod error;
mod manager;
pub mod polkit;
mod proxy;
mod types;

pub use error::BusError;
pub use manager::Manager;
pub use proxy::ManagerProxy;
pub use types::{
    ImageEntry, ImportResult, MachineEntry, MachineStatus, PortEntry, SnapshotEntry, UsageEntry,
};

/// berthd's well-known name on the system bus.
pub const BUS_NAME: &str = "org.berth.Berth1";
/// The path of the manager object.
pub const OBJECT_PATH: &str = "/org/berth/Berth1";
/// The manager interface.
pub const MANAGER_INTERFACE: &str = "org.berth.Berth1.Manager";
