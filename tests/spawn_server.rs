//! The spawn server (`berthd --spawn-machine`) on the host, without root: it forks one helper
//! per request as a child of the process that started the server (berthd reaps helpers and
//! machines' PID 1s as its own children), serves requests one after another, and ends when its
//! socket is closed. Machine starts through it are covered by the system tests in the VM.

use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use rustix::process::{Pid, WaitOptions};

const BERTHD: &str = env!("CARGO_BIN_EXE_berthd");

/// Sends one byte with `fd` attached.
fn send_fd(socket: &UnixStream, fd: &OwnedFd) -> std::io::Result<()> {
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd.as_fd()];
    assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
    rustix::net::sendmsg(
        socket,
        &[std::io::IoSlice::new(b"F")],
        &mut control,
        SendFlags::empty(),
    )?;
    Ok(())
}

#[test]
fn the_server_forks_helpers_as_children_of_its_parent_and_ends_with_its_socket() {
    let (ours, theirs) = UnixStream::pair().expect("socket pair");
    ours.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut server = Command::new(BERTHD)
        .arg("--spawn-machine")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .spawn()
        .expect("starting berthd --spawn-machine");
    let mut answers = BufReader::new(ours.try_clone().expect("clone"));
    for _ in 0..2 {
        let (helper_end, ours_for_helper) = UnixStream::pair().expect("socket pair");
        send_fd(&ours, &OwnedFd::from(helper_end)).expect("sending the helper's socket");
        let mut answer = String::new();
        answers.read_line(&mut answer).expect("the server's answer");
        let pid: i32 = answer
            .trim_end()
            .strip_prefix("pid ")
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("unexpected answer {answer:?}"));
        assert_ne!(pid, i32::try_from(server.id()).expect("pid"));
        // No spawn config comes: the helper says so on its socket and exits, and this
        // process, not the server, reaps it.
        ours_for_helper
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
        let mut error = String::new();
        BufReader::new(&ours_for_helper)
            .read_line(&mut error)
            .expect("the helper's error");
        assert!(error.starts_with("error: "), "{error:?}");
        let pid = Pid::from_raw(pid).expect("a positive pid");
        let (reaped, status) = rustix::process::waitpid(Some(pid), WaitOptions::empty())
            .expect("the helper is this process's child")
            .expect("it exited");
        assert_eq!(reaped, pid);
        assert_eq!(status.exit_status(), Some(1));
    }
    // A request without a socket is answered with an error; the server carries on.
    rustix::net::send(&ours, b"F", SendFlags::empty()).expect("sending");
    let mut answer = String::new();
    answers.read_line(&mut answer).expect("the server's answer");
    assert!(answer.starts_with("error: "), "{answer:?}");
    drop(answers);
    drop(ours);
    let status = server.wait().expect("the server ends");
    assert!(status.success(), "{status:?}");
}
