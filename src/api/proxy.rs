//! The client side of `org.berth.Berth1.Manager`, used by the CLI.

use zbus::proxy;

use super::{ImageEntry, ImportResult, MachineEntry};

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
        origin: &str,
    ) -> zbus::Result<ImportResult>;

    fn import_fs(
        &self,
        directory: zbus::Fd<'_>,
        name: &str,
        origin: &str,
    ) -> zbus::Result<ImportResult>;

    fn list_images(&self) -> zbus::Result<Vec<ImageEntry>>;

    fn remove_image(&self, name: &str) -> zbus::Result<()>;

    #[allow(clippy::too_many_arguments)]
    fn create_machine(
        &self,
        name: &str,
        image: &str,
        boot: bool,
        command: &[String],
        hostname: &str,
        binds: &[String],
    ) -> zbus::Result<MachineEntry>;

    fn remove_machine(&self, name: &str) -> zbus::Result<()>;

    fn start_machine(&self, name: &str) -> zbus::Result<MachineEntry>;

    fn stop_machine(&self, name: &str, timeout_sec: u32) -> zbus::Result<()>;

    fn list_machines(&self) -> zbus::Result<Vec<MachineEntry>>;

    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn image_directory(&self) -> zbus::Result<String>;
}
