//! Installing a classic-BPF seccomp filter on the calling thread (inherited by its children
//! and kept across exec).

use std::io;

/// One BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Instruction {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// Installs `program` as a seccomp filter of the calling thread. Without no_new_privs this
/// needs CAP_SYS_ADMIN in the thread's user namespace, which a machine's root has.
pub fn install_filter(program: &[Instruction]) -> io::Result<()> {
    let len = u16::try_from(program.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "seccomp program too long"))?;
    let fprog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast_mut().cast::<libc::sock_filter>(),
    };
    // SAFETY: `Instruction` is `repr(C)` with the layout of `struct sock_filter`; `fprog`
    // points at `program`, which outlives the call (the kernel copies the filter before it
    // returns). PR_SET_SECCOMP with SECCOMP_MODE_FILTER reads only that memory.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &raw const fprog,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
