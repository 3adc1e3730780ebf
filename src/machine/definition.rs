//! The machine definition: `/etc/berth/machines/NAME.machine`, an INI file in systemd's style
//! that admins may read and edit (documented in the README).
//!
//! ```ini
//! [Machine]
//! Image=debian
//! ImageVersion=1.10         # the version it was made from (none: an unversioned image)
//! ImageDigest=sha256:…
//! Mode=boot                 # or: app
//! Command=/usr/bin/env      # app mode: one line per argument, in order
//! User=www-data             # app mode: USER[:GROUP] the command runs as (default root)
//! WorkingDirectory=/srv     # app mode: where it starts (default the user's home)
//! Environment=LOG=debug     # app mode: one NAME=VALUE per line, over the login environment
//! Hostname=web
//! MachineID=0123456789abcdef0123456789abcdef
//! UIDBase=524288
//! Storage=copy              # btrfs snapshot | reflink copy | copy | volume
//! Volume=/var/lib/berth/volumes/web.ext4   # Storage=volume: the machine's own filesystem
//! DiskSize=1073741824       # its size in bytes
//! Created=1795460082000000
//! Ephemeral=yes             # only for `berth run --rm`: removed once it stops
//! Network=private           # host (default) | none | private | bridge=BR
//! Masquerade=no             # private: no masquerading to the outside (default yes)
//! Port=tcp:8080:80          # private: a forwarded host port; one per line
//!
//! [Files]
//! Bind=/srv/data:/data:ro
//!
//! [Resources]               # -p properties, in systemd's syntax, applied to the scope
//! MemoryMax=1G
//! IODeviceWeight=/dev/vda 200
//! ```

use crate::net::{Network, PortForward};
use crate::runtime::AppSettings;
use crate::runtime::guest_etc::{self, GuestEtc, HOST};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::uid_range::UidRange;
use crate::name;

/// How a machine runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 is the image's init (systemd).
    Boot,
    /// A small init of berth's runs this command.
    App(Vec<String>),
}

/// A host directory bind-mounted into the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub read_only: bool,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DefinitionError {
    #[error(
        "bind '{0}' is not SRC:DST[:ro|rw] with absolute paths (e.g. --bind /srv/data:/data:ro)"
    )]
    BadBind(String),
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("missing key {0}")]
    Missing(&'static str),
    #[error("{key}={value}: {message}")]
    BadValue {
        key: &'static str,
        value: String,
        message: String,
    },
}

impl Bind {
    /// Parses `SRC:DST[:ro|rw]`; both paths absolute, no `..`, no control characters.
    pub fn parse(text: &str) -> Result<Self, DefinitionError> {
        let bad = || DefinitionError::BadBind(text.to_owned());
        let parts: Vec<&str> = text.split(':').collect();
        let (source, destination, read_only) = match parts.as_slice() {
            [s, d] => (*s, *d, false),
            [s, d, "ro"] => (*s, *d, true),
            [s, d, "rw"] => (*s, *d, false),
            _ => return Err(bad()),
        };
        let ok = |p: &str| {
            p.starts_with('/') && !p.split('/').any(|c| c == "..") && !p.contains(char::is_control)
        };
        if !ok(source) || !ok(destination) {
            return Err(bad());
        }
        Ok(Self {
            source: source.into(),
            destination: destination.into(),
            read_only,
        })
    }

    /// Why a new machine may not take this bind: its destination is the machine's root, or
    /// /proc, /sys or /dev (or below /proc or /sys), which berth mounts for the machine and a
    /// bind would hide or fight. `None`: fine. (/run and paths below /dev are allowed.)
    pub fn refused_destination(&self) -> Option<&'static str> {
        let destination = self.destination.as_path();
        if destination == Path::new("/") {
            return Some("the machine's root");
        }
        if destination == Path::new("/dev") {
            return Some("the machine's private /dev");
        }
        ["/proc", "/sys"]
            .iter()
            .any(|api| destination.starts_with(api))
            .then_some("in /proc or /sys, which berth mounts for the machine")
    }

    pub fn to_spec(&self) -> String {
        format!(
            "{}:{}{}",
            self.source.display(),
            self.destination.display(),
            if self.read_only { ":ro" } else { "" }
        )
    }
}

