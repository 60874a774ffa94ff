//! Thin, safe wrappers over the Linux system calls `basalt-init` needs (`libc` only): mount
//! (also without following symlinks), `openat2` confined to a root, `finit_module`, reboot,
//! and the `/dev/kmsg` + console logger.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstr(p: &[u8]) -> io::Result<CString> {
    CString::new(p).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// `mount(2)`. `source`/`fstype`/`data` may be empty (passed as NULL where the kernel
/// allows it).
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let src = cstr(source.as_bytes())?;
    let tgt = cstr(target.as_os_str().as_bytes())?;
    let fst = cstr(fstype.as_bytes())?;
    let dat = cstr(data.as_bytes())?;
    let opt = |c: &CString, empty: bool| if empty { std::ptr::null() } else { c.as_ptr() };
    // SAFETY: all pointers are valid NUL-terminated strings (or NULL) for the call's duration.
    let rc = unsafe {
        libc::mount(
            opt(&src, source.is_empty()),
            tgt.as_ptr(),
            opt(&fst, fstype.is_empty()),
            flags,
            opt(&dat, data.is_empty()).cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Open the directory `path` as an `O_PATH` descriptor without following a symlink in its
/// last component (`O_NOFOLLOW | O_DIRECTORY`: a symlink fails with `ELOOP`/`ENOTDIR`).
pub fn open_dir_nofollow(path: &Path) -> io::Result<OwnedFd> {
    let p = cstr(path.as_os_str().as_bytes())?;
    // SAFETY: valid C string; the flags ask for a path-only descriptor.
    let fd = unsafe {
        libc::open(
            p.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `mount(2)` onto the directory `target` without following a symlink there: the directory
/// is opened with [`open_dir_nofollow`] and the mount goes onto `/proc/self/fd/<fd>`, which
/// the kernel resolves to exactly that directory (systemd's `mount_nofollow`). `/proc` must
/// be mounted.
pub fn mount_nofollow(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let dir = open_dir_nofollow(target)?;
    let via = format!("/proc/self/fd/{}", dir.as_raw_fd());
    mount(source, Path::new(&via), fstype, flags, data)
}

/// Open `path` inside the tree rooted at `root` the way a process chrooted there would see
/// it (`openat2` with `RESOLVE_IN_ROOT`: absolute symlinks and `..` stay inside `root`;
/// `RESOLVE_NO_MAGICLINKS`), as an `O_PATH` descriptor of the final file.
pub fn open_in_root(root: &Path, path: &str) -> io::Result<OwnedFd> {
    let root_fd = open_dir_nofollow(root)?;
    let p = cstr(path.as_bytes())?;
    // `struct open_how` (linux/openat2.h); libc's is non-exhaustive, so ours, same layout.
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: valid descriptor, C string and `open_how` of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root_fd.as_raw_fd(),
            p.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own (fits in i32: the kernel returns an int).
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `fstat(2)` of a descriptor (`O_PATH` ones too: statx with `AT_EMPTY_PATH`).
pub fn fstat(fd: OwnedFd) -> io::Result<std::fs::Metadata> {
    File::from(fd).metadata()
}

/// `MODULE_INIT_COMPRESSED_FILE`: the kernel decompresses the module itself.
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

/// Load a kernel module with `finit_module(2)`. `EEXIST` (already loaded) counts as success.
pub fn load_module(path: &Path, compressed: bool) -> io::Result<()> {
    let f = File::open(path)?;
    let params = cstr(b"")?;
    let flags = if compressed {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };
    // SAFETY: fd is open for the call; params is a valid empty C string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            f.as_raw_fd(),
            params.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EEXIST) {
        Ok(())
    } else {
        Err(e)
    }
}

/// `FS_IMMUTABLE_FL` (linux/fs.h).
const FS_IMMUTABLE_FL: libc::c_int = 0x10;

/// Set or clear the immutable flag of `path` (`chattr ±i`, `FS_IOC_SETFLAGS`); returns
/// whether it was set before. A file system without inode flags reads as "not set" and is
/// left alone. efivarfs marks variables of unknown vendors immutable: rewriting or deleting
/// one needs the flag cleared first (as systemd does).
pub fn set_immutable(path: &Path, on: bool) -> io::Result<bool> {
    let f = File::open(path)?;
    let mut flags: libc::c_int = 0;
    // SAFETY: the fd is open for the call; the kernel writes one int to `flags`.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOTTY | libc::EOPNOTSUPP | libc::EINVAL) => Ok(false),
            _ => Err(e),
        };
    }
    let was = flags & FS_IMMUTABLE_FL != 0;
    if was != on {
        let new = if on {
            flags | FS_IMMUTABLE_FL
        } else {
            flags & !FS_IMMUTABLE_FL
        };
        // SAFETY: as above; the kernel reads one int from `new`.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_SETFLAGS, &new) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(was)
}

/// `sync(2)`.
pub fn sync() {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::sync() }
}

/// `reboot(RB_AUTOBOOT)`; returns only if the kernel refused.
pub fn reboot() -> io::Error {
    // SAFETY: plain syscall; only returns on failure.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    io::Error::last_os_error()
}

/// This process's PID.
pub fn getpid() -> i32 {
    // SAFETY: cannot fail.
    unsafe { libc::getpid() }
}

/// Seconds since boot, from `/proc/uptime`.
pub fn uptime() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| parse_uptime(&s))
}

/// The first field of `/proc/uptime`.
pub fn parse_uptime(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// Where `basalt-init` logs: `/dev/kmsg` once devtmpfs is up (each write is one record,
/// prefixed `basalt-init: `), the console (stderr, which the kernel opened on
/// `/dev/console`) before that and for failures.
#[derive(Debug, Default)]
pub struct Log {
    kmsg: Option<File>,
    /// Whether `debug` lines are printed.
    pub verbose: bool,
}

impl Log {
    /// Start logging to `/dev/kmsg` (call after mounting devtmpfs). Failure is not fatal:
    /// we keep logging to the console.
    pub fn open_kmsg(&mut self) {
        self.kmsg = OpenOptions::new().write(true).open("/dev/kmsg").ok();
    }

    fn emit(&mut self, level: u8, msg: &str, console_too: bool) {
        let mut wrote_kmsg = false;
        if let Some(k) = self.kmsg.as_mut() {
            // `<N>` sets the syslog level of the record; kmsg takes one record per write.
            wrote_kmsg = k
                .write_all(format!("<{level}>basalt-init: {msg}\n").as_bytes())
                .is_ok();
        }
        if console_too || !wrote_kmsg {
            let _ = writeln!(io::stderr(), "basalt-init: {msg}");
        }
    }

    /// A normal progress line.
    pub fn info(&mut self, msg: &str) {
        self.emit(6, msg, false);
    }

    /// A line printed only with `basalt.debug`.
    pub fn debug(&mut self, msg: &str) {
        if self.verbose {
            self.emit(7, msg, false);
        }
    }

    /// A warning (kmsg level 4).
    pub fn warn(&mut self, msg: &str) {
        self.emit(4, msg, false);
    }

    /// A failure: to kmsg (level 2) and always to the console.
    pub fn fail(&mut self, msg: &str) {
        self.emit(2, msg, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_first_field() {
        assert_eq!(parse_uptime("12.34 56.78\n"), Some(12.34));
        assert_eq!(parse_uptime(""), None);
        assert_eq!(parse_uptime("x y"), None);
    }
}
