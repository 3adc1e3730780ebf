//! Importing, listing and removing images, atomically.
//!
//! An import writes into a hidden staging directory (`.#berth-import-…`, invisible to
//! `machinectl list-images` and to `berth images`) on the same filesystem and renames it into
//! place with RENAME_NOREPLACE only when complete and synced. A failed import removes the
//! staging directory; one interrupted by a crash leaves it for [`Pool::clean_stale`] at the next
//! berthd start. Removal renames first, then deletes, so a half-deleted image is never visible.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use super::record::ImageRecord;
use super::reference::ImageRef;
use super::source::{self, HashedSource};
use super::tree::{Refusal, TreeWriter};
use super::{ImageError, fs_import, tar_import, version};
use crate::{name, sys};

pub(super) const STAGING_PREFIX: &str = ".#berth-";

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub name: String,
    pub record: ImageRecord,
    pub refused: Vec<Refusal>,
    /// Whether the image is a btrfs subvolume (else a plain directory).
    pub subvolume: bool,
    /// Whether it is a btrfs snapshot of the tree it was made from (a machine's root).
    pub snapshot: bool,
}

/// One image as `berth images` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub name: String,
    /// Empty for an unversioned image.
    pub version: String,
    pub path: PathBuf,
    /// berth's record; for images berth did not import (made by machinectl, say) only time
    /// and (in a listing) size, read from the tree.
    pub record: ImageRecord,
}

impl ImageInfo {
    /// `NAME` or `NAME@VERSION`.
    pub fn reference(&self) -> String {
        if self.version.is_empty() {
            self.name.clone()
        } else {
            format!("{}@{}", self.name, self.version)
        }
    }
}

/// The image pool and berth's records of it.
#[derive(Debug, Clone)]
pub struct Pool {
    images: PathBuf,
    records: PathBuf,
}

impl Pool {
    pub fn new(image_dir: impl Into<PathBuf>, state_dir: impl AsRef<Path>) -> Self {
        Self {
            images: image_dir.into(),
            records: state_dir.as_ref().join("images"),
        }
    }

    pub fn image_dir(&self) -> &Path {
        &self.images
    }

    /// Imports a tar stream (plain, gzip, xz or zstd) as image `target` (`NAME` or
    /// `NAME@VERSION`).
    pub fn import_tar(
        &self,
        target: &str,
        input: File,
        origin: &str,
    ) -> Result<ImportReport, ImageError> {
        let (target, staging) = self.begin(target)?;
        let mut tree = TreeWriter::new(staging.open()?);
        let mut hashed = HashedSource::spawn(input)?;
        tar_import::extract(source::decompress(&mut hashed)?, &mut tree)?;
        let digest = hashed.finish()?;
        let record = ImageRecord {
            digest,
            origin: format!("tar:{origin}"),
            ..ImageRecord::default()
        };
        self.complete(&target, staging, tree, record)
    }

    /// Copies the directory tree `source` as image `target`.
    pub fn import_fs(
        &self,
        target: &str,
        source: OwnedFd,
        origin: &str,
    ) -> Result<ImportReport, ImageError> {
        let (target, staging) = self.begin(target)?;
        let mut tree = TreeWriter::new(staging.open()?);
        fs_import::copy_tree(source, &mut tree)?;
        let record = ImageRecord {
            origin: format!("fs:{origin}"),
            ..ImageRecord::default()
        };
        self.complete(&target, staging, tree, record)
    }

