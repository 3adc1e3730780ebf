//! The `org.berth.Berth1.Manager` object.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::oneshot;
use zbus::message::Header;
use zbus::names::UniqueName;
use zbus::{Connection, interface};

use super::polkit::{Action, authorize};
use super::{
    BusError, ImageEntry, ImportResult, MachineEntry, MachineStatus, PortEntry, SnapshotEntry,
    UsageEntry,
};
use crate::build;
use crate::image::{ImageRef, Pool};
use crate::machine::lifecycle::{Attach, Started};
use crate::machine::{CreateRequest, MachineError, Machines, Mode, lifecycle, processes, usage};
use crate::runtime::ExitStatus;
use crate::runtime::copy::{self, CopyError};
use crate::runtime::exec::{Exec, ExecConfig};
use crate::systemd;

type ExecResult = Result<ExitStatus, String>;

/// Where downloads wait for their verification.
const PULL_DIR: &str = "/var/lib/berth/pull";

/// berthd's manager object, served at `/org/berth/Berth1`.
#[derive(Debug, Clone)]
pub struct Manager {
    pool: Pool,
    machines: Machines,
    /// The binary to run as `--spawn-machine` and `--exec-machine` (berthd itself).
    helper: PathBuf,
    /// Commands started by ExecMachine, until WaitExec collects them.
    execs: Arc<Mutex<HashMap<u32, oneshot::Receiver<ExecResult>>>>,
    next_exec: Arc<AtomicU32>,
}

impl Manager {
    pub fn new(pool: Pool, machines: Machines, helper: PathBuf) -> Self {
        Self {
            pool,
            machines,
            helper,
            execs: Arc::default(),
            next_exec: Arc::new(AtomicU32::new(1)),
        }
    }

    async fn entry(
        &self,
        conn: &Connection,
        d: crate::machine::Definition,
    ) -> Result<MachineEntry, BusError> {
        let root = self.machines.root_of(&d.name).display().to_string();
        let running = lifecycle::state(conn, &d.name).await?;
        let last_exit = lifecycle::read_status(&d.name);
        Ok(MachineEntry::new(d, root, running, last_exit))
    }

    /// The definition and leader PID of running machine `name`.
    async fn running_machine(
        &self,
        conn: &Connection,
        name: &str,
    ) -> Result<(crate::machine::Definition, i32), BusError> {
        let definition = self.machines.get(name)?;
        let Some(running) = lifecycle::state(conn, name).await? else {
            return Err(MachineError::NotRunning(name.to_owned()).into());
        };
        Ok((definition, i32::try_from(running.leader).unwrap_or(0)))
    }

    /// The exec helper's configuration for a copy into or out of machine `name` (`verb`:
    /// copy-to or copy-from); the caller sets which way it goes. A stopped machine is
    /// claimed until the copy is done (the claim returned): it is not started meanwhile,
    /// which would mount its volume twice.
    async fn copy_config(
        &self,
        conn: &Connection,
        name: &str,
        verb: &str,
    ) -> Result<(ExecConfig, Option<lifecycle::Claim>), BusError> {
        let definition = self.machines.get(name)?;
        let claim = lifecycle::Claim::new(name, "copying files into or out of")?;
        let leader = match lifecycle::state(conn, name).await? {
            Some(running) => i32::try_from(running.leader).unwrap_or(0),
            None => 0,
        };
        let mut config = lifecycle::exec_config(
            &definition,
            leader,
            String::new(),
            vec![verb.into()],
            false,
            Vec::new(),
        );
        if leader != 0 {
            return Ok((config, None));
        }
        config.stopped = Some(lifecycle::stopped_root(&self.machines, &definition));
        Ok((config, Some(claim)))
    }

    /// Starts the exec helper; returns the id WaitExec takes and the terminal's master side.
    /// The command gets `stdio`, or with `config.tty` a new terminal of `window` rows and
    /// columns. When the caller (the sender of `header`) leaves the bus (`berth exec` killed,
    /// or its Ctrl-C without a terminal), the command is hung up, as sshd does when its client
    /// goes: nothing it started runs on unattended.
    async fn start_exec(
        &self,
        conn: &Connection,
        header: &Header<'_>,
        mut config: ExecConfig,
        window: (u16, u16),
        stdio: [OwnedFd; 3],
    ) -> Result<(u32, zbus::OwnedFd), BusError> {
        config.window = window;
        let stdio = (!config.tty).then_some(stdio);
        let caller = header.sender();
        let helper = self.helper.clone();
        let mut exec =
            blocking(move || Exec::start(&helper, &config, stdio).map_err(MachineError::from))
                .await?;
        let terminal = exec.terminal.take();
        let id = self.next_exec.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        self.execs
            .lock()
            .map_err(|_| BusError::Failed("internal lock poisoned".into()))?
            .insert(id, receiver);
        let (ended, ended_receiver) = oneshot::channel::<()>();
        if let (Some(caller), Some(hangup)) = (caller, exec.hangup()) {
            let conn = conn.clone();
            let caller = caller.to_owned();
            let execs = Arc::clone(&self.execs);
            tokio::spawn(async move {
                tokio::select! {
                    biased;
                    _ = ended_receiver => {}
                    () = left_the_bus(&conn, caller.as_ref()) => {
                        tracing::info!(id, caller = %caller, "the caller of a command went away; hanging the command up");
                        hangup.send();
                        // No WaitExec will come for it.
                        if let Ok(mut execs) = execs.lock() {
                            execs.remove(&id);
                        }
                    }
                }
            });
        }
        tokio::task::spawn_blocking(move || {
            let _ = sender.send(exec.wait().map_err(|e| e.to_string()));
            drop(ended);
        });
        Ok((id, terminal_reply(terminal)?))
    }
}

/// Returns once bus client `name` has left the bus (at once when it has gone already); never
/// when the bus can't tell.
async fn left_the_bus(conn: &Connection, name: UniqueName<'_>) {
    let watch = async {
        let dbus = zbus::fdo::DBusProxy::new(conn).await?;
        let mut changes = dbus
            .receive_name_owner_changed_with_args(&[(0, name.as_str())])
            .await?;
        if dbus.name_has_owner(name.clone().into()).await? {
            while let Some(change) = changes.next().await {
                if change.args()?.new_owner().is_none() {
                    break;
                }
            }
        }
        Ok::<(), zbus::Error>(())
    };
    if let Err(e) = watch.await {
        tracing::warn!(%name, "cannot watch a command's caller on the bus: {e}");
        std::future::pending::<()>().await;
    }
}

/// The caller's `NAME=VALUE` environment: only TERM and COLORTERM pass into a machine.
fn caller_environment(assignments: &[String]) -> Result<Vec<(String, String)>, BusError> {
    assignments
        .iter()
        .map(|a| match a.split_once('=') {
            Some((key @ ("TERM" | "COLORTERM"), value)) if !value.contains('\n') => {
                Ok((key.to_owned(), value.to_owned()))
            }
            _ => Err(BusError::InvalidArgument(format!(
                "environment '{a}': only TERM=VALUE and COLORTERM=VALUE are passed on"
            ))),
        })
        .collect()
}

/// The three standard streams a client passed.
fn streams(stdin: zbus::OwnedFd, stdout: zbus::OwnedFd, stderr: zbus::OwnedFd) -> [OwnedFd; 3] {
    [stdin.into(), stdout.into(), stderr.into()]
}

