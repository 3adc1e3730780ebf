//! Structures passed over D-Bus.

use serde::{Deserialize, Serialize};
use zbus::Type;

use crate::image::{BaseImage, ImageInfo, ImportReport};
use crate::machine::{Definition, Mode, Snapshot};
use crate::runtime::ExitStatus;
use crate::systemd::RunningMachine;

/// One image, `(sssstt)`: name, path, digest (`sha256:…`, empty if unknown), origin, size in
/// bytes, creation time in µs since the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ImageEntry {
    pub name: String,
    /// Empty for an unversioned image.
    pub version: String,
    pub path: String,
    pub digest: String,
    pub origin: String,
    pub size_bytes: u64,
    pub created_usec: u64,
    /// What it was built or committed from, `NAME@VERSION@DIGEST` (empty: imported).
    pub base: String,
    /// The git commit it was built from (empty: not built from git).
    pub commit: String,
}

impl From<ImageInfo> for ImageEntry {
    fn from(i: ImageInfo) -> Self {
        let r = i.record;
        Self {
            name: i.name,
            version: i.version,
            path: i.path.display().to_string(),
            digest: r.digest,
            origin: r.origin,
            size_bytes: r.size_bytes,
            created_usec: r.created_usec,
            base: r.base.as_ref().map(BaseImage::display).unwrap_or_default(),
            commit: r.build.map(|b| b.commit).unwrap_or_default(),
        }
    }
}

/// What an import did, `(ssstas)`: name, digest, storage ("btrfs subvolume", "directory", or
/// "btrfs snapshot" for a machine's root committed as one), size in bytes, and one line per
/// refused entry ("PATH: why").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ImportResult {
    pub name: String,
    pub digest: String,
    pub storage: String,
    pub size_bytes: u64,
    pub refused: Vec<String>,
}

impl From<ImportReport> for ImportResult {
    fn from(r: ImportReport) -> Self {
        Self {
            name: r.name,
            digest: r.record.digest,
            storage: if r.snapshot {
                "btrfs snapshot".into()
            } else if r.subvolume {
                "btrfs subvolume".into()
            } else {
                "directory".into()
            },
            size_bytes: r.record.size_bytes,
            refused: r.refused.iter().map(ToString::to_string).collect(),
        }
    }
}

/// One machine, `(ssssssasustsutbsstt)`: name, state ("running" or "stopped"; machined's state
/// while it starts or stops), unit (`machine-NAME.scope` while running, else empty), image,
/// mode ("boot" or "app"), hostname, command (app mode), UID base, machine-id, created (µs
/// since the epoch), root directory, leader PID (0 when stopped), started (µs since the
/// epoch, 0 when stopped), ephemeral (removed when it stops), last exit ("exited 7",
/// "killed 9", or empty), storage (how its root was made: "btrfs snapshot", "reflink copy"
/// or "copy", or "volume"), and for a volume its size and the bytes its file takes on the host
/// (0 otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct MachineEntry {
    pub name: String,
    pub state: String,
    pub unit: String,
    /// The image it was made from: `NAME` or `NAME@VERSION`.
    pub image: String,
    pub image_digest: String,
    pub mode: String,
    pub hostname: String,
    pub command: Vec<String>,
    pub uid_base: u32,
    pub machine_id: String,
    pub created_usec: u64,
    pub root: String,
    pub leader: u32,
    pub started_usec: u64,
    pub ephemeral: bool,
    pub last_exit: String,
    pub storage: String,
    pub disk_size: u64,
    pub disk_allocated: u64,
    /// host, none, private or bridge=BR.
    pub network: String,
    /// A private machine's IPv4 and IPv6 address and host link; forwarded ports as
    /// `tcp:HOST:MACHINE`.
    pub addresses: Vec<String>,
    pub ports: Vec<String>,
}