    /// Imports an OCI image layout tarball or a `docker save` archive as image `target`: its
    /// layers flattened in order (whiteouts applied), its config's Entrypoint, Cmd, Env,
    /// WorkingDir and User kept as the defaults of app machines made from it.
    pub fn import_oci(
        &self,
        target: &str,
        input: File,
        origin: &str,
    ) -> Result<ImportReport, ImageError> {
        let (target, staging) = self.begin(target)?;
        let scratch = Staging::create(&self.images, "oci-blobs", &target.name)?;
        let mut tree = TreeWriter::new(staging.open()?);
        let mut hashed = HashedSource::spawn(input)?;
        let image = super::oci::import_archive(&mut hashed, &mut tree, &scratch.path)?;
        let digest = hashed.finish()?;
        drop(scratch);
        let config = image.config;
        let record = ImageRecord {
            digest,
            origin: format!("{}:{origin}", image.format),
            app: Some(super::AppDefaults {
                entrypoint: config.entrypoint,
                cmd: config.cmd,
                env: config.env,
                working_dir: config.working_dir,
                user: config.user,
                ..super::AppDefaults::default()
            }),
            ..ImageRecord::default()
        };
        self.complete(&target, staging, tree, record)
    }

    /// Writes image `reference` into the directory `dir` as `NAME_VERSION.tar.zst` (or
    /// `.tar.xz`; `NAME.tar.zst` for an unversioned image), written under a temporary name
    /// and renamed when complete, and adds its line to `dir`'s SHA256SUMS: the layout
    /// `machinectl pull-tar` and `berth pull` read. Returns the file name and its sha256.
    pub fn export(
        &self,
        reference: &str,
        dir: OwnedFd,
        compression: super::export::ExportCompression,
    ) -> Result<(String, String), ImageError> {
        let image = self.get(reference)?;
        let stem = if image.version.is_empty() {
            image.name.clone()
        } else {
            format!("{}_{}", image.name, image.version)
        };
        let file_name = format!("{stem}.{}", compression.extension());
        let partial = format!(".{file_name}.partial");
        let context = || format!("writing {file_name}");
        let out = rustix::fs::openat(
            &dir,
            partial.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|e| ImageError::io(context())(e.into()))?;
        let root = open_directory(&image.path)?;
        let out = File::from(out);
        let written = super::export::write_archive(root, &out, compression).and_then(|archive| {
            out.sync_all().map_err(ImageError::io(context()))?;
            rustix::fs::renameat(&dir, partial.as_str(), &dir, file_name.as_str())
                .map_err(|e| ImageError::io(context())(e.into()))?;
            Ok(archive)
        });
        let archive = match written {
            Ok(archive) => archive,
            Err(e) => {
                let _ = rustix::fs::unlinkat(&dir, partial.as_str(), rustix::fs::AtFlags::empty());
                return Err(e);
            }
        };
        super::export::update_sums(dir.as_fd(), &file_name, &archive.sha256_hex)?;
        Ok((file_name, archive.sha256_hex))
    }

    /// Downloads `url` (a tarball of a registry directory), verifies it as `verify` says
    /// and imports it as image `target`. The download lives in `scratch_dir` until then.
    pub fn pull(
        &self,
        target: &str,
        url: &str,
        verify: super::pull::Verify,
        scratch_dir: &Path,
    ) -> Result<ImportReport, ImageError> {
        // Fail on a bad or taken name before downloading anything.
        drop(self.begin(target)?);
        fs::create_dir_all(scratch_dir).map_err(ImageError::io(format!(
            "creating {}",
            scratch_dir.display()
        )))?;
        let mut download = tempfile::tempfile_in(scratch_dir).map_err(ImageError::io(format!(
            "creating a file in {}",
            scratch_dir.display()
        )))?;
        super::pull::fetch_verified(url, &mut download, verify)?;
        self.import_tar(target, download, url)
    }

