//! Machines: persistent definitions (`/etc/berth/machines/NAME.machine`) and their roots
//! (`/var/lib/berth/machines/NAME`), each with its own UID range and machine-id.
//!
//! Creating a machine copies its image, writes the guest's `/etc/hostname` and
//! `/etc/machine-id` (through the same symlink-safe writer as imports), and only then writes
//! the definition; a failure at any step leaves nothing behind.

mod commit;
pub mod crash_points;
mod definition;
pub mod io_check;
pub mod lifecycle;
pub mod network;
pub mod processes;
pub mod readiness;
mod reapers;
mod rebase;
mod rename;
mod snapshot;
mod uid_range;
pub mod usage;
pub mod volume;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use thiserror::Error;

pub use definition::{Bind, Definition, DefinitionError, Mode, is_machine_id};
pub use rebase::Outdated;
pub use snapshot::Snapshot;
pub use uid_range::{FIRST_BASE, RANGE_SIZE, UidRange};

use crate::image::tree::{Content, Metadata, TreePath};
use crate::image::{self, ImageError, Pool};
use crate::name::{self, NameError};
use crate::net::Network;
use crate::runtime::{AppSettings, guest_etc};

/// Where machine definitions live (admin-readable, and editable while a machine is stopped).
pub const DEFAULT_DEFINITION_DIR: &str = "/etc/berth/machines";
/// Where machine roots live (beside images' filesystem, so copies can be reflinks/snapshots).
pub const DEFAULT_ROOT_DIR: &str = "/var/lib/berth/machines";

