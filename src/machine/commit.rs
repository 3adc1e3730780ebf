//! `berth commit`: a stopped machine's root stored as a new image, with its lineage.
//!
//! The image records the machine's own image as its base (name, version and digest, as the
//! machine's definition has them), so `berth images --tree` shows where it came from and
//! `berth list --outdated` tells when that base has a newer version. What makes the machine
//! itself (hostname, machine-id, random seed, journal) doesn't travel: see
//! [`crate::image::identity`].

use super::{Definition, MachineError, Machines, Mode, volume};
use crate::image::{AppDefaults, BaseImage, ImageInfo, ImageRecord, ImageRef, ImportReport};

impl Machines {
    /// Stores stopped machine `name`'s root as image `target` (`NAME` or `NAME@VERSION`).
    /// An app machine's command, user, working directory and environment become the image's
    /// defaults. The caller checks that the machine is stopped.
    pub fn commit(&self, name: &str, target: &str) -> Result<ImportReport, MachineError> {
        // No rebase or clone swaps or copies the root meanwhile.
        let _guard = self.lock()?;
        let definition = self.get(name)?;
        let base = self.base_of(&definition);
        let record = ImageRecord {
            origin: format!("machine:{name}"),
            base: Some(BaseImage {
                name: definition.image.clone(),
                version: definition.image_version.clone(),
                digest: definition.image_digest.clone(),
            }),
            app: app_defaults(&definition, base.as_ref()),
            ..ImageRecord::default()
        };
        let base_path = base.as_ref().map(|image| image.path.as_path());
        match &definition.volume {
            None => {
                Ok(self
                    .pool
                    .import_machine_root(target, &self.root_of(name), base_path, record)?)
            }
            Some((path, _)) => {
                let mounted = volume::Mounted::read_only(
                    path,
                    self.roots
                        .join(format!(".#berth-commit-{name}-{}", std::process::id())),
                )?;
                let report =
                    self.pool
                        .import_machine_root(target, &mounted.dir, base_path, record)?;
                mounted.finish()?;
                Ok(report)
            }
        }
    }

    /// The image the machine was made from, if it is still there as it was: the same
    /// version with the same digest.
    fn base_of(&self, definition: &Definition) -> Option<ImageInfo> {
        let reference = ImageRef::new(&definition.image, &definition.image_version).ok()?;
        self.pool.get(&reference.to_string()).ok().filter(|image| {
            image.version == definition.image_version
                && image.record.digest == definition.image_digest
        })
    }
}

/// The app defaults of the image made from `definition`'s root: an app machine's own
/// command and settings (over its base's labels); a booted machine keeps its base's.
fn app_defaults(definition: &Definition, base: Option<&ImageInfo>) -> Option<AppDefaults> {
    let base_app = base.and_then(|image| image.record.app.clone());
    match &definition.mode {
        Mode::Boot => base_app,
        Mode::App(command) => Some(AppDefaults {
            entrypoint: Vec::new(),
            cmd: command.clone(),
            env: definition
                .app
                .environment
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect(),
            working_dir: definition.app.working_directory.clone(),
            user: definition.app.user.clone(),
            labels: base_app.map(|app| app.labels).unwrap_or_default(),
        }),
    }
}
