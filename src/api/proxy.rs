//! The client side of `org.berth.Berth1.Manager`, used by the CLI.

use zbus::proxy;

use super::{
    ImageEntry, ImportResult, MachineEntry, MachineStatus, PortEntry, SnapshotEntry, UsageEntry,
};

#[proxy(
    interface = "org.berth.Berth1.Manager",
    default_service = "org.berth.Berth1",
    default_path = "/org/berth/Berth1"
)]
pub trait Manager {
    fn import_tar(
        &self,
        file: zbus::Fd<'_>,
        name: &str,
        version: &str,
        origin: &str,
    ) -> zbus::Result<ImportResult>;

    fn import_fs(
        &self,
        directory: zbus::Fd<'_>,
        name: &str,
        version: &str,
        origin: &str,
    ) -> zbus::Result<ImportResult>;

    fn import_oci(
        &self,
        file: zbus::Fd<'_>,
        name: &str,
        version: &str,
        origin: &str,
    ) -> zbus::Result<ImportResult>;

    fn list_images(&self) -> zbus::Result<Vec<ImageEntry>>;

    fn remove_image(&self, name: &str, all_versions: bool) -> zbus::Result<()>;

    #[allow(clippy::too_many_arguments)]
    fn create_machine(
        &self,
        name: &str,
        image: &str,
        boot: bool,
        command: &[String],
        hostname: &str,
        binds: &[String],
        properties: &[String],
        storage: &str,
        disk_size: u64,
        timezone_locale: (&str, &str),
        app: (&str, &str, &[String]),
        network: (&str, bool, &[String]),
    ) -> zbus::Result<(MachineEntry, Vec<String>)>;

    fn remove_machine(&self, name: &str) -> zbus::Result<()>;

    fn enable_machine(&self, name: &str) -> zbus::Result<Vec<(String, String, String)>>;

    fn disable_machine(&self, name: &str) -> zbus::Result<Vec<(String, String, String)>>;

    fn wait_ready(&self, name: &str, timeout_sec: u32) -> zbus::Result<()>;

    fn start_machine(&self, name: &str) -> zbus::Result<MachineEntry>;

    fn stop_machine(&self, name: &str, timeout_sec: u32) -> zbus::Result<()>;

    fn list_machines(&self) -> zbus::Result<Vec<MachineEntry>>;

    fn list_ports(&self, name: &str) -> zbus::Result<Vec<PortEntry>>;

    #[allow(clippy::too_many_arguments)]
    fn run_machine(
        &self,
        name: &str,
        image: &str,
        boot: bool,
        command: &[String],
        hostname: &str,
        binds: &[String],
        properties: &[String],
        storage: &str,
        disk_size: u64,
        remove: bool,
        tty: bool,
        stdio: (zbus::Fd<'_>, zbus::Fd<'_>, zbus::Fd<'_>),
        term: &str,
        timezone_locale: (&str, &str),
        app: (&str, &str, &[String]),
        network: (&str, bool, &[String]),
    ) -> zbus::Result<(String, zbus::OwnedFd)>;

    fn wait_machine(&self, name: &str) -> zbus::Result<(i32, String)>;

    #[allow(clippy::too_many_arguments)]
    fn exec_machine(
        &self,
        name: &str,
        user: &str,
        command: &[String],
        tty: bool,
        window: (u16, u16),
        stdin: zbus::Fd<'_>,
        stdout: zbus::Fd<'_>,
        stderr: zbus::Fd<'_>,
        environment: &[String],
    ) -> zbus::Result<(u32, zbus::OwnedFd)>;

    #[allow(clippy::too_many_arguments)]
    fn open_shell(
        &self,
        name: &str,
        user: &str,
        command: &[String],
        tty: bool,
        window: (u16, u16),
        stdin: zbus::Fd<'_>,
        stdout: zbus::Fd<'_>,
        stderr: zbus::Fd<'_>,
        environment: &[String],
    ) -> zbus::Result<(u32, zbus::OwnedFd)>;

    fn wait_exec(&self, id: u32) -> zbus::Result<(i32, String)>;

    fn copy_to_machine(
        &self,
        name: &str,
        destination: &str,
        archive: zbus::Fd<'_>,
    ) -> zbus::Result<String>;

    fn copy_from_machine(
        &self,
        name: &str,
        source: &str,
        archive: zbus::Fd<'_>,
    ) -> zbus::Result<()>;

    fn kill_machine(&self, name: &str, leader_only: bool, signal: i32) -> zbus::Result<()>;

    fn restart_machine(&self, name: &str, timeout_sec: u32) -> zbus::Result<MachineEntry>;

    fn machine_status(&self, name: &str) -> zbus::Result<MachineStatus>;

    fn set_properties(
        &self,
        name: &str,
        properties: &[String],
        runtime: bool,
    ) -> zbus::Result<Vec<String>>;

    fn machine_usage(&self, names: &[String]) -> zbus::Result<Vec<UsageEntry>>;

    fn check_io(&self, name: &str) -> zbus::Result<Vec<(bool, String, String)>>;

    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn image_directory(&self) -> zbus::Result<String>;

    fn rebase_machine(
        &self,
        name: &str,
        version: &str,
    ) -> zbus::Result<(MachineEntry, String, Vec<String>)>;

    fn rename_machine(&self, name: &str, new_name: &str) -> zbus::Result<MachineEntry>;

    fn commit_machine(&self, name: &str, image: &str, version: &str) -> zbus::Result<ImportResult>;

    fn snapshot_machine(&self, name: &str, snapshot: &str) -> zbus::Result<(String, String)>;

    fn list_snapshots(&self, name: &str) -> zbus::Result<Vec<SnapshotEntry>>;

    fn restore_machine(
        &self,
        name: &str,
        snapshot: &str,
    ) -> zbus::Result<(MachineEntry, String, Vec<String>)>;

    fn remove_snapshot(&self, name: &str, snapshot: &str) -> zbus::Result<()>;

    fn clone_machine(
        &self,
        source: &str,
        target: &str,
        hostname: &str,
    ) -> zbus::Result<(MachineEntry, String)>;

    fn list_outdated(&self) -> zbus::Result<Vec<(String, String, String, String)>>;

    #[allow(clippy::too_many_arguments)]
    fn build_image(
        &self,
        context: zbus::Fd<'_>,
        containerfile: &str,
        name: &str,
        version: &str,
        source_reference_commit: (&str, &str, &str),
        stdout: zbus::Fd<'_>,
        stderr: zbus::Fd<'_>,
    ) -> zbus::Result<ImportResult>;

    fn image_build(
        &self,
        name: &str,
    ) -> zbus::Result<(String, String, String, String, String, String, String)>;

    fn export_image(
        &self,
        name: &str,
        directory: zbus::Fd<'_>,
        compression: &str,
    ) -> zbus::Result<(String, String)>;

    fn pull_image(
        &self,
        url: &str,
        name: &str,
        version: &str,
        verify: &str,
    ) -> zbus::Result<ImportResult>;
}