#[derive(Debug, Error)]
pub enum MachineError {
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("machine '{0}' already exists; remove it with 'berth rm {0}' or choose another name")]
    Exists(String),
    #[error("no machine named '{0}'; 'berth list' shows the machines there are")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("machine '{0}' is already running; 'berth stop {0}' stops it")]
    AlreadyRunning(String),
    #[error(
        "machine '{0}' is being started by another request; 'berth status {0}' shows it once it runs"
    )]
    AlreadyStarting(String),
    #[error("machine '{name}' is busy: another request is {what} it; try again once that is done")]
    Busy { name: String, what: &'static str },
    #[error("machine '{0}' is not running; 'berth start {0}' starts it")]
    NotRunning(String),
    #[error("machine '{0}' is running; stop it first with 'berth stop {0}'")]
    Running(String),
    /// A started machine that did not become ready.
    #[error("{0}")]
    NotReady(String),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error(transparent)]
    Systemd(#[from] crate::systemd::SystemdError),
    #[error("the machine's network: {0}")]
    Network(#[from] crate::net::NetError),
    #[error("the image for the machine: {0}")]
    Image(#[from] ImageError),
    #[error("all {} UID ranges of systemd's container range are in use", (uid_range::LAST_ID + 1 - uid_range::FIRST_BASE) / RANGE_SIZE)]
    NoFreeUidRange,
    #[error("definition {path}: {source}")]
    BadDefinition {
        path: PathBuf,
        #[source]
        source: DefinitionError,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

/// What `berth create` asks for.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub name: String,
    pub image: String,
    pub mode: Mode,
    /// Empty: the machine's name.
    pub hostname: String,
    pub binds: Vec<String>,
    /// `berth run --rm`: remove the machine once it stops.
    pub ephemeral: bool,
    /// `-p NAME=VALUE` resource properties (checked against systemd by the caller).
    pub properties: Vec<String>,
    /// `--storage volume --disk-size SIZE`: the machine gets its own filesystem of SIZE bytes.
    pub disk_size: Option<u64>,
    /// `--timezone`: a zone, or `host`/empty to follow the host.
    pub timezone: String,
    /// `--locale`: a locale, or `host`/empty to follow the host's LANG.
    pub locale: String,
    /// `--user USER[:GROUP]` of an app machine; empty: the image's default (else root).
    pub user: String,
    /// `--workdir`; empty: the image's default (else the user's home).
    pub working_directory: String,
    /// `--env NAME=VALUE`, set over the image's variables.
    pub environment: Vec<String>,
    /// `--network host|none|private|bridge=BR` (empty: host).
    pub network: String,
    /// `--no-masquerade` makes this false.
    pub masquerade: bool,
    /// `--port [tcp:|udp:]HOSTPORT[:MACHINEPORT]`, for private machines.
    pub ports: Vec<String>,
}

/// The machine store.
#[derive(Debug, Clone)]
pub struct Machines {
    definitions: PathBuf,
    roots: PathBuf,
    /// Where per-machine volume files live (beside the roots).
    volumes: PathBuf,
    pool: Pool,
    /// Serializes creation, so two creates never pick the same UID range or name.
    create_lock: Arc<Mutex<()>>,
}

impl Machines {
    pub fn new(definitions: impl Into<PathBuf>, roots: impl Into<PathBuf>, pool: Pool) -> Self {
        let roots: PathBuf = roots.into();
        Self {
            definitions: definitions.into(),
            volumes: roots.with_file_name("volumes"),
            roots,
            pool,
            create_lock: Arc::new(Mutex::new(())),
        }
    }

    /// Serializes changes to the machine store (see `create_lock`).
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, ()>, MachineError> {
        self.create_lock
            .lock()
            .map_err(|_| MachineError::InvalidArgument("internal lock poisoned".into()))
    }

    pub fn root_of(&self, name: &str) -> PathBuf {
        self.roots.join(name)
    }

    fn definition_path(&self, name: &str) -> PathBuf {
        self.definitions.join(format!("{name}.machine"))
    }

    /// Creates a machine: validates everything first, then copies the image. Returns its
    /// definition and warnings (what the guest lacks: a compiled locale, say).
    pub fn create(
        &self,
        request: &CreateRequest,
    ) -> Result<(Definition, Vec<String>), MachineError> {
        let mut watch = crate::stopwatch::Stopwatch::start();
        name::validate_machine(&request.name)?;
        let hostname = if request.hostname.is_empty() {
            request.name.clone()
        } else {
            request.hostname.clone()
        };
        name::validate_hostname("host", &hostname)?;
        // An empty command means the image's default (checked below, with the image).
        if let Mode::App(command) = &request.mode
            && command.first().is_some_and(String::is_empty)
        {
            return Err(MachineError::InvalidArgument(
                "the command is empty: give the program to run after '--', or --boot".into(),
            ));
        }
        if let Mode::App(command) = &request.mode
            && let Some(arg) = command.iter().find(|a| a.contains(['\n', '\r']))
        {
            return Err(MachineError::InvalidArgument(format!(
                "command argument {arg:?} contains a line break, which a definition can't hold"
            )));
        }
        Self::check_app_request(request)?;
        let network = Network::parse(&request.network)
            .map_err(|e| MachineError::InvalidArgument(e.to_string()))?;
        if let Network::Bridge(bridge) = &network
            && !Path::new("/sys/class/net")
                .join(bridge)
                .join("bridge")
                .is_dir()
        {
            return Err(MachineError::InvalidArgument(
                crate::net::NetError::NoBridge(bridge.clone()).to_string(),
            ));
        }
        if !request.masquerade && network != Network::Private {
            return Err(MachineError::InvalidArgument(
                "--no-masquerade is for --network private machines".into(),
            ));
        }
        let ports = self.check_ports(request, &network)?;
        let binds = request
            .binds
            .iter()
            .map(|spec| {
                let bind =
                    Bind::parse(spec).map_err(|e| MachineError::InvalidArgument(e.to_string()))?;
                if let Some(reason) = bind.refused_destination() {
                    return Err(MachineError::InvalidArgument(format!(
                        "bind destination {} is {reason}; bind to another path (e.g. under /srv \
                         or /mnt)",
                        bind.destination.display()
                    )));
                }
                if !bind.source.exists() {
                    return Err(MachineError::InvalidArgument(format!(
                        "bind source {} does not exist on the host",
                        bind.source.display()
                    )));
                }
                Ok(bind)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let properties = crate::systemd::properties::parse_all(&request.properties)
            .map_err(|e| MachineError::InvalidArgument(e.to_string()))?;
        Self::check_devices(&properties)?;
        let image = self.pool.get(&request.image)?;
        let mode = match &request.mode {
            Mode::App(command) if command.is_empty() => {
                let command = image
                    .record
                    .app
                    .as_ref()
                    .map(|a| a.command())
                    .unwrap_or_default();
                if command.is_empty() {
                    return Err(MachineError::InvalidArgument(format!(
                        "no command for machine '{}': image '{}' has no default command \
                         (Entrypoint/Cmd); give --boot, or the command after '--'",
                        request.name,
                        image.reference()
                    )));
                }
                Mode::App(command)
            }
            other => other.clone(),
        };
        let app = match mode {
            Mode::Boot => AppSettings::default(),
            Mode::App(_) => Self::app_settings(request, image.record.app.as_ref(), &image)?,
        };
        let setting = |value: &str| {
            if value.is_empty() {
                guest_etc::HOST.to_owned()
            } else {
                value.to_owned()
            }
        };
        let (timezone, locale) = (setting(&request.timezone), setting(&request.locale));
        guest_etc::validate_timezone(&timezone)?;
        guest_etc::validate_locale(&locale)?;
        if timezone != guest_etc::HOST && timezone != guest_etc::IMAGE {
            Self::check_zone_in(&image.path, &format!("image '{}'", image.name), &timezone)?;
        }

        watch.lap("checks");
        let _guard = self.lock()?;
        let definition_path = self.definition_path(&request.name);
        let root = self.root_of(&request.name);
        if definition_path.exists() || root.symlink_metadata().is_ok() {
            return Err(MachineError::Exists(request.name.clone()));
        }
        let used: Vec<UidRange> = self.list()?.iter().map(|d| d.uid_range).collect();
        let uid_range = UidRange::allocate(&used).ok_or(MachineError::NoFreeUidRange)?;
        let mut definition = Definition {
            name: request.name.clone(),
            image: image.name.clone(),
            image_version: image.version.clone(),
            image_digest: image.record.digest.clone(),
            mode,
            app,
            hostname,
            machine_id: new_machine_id()?,
            uid_range,
            storage: String::new(),
            created_usec: now_usec(),
            ephemeral: request.ephemeral,
            volume: None,
            binds,
            properties: properties.iter().map(|p| p.assignment()).collect(),
            timezone,
            locale,
            network,
            masquerade: request.masquerade,
            ports,
        };

        watch.lap("uid range");
        let created = definition.created_usec;
        let identity = rebase::identity_files(&definition);
        let etc = definition.guest_etc();
        let mut warnings = Vec::new();
        let prepare = |tree: &mut image::tree::TreeWriter| {
            write_identity(tree, &identity, created)?;
            warnings = guest_etc::apply(tree, &etc, mtime_of(created));
            Ok(())
        };
        let storage = match request.disk_size {
            None => self
                .pool
                .copy_image(&image.reference(), &root, !request.ephemeral, prepare)?,
            Some(size) => {
                let path = self.volume_path(&request.name);
                self.make_volume(&image.reference(), &path, size, &root, prepare)?;
                definition.volume = Some((path, size));
                "volume"
            }
        };
        definition.storage = storage.to_owned();
        watch.lap("root");
        if let Err(e) = self.write_definition(&definition) {
            let _ = image::discard(&root);
            if let Some((path, _)) = &definition.volume {
                let _ = fs::remove_file(path);
            }
            return Err(e);
        }
        watch.lap("definition");
        tracing::info!(
            name = %definition.name,
            uid_base = definition.uid_range.base,
            storage,
            "created machine in {watch}"
        );
        Ok((definition, warnings))
    }

    /// `--port`s: well-formed, for a private machine, each host port once and not forwarded
    /// to another machine already.
    fn check_ports(
        &self,
        request: &CreateRequest,
        network: &Network,
    ) -> Result<Vec<crate::net::PortForward>, MachineError> {
        let invalid = MachineError::InvalidArgument;
        if !request.ports.is_empty() && *network != Network::Private {
            return Err(invalid(
                "--port is for --network private machines (a host-network machine's ports are \
                 the host's already)"
                    .into(),
            ));
        }
        let mut ports: Vec<crate::net::PortForward> = Vec::new();
        for text in &request.ports {
            let port = crate::net::PortForward::parse(text).map_err(invalid)?;
            if ports.iter().any(|p| p.clashes(&port)) {
                return Err(invalid(format!(
                    "host port {}/{} is given twice",
                    port.host_port,
                    port.protocol.as_str()
                )));
            }
            ports.push(port);
        }
        for other in self.list()? {
            if let Some(taken) = other
                .ports
                .iter()
                .find(|o| ports.iter().any(|p| p.clashes(o)))
            {
                return Err(invalid(format!(
                    "host port {}/{} is forwarded to machine '{}' already; choose another, or \
                     remove that machine",
                    taken.host_port,
                    taken.protocol.as_str(),
                    other.name
                )));
            }
        }
        Ok(ports)
    }

    /// `--user`, `--workdir` and `--env`: well-formed, and only for app machines.
    fn check_app_request(request: &CreateRequest) -> Result<(), MachineError> {
        let given = !request.user.is_empty()
            || !request.working_directory.is_empty()
            || !request.environment.is_empty();
        if request.mode == Mode::Boot && given {
            return Err(MachineError::InvalidArgument(
                "--user, --workdir and --env are for app machines (a command); a boot \
                 machine's services set their own in their units"
                    .into(),
            ));
        }
        let invalid = MachineError::InvalidArgument;
        if !request.user.is_empty() {
            AppSettings::validate_user(&request.user).map_err(invalid)?;
        }
        if !request.working_directory.is_empty() {
            AppSettings::validate_working_directory(&request.working_directory).map_err(invalid)?;
        }
        for assignment in &request.environment {
            AppSettings::parse_variable(assignment).map_err(invalid)?;
        }
        Ok(())
    }

    /// An app machine's settings: the image's defaults (an OCI config's User, WorkingDir and
    /// Env; a build's USER, WORKDIR and ENV), then what the request gives over them.
    fn app_settings(
        request: &CreateRequest,
        defaults: Option<&image::AppDefaults>,
        image: &image::ImageInfo,
    ) -> Result<AppSettings, MachineError> {
        let mut app = AppSettings::default();
        let from_image = |what: &str, e: String| {
            MachineError::InvalidArgument(format!(
                "image '{}' has an unusable default {what} ({e}); give --{what} yourself",
                image.reference()
            ))
        };
        if let Some(defaults) = defaults {
            if !defaults.user.is_empty() {
                AppSettings::validate_user(&defaults.user).map_err(|e| from_image("user", e))?;
                app.user.clone_from(&defaults.user);
            }
            if !defaults.working_dir.is_empty() {
                AppSettings::validate_working_directory(&defaults.working_dir)
                    .map_err(|e| from_image("workdir", e))?;
                app.working_directory.clone_from(&defaults.working_dir);
            }
            for assignment in &defaults.env {
                let (name, value) =
                    AppSettings::parse_variable(assignment).map_err(|e| from_image("env", e))?;
                app.set_variable(name, value);
            }
        }
        if !request.user.is_empty() {
            app.user.clone_from(&request.user);
        }
        if !request.working_directory.is_empty() {
            app.working_directory.clone_from(&request.working_directory);
        }
        for assignment in &request.environment {
            let (name, value) =
                AppSettings::parse_variable(assignment).map_err(MachineError::InvalidArgument)?;
            app.set_variable(name, value);
        }
        Ok(app)
    }

    /// Refuses a zone the tree's tzdata doesn't have; `whose` names the tree.
    fn check_zone_in(tree: &Path, whose: &str, zone: &str) -> Result<(), MachineError> {
        let root = fs::File::open(tree).map_err(|source| MachineError::Io {
            context: format!("opening {}", tree.display()),
            source,
        })?;
        if guest_etc::has_zone(&root, zone) {
            return Ok(());
        }
        Err(MachineError::InvalidArgument(format!(
            "unknown timezone '{zone}': {whose} has no /usr/share/zoneinfo/{zone}; \
             give a zone its tzdata has (e.g. Europe/Berlin, UTC) or 'host'"
        )))
    }

    fn volume_path(&self, name: &str) -> PathBuf {
        self.volumes.join(format!("{name}.ext4"))
    }

    /// Makes the machine's own filesystem, fills it from the image, and leaves an empty
    /// directory at `root` for it to be mounted on. Nothing stays behind on failure.
    fn make_volume(
        &self,
        image_name: &str,
        path: &Path,
        size: u64,
        root: &Path,
        prepare: impl FnOnce(&mut image::tree::TreeWriter) -> Result<(), ImageError>,
    ) -> Result<(), MachineError> {
        volume::create(
            path,
            size,
            &root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        )?;
        let filled = (|| {
            let staging = self.roots.join(format!(
                ".#berth-volume-{}-{}",
                root.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                std::process::id()
            ));
            fs::create_dir_all(&self.roots).map_err(|source| MachineError::Io {
                context: format!("creating {}", self.roots.display()),
                source,
            })?;
            let mounted = volume::Mounted::new(path, staging)?;
            self.pool
                .copy_image_into(image_name, &mounted.dir, prepare)?;
            mounted.finish()?;
            fs::create_dir(root).map_err(|source| MachineError::Io {
                context: format!("creating {}", root.display()),
                source,
            })
        })();
        if filled.is_err() {
            let _ = fs::remove_file(path);
        }
        filled
    }

    fn write_definition(&self, definition: &Definition) -> Result<(), MachineError> {
        let io_error = |source| MachineError::Io {
            context: format!("writing the definition in {}", self.definitions.display()),
            source,
        };
        fs::create_dir_all(&self.definitions).map_err(io_error)?;
        let tmp = self
            .definitions
            .join(format!(".{}.machine.tmp", definition.name));
        let text = definition.to_ini();
        // What is written must read back as itself: a value that holds a line break would
        // otherwise add keys of its own (all values are checked before; this is the last wall).
        let reads_back =
            Definition::from_ini(&definition.name, &text).is_ok_and(|back| back.to_ini() == text);
        if !reads_back {
            return Err(MachineError::InvalidArgument(format!(
                "machine '{}' can't be stored: one of its settings holds a line break or \
                 another character that a definition file can't hold; give it without",
                definition.name
            )));
        }
        fs::write(&tmp, text)
            .and_then(|()| fs::rename(&tmp, self.definition_path(&definition.name)))
            .map_err(io_error)
    }

    /// Loads one definition.
    pub fn get(&self, name: &str) -> Result<Definition, MachineError> {
        name::validate_machine(name)?;
        let path = self.definition_path(name);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(MachineError::NotFound(name.to_owned()));
            }
            Err(source) => {
                return Err(MachineError::Io {
                    context: format!("reading {}", path.display()),
                    source,
                });
            }
        };
        Definition::from_ini(name, &text)
            .map_err(|source| MachineError::BadDefinition { path, source })
    }

    /// All machines, by name. A definition that doesn't parse is an error naming its file.
    pub fn list(&self) -> Result<Vec<Definition>, MachineError> {
        self.read_all()?.into_iter().collect()
    }

    /// Every definition that can be read, for berthd's own rounds over all machines (at its
    /// start, at the host's shutdown): a file it can't read (an admin's typo) is logged and
    /// skipped, and doesn't keep the other machines from being adopted or powered off.
    pub fn list_readable(&self) -> Vec<Definition> {
        let all = self.read_all().unwrap_or_else(|e| {
            tracing::warn!("cannot list the machines: {e}");
            Vec::new()
        });
        all.into_iter()
            .filter_map(|read| {
                read.inspect_err(|e| tracing::warn!("skipping a machine: {e}"))
                    .ok()
            })
            .collect()
    }

    /// Each definition file's contents, or why it can't be read, by name.
    fn read_all(&self) -> Result<Vec<Result<Definition, MachineError>>, MachineError> {
        let entries = match fs::read_dir(&self.definitions) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(MachineError::Io {
                    context: format!("reading {}", self.definitions.display()),
                    source,
                });
            }
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|entry| {
                let file = entry.file_name();
                let name = file.to_str()?.strip_suffix(".machine")?;
                name::validate_machine(name)
                    .is_ok()
                    .then(|| name.to_owned())
            })
            .collect();
        names.sort();
        // A machine removed between read_dir and here (a concurrent `berth rm`) is gone, not
        // an error: listing must not fail because another client is at work.
        Ok(names
            .iter()
            .map(|name| self.get(name))
            .filter(|read| !matches!(read, Err(MachineError::NotFound(_))))
            .collect())
    }

    /// Records `properties` in machine `name`'s definition (`berth set`).
    pub fn set_properties(
        &self,
        name: &str,
        properties: &[crate::systemd::properties::Property],
    ) -> Result<Definition, MachineError> {
        let _guard = self.lock()?;
        let mut definition = self.get(name)?;
        definition.properties =
            crate::systemd::properties::merge(&definition.properties, properties);
        self.write_definition(&definition)?;
        Ok(definition)
    }

    /// Sets the machine's `Timezone=` and/or `Locale=` (`host` or a value): checked against
    /// its own tree, written into its /etc now and kept in its definition. A running machine
    /// on a volume of its own can't be written from outside (its filesystem is mounted only
    /// in its namespace). Returns warnings (what the guest lacks).
    pub fn set_guest_settings(
        &self,
        name: &str,
        timezone: Option<String>,
        locale: Option<String>,
        running: bool,
    ) -> Result<Vec<String>, MachineError> {
        if let Some(zone) = &timezone {
            guest_etc::validate_timezone(zone)?;
        }
        if let Some(locale) = &locale {
            guest_etc::validate_locale(locale)?;
        }
        let _guard = self.lock()?;
        let mut definition = self.get(name)?;
        let mounted = match &definition.volume {
            Some(_) if running => {
                return Err(MachineError::InvalidArgument(format!(
                    "machine '{name}' runs on a volume of its own, which berth can't write \
                     while it runs: stop it first, or change it inside ('berth shell {name} \
                     -- timedatectl set-timezone ZONE' / 'localectl set-locale LANG=...')"
                )));
            }
            Some((path, _)) => Some(volume::Mounted::new(
                path,
                self.roots
                    .join(format!(".#berth-settings-{name}-{}", std::process::id())),
            )?),
            None => None,
        };
        let tree = mounted
            .as_ref()
            .map_or_else(|| self.root_of(name), |m| m.dir.clone());
        if let Some(zone) = timezone.as_ref().filter(|z| *z != guest_etc::HOST) {
            Self::check_zone_in(&tree, &format!("machine '{name}'"), zone)?;
        }
        let (zone_given, locale_given) = (timezone.is_some(), locale.is_some());
        if let Some(zone) = timezone {
            definition.timezone = zone;
        }
        if let Some(locale) = locale {
            definition.locale = locale;
        }
        let resolved = definition.guest_etc();
        let etc = guest_etc::GuestEtc {
            timezone: resolved.timezone.filter(|_| zone_given),
            locale: resolved.locale.filter(|_| locale_given),
            resolv_conf: None,
        };
        let root = File::open(&tree)
            .map(std::os::fd::OwnedFd::from)
            .map_err(|source| MachineError::Io {
                context: format!("opening {}", tree.display()),
                source,
            })?;
        let mut writer = image::tree::TreeWriter::new(root);
        let mut warnings = guest_etc::apply(&mut writer, &etc, mtime_of(now_usec()));
        let refused = writer.finish().map_err(|source| MachineError::Io {
            context: format!("writing the /etc of machine '{name}'"),
            source,
        })?;
        warnings.extend(
            refused
                .into_iter()
                .map(|r| format!("not written into the machine: {}: {}", r.path, r.reason)),
        );
        if let Some(mounted) = mounted {
            mounted.finish()?;
        }
        self.write_definition(&definition)?;
        Ok(warnings)
    }

    /// Checks that the devices `-p` properties name exist on the host.
    pub fn check_devices(
        properties: &[crate::systemd::properties::Property],
    ) -> Result<(), MachineError> {
        match properties
            .iter()
            .filter_map(|p| p.device())
            .find(|d| !Path::new(d).exists())
        {
            Some(device) => Err(MachineError::InvalidArgument(format!(
                "device {device} of a -p property does not exist on the host"
            ))),
            None => Ok(()),
        }
    }

    /// Removes a machine's definition, root and volume.
    pub fn remove(&self, name: &str) -> Result<(), MachineError> {
        let mut watch = crate::stopwatch::Stopwatch::start();
        let definition = self.get(name)?;
        if let Some((path, _)) = &definition.volume {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(MachineError::Io {
                        context: format!("removing {}", path.display()),
                        source,
                    });
                }
            }
        }
        let root = self.root_of(name);
        if root.symlink_metadata().is_ok() {
            image::discard(&root)?;
        }
        watch.lap("root");
        self.remove_snapshots(name)?;
        fs::remove_file(self.definition_path(name)).map_err(|source| MachineError::Io {
            context: format!("removing {}", self.definition_path(name).display()),
            source,
        })?;
        watch.lap("definition");
        tracing::info!(%name, "removed machine in {watch}");
        Ok(())
    }

    /// Deletes roots a crash left half-made or half-deleted.
    pub fn clean_stale(&self) -> usize {
        image::clean_staging(&self.roots) + self.clean_stale_snapshots()
    }

    /// Deletes the spare roots of images that were removed or replaced (they would hold
    /// the old image's disk space).
    pub fn discard_stale_spares(&self) {
        image::discard_stale_spares(&self.roots, self.pool.image_dir());
    }
}

