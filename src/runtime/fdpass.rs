//! Passing file descriptors between berthd and the spawn helper (SCM_RIGHTS on their socket).

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The most descriptors one message carries (status file, stdin, stdout, stderr).
pub const MAX_FDS: usize = 4;

/// Sends `bytes` with `fds` attached.
pub fn send(socket: impl AsFd, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many descriptors for one message"));
    }
    let sent = rustix::net::sendmsg(
        socket,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::empty(),
    )?;
    if sent != bytes.len() {
        return Err(io::Error::other("short write on the helper socket"));
    }
    Ok(())
}

/// Receives one message into `buffer`; returns its length and the descriptors attached.
pub fn receive(socket: impl AsFd, buffer: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let message = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(buffer)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for part in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = part {
            fds.extend(received);
        }
    }
    Ok((message.bytes, fds))
}

/// Receives one line (without its newline) and the descriptors sent with it, a byte at a
/// time: on a stream socket one read may return the next message too (a command that ends
/// right after it started), and that must stay on the socket for its own reader. The lines
/// are short. `None` when the other side closed before a whole line.
pub fn receive_line(socket: impl AsFd) -> io::Result<Option<(String, Vec<OwnedFd>)>> {
    let mut line = Vec::new();
    let mut fds = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let (n, received) = match receive(&socket, &mut byte) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => other?,
        };
        fds.extend(received);
        match (n, byte[0]) {
            (0, _) => return Ok(None),
            (_, b'\n') => return Ok(Some((String::from_utf8_lossy(&line).into_owned(), fds))),
            (_, other) => line.push(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_line_is_received_without_what_follows_it() {
        let (ours, theirs) = UnixStream::pair().expect("test step");
        let file = std::fs::File::open("/dev/null").expect("test step");
        // Both messages are queued before the first read, as when a command ends at once.
        send(&theirs, b"started\n", &[file.as_fd()]).expect("test step");
        writeln!(&theirs, "exited 0").expect("test step");
        let (line, fds) = receive_line(&ours).expect("test step").expect("a line");
        assert_eq!(line, "started");
        assert_eq!(fds.len(), 1);
        let mut next = String::new();
        BufReader::new(&ours)
            .read_line(&mut next)
            .expect("test step");
        assert_eq!(next, "exited 0\n");
    }

    #[test]
    fn a_closed_socket_gives_no_line() {
        let (ours, theirs) = UnixStream::pair().expect("test step");
        (&theirs).write_all(b"cut off").expect("test step");
        drop(theirs);
        assert!(receive_line(&ours).expect("test step").is_none());
    }
}
