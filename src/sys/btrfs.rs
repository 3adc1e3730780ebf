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

/// `struct btrfs_ioctl_timespec` from linux/btrfs.h.
#[repr(C)]
#[derive(Clone, Copy)]
struct Timespec {
    sec: u64,
    nsec: u32,
}

/// `struct btrfs_ioctl_get_subvol_info_args` from linux/btrfs.h (504 bytes).
#[repr(C)]
struct SubvolInfoArgs {
    treeid: u64,
    name: [u8; 256],
    parent_id: u64,
    dirid: u64,
    generation: u64,
    flags: u64,
    uuid: [u8; 16],
    parent_uuid: [u8; 16],
    received_uuid: [u8; 16],
    ctransid: u64,
    otransid: u64,
    stransid: u64,
    rtransid: u64,
    ctime: Timespec,
    otime: Timespec,
    stime: Timespec,
    rtime: Timespec,
    reserved: [u64; 8],
}

// BTRFS_IOC_GET_SUBVOL_INFO = _IOR(BTRFS_IOCTL_MAGIC, 60, struct btrfs_ioctl_get_subvol_info_args)
nix::ioctl_read!(btrfs_ioc_get_subvol_info, 0x94, 60, SubvolInfoArgs);

/// `struct btrfs_ioctl_search_key` from linux/btrfs.h (104 bytes).
#[repr(C)]
struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: u64,
    unused2: u64,
    unused3: u64,
    unused4: u64,
}

/// `struct btrfs_ioctl_search_args` from linux/btrfs.h (4096 bytes).
#[repr(C)]
struct SearchArgs {
    key: SearchKey,
    buf: [u8; 4096 - std::mem::size_of::<SearchKey>()],
}

// BTRFS_IOC_TREE_SEARCH = _IOWR(BTRFS_IOCTL_MAGIC, 17, struct btrfs_ioctl_search_args)
nix::ioctl_readwrite!(btrfs_ioc_tree_search, 0x94, 17, SearchArgs);

/// Whether anything in subvolume `path` changed after transaction `transid`, including
/// changes not committed yet (the live tree is searched, as `btrfs subvolume find-new`
/// does: only tree blocks written after `transid` are looked at). Needs CAP_SYS_ADMIN.
pub fn changed_since(path: &Path, transid: u64) -> io::Result<bool> {
    let dir = std::fs::File::open(path)?;
    let mut args = SearchArgs {
        key: SearchKey {
            tree_id: 0, // the subvolume `dir` is in
            min_objectid: 0,
            max_objectid: u64::MAX,
            min_offset: 0,
            max_offset: u64::MAX,
            min_transid: transid.saturating_add(1),
            max_transid: u64::MAX,
            min_type: 0,
            max_type: u32::MAX,
            nr_items: 1,
            unused: 0,
            unused1: 0,
            unused2: 0,
            unused3: 0,
            unused4: 0,
        },
        buf: [0; 4096 - std::mem::size_of::<SearchKey>()],
    };
    // SAFETY: `dir` is open for the duration of the call and `args` is a fully initialized
    // `btrfs_ioctl_search_args` of the size the request number encodes; the kernel reads
    // the key and writes at most `buf`'s length of results and the key's `nr_items`.
    unsafe { btrfs_ioc_tree_search(dir.as_raw_fd(), &mut args) }?;
    Ok(args.key.nr_items > 0)
}

/// What btrfs tells of a subvolume: its identity, the one it is a snapshot of, and the
/// transactions that last changed it and created it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubvolumeInfo {
    pub uuid: [u8; 16],
    /// All zeros when the subvolume is not a snapshot.
    pub parent_uuid: [u8; 16],
    /// The last transaction that changed the subvolume's tree.
    pub generation: u64,
    /// The transaction that created it.
    pub otransid: u64,
}

/// The subvolume info of subvolume `path` (Linux ≥ 4.18; any user may ask).
pub fn subvolume_info(path: &Path) -> io::Result<SubvolumeInfo> {
    let dir = std::fs::File::open(path)?;
    let zero = Timespec { sec: 0, nsec: 0 };
    let mut args = SubvolInfoArgs {
        treeid: 0,
        name: [0; 256],
        parent_id: 0,
        dirid: 0,
        generation: 0,
        flags: 0,
        uuid: [0; 16],
        parent_uuid: [0; 16],
        received_uuid: [0; 16],
        ctransid: 0,
        otransid: 0,
        stransid: 0,
        rtransid: 0,
        ctime: zero,
        otime: zero,
        stime: zero,
        rtime: zero,
        reserved: [0; 8],
    };
    // SAFETY: `dir` is open for the duration of the call and `args` is a fully initialized
    // `btrfs_ioctl_get_subvol_info_args` of the size the request number encodes; the kernel
    // writes only within it.
    unsafe { btrfs_ioc_get_subvol_info(dir.as_raw_fd(), &mut args) }?;
    Ok(SubvolumeInfo {
        uuid: args.uuid,
        parent_uuid: args.parent_uuid,
        generation: args.generation,
        otransid: args.otransid,
    })
}

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

#[cfg(test)]
mod tests {
    #[test]
    fn the_ioctl_structs_have_the_kernels_sizes() {
        // The request number encodes the size; a wrong one makes the kernel refuse it.
        assert_eq!(std::mem::size_of::<super::SubvolInfoArgs>(), 504);
        assert_eq!(std::mem::size_of::<super::SearchKey>(), 104);
        assert_eq!(std::mem::size_of::<super::SearchArgs>(), 4096);
    }
}
