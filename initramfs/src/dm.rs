//! Issuing device-mapper ioctls on `/dev/mapper/control` (the request bytes come from
//! `basalt_verity::dm`). Only runs in a guest: the build host has no device-mapper.
//!
//! ```text
//! VERSION → DEV_CREATE(name) → TABLE_LOAD(name, READONLY, [verity]) → DEV_SUSPEND(name, 0)
//!   = resume: the table goes live → /dev/dm-<minor> (devtmpfs; no /dev/mapper without udev)
//! ```
//! If TABLE_LOAD or the resume fails, the half-made device is removed again.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use basalt_verity::dm::{
    decode_dev, encode_request, parse_table_status, request_code, Cmd, DmHeader, Target,
    VerityTable, DM_BUFFER_FULL_FLAG, DM_READONLY_FLAG,
};

use crate::error::{Error, Result};

/// Path of the control node (char 10:236, created by devtmpfs).
pub const CONTROL: &str = "/dev/mapper/control";
/// Reply buffer size; plenty for every request we make.
const BUFFER: usize = 16 * 1024;

fn op(cmd: Cmd) -> &'static str {
    match cmd {
        Cmd::Version => "VERSION",
        Cmd::DevCreate => "DEV_CREATE",
        Cmd::DevRemove => "DEV_REMOVE",
        Cmd::DevSuspend => "DEV_SUSPEND",
        Cmd::TableLoad => "TABLE_LOAD",
        Cmd::TableStatus => "TABLE_STATUS",
    }
}

/// An open `/dev/mapper/control`.
#[derive(Debug)]
pub struct Control {
    file: File,
}

impl Control {
    /// Open the control node and check the interface version (major 4).
    pub fn open() -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(CONTROL)
            .map_err(|source| Error::DmIoctl {
                operation: "open /dev/mapper/control",
                name: String::new(),
                source,
            })?;
        let c = Self { file };
        let (h, _) = c.call(Cmd::Version, "", 0, &[])?;
        if h.version[0] != 4 {
            return Err(Error::DmReply {
                operation: "VERSION",
                name: String::new(),
                reason: format!("kernel speaks dm interface {:?}, need 4.x", h.version),
            });
        }
        Ok(c)
    }

    /// One ioctl; returns the decoded reply header and the whole buffer.
    pub fn call(
        &self,
        cmd: Cmd,
        name: &str,
        flags: u32,
        targets: &[Target],
    ) -> Result<(DmHeader, Vec<u8>)> {
        let reply_err = |reason: String| Error::DmReply {
            operation: op(cmd),
            name: name.to_owned(),
            reason,
        };
        let mut buf = encode_request(cmd, name, flags, targets, BUFFER)
            .map_err(|e| reply_err(e.to_string()))?;
        // SAFETY: `buf` is a valid, writable dm_ioctl buffer of `data_size` bytes; the kernel
        // writes at most that many bytes back.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                request_code(cmd) as _,
                buf.as_mut_ptr(),
            )
        };
        if rc < 0 {
            return Err(Error::DmIoctl {
                operation: op(cmd),
                name: name.to_owned(),
                source: std::io::Error::last_os_error(),
            });
        }
        let h = DmHeader::decode(&buf).map_err(|e| reply_err(e.to_string()))?;
        if h.flags & DM_BUFFER_FULL_FLAG != 0 {
            return Err(reply_err("reply did not fit the buffer".into()));
        }
        Ok((h, buf))
    }

    /// Create a read-only device `name` with `table` and activate it; returns `/dev/dm-N`.
    pub fn create_verity(&self, name: &str, table: &VerityTable) -> Result<PathBuf> {
        self.call(Cmd::DevCreate, name, 0, &[])?;
        let activated = self
            .call(Cmd::TableLoad, name, DM_READONLY_FLAG, &[table.target()])
            .and_then(|_| self.call(Cmd::DevSuspend, name, 0, &[]));
        let (h, _) = match activated {
            Ok(r) => r,
            Err(e) => {
                // Leave no half-made device behind; the original error is what matters.
                let _ = self.call(Cmd::DevRemove, name, 0, &[]);
                return Err(e);
            }
        };
        let (_major, minor) = decode_dev(h.dev);
        Ok(PathBuf::from(format!("/dev/dm-{minor}")))
    }

    /// The status string of the (first) target of device `name`: for verity `V` (every block
    /// read so far verified) or `C` (corruption seen).
    pub fn status(&self, name: &str) -> Result<String> {
        let (_, buf) = self.call(Cmd::TableStatus, name, 0, &[])?;
        let reply_err = |reason: String| Error::DmReply {
            operation: "TABLE_STATUS",
            name: name.to_owned(),
            reason,
        };
        let targets = parse_table_status(&buf).map_err(|e| reply_err(e.to_string()))?;
        targets
            .into_iter()
            .next()
            .map(|t| t.params)
            .ok_or_else(|| reply_err("no target in the reply".into()))
    }
}
