//! The only client of systemd1 and machine1: transient scopes for machines, machined
//! registration, and what systemd knows about a running machine.

pub mod properties;
mod scope;
mod status;
pub mod unit_name;

pub use scope::{ScopeSpec, keep_job_signals, scope_properties, start_scope, stop_scope};
pub use status::{UnitStatus, unit_status};

use thiserror::Error;
use zbus::Connection;
use zbus_systemd::machine1::ManagerProxy as MachinedProxy;
use zbus_systemd::systemd1::ManagerProxy as SystemdProxy;

#[derive(Debug, Error)]
pub enum SystemdError {
    #[error("talking to systemd: {0}")]
    Bus(#[from] zbus::Error),
    #[error(
        "systemd refused to start {unit}: {message}; 'systemctl status {unit}' shows a unit of that name if one is in the way"
    )]
    StartRefused { unit: String, message: String },
    #[error("systemd refused to change {unit}: {message}")]
    SetRefused { unit: String, message: String },
    #[error("the start job of {unit} ended with '{result}'; see 'journalctl -u {unit}'")]
    JobFailed { unit: String, result: String },
    #[error("systemd-machined refused to register machine '{name}': {message}")]
    Register { name: String, message: String },
    #[error(transparent)]
    Property(#[from] properties::PropertyError),
    #[error("encoding the property {name}: {source}")]
    Encode {
        name: &'static str,
        #[source]
        source: zbus::Error,
    },
}

impl SystemdError {
    /// Whether the error says the machine or unit no longer exists.
    pub fn is_gone(&self) -> bool {
        matches!(self, Self::Bus(e) if is_gone(e))
    }
}

/// The properties the running systemd's Scope interface has, and its version: what `-p`
/// properties are checked against (Debian 12 ships 252; newer ones know more).
pub async fn scope_property_names(
    conn: &Connection,
) -> Result<(std::collections::BTreeSet<String>, String), SystemdError> {
    let introspect = zbus::fdo::IntrospectableProxy::builder(conn)
        .destination("org.freedesktop.systemd1")
        .path("/org/freedesktop/systemd1/unit/init_2escope")
        .build()
        .await?;
    let xml = introspect.introspect().await.map_err(zbus::Error::from)?;
    let mut names = std::collections::BTreeSet::new();
    if let Some(start) = xml.find("<interface name=\"org.freedesktop.systemd1.Scope\">") {
        let body = &xml[start..];
        let body = &body[..body.find("</interface>").unwrap_or(body.len())];
        for part in body.split("<property name=\"").skip(1) {
            if let Some(end) = part.find('"') {
                names.insert(part[..end].to_owned());
            }
        }
    }
    let version = SystemdProxy::new(conn).await?.version().await?;
    Ok((names, version))
}

/// Checks `-p` properties against what the running systemd supports.
pub async fn check_properties(
    conn: &Connection,
    props: &[properties::Property],
) -> Result<(), SystemdError> {
    if props.is_empty() {
        return Ok(());
    }
    let (names, version) = scope_property_names(conn).await?;
    properties::check_supported(props, &names, &version)?;
    Ok(())
}

/// What machined says about a registered machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningMachine {
    pub leader: u32,
    pub unit: String,
    pub state: String,
    /// When it was registered, µs since the epoch.
    pub timestamp_usec: u64,
}

impl RunningMachine {
    /// From the properties of machined's Machine object (`Leader` u, `Unit` s, `State` s,
    /// `Timestamp` t).
    pub fn from_properties(
        all: &std::collections::HashMap<String, zbus::OwnedVariant>,
    ) -> Result<Self, SystemdError> {
        fn get<T: TryFrom<zbus::OwnedVariant, Error = zbus::Error>>(
            all: &std::collections::HashMap<String, zbus::OwnedVariant>,
            name: &str,
        ) -> Result<T, SystemdError> {
            let value = all.get(name).ok_or_else(|| {
                zbus::Error::Failure(format!("machined's Machine object has no {name}"))
            })?;
            Ok(T::try_from(value.try_clone()?)?)
        }
        Ok(Self {
            leader: get(all, "Leader")?,
            unit: get(all, "Unit")?,
            state: get(all, "State")?,
            timestamp_usec: get(all, "Timestamp")?,
        })
    }
}