/// Everything berth keeps about a machine between starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    pub name: String,
    pub image: String,
    /// The version of the image it was made from (empty: an unversioned image).
    pub image_version: String,
    /// The digest of the image it was made from (empty if the image had none).
    pub image_digest: String,
    pub mode: Mode,
    /// An app machine's user, working directory and environment.
    pub app: AppSettings,
    pub hostname: String,
    /// 32 lowercase hex digits, generated once at create and kept for life.
    pub machine_id: String,
    pub uid_range: UidRange,
    /// How the root was made: "copy" (or, later, "btrfs snapshot").
    pub storage: String,
    pub created_usec: u64,
    /// Removed (definition and root) once it stops: `berth run --rm`.
    pub ephemeral: bool,
    /// `Storage=volume`: the machine's own filesystem image and its size in bytes.
    pub volume: Option<(PathBuf, u64)>,
    pub binds: Vec<Bind>,
    /// Resource-control properties (`NAME=VALUE`, systemd's syntax), in order.
    pub properties: Vec<String>,
    /// `host` (follow the host's zone, refreshed at each start) or a zone written once.
    pub timezone: String,
    /// `host` (the host's LANG, refreshed at each start) or a locale written once.
    pub locale: String,
    pub network: Network,
    /// A private machine's traffic to the outside is masqueraded (`--no-masquerade`: not).
    pub masquerade: bool,
    /// A private machine's forwarded ports.
    pub ports: Vec<PortForward>,
}

impl Definition {
    /// What to write into the guest's /etc at create or `berth set`: fixed settings as they
    /// are, `host` ones resolved from the host's /etc now.
    pub fn guest_etc(&self) -> GuestEtc {
        let resolve = |value: &str, host: fn(&Path) -> Option<String>| {
            if value == HOST {
                host(Path::new("/etc"))
            } else if value == guest_etc::IMAGE {
                None
            } else {
                Some(value.to_owned())
            }
        };
        GuestEtc {
            timezone: resolve(&self.timezone, guest_etc::host_timezone),
            locale: resolve(&self.locale, guest_etc::host_locale),
            resolv_conf: None,
        }
    }

    /// What a start refreshes: only the settings that follow the host. What the guest's own
    /// /etc says about the others wins.
    pub fn host_following_etc(&self) -> GuestEtc {
        let mut etc = self.guest_etc();
        if self.timezone != HOST {
            etc.timezone = None;
        }
        if self.locale != HOST {
            etc.locale = None;
        }
        if self.network == Network::Private {
            etc.resolv_conf = Some(crate::net::dns::guest_resolv_conf());
        }
        etc
    }

    pub fn to_ini(&self) -> String {
        let mut out = String::from("# berth machine definition; see 'man berth' / README.\n");
        out.push_str("[Machine]\n");
        let mut kv = |k: &str, v: &str| {
            let _ = writeln!(out, "{k}={v}");
        };
        kv("Image", &self.image);
        if !self.image_version.is_empty() {
            kv("ImageVersion", &self.image_version);
        }
        if !self.image_digest.is_empty() {
            kv("ImageDigest", &self.image_digest);
        }
        match &self.mode {
            Mode::Boot => kv("Mode", "boot"),
            Mode::App(command) => {
                kv("Mode", "app");
                for arg in command {
                    kv("Command", arg);
                }
                if !self.app.user.is_empty() {
                    kv("User", &self.app.user);
                }
                if !self.app.working_directory.is_empty() {
                    kv("WorkingDirectory", &self.app.working_directory);
                }
                for (name, value) in &self.app.environment {
                    kv("Environment", &format!("{name}={value}"));
                }
            }
        }
        kv("Hostname", &self.hostname);
        kv("MachineID", &self.machine_id);
        kv("UIDBase", &self.uid_range.base.to_string());
        kv("Storage", &self.storage);
        if let Some((path, size)) = &self.volume {
            kv("Volume", &path.display().to_string());
            kv("DiskSize", &size.to_string());
        }
        kv("Timezone", &self.timezone);
        kv("Locale", &self.locale);
        kv("Created", &self.created_usec.to_string());
        if self.ephemeral {
            kv("Ephemeral", "yes");
        }
        if self.network != Network::Host {
            kv("Network", &self.network.to_string());
        }
        if !self.masquerade {
            kv("Masquerade", "no");
        }
        for port in &self.ports {
            kv("Port", &port.to_string());
        }
        if !self.binds.is_empty() {
            out.push_str("\n[Files]\n");
            for bind in &self.binds {
                let _ = writeln!(out, "Bind={}", bind.to_spec());
            }
        }
        if !self.properties.is_empty() {
            out.push_str("\n[Resources]\n");
            for property in &self.properties {
                let _ = writeln!(out, "{property}");
            }
        }
        out
    }

