//! Authorization: read-only calls are open to everyone; changes need a polkit action. Root
//! always passes, without asking polkit (as systemd's own daemons do).

use std::collections::HashMap;

use zbus::Connection;
use zbus::message::{Flags, Header};
use zbus::names::BusName;
use zbus_polkit::policykit1::{AuthorityProxy, CheckAuthorizationFlags, Subject};

use super::BusError;

/// The polkit actions berthd checks, declared in `dbus/org.berth.berth1.policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    ManageImages,
    ManageMachines,
}

impl Action {
    pub fn id(self) -> &'static str {
        match self {
            Self::ManageImages => "org.berth.berth1.manage-images",
            Self::ManageMachines => "org.berth.berth1.manage-machines",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Self::ManageImages => "manage images",
            Self::ManageMachines => "manage machines",
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