    /// Stores the tree `root`, a stopped machine's root (a build's, or the one `berth commit`
    /// names), as image `target` with `record` (origin, base, build source and app defaults
    /// set by the caller): a btrfs snapshot when `root` is a subvolume on the pool's btrfs
    /// (instant, and sharing its data), else a copy. The machine's own files (identity, random
    /// seed, journal) get those of the image at `base` back, or go (see [`super::identity`]).
    pub fn import_machine_root(
        &self,
        target: &str,
        root: &Path,
        base: Option<&Path>,
        mut record: ImageRecord,
    ) -> Result<ImportReport, ImageError> {
        let target = self.check_target(target)?;
        let snapshot = if sys::btrfs::is_subvolume(root) {
            Staging::snapshot(&self.images, "import", &target.name, root)
        } else {
            None
        };
        let (staging, mut tree) = match snapshot {
            Some(staging) => {
                let tree = TreeWriter::new(staging.open_existing()?);
                // What the snapshot holds already; complete() adds what is written now.
                record.size_bytes = disk_usage(&staging.path);
                (staging, tree)
            }
            None => {
                let staging = Staging::create(&self.images, "import", &target.name)?;
                let mut tree = TreeWriter::new(staging.open()?);
                let source = open_directory(root)?;
                fs_import::copy_tree(source, &mut tree)?;
                (staging, tree)
            }
        };
        super::identity::restore_base(&mut tree, base)?;
        self.complete(&target, staging, tree, record)
    }

    /// Checks that `target` may be imported and makes its staging directory.
    pub(super) fn begin(&self, target: &str) -> Result<(ImageRef, Staging), ImageError> {
        let target = self.check_target(target)?;
        let staging = Staging::create(&self.images, "import", &target.name)?;
        Ok((target, staging))
    }

    /// Checks that `target` may be imported (a valid name, not taken, no clash between
    /// versioned and unversioned) and makes the pool's directory.
    fn check_target(&self, target: &str) -> Result<ImageRef, ImageError> {
        let target = ImageRef::parse(target)?;
        let name = &target.name;
        let versions = self.versions(name);
        let plain = self.images.join(name).symlink_metadata().is_ok();
        match &target.version {
            None if plain => return Err(ImageError::Exists(name.clone())),
            None if !versions.is_empty() => {
                return Err(ImageError::HasVersions {
                    name: name.clone(),
                    versions: versions.join(", "),
                });
            }
            Some(_) if plain => return Err(ImageError::Unversioned(name.clone())),
            Some(version) if versions.contains(version) => {
                return Err(ImageError::Exists(target.to_string()));
            }
            _ => {}
        }
        fs::create_dir_all(&self.images).map_err(ImageError::io(format!(
            "creating the image directory {}",
            self.images.display()
        )))?;
        Ok(target)
    }

    /// Syncs the staged tree, moves it into place as `target` and writes its record
    /// (`record`'s time and version are filled in here, and the bytes written are added to
    /// its size: a snapshot's caller counted what was there before).
    pub(super) fn complete(
        &self,
        target: &ImageRef,
        staging: Staging,
        tree: TreeWriter,
        mut record: ImageRecord,
    ) -> Result<ImportReport, ImageError> {
        record.size_bytes += tree.bytes_written();
        tree.sync().map_err(ImageError::io("syncing the image"))?;
        let refused = tree
            .finish()
            .map_err(ImageError::io("setting directory times"))?;
        record.created_usec = now_usec();
        record.version = target.version.clone().unwrap_or_default();
        let (subvolume, snapshot) = (staging.subvolume, staging.snapshot);
        let version = target.version.as_deref();
        let path = self.image_path(&target.name, version);
        if version.is_some() {
            let dir = self.versions_dir(&target.name);
            fs::create_dir_all(&dir)
                .map_err(ImageError::io(format!("creating {}", dir.display())))?;
        }
        // Rename first: a concurrent import of the same name that lost the race must not touch
        // the winner's record. Without its record the import didn't happen.
        staging.commit(&path).map_err(|e| match e {
            ImageError::Exists(_) => ImageError::Exists(target.to_string()),
            other => other,
        })?;
        if let Err(e) = self.write_record(&target.name, version, &record) {
            let _ = discard(&path);
            return Err(e);
        }
        Ok(ImportReport {
            name: target.to_string(),
            record,
            refused,
            subvolume,
            snapshot,
        })
    }

    /// `/var/lib/machines/NAME.v`: where the versions of image NAME live.
    fn versions_dir(&self, name: &str) -> PathBuf {
        self.images.join(format!("{name}.v"))
    }

