//! The image pool: plain directory trees under `/var/lib/machines`, so `machinectl
//! list-images` sees them too, plus berth's record of each image's origin in
//! `/var/lib/berth/images/NAME.json`.

pub mod containerfile;
pub mod export;
mod fs_import;
pub mod identity;
mod oci;
mod pool;
pub mod pull;
mod record;
mod reference;
mod source;
mod spare;
mod tar_import;
pub mod tree;
pub mod version;

use std::io;

use thiserror::Error;

use crate::name::NameError;

pub use oci::{OciConfig, OciError, OciImage, import_archive};
pub use pool::{
    ImageInfo, ImportReport, Pool, clean_staging, copy_tree_to, discard, prepare_tree, snapshot_to,
};
pub use pull::RegistryError;
pub use record::{AppDefaults, BaseImage, BuildSource, ImageRecord};
pub use reference::ImageRef;
pub use source::Compression;
pub use spare::discard_stale as discard_stale_spares;

/// Where images live: machined's pool, so systemd's tools see them.
pub const DEFAULT_IMAGE_DIR: &str = "/var/lib/machines";
/// berth's own state: image records (and, later, machine definitions).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/berth";

#[derive(Debug, Error)]
pub enum ImageError {
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error(
        "image '{0}' already exists; remove it first with 'berth rmi {0}' or choose another name"
    )]
    Exists(String),
    #[error("no image named '{0}'; 'berth images' lists the images there are")]
    NotFound(String),
    #[error(transparent)]
    InvalidVersion(#[from] version::VersionError),
    #[error(
        "image '{name}' has no version '{version}'; its versions are {versions} ('berth images' lists them)"
    )]
    NoSuchVersion {
        name: String,
        version: String,
        versions: String,
    },
    #[error(
        "image '{name}' has versions ({versions}); name one as '{name}@VERSION' (or, to remove them all, use 'berth rmi --all-versions {name}'; to add one, give --version)"
    )]
    HasVersions { name: String, versions: String },
    #[error(
        "image '{0}' exists without a version; versions of it can't be added beside it: import under another name, or remove it first with 'berth rmi {0}'"
    )]
    Unversioned(String),
    #[error(
        "image name '{0}' ends in '.v', which is reserved for the directory of an image's versions; choose another name"
    )]
    ReservedName(String),
    #[error("the input is not a readable tar archive (or it is truncated): {}", printable(.0))]
    NotATar(#[source] io::Error),
    #[error("the input is empty: there is no tar archive to import")]
    EmptyInput,
    #[error("the archive contains no entries; an empty image is surely a mistake")]
    NoEntries,
    #[error(
        "{0}-compressed input is not supported; decompress it first (e.g. 'bunzip2 -c FILE | berth import-tar - NAME')"
    )]
    UnsupportedCompression(&'static str),
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

/// An error's text as one short printable line: tar's own messages quote raw header bytes,
/// which are garbage when the input isn't a tar archive at all.
fn printable(e: &io::Error) -> String {
    const MAX: usize = 100;
    let text = e.to_string();
    let mut line: String = text
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .take(MAX)
        .collect();
    if text.chars().count() > MAX {
        line.push_str("...");
    }
    line
}

impl ImageError {
    fn read(source: io::Error) -> Self {
        Self::Io {
            context: "reading the input".into(),
            source,
        }
    }

    fn not_a_tar(source: io::Error) -> Self {
        Self::NotATar(source)
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

/// Unpacks a tar stream (plain, gzip, xz or zstd) into the existing directory `dir` with the
/// importer's confinement (a build context, say); returns what was refused.
pub fn unpack_tar(
    input: std::fs::File,
    dir: &std::path::Path,
) -> Result<Vec<tree::Refusal>, ImageError> {
    let root = rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| ImageError::io(format!("opening {}", dir.display()))(e.into()))?;
    let mut tree = tree::TreeWriter::new(root);
    tar_import::extract(source::decompress(input)?, &mut tree)?;
    tree.finish()
        .map_err(ImageError::io("setting directory times"))
}

/// Copies the directory open as `source` into `tree` (owners, modes, times, xattrs, links).
pub fn copy_tree_into(
    source: std::os::fd::OwnedFd,
    tree: &mut tree::TreeWriter,
) -> Result<(), ImageError> {
    fs_import::copy_tree(source, tree)
}

#[cfg(test)]
mod tests;