/// A name for a machine `berth run` creates without `--name`: `run-` and 8 hex digits.
pub fn generated_name() -> Result<String, MachineError> {
    Ok(format!("run-{}", &new_machine_id()?[..8]))
}

/// Writes the machine's /etc/hostname and /etc/machine-id into its new root.
fn write_identity(
    tree: &mut image::tree::TreeWriter,
    identity: &[(&str, String, u32)],
    created_usec: u64,
) -> Result<(), ImageError> {
    for (path, content, mode) in identity {
        let meta = Metadata {
            mode: *mode,
            mtime: i64::try_from(created_usec / 1_000_000).unwrap_or(0),
            ..Metadata::default()
        };
        let path = TreePath::parse(path.as_bytes()).map_err(|r| {
            ImageError::io("writing the machine's identity")(io::Error::other(r.to_string()))
        })?;
        let result = tree.file(&path, &meta, Content::Reader(&mut content.as_bytes()));
        tree.settle(&path.to_string(), result)
            .map_err(ImageError::io(
                "writing the machine's /etc/hostname and /etc/machine-id",
            ))?;
    }
    Ok(())
}

fn new_machine_id() -> Result<String, MachineError> {
    let mut bytes = crate::runtime::random_bytes::<16>().map_err(|source| MachineError::Io {
        context: "reading /dev/urandom for a machine-id".into(),
        source,
    })?;
    // A v4 UUID, as systemd generates machine-ids.
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn mtime_of(usec: u64) -> i64 {
    i64::try_from(usec / 1_000_000).unwrap_or(0)
}

fn now_usec() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Roots are kept out of sight of `machinectl list-images` (which lists /var/lib/machines).
pub fn default_store(pool: Pool) -> Machines {
    Machines::new(DEFAULT_DEFINITION_DIR, Path::new(DEFAULT_ROOT_DIR), pool)
}

#[cfg(test)]
mod tests;
