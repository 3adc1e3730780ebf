//! What a machine may not do, applied to its PID 1 before the init (or app) runs and to every
//! `berth exec` (which enters the namespaces but inherits nothing from PID 1):
//!
//! - a capability bounding set like systemd-nspawn's ([`KEPT_CAPABILITIES`]): root in the
//!   machine can never gain CAP_SYS_MODULE, CAP_SYS_RAWIO, CAP_SYS_TIME, CAP_SYSLOG, CAP_BPF,
//!   CAP_PERFMON, CAP_MAC_*, … even through a setuid or file-capability binary;
//! - a seccomp filter ([`DENIED_CALLS`]) that refuses with EPERM the system calls reaching
//!   kernel state no machine owns (module loading, kexec, the kernel keyring, the clock, swap,
//!   process accounting, the kernel log, raw port IO, BPF, perf events, file handles, and
//!   userfaultfd). 32-bit x86 programs get the same list by their own numbers; x32 and other
//!   foreign ABIs are refused (ENOSYS).
//!
//! The user namespace already makes most of these fail (root inside is nobody outside); this
//! is the second wall, so a kernel bug in one of those paths isn't reachable from a machine.

use std::io;

use crate::sys::seccomp::Instruction;

use super::RuntimeError;

/// Capabilities root in a machine keeps (systemd-nspawn's default set), by number; every
/// other one is dropped from the bounding set. CAP_NET_ADMIN is kept only with a network
/// namespace of its own ([`NET_ADMIN`]).
pub const KEPT_CAPABILITIES: [(u32, &str); 26] = [
    (0, "CAP_CHOWN"),
    (1, "CAP_DAC_OVERRIDE"),
    (2, "CAP_DAC_READ_SEARCH"),
    (3, "CAP_FOWNER"),
    (4, "CAP_FSETID"),
    (5, "CAP_KILL"),
    (6, "CAP_SETGID"),
    (7, "CAP_SETUID"),
    (8, "CAP_SETPCAP"),
    (9, "CAP_LINUX_IMMUTABLE"),
    (10, "CAP_NET_BIND_SERVICE"),
    (11, "CAP_NET_BROADCAST"),
    (13, "CAP_NET_RAW"),
    (15, "CAP_IPC_OWNER"),
    (18, "CAP_SYS_CHROOT"),
    (19, "CAP_SYS_PTRACE"),
    (21, "CAP_SYS_ADMIN"),
    (22, "CAP_SYS_BOOT"),
    (23, "CAP_SYS_NICE"),
    (24, "CAP_SYS_RESOURCE"),
    (26, "CAP_SYS_TTY_CONFIG"),
    (27, "CAP_MKNOD"),
    (28, "CAP_LEASE"),
    (29, "CAP_AUDIT_WRITE"),
    (30, "CAP_AUDIT_CONTROL"),
    (31, "CAP_SETFCAP"),
];

/// CAP_NET_ADMIN: kept for a machine with its own network namespace (its interfaces, routes
/// and firewall are its own), dropped for one on the host's network.
pub const NET_ADMIN: u32 = 12;

/// A system call the filter refuses: its name, its number on the build's architecture (if it
/// has it there) and in the 32-bit x86 table (arch/x86/entry/syscalls/syscall_32.tbl).
#[derive(Debug, Clone, Copy)]
pub struct DeniedCall {
    pub name: &'static str,
    pub native: Option<libc::c_long>,
    pub i386: Option<u32>,
}

const fn denied(name: &'static str, native: libc::c_long, i386: u32) -> DeniedCall {
    DeniedCall {
        name,
        native: Some(native),
        i386: Some(i386),
    }
}

/// A call only the 32-bit x86 table has (64-bit systems use the plain name's number).
const fn denied_i386(name: &'static str, i386: u32) -> DeniedCall {
    DeniedCall {
        name,
        native: None,
        i386: Some(i386),
    }
}

