//! What systemd says about a machine's scope: its state, accounting and limits.

use zbus::Connection;
use zbus_systemd::systemd1::{ManagerProxy as SystemdProxy, ScopeProxy, UnitProxy};

use super::SystemdError;

/// A scope as `systemctl status` would describe it. `u64::MAX` means "no limit" (infinity)
/// or, for the accounting fields, "not known".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitStatus {
    pub active_state: String,
    pub sub_state: String,
    /// The cgroup path below /sys/fs/cgroup, e.g. `/machine.slice/machine-web.scope`.
    pub control_group: String,
    pub tasks_current: u64,
    pub memory_current: u64,
    pub cpu_usage_nsec: u64,
    /// (property, value) as systemd reports them, e.g. ("MemoryMax", "infinity").
    pub limits: Vec<(String, String)>,
}

/// Reads `unit`'s state, accounting and limits.
pub async fn unit_status(conn: &Connection, unit: &str) -> Result<UnitStatus, SystemdError> {
    let systemd = SystemdProxy::new(conn).await?;
    let path = systemd.get_unit(unit.to_owned()).await?;
    let unit_proxy = UnitProxy::builder(conn).path(path.clone()).build().await?;
    let scope = ScopeProxy::builder(conn).path(path).build().await?;
    let size = |v: u64| {
        if v == u64::MAX {
            "infinity".to_owned()
        } else {
            v.to_string()
        }
    };
    let quota = scope.cpu_quota_per_sec_u_sec().await?;
    let limits = vec![
        ("CPUWeight".to_owned(), size(scope.cpu_weight().await?)),
        (
            "CPUQuota".to_owned(),
            if quota == u64::MAX {
                "infinity".to_owned()
            } else {
                format!("{}%", quota / 10_000)
            },
        ),
        ("IOWeight".to_owned(), size(scope.io_weight().await?)),
        ("MemoryHigh".to_owned(), size(scope.memory_high().await?)),
        ("MemoryMax".to_owned(), size(scope.memory_max().await?)),
        ("TasksMax".to_owned(), size(scope.tasks_max().await?)),
    ];
    Ok(UnitStatus {
        active_state: unit_proxy.active_state().await?,
        sub_state: unit_proxy.sub_state().await?,
        control_group: scope.control_group().await?,
        tasks_current: scope.tasks_current().await?,
        memory_current: scope.memory_current().await?,
        cpu_usage_nsec: scope.cpu_usage_n_sec().await?,
        limits,
    })
}