/// A terminal's master side for the reply, or /dev/null when there is none (D-Bus has no
/// optional descriptors).
fn terminal_reply(terminal: Option<OwnedFd>) -> Result<zbus::OwnedFd, BusError> {
    let fd = match terminal {
        Some(fd) => fd,
        None => File::open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| BusError::Failed(format!("opening /dev/null: {e}")))?,
    };
    Ok(fd.into())
}

/// `--boot` or a command, not both and not neither.
fn mode(boot: bool, command: Vec<String>) -> Result<Mode, BusError> {
    match (boot, command.is_empty()) {
        (true, true) => Ok(Mode::Boot),
        (false, false) => Ok(Mode::App(command)),
        (true, false) => Err(BusError::InvalidArgument(
            "give either --boot or a command, not both".into(),
        )),
        // The image's default command (an OCI config's, a build's ENTRYPOINT/CMD), if any.
        (false, true) => Ok(Mode::App(Vec::new())),
    }
}

/// Parses `-p` properties and checks them against the running systemd, before anything is
/// created; returns them parsed.
async fn check_properties(
    conn: &Connection,
    properties: &[String],
) -> Result<Vec<systemd::properties::Property>, BusError> {
    let parsed = systemd::properties::parse_all(properties)
        .map_err(|e| BusError::InvalidArgument(e.to_string()))?;
    match systemd::check_properties(conn, &parsed).await {
        Ok(()) => Ok(parsed),
        Err(systemd::SystemdError::Property(e)) => Err(BusError::InvalidArgument(e.to_string())),
        Err(e) => Err(MachineError::from(e).into()),
    }
}

/// `--storage` and `--disk-size`: the volume size, or `None` for a snapshot or copy.
fn storage_request(storage: &str, disk_size: u64) -> Result<Option<u64>, BusError> {
    match (storage, disk_size) {
        ("" | "auto", 0) => Ok(None),
        ("" | "auto", _) => Err(BusError::InvalidArgument(
            "--disk-size needs --storage volume".into(),
        )),
        ("volume", 0) => Err(BusError::InvalidArgument(
            "--storage volume needs --disk-size SIZE (e.g. --disk-size 2G)".into(),
        )),
        ("volume", size) if size < crate::machine::volume::MIN_SIZE => {
            Err(BusError::InvalidArgument(format!(
                "--disk-size {size} is too small; a volume needs at least 64M"
            )))
        }
        ("volume", size) => Ok(Some(size)),
        (other, _) => Err(BusError::InvalidArgument(format!(
            "unknown storage '{other}': use 'auto' (snapshot or copy of the image) or 'volume'"
        ))),
    }
}

/// Refuses `path` (the copy's `what`) unless it is an absolute path of the machine.
fn check_machine_path(path: &str, what: &str, examples: &str) -> Result<(), BusError> {
    if path.starts_with('/') && !path.contains('\0') {
        return Ok(());
    }
    Err(BusError::InvalidArgument(format!(
        "{what} '{path}' is not an absolute path in the machine; give one such as {examples}"
    )))
}

/// The D-Bus error of a failed copy into or out of machine `name`: a path the caller must
/// change is an invalid argument.
fn copy_error(name: &str, doing: &str, e: CopyError) -> BusError {
    match e {
        CopyError::Path(message) => BusError::InvalidArgument(format!(
            "{doing} machine '{name}': {}",
            message.replace("berth exec NAME", &format!("berth exec {name}"))
        )),
        CopyError::Failed(message) => {
            BusError::Failed(format!("{doing} machine '{name}': {message}"))
        }
    }
}

fn exit_reply(status: Option<ExitStatus>) -> (i32, String) {
    match status {
        Some(status) => (status.code(), status.describe()),
        None => (
            255,
            "ended; its exit status is unknown (it was killed while berthd was not its parent)"
                .into(),
        ),
    }
}

/// Runs filesystem work off the bus threads.
/// Why a machine is copied only while stopped.
const UNDER_THE_COPY: &str = ": a running machine's root is changing under the copy";