/// The refused system calls (EPERM).
pub const DENIED_CALLS: &[DeniedCall] = &[
    denied("init_module", libc::SYS_init_module, 128),
    denied("finit_module", libc::SYS_finit_module, 350),
    denied("delete_module", libc::SYS_delete_module, 129),
    denied("kexec_load", libc::SYS_kexec_load, 283),
    #[cfg(target_arch = "x86_64")]
    DeniedCall {
        name: "kexec_file_load",
        native: Some(libc::SYS_kexec_file_load),
        i386: None,
    },
    denied("add_key", libc::SYS_add_key, 286),
    denied("request_key", libc::SYS_request_key, 287),
    denied("keyctl", libc::SYS_keyctl, 288),
    denied("settimeofday", libc::SYS_settimeofday, 79),
    denied_i386("stime", 25),
    denied("clock_settime", libc::SYS_clock_settime, 264),
    denied_i386("clock_settime64", 404),
    denied("clock_adjtime", libc::SYS_clock_adjtime, 343),
    denied_i386("clock_adjtime64", 405),
    denied("swapon", libc::SYS_swapon, 87),
    denied("swapoff", libc::SYS_swapoff, 115),
    denied("acct", libc::SYS_acct, 51),
    denied("syslog", libc::SYS_syslog, 103),
    #[cfg(target_arch = "x86_64")]
    denied("iopl", libc::SYS_iopl, 110),
    #[cfg(target_arch = "x86_64")]
    denied("ioperm", libc::SYS_ioperm, 101),
    denied("bpf", libc::SYS_bpf, 357),
    denied("perf_event_open", libc::SYS_perf_event_open, 336),
    denied("open_by_handle_at", libc::SYS_open_by_handle_at, 342),
    denied("userfaultfd", libc::SYS_userfaultfd, 374),
];

// linux/audit.h: EM_* | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_NATIVE: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_NATIVE: u32 = 0xC000_00B7;
/// System call numbers of the x32 ABI, which shares x86_64's audit arch.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Classic BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h).
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const RET_K: u16 = 0x06;
pub const RET_ALLOW: u32 = 0x7fff_0000;
pub const RET_ERRNO: u32 = 0x0005_0000;
/// Offsets in `struct seccomp_data`.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Label {
    Next,
    Foreign,
    NoSys,
    Denied,
}

/// The seccomp program: checks the architecture, then the call number against
/// [`DENIED_CALLS`].
pub fn seccomp_program() -> Vec<Instruction> {
    // (code, k, jump-if-true, jump-if-false), resolved to offsets once laid out.
    let mut code: Vec<(u16, u32, Label, Label)> = Vec::new();
    let mut labels: Vec<(Label, usize)> = Vec::new();
    let load = |code: &mut Vec<_>, offset| code.push((LD_W_ABS, offset, Label::Next, Label::Next));
    load(&mut code, OFFSET_ARCH);
    code.push((JEQ_K, AUDIT_ARCH_NATIVE, Label::Next, Label::Foreign));
    load(&mut code, OFFSET_NR);
    #[cfg(target_arch = "x86_64")]
    code.push((JGE_K, X32_SYSCALL_BIT, Label::NoSys, Label::Next));
    for call in DENIED_CALLS {
        if let Some(nr) = call.native.and_then(|n| u32::try_from(n).ok()) {
            code.push((JEQ_K, nr, Label::Denied, Label::Next));
        }
    }
    code.push((RET_K, RET_ALLOW, Label::Next, Label::Next));
    labels.push((Label::Foreign, code.len()));
    if cfg!(target_arch = "x86_64") {
        code.push((JEQ_K, AUDIT_ARCH_I386, Label::Next, Label::NoSys));
        load(&mut code, OFFSET_NR);
        for call in DENIED_CALLS {
            if let Some(nr) = call.i386 {
                code.push((JEQ_K, nr, Label::Denied, Label::Next));
            }
        }
        code.push((RET_K, RET_ALLOW, Label::Next, Label::Next));
    }
    labels.push((Label::NoSys, code.len()));
    code.push((
        RET_K,
        RET_ERRNO | errno_value(libc::ENOSYS),
        Label::Next,
        Label::Next,
    ));
    labels.push((Label::Denied, code.len()));
    code.push((
        RET_K,
        RET_ERRNO | errno_value(libc::EPERM),
        Label::Next,
        Label::Next,
    ));
    let offset = |from: usize, label: Label| -> u8 {
        if label == Label::Next {
            return 0;
        }
        let target = labels
            .iter()
            .find(|(l, _)| *l == label)
            .map_or(from + 1, |(_, at)| *at);
        // The program is ~50 instructions: every forward jump fits in a byte.
        u8::try_from(target - from - 1).unwrap_or(u8::MAX)
    };
    code.iter()
        .enumerate()
        .map(|(i, &(op, k, jt, jf))| Instruction {
            code: op,
            jt: offset(i, jt),
            jf: offset(i, jf),
            k,
        })
        .collect()
}

fn errno_value(errno: i32) -> u32 {
    u32::try_from(errno).unwrap_or(1)
}