    pub fn from_ini(name: &str, text: &str) -> Result<Self, DefinitionError> {
        let mut section = String::new();
        let mut image = None;
        let mut image_digest = String::new();
        let mut image_version = String::new();
        let mut mode = None;
        let mut command = Vec::new();
        let mut app = AppSettings::default();
        let mut hostname = None;
        let mut machine_id = None;
        let mut uid_base = None;
        let mut storage = String::from("copy");
        let mut created_usec = 0;
        let mut ephemeral = false;
        let mut volume = None;
        let mut disk_size = None;
        let mut binds = Vec::new();
        let mut properties = Vec::new();
        let mut timezone = String::from(HOST);
        let mut locale = String::from(HOST);
        let mut network = Network::Host;
        let mut masquerade = true;
        let mut ports = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim_start();
            let syntax = |message: &str| DefinitionError::Syntax {
                line: i + 1,
                message: message.to_owned(),
            };
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(s) = line.trim_end().strip_prefix('[') {
                section = s
                    .strip_suffix(']')
                    .ok_or_else(|| syntax("unterminated section header"))?
                    .to_owned();
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| syntax("expected KEY=VALUE"))?;
            let key = key.trim();
            // Command arguments and variables are kept exactly; other values are trimmed as
            // systemd does.
            let value = if key == "Command" || key == "Environment" {
                value
            } else {
                value.trim()
            };
            match (section.as_str(), key) {
                ("Machine", "Image") => image = Some(value.to_owned()),
                ("Machine", "ImageDigest") => image_digest = value.to_owned(),
                ("Machine", "ImageVersion") => image_version = value.to_owned(),
                ("Machine", "Mode") => mode = Some(value.to_owned()),
                ("Machine", "Command") => command.push(value.to_owned()),
                ("Machine", "User") => {
                    AppSettings::validate_user(value).map_err(|e| syntax(&e))?;
                    value.clone_into(&mut app.user);
                }
                ("Machine", "WorkingDirectory") => {
                    AppSettings::validate_working_directory(value).map_err(|e| syntax(&e))?;
                    value.clone_into(&mut app.working_directory);
                }
                ("Machine", "Environment") => {
                    let (name, value) =
                        AppSettings::parse_variable(value).map_err(|e| syntax(&e))?;
                    app.set_variable(name, value);
                }
                ("Machine", "Hostname") => hostname = Some(value.to_owned()),
                ("Machine", "MachineID") => machine_id = Some(value.to_owned()),
                ("Machine", "UIDBase") => uid_base = Some(value.to_owned()),
                ("Machine", "Storage") => storage = value.to_owned(),
                ("Machine", "Created") => created_usec = value.parse().unwrap_or(0),
                ("Machine", "Volume") => volume = Some(PathBuf::from(value)),
                ("Machine", "Timezone") => {
                    guest_etc::validate_timezone(value).map_err(|e| DefinitionError::BadValue {
                        key: "Timezone",
                        value: value.to_owned(),
                        message: e.to_string(),
                    })?;
                    value.clone_into(&mut timezone);
                }
                ("Machine", "Locale") => {
                    guest_etc::validate_locale(value).map_err(|e| DefinitionError::BadValue {
                        key: "Locale",
                        value: value.to_owned(),
                        message: e.to_string(),
                    })?;
                    value.clone_into(&mut locale);
                }
                ("Machine", "DiskSize") => {
                    disk_size =
                        Some(
                            value
                                .parse::<u64>()
                                .map_err(|_| DefinitionError::BadValue {
                                    key: "DiskSize",
                                    value: value.to_owned(),
                                    message: "expected a size in bytes".into(),
                                })?,
                        );
                }
                ("Machine", "Network") => {
                    network = Network::parse(value).map_err(|e| syntax(&e.to_string()))?;
                }
                ("Machine", "Port") => {
                    ports.push(PortForward::parse(value).map_err(|e| syntax(&e))?);
                }
                ("Machine", "Masquerade") => masquerade = boolean("Masquerade", value)?,
                ("Machine", "Ephemeral") => ephemeral = boolean("Ephemeral", value)?,
                ("Files", "Bind") => binds.push(Bind::parse(value)?),
                ("Resources", _) => {
                    let assignment = format!("{key}={value}");
                    crate::systemd::properties::Property::parse(&assignment)
                        .map_err(|e| syntax(&e.to_string()))?;
                    properties.push(assignment);
                }
                _ => return Err(syntax(&format!("unknown key {key} in [{section}]"))),
            }
        }
        let mode = match mode.as_deref() {
            Some("boot") => Mode::Boot,
            Some("app") if !command.is_empty() => Mode::App(command),
            Some("app") => return Err(DefinitionError::Missing("Command")),
            Some(other) => {
                return Err(DefinitionError::BadValue {
                    key: "Mode",
                    value: other.to_owned(),
                    message: "expected boot or app".into(),
                });
            }
            None => return Err(DefinitionError::Missing("Mode")),
        };
        let uid_base = uid_base.ok_or(DefinitionError::Missing("UIDBase"))?;
        let base = uid_base
            .parse()
            .ok()
            .filter(|b| UidRange::is_valid_base(*b))
            .ok_or_else(|| DefinitionError::BadValue {
                key: "UIDBase",
                value: uid_base.clone(),
                message: "expected a multiple of 65536 from 524288 to 1878917120".into(),
            })?;
        let machine_id = machine_id.ok_or(DefinitionError::Missing("MachineID"))?;
        if !is_machine_id(&machine_id) {
            return Err(DefinitionError::BadValue {
                key: "MachineID",
                value: machine_id,
                message: "expected 32 lowercase hex digits".into(),
            });
        }
        let hostname = hostname.unwrap_or_else(|| name.to_owned());
        if let Err(e) = name::validate_hostname("host", &hostname) {
            return Err(DefinitionError::BadValue {
                key: "Hostname",
                value: hostname,
                message: e.to_string(),
            });
        }
        Ok(Self {
            name: name.to_owned(),
            image: image.ok_or(DefinitionError::Missing("Image"))?,
            image_digest,
            image_version,
            mode,
            app,
            hostname,
            machine_id,
            uid_range: UidRange { base },
            storage,
            created_usec,
            ephemeral,
            volume: match (volume, disk_size) {
                (Some(path), Some(size)) => Some((path, size)),
                (None, None) => None,
                (Some(_), None) => return Err(DefinitionError::Missing("DiskSize")),
                (None, Some(_)) => return Err(DefinitionError::Missing("Volume")),
            },
            binds,
            properties,
            timezone,
            locale,
            network,
            masquerade,
            ports,
        })
    }
}

