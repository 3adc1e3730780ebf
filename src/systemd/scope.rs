//! Transient scopes: `StartTransientUnit` with the properties systemd-nspawn sends, waiting for
//! the job to finish.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use zbus::{Connection, OwnedVariant, Variant};
use zbus_systemd::systemd1::ManagerProxy as SystemdProxy;

use super::SystemdError;

type Properties = Vec<(String, OwnedVariant)>;

/// A machine's scope.
#[derive(Debug)]
pub struct ScopeSpec<'a> {
    pub unit: String,
    pub description: String,
    pub leader: u32,
    /// The leader as a pidfd, for systemd ≥ 255 (race-free); `None` sends only `PIDs`.
    pub leader_pidfd: Option<BorrowedFd<'a>>,
    /// The machine's `-p` properties, encoded; they win over berth's defaults.
    pub properties: Vec<(String, OwnedVariant)>,
}

fn push<'v>(
    props: &mut Properties,
    name: &'static str,
    value: impl Into<Variant<'v>>,
) -> Result<(), SystemdError> {
    let owned = OwnedVariant::try_from(value.into())
        .map_err(|source| SystemdError::Encode { name, source })?;
    props.push((name.to_owned(), owned));
    Ok(())
}

/// The properties of a machine scope (pure; unit-tested for their D-Bus types).
pub fn scope_properties(spec: &ScopeSpec<'_>, use_pidfd: bool) -> Result<Properties, SystemdError> {
    let mut props = Properties::new();
    match spec.leader_pidfd.filter(|_| use_pidfd) {
        Some(fd) => push(&mut props, "PIDFDs", vec![zbus::Fd::from(fd.as_fd())])?,
        None => push(&mut props, "PIDs", vec![spec.leader])?,
    }
    push(&mut props, "Description", spec.description.as_str())?;
    push(&mut props, "Slice", "machine.slice")?;
    push(&mut props, "Delegate", true)?;
    push(&mut props, "CollectMode", "inactive-or-failed")?;
    // At the host's shutdown berthd stops first and powers its machines off cleanly; the
    // scope's own stop (SIGTERM to every process of the guest: its systemd would take it as
    // "re-execute") comes after, for whatever is left. Stop order is the reverse of this.
    push(&mut props, "Before", vec!["berthd.service"])?;
    // No AddRef: it pins the unit to the caller's bus connection, and berthd's lives on, so a
    // stopped machine's scope would never be collected and the next start would fail.
    let user_sets = |name: &str| spec.properties.iter().any(|(n, _)| n.starts_with(name));
    if !user_sets("TasksMax") {
        push(&mut props, "TasksMax", 16_384u64)?;
    }
    push(&mut props, "DevicePolicy", "closed")?;
    push(
        &mut props,
        "DeviceAllow",
        vec![
            ("/dev/net/tun".to_owned(), "rwm".to_owned()),
            ("char-pts".to_owned(), "rw".to_owned()),
        ],
    )?;
    for (name, value) in &spec.properties {
        let value = value.try_clone().map_err(|source| SystemdError::Encode {
            name: "property",
            source,
        })?;
        props.push((name.clone(), value));
    }
    Ok(props)
}

/// Whether systemd takes `PIDFDs` (≥ 255; Debian 12 ships 252): learnt at the first start,
/// so later starts don't pay a refused call each.
static TAKES_PIDFDS: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 0;
const YES: u8 = 1;
const NO: u8 = 2;

/// Starts the scope and waits until its start job is done (only then is the leader in it).
pub async fn start_scope(conn: &Connection, spec: &ScopeSpec<'_>) -> Result<(), SystemdError> {
    let systemd = SystemdProxy::new(conn).await?;
    // Subscribe before starting, or the JobRemoved signal may come first.
    let mut removed = systemd.receive_job_removed().await?;
    let try_pidfd = spec.leader_pidfd.is_some() && TAKES_PIDFDS.load(Ordering::Relaxed) != NO;
    let mut result = start(&systemd, spec, try_pidfd).await;
    if try_pidfd {
        let unknown_property = result
            .as_ref()
            .err()
            .and_then(super::error_name)
            .is_some_and(|n| {
                matches!(
                    n.as_str(),
                    "org.freedesktop.DBus.Error.UnknownProperty"
                        | "org.freedesktop.DBus.Error.PropertyReadOnly"
                )
            });
        if unknown_property {
            tracing::debug!("systemd has no PIDFDs property; using PIDs");
            TAKES_PIDFDS.store(NO, Ordering::Relaxed);
            result = start(&systemd, spec, false).await;
        } else if result.is_ok() {
            TAKES_PIDFDS.store(YES, Ordering::Relaxed);
        }
    }
    let job = result.map_err(|e| SystemdError::StartRefused {
        unit: spec.unit.clone(),
        message: super::method_error_text(&e),
    })?;
    wait_job(&mut removed, &job, &spec.unit).await
}