/// Confines the calling process (a machine's PID 1 or an exec'd command, as root of the
/// machine's user namespace) and everything it starts: drops the capabilities outside the
/// kept set from the bounding and inheritable sets, then installs the seccomp filter.
pub fn apply(own_network: bool) -> Result<(), RuntimeError> {
    let step = |what: &str, e: io::Error| RuntimeError::step(what, e);
    let last = last_capability();
    let kept = |cap: u32| {
        KEPT_CAPABILITIES.iter().any(|(n, _)| *n == cap) || (own_network && cap == NET_ADMIN)
    };
    let mut keep_set = rustix::thread::CapabilitySet::empty();
    for cap in 0..=last {
        let set = rustix::thread::CapabilitySet::from_bits_retain(1u64 << cap);
        if kept(cap) {
            keep_set |= set;
            continue;
        }
        match rustix::thread::remove_capability_from_bounding_set(set) {
            Ok(()) => {}
            // A capability this kernel doesn't know.
            Err(rustix::io::Errno::INVAL) => {}
            Err(e) => return Err(step("dropping capabilities", e.into())),
        }
    }
    let mut sets =
        rustix::thread::capabilities(None).map_err(|e| step("reading capabilities", e.into()))?;
    sets.inheritable &= keep_set;
    rustix::thread::set_capabilities(None, sets)
        .map_err(|e| step("setting capabilities", e.into()))?;
    crate::sys::seccomp::install_filter(&seccomp_program())
        .map_err(|e| step("installing the seccomp filter", e))
}

/// The highest capability number this kernel knows.
fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
        .min(63)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program on one (arch, nr) as the kernel would; returns its verdict.
    fn verdict(program: &[Instruction], arch: u32, nr: u32) -> u32 {
        let mut accumulator = 0u32;
        let mut pc = 0usize;
        loop {
            let ins = program[pc];
            match ins.code {
                LD_W_ABS => {
                    accumulator = if ins.k == OFFSET_ARCH { arch } else { nr };
                    pc += 1;
                }
                JEQ_K | JGE_K => {
                    let taken = if ins.code == JEQ_K {
                        accumulator == ins.k
                    } else {
                        accumulator >= ins.k
                    };
                    pc += 1 + usize::from(if taken { ins.jt } else { ins.jf });
                }
                RET_K => return ins.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn eperm() -> u32 {
        RET_ERRNO | errno_value(libc::EPERM)
    }

    fn enosys() -> u32 {
        RET_ERRNO | errno_value(libc::ENOSYS)
    }

    fn native(nr: libc::c_long) -> u32 {
        u32::try_from(nr).expect("small")
    }

    #[test]
    fn denied_calls_are_refused_and_others_allowed() {
        let program = seccomp_program();
        for call in DENIED_CALLS {
            if let Some(nr) = call.native {
                assert_eq!(
                    verdict(&program, AUDIT_ARCH_NATIVE, native(nr)),
                    eperm(),
                    "{}",
                    call.name
                );
            }
        }
        for nr in [
            libc::SYS_read,
            libc::SYS_mount,
            libc::SYS_reboot,
            libc::SYS_unshare,
            libc::SYS_clone,
        ] {
            assert_eq!(
                verdict(&program, AUDIT_ARCH_NATIVE, native(nr)),
                RET_ALLOW,
                "{nr}"
            );
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn i386_gets_the_same_list_and_x32_and_foreign_abis_are_refused() {
        let program = seccomp_program();
        // init_module, keyctl, clock_settime64 by their 32-bit numbers; read and reboot pass.
        for nr in [128, 288, 404] {
            assert_eq!(verdict(&program, AUDIT_ARCH_I386, nr), eperm(), "{nr}");
        }
        for nr in [3, 88] {
            assert_eq!(verdict(&program, AUDIT_ARCH_I386, nr), RET_ALLOW, "{nr}");
        }
        assert_eq!(
            verdict(&program, AUDIT_ARCH_NATIVE, X32_SYSCALL_BIT),
            enosys()
        );
        assert_eq!(verdict(&program, 0x4000_0028, 3), enosys(), "arm");
    }

    #[test]
    fn the_kept_capabilities_are_nspawns_and_exclude_the_dangerous_ones() {
        let kept: Vec<u32> = KEPT_CAPABILITIES.iter().map(|(n, _)| *n).collect();
        // CAP_NET_ADMIN, CAP_IPC_LOCK, CAP_SYS_MODULE, CAP_SYS_RAWIO, CAP_SYS_PACCT,
        // CAP_SYS_TIME, CAP_MAC_OVERRIDE, CAP_MAC_ADMIN, CAP_SYSLOG, CAP_BPF, CAP_PERFMON.
        for dropped in [12, 14, 16, 17, 20, 25, 32, 33, 34, 38, 39] {
            assert!(!kept.contains(&dropped), "{dropped}");
        }
        assert!(
            kept.contains(&21),
            "CAP_SYS_ADMIN (in its own user namespace)"
        );
        assert!(kept.windows(2).all(|w| w[0] < w[1]));
    }
}
