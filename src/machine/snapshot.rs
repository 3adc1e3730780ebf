//! Machine snapshots (`berth snapshot create|list|restore|rm`): a machine's root as it was,
//! to go back to.
//!
//! A snapshot of a machine whose root is a directory lives in the roots directory's
//! `.snapshots/MACHINE/SNAPSHOT` (so it is a btrfs snapshot where the root is a subvolume, a
//! reflink or plain copy elsewhere); one of a machine on a volume of its own is a copy of
//! the volume file, `.snapshots/MACHINE/SNAPSHOT.ext4` in the volumes directory (a reflink
//! where that filesystem shares data, holes kept elsewhere). What it was made from is in
//! the roots directory's `.snapshots/MACHINE/.SNAPSHOT.info`, written once the snapshot is
//! complete: a snapshot without one is a leftover of a crash. None of these names can be a
//! machine's or a snapshot's (they don't start with '.').
//!
//! Restoring replaces the machine's root (or volume) with a copy of the snapshot (which
//! stays, to be restored again) and writes the machine's current identity and guest settings
//! into it, as a rebase does; the definition records the snapshot's image version again.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{Definition, MachineError, Machines, now_usec, volume};
use crate::image;

/// The directory, in the roots directory, that holds every machine's snapshots.
const SNAPSHOT_DIR: &str = ".snapshots";

/// A machine's snapshot, as `berth snapshot list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub name: String,
    pub created_usec: u64,
    /// The machine's image when the snapshot was taken (a restore records it again).
    pub image: String,
    pub image_version: String,
    pub image_digest: String,
    /// "btrfs snapshot", "reflink copy" or "copy".
    pub storage: String,
}

impl Snapshot {
    fn to_info(&self) -> String {
        format!(
            "Created={}\nImage={}\nImageVersion={}\nImageDigest={}\nStorage={}\n",
            self.created_usec, self.image, self.image_version, self.image_digest, self.storage
        )
    }

    fn from_info(name: &str, text: &str) -> Option<Self> {
        let field = |key: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
        };
        Some(Self {
            name: name.to_owned(),
            created_usec: field("Created")?.parse().ok()?,
            image: field("Image")?,
            image_version: field("ImageVersion").unwrap_or_default(),
            image_digest: field("ImageDigest").unwrap_or_default(),
            storage: field("Storage").unwrap_or_default(),
        })
    }

    /// The image as `NAME@VERSION` (or `NAME` for an unversioned one).
    pub fn image_reference(&self) -> String {
        if self.image_version.is_empty() {
            self.image.clone()
        } else {
            format!("{}@{}", self.image, self.image_version)
        }
    }
}

impl Machines {
    /// Where machine `machine`'s snapshots' info files and trees are.
    fn snapshots_dir(&self, machine: &str) -> PathBuf {
        self.roots.join(SNAPSHOT_DIR).join(machine)
    }

    /// Where the volume files of snapshots of machine `machine` (on a volume) are.
    fn volume_snapshots_dir(&self, machine: &str) -> PathBuf {
        self.volumes.join(SNAPSHOT_DIR).join(machine)
    }

    fn volume_snapshot(&self, machine: &str, snapshot: &str) -> PathBuf {
        self.volume_snapshots_dir(machine)
            .join(format!("{snapshot}.ext4"))
    }

    fn info_path(&self, machine: &str, snapshot: &str) -> PathBuf {
        self.snapshots_dir(machine)
            .join(format!(".{snapshot}.info"))
    }

    /// Whether snapshot `snapshot` of `machine` has its tree or volume file.
    fn is_stored(&self, machine: &str, snapshot: &str) -> bool {
        self.snapshots_dir(machine).join(snapshot).is_dir()
            || self.volume_snapshot(machine, snapshot).is_file()
    }

