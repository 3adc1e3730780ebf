//! Whether a machine's PID 1 takes a signal yet.
//!
//! The kernel drops a signal sent to a PID namespace's init that ignores it, or neither
//! blocks nor catches it. A booted guest's systemd only blocks its signals (to read them from
//! a signalfd) a while after it was exec'd, so a poweroff request sent right after a start
//! would be lost and the stop would end in SIGKILL once its timeout ran out. berthd waits for
//! this first.

use std::fs;
use std::io;

/// Whether process `pid` catches `signal`, or blocks it without ignoring it (from
/// /proc/PID/status), so that a `signal` sent to it now is not dropped though it is a
/// namespace's init. (A blocked signal waits until it is unblocked, and is discarded then if
/// it is ignored: systemd ignores SIGPIPE, and blocks every signal for a moment around a
/// fork.)
pub fn takes_signal(pid: u32, signal: i32) -> io::Result<bool> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(status_takes(&status, signal))
}

/// A signal number as `kill -l` names it: `SIGTERM`, `SIGRTMIN+3`; the number itself when it
/// names no signal.
pub fn name(signal: i32) -> String {
    if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&signal) {
        return format!("SIGRTMIN+{}", signal - libc::SIGRTMIN());
    }
    nix::sys::signal::Signal::try_from(signal)
        .map(|known| known.as_str().to_owned())
        .unwrap_or_else(|_| signal.to_string())
}

/// [`takes_signal`] on the text of a /proc/PID/status.
fn status_takes(status: &str, signal: i32) -> bool {
    let Some(bit) = u32::try_from(signal - 1).ok().filter(|b| *b < 64) else {
        return false;
    };
    let mask = |field: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or(0)
    };
    let taking = (mask("SigBlk:") & !mask("SigIgn:")) | mask("SigCgt:");
    taking & (1 << bit) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(blocked: &str, caught: &str) -> String {
        format!(
            "Name:\tsystemd\nSigQ:\t0/7823\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\n\
             SigBlk:\t{blocked}\nSigIgn:\t0000000000001000\nSigCgt:\t{caught}\n"
        )
    }

    #[test]
    fn a_blocked_or_caught_signal_is_taken() {
        let rtmin3 = libc::SIGRTMIN() + 3;
        // Blocked as systemd does it, for its signalfd: SIGRTMIN+3 (bit 36 with glibc's
        // SIGRTMIN of 34), SIGCHLD and SIGTERM.
        let systemd = status("0000001000014000", "0000000000000000");
        assert!(status_takes(&systemd, rtmin3));
        assert!(status_takes(&systemd, libc::SIGTERM));
        // The same signal caught by a handler instead.
        assert!(status_takes(
            &status("0000000000000000", "0000001000000000"),
            rtmin3
        ));
        // Just exec'd: neither yet.
        let fresh = status("0000000000000000", "0000000000000000");
        assert!(!status_takes(&fresh, rtmin3));
        assert!(!status_takes(&fresh, libc::SIGTERM));
        // Ignored (SigIgn 0x1000: SIGPIPE, as systemd has it), though blocked for a moment.
        let forking = status("fffffffffffffffe", "0000000000000000");
        assert!(!status_takes(&forking, libc::SIGPIPE));
        assert!(status_takes(&forking, libc::SIGTERM));
    }

    #[test]
    fn odd_input_takes_nothing() {
        assert!(!status_takes("", libc::SIGTERM));
        assert!(!status_takes(
            &status("ffffffffffffffff", "ffffffffffffffff"),
            0
        ));
        assert!(!status_takes(
            &status("ffffffffffffffff", "ffffffffffffffff"),
            65
        ));
        assert!(!status_takes("SigBlk:\tnot-hex\n", libc::SIGTERM));
    }

    #[test]
    fn signals_are_named_as_kill_names_them() {
        assert_eq!(name(libc::SIGTERM), "SIGTERM");
        assert_eq!(name(libc::SIGRTMIN()), "SIGRTMIN+0");
        assert_eq!(name(libc::SIGRTMIN() + 3), "SIGRTMIN+3");
        assert_eq!(name(0), "0");
        assert_eq!(name(99), "99");
    }

    #[test]
    fn this_process_is_read() {
        assert!(takes_signal(std::process::id(), libc::SIGWINCH).is_ok());
        assert!(takes_signal(u32::MAX, libc::SIGTERM).is_err());
    }
}
