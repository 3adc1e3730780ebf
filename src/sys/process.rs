//! Process creation the safe crates don't offer: fork-style clone into new namespaces, and a
//! plain fork. Only called from berthd's single-threaded spawn helper (`berthd
//! --spawn-machine`), never from the multi-threaded daemon.

use std::io;

/// Namespaces and flags for [`clone_process`].
pub const CLONE_PARENT: u64 = libc::CLONE_PARENT as u64;
pub const CLONE_NEWUSER: u64 = libc::CLONE_NEWUSER as u64;
pub const CLONE_NEWNS: u64 = libc::CLONE_NEWNS as u64;
pub const CLONE_NEWPID: u64 = libc::CLONE_NEWPID as u64;
pub const CLONE_NEWUTS: u64 = libc::CLONE_NEWUTS as u64;
pub const CLONE_NEWIPC: u64 = libc::CLONE_NEWIPC as u64;
pub const CLONE_NEWNET: u64 = libc::CLONE_NEWNET as u64;

/// Which side of a fork or clone this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    Parent { child: i32 },
    Child,
}

fn forked(ret: libc::c_long) -> io::Result<Forked> {
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent {
            child: i32::try_from(pid).map_err(io::Error::other)?,
        }),
    }
}

/// clone(2) like fork (no new stack, SIGCHLD to the parent) with `flags` added.
pub fn clone_process(flags: u64) -> io::Result<Forked> {
    let flags = flags | libc::SIGCHLD as u64;
    // SAFETY: a fork-style clone: without CLONE_VM the child gets a copy of the address space
    // and continues on a copy of this stack, exactly like fork(). The caller is the spawn
    // helper, which is single-threaded, so no lock can be held by another thread in the child.
    let ret = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    forked(ret)
}

/// fork(2).
pub fn fork() -> io::Result<Forked> {
    // SAFETY: called only from the single-threaded spawn helper (see clone_process).
    let ret = unsafe { libc::fork() };
    forked(libc::c_long::from(ret))
}

/// Registers an owned descriptor (a pidfd) with tokio's reactor.
pub fn register_async(
    fd: std::os::fd::OwnedFd,
) -> io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of `fd`, so the descriptor stays open, and is not
    // reused for another file, for as long as it is registered; it is closed only when the
    // AsyncFd (and with it the registration) is dropped.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(io::Error::from)
}

/// Restores the default action of SIGPIPE (Rust programs start with it ignored), so a CLI
/// writing into a closed pipe (`berth list | head -1`) ends quietly as other Unix tools do,
/// instead of failing on EPIPE.
pub fn default_sigpipe() {
    // SAFETY: SIG_DFL is not a handler function; setting it runs no code of ours in signal
    // context, and it is called once at the start of main, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
