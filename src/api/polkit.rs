//! Authorization: read-only calls are open to everyone; changes need a polkit action. Root
//! always passes, without asking polkit (as systemd's own daemons do).

use std::collections::HashMap;

use zbus::Connection;
use zbus::message::{Flags, Header};
use zbus::names::BusName;
use zbus_polkit::policykit1::{AuthorityProxy, CheckAuthorizationFlags, Subject};

use super::BusError;

/// The polkit actions berthd checks, one per kind of change, declared in
/// `dbus/org.berth.berth1.policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Import an image into berth's pool (import-tar, import-fs, import-oci).
    ImportImage,
    /// Download an image into berth's pool (pull).
    PullImage,
    /// Build an image (build).
    BuildImage,
    /// Export an image as a tarball (export; an image may hold secrets).
    ExportImage,
    /// Remove an image (rmi).
    RemoveImage,
    /// Create a machine (create, clone).
    CreateMachine,
    /// Start a machine (start).
    StartMachine,
    /// Create and start a machine attached to the caller (run).
    RunMachine,
    /// Stop a machine (stop).
    StopMachine,
    /// Send a signal to a machine's processes (kill).
    KillMachine,
    /// Restart a machine (restart).
    RestartMachine,
    /// Run a command in a running machine (exec).
    ExecMachine,
    /// Open a login shell in a running machine (shell).
    ShellMachine,
    /// Copy files from the host into a running machine (copy-to).
    CopyToMachine,
    /// Copy files out of a running machine to the host (copy-from).
    CopyFromMachine,
    /// Change a machine's resource properties (set).
    SetProperties,
    /// Remove a machine (rm).
    RemoveMachine,
    /// Move a machine to another image version (rebase).
    RebaseMachine,
    /// Store a stopped machine's root as a new image (commit; a root may hold secrets).
    CommitMachine,
    /// Give a stopped machine a new name (rename).
    RenameMachine,
    /// Take and remove snapshots of a machine's root (snapshot create, snapshot rm).
    SnapshotMachine,
    /// Put a stopped machine's root back as a snapshot has it (snapshot restore).
    RestoreMachine,
    /// Make a machine start at boot, or not (enable, disable).
    EnableMachine,
}