    /// The tree of image `name` (an unversioned image when `version` is None).
    fn image_path(&self, name: &str, version: Option<&str>) -> PathBuf {
        match version {
            None => self.images.join(name),
            Some(v) => self.versions_dir(name).join(format!("{name}_{v}")),
        }
    }

    /// The versions of image `name`, newest first (systemd's version order).
    pub fn versions(&self, name: &str) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.versions_dir(name)) else {
            return Vec::new();
        };
        let prefix = format!("{name}_");
        let mut versions: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| {
                let file = e.file_name();
                let version = file.to_str()?.strip_prefix(&prefix)?.to_owned();
                version::validate(&version).ok()?;
                Some(version)
            })
            .collect();
        version::sort_newest_first(&mut versions);
        versions
    }

    /// All images in the pool: by name, each name's versions newest first.
    pub fn list(&self) -> Result<Vec<ImageInfo>, ImageError> {
        let entries = match fs::read_dir(&self.images) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ImageError::io(format!("reading {}", self.images.display()))(e)),
        };
        let mut images = Vec::new();
        for entry in entries {
            let entry = entry.map_err(ImageError::io("reading the image directory"))?;
            let Some(file) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if !is_dir || name::validate("image", &file).is_err() {
                continue;
            }
            match file.strip_suffix(".v") {
                Some(name) if name::validate("image", name).is_ok() => {
                    for version in self.versions(name) {
                        images.push(self.info(name, Some(&version), Size::Walk));
                    }
                }
                _ => images.push(self.info(&file, None, Size::Walk)),
            }
        }
        // Stable: each name's versions stay newest first.
        images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(images)
    }

    /// One image. An image without berth's record (made by machinectl or by hand) has its
    /// tree's modification time, and its size with `Size::Walk` (a walk of the whole tree).
    fn info(&self, name: &str, version: Option<&str>, size: Size) -> ImageInfo {
        let path = self.image_path(name, version);
        let record = self
            .read_record(name, version)
            .unwrap_or_else(|| ImageRecord {
                size_bytes: match size {
                    Size::Walk => disk_usage(&path),
                    Size::Skip => 0,
                },
                created_usec: modified_usec(&path),
                ..ImageRecord::default()
            });
        ImageInfo {
            name: name.to_owned(),
            version: version.unwrap_or_default().to_owned(),
            path,
            record,
        }
    }

    /// One image: `NAME@VERSION`, or `NAME`: the unversioned image, else its newest version.
    pub fn get(&self, reference: &str) -> Result<ImageInfo, ImageError> {
        let reference = ImageRef::parse(reference)?;
        let name = &reference.name;
        let versions = self.versions(name);
        let version = match &reference.version {
            Some(v) if versions.contains(v) => Some(v.as_str()),
            Some(v) if versions.is_empty() => {
                return Err(ImageError::NotFound(format!("{name}@{v}")));
            }
            Some(v) => {
                return Err(ImageError::NoSuchVersion {
                    name: name.clone(),
                    version: v.clone(),
                    versions: versions.join(", "),
                });
            }
            None => {
                let plain = self.images.join(name);
                if plain.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                    None
                } else {
                    match versions.first() {
                        Some(newest) => Some(newest.as_str()),
                        None => return Err(ImageError::NotFound(name.clone())),
                    }
                }
            }
        };
        Ok(self.info(name, version, Size::Skip))
    }

    /// Copies image `name` to `target` (a new directory, e.g. a machine's root): staged beside
    /// `target`, adjusted by `prepare` (which gets a writer confined to the copy), then renamed
    /// into place. Nothing is left behind when any step fails.
    /// Returns how the copy was made: "btrfs snapshot", "reflink copy" (file data shared,
    /// on btrfs or xfs) or "copy".
    pub fn copy_image(
        &self,
        name: &str,
        target: &Path,
        durable: bool,
        prepare: impl FnOnce(&mut TreeWriter) -> Result<(), ImageError>,
    ) -> Result<&'static str, ImageError> {
        let image = self.get(name)?;
        copy_tree(&image.path, target, durable, true, prepare)
    }

    /// Copies image `name` into the existing, empty directory `dir` (a machine's volume).
    pub fn copy_image_into(
        &self,
        name: &str,
        dir: &Path,
        prepare: impl FnOnce(&mut TreeWriter) -> Result<(), ImageError>,
    ) -> Result<(), ImageError> {
        let image = self.get(name)?;
        let mut tree = TreeWriter::new(open_directory(dir)?);
        fs_import::copy_tree(open_directory(&image.path)?, &mut tree)?;
        prepare(&mut tree)?;
        tree.sync().map_err(ImageError::io("syncing the copy"))?;
        tree.finish()
            .map(drop)
            .map_err(ImageError::io("setting directory times"))
    }

    /// Removes image `reference` and berth's record of it. `NAME` of an image with versions
    /// is refused unless `all_versions`: which one was meant is not obvious.
    pub fn remove(&self, reference: &str, all_versions: bool) -> Result<(), ImageError> {
        let reference = ImageRef::parse(reference)?;
        let name = &reference.name;
        let versions = self.versions(name);
        let remove_version = |version: &str| -> Result<(), ImageError> {
            let _ = fs::remove_file(self.record_path(name, Some(version)));
            discard(&self.image_path(name, Some(version)))
        };
        match &reference.version {
            Some(v) if versions.contains(v) => remove_version(v)?,
            Some(v) => return Err(ImageError::NotFound(format!("{name}@{v}"))),
            None if !versions.is_empty() => {
                if !all_versions {
                    return Err(ImageError::HasVersions {
                        name: name.clone(),
                        versions: versions.join(", "),
                    });
                }
                for v in &versions {
                    remove_version(v)?;
                }
            }
            None => {
                let path = self.images.join(name);
                match path.symlink_metadata() {
                    Ok(meta) if meta.is_dir() => {}
                    _ => return Err(ImageError::NotFound(name.clone())),
                }
                let _ = fs::remove_file(self.record_path(name, None));
                return discard(&path);
            }
        }
        if self.versions(name).is_empty() {
            // The last version went: the empty NAME.v directories go too.
            let _ = fs::remove_dir(self.versions_dir(name));
            let _ = fs::remove_dir(self.records.join(format!("{name}.v")));
        }
        Ok(())
    }

    /// Deletes staging directories left by an import or removal that a crash interrupted.
    pub fn clean_stale(&self) -> usize {
        clean_staging(&self.images)
    }
}

