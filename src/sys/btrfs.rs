//! btrfs subvolumes, so images on btrfs can later be snapshotted instead of copied.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const BTRFS_SUPER_MAGIC: u64 = 0x9123_683e;
/// BTRFS_PATH_NAME_MAX + 1: the size of `btrfs_ioctl_vol_args.name`.
const VOL_NAME_LEN: usize = 4088;

/// `struct btrfs_ioctl_vol_args` from linux/btrfs.h (4096 bytes).
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; VOL_NAME_LEN],
}

// BTRFS_IOC_SUBVOL_CREATE = _IOW(BTRFS_IOCTL_MAGIC, 14, struct btrfs_ioctl_vol_args)
nix::ioctl_write_ptr!(btrfs_ioc_subvol_create, 0x94, 14, VolArgs);
// BTRFS_IOC_SNAP_CREATE = _IOW(BTRFS_IOCTL_MAGIC, 1, struct btrfs_ioctl_vol_args)
nix::ioctl_write_ptr!(btrfs_ioc_snap_create, 0x94, 1, VolArgs);
// BTRFS_IOC_SNAP_DESTROY = _IOW(BTRFS_IOCTL_MAGIC, 15, struct btrfs_ioctl_vol_args)
nix::ioctl_write_ptr!(btrfs_ioc_snap_destroy, 0x94, 15, VolArgs);

/// The inode number of every subvolume's root directory.
const SUBVOLUME_ROOT_INO: u64 = 256;

/// Whether `path` is the root of a btrfs subvolume.
pub fn is_subvolume(path: &Path) -> bool {
    is_btrfs(path).unwrap_or(false)
        && std::fs::symlink_metadata(path)
            .is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == SUBVOLUME_ROOT_INO)
}

/// Creates `target` as a writable snapshot of subvolume `source` (same btrfs filesystem).
pub fn snapshot_subvolume(source: &Path, target: &Path) -> io::Result<()> {
    let (dir, args) = vol_args(target)?;
    let source = std::fs::File::open(source)?;
    let args = VolArgs {
        fd: i64::from(source.as_raw_fd()),
        ..args
    };
    // SAFETY: `dir` and `source` are open for the duration of the call, and `args` is a fully
    // initialized `btrfs_ioctl_vol_args` with a NUL-terminated name (see vol_args) and the
    // source subvolume's descriptor; the kernel only reads it.
    unsafe { btrfs_ioc_snap_create(dir.as_raw_fd(), &args) }?;
    Ok(())
}

/// The parent directory of `path`, open, and vol args naming `path`'s last component.
fn vol_args(path: &Path) -> io::Result<(std::fs::File, VolArgs)> {
    let parent = path
        .parent()
        .ok_or_else(|| io::Error::other("no parent directory"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("no file name"))?
        .as_bytes();
    if name.len() >= VOL_NAME_LEN {
        return Err(io::Error::other("subvolume name too long"));
    }
    // Checks there is no NUL inside the name, which the kernel would cut at.
    CString::new(name).map_err(io::Error::other)?;
    let dir = std::fs::File::open(parent)?;
    let mut args = VolArgs {
        fd: 0,
        name: [0; VOL_NAME_LEN],
    };
    args.name[..name.len()].copy_from_slice(name);
    Ok((dir, args))
}

/// Whether `path` lives on btrfs.
pub fn is_btrfs(path: &Path) -> io::Result<bool> {
    let st = rustix::fs::statfs(path)?;
    #[allow(clippy::unnecessary_cast)] // f_type's type differs between libcs
    Ok(st.f_type as u64 == BTRFS_SUPER_MAGIC)
}

/// Creates `path` as a new, empty subvolume.
pub fn create_subvolume(path: &Path) -> io::Result<()> {
    let (dir, args) = vol_args(path)?;
    // SAFETY: `dir` is an open directory for the duration of the call and `args` is a fully
    // initialized, correctly sized `btrfs_ioctl_vol_args` whose name is NUL-terminated (the
    // buffer is zeroed and the name is shorter than it); the kernel only reads it.
    unsafe { btrfs_ioc_subvol_create(dir.as_raw_fd(), &args) }?;
    Ok(())
}

/// Deletes subvolume `path` with all its files at once (the kernel frees the space in the
/// background), as `btrfs subvolume delete` does. Fails for a subvolume holding others.
pub fn delete_subvolume(path: &Path) -> io::Result<()> {
    let (dir, args) = vol_args(path)?;
    // SAFETY: as in create_subvolume: `dir` is open for the call and `args` is a fully
    // initialized `btrfs_ioctl_vol_args` naming the subvolume; the kernel only reads it.
    unsafe { btrfs_ioc_snap_destroy(dir.as_raw_fd(), &args) }?;
    Ok(())
}
