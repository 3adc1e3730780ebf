//! `berth rename`: a stopped machine under a new name.
//!
//! What is named after the machine moves with it: its definition, its root directory, its
//! volume file and its snapshots. Its hostname, machine-id, UID range, addresses and
//! everything else stay; so does whatever the guest keeps inside its root.

use std::path::{Path, PathBuf};

use rustix::fs::{CWD, RenameFlags};
use rustix::io::Errno;

use super::{Definition, MachineError, Machines};

impl Machines {
    /// Renames stopped machine `name` to `new_name`: all or nothing. The caller checks that it
    /// is stopped. Returns the renamed definition.
    pub fn rename(&self, name: &str, new_name: &str) -> Result<Definition, MachineError> {
        crate::name::validate_machine(new_name)?;
        if name == new_name {
            return Err(MachineError::InvalidArgument(format!(
                "machine '{name}' already has that name; give another one"
            )));
        }
        let _guard = self.lock()?;
        let mut definition = self.get(name)?;
        if self.definition_path(new_name).exists()
            || self.root_of(new_name).symlink_metadata().is_ok()
        {
            return Err(MachineError::Exists(new_name.to_owned()));
        }
        let mut moves = vec![(self.root_of(name), self.root_of(new_name))];
        if let Some((path, size)) = &definition.volume {
            let renamed = path.with_file_name(format!("{new_name}.ext4"));
            moves.push((path.clone(), renamed.clone()));
            definition.volume = Some((renamed, *size));
        }
        moves.extend(self.snapshots_moves(name, new_name));
        let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
        for (from, to) in moves {
            if let Err(e) = move_noreplace(&from, &to) {
                undo(&moved);
                return Err(match e {
                    Errno::EXIST => MachineError::Exists(new_name.to_owned()),
                    e => MachineError::Io {
                        context: format!("renaming {} to {}", from.display(), to.display()),
                        source: e.into(),
                    },
                });
            }
            moved.push((from, to));
        }
        definition.name = new_name.to_owned();
        let old_definition = self.definition_path(name);
        let written = self.write_definition(&definition).and_then(|()| {
            std::fs::remove_file(&old_definition).map_err(|source| {
                let _ = std::fs::remove_file(self.definition_path(new_name));
                MachineError::Io {
                    context: format!("removing {}", old_definition.display()),
                    source,
                }
            })
        });
        if let Err(e) = written {
            undo(&moved);
            return Err(e);
        }
        Ok(definition)
    }
}

fn move_noreplace(from: &Path, to: &Path) -> Result<(), Errno> {
    rustix::fs::renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE)
}

/// Moves back what a failed rename moved, last first.
fn undo(moved: &[(PathBuf, PathBuf)]) {
    for (from, to) in moved.iter().rev() {
        if let Err(e) = move_noreplace(to, from) {
            tracing::error!(from = %to.display(), to = %from.display(), error = %e, "cannot undo a rename");
        }
    }
}
