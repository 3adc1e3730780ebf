//! Process creation the safe crates don't offer: fork-style clone into new namespaces, and a
//! plain fork. Only called from berthd's single-threaded spawn server (`berthd
//! --spawn-machine`) and the helpers it forks, never from the multi-threaded daemon.

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
    // server or a helper it forked, both single-threaded, so no lock can be held by another
    // thread in the child.
    let ret = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    forked(ret)
}

/// fork(2).
pub fn fork() -> io::Result<Forked> {
    // SAFETY: called only from the single-threaded spawn server and its helpers (see
    // clone_process).
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

/// Keeps berthd's heap from staying large after a burst of work. glibc's malloc by default
/// gives each allocating thread an arena of its own (up to 8 per CPU), and raises its mmap and
/// trim thresholds after a large buffer is freed, so memory an import or a burst of starts
/// used is kept for the rest of the daemon's life. Two arenas, and fixed thresholds (buffers
/// over 128 KiB are mapped and unmapped; free memory over 256 KiB at the heap's top goes back
/// to the kernel), keep the idle daemon small.
pub fn tune_malloc() {
    // SAFETY: mallopt only changes malloc tunables; it is called at the start of main, before
    // any other thread exists, and each value is a valid positive setting of its parameter.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 * 1024);
    }
}

/// A `Command` for `program` whose child inherits only its standard streams (and what the
/// Command sets up itself). File descriptors zbus receives (a caller's stdin, stdout and
/// stderr, a terminal) are not close-on-exec, and berthd runs many requests at once: without
/// this, a helper or tool started for one request could keep another caller's pipe open (so
/// it never sees EOF) or carry it into a machine.
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(program);
    // SAFETY: the closure runs in the forked child before exec and only makes raw
    // close_range(2) / fcntl(2) system calls, which are async-signal-safe; it allocates
    // nothing and touches no lock.
    unsafe {
        command.pre_exec(|| {
            const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
            let marked = libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            );
            if marked != 0 {
                // Kernels before 5.11: mark them one by one.
                for fd in 3..4096 {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            Ok(())
        });
    }
    command
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    #[test]
    fn commands_inherit_only_their_standard_streams() {
        let file = std::fs::File::open("/dev/null").expect("open");
        // dup(2) gives a descriptor without close-on-exec, as zbus's received ones are.
        let inheritable = rustix::io::dup(&file).expect("dup");
        let fd = inheritable.as_raw_fd();
        let output = super::command("sh")
            .args([
                "-c",
                &format!("test -e /proc/self/fd/{fd} && echo open || echo closed"),
            ])
            .output()
            .expect("sh");
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "closed");
        let plain = std::process::Command::new("sh")
            .args([
                "-c",
                &format!("test -e /proc/self/fd/{fd} && echo open || echo closed"),
            ])
            .output()
            .expect("sh");
        assert_eq!(
            String::from_utf8_lossy(&plain.stdout).trim(),
            "open",
            "the fd leaks without it"
        );
    }
}
