//! Spare roots: a btrfs snapshot of an image made ahead of the next machine created from it,
//! so that creating one (`berth run --rm` above all) doesn't wait for a snapshot's
//! transaction commit (60-90 ms in the VM test host). One per image, hidden beside the
//! machines' roots as `.#berth-spare-IMAGE`, made in the background after a create has
//! snapshotted that image. It is used only while it is still a snapshot of the image as the
//! image is now (same subvolume, unchanged since); otherwise it is deleted. The staging
//! cleanup at berthd's start removes spares too (their names are staging names).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::fs::RenameFlags;

use crate::sys;

const PREFIX: &str = ".#berth-spare-";

/// Where the spare of image `source` lives in `dir`.
fn spare_path(dir: &Path, source: &Path) -> Option<PathBuf> {
    let leaf = source.file_name()?.to_str()?;
    Some(dir.join(format!("{PREFIX}{leaf}")))
}

/// Whether subvolume `spare` is a snapshot of subvolume `source` as it is now: of that very
/// subvolume (not one imported since under the same path), which has not changed since, not
/// even by a write that btrfs has yet to commit.
fn is_current(spare_path: &Path, source_path: &Path) -> bool {
    let (Ok(spare), Ok(source)) = (
        sys::btrfs::subvolume_info(spare_path),
        sys::btrfs::subvolume_info(source_path),
    ) else {
        return false;
    };
    spare.parent_uuid == source.uuid
        && source.generation <= spare.otransid
        && matches!(
            sys::btrfs::changed_since(source_path, spare.otransid),
            Ok(false)
        )
}

/// Moves the spare of `source` in `dir` to `claimed` (a new staging path) when there is a
/// current one; whether it did. The rename claims it, so two creates never get the same.
pub(super) fn take(dir: &Path, source: &Path, claimed: &Path) -> bool {
    let Some(spare) = spare_path(dir, source) else {
        return false;
    };
    if fs::rename(&spare, claimed).is_err() {
        return false;
    }
    if is_current(claimed, source) {
        return true;
    }
    tracing::debug!(spare = %spare.display(), "the spare root is out of date; deleting it");
    if let Err(e) = super::pool::remove_tree(claimed) {
        tracing::warn!(path = %claimed.display(), error = %e, "cannot remove an outdated spare root");
    }
    false
}

/// The spares being made, by path, so each is made once at a time.
static MAKING: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// Makes the spare of subvolume `source` in `dir` in the background, unless it exists or is
/// being made. `staging` is a fresh staging path in `dir` to snapshot into.
pub(super) fn replenish(dir: &Path, source: &Path, staging: PathBuf) {
    let Some(spare) = spare_path(dir, source) else {
        return;
    };
    if spare.symlink_metadata().is_ok() {
        return;
    }
    let claimed = MAKING
        .lock()
        .is_ok_and(|mut making| making.insert(spare.clone()));
    if !claimed {
        return;
    }
    let source = source.to_owned();
    let made = std::thread::Builder::new()
        .name("spare root".into())
        .spawn(move || {
            make(&source, &staging, &spare);
            if let Ok(mut making) = MAKING.lock() {
                making.remove(&spare);
            }
        });
    if let Err(e) = made {
        tracing::debug!("cannot start a thread for a spare root: {e}");
    }
}

fn make(source: &Path, staging: &Path, spare: &Path) {
    if let Err(e) = sys::btrfs::snapshot_subvolume(source, staging) {
        tracing::debug!(source = %source.display(), error = %e, "cannot make a spare root");
        return;
    }
    let cwd = rustix::fs::CWD;
    if rustix::fs::renameat_with(cwd, staging, cwd, spare, RenameFlags::NOREPLACE).is_err() {
        let _ = super::pool::remove_tree(staging);
        return;
    }
    // The image may have been removed or replaced meanwhile.
    if !is_current(spare, source) {
        let _ = super::pool::remove_tree(spare);
    }
}

/// Deletes the spares in `dir` that are no longer current snapshots of their image in
/// `images` (after an image was removed or replaced), so they don't hold its disk space.
pub fn discard_stale(dir: &Path, images: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(leaf) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        if !is_current(&entry.path(), &images.join(leaf))
            && let Err(e) = super::pool::remove_tree(&entry.path())
        {
            tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a stale spare root");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spare_is_named_after_its_image_beside_the_roots() {
        assert_eq!(
            spare_path(
                Path::new("/var/lib/berth/machines"),
                Path::new("/var/lib/machines/deb_1.10")
            ),
            Some(PathBuf::from(
                "/var/lib/berth/machines/.#berth-spare-deb_1.10"
            ))
        );
        assert!(PREFIX.starts_with(super::super::pool::STAGING_PREFIX));
    }

    #[test]
    fn no_spare_is_taken_where_there_is_none_or_no_btrfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("img");
        fs::create_dir(&image).expect("image");
        assert!(!take(dir.path(), &image, &dir.path().join("claimed")));
        // A plain directory under the spare's name (no btrfs here) is not a current snapshot.
        fs::create_dir(dir.path().join(".#berth-spare-img")).expect("fake spare");
        assert!(!take(dir.path(), &image, &dir.path().join("claimed")));
        assert!(!dir.path().join("claimed").exists());
        discard_stale(dir.path(), dir.path());
    }
}
