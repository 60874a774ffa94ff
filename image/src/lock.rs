//! An exclusive `flock(2)` on a lock file, held until drop. The kernel releases it if the
//! process dies, and two opens in one process exclude each other too (the lock belongs to the
//! open file description), so it serialises threads and processes alike.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// A held exclusive lock.
#[derive(Debug)]
pub(crate) struct FileLock {
    _file: File,
}

impl FileLock {
    /// Wait for and take the exclusive lock on `path` (created if missing).
    pub(crate) fn acquire(path: &Path) -> std::io::Result<Self> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        loop {
            // SAFETY: flock on a file descriptor we own and keep open for the lock's lifetime.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(Self { _file: file });
            }
            let err = std::io::Error::last_os_error();
            // A signal can interrupt the wait; anything else is a real failure.
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}
