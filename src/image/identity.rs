//! A machine's own files, as opposed to its image's.
//!
//! When a machine's root becomes an image (`berth build`, `berth commit`), the files that make
//! the machine itself must not travel with it, or every machine made from the new image would
//! share them: the identity berth writes at create (/etc/hostname, /etc/machine-id), what the
//! guest's systemd keeps for this machine alone (its random seed, its credential secret) and
//! its journal. They get the base image's versions back, or go where the base has none.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};

use super::ImageError;
use super::fs_import;
use super::tree::{TreePath, TreeWriter};

/// The files of a root that belong to its machine, not to its image.
pub const MACHINE_FILES: [&str; 4] = [
    "etc/hostname",
    "etc/machine-id",
    "var/lib/systemd/random-seed",
    "var/lib/systemd/credential.secret",
];

/// Gives [`MACHINE_FILES`] in `tree` (a copy of a machine's root on its way to becoming an
/// image) the versions of the image at `base` back, or removes them where `base` has none
/// (or is `None`: the base is gone); removes the machine's journal
/// (`/var/log/journal/MACHINE_ID`) too.
pub fn restore_base(tree: &mut TreeWriter, base: Option<&Path>) -> Result<(), ImageError> {
    let machine_id = read_machine_id(tree.root());
    let base = base.map(super::pool::open_directory).transpose()?;
    for file in MACHINE_FILES {
        let path = tree_path(file)?;
        remove(tree, &path)?;
        if let Some(base) = &base {
            fs_import::copy_entry(base, &path, tree)?;
        }
    }
    if let Some(id) = machine_id {
        remove(tree, &tree_path(&format!("var/log/journal/{id}"))?)?;
    }
    Ok(())
}

fn tree_path(path: &str) -> Result<TreePath, ImageError> {
    TreePath::parse(path.as_bytes()).map_err(|reason| {
        ImageError::io(format!("naming /{path}"))(std::io::Error::other(reason.to_string()))
    })
}

fn remove(tree: &mut TreeWriter, path: &TreePath) -> Result<(), ImageError> {
    let shown = path.to_string();
    let result = tree.remove(path);
    tree.settle(&shown, result)
        .map_err(ImageError::io(format!("removing the machine's /{shown}")))
}

/// The machine-id in the root's /etc/machine-id (never read through a symlink), if it is one:
/// 32 lowercase hex digits.
fn read_machine_id(root: impl AsFd) -> Option<String> {
    let fd: OwnedFd = rustix::fs::openat2(
        root,
        "etc/machine-id",
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH,
    )
    .ok()?;
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(64)
        .read_to_string(&mut text)
        .ok()?;
    let id = text.trim();
    let valid = id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    valid.then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::*;

    fn writer(dir: &Path) -> TreeWriter {
        TreeWriter::new(
            rustix::fs::open(
                dir,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .expect("test step"),
        )
    }

    const ID: &str = "0123456789abcdef0123456789abcdef";

    fn machine_root(dir: &Path) {
        fs::create_dir_all(dir.join("etc")).expect("test step");
        fs::create_dir_all(dir.join("var/lib/systemd")).expect("test step");
        fs::create_dir_all(dir.join(format!("var/log/journal/{ID}"))).expect("test step");
        fs::write(
            dir.join(format!("var/log/journal/{ID}/system.journal")),
            "x",
        )
        .expect("test step");
        fs::write(dir.join("etc/hostname"), "web\n").expect("test step");
        fs::write(dir.join("etc/machine-id"), format!("{ID}\n")).expect("test step");
        fs::write(dir.join("var/lib/systemd/random-seed"), "seed").expect("test step");
        fs::write(dir.join("etc/motd"), "kept").expect("test step");
    }

    #[test]
    fn base_versions_come_back_and_the_machines_own_files_go() {
        let root = tempfile::tempdir().expect("test step");
        let base = tempfile::tempdir().expect("test step");
        machine_root(root.path());
        fs::create_dir_all(base.path().join("etc")).expect("test step");
        fs::write(base.path().join("etc/hostname"), "debian\n").expect("test step");
        // The base's machine-id is a symlink: copied as one, never followed.
        symlink("/etc/shadow", base.path().join("etc/machine-id")).expect("test step");
        let mut tree = writer(root.path());
        restore_base(&mut tree, Some(base.path())).expect("test step");
        tree.finish().expect("test step");
        let r = root.path();
        assert_eq!(
            fs::read_to_string(r.join("etc/hostname")).expect("test step"),
            "debian\n"
        );
        assert_eq!(
            fs::read_link(r.join("etc/machine-id")).expect("test step"),
            Path::new("/etc/shadow")
        );
        assert!(!r.join("var/lib/systemd/random-seed").exists());
        assert!(!r.join(format!("var/log/journal/{ID}")).exists());
        assert!(r.join("var/log/journal").is_dir());
        assert_eq!(
            fs::read_to_string(r.join("etc/motd")).expect("test step"),
            "kept"
        );
    }

    #[test]
    fn without_a_base_the_machines_own_files_go() {
        let root = tempfile::tempdir().expect("test step");
        machine_root(root.path());
        let mut tree = writer(root.path());
        restore_base(&mut tree, None).expect("test step");
        tree.finish().expect("test step");
        for file in MACHINE_FILES {
            assert!(
                root.path().join(file).symlink_metadata().is_err(),
                "{file} stayed"
            );
        }
        assert!(!root.path().join(format!("var/log/journal/{ID}")).exists());
    }

    #[test]
    fn a_base_reached_through_a_symlinked_directory_is_not_followed() {
        let root = tempfile::tempdir().expect("test step");
        let base = tempfile::tempdir().expect("test step");
        let outside = tempfile::tempdir().expect("test step");
        machine_root(root.path());
        fs::write(outside.path().join("hostname"), "secret\n").expect("test step");
        symlink(outside.path(), base.path().join("etc")).expect("test step");
        let mut tree = writer(root.path());
        restore_base(&mut tree, Some(base.path())).expect("test step");
        tree.finish().expect("test step");
        assert!(root.path().join("etc/hostname").symlink_metadata().is_err());
    }

    #[test]
    fn machine_ids_are_read_only_when_valid() {
        let root = tempfile::tempdir().expect("test step");
        fs::create_dir(root.path().join("etc")).expect("test step");
        fs::write(root.path().join("etc/machine-id"), "../../etc\n").expect("test step");
        assert_eq!(read_machine_id(writer(root.path()).root()), None);
        fs::write(root.path().join("etc/machine-id"), format!("{ID}\n")).expect("test step");
        assert_eq!(
            read_machine_id(writer(root.path()).root()),
            Some(ID.to_owned())
        );
    }
}
