//! Moving a machine to another version of its image (`berth rebase`), cloning a machine
//! (`berth clone`), and telling which machines' images have newer versions
//! (`berth list --outdated`).
//!
//! A rebase replaces only the machine's root: its definition (name, mode, command, hostname,
//! machine-id, UID range, binds, properties, timezone and locale settings) is kept, and so
//! is everything bind-mounted from outside the root. Whatever the machine changed inside its
//! root is replaced by the new image's tree.

use std::fs;
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, RenameFlags};

use super::{Definition, MachineError, Machines, mtime_of, new_machine_id, now_usec, volume};
use crate::image::{self, ImageInfo, ImageRef, version};
use crate::runtime::guest_etc;

/// A machine whose image, or an image its image was built from, has a newer version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outdated {
    pub machine: String,
    /// What it was made from: `NAME@VERSION`.
    pub image: String,
    /// The newer image: `NAME@VERSION`.
    pub newer: String,
    /// Why, in words.
    pub reason: String,
}

impl Machines {
    /// Replaces stopped machine `name`'s root with a fresh copy of its image at version `to`
    /// (default: the newest). The caller checks that it is stopped. Returns the updated
    /// definition, how the root was made, and warnings about the guest's /etc.
    pub fn rebase(
        &self,
        name: &str,
        to: Option<&str>,
    ) -> Result<(Definition, &'static str, Vec<String>), MachineError> {
        let _guard = self.lock()?;
        let mut definition = self.get(name)?;
        let target = match to {
            Some(v) => ImageRef::new(&definition.image, v)?.to_string(),
            None => definition.image.clone(),
        };
        let image = self.pool.get(&target)?;
        if image.version == definition.image_version
            && image.record.digest == definition.image_digest
        {
            return Err(MachineError::InvalidArgument(format!(
                "machine '{name}' is already made from {}; nothing to do ('berth images' lists \
                 the versions there are; 'berth rebase {name} --to VERSION' picks one)",
                image.reference()
            )));
        }
        let mut warnings = Vec::new();
        let kind = self.replace_root(&definition, &image, &mut warnings)?;
        definition.image_version.clone_from(&image.version);
        definition.image_digest.clone_from(&image.record.digest);
        definition.storage = kind.to_owned();
        self.write_definition(&definition)?;
        Ok((definition, kind, warnings))
    }

