//! `switch_root`, as util-linux and busybox do it: move the API file systems into the new
//! root, delete the initramfs contents (they would pin RAM forever), make the new root `/`
//! and exec its init.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::sys;

/// The API file systems moved into the new root. `/proc` last: the moves go through
/// `/proc/self/fd` ([`sys::mount_nofollow`]), which must still be in place.
pub const MOVED_MOUNTS: [&str; 4] = ["/dev", "/sys", "/run", "/proc"];

const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;

fn step(step: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::SwitchRoot { step, source }
}

/// Switch to `new_root` and exec `init` with `args` (argv[1..]). Returns only on failure.
pub fn switch_root(new_root: &Path, init: &str, args: &[OsString]) -> Error {
    match try_switch_root(new_root, init, args) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn try_switch_root(
    new_root: &Path,
    init: &str,
    args: &[OsString],
) -> Result<std::convert::Infallible> {
    let init_c = CString::new(init)
        .map_err(|_| step("init path")(std::io::ErrorKind::InvalidInput.into()))?;
    let mut argv_c = vec![init_c.clone()];
    for a in args {
        argv_c.push(
            CString::new(a.as_bytes())
                .map_err(|_| step("init argument")(std::io::ErrorKind::InvalidInput.into()))?,
        );
    }
    for m in MOVED_MOUNTS {
        // The mount points are real directories (`rootfs::secure_root_entries`); a symlink
        // here would move the API mount onto whatever it names, e.g. over part of /usr.
        let target = new_root.join(m.trim_start_matches('/'));
        sys::mount_nofollow(m, &target, "", libc::MS_MOVE, "")
            .map_err(step("moving an API mount"))?;
    }
    std::env::set_current_dir(new_root).map_err(step("chdir to the new root"))?;
    // Only delete if / really is the initramfs (ramfs/tmpfs): never wipe a disk by mistake.
    // SAFETY: statfs writes into the zeroed struct we pass.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let root_c =
        CString::new("/").map_err(|_| step("statfs")(std::io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: valid C string and struct pointer.
    if unsafe { libc::statfs(root_c.as_ptr(), &mut st) } != 0 {
        return Err(step("statfs /")(std::io::Error::last_os_error()));
    }
    let ftype = st.f_type as i64;
    if ftype == RAMFS_MAGIC || ftype == TMPFS_MAGIC {
        let root_dev = std::fs::metadata("/").map_err(step("stat /"))?;
        delete_contents(
            Path::new("/"),
            std::os::unix::fs::MetadataExt::dev(&root_dev),
        );
    }
    sys::mount(".", Path::new("/"), "", libc::MS_MOVE, "")
        .map_err(step("moving the new root to /"))?;
    let dot =
        CString::new(".").map_err(|_| step("chroot")(std::io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: valid C string.
    if unsafe { libc::chroot(dot.as_ptr()) } != 0 {
        return Err(step("chroot")(std::io::Error::last_os_error()));
    }
    std::env::set_current_dir("/").map_err(step("chdir /"))?;
    let mut argv: Vec<*const libc::c_char> = argv_c.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: argv is a NULL-terminated array of valid C strings that outlive the call.
    unsafe { libc::execv(init_c.as_ptr(), argv.as_ptr()) };
    Err(step("exec init")(std::io::Error::last_os_error()))
}

/// Remove everything under `dir` that lives on device `dev` (mount points of other file
/// systems, such as the new root, are left alone). Errors are ignored, as in util-linux:
/// what cannot be removed only costs RAM.
fn delete_contents(dir: &Path, dev: u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.dev() != dev {
            continue;
        }
        if m.is_dir() {
            delete_contents(&p, dev);
            let _ = std::fs::remove_dir(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
}