impl Action {
    /// Every action, in the order of the policy file.
    pub const ALL: [Self; 23] = [
        Self::ImportImage,
        Self::PullImage,
        Self::BuildImage,
        Self::ExportImage,
        Self::RemoveImage,
        Self::CreateMachine,
        Self::StartMachine,
        Self::RunMachine,
        Self::StopMachine,
        Self::KillMachine,
        Self::RestartMachine,
        Self::ExecMachine,
        Self::ShellMachine,
        Self::CopyToMachine,
        Self::CopyFromMachine,
        Self::SetProperties,
        Self::RemoveMachine,
        Self::RebaseMachine,
        Self::CommitMachine,
        Self::RenameMachine,
        Self::SnapshotMachine,
        Self::RestoreMachine,
        Self::EnableMachine,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Self::ImportImage => "org.berth.berth1.import-image",
            Self::PullImage => "org.berth.berth1.pull-image",
            Self::BuildImage => "org.berth.berth1.build-image",
            Self::ExportImage => "org.berth.berth1.export-image",
            Self::RemoveImage => "org.berth.berth1.remove-image",
            Self::CreateMachine => "org.berth.berth1.create-machine",
            Self::StartMachine => "org.berth.berth1.start-machine",
            Self::RunMachine => "org.berth.berth1.run-machine",
            Self::StopMachine => "org.berth.berth1.stop-machine",
            Self::KillMachine => "org.berth.berth1.kill-machine",
            Self::RestartMachine => "org.berth.berth1.restart-machine",
            Self::ExecMachine => "org.berth.berth1.exec-machine",
            Self::ShellMachine => "org.berth.berth1.shell-machine",
            Self::CopyToMachine => "org.berth.berth1.copy-to-machine",
            Self::CopyFromMachine => "org.berth.berth1.copy-from-machine",
            Self::SetProperties => "org.berth.berth1.set-properties",
            Self::RemoveMachine => "org.berth.berth1.remove-machine",
            Self::RebaseMachine => "org.berth.berth1.rebase-machine",
            Self::CommitMachine => "org.berth.berth1.commit-machine",
            Self::RenameMachine => "org.berth.berth1.rename-machine",
            Self::SnapshotMachine => "org.berth.berth1.snapshot-machine",
            Self::RestoreMachine => "org.berth.berth1.restore-machine",
            Self::EnableMachine => "org.berth.berth1.enable-machine",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Self::ImportImage => "import images",
            Self::PullImage => "download images",
            Self::BuildImage => "build images",
            Self::ExportImage => "export images",
            Self::RemoveImage => "remove images",
            Self::CreateMachine => "create machines",
            Self::StartMachine => "start machines",
            Self::RunMachine => "run machines",
            Self::StopMachine => "stop machines",
            Self::KillMachine => "send signals to machines",
            Self::RestartMachine => "restart machines",
            Self::ExecMachine => "run commands in machines",
            Self::ShellMachine => "open shells in machines",
            Self::CopyToMachine => "copy files into machines",
            Self::CopyFromMachine => "copy files out of machines",
            Self::SetProperties => "change machines' resource limits",
            Self::RemoveMachine => "remove machines",
            Self::RebaseMachine => "rebase machines",
            Self::CommitMachine => "store machines as images",
            Self::RenameMachine => "rename machines",
            Self::SnapshotMachine => "take or remove snapshots of machines",
            Self::RestoreMachine => "restore machines from snapshots",
            Self::EnableMachine => "enable or disable machines at boot",
        }
    }
}

/// Succeeds when the sender of `header` may perform `action`.
pub async fn authorize(
    conn: &Connection,
    header: &Header<'_>,
    action: Action,
) -> Result<(), BusError> {
    let sender = header
        .sender()
        .ok_or_else(|| BusError::NotAuthorized("the call has no sender".into()))?;
    let dbus = zbus::fdo::DBusProxy::new(conn).await?;
    let uid = dbus
        .get_connection_unix_user(BusName::from(sender.to_owned()))
        .await?;
    if uid == 0 {
        return Ok(());
    }
    let subject = Subject::new_for_message_header(header)
        .map_err(|e| BusError::Failed(format!("cannot identify the caller for polkit: {e}")))?;
    let authority = AuthorityProxy::new(conn).await?;
    let flags = if header
        .primary()
        .flags()
        .contains(Flags::ALLOW_INTERACTIVE_AUTH)
    {
        CheckAuthorizationFlags::ALLOW_USER_INTERACTION
    } else {
        CheckAuthorizationFlags::empty()
    };
    let result = authority
        .check_authorization(&subject, action.id(), &HashMap::new(), flags, "")
        .await
        .map_err(|e| {
            BusError::NotAuthorized(format!(
                "cannot ask polkit whether uid {uid} may {}: {e}; run the command as root",
                action.what()
            ))
        })?;
    if result.is_authorized {
        Ok(())
    } else {
        Err(BusError::NotAuthorized(format!(
            "not authorized to {} (polkit action {}): run the command as root, or ask an administrator to allow that action for your user",
            action.what(),
            action.id()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = include_str!("../../dbus/org.berth.berth1.policy");

    #[test]
    fn every_action_is_declared_in_the_policy_file_and_nothing_else() {
        let declared: Vec<&str> = POLICY
            .split("<action id=\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect();
        let checked: Vec<&str> = Action::ALL.iter().map(|a| a.id()).collect();
        assert_eq!(declared, checked);
        for action in Action::ALL {
            assert!(!action.what().is_empty());
            assert!(
                POLICY.contains(&format!("required to {}.", action.what())),
                "{} has no matching <message>",
                action.id()
            );
        }
    }
}