    /// Makes a new root for `definition` from `image` and swaps it in; the old root is
    /// deleted only once the new one is in place.
    fn replace_root(
        &self,
        definition: &Definition,
        image: &ImageInfo,
        warnings: &mut Vec<String>,
    ) -> Result<&'static str, MachineError> {
        let name = &definition.name;
        let prepare = root_preparation(definition, warnings);
        match &definition.volume {
            None => {
                let staging = self.staging_root("rebase", name);
                let kind = self
                    .pool
                    .copy_image(&image.reference(), &staging, true, prepare)?;
                self.swap_in_root(name, &staging)?;
                Ok(kind)
            }
            Some((path, size)) => {
                let new = path.with_extension("ext4.new");
                let _ = fs::remove_file(&new);
                volume::create(&new, *size, name)?;
                let filled = (|| {
                    let mounted = volume::Mounted::new(&new, self.staging_root("rebase", name))?;
                    self.pool
                        .copy_image_into(&image.reference(), &mounted.dir, prepare)?;
                    mounted.finish()?;
                    fs::rename(&new, path).map_err(|source| MachineError::Io {
                        context: format!("replacing {}", path.display()),
                        source,
                    })
                })();
                if filled.is_err() {
                    let _ = fs::remove_file(&new);
                }
                filled.map(|()| "volume")
            }
        }
    }

    /// A staging path in the roots directory for a new root of machine `name`, which berthd's
    /// start-up cleanup removes if a crash leaves it.
    pub(super) fn staging_root(&self, purpose: &str, name: &str) -> PathBuf {
        self.roots
            .join(format!(".#berth-{purpose}-{name}-{}", std::process::id()))
    }

    /// Swaps the tree at `staging` in as stopped machine `name`'s root, atomically (the
    /// machine has either its old root or its new one), then deletes the old root.
    pub(super) fn swap_in_root(&self, name: &str, staging: &Path) -> Result<(), MachineError> {
        let root = self.root_of(name);
        if let Err(e) = rustix::fs::renameat_with(CWD, staging, CWD, &root, RenameFlags::EXCHANGE) {
            let _ = image::discard(staging);
            return Err(MachineError::Io {
                context: format!("swapping in the new root of machine '{name}'"),
                source: e.into(),
            });
        }
        image::discard(staging)?;
        Ok(())
    }

    /// Copies stopped machine `source` as new machine `target`: the same image record,
    /// mode, command, binds, properties and settings, with a UID range, machine-id and
    /// hostname of its own (`hostname`, or `target`). Returns the new definition and how its
    /// root was made ("btrfs snapshot", "reflink copy" or "copy").
    pub fn clone_machine(
        &self,
        source: &str,
        target: &str,
        hostname: &str,
    ) -> Result<(Definition, &'static str), MachineError> {
        crate::name::validate_machine(target)?;
        let hostname = if hostname.is_empty() {
            target.to_owned()
        } else {
            crate::name::validate_hostname("host", hostname)?;
            hostname.to_owned()
        };
        let _guard = self.lock()?;
        let original = self.get(source)?;
        if original.volume.is_some() {
            return Err(MachineError::InvalidArgument(format!(
                "machine '{source}' runs on a volume of its own, which berth does not clone; \
                 create a new machine from its image instead ('berth create {target} --image \
                 {}')",
                original.image
            )));
        }
        if self.definition_path(target).exists() || self.root_of(target).symlink_metadata().is_ok()
        {
            return Err(MachineError::Exists(target.to_owned()));
        }
        let used: Vec<_> = self.list()?.iter().map(|d| d.uid_range).collect();
        let uid_range = super::UidRange::allocate(&used).ok_or(MachineError::NoFreeUidRange)?;
        let mut definition = Definition {
            name: target.to_owned(),
            hostname,
            machine_id: new_machine_id()?,
            uid_range,
            created_usec: now_usec(),
            ephemeral: false,
            ..original
        };
        let identity = identity_files(&definition);
        let created = definition.created_usec;
        let root = self.root_of(target);
        let kind = image::copy_tree_to(&self.root_of(source), &root, true, |tree| {
            super::write_identity(tree, &identity, created)
        })?;
        definition.storage = kind.to_owned();
        if let Err(e) = self.write_definition(&definition) {
            let _ = image::discard(&root);
            return Err(e);
        }
        Ok((definition, kind))
    }

    /// The machines made from an image version that is no longer the newest, or from an
    /// image built on a base that has a newer version now.
    pub fn outdated(&self) -> Result<Vec<Outdated>, MachineError> {
        let mut outdated = Vec::new();
        for d in self.list()? {
            let made_from = |name: &str, version: &str| {
                if version.is_empty() {
                    name.to_owned()
                } else {
                    format!("{name}@{version}")
                }
            };
            let image = made_from(&d.image, &d.image_version);
            let newer_than = |name: &str, version: &str| {
                let newest = self.pool.versions(name).into_iter().next()?;
                (version::compare(&newest, version).is_gt()).then_some(newest)
            };
            if !d.image_version.is_empty()
                && let Some(newest) = newer_than(&d.image, &d.image_version)
            {
                outdated.push(Outdated {
                    machine: d.name.clone(),
                    image: image.clone(),
                    newer: format!("{}@{newest}", d.image),
                    reason: format!("{}@{newest} is newer", d.image),
                });
                continue;
            }
            // The image's ancestors: each base as it was when its child was built.
            let mut current = self.pool.get(&image).ok();
            let mut depth = 0;
            while let Some(info) = current.take() {
                let Some(base) = info.record.base.clone() else {
                    break;
                };
                if !base.version.is_empty()
                    && let Some(newest) = newer_than(&base.name, &base.version)
                {
                    let (made, remedy) = match &info.record.build {
                        Some(_) => (
                            "built",
                            format!("rebuild {}, then 'berth rebase {}'", info.name, d.name),
                        ),
                        // Committed from a machine: nothing can remake it by itself.
                        None => (
                            "made",
                            format!(
                                "commit a machine made from {}@{newest} as a new version of {}, \
                                 then 'berth rebase {}'",
                                base.name, info.name, d.name
                            ),
                        ),
                    };
                    outdated.push(Outdated {
                        machine: d.name.clone(),
                        image: image.clone(),
                        newer: format!("{}@{newest}", base.name),
                        reason: format!(
                            "{} was {made} from {}@{}, and {}@{newest} is newer ({remedy})",
                            info.reference(),
                            base.name,
                            base.version,
                            base.name,
                        ),
                    });
                    break;
                }
                depth += 1;
                if depth > 32 {
                    break;
                }
                current = self.pool.get(&made_from(&base.name, &base.version)).ok();
            }
        }
        Ok(outdated)
    }
}

/// What goes into a machine's new root (from a rebase or a restore): its identity files and
/// its guest /etc settings; `warnings` gets what the guest lacks.
pub(super) fn root_preparation<'a>(
    definition: &Definition,
    warnings: &'a mut Vec<String>,
) -> impl FnOnce(&mut image::tree::TreeWriter) -> Result<(), image::ImageError> + 'a {
    let created = now_usec();
    let identity = identity_files(definition);
    let etc = definition.guest_etc();
    move |tree| {
        super::write_identity(tree, &identity, created)?;
        *warnings = guest_etc::apply(tree, &etc, mtime_of(created));
        Ok(())
    }
}

/// The guest files that carry a machine's identity.
pub(super) fn identity_files(definition: &Definition) -> [(&'static str, String, u32); 2] {
    [
        ("etc/hostname", format!("{}\n", definition.hostname), 0o644),
        (
            "etc/machine-id",
            format!("{}\n", definition.machine_id),
            0o444,
        ),
    ]
}