/// Registers a machine whose leader already runs in its own scope (`RegisterMachine`).
pub async fn register_machine(
    conn: &Connection,
    name: &str,
    machine_id: [u8; 16],
    leader: u32,
    root: &str,
) -> Result<(), SystemdError> {
    let machined = MachinedProxy::new(conn).await?;
    machined
        .register_machine(
            name.to_owned(),
            machine_id.to_vec(),
            "berth".into(),
            "container".into(),
            leader,
            root.to_owned(),
        )
        .await
        .map(drop)
        .map_err(|e| SystemdError::Register {
            name: name.to_owned(),
            message: method_error_text(&e),
        })
}

/// The machine `name` as machined knows it; `None` when it isn't registered. Two calls
/// (GetMachine, then one GetAll), and no property cache: a cached proxy would add a match
/// rule and remove it again on every look.
pub async fn running_machine(
    conn: &Connection,
    name: &str,
) -> Result<Option<RunningMachine>, SystemdError> {
    let machined = MachinedProxy::new(conn).await?;
    let path = match machined.get_machine(name.to_owned()).await {
        Ok(path) => path,
        Err(e) if is_gone(&e) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let properties = zbus::fdo::PropertiesProxy::builder(conn)
        .destination("org.freedesktop.machine1")
        .path(path)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    let interface =
        zbus::names::InterfaceName::from_static_str_unchecked("org.freedesktop.machine1.Machine");
    let all = match properties
        .get_all(interface)
        .await
        .map_err(zbus::Error::from)
    {
        Ok(all) => all,
        // It went away between GetMachine and reading it: it isn't running.
        Err(e) if is_gone(&e) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(Some(RunningMachine::from_properties(&all)?))
}

/// Whether the host is shutting down (systemd's `SystemState` is "stopping").
pub async fn host_is_stopping(conn: &Connection) -> Result<bool, SystemdError> {
    let state = SystemdProxy::new(conn).await?.system_state().await?;
    Ok(state == "stopping")
}

/// Drops machine `name` from machined (its leader has exited; berthd stops the scope).
pub async fn unregister_machine(conn: &Connection, name: &str) -> Result<(), SystemdError> {
    let machined = MachinedProxy::new(conn).await?;
    match machined.unregister_machine(name.to_owned()).await {
        Ok(()) => Ok(()),
        Err(e) if is_gone(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether an error says the machine (or its object) no longer exists.
fn is_gone(e: &zbus::Error) -> bool {
    matches!(
        error_name(e).as_deref(),
        Some(
            "org.freedesktop.machine1.NoSuchMachine"
                | "org.freedesktop.systemd1.NoSuchUnit"
                | "org.freedesktop.DBus.Error.UnknownObject"
                | "org.freedesktop.DBus.Error.UnknownMethod"
        )
    )
}

/// Sends `signal` to the leader (PID 1) of machine `name`, through machined.
pub async fn kill_machine_leader(
    conn: &Connection,
    name: &str,
    signal: i32,
) -> Result<(), SystemdError> {
    kill_machine(conn, name, false, signal).await
}

/// Sends `signal` to machine `name` through machined: to its leader, or to all its processes.
pub async fn kill_machine(
    conn: &Connection,
    name: &str,
    all: bool,
    signal: i32,
) -> Result<(), SystemdError> {
    let machined = MachinedProxy::new(conn).await?;
    let whom = if all { "all" } else { "leader" };
    machined
        .kill_machine(name.to_owned(), whom.into(), signal)
        .await?;
    Ok(())
}

/// Sends `signal` to every process of `unit`.
pub async fn kill_unit(conn: &Connection, unit: &str, signal: i32) -> Result<(), SystemdError> {
    let systemd = SystemdProxy::new(conn).await?;
    systemd
        .kill_unit(unit.to_owned(), "all".into(), signal)
        .await?;
    Ok(())
}

/// One change systemd made to unit files: (kind, symlink, target), as EnableUnitFiles
/// reports it.
pub type UnitFileChange = (String, String, String);

/// Makes machine `name` start at boot: enables `berth@NAME.service` (WantedBy=
/// machines.target) and machines.target itself, as `machinectl enable` does, then reloads.
pub async fn enable_machine_service(
    conn: &Connection,
    name: &str,
) -> Result<Vec<UnitFileChange>, SystemdError> {
    let systemd = SystemdProxy::new(conn).await?;
    let (_, changes) = systemd
        .enable_unit_files(
            vec![unit_name::machine_service(name), "machines.target".into()],
            false,
            false,
        )
        .await?;
    systemd.reload().await?;
    Ok(changes)
}

/// Undoes [`enable_machine_service`] for `berth@NAME.service` (machines.target stays).
pub async fn disable_machine_service(
    conn: &Connection,
    name: &str,
) -> Result<Vec<UnitFileChange>, SystemdError> {
    let systemd = SystemdProxy::new(conn).await?;
    let changes = systemd
        .disable_unit_files(vec![unit_name::machine_service(name)], false)
        .await?;
    systemd.reload().await?;
    Ok(changes)
}

/// Moves the start at boot of a renamed machine from `berth@OLD.service` to
/// `berth@NEW.service`, with one reload for both changes (a reload re-reads every unit).
pub async fn move_machine_service(
    conn: &Connection,
    old: &str,
    new: &str,
) -> Result<(), SystemdError> {
    let systemd = SystemdProxy::new(conn).await?;
    systemd
        .disable_unit_files(vec![unit_name::machine_service(old)], false)
        .await?;
    systemd
        .enable_unit_files(vec![unit_name::machine_service(new)], false, false)
        .await?;
    systemd.reload().await?;
    Ok(())
}

/// `enabled`, `disabled`, ... of `berth@NAME.service`.
pub async fn machine_service_state(conn: &Connection, name: &str) -> Result<String, SystemdError> {
    let systemd = SystemdProxy::new(conn).await?;
    Ok(systemd
        .get_unit_file_state(unit_name::machine_service(name))
        .await?)
}

/// Changes properties of a running unit at once (`SetUnitProperties`, runtime: the unit is
/// transient; berth keeps what persists in the machine's definition).
pub async fn set_unit_properties(
    conn: &Connection,
    unit: &str,
    props: &[properties::Property],
) -> Result<(), SystemdError> {
    let encoded = properties::encode(props).map_err(|source| SystemdError::Encode {
        name: "property",
        source,
    })?;
    let systemd = SystemdProxy::new(conn).await?;
    systemd
        .set_unit_properties(unit.to_owned(), true, encoded)
        .await
        .map_err(|e| SystemdError::SetRefused {
            unit: unit.to_owned(),
            message: method_error_text(&e),
        })
}

/// The message of a D-Bus error reply, or the whole error.
fn method_error_text(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, text, _) => text.clone().unwrap_or_else(|| name.to_string()),
        zbus::Error::FDO(fdo) => {
            zbus::DBusError::description(&**fdo).map_or_else(|| fdo.to_string(), str::to_owned)
        }
        other => other.to_string(),
    }
}

/// The D-Bus error name of a reply (zbus turns the standard ones into `Error::FDO`).
fn error_name(e: &zbus::Error) -> Option<String> {
    match e {
        zbus::Error::MethodError(name, _, _) => Some(name.to_string()),
        zbus::Error::FDO(fdo) => Some(zbus::DBusError::name(&**fdo).to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variant(value: impl Into<zbus::Variant<'static>>) -> zbus::OwnedVariant {
        zbus::OwnedVariant::try_from(value.into()).expect("owned")
    }

    #[test]
    fn a_running_machine_is_read_from_machineds_properties() {
        let mut all = std::collections::HashMap::new();
        all.insert("Leader".to_owned(), variant(4242u32));
        all.insert("Unit".to_owned(), variant("machine-web.scope"));
        all.insert("State".to_owned(), variant("running"));
        all.insert("Timestamp".to_owned(), variant(1_700_000_000_000_000u64));
        all.insert("Class".to_owned(), variant("container"));
        let running = RunningMachine::from_properties(&all).expect("parsed");
        assert_eq!(
            running,
            RunningMachine {
                leader: 4242,
                unit: "machine-web.scope".into(),
                state: "running".into(),
                timestamp_usec: 1_700_000_000_000_000,
            }
        );
        all.remove("Unit");
        let missing = RunningMachine::from_properties(&all).expect_err("no Unit");
        assert!(missing.to_string().contains("no Unit"), "{missing}");
        all.insert("Unit".to_owned(), variant(7u32));
        assert!(
            RunningMachine::from_properties(&all).is_err(),
            "a Unit that isn't a string"
        );
    }
}