/// Copies the tree `source` to `target` (a new directory): a btrfs snapshot when `source` is
/// a subvolume and `target` is on the same btrfs, else a copy (file data reflinked where the
/// filesystem can). Staged beside `target`, adjusted by `prepare` (which gets a writer
/// confined to the copy), then renamed into place; nothing is left behind when a step fails.
/// `durable` syncs the copy before the rename, so it survives a crash; an ephemeral machine's
/// root (`berth run --rm`) doesn't need that, and its start doesn't wait for a sync.
/// Returns how the copy was made: "btrfs snapshot", "reflink copy" or "copy".
pub fn copy_tree_to(
    source: &Path,
    target: &Path,
    durable: bool,
    prepare: impl FnOnce(&mut TreeWriter) -> Result<(), ImageError>,
) -> Result<&'static str, ImageError> {
    copy_tree(source, target, durable, false, prepare)
}

/// Writes into the existing tree at `dir` with `prepare` (a restored machine's identity
/// files on its volume, say), then syncs it.
pub fn prepare_tree(
    dir: &Path,
    prepare: impl FnOnce(&mut TreeWriter) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    let mut tree = TreeWriter::new(open_directory(dir)?);
    prepare(&mut tree)?;
    tree.sync().map_err(ImageError::io("syncing the tree"))?;
    tree.finish()
        .map(drop)
        .map_err(ImageError::io("setting directory times"))
}

