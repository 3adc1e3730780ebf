//! The image pool: plain directory trees under `/var/lib/machines`, so `machinectl
//! list-images` sees them too, plus berth's record of each image's origin in
//! `/var/lib/berth/images/NAME.json`.

pub mod export;
mod fs_import;
mod pool;
pub mod pull;
mod record;
mod source;
mod tar_import;
pub mod tree;

use std::io;

use thiserror::Error;

use crate::name::NameError;

pub use pool::{ImageInfo, ImportReport, Pool, clean_staging, discard};
pub use pull::RegistryError;
pub use record::ImageRecord;
pub use source::Compression;

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

#[cfg(test)]
mod tests;
