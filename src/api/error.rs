//! Errors berthd returns over D-Bus, with stable names under `org.berth.Berth1.Error`.

use crate::build::BuildError;
use crate::image::{ImageError, RegistryError};
use crate::machine::MachineError;

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.berth.Berth1.Error")]
pub enum BusError {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// polkit (or the bus) refused the caller.
    NotAuthorized(String),
    /// A name, value or argument is malformed.
    InvalidArgument(String),
    NoSuchImage(String),
    NoSuchMachine(String),
    MachineExists(String),
    /// The machine is running (or not) when the call needs the opposite.
    InvalidState(String),
    ImageExists(String),
    /// The input could not be imported (not a tar, unsupported compression).
    BadImageInput(String),
    /// A build's Containerfile is wrong or one of its steps failed.
    BuildFailed(String),
    /// Anything else; the message says what.
    Failed(String),
}

impl From<zbus::fdo::Error> for BusError {
    fn from(e: zbus::fdo::Error) -> Self {
        Self::ZBus(e.into())
    }
}

impl From<ImageError> for BusError {
    fn from(e: ImageError) -> Self {
        let message = e.to_string();
        match e {
            ImageError::InvalidName(_)
            | ImageError::InvalidVersion(_)
            | ImageError::ReservedName(_)
            | ImageError::HasVersions { .. } => Self::InvalidArgument(message),
            ImageError::Exists(_) | ImageError::Unversioned(_) => Self::ImageExists(message),
            ImageError::NotFound(_) | ImageError::NoSuchVersion { .. } => {
                Self::NoSuchImage(message)
            }
            ImageError::NotATar(_)
            | ImageError::EmptyInput
            | ImageError::NoEntries
            | ImageError::UnsupportedCompression(_)
            | ImageError::Oci(_) => Self::BadImageInput(message),
            ImageError::Registry(
                RegistryError::BadUrl { .. } | RegistryError::BadSumsEntry { .. },
            ) => Self::InvalidArgument(message),
            ImageError::Registry(
                RegistryError::Mismatch { .. }
                | RegistryError::NoChecksum { .. }
                | RegistryError::BadSignature { .. }
                | RegistryError::BadSums { .. }
                | RegistryError::SumsNotText { .. },
            ) => Self::BadImageInput(message),
            ImageError::Io { ref source, .. } if storage_full(source) => Self::Failed(format!(
                "{message}: the filesystem is full; free space on it, then try again (a failed import, pull or build keeps nothing of its image)"
            )),
            ImageError::Registry(_) | ImageError::Io { .. } => Self::Failed(message),
        }
    }
}

impl From<BuildError> for BusError {
    fn from(e: BuildError) -> Self {
        match e {
            BuildError::Image(inner) => Self::from(inner),
            BuildError::Machine(inner) => Self::from(inner),
            BuildError::Io { .. } => Self::Failed(e.to_string()),
            BuildError::Containerfile { .. }
            | BuildError::NoContainerfile(_)
            | BuildError::Step { .. }
            | BuildError::StepFailed { .. } => Self::BuildFailed(e.to_string()),
        }
    }
}

/// Whether an error is the filesystem's being full (ENOSPC).
fn storage_full(source: &std::io::Error) -> bool {
    source.kind() == std::io::ErrorKind::StorageFull
}

impl From<MachineError> for BusError {
    fn from(e: MachineError) -> Self {
        let message = e.to_string();
        let full = match &e {
            MachineError::Image(ImageError::Io { source, .. })
            | MachineError::Io { source, .. } => storage_full(source),
            _ => false,
        };
        if full {
            return Self::Failed(format!(
                "{message}: the filesystem is full; free space on it, then try again"
            ));
        }
        match e {
            MachineError::InvalidName(_) | MachineError::InvalidArgument(_) => {
                Self::InvalidArgument(message)
            }
            MachineError::Exists(_) => Self::MachineExists(message),
            MachineError::NotFound(_) => Self::NoSuchMachine(message),
            MachineError::Image(inner) => Self::from(inner),
            MachineError::AlreadyRunning(_)
            | MachineError::AlreadyStarting(_)
            | MachineError::Busy { .. }
            | MachineError::NotReady(_)
            | MachineError::NotRunning(_)
            | MachineError::Running(_) => Self::InvalidState(message),
            MachineError::Runtime(crate::runtime::RuntimeError::Setting(_)) => {
                Self::InvalidArgument(message)
            }
            MachineError::NoFreeUidRange
            | MachineError::Runtime(_)
            | MachineError::Systemd(_)
            | MachineError::Network(_)
            | MachineError::BadDefinition { .. }
            | MachineError::Io { .. } => Self::Failed(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_says_what_to_do() {
        let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC);
        // As the tree writer reports it: the entry's path in front, the kind kept.
        let in_entry = std::io::Error::new(enospc.kind(), format!("./usr/lib/x: {enospc}"));
        for source in [enospc, in_entry] {
            let full = ImageError::Io {
                context: "writing the image".into(),
                source,
            };
            let BusError::Failed(message) = BusError::from(full) else {
                panic!("not Failed");
            };
            assert!(message.starts_with("writing the image: "), "{message}");
            assert!(message.contains("No space left on device"), "{message}");
            assert!(
                message.contains("the filesystem is full; free space on it, then try again"),
                "{message}"
            );
        }
    }

    #[test]
    fn a_full_disk_during_a_create_speaks_of_the_machine() {
        let enospc = || std::io::Error::from_raw_os_error(libc::ENOSPC);
        let copying = MachineError::Image(ImageError::Io {
            context: "copying the image".into(),
            source: enospc(),
        });
        let writing = MachineError::Io {
            context: "writing the definition".into(),
            source: enospc(),
        };
        for full in [copying, writing] {
            let BusError::Failed(message) = BusError::from(full) else {
                panic!("not Failed");
            };
            assert!(message.contains("No space left on device"), "{message}");
            assert!(
                message.contains("the filesystem is full; free space on it, then try again"),
                "{message}"
            );
            assert!(!message.contains("import"), "{message}");
        }
    }
}