/// Takes a btrfs snapshot of subvolume `source` at `target` (on the same btrfs), or fails:
/// for a tree that may be changing, such as a running machine's root, of which a copy
/// would not be consistent.
pub fn snapshot_to(source: &Path, target: &Path) -> Result<(), ImageError> {
    let (Some(parent), Some(leaf)) = (target.parent(), target.file_name()) else {
        return Err(ImageError::io("taking a snapshot")(io::Error::other(
            "bad target",
        )));
    };
    let path = parent.join(staging_name("copy", &leaf.to_string_lossy()));
    sys::btrfs::snapshot_subvolume(source, &path).map_err(ImageError::io(format!(
        "taking a btrfs snapshot of {}",
        source.display()
    )))?;
    Staging {
        path,
        subvolume: true,
        snapshot: true,
        committed: false,
    }
    .commit(target)
}

/// [`copy_tree_to`]; with `use_spare` (for an image, which changes rarely), a btrfs
/// snapshot is the image's spare root when a current one waits, and the next spare is made
/// in the background (see [`super::spare`]).
fn copy_tree(
    source: &Path,
    target: &Path,
    durable: bool,
    use_spare: bool,
    prepare: impl FnOnce(&mut TreeWriter) -> Result<(), ImageError>,
) -> Result<&'static str, ImageError> {
    let (parent, leaf) = match (target.parent(), target.file_name()) {
        (Some(parent), Some(leaf)) => (parent, leaf.to_string_lossy().into_owned()),
        _ => {
            return Err(ImageError::io("copying an image")(io::Error::other(
                "bad target",
            )));
        }
    };
    fs::create_dir_all(parent).map_err(ImageError::io(format!("creating {}", parent.display())))?;
    let snapshot = || {
        if use_spare && let Some(spare) = Staging::spare(parent, &leaf, source) {
            return Some(spare);
        }
        Staging::snapshot(parent, "copy", &leaf, source)
    };
    if sys::btrfs::is_subvolume(source)
        && let Some(staging) = snapshot()
    {
        let mut tree = TreeWriter::new(staging.open_existing()?);
        prepare(&mut tree)?;
        if durable {
            tree.sync()
                .map_err(ImageError::io("syncing the snapshot"))?;
        }
        tree.finish()
            .map_err(ImageError::io("setting directory times"))?;
        staging.commit(target)?;
        if use_spare {
            super::spare::replenish(parent, source, parent.join(staging_name("spare", &leaf)));
        }
        return Ok("btrfs snapshot");
    }
    let staging = Staging::create(parent, "copy", &leaf)?;
    let mut tree = TreeWriter::new(staging.open()?);
    let source_fd = open_directory(source)?;
    fs_import::copy_tree(source_fd, &mut tree)?;
    prepare(&mut tree)?;
    if durable {
        tree.sync().map_err(ImageError::io("syncing the copy"))?;
    }
    tree.finish()
        .map_err(ImageError::io("setting directory times"))?;
    let kind = if staging.subvolume || is_xfs(parent) {
        "reflink copy"
    } else {
        "copy"
    };
    staging.commit(target)?;
    Ok(kind)
}

/// Deletes the staging directories (`.#berth-*`) in `dir` that a crash left behind.
pub fn clean_staging(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut cleaned = 0;
    for entry in entries.flatten() {
        let stale = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(STAGING_PREFIX));
        if stale && is_mount_point(&entry.path()) {
            // A volume a crash left mounted (a machine's, being read): deleting below it would
            // delete the machine's files.
            let path = entry.path();
            tracing::warn!(
                "stale staging directory {} is a mount point; not removing it: unmount it \
                 ('umount {}'), then restart berthd",
                path.display(),
                path.display()
            );
        } else if stale {
            match remove_tree(&entry.path()) {
                Ok(()) => cleaned += 1,
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove stale staging directory")
                }
            }
        }
    }
    cleaned
}