/// Claims machine `name`, which must be stopped, for `what` ("rebasing", ...): until the
/// claim is dropped no other request starts it or works on it. `then` ends the message when
/// it runs.
async fn require_stopped(
    conn: &Connection,
    name: &str,
    what: &'static str,
    then: &str,
) -> Result<lifecycle::Claim, BusError> {
    let claim = lifecycle::Claim::new(name, what)?;
    if lifecycle::state(conn, name).await?.is_some() {
        return Err(MachineError::InvalidArgument(format!(
            "machine '{name}' is running; stop it first ('berth stop {name}'){then}"
        ))
        .into());
    }
    Ok(claim)
}

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
    /// Imports a tar archive (plain, gzip, xz or zstd) read from `file` as image `name`, as
    /// its version `version` when that is not empty. `origin` is recorded as where it came from (a path, or `-` for stdin). Unsafe entries
    /// (absolute paths, `..`, paths through symlinks, hard links leaving the tree, device
    /// nodes) are not written and are listed in the result. Needs
    /// org.berth.berth1.import-image.
    #[zbus(out_args("result"))]
    async fn import_tar(
        &self,
        file: zbus::OwnedFd,
        name: String,
        version: String,
        origin: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<ImportResult, BusError> {
        authorize(conn, &header, Action::ImportImage).await?;
        let pool = self.pool.clone();
        let file = File::from(OwnedFd::from(file));
        let target = ImageRef::new(&name, &version)?.to_string();
        tracing::info!(%target, %origin, "importing tar");
        let report = blocking(move || pool.import_tar(&target, file, &origin)).await?;
        tracing::info!(name = %report.name, digest = %report.record.digest, refused = report.refused.len(), "imported tar");
        Ok(report.into())
    }

    /// Imports an OCI image layout tarball or a `docker save` archive read from `file` as
    /// image `name` (version `version` when not empty): layers flattened in order with
    /// whiteouts applied, every blob's digest checked, the config's Entrypoint, Cmd, Env,
    /// WorkingDir and User kept as defaults for app machines. Needs
    /// org.berth.berth1.import-image.
    #[zbus(out_args("result"))]
    async fn import_oci(
        &self,
        file: zbus::OwnedFd,
        name: String,
        version: String,
        origin: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<ImportResult, BusError> {
        authorize(conn, &header, Action::ImportImage).await?;
        let pool = self.pool.clone();
        let file = File::from(OwnedFd::from(file));
        let target = ImageRef::new(&name, &version)?.to_string();
        tracing::info!(%target, %origin, "importing OCI image");
        let report = blocking(move || pool.import_oci(&target, file, &origin)).await?;
        tracing::info!(name = %report.name, digest = %report.record.digest, "imported OCI image");
        Ok(report.into())
    }

    /// Copies the directory tree open as `directory` into image `name` (version `version`
    /// when not empty). Needs
    /// org.berth.berth1.import-image.
    #[zbus(out_args("result"))]
    async fn import_fs(
        &self,
        directory: zbus::OwnedFd,
        name: String,
        version: String,
        origin: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<ImportResult, BusError> {
        authorize(conn, &header, Action::ImportImage).await?;
        let pool = self.pool.clone();
        let directory = OwnedFd::from(directory);
        let target = ImageRef::new(&name, &version)?.to_string();
        tracing::info!(%target, %origin, "importing directory");
        let report = blocking(move || pool.import_fs(&target, directory, &origin)).await?;
        tracing::info!(name = %report.name, refused = report.refused.len(), "imported directory");
        Ok(report.into())
    }

    /// Builds image `name` at `version` from the build context tar read from `context` (the
    /// tree of the commit `commit` of `source` at ref `reference`, as the client resolved
    /// it; recorded for rebuilds) by the Containerfile at `containerfile` in it. RUN steps
    /// run in a transient machine made from the Containerfile's FROM image; progress and
    /// their output go to `stdout` and `stderr`. Nothing is stored when a step fails. Needs
    /// org.berth.berth1.build-image.
    #[zbus(out_args("result"))]
    #[allow(clippy::too_many_arguments)] // one argument per fact of the build
    async fn build_image(
        &self,
        context: zbus::OwnedFd,
        containerfile: String,
        name: String,
        version: String,
        source_reference_commit: (String, String, String),
        stdout: zbus::OwnedFd,
        stderr: zbus::OwnedFd,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<ImportResult, BusError> {
        authorize(conn, &header, Action::BuildImage).await?;
        let (source, reference, commit) = source_reference_commit;
        let target = ImageRef::new(&name, &version)?;
        if target.version.is_none() {
            return Err(BusError::InvalidArgument(
                "a build needs a version (berth build gives the commit's date by default)".into(),
            ));
        }
        let request = build::BuildRequest {
            target: target.to_string(),
            containerfile,
            source,
            reference,
            commit,
        };
        let output = build::BuildOutput {
            stdout: stdout.into(),
            stderr: stderr.into(),
        };
        tracing::info!(target = %request.target, source = %request.source, commit = %request.commit, "building image");
        let report = build::build(
            conn,
            &self.pool,
            &self.machines,
            self.helper.clone(),
            request,
            File::from(OwnedFd::from(context)),
            output,
        )
        .await?;
        tracing::info!(name = %report.name, "built image");
        Ok(report.into())
    }

    /// How image `name` (`NAME` for its newest version, or `NAME@VERSION`) was built:
    /// (version, source, ref, commit, Containerfile path, FROM as written, base version).
    /// Empty strings for an image that was not built. Open to everyone.
    #[zbus(out_args(
        "version",
        "source",
        "reference",
        "commit",
        "containerfile",
        "from",
        "base_version"
    ))]
    async fn image_build(
        &self,
        name: String,
    ) -> Result<(String, String, String, String, String, String, String), BusError> {
        let pool = self.pool.clone();
        let info = blocking(move || pool.get(&name)).await?;
        let build = info.record.build.unwrap_or_default();
        let base_version = info.record.base.map(|b| b.version).unwrap_or_default();
        Ok((
            info.version,
            build.source,
            build.reference,
            build.commit,
            build.containerfile,
            build.from,
            base_version,
        ))
    }

    /// Writes image `name` (`NAME` or `NAME@VERSION`) into the directory open as `directory`
    /// as `NAME_VERSION.tar.zst` (`compression` "zstd", the default) or `.tar.xz` ("xz"),
    /// and adds its line to the directory's SHA256SUMS, as `machinectl pull-tar` and
    /// `berth pull` expect. Returns the file name and its sha256. Needs
    /// org.berth.berth1.export-image (an image may hold secrets).
    #[zbus(out_args("file", "sha256"))]
    async fn export_image(
        &self,
        name: String,
        directory: zbus::OwnedFd,
        compression: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(String, String), BusError> {
        authorize(conn, &header, Action::ExportImage).await?;
        let compression = match compression.as_str() {
            "" | "zstd" => crate::image::export::ExportCompression::Zstd,
            "xz" => crate::image::export::ExportCompression::Xz,
            other => {
                return Err(BusError::InvalidArgument(format!(
                    "unknown compression '{other}': give zstd or xz"
                )));
            }
        };
        let pool = self.pool.clone();
        let directory = OwnedFd::from(directory);
        tracing::info!(%name, "exporting image");
        blocking(move || pool.export(&name, directory, compression)).await
    }

    /// Downloads `url` (a tarball in a registry directory that `berth export` or any
    /// `machinectl pull-tar` layout wrote), verifies it (`verify`: "checksum", the default,
    /// against the directory's SHA256SUMS; "signature", also SHA256SUMS.gpg with gpgv and the
    /// keyring /etc/berth/import-pubring.gpg or systemd's; "no") and imports it as image
    /// `name` (empty: from the file name, `NAME_VERSION.tar.zst`) at `version` (empty: from
    /// the file name, if it has one). A download that fails verification is discarded.
    /// Needs org.berth.berth1.pull-image.
    #[zbus(out_args("result"))]
    async fn pull_image(
        &self,
        url: String,
        name: String,
        version: String,
        verify: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<ImportResult, BusError> {
        use crate::image::pull::{self, Verify};
        authorize(conn, &header, Action::PullImage).await?;
        let verify = match verify.as_str() {
            "" | "checksum" => Verify::Checksum,
            "signature" => Verify::Signature,
            "no" => Verify::No,
            other => {
                return Err(BusError::InvalidArgument(format!(
                    "unknown verification '{other}': give checksum, signature or no"
                )));
            }
        };
        let suggested = pull::name_from_url(&url);
        let name = match (name.is_empty(), &suggested) {
            (false, _) => name,
            (true, Some((suggested, _))) => suggested.clone(),
            (true, None) => {
                return Err(BusError::InvalidArgument(format!(
                    "cannot tell an image name from '{url}'; give one: berth pull URL NAME"
                )));
            }
        };
        let version = match (version.is_empty(), suggested) {
            (true, Some((_, Some(v)))) => v,
            _ => version,
        };
        let target = ImageRef::new(&name, &version)?.to_string();
        let pool = self.pool.clone();
        tracing::info!(%url, %target, "pulling image");
        let report =
            blocking(move || pool.pull(&target, &url, verify, std::path::Path::new(PULL_DIR)))
                .await?;
        tracing::info!(name = %report.name, digest = %report.record.digest, "pulled image");
        Ok(report.into())
    }

    /// Lists the images in /var/lib/machines. Open to everyone.
    #[zbus(out_args("images"))]
    async fn list_images(&self) -> Result<Vec<ImageEntry>, BusError> {
        let pool = self.pool.clone();
        let images = blocking(move || pool.list()).await?;
        Ok(images.into_iter().map(ImageEntry::from).collect())
    }

    /// Removes image `name` (`NAME@VERSION` for one version; `NAME` of an image with
    /// versions only with `all_versions`). Needs org.berth.berth1.remove-image.
    async fn remove_image(
        &self,
        name: String,
        all_versions: bool,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), BusError> {
        authorize(conn, &header, Action::RemoveImage).await?;
        let pool = self.pool.clone();
        let machines = self.machines.clone();
        tracing::info!(%name, all_versions, "removing image");
        blocking(move || {
            pool.remove(&name, all_versions)?;
            machines.discard_stale_spares();
            Ok::<(), crate::image::ImageError>(())
        })
        .await
    }

    /// Creates machine `name` from image `image`: copies the image to the machine's root,
    /// gives it a UID range of its own, a machine-id and hostname (`hostname`, or `name` when
    /// empty) and stores its definition in /etc/berth/machines/NAME.machine. `boot` runs the
    /// image's init; otherwise `command` is run. `binds` are `SRC:DST[:ro]`; `properties` are
    /// resource-control `NAME=VALUE` assignments in systemd's syntax, checked against the
    /// running systemd. `storage` is "" (the root is a snapshot or copy of the image) or
    /// "volume" (the machine gets its own ext4 filesystem of `disk_size` bytes).
    /// `timezone_locale` is (zone, locale), each "host" or "" (follow the host, refreshed at
    /// each start) or a value written once into the guest's /etc. `app` is an app machine's
    /// (user, working directory, NAME=VALUE variables): empty means the image's defaults (an
    /// OCI config's User, WorkingDir, Env), variables are set over the image's. `network` is
    /// (mode, masquerade, ports): "host" or "", "none", "private" or "bridge=BR"; whether a
    /// private machine's outside traffic is masqueraded; its forwarded ports,
    /// "[tcp:|udp:]HOSTPORT[:MACHINEPORT]". Returns the
    /// machine and warnings (what the guest lacks). Needs org.berth.berth1.create-machine.
    #[zbus(out_args("machine", "warnings"))]
    #[allow(clippy::too_many_arguments)] // one argument per option of `berth create`
    async fn create_machine(
        &self,
        name: String,
        image: String,
        boot: bool,
        command: Vec<String>,
        hostname: String,
        binds: Vec<String>,
        properties: Vec<String>,
        storage: String,
        disk_size: u64,
        timezone_locale: (String, String),
        app: (String, String, Vec<String>),
        network: (String, bool, Vec<String>),
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(MachineEntry, Vec<String>), BusError> {
        let (timezone, locale) = timezone_locale;
        let (user, working_directory, environment) = app;
        let (network, masquerade, ports) = network;
        authorize(conn, &header, Action::CreateMachine).await?;
        check_properties(conn, &properties).await?;
        let mode = mode(boot, command)?;
        let request = CreateRequest {
            name,
            image,
            mode,
            hostname,
            binds,
            ephemeral: false,
            properties,
            disk_size: storage_request(&storage, disk_size)?,
            timezone,
            locale,
            user,
            working_directory,
            environment,
            network,
            masquerade,
            ports,
        };
        let machines = self.machines.clone();
        tracing::info!(name = %request.name, image = %request.image, "creating machine");
        let (definition, warnings) = blocking(move || machines.create(&request)).await?;
        for warning in &warnings {
            tracing::warn!(name = %definition.name, "{warning}");
        }
        Ok((self.entry(conn, definition).await?, warnings))
    }

    /// Starts machine `name` in the transient scope `machine-NAME.scope` (machine.slice,
    /// Delegate=yes), registered with systemd-machined; returns once its init runs. Needs
    /// org.berth.berth1.start-machine.
    #[zbus(out_args("machine"))]
    async fn start_machine(
        &self,
        name: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<MachineEntry, BusError> {
        authorize(conn, &header, Action::StartMachine).await?;
        tracing::info!(%name, "starting machine");
        lifecycle::start(
            conn,
            &self.machines,
            self.helper.clone(),
            &name,
            Attach::Journal,
        )
        .await?;
        let definition = self.machines.get(&name)?;
        self.entry(conn, definition).await
    }

    /// Creates machine `name` (a generated `run-…` name when empty) as CreateMachine does and
    /// starts it attached to the caller: with `tty`, to a new terminal of the machine whose
    /// master side is returned (else /dev/null is); otherwise to `stdio` (standard input,
    /// output and error). `remove` makes it ephemeral: berthd removes it once it stops. When the start
    /// fails the machine is removed again. Collect the exit status with WaitMachine. Needs
    /// org.berth.berth1.run-machine.
    #[zbus(out_args("name", "terminal"))]
    #[allow(clippy::too_many_arguments)] // one argument per option of `berth run`
    async fn run_machine(
        &self,
        name: String,
        image: String,
        boot: bool,
        command: Vec<String>,
        hostname: String,
        binds: Vec<String>,
        properties: Vec<String>,
        storage: String,
        disk_size: u64,
        remove: bool,
        tty: bool,
        stdio: (zbus::OwnedFd, zbus::OwnedFd, zbus::OwnedFd),
        term: String,
        timezone_locale: (String, String),
        app: (String, String, Vec<String>),
        network: (String, bool, Vec<String>),
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(String, zbus::OwnedFd), BusError> {
        let (timezone, locale) = timezone_locale;
        let (user, working_directory, environment) = app;
        let (network, masquerade, ports) = network;
        authorize(conn, &header, Action::RunMachine).await?;
        check_properties(conn, &properties).await?;
        let mode = mode(boot, command)?;
        let name = if name.is_empty() {
            crate::machine::generated_name()?
        } else {
            name
        };
        let request = CreateRequest {
            name: name.clone(),
            image,
            mode,
            hostname,
            binds,
            ephemeral: remove,
            properties,
            disk_size: storage_request(&storage, disk_size)?,
            timezone,
            locale,
            user,
            working_directory,
            environment,
            network,
            masquerade,
            ports,
        };
        let machines = self.machines.clone();
        tracing::info!(%name, image = %request.image, remove, tty, "running machine");
        let (_, warnings) = blocking(move || machines.create(&request)).await?;
        for warning in warnings {
            tracing::warn!(%name, "{warning}");
        }
        let attach = if tty {
            Attach::Terminal {
                term: if term.is_empty() {
                    "vt220".into()
                } else {
                    term
                },
            }
        } else {
            let (stdin, stdout, stderr) = stdio;
            Attach::Streams(streams(stdin, stdout, stderr))
        };
        let started =
            lifecycle::start(conn, &self.machines, self.helper.clone(), &name, attach).await;
        let Started { terminal, .. } = match started {
            Ok(started) => started,
            // Another client started (or is starting, renaming...) the machine between its
            // create and this start: it is theirs now, not this run's to remove.
            Err(
                e @ (MachineError::AlreadyRunning(_)
                | MachineError::AlreadyStarting(_)
                | MachineError::Busy { .. }),
            ) => return Err(e.into()),
            Err(e) => {
                let machines = self.machines.clone();
                let removing = name.clone();
                let _ = blocking(move || machines.remove(&removing)).await;
                return Err(e.into());
            }
        };
        // Its reaper removes it; without one (no pidfd), a watcher does.
        if remove && !lifecycle::reaped_here(&name) {
            tokio::spawn(lifecycle::remove_when_stopped(
                conn.clone(),
                self.machines.clone(),
                name.clone(),
            ));
        }
        Ok((name, terminal_reply(terminal)?))
    }

    /// Waits until machine `name` stops; returns its payload's exit code (for a signal, 128 +
    /// the signal; 255 when unknown) and a description. Works after an ephemeral machine was
    /// removed, until a machine of the same name starts. Open to everyone.
    #[zbus(out_args("code", "description"))]
    async fn wait_machine(
        &self,
        name: String,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(i32, String), BusError> {
        crate::name::validate_machine(&name).map_err(MachineError::from)?;
        // A machine this berthd reaps is running (or ending): no need to ask machined.
        if !lifecycle::reaped_here(&name)
            && lifecycle::state(conn, &name).await?.is_none()
            && lifecycle::read_status(&name).is_none()
        {
            self.machines.get(&name)?;
            return Err(MachineError::NotRunning(name).into());
        }
        let status = lifecycle::wait(conn, &name).await?;
        // An ephemeral machine is gone once this returns, so `berth run --rm` leaves nothing.
        for _ in 0..3000 {
            match self.machines.get(&name) {
                Ok(d) if d.ephemeral => tokio::time::sleep(Duration::from_millis(20)).await,
                _ => break,
            }
        }
        Ok(exit_reply(status))
    }

    /// Runs `command` in running machine `name` (all its namespaces, its cgroup, its root) as
    /// `user` (a name or UID of the machine's /etc/passwd; empty for root), attached like
    /// RunMachine (with `tty`, a new terminal of `window` rows and columns), with a login environment built from the guest's own files (PATH, HOME,
    /// SHELL, USER, LANG and LC_*, /etc/environment). `environment` passes the caller's TERM
    /// and COLORTERM (`NAME=VALUE`). Returns an id for WaitExec and the terminal's master side
    /// (else /dev/null). Needs org.berth.berth1.exec-machine.
    #[zbus(out_args("id", "terminal"))]
    #[allow(clippy::too_many_arguments)] // one argument per option of `berth exec`
    async fn exec_machine(
        &self,
        name: String,
        user: String,
        command: Vec<String>,
        tty: bool,
        window: (u16, u16),
        stdin: zbus::OwnedFd,
        stdout: zbus::OwnedFd,
        stderr: zbus::OwnedFd,
        environment: Vec<String>,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(u32, zbus::OwnedFd), BusError> {
        authorize(conn, &header, Action::ExecMachine).await?;
        if command.first().is_none_or(String::is_empty) {
            return Err(BusError::InvalidArgument(
                "no command: give the command to run after '--'".into(),
            ));
        }
        let environment = caller_environment(&environment)?;
        let (definition, leader) = self.running_machine(conn, &name).await?;
        tracing::info!(%name, ?command, %user, "exec in machine");
        let config = lifecycle::exec_config(&definition, leader, user, command, tty, environment);
        let stdio = streams(stdin, stdout, stderr);
        self.start_exec(conn, &header, config, window, stdio).await
    }

    /// Opens a login session in running boot machine `name`: its own systemd runs `command`
    /// (empty: `user`'s login shell) as a transient service with PAMName=login, so logind
    /// registers the session and pam_env applies the guest's /etc/environment and locale;
    /// attached like ExecMachine. `environment` passes the caller's TERM and COLORTERM.
    /// WaitExec returns the command's exit status. Needs org.berth.berth1.shell-machine.
    #[zbus(out_args("id", "terminal"))]
    #[allow(clippy::too_many_arguments)] // one argument per option of `berth shell`
    async fn open_shell(
        &self,
        name: String,
        user: String,
        command: Vec<String>,
        tty: bool,
        window: (u16, u16),
        stdin: zbus::OwnedFd,
        stdout: zbus::OwnedFd,
        stderr: zbus::OwnedFd,
        environment: Vec<String>,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(u32, zbus::OwnedFd), BusError> {
        authorize(conn, &header, Action::ShellMachine).await?;
        if command.first().is_some_and(String::is_empty) {
            return Err(BusError::InvalidArgument(
                "empty command: give the command after '--', or none for a login shell".into(),
            ));
        }
        crate::runtime::shell::validate_user(&user).map_err(MachineError::from)?;
        let environment = caller_environment(&environment)?;
        let (definition, leader) = self.running_machine(conn, &name).await?;
        if definition.mode != Mode::Boot {
            return Err(BusError::InvalidState(format!(
                "machine '{name}' runs an app, not an init system, so it has no login sessions; \
                 use 'berth exec {name} -- CMD' (it gets a login environment too)"
            )));
        }
        tracing::info!(%name, ?command, %user, "shell in machine");
        let unit = crate::runtime::shell::new_unit_name().map_err(MachineError::from)?;
        let argv =
            crate::runtime::shell::systemd_run_command(&user, &command, tty, &environment, &unit);
        let mut config =
            lifecycle::exec_config(&definition, leader, String::new(), argv, tty, environment);
        config.hangup_unit = Some(unit);
        let stdio = streams(stdin, stdout, stderr);
        self.start_exec(conn, &header, config, window, stdio).await
    }

    /// Waits for the command ExecMachine started as `id`; returns its exit code (128 + the
    /// signal when killed) and a description. Needs org.berth.berth1.exec-machine.
    #[zbus(out_args("code", "description"))]
    async fn wait_exec(
        &self,
        id: u32,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(i32, String), BusError> {
        authorize(conn, &header, Action::ExecMachine).await?;
        let receiver = self
            .execs
            .lock()
            .map_err(|_| BusError::Failed("internal lock poisoned".into()))?
            .remove(&id)
            .ok_or_else(|| BusError::InvalidArgument(format!("no command with id {id}")))?;
        match receiver.await {
            Ok(Ok(status)) => Ok(exit_reply(Some(status))),
            Ok(Err(message)) => Err(BusError::Failed(message)),
            Err(_) => Err(BusError::Failed("the command's watcher went away".into())),
        }
    }

    /// Copies a file or directory tree into machine `name`, at `destination` (an
    /// absolute path of the machine; into it when it is a directory). `archive` carries a tar
    /// stream of it: one top-level entry, named as the source, then the line `berth copy-to:
    /// end of stream` after the archive's end blocks (`berth copy-to` writes it as the
    /// caller, so it holds only what the caller may read). The exec helper unpacks it inside
    /// the machine as the machine's root: what it writes is owned by the machine's root,
    /// with the permission bits (not set-ID or sticky bits) and times of the source; an
    /// existing file is replaced, an existing directory is not. A stream that ends early
    /// copies nothing. A stopped machine's root is made by the helper as a start would make
    /// it, and a destination its own mounts cover once it runs (/tmp, /run, a bind) is
    /// refused; the machine is not started meanwhile. Returns the path written. Needs
    /// org.berth.berth1.copy-to-machine.
    #[zbus(out_args("written"))]
    async fn copy_to_machine(
        &self,
        name: String,
        destination: String,
        archive: zbus::OwnedFd,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, BusError> {
        authorize(conn, &header, Action::CopyToMachine).await?;
        check_machine_path(&destination, "destination", "/root/ or /etc/app.conf")?;
        let (mut config, _claim) = self.copy_config(conn, &name, "copy-to").await?;
        tracing::info!(%name, %destination, stopped = config.stopped.is_some(), "copy into machine");
        config.unpack_to = Some(destination);
        let helper = self.helper.clone();
        let written = blocking(move || {
            copy::copy_in(&helper, &config, archive.into())
                .map_err(|e| copy_error(&name, "copying into", e))
        })
        .await?;
        Ok(written.display().to_string())
    }

    /// Copies a file or directory tree out of machine `name` (running, or stopped: see
    /// CopyToMachine): the exec helper, inside
    /// the machine as its root, writes a copy stream of `source` (an absolute path of the
    /// machine, followed if it is a symlink; inside a directory, symlinks are copied as links)
    /// to `archive`, in CopyToMachine's format: one top-level entry, named as the source, then
    /// the line `berth copy-to: end of stream`. A stream without that line is incomplete.
    /// Returns once it is written. `berth copy-from` unpacks it on the host as the caller.
    /// Needs org.berth.berth1.copy-from-machine.
    async fn copy_from_machine(
        &self,
        name: String,
        source: String,
        archive: zbus::OwnedFd,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), BusError> {
        authorize(conn, &header, Action::CopyFromMachine).await?;
        check_machine_path(&source, "source", "/etc/hostname or /var/log/")?;
        let (mut config, _claim) = self.copy_config(conn, &name, "copy-from").await?;
        tracing::info!(%name, %source, stopped = config.stopped.is_some(), "copy out of machine");
        config.pack_from = Some(source);
        let helper = self.helper.clone();
        blocking(move || {
            copy::copy_out(&helper, &config, archive.into())
                .map_err(|e| copy_error(&name, "copying from", e))
        })
        .await
    }

    /// Sends `signal` to machine `name`: to its PID 1 only with `leader_only`, else to every
    /// process of it. To PID 1 only, a signal it ignores or neither blocks nor catches (the
    /// kernel would drop it) is waited for up to 10 s (a guest's systemd right after its
    /// start), then refused with an error and not sent. Needs org.berth.berth1.kill-machine.
    async fn kill_machine(
        &self,
        name: String,
        leader_only: bool,
        signal: i32,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), BusError> {
        authorize(conn, &header, Action::KillMachine).await?;
        self.machines.get(&name)?;
        if !(1..=libc::SIGRTMAX()).contains(&signal) {
            return Err(BusError::InvalidArgument(format!(
                "signal {signal} is not a signal number (1-{})",
                libc::SIGRTMAX()
            )));
        }
        lifecycle::kill(conn, &name, leader_only, signal).await?;
        Ok(())
    }

    /// Stops machine `name` as StopMachine does (when it runs) and starts it again. Needs
    /// org.berth.berth1.restart-machine.
    #[zbus(out_args("machine"))]
    async fn restart_machine(
        &self,
        name: String,
        timeout_sec: u32,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<MachineEntry, BusError> {
        authorize(conn, &header, Action::RestartMachine).await?;
        tracing::info!(%name, "restarting machine");
        let timeout = Duration::from_secs(u64::from(timeout_sec));
        match lifecycle::stop(conn, &self.machines, &name, timeout).await {
            Ok(()) | Err(MachineError::NotRunning(_)) => {}
            Err(e) => return Err(e.into()),
        }
        lifecycle::start(
            conn,
            &self.machines,
            self.helper.clone(),
            &name,
            Attach::Journal,
        )
        .await?;
        let definition = self.machines.get(&name)?;
        self.entry(conn, definition).await
    }

    /// Sets resource-control `properties` (NAME=VALUE, systemd's syntax) of machine `name`:
    /// applied at once to its running scope with SetUnitProperties, and recorded in its
    /// definition for the next starts, unless `runtime` (then it must be running).
    /// `Timezone=` and `Locale=` ("host" or a value) are written into the machine's /etc and
    /// its definition. Every value is checked first; an invalid one changes nothing. Returns
    /// warnings (what the guest lacks). Needs org.berth.berth1.set-properties.
    #[zbus(out_args("warnings"))]
    async fn set_properties(
        &self,
        name: String,
        properties: Vec<String>,
        runtime: bool,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<String>, BusError> {
        authorize(conn, &header, Action::SetProperties).await?;
        self.machines.get(&name)?;
        if properties.is_empty() {
            return Err(BusError::InvalidArgument(
                "no property to set: give NAME=VALUE, e.g. CPUWeight=80".into(),
            ));
        }
        let (mut timezone, mut locale) = (None, None);
        let mut resources = Vec::new();
        for assignment in properties {
            match assignment.split_once('=') {
                Some(("Timezone", value)) => timezone = Some(value.trim().to_owned()),
                Some(("Locale", value)) => locale = Some(value.trim().to_owned()),
                _ => resources.push(assignment),
            }
        }
        if let Some(zone) = &timezone {
            crate::runtime::guest_etc::validate_timezone(zone).map_err(MachineError::from)?;
        }
        if let Some(locale) = &locale {
            crate::runtime::guest_etc::validate_locale(locale).map_err(MachineError::from)?;
        }
        if runtime && (timezone.is_some() || locale.is_some()) {
            return Err(BusError::InvalidArgument(
                "Timezone and Locale are written into the machine's /etc, which --runtime \
                 doesn't change; leave --runtime out"
                    .into(),
            ));
        }
        let parsed = if resources.is_empty() {
            Vec::new()
        } else {
            check_properties(conn, &resources).await?
        };
        Machines::check_devices(&parsed)?;
        // Writing the guest's /etc (a volume machine's is mounted for it) must not meet a
        // start, a removal or another change of the same machine.
        let _claim = (timezone.is_some() || locale.is_some())
            .then(|| lifecycle::Claim::new(&name, "changing the timezone or locale of"))
            .transpose()?;
        let running = lifecycle::state(conn, &name).await?;
        let mut warnings = Vec::new();
        if timezone.is_some() || locale.is_some() {
            let machines = self.machines.clone();
            let (setting, is_running) = (name.clone(), running.is_some());
            tracing::info!(%name, ?timezone, ?locale, "setting the machine's timezone/locale");
            warnings = blocking(move || {
                machines.set_guest_settings(&setting, timezone, locale, is_running)
            })
            .await?;
        }
        if parsed.is_empty() {
            return Ok(warnings);
        }
        match &running {
            Some(r) => {
                tracing::info!(%name, ?resources, "setting properties of running machine");
                systemd::set_unit_properties(conn, &r.unit, &parsed)
                    .await
                    .map_err(MachineError::from)?;
            }
            None if runtime => {
                return Err(BusError::InvalidState(format!(
                    "machine '{name}' is not running, so --runtime has nothing to change; leave --runtime out to change its definition"
                )));
            }
            None => {}
        }
        if !runtime {
            let machines = self.machines.clone();
            blocking(move || machines.set_properties(&name, &parsed)).await?;
        }
        Ok(warnings)
    }

    /// Whether IO properties can be enforced for machine `name` (or, when empty, for berth's
    /// machine directory as a whole): its disk, that disk's scheduler, the io controller, and
    /// whether it shares a filesystem journal. Each finding is (ok, what, how to fix). Open to
    /// everyone.
    #[zbus(out_args("findings"))]
    async fn check_io(&self, name: String) -> Result<Vec<(bool, String, String)>, BusError> {
        let (data, own_fs) = if name.is_empty() {
            (self.machines.root_of(""), None)
        } else {
            let d = self.machines.get(&name)?;
            match &d.volume {
                Some((path, _)) => (path.clone(), Some(true)),
                None => (self.machines.root_of(&name), Some(false)),
            }
        };
        let findings =
            blocking(move || Ok::<_, BusError>(crate::machine::io_check::check(&data, own_fs)))
                .await?;
        Ok(findings
            .into_iter()
            .map(|f| (f.ok, f.text, f.fix))
            .collect())
    }

    /// What running machines use now (all of them when `names` is empty), read from their
    /// scopes' cgroup files. Open to everyone.
    #[zbus(out_args("usage"))]
    async fn machine_usage(
        &self,
        names: Vec<String>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<UsageEntry>, BusError> {
        let names = if names.is_empty() {
            let machines = self.machines.clone();
            blocking(move || machines.list())
                .await?
                .into_iter()
                .map(|d| d.name)
                .collect()
        } else {
            for name in &names {
                self.machines.get(name)?;
            }
            names
        };
        let mut out = Vec::new();
        for name in names {
            let Some(running) = lifecycle::state(conn, &name).await? else {
                continue;
            };
            let cgroup = lifecycle::scope_cgroup(&running.unit);
            let sample = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
            let u = blocking(move || Ok::<_, BusError>(usage::read(&cgroup))).await?;
            let or_max = |v: Option<u64>| v.unwrap_or(u64::MAX);
            out.push(UsageEntry {
                name,
                sample_usec: u64::try_from(sample.tv_sec).unwrap_or(0) * 1_000_000
                    + u64::try_from(sample.tv_nsec).unwrap_or(0) / 1000,
                cpu_usec: or_max(u.cpu_usec),
                memory_bytes: or_max(u.memory_bytes),
                memory_peak_bytes: or_max(u.memory_peak_bytes),
                io_read_bytes: or_max(u.io_read_bytes),
                io_write_bytes: or_max(u.io_write_bytes),
                tasks: or_max(u.tasks),
            });
        }
        Ok(out)
    }

    /// Machine `name` and its scope: state, accounting, limits and processes. Open to
    /// everyone.
    #[zbus(out_args("status"))]
    async fn machine_status(
        &self,
        name: String,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<MachineStatus, BusError> {
        let definition = self.machines.get(&name)?;
        let machine = self.entry(conn, definition).await?;
        let mut status = MachineStatus {
            machine,
            active_state: "inactive".into(),
            sub_state: "dead".into(),
            control_group: String::new(),
            tasks_current: 0,
            memory_current: 0,
            cpu_usage_nsec: 0,
            limits: Vec::new(),
            processes: Vec::new(),
        };
        if status.machine.unit.is_empty() {
            return Ok(status);
        }
        let unit = match systemd::unit_status(conn, &status.machine.unit).await {
            Ok(unit) => unit,
            // It stopped just now.
            Err(_) => return Ok(status),
        };
        let cgroup = PathBuf::from(format!("/sys/fs/cgroup{}", unit.control_group));
        status.processes = blocking(move || Ok::<_, BusError>(processes::list(&cgroup)))
            .await?
            .into_iter()
            .map(|p| (p.cgroup, p.pid, p.command))
            .collect();
        status.active_state = unit.active_state;
        status.sub_state = unit.sub_state;
        status.control_group = unit.control_group;
        status.tasks_current = unit.tasks_current;
        status.memory_current = unit.memory_current;
        status.cpu_usage_nsec = unit.cpu_usage_nsec;
        status.limits = unit.limits;
        Ok(status)
    }

    /// Stops machine `name` cleanly (SIGRTMIN+3 to a systemd init, SIGTERM otherwise), and
    /// kills its scope after `timeout_sec` seconds. Needs org.berth.berth1.stop-machine.
    async fn stop_machine(
        &self,
        name: String,
        timeout_sec: u32,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), BusError> {
        authorize(conn, &header, Action::StopMachine).await?;
        tracing::info!(%name, "stopping machine");
        let timeout = Duration::from_secs(u64::from(timeout_sec));
        Ok(lifecycle::stop(conn, &self.machines, &name, timeout).await?)
    }

    /// Removes machine `name`: its definition and its root. Needs
    /// org.berth.berth1.remove-machine.
    async fn remove_machine(
        &self,
        name: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), BusError> {
        authorize(conn, &header, Action::RemoveMachine).await?;
        self.machines.get(&name)?;
        let _claim = lifecycle::Claim::new(&name, "removing")?;
        if lifecycle::state(conn, &name).await?.is_some() {
            return Err(MachineError::Running(name).into());
        }
        // A machine that is gone must not be started at boot.
        if systemd::machine_service_state(conn, &name)
            .await
            .is_ok_and(|state| state == "enabled")
        {
            systemd::disable_machine_service(conn, &name)
                .await
                .map_err(MachineError::from)?;
        }
        let machines = self.machines.clone();
        tracing::info!(%name, "removing machine");
        blocking(move || machines.remove(&name)).await
    }

    /// Replaces stopped machine `name`'s root with a fresh copy of its image at `version`
    /// (empty: the newest), keeping its definition: UID range, machine-id, hostname, mode,
    /// binds, properties and settings. Returns the machine, how its root was made, and
    /// warnings. Needs org.berth.berth1.rebase-machine.
    #[zbus(out_args("machine", "storage", "warnings"))]
    async fn rebase_machine(
        &self,
        name: String,
        version: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(MachineEntry, String, Vec<String>), BusError> {
        authorize(conn, &header, Action::RebaseMachine).await?;
        self.machines.get(&name)?;
        let _claim = require_stopped(conn, &name, "rebasing", ", then rebase it").await?;
        let machines = self.machines.clone();
        tracing::info!(%name, %version, "rebasing machine");
        let (definition, storage, warnings) = blocking(move || {
            machines.rebase(&name, Some(version.as_str()).filter(|v| !v.is_empty()))
        })
        .await?;
        Ok((
            self.entry(conn, definition).await?,
            storage.to_owned(),
            warnings,
        ))
    }

    /// Copies stopped machine `source` as the new machine `target` with its own UID range,
    /// machine-id and hostname (`hostname`, or `target` when empty). Returns the new machine
    /// and how its root was made. Needs org.berth.berth1.create-machine.
    #[zbus(out_args("machine", "storage"))]
    async fn clone_machine(
        &self,
        source: String,
        target: String,
        hostname: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(MachineEntry, String), BusError> {
        authorize(conn, &header, Action::CreateMachine).await?;
        self.machines.get(&source)?;
        let _claim = require_stopped(conn, &source, "cloning", UNDER_THE_COPY).await?;
        let machines = self.machines.clone();
        tracing::info!(%source, %target, "cloning machine");
        let (definition, storage) =
            blocking(move || machines.clone_machine(&source, &target, &hostname)).await?;
        Ok((self.entry(conn, definition).await?, storage.to_owned()))
    }

    /// Renames stopped machine `name` to `new_name`: its definition, root and volume move;
    /// its hostname, machine-id, UID range and settings stay. A machine enabled at boot is
    /// enabled under its new name. Returns the machine. Needs
    /// org.berth.berth1.rename-machine.
    #[zbus(out_args("machine"))]
    async fn rename_machine(
        &self,
        name: String,
        new_name: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<MachineEntry, BusError> {
        authorize(conn, &header, Action::RenameMachine).await?;
        self.machines.get(&name)?;
        let _claim = require_stopped(conn, &name, "renaming", ", then rename it").await?;
        let enabled = systemd::machine_service_state(conn, &name)
            .await
            .is_ok_and(|state| state == "enabled");
        let machines = self.machines.clone();
        tracing::info!(%name, %new_name, "renaming machine");
        let (old, new) = (name.clone(), new_name.clone());
        let definition = blocking(move || machines.rename(&old, &new)).await?;
        lifecycle::rename_status(&name, &new_name);
        if enabled && let Err(e) = systemd::move_machine_service(conn, &name, &new_name).await {
            return Err(BusError::Failed(format!(
                "renamed machine '{name}' to '{new_name}', but could not move its start at \
                 boot ({e}); run 'berth disable {name}' and 'berth enable {new_name}'"
            )));
        }
        self.entry(conn, definition).await
    }

    /// Stores stopped machine `name`'s root as image `image` at `version` (empty: an
    /// unversioned image), with the machine's image as its base; the machine's own files
    /// (hostname, machine-id, random seed, journal) get the base's back. An app machine's
    /// command and settings become the image's defaults. Returns what was stored, as an
    /// import does. Needs org.berth.berth1.commit-machine.
    #[zbus(out_args("result"))]
    async fn commit_machine(
        &self,
        name: String,
        image: String,
        version: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<ImportResult, BusError> {
        authorize(conn, &header, Action::CommitMachine).await?;
        self.machines.get(&name)?;
        let target = ImageRef::new(&image, &version)?.to_string();
        let _claim = require_stopped(conn, &name, "committing", UNDER_THE_COPY).await?;
        let machines = self.machines.clone();
        tracing::info!(%name, %target, "committing machine");
        let report = blocking(move || machines.commit(&name, &target)).await?;
        tracing::info!(image = %report.name, snapshot = report.snapshot, refused = report.refused.len(), "committed machine");
        Ok(report.into())
    }

    /// Takes a snapshot of machine `name`'s root, named `snapshot` (empty: snapN). A running
    /// machine is snapshotted only where that is atomic (its root is a btrfs subvolume); a
    /// machine on a volume of its own gets a copy of its volume file. Returns the snapshot's
    /// name and how it is stored. Needs org.berth.berth1.snapshot-machine.
    #[zbus(out_args("snapshot", "storage"))]
    async fn snapshot_machine(
        &self,
        name: String,
        snapshot: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(String, String), BusError> {
        authorize(conn, &header, Action::SnapshotMachine).await?;
        self.machines.get(&name)?;
        // A stopped machine is not started while its root is copied; a running one's
        // snapshot is atomic, and its reboot must not be refused meanwhile.
        let mut claim = Some(lifecycle::Claim::new(&name, "taking a snapshot of")?);
        let running = lifecycle::state(conn, &name).await?.is_some();
        if running {
            claim = None;
        }
        let machines = self.machines.clone();
        tracing::info!(%name, %snapshot, running, "taking a snapshot of machine");
        let taken = blocking(move || machines.take_snapshot(&name, &snapshot, running)).await?;
        drop(claim);
        Ok((taken.name, taken.storage))
    }

    /// Machine `name`'s snapshots, oldest first. Open to everyone.
    #[zbus(out_args("snapshots"))]
    async fn list_snapshots(&self, name: String) -> Result<Vec<SnapshotEntry>, BusError> {
        let machines = self.machines.clone();
        let snapshots = blocking(move || machines.snapshots(&name)).await?;
        Ok(snapshots.into_iter().map(SnapshotEntry::from).collect())
    }

    /// Replaces stopped machine `name`'s root with a copy of its snapshot `snapshot` (which
    /// stays), keeping its definition (identity, UID range, settings) but for the image
    /// version, which becomes the snapshot's. Returns the machine, how its root was made, and
    /// warnings. Needs org.berth.berth1.restore-machine.
    #[zbus(out_args("machine", "storage", "warnings"))]
    async fn restore_machine(
        &self,
        name: String,
        snapshot: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(MachineEntry, String, Vec<String>), BusError> {
        authorize(conn, &header, Action::RestoreMachine).await?;
        self.machines.get(&name)?;
        let _claim = require_stopped(conn, &name, "restoring", ", then restore it").await?;
        let machines = self.machines.clone();
        tracing::info!(%name, %snapshot, "restoring machine from a snapshot");
        let (definition, storage, warnings) =
            blocking(move || machines.restore_snapshot(&name, &snapshot)).await?;
        Ok((
            self.entry(conn, definition).await?,
            storage.to_owned(),
            warnings,
        ))
    }

    /// Removes machine `name`'s snapshot `snapshot`. Needs org.berth.berth1.snapshot-machine.
    async fn remove_snapshot(
        &self,
        name: String,
        snapshot: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), BusError> {
        authorize(conn, &header, Action::SnapshotMachine).await?;
        let machines = self.machines.clone();
        tracing::info!(%name, %snapshot, "removing a snapshot of machine");
        blocking(move || machines.remove_snapshot(&name, &snapshot)).await
    }

    /// The machines made from an image version that is not the newest any more, or from an
    /// image whose base has a newer version: (machine, image, newer image, reason). Open to
    /// everyone.
    #[zbus(out_args("machines"))]
    async fn list_outdated(&self) -> Result<Vec<(String, String, String, String)>, BusError> {
        let machines = self.machines.clone();
        let outdated = blocking(move || machines.outdated()).await?;
        Ok(outdated
            .into_iter()
            .map(|o| (o.machine, o.image, o.newer, o.reason))
            .collect())
    }

    /// Makes machine `name` start at boot: enables `berth@NAME.service` (wanted by
    /// machines.target) and machines.target. Returns systemd's changes (kind, link, target).
    /// Needs org.berth.berth1.enable-machine.
    #[zbus(out_args("changes"))]
    async fn enable_machine(
        &self,
        name: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<(String, String, String)>, BusError> {
        authorize(conn, &header, Action::EnableMachine).await?;
        self.machines.get(&name)?;
        tracing::info!(%name, "enabling the machine at boot");
        Ok(systemd::enable_machine_service(conn, &name)
            .await
            .map_err(MachineError::from)?)
    }

    /// Stops machine `name` from starting at boot (disables `berth@NAME.service`). Needs
    /// org.berth.berth1.enable-machine.
    #[zbus(out_args("changes"))]
    async fn disable_machine(
        &self,
        name: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<(String, String, String)>, BusError> {
        authorize(conn, &header, Action::EnableMachine).await?;
        self.machines.get(&name)?;
        tracing::info!(%name, "disabling the machine at boot");
        Ok(systemd::disable_machine_service(conn, &name)
            .await
            .map_err(MachineError::from)?)
    }

    /// Waits until running machine `name` is ready: its systemd reported READY=1 (boot), or
    /// its command runs (app); at most `timeout_sec` seconds. Open to everyone.
    async fn wait_ready(
        &self,
        name: String,
        timeout_sec: u32,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), BusError> {
        self.machines.get(&name)?;
        Ok(lifecycle::wait_ready(conn, &name, Duration::from_secs(timeout_sec.into())).await?)
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

    /// Lists the forwarded ports of machine `name` (every machine's when empty). Open to
    /// everyone.
    #[zbus(out_args("ports"))]
    async fn list_ports(
        &self,
        name: String,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<PortEntry>, BusError> {
        let machines = self.machines.clone();
        let wanted = name.clone();
        let definitions = blocking(move || {
            if wanted.is_empty() {
                machines.list()
            } else {
                machines.get(&wanted).map(|d| vec![d])
            }
        })
        .await?;
        let mut entries = Vec::new();
        for d in definitions {
            let Some(addresses) = crate::machine::network::addresses(&d) else {
                continue;
            };
            let active = lifecycle::state(conn, &d.name).await?.is_some();
            for port in &d.ports {
                entries.push(PortEntry {
                    machine: d.name.clone(),
                    protocol: port.protocol.as_str().to_owned(),
                    host_port: port.host_port,
                    ipv4: addresses.ipv4.to_string(),
                    ipv6: addresses.ipv6.to_string(),
                    machine_port: port.machine_port,
                    active,
                });
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_term_and_colorterm_pass_into_a_machine() {
        let passed = caller_environment(&["TERM=xterm".into(), "COLORTERM=truecolor".into()])
            .expect("TERM and COLORTERM");
        assert_eq!(passed.len(), 2);
        for bad in ["LD_PRELOAD=/x.so", "TERM", "TERM=a\nb"] {
            let e = caller_environment(&[bad.into()]).expect_err(bad);
            assert!(
                e.to_string()
                    .contains("only TERM=VALUE and COLORTERM=VALUE"),
                "{e}"
            );
        }
    }
}
