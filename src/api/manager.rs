//! The `org.berth.Berth1.Manager` object.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use zbus::message::Header;
use zbus::{Connection, interface};

use super::polkit::{Action, authorize};
use super::{BusError, ImageEntry, ImportResult, MachineEntry};
use crate::image::Pool;
use crate::machine::{CreateRequest, MachineError, Machines, Mode, lifecycle};

/// berthd's manager object, served at `/org/berth/Berth1`.
#[derive(Debug, Clone)]
pub struct Manager {
    pool: Pool,
    machines: Machines,
    /// The binary to run as `--spawn-machine` (berthd itself).
    helper: PathBuf,
}

impl Manager {
    pub fn new(pool: Pool, machines: Machines, helper: PathBuf) -> Self {
        Self {
            pool,
            machines,
            helper,
        }
    }

    async fn entry(
        &self,
        conn: &Connection,
        d: crate::machine::Definition,
    ) -> Result<MachineEntry, BusError> {
        let root = self.machines.root_of(&d.name).display().to_string();
        let running = lifecycle::state(conn, &d.name).await?;
        Ok(MachineEntry::new(d, root, running))
    }
}

/// Runs filesystem work off the bus threads.
async fn blocking<T: Send + 'static, E: Into<BusError> + Send + 'static>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, BusError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(Into::into),
        Err(e) => Err(BusError::Failed(format!("internal error: {e}"))),
    }
}