/// A yes/no value as systemd writes them (yes, true, 1 / no, false, 0).
fn boolean(key: &'static str, value: &str) -> Result<bool, DefinitionError> {
    match value {
        "yes" | "true" | "1" => Ok(true),
        "no" | "false" | "0" => Ok(false),
        other => Err(DefinitionError::BadValue {
            key,
            value: other.to_owned(),
            message: "expected yes or no".into(),
        }),
    }
}

/// 32 lowercase hex digits, as /etc/machine-id holds (and not all zeros).
pub fn is_machine_id(text: &str) -> bool {
    text.len() == 32
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && text.bytes().any(|b| b != b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(mode: Mode) -> Definition {
        Definition {
            name: "web".into(),
            image: "debian".into(),
            image_digest: "sha256:abc".into(),
            image_version: String::new(),
            mode,
            app: AppSettings {
                user: "www-data:www-data".into(),
                working_directory: "/srv/app".into(),
                environment: vec![("LOG".into(), " a=b c ".into())],
            },
            hostname: "web".into(),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            uid_range: UidRange { base: 589_824 },
            storage: "copy".into(),
            created_usec: 42,
            ephemeral: true,
            volume: Some(("/var/lib/berth/volumes/web.ext4".into(), 1 << 30)),
            binds: vec![Bind::parse("/srv/data:/data:ro").expect("bind")],
            properties: vec!["MemoryMax=1G".into(), "IODeviceWeight=/dev/vda 200".into()],
            timezone: "Europe/Berlin".into(),
            locale: HOST.into(),
            network: Network::Private,
            masquerade: false,
            ports: vec![PortForward::parse("8080:80").expect("port")],
        }
    }

    #[test]
    fn round_trips_both_modes() {
        for mode in [
            Mode::Boot,
            Mode::App(vec!["sh".into(), "-c".into(), "echo a=b; exit 7 ".into()]),
        ] {
            let mut def = sample(mode);
            if def.mode == Mode::Boot {
                // A boot machine has no app settings to keep.
                def.app = AppSettings::default();
            }
            let text = def.to_ini();
            assert_eq!(Definition::from_ini("web", &text), Ok(def), "{text}");
        }
    }

    #[test]
    fn binds_parse_strictly() {
        let b = Bind::parse("/a:/b").expect("bind");
        assert!(!b.read_only);
        assert!(Bind::parse("/a:/b:ro").expect("bind").read_only);
        for bad in [
            "a:/b",
            "/a:b",
            "/a",
            "/a:/b:xx",
            "/a/../etc:/b",
            "/a:/b:ro:x",
            "/a:/b\n[Machine]\nVolume=/etc/shadow",
            "/a\r:/b",
        ] {
            assert!(Bind::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reports_what_is_wrong_in_a_file() {
        let err = Definition::from_ini("x", "[Machine]\nImage=a\nBogus=1\n").expect_err("bogus");
        assert_eq!(err.to_string(), "line 3: unknown key Bogus in [Machine]");
        let text = sample(Mode::Boot)
            .to_ini()
            .replace("UIDBase=589824", "UIDBase=1000");
        let err = Definition::from_ini("web", &text).expect_err("uid");
        assert!(err.to_string().starts_with("UIDBase=1000"), "{err}");
    }

    #[test]
    fn machine_ids() {
        assert!(is_machine_id("0123456789abcdef0123456789abcdef"));
        assert!(!is_machine_id("00000000000000000000000000000000"));
        assert!(!is_machine_id("0123456789ABCDEF0123456789abcdef"));
        assert!(!is_machine_id("0123"));
    }
}