impl MachineEntry {
    pub fn new(
        d: Definition,
        root: String,
        running: Option<RunningMachine>,
        last_exit: Option<ExitStatus>,
    ) -> Self {
        let network = d.network.to_string();
        let addresses = crate::machine::network::addresses(&d)
            .map(|a| vec![a.ipv4.to_string(), a.ipv6.to_string(), a.host_link])
            .unwrap_or_default();
        let ports = d.ports.iter().map(ToString::to_string).collect();
        let (mode, command) = match d.mode {
            Mode::Boot => ("boot".to_owned(), Vec::new()),
            Mode::App(command) => ("app".to_owned(), command),
        };
        let (state, unit, leader, started_usec) = match running {
            Some(r) if r.state == "running" || r.state.is_empty() => {
                ("running".into(), r.unit, r.leader, r.timestamp_usec)
            }
            Some(r) => (r.state, r.unit, r.leader, r.timestamp_usec),
            None => ("stopped".into(), String::new(), 0, 0),
        };
        Self {
            name: d.name,
            state,
            unit,
            image: if d.image_version.is_empty() {
                d.image
            } else {
                format!("{}@{}", d.image, d.image_version)
            },
            image_digest: d.image_digest,
            mode,
            hostname: d.hostname,
            command,
            uid_base: d.uid_range.base,
            machine_id: d.machine_id,
            created_usec: d.created_usec,
            root,
            leader,
            started_usec,
            ephemeral: d.ephemeral,
            last_exit: last_exit.map(ExitStatus::to_line).unwrap_or_default(),
            disk_size: d.volume.as_ref().map_or(0, |(_, size)| *size),
            disk_allocated: d
                .volume
                .as_ref()
                .and_then(|(path, _)| crate::machine::volume::allocated(path))
                .unwrap_or(0),
            storage: d.storage,
            network,
            addresses,
            ports,
        }
    }
}

/// What a running machine uses now, `(sttttttt)`, read from its scope's cgroup files: name,
/// sample time (µs, CLOCK_MONOTONIC), CPU time (µs), memory now, memory peak, IO read bytes,
/// IO written bytes, tasks. `u64::MAX` where the kernel doesn't say (controller off, no
/// memory.peak before Linux 5.19).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct UsageEntry {
    pub name: String,
    pub sample_usec: u64,
    pub cpu_usec: u64,
    pub memory_bytes: u64,
    pub memory_peak_bytes: u64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
    pub tasks: u64,
}

/// `berth status`: the machine, and its scope as systemd sees it. Signature
/// `((ssssssasustsutbsstt)sssttta(ss)a(sus))`: machine, active state, sub state, control group,
/// tasks, memory bytes, CPU time in ns (u64::MAX when unknown), limits (property, value),
/// processes (cgroup relative to the scope, PID, command line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct MachineStatus {
    pub machine: MachineEntry,
    pub active_state: String,
    pub sub_state: String,
    pub control_group: String,
    pub tasks_current: u64,
    pub memory_current: u64,
    pub cpu_usage_nsec: u64,
    pub limits: Vec<(String, String)>,
    pub processes: Vec<(String, u32, String)>,
}

/// One forwarded port, as `berth ports` shows it: the machine, "tcp" or "udp", the host's
/// port, where IPv4 traffic goes (nftables DNAT) and IPv6 traffic (berthd's relay), the
/// machine's port, and whether the forward is in place now (the machine runs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct PortEntry {
    pub machine: String,
    pub protocol: String,
    pub host_port: u16,
    pub ipv4: String,
    pub ipv6: String,
    pub machine_port: u16,
    pub active: bool,
}

/// One snapshot of a machine, as `berth snapshot list` shows it: its name, when it was taken
/// (µs since the epoch), the machine's image then (`NAME@VERSION`), and how it is stored
/// ("btrfs snapshot", "reflink copy" or "copy").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct SnapshotEntry {
    pub snapshot: String,
    pub created_usec: u64,
    pub image: String,
    pub storage: String,
}

impl From<Snapshot> for SnapshotEntry {
    fn from(s: Snapshot) -> Self {
        Self {
            image: s.image_reference(),
            snapshot: s.name,
            created_usec: s.created_usec,
            storage: s.storage,
        }
    }
}