/// Removes a directory tree so that it is never seen half-deleted: renamed to a hidden name
/// first, then deleted (a crash in between leaves it for [`clean_staging`]).
pub fn discard(path: &Path) -> Result<(), ImageError> {
    let (Some(parent), Some(leaf)) = (path.parent(), path.file_name()) else {
        return Err(ImageError::io("removing a tree")(io::Error::other(
            "bad path",
        )));
    };
    let doomed = parent.join(staging_name("remove", &leaf.to_string_lossy()));
    fs::rename(path, &doomed).map_err(ImageError::io(format!(
        "moving {} out of the way",
        path.display()
    )))?;
    remove_tree(&doomed).map_err(ImageError::io(format!(
        "deleting {} (already invisible; berthd retries at its next start)",
        doomed.display()
    )))
}

impl Pool {
    fn record_path(&self, name: &str, version: Option<&str>) -> PathBuf {
        match version {
            None => self.records.join(format!("{name}.json")),
            Some(v) => self
                .records
                .join(format!("{name}.v"))
                .join(format!("{name}_{v}.json")),
        }
    }

    fn read_record(&self, name: &str, version: Option<&str>) -> Option<ImageRecord> {
        let text = fs::read(self.record_path(name, version)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn write_record(
        &self,
        name: &str,
        version: Option<&str>,
        record: &ImageRecord,
    ) -> Result<(), ImageError> {
        let path = self.record_path(name, version);
        let dir = path.parent().unwrap_or(&self.records).to_owned();
        let context = || format!("writing the image record in {}", dir.display());
        fs::create_dir_all(&dir).map_err(ImageError::io(context()))?;
        // One temporary file per record: two versions of a name may be imported at once.
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
        let tmp = dir.join(format!(".{}.tmp", file.as_deref().unwrap_or(name)));
        let text = serde_json::to_vec_pretty(record).map_err(io::Error::other);
        text.and_then(|text| fs::write(&tmp, text))
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(ImageError::io(context()))
    }
}

/// A hidden directory an import writes into; deleted on drop unless committed.
#[derive(Debug)]
pub(super) struct Staging {
    path: PathBuf,
    subvolume: bool,
    /// A snapshot of an existing subvolume, not a new, empty one.
    snapshot: bool,
    committed: bool,
}

impl Staging {
    fn create(pool: &Path, purpose: &str, name: &str) -> Result<Self, ImageError> {
        let path = pool.join(staging_name(purpose, name));
        let context = || format!("creating {}", path.display());
        let subvolume = sys::btrfs::is_btrfs(pool).map_err(ImageError::io(context()))?;
        if subvolume {
            sys::btrfs::create_subvolume(&path).map_err(ImageError::io(context()))?;
        } else {
            fs::create_dir(&path).map_err(ImageError::io(context()))?;
        }
        Ok(Self {
            path,
            subvolume,
            snapshot: false,
            committed: false,
        })
    }

    /// A staging snapshot of subvolume `source`, when `pool` is on the same btrfs.
    fn snapshot(pool: &Path, purpose: &str, name: &str, source: &Path) -> Option<Self> {
        let path = pool.join(staging_name(purpose, name));
        match sys::btrfs::snapshot_subvolume(source, &path) {
            Ok(()) => Some(Self {
                path,
                subvolume: true,
                snapshot: true,
                committed: false,
            }),
            Err(e) => {
                tracing::debug!(source = %source.display(), error = %e, "no btrfs snapshot; copying");
                None
            }
        }
    }

    /// The spare root of subvolume `source` in `pool`, claimed under a staging name.
    fn spare(pool: &Path, name: &str, source: &Path) -> Option<Self> {
        let path = pool.join(staging_name("copy", name));
        super::spare::take(pool, source, &path).then_some(Self {
            path,
            subvolume: true,
            snapshot: true,
            committed: false,
        })
    }

    fn open_existing(&self) -> Result<OwnedFd, ImageError> {
        open_directory(&self.path)
    }

    fn open(&self) -> Result<OwnedFd, ImageError> {
        let fd = open_directory(&self.path)?;
        // The default for a tree without a "./" entry; one with it overrides this.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))
            .map_err(|e| ImageError::io("setting the image's mode")(e.into()))?;
        Ok(fd)
    }

    fn commit(mut self, target: &Path) -> Result<(), ImageError> {
        let cwd = rustix::fs::CWD;
        match rustix::fs::renameat_with(cwd, &self.path, cwd, target, RenameFlags::NOREPLACE) {
            Ok(()) => {
                self.committed = true;
                Ok(())
            }
            Err(Errno::EXIST) => Err(ImageError::Exists(
                target
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            )),
            Err(e) => Err(ImageError::io(format!(
                "renaming into {}",
                target.display()
            ))(e.into())),
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if let Err(e) = remove_tree(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove staging directory");
        }
    }
}

/// Opens the directory `path` (not through a symlink at its end) for reading.
pub(super) fn open_directory(path: &Path) -> Result<OwnedFd, ImageError> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ImageError::io(format!("opening {}", path.display()))(e.into()))
}

/// Whether something is mounted on `path` (statx's STATX_ATTR_MOUNT_ROOT; a btrfs subvolume
/// has a device number of its own but is no mount); before Linux 5.8, a device number other
/// than its parent's on anything but a subvolume.
fn is_mount_point(path: &Path) -> bool {
    use rustix::fs::{AtFlags, StatxAttributes, StatxFlags};
    match rustix::fs::statx(
        rustix::fs::CWD,
        path,
        AtFlags::NO_AUTOMOUNT | AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::empty(),
    ) {
        Ok(st) if st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) => {
            st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
        }
        Ok(_) => {
            use std::os::unix::fs::MetadataExt;
            let device = |p: &Path| p.metadata().map(|m| m.dev()).ok();
            device(path) != path.parent().and_then(device) && !sys::btrfs::is_subvolume(path)
        }
        Err(Errno::NOENT) => false,
        Err(_) => true,
    }
}

