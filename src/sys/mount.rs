//! mount_setattr(2), which neither rustix nor nix wraps yet.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Makes the detached mount `tree` (from open_tree with OPEN_TREE_CLONE) idmapped through the
/// user namespace `userns`.
pub fn set_idmap(tree: BorrowedFd<'_>, userns: BorrowedFd<'_>) -> io::Result<()> {
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: u64::try_from(userns.as_raw_fd()).map_err(io::Error::other)?,
    };
    // SAFETY: `tree` and `userns` are open descriptors borrowed for the call; the path is an
    // empty NUL-terminated string used with AT_EMPTY_PATH; `attr` is a fully initialized
    // mount_attr whose exact size is passed; the kernel only reads it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
