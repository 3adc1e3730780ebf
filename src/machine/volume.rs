//! Per-machine storage volumes (`--storage volume --disk-size SIZE`): an ext4 filesystem in
//! an image file of its own, so a machine has its own journal (its fsyncs don't wait for a
//! neighbour's data) and a hard size limit. The volume is mounted only inside the machine's
//! own mount namespace while it runs, so nothing stays mounted on the host.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::MachineError;

/// Where volume files live.
pub const DEFAULT_VOLUME_DIR: &str = "/var/lib/berth/volumes";
/// The smallest volume: ext4 with a journal needs some room, and so does a root.
pub const MIN_SIZE: u64 = 64 << 20;

fn io_error(context: String) -> impl FnOnce(io::Error) -> MachineError {
    move |source| MachineError::Io { context, source }
}

/// Runs a tool (mkfs.ext4, mount, umount); its stderr becomes the error.
fn run(program: &str, args: &[&str]) -> Result<(), MachineError> {
    let output = crate::sys::process::command(program)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .map_err(io_error(format!(
            "running {program} (is {} installed?)",
            if program.starts_with("mkfs") {
                "e2fsprogs"
            } else {
                "util-linux"
            }
        )))?;
    if output.status.success() {
        return Ok(());
    }
    Err(MachineError::InvalidArgument(format!(
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

/// A new volume file of `size` bytes (sparse) with an empty ext4 filesystem labelled `label`.
pub fn create(path: &Path, size: u64, label: &str) -> Result<(), MachineError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_error(format!("creating {}", dir.display())))?;
    }
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_error(format!("creating {}", path.display())))?;
    let made = file
        .set_len(size)
        .map_err(io_error(format!("sizing {}", path.display())))
        .and_then(|()| {
            let label: String = label.chars().take(16).collect();
            run(
                "mkfs.ext4",
                &[
                    "-q",
                    "-F",
                    "-L",
                    &label,
                    // Inode tables and journal written now, not by a background thread
                    // that would compete with the machine's first IO.
                    "-E",
                    "root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0",
                    &path.to_string_lossy(),
                ],
            )
        });
    if made.is_err() {
        let _ = fs::remove_file(path);
    }
    made
}

/// The volume mounted at a temporary directory, for filling it; unmounted when dropped.
#[derive(Debug)]
pub struct Mounted {
    pub dir: PathBuf,
    mounted: bool,
}

impl Mounted {
    /// Mounted for writing (filling a new volume).
    pub fn new(volume: &Path, dir: PathBuf) -> Result<Self, MachineError> {
        Self::mount(volume, dir, "loop,nosuid,nodev")
    }

    /// Mounted read-only (reading a machine's own volume: nothing done to the mount can
    /// change the machine's files).
    pub fn read_only(volume: &Path, dir: PathBuf) -> Result<Self, MachineError> {
        Self::mount(volume, dir, "loop,ro,nosuid,nodev,noexec")
    }

    fn mount(volume: &Path, dir: PathBuf, options: &str) -> Result<Self, MachineError> {
        fs::create_dir(&dir).map_err(io_error(format!("creating {}", dir.display())))?;
        let mut mounted = Self {
            dir,
            mounted: false,
        };
        run(
            "mount",
            &[
                "-o",
                options,
                &volume.to_string_lossy(),
                &mounted.dir.to_string_lossy(),
            ],
        )?;
        mounted.mounted = true;
        Ok(mounted)
    }

    /// Unmounts (the loop device goes with it) and removes the directory.
    pub fn finish(mut self) -> Result<(), MachineError> {
        self.unmount()
    }

    fn unmount(&mut self) -> Result<(), MachineError> {
        if self.mounted {
            run("umount", &[&self.dir.to_string_lossy()])?;
            self.mounted = false;
        }
        let _ = fs::remove_dir(&self.dir);
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.unmount();
    }
}

/// Bytes the volume file takes on the host's disk now.
pub fn allocated(path: &Path) -> Option<u64> {
    fs::metadata(path)
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
}