/// Whether `path` is on xfs (where copy_file_range shares file data).
fn is_xfs(path: &Path) -> bool {
    const XFS_SUPER_MAGIC: u64 = 0x5846_5342;
    #[allow(clippy::unnecessary_cast)] // f_type's type differs between libcs
    rustix::fs::statfs(path).is_ok_and(|st| st.f_type as u64 == XFS_SUPER_MAGIC)
}

fn staging_name(purpose: &str, name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{STAGING_PREFIX}{purpose}-{name}-{}-{n}",
        std::process::id()
    )
}

/// Deletes a tree without following symlinks (std's remove_dir_all is safe against that);
/// btrfs subvolumes are directories that root may rmdir once empty.
pub(super) fn remove_tree(path: &Path) -> io::Result<()> {
    // A subvolume (an image or a machine's snapshot on btrfs) goes in one ioctl instead of a
    // walk over every file; one that holds other subvolumes is walked.
    if crate::sys::btrfs::is_subvolume(path) && crate::sys::btrfs::delete_subvolume(path).is_ok() {
        return Ok(());
    }
    // A staged file (a volume's copy for a snapshot) is no tree.
    if fs::symlink_metadata(path).is_ok_and(|m| !m.is_dir()) {
        return fs::remove_file(path);
    }
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Whether [`Pool::info`] finds the size of an image without a record: `berth images`
/// shows it; a machine's creation and the lineage checks don't need it.
#[derive(Clone, Copy)]
enum Size {
    Walk,
    Skip,
}

/// Disk usage of a tree (like `du -s`), for images berth has no record of.
fn disk_usage(path: &Path) -> u64 {
    use std::collections::HashSet;
    use std::os::unix::fs::MetadataExt;
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            total += meta.blocks() * 512;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    total
}

fn modified_usec(path: &Path) -> u64 {
    path.metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn now_usec() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
