//! Attaching an image file to a read-only loop device (`LOOP_CTL_GET_FREE` +
//! `LOOP_CONFIGURE`, Linux ≥ 5.8), the block device dm-verity needs under an extension.
//!
//! The device is configured `LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR`: it detaches itself
//! when the last holder (our descriptor, then the dm-verity table) lets go, so a failed
//! activation leaves no loop device behind. Works on the build host too (it has loop
//! devices), where the tests use it.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const LOOP_CONTROL: &str = "/dev/loop-control";
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// `struct loop_config`: fd u32, block_size u32, `struct loop_info64` (232 bytes), 8 × u64.
const CONFIG_SIZE: usize = 4 + 4 + 232 + 64;
/// Offset of `lo_flags` in `loop_config` (8 + 5 × u64 + 3 × u32).
const FLAGS_AT: usize = 8 + 40 + 12;
/// Offset of `lo_file_name[64]`.
const FILE_NAME_AT: usize = FLAGS_AT + 4;
/// Another process may take the free device between GET_FREE and CONFIGURE: retry this often.
const ATTEMPTS: usize = 16;

/// An attached loop device; keep it alive until something else holds the device open.
#[derive(Debug)]
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub path: PathBuf,
    file: File,
}

impl LoopDevice {
    /// The open device.
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// The `loop_config` bytes for backing descriptor `fd`.
pub fn encode_config(fd: u32, image: &Path) -> [u8; CONFIG_SIZE] {
    let mut c = [0u8; CONFIG_SIZE];
    c[0..4].copy_from_slice(&fd.to_ne_bytes());
    c[FLAGS_AT..FLAGS_AT + 4]
        .copy_from_slice(&(LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR).to_ne_bytes());
    let name = image.as_os_str().as_encoded_bytes();
    let n = name.len().min(63);
    c[FILE_NAME_AT..FILE_NAME_AT + n].copy_from_slice(&name[..n]);
    c
}

/// Attaches `image` read-only to a free loop device.
pub fn attach(image: &Path) -> std::io::Result<LoopDevice> {
    let backing = File::open(image)?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open(LOOP_CONTROL)?;
    let mut last = std::io::Error::other("no attempt made");
    for _ in 0..ATTEMPTS {
        // SAFETY: a plain ioctl without argument on an open descriptor.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = match OpenOptions::new().read(true).open(&path) {
            Ok(f) => f,
            Err(e) => {
                last = e;
                continue;
            }
        };
        let config = encode_config(backing.as_raw_fd() as u32, image);
        // SAFETY: `config` is a valid `struct loop_config` that outlives the call; the kernel
        // only reads it.
        let rc = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE as _, config.as_ptr()) };
        if rc == 0 {
            return Ok(LoopDevice { path, file: dev });
        }
        last = std::io::Error::last_os_error();
        if last.raw_os_error() != Some(libc::EBUSY) {
            return Err(last);
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_layout() {
        let c = encode_config(7, Path::new("/var/lib/basalt/extensions/1.0.0/tools.raw"));
        assert_eq!(c.len(), 304);
        assert_eq!(&c[0..4], &7u32.to_ne_bytes());
        assert_eq!(&c[4..8], &[0; 4], "block size: the backing file's");
        assert_eq!(&c[FLAGS_AT..FLAGS_AT + 4], &5u32.to_ne_bytes());
        assert!(c[FILE_NAME_AT..].starts_with(b"/var/lib/basalt/extensions/1.0.0/tools"));
        assert_eq!(c[FILE_NAME_AT + 63], 0, "the name stays NUL-terminated");
    }
}