    /// Machine `name`'s snapshots, oldest first.
    pub fn snapshots(&self, name: &str) -> Result<Vec<Snapshot>, MachineError> {
        self.get(name)?;
        let dir = self.snapshots_dir(name);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(MachineError::Io {
                    context: format!("reading {}", dir.display()),
                    source,
                });
            }
        };
        let mut snapshots: Vec<Snapshot> = entries
            .flatten()
            .filter_map(|entry| {
                let file = entry.file_name();
                let snapshot = file.to_str()?.strip_prefix('.')?.strip_suffix(".info")?;
                if !self.is_stored(name, snapshot) {
                    return None;
                }
                let text = fs::read_to_string(entry.path()).ok()?;
                Snapshot::from_info(snapshot, &text)
            })
            .collect();
        snapshots.sort_by(|a, b| (a.created_usec, &a.name).cmp(&(b.created_usec, &b.name)));
        Ok(snapshots)
    }

    fn find_snapshot(&self, name: &str, snapshot: &str) -> Result<Snapshot, MachineError> {
        crate::name::validate("snapshot", snapshot)?;
        self.snapshots(name)?
            .into_iter()
            .find(|s| s.name == snapshot)
            .ok_or_else(|| {
                MachineError::InvalidArgument(format!(
                    "machine '{name}' has no snapshot named '{snapshot}'; 'berth snapshot list \
                     {name}' shows the ones it has"
                ))
            })
    }

    /// Takes a snapshot of machine `name` (named `snapshot`, or `snapN` when empty). A
    /// running machine (`running`) is snapshotted only where that is atomic: a root that is
    /// a btrfs subvolume. Returns the snapshot.
    pub fn take_snapshot(
        &self,
        name: &str,
        snapshot: &str,
        running: bool,
    ) -> Result<Snapshot, MachineError> {
        if !snapshot.is_empty() {
            crate::name::validate("snapshot", snapshot)?;
        }
        let _guard = self.lock()?;
        let definition = self.get(name)?;
        let root = self.root_of(name);
        let atomic = definition.volume.is_none() && crate::sys::btrfs::is_subvolume(&root);
        if running && !atomic {
            let why = if definition.volume.is_some() {
                "it runs on a volume of its own"
            } else {
                "its root is not a btrfs subvolume"
            };
            return Err(MachineError::InvalidArgument(format!(
                "machine '{name}' is running and {why}, so a snapshot would be a copy of files \
                 changing under it; stop it first ('berth stop {name}'), then take the snapshot"
            )));
        }
        let existing = self.snapshots(name)?;
        let snapshot = if snapshot.is_empty() {
            next_free_name(&existing)
        } else {
            snapshot.to_owned()
        };
        let tree = self.snapshots_dir(name).join(&snapshot);
        let volume_copy = self.volume_snapshot(name, &snapshot);
        if existing.iter().any(|s| s.name == snapshot)
            || tree.symlink_metadata().is_ok()
            || volume_copy.symlink_metadata().is_ok()
        {
            return Err(MachineError::InvalidArgument(format!(
                "machine '{name}' already has a snapshot named '{snapshot}'; choose another \
                 name, or remove it first ('berth snapshot rm {name} {snapshot}')"
            )));
        }
        create_dir(&self.snapshots_dir(name))?;
        let storage = match &definition.volume {
            Some((volume, _)) => {
                create_dir(&self.volume_snapshots_dir(name))?;
                copy_volume(volume, &volume_copy)?
            }
            None if running => {
                image::snapshot_to(&root, &tree)?;
                "btrfs snapshot"
            }
            None => image::copy_tree_to(&root, &tree, true, |_| Ok(()))?,
        };
        let taken = Snapshot {
            name: snapshot,
            created_usec: now_usec(),
            image: definition.image,
            image_version: definition.image_version,
            image_digest: definition.image_digest,
            storage: storage.to_owned(),
        };
        if let Err(e) = write_atomically(&self.info_path(name, &taken.name), &taken.to_info()) {
            if tree.is_dir() {
                let _ = image::discard(&tree);
            }
            let _ = fs::remove_file(&volume_copy);
            return Err(e);
        }
        Ok(taken)
    }

    /// Replaces stopped machine `name`'s root (or volume) with a copy of its snapshot
    /// `snapshot` (which stays), with the machine's current identity and guest settings
    /// written into it. The caller checks that it is stopped. Returns the updated
    /// definition, how the root was made, and warnings about the guest's /etc.
    pub fn restore_snapshot(
        &self,
        name: &str,
        snapshot: &str,
    ) -> Result<(Definition, &'static str, Vec<String>), MachineError> {
        let _guard = self.lock()?;
        let mut definition = self.get(name)?;
        let taken = self.find_snapshot(name, snapshot)?;
        let tree = self.snapshots_dir(name).join(snapshot);
        let copy = self.volume_snapshot(name, snapshot);
        let mut warnings = Vec::new();
        let prepare = super::rebase::root_preparation(&definition, &mut warnings);
        let kind = match &definition.volume {
            None if tree.is_dir() => {
                let staging = self.staging_root("restore", name);
                let kind = image::copy_tree_to(&tree, &staging, true, prepare)?;
                self.swap_in_root(name, &staging)?;
                kind
            }
            Some((volume, _)) if copy.is_file() => {
                let new = volume.with_extension("ext4.new");
                let _ = fs::remove_file(&new);
                let restored = (|| {
                    let kind = copy_volume(&copy, &new)?;
                    let mounted = volume::Mounted::new(&new, self.staging_root("restore", name))?;
                    image::prepare_tree(&mounted.dir, prepare)?;
                    mounted.finish()?;
                    fs::rename(&new, volume).map_err(|source| MachineError::Io {
                        context: format!("replacing {}", volume.display()),
                        source,
                    })?;
                    Ok::<_, MachineError>(kind)
                })();
                if restored.is_err() {
                    let _ = fs::remove_file(&new);
                }
                restored?
            }
            _ => {
                return Err(MachineError::InvalidArgument(format!(
                    "snapshot '{snapshot}' of machine '{name}' is of a root stored otherwise \
                     (a directory, or a volume of its own) than the machine's now; it cannot \
                     be restored onto it"
                )));
            }
        };
        definition.image = taken.image;
        definition.image_version = taken.image_version;
        definition.image_digest = taken.image_digest;
        if definition.volume.is_none() {
            kind.clone_into(&mut definition.storage);
        }
        self.write_definition(&definition)?;
        Ok((definition, kind, warnings))
    }

    /// Removes machine `name`'s snapshot `snapshot`.
    pub fn remove_snapshot(&self, name: &str, snapshot: &str) -> Result<(), MachineError> {
        let _guard = self.lock()?;
        self.find_snapshot(name, snapshot)?;
        let tree = self.snapshots_dir(name).join(snapshot);
        if tree.is_dir() {
            image::discard(&tree)?;
        }
        remove_if_there(&self.volume_snapshot(name, snapshot))?;
        remove_if_there(&self.info_path(name, snapshot))
    }

    /// Removes every snapshot of machine `name` (when the machine goes).
    pub(super) fn remove_snapshots(&self, name: &str) -> Result<(), MachineError> {
        for dir in [self.snapshots_dir(name), self.volume_snapshots_dir(name)] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    image::discard(&entry.path())?;
                }
            }
            fs::remove_dir_all(&dir).map_err(|source| MachineError::Io {
                context: format!("removing {}", dir.display()),
                source,
            })?;
        }
        Ok(())
    }

    /// What moves when machine `name` is renamed to `new_name`: each of its snapshot
    /// directories that exists, with where it goes.
    pub(super) fn snapshots_moves(&self, name: &str, new_name: &str) -> Vec<(PathBuf, PathBuf)> {
        [
            (self.snapshots_dir(name), self.snapshots_dir(new_name)),
            (
                self.volume_snapshots_dir(name),
                self.volume_snapshots_dir(new_name),
            ),
        ]
        .into_iter()
        .filter(|(from, _)| from.is_dir())
        .collect()
    }

    /// Deletes what a crash left of snapshots being taken or removed: staging trees and
    /// files, trees and volume copies without their info file, info files without either.
    pub(super) fn clean_stale_snapshots(&self) -> usize {
        let mut cleaned = 0;
        for top in [&self.roots, &self.volumes] {
            let Ok(machines) = fs::read_dir(top.join(SNAPSHOT_DIR)) else {
                continue;
            };
            for machine in machines.flatten() {
                if let Some(machine) = machine.file_name().to_str() {
                    cleaned += self.clean_stale_snapshots_of(&top.join(SNAPSHOT_DIR), machine);
                }
            }
        }
        cleaned
    }

    fn clean_stale_snapshots_of(&self, snapshots: &Path, machine: &str) -> usize {
        let dir = snapshots.join(machine);
        let mut cleaned = image::clean_staging(&dir);
        let Ok(entries) = fs::read_dir(&dir) else {
            return cleaned;
        };
        for entry in entries.flatten() {
            let file = entry.file_name();
            let Some(file) = file.to_str() else { continue };
            let stale = match file.strip_prefix('.') {
                Some(info) => info
                    .strip_suffix(".info")
                    .is_some_and(|snapshot| !self.is_stored(machine, snapshot)),
                None => {
                    let snapshot = file.strip_suffix(".ext4").unwrap_or(file);
                    !self.info_path(machine, snapshot).exists()
                }
            };
            if !stale {
                continue;
            }
            let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                image::discard(&entry.path())
            } else {
                fs::remove_file(entry.path()).map_err(image::ImageError::io("removing"))
            };
            match removed {
                Ok(()) => cleaned += 1,
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a stale snapshot file")
                }
            }
        }
        cleaned
    }
}

