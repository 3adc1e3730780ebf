//! Extracting a tar stream into a [`TreeWriter`].

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;

use tar::EntryType;

use super::ImageError;
use super::tree::{Content, EntryError, Metadata, RefuseReason, TreePath, TreeWriter};

/// pax header keys GNU tar and bsdtar use for extended attributes.
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// Writes every entry of the archive into `tree`, refusing those that would escape it or create
/// devices (each refusal is recorded in the tree).
pub fn extract(source: impl Read, tree: &mut TreeWriter) -> Result<(), ImageError> {
    let mut archive = tar::Archive::new(source);
    let entries = archive.entries().map_err(ImageError::not_a_tar)?;
    let mut seen = 0usize;
    for entry in entries {
        seen += 1;
        let mut entry = entry.map_err(ImageError::not_a_tar)?;
        write_entry(&mut entry, tree)?;
    }
    if seen == 0 {
        return Err(ImageError::NoEntries);
    }
    Ok(())
}

/// Writes one archive entry into `tree`: refused entries are recorded there, not returned;
/// the error is an unreadable entry or a failed write.
pub fn write_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    tree: &mut TreeWriter,
) -> Result<(), ImageError> {
    let raw_path = entry.path_bytes().into_owned();
    let shown = String::from_utf8_lossy(&raw_path).into_owned();
    let path = match TreePath::parse(&raw_path) {
        Ok(path) => path,
        Err(reason) => {
            tree.refuse(shown, reason);
            return Ok(());
        }
    };
    let meta = metadata(entry).map_err(ImageError::not_a_tar)?;
    let kind = entry.header().entry_type();
    let link = entry.link_name_bytes().map(|l| l.into_owned());
    let result = match (kind, link) {
        (EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse, _) => {
            tree.file(&path, &meta, Content::Reader(entry))
        }
        (EntryType::Directory, _) => tree.directory(&path, &meta),
        (EntryType::Symlink, Some(target)) => {
            tree.symlink(&path, OsStr::from_bytes(&target), &meta)
        }
        (EntryType::Link, Some(target)) => match TreePath::parse(&target) {
            Ok(target) => tree.hardlink(&path, &target),
            Err(_) => Err(EntryError::Refused(RefuseReason::HardlinkOutside(
                String::from_utf8_lossy(&target).into_owned(),
            ))),
        },
        (EntryType::Char | EntryType::Block, _) => {
            Err(EntryError::Refused(RefuseReason::DeviceNode))
        }
        (EntryType::Fifo, _) => tree.fifo(&path, &meta),
        (other, _) => Err(EntryError::Refused(RefuseReason::UnsupportedType(format!(
            "{other:?}"
        )))),
    };
    tree.settle(&shown, result)
        .map_err(|source| ImageError::Io {
            context: "writing the image".into(),
            source,
        })
}

fn metadata<R: Read>(entry: &mut tar::Entry<'_, R>) -> std::io::Result<Metadata> {
    let mut xattrs = Vec::new();
    if let Some(extensions) = entry.pax_extensions()? {
        for extension in extensions {
            let extension = extension?;
            if let Some(name) = extension
                .key_bytes()
                .strip_prefix(PAX_XATTR_PREFIX.as_bytes())
            {
                xattrs.push((
                    OsString::from(OsStr::from_bytes(name)),
                    extension.value_bytes().to_vec(),
                ));
            }
        }
    }
    let header = entry.header();
    Ok(Metadata {
        mode: header.mode()?,
        uid: u32::try_from(header.uid()?).map_err(std::io::Error::other)?,
        gid: u32::try_from(header.gid()?).map_err(std::io::Error::other)?,
        mtime: i64::try_from(header.mtime()?).map_err(std::io::Error::other)?,
        xattrs,
    })
}