#[interface(name = "org.berth.Berth1.Manager")]
impl Manager {
    /// Imports a tar archive (plain, gzip, xz or zstd) read from `file` as image `name`.
    /// `origin` is recorded as where it came from (a path, or `-` for stdin). Unsafe entries
    /// (absolute paths, `..`, paths through symlinks, hard links leaving the tree, device
    /// nodes) are not written and are listed in the result. Needs
    /// org.berth.berth1.manage-images.
    #[zbus(out_args("result"))]
    async fn import_tar(
        &self,
        file: zbus::OwnedFd,
        name: String,
        origin: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<ImportResult, BusError> {
        authorize(conn, &header, Action::ManageImages).await?;
        let pool = self.pool.clone();
        let file = File::from(OwnedFd::from(file));
        tracing::info!(%name, %origin, "importing tar");
        let report = blocking(move || pool.import_tar(&name, file, &origin)).await?;
        tracing::info!(name = %report.name, digest = %report.record.digest, refused = report.refused.len(), "imported tar");
        Ok(report.into())
    }

    /// Copies the directory tree open as `directory` into image `name`. Needs
    /// org.berth.berth1.manage-images.
    #[zbus(out_args("result"))]
    async fn import_fs(
        &self,
        directory: zbus::OwnedFd,
        name: String,
        origin: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<ImportResult, BusError> {
        authorize(conn, &header, Action::ManageImages).await?;
        let pool = self.pool.clone();
        let directory = OwnedFd::from(directory);
        tracing::info!(%name, %origin, "importing directory");
        let report = blocking(move || pool.import_fs(&name, directory, &origin)).await?;
        tracing::info!(name = %report.name, refused = report.refused.len(), "imported directory");
        Ok(report.into())
    }

    /// Lists the images in /var/lib/machines. Open to everyone.
    #[zbus(out_args("images"))]
    async fn list_images(&self) -> Result<Vec<ImageEntry>, BusError> {
        let pool = self.pool.clone();
        let images = blocking(move || pool.list()).await?;
        Ok(images.into_iter().map(ImageEntry::from).collect())
    }

    /// Removes image `name`. Needs org.berth.berth1.manage-images.
    async fn remove_image(
        &self,
        name: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), BusError> {
        authorize(conn, &header, Action::ManageImages).await?;
        let pool = self.pool.clone();
        tracing::info!(%name, "removing image");
        blocking(move || pool.remove(&name)).await
    }

    /// Creates machine `name` from image `image`: copies the image to the machine's root,
    /// gives it a UID range of its own, a machine-id and hostname (`hostname`, or `name` when
    /// empty) and stores its definition in /etc/berth/machines/NAME.machine. `boot` runs the
    /// image's init; otherwise `command` is run. `binds` are `SRC:DST[:ro]`. Needs
    /// org.berth.berth1.manage-machines.
    #[zbus(out_args("machine"))]
    #[allow(clippy::too_many_arguments)] // one argument per option of `berth create`
    async fn create_machine(
        &self,
        name: String,
        image: String,
        boot: bool,
        command: Vec<String>,
        hostname: String,
        binds: Vec<String>,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<MachineEntry, BusError> {
        authorize(conn, &header, Action::ManageMachines).await?;
        let mode = match (boot, command.is_empty()) {
            (true, true) => Mode::Boot,
            (false, false) => Mode::App(command),
            (true, false) => {
                return Err(BusError::InvalidArgument(
                    "give either --boot or a command, not both".into(),
                ));
            }
            (false, true) => {
                return Err(BusError::InvalidArgument(
                    "no command: give --boot, or the command after '--'".into(),
                ));
            }
        };
        let request = CreateRequest {
            name,
            image,
            mode,
            hostname,
            binds,
        };
        let machines = self.machines.clone();
        tracing::info!(name = %request.name, image = %request.image, "creating machine");
        let definition = blocking(move || machines.create(&request)).await?;
        tracing::info!(name = %definition.name, uid_base = definition.uid_range.base, "created machine");
        self.entry(conn, definition).await
    }

    /// Starts machine `name` in the transient scope `machine-NAME.scope` (machine.slice,
    /// Delegate=yes), registered with systemd-machined; returns once its init runs. Needs
    /// org.berth.berth1.manage-machines.
    #[zbus(out_args("machine"))]
    async fn start_machine(
        &self,
        name: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<MachineEntry, BusError> {
        authorize(conn, &header, Action::ManageMachines).await?;
        tracing::info!(%name, "starting machine");
        lifecycle::start(conn, &self.machines, self.helper.clone(), &name).await?;
        let definition = self.machines.get(&name)?;
        self.entry(conn, definition).await
    }

    /// Stops machine `name` cleanly (SIGRTMIN+3 to a systemd init, SIGTERM otherwise), and
    /// kills its scope after `timeout_sec` seconds. Needs org.berth.berth1.manage-machines.
    async fn stop_machine(
        &self,
        name: String,
        timeout_sec: u32,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), BusError> {
        authorize(conn, &header, Action::ManageMachines).await?;
        tracing::info!(%name, "stopping machine");
        let timeout = Duration::from_secs(u64::from(timeout_sec));
        Ok(lifecycle::stop(conn, &self.machines, &name, timeout).await?)
    }

    /// Removes machine `name`: its definition and its root. Needs
    /// org.berth.berth1.manage-machines.
    async fn remove_machine(
        &self,
        name: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), BusError> {
        authorize(conn, &header, Action::ManageMachines).await?;
        self.machines.get(&name)?;
        if lifecycle::state(conn, &name).await?.is_some() {
            return Err(MachineError::Running(name).into());
        }
        let machines = self.machines.clone();
        tracing::info!(%name, "removing machine");
        blocking(move || machines.remove(&name)).await
    }

    /// Lists the machines. Open to everyone.
    #[zbus(out_args("machines"))]
    async fn list_machines(
        &self,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<MachineEntry>, BusError> {
        let machines = self.machines.clone();
        let definitions = blocking(move || machines.list()).await?;
        let mut entries = Vec::with_capacity(definitions.len());
        for d in definitions {
            entries.push(self.entry(conn, d).await?);
        }
        Ok(entries)
    }

    /// berthd's version.
    #[zbus(property)]
    async fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }

    /// The directory images live in.
    #[zbus(property)]
    async fn image_directory(&self) -> String {
        self.pool.image_dir().display().to_string()
    }
}