fn create_dir(dir: &Path) -> Result<(), MachineError> {
    fs::create_dir_all(dir).map_err(|source| MachineError::Io {
        context: format!("creating {}", dir.display()),
        source,
    })
}

fn remove_if_there(path: &Path) -> Result<(), MachineError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(MachineError::Io {
            context: format!("removing {}", path.display()),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Copies volume file `source` to `target`, under a staging name until it is complete (a
/// copy cut short is never taken for a snapshot). Returns how it was stored.
fn copy_volume(source: &Path, target: &Path) -> Result<&'static str, MachineError> {
    let leaf = target
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let staging = target.with_file_name(format!(".#berth-copy-{leaf}"));
    let _ = fs::remove_file(&staging);
    let failed = |e: io::Error| MachineError::Io {
        context: format!("copying {} to {}", source.display(), target.display()),
        source: e,
    };
    let kind = image::tree::copy_whole_file(source, &staging).map_err(failed)?;
    if let Err(e) = fs::rename(&staging, target) {
        let _ = fs::remove_file(&staging);
        return Err(failed(e));
    }
    Ok(match kind {
        "reflink copy" => "reflink copy of the volume",
        _ => "copy of the volume",
    })
}

/// `snapN`, one past the highest N among the snapshots named so.
fn next_free_name(existing: &[Snapshot]) -> String {
    let next = existing
        .iter()
        .filter_map(|s| s.name.strip_prefix("snap")?.parse::<u32>().ok())
        .max()
        .map_or(0, |n| n + 1);
    format!("snap{next}")
}

fn write_atomically(path: &Path, text: &str) -> Result<(), MachineError> {
    let temporary = path.with_extension("info.new");
    let io_error = |source| MachineError::Io {
        context: format!("writing {}", path.display()),
        source,
    };
    fs::write(&temporary, text).map_err(io_error)?;
    fs::File::open(&temporary)
        .and_then(|f| f.sync_all())
        .map_err(io_error)?;
    fs::rename(&temporary, path).map_err(|source| {
        let _ = fs::remove_file(&temporary);
        io_error(source)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(name: &str) -> Snapshot {
        Snapshot {
            name: name.into(),
            created_usec: 1,
            image: "deb".into(),
            image_version: String::new(),
            image_digest: String::new(),
            storage: "copy".into(),
        }
    }

    #[test]
    fn info_round_trips() {
        let taken = Snapshot {
            name: "before-upgrade".into(),
            created_usec: 1_765_000_000_000_000,
            image: "deb".into(),
            image_version: "12.1".into(),
            image_digest: "sha256:ab".into(),
            storage: "btrfs snapshot".into(),
        };
        assert_eq!(
            Snapshot::from_info("before-upgrade", &taken.to_info()),
            Some(taken.clone())
        );
        assert_eq!(taken.image_reference(), "deb@12.1");
        assert_eq!(Snapshot::from_info("x", "Image=deb\n"), None);
    }

    #[test]
    fn unnamed_snapshots_count_up() {
        assert_eq!(next_free_name(&[]), "snap0");
        assert_eq!(
            next_free_name(&[snapshot("snap0"), snapshot("other"), snapshot("snap4")]),
            "snap5"
        );
    }
}
