//! The client's side of a machine's terminal: puts the caller's terminal in raw mode and
//! copies between it and the terminal's master side that berthd handed back, following
//! window size changes.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::thread::JoinHandle;

use rustix::termios::{OptionalActions, Termios};

/// A relay between this process's terminal and a machine's terminal. Dropping it restores
/// the caller's terminal settings.
#[derive(Debug)]
pub struct Relay {
    saved: Option<Termios>,
    output: Option<JoinHandle<()>>,
}

impl Relay {
    /// Starts copying: stdin → `master` and `master` → stdout, on their own threads.
    pub fn start(master: OwnedFd) -> io::Result<Self> {
        let stdin = io::stdin();
        let saved = rustix::termios::tcgetattr(stdin.as_fd()).ok();
        if let Some(saved) = &saved {
            let mut raw = saved.clone();
            raw.make_raw();
            rustix::termios::tcsetattr(stdin.as_fd(), OptionalActions::Now, &raw)?;
        }
        resize(&master);
        let mut to_machine = File::from(master.try_clone()?);
        // Not joined: it blocks reading the caller's stdin until the process exits.
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            let mut stdin = io::stdin().lock();
            while let Ok(n) = stdin.read(&mut buffer) {
                if n == 0 || to_machine.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        });
        let mut from_machine = File::from(master);
        let output = std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            let mut stdout = io::stdout().lock();
            // EIO once the last process holding the machine's side has closed it.
            while let Ok(n) = from_machine.read(&mut buffer) {
                if n == 0 || stdout.write_all(&buffer[..n]).is_err() {
                    break;
                }
                let _ = stdout.flush();
            }
        });
        Ok(Self {
            saved,
            output: Some(output),
        })
    }

    /// Waits until everything the machine wrote has been copied out.
    pub fn finish(mut self) {
        if let Some(output) = self.output.take() {
            let _ = output.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = rustix::termios::tcsetattr(io::stdin().as_fd(), OptionalActions::Now, saved);
        }
    }
}

/// Gives the machine's terminal the caller's window size.
pub fn resize(master: &impl AsFd) {
    if let Ok(size) = rustix::termios::tcgetwinsize(io::stdin().as_fd()) {
        let _ = rustix::termios::tcsetwinsize(master, size);
    }
}