/// Stops scope `unit` and waits until systemd has stopped it, killing what runs in it; a unit
/// that is gone already is fine.
pub async fn stop_scope(conn: &Connection, unit: &str) -> Result<(), SystemdError> {
    let systemd = SystemdProxy::new(conn).await?;
    let mut removed = systemd.receive_job_removed().await?;
    match systemd.stop_unit(unit.to_owned(), "replace".into()).await {
        Ok(job) => wait_job(&mut removed, &job, unit).await,
        Err(e) if super::is_gone(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn wait_job(
    removed: &mut zbus_systemd::systemd1::JobRemovedStream,
    job: &zbus::OwnedObjectPath,
    unit: &str,
) -> Result<(), SystemdError> {
    while let Some(signal) = removed.next().await {
        let args = signal.args()?;
        if args.job() == job {
            return match args.result().as_str() {
                "done" => Ok(()),
                other => Err(SystemdError::JobFailed {
                    unit: unit.to_owned(),
                    result: other.to_owned(),
                }),
            };
        }
    }
    Err(SystemdError::JobFailed {
        unit: unit.to_owned(),
        result: "unknown (the bus connection closed)".into(),
    })
}

/// Keeps berthd's JobRemoved match rule registered for the connection's life: each start and
/// stop subscribes again, and zbus then shares the rule instead of an AddMatch and a
/// RemoveMatch round trip to the bus every time.
pub async fn keep_job_signals(conn: &Connection) -> Result<(), SystemdError> {
    let systemd = SystemdProxy::new(conn).await?;
    let mut removed = systemd.receive_job_removed().await?;
    tokio::spawn(async move { while removed.next().await.is_some() {} });
    Ok(())
}

/// How long a start waits for the scope of the machine's previous run to be unloaded (a
/// reboot, or a start right after a stop, may come before systemd has collected it).
const UNIT_EXISTS_PATIENCE: Duration = Duration::from_secs(2);

async fn start(
    systemd: &SystemdProxy<'_>,
    spec: &ScopeSpec<'_>,
    use_pidfd: bool,
) -> zbus::Result<zbus::OwnedObjectPath> {
    let deadline = tokio::time::Instant::now() + UNIT_EXISTS_PATIENCE;
    loop {
        let props =
            scope_properties(spec, use_pidfd).map_err(|e| zbus::Error::Failure(e.to_string()))?;
        let result = systemd
            .start_transient_unit(spec.unit.clone(), "fail".into(), props, Vec::new())
            .await;
        let exists = result.as_ref().err().and_then(super::error_name).as_deref()
            == Some("org.freedesktop.systemd1.UnitExists");
        if !exists || tokio::time::Instant::now() >= deadline {
            return result;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_have_the_types_systemd_expects() {
        let spec = ScopeSpec {
            unit: "machine-web.scope".into(),
            description: "Container web".into(),
            leader: 4242,
            leader_pidfd: None,
            properties: Vec::new(),
        };
        let props = scope_properties(&spec, true).expect("encode");
        let sigs: Vec<String> = props
            .iter()
            .map(|(name, value)| format!("{name}={}", value.value_signature()))
            .collect();
        assert_eq!(
            sigs,
            [
                "PIDs=au",
                "Description=s",
                "Slice=s",
                "Delegate=b",
                "CollectMode=s",
                "Before=as",
                "TasksMax=t",
                "DevicePolicy=s",
                "DeviceAllow=a(ss)"
            ]
        );
    }
}
