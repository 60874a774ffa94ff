//! Activating the booted OS version's extension set on a node.
//!
//! ```text
//! store/<booted version>/*.raw
//!   │ every image, before anything is mounted (one refusal = nothing activated):
//!   │   statement signed by the node's trust root, name = file name, layout (image::open_verified)
//!   │   statement's os = booted ID; extension-release (signed copy) compatible (compat::check)
//!   ▼ then each image:
//! loop device (read-only, autoclear) ─▶ dm-verity `basalt-sysext-NAME`, table from the
//!   SIGNED parameters only (root hash, salt, blocks, hash start) ─▶ mount erofs ro,nodev,nosuid
//!   at /run/extensions/NAME ─▶ the mounted extension-release.NAME must equal the signed text
//!   ▼
//! systemd-sysext refresh   (systemd 252 merges directories found in /run/extensions/)
//! ```
//!
//! Why not hand systemd-sysext the `.raw` file: systemd 252 would set up dm-verity itself and
//! check a root-hash signature with the kernel keyring, which does not trust Basalt's keys
//! (the Debian kernel), so it would have to run with verity signatures off. Here the image
//! bytes are never trusted: what the kernel maps comes from a statement the node's trust root
//! signed, and every block read through the mount is checked against the signed root hash.
//! The whole tree is not re-read at boot (the agent recomputed it when staging, and dm-verity
//! checks each block on read).
//!
//! The node operations sit behind [`NodeOps`] ([`System`] on a node), so the sequence, the
//! refusals and the clean-up on failure are tested on a host without device-mapper.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use basalt_manifest::semver::Version;
use basalt_manifest::TrustRoot;
use basalt_verity::dm::VerityTable;
use basalt_verity::BLOCK_SIZE;

use crate::compat::{self, HostOs};
use crate::error::{Error, Result};
use crate::image::{open_verified, Extension};
use crate::store::Store;

/// Where systemd-sysext (252) picks up extension directories at runtime.
pub const RUN_EXTENSIONS: &str = "/run/extensions";
/// Prefix of the dm-verity device names (`basalt-sysext-NAME`).
pub const DM_PREFIX: &str = "basalt-sysext-";
/// How long `systemd-sysext refresh` may take.
pub const REFRESH_TIMEOUT: Duration = Duration::from_secs(120);

/// The node operations activation needs; [`System`] is the real one.
pub trait NodeOps {
    /// A held read-only block device for `image` (dropped once the verity device holds it).
    type Loop;
    /// Attaches `image` read-only; returns the hold and the device path.
    fn attach_loop(&mut self, image: &Path) -> std::io::Result<(Self::Loop, PathBuf)>;
    /// Creates read-only dm-verity device `dm_name` with `table`; returns its node.
    fn create_verity(&mut self, dm_name: &str, table: &VerityTable) -> Result<PathBuf, String>;
    /// Removes dm device `dm_name` (clean-up after a failure).
    fn remove_verity(&mut self, dm_name: &str) -> Result<(), String>;
    /// Mounts the erofs on `device` read-only (nodev, nosuid) at `target` (created).
    fn mount_erofs(&mut self, device: &Path, target: &Path) -> std::io::Result<()>;
    /// Unmounts `target` (clean-up after a failure).
    fn unmount(&mut self, target: &Path) -> std::io::Result<()>;
    /// Reads a file of a mounted extension (at most 64 KiB); `None` when it does not exist.
    fn read_file(&mut self, path: &Path) -> std::io::Result<Option<String>>;
    /// `systemd-sysext refresh`.
    fn refresh(&mut self) -> Result<(), String>;
}

/// What was activated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activated {
    /// The verified image.
    pub extension: Extension,
    /// The dm-verity device.
    pub device: PathBuf,
    /// Where it is mounted (`/run/extensions/NAME`).
    pub mount_point: PathBuf,
}

/// The inputs of one activation.
#[derive(Debug)]
pub struct Request<'a> {
    /// The store.
    pub store: &'a Store,
    /// The booted OS version (the set to activate).
    pub os_version: &'a Version,
    /// The node's trust root.
    pub root: &'a TrustRoot,
    /// The booted OS.
    pub host: &'a HostOs,
    /// Where to mount (normally [`RUN_EXTENSIONS`]).
    pub run_dir: &'a Path,
}

/// Checks every image of the booted version's set (signature, name, layout, OS,
/// compatibility) without mounting anything.
pub fn check_set(req: &Request<'_>) -> Result<Vec<Extension>> {
    let mut out = Vec::new();
    for image in req.store.images(req.os_version)? {
        let (_, ext) = open_verified(&image.path, req.root, Some(&image.name))?;
        check_extension(&ext.statement, req.host)?;
        out.push(ext);
    }
    Ok(out)
}

/// The statement is for the booted OS (`os` = `ID=`) and its extension-release fits.
pub fn check_extension(statement: &basalt_manifest::SysextStatement, host: &HostOs) -> Result<()> {
    if statement.os != host.id {
        return Err(Error::Incompatible {
            name: statement.name.clone(),
            reason: format!(
                "signed for OS {}, the booted OS is {}",
                statement.os, host.id
            ),
        });
    }
    compat::check(&statement.name, &statement.extension_release, host)
}

/// The dm-verity table for a verified extension on `device`: every number from the signed
/// statement, nothing from the image's own superblock.
pub fn verity_table(ext: &Extension, device: &Path) -> Result<VerityTable> {
    let v = &ext.statement.verity;
    let dev = device.display().to_string();
    let mut salt = vec![0u8; v.salt.len() / 2];
    basalt_identity::hex::decode_into(&v.salt, &mut salt).map_err(|e| Error::Layout {
        path: ext.path.clone(),
        reason: format!("signed salt: {e}"),
    })?;
    Ok(VerityTable {
        data_dev: dev.clone(),
        hash_dev: dev,
        data_block_size: v.data_block_size,
        hash_block_size: v.hash_block_size,
        data_blocks: v.data_blocks,
        hash_start_block: v.hash_offset / BLOCK_SIZE + 1,
        algorithm: "sha256".into(),
        root_hash: v.root_hash.0.to_vec(),
        salt,
        options: Vec::new(),
    })
}

/// Activates the booted version's set: all checks first ([`check_set`]), then each image
/// set up and mounted, then `systemd-sysext refresh`. On a failure the images of this call
/// that were already set up are taken down again.
pub fn activate_set<O: NodeOps>(ops: &mut O, req: &Request<'_>) -> Result<Vec<Activated>> {
    let exts = check_set(req)?;
    let mut done: Vec<Activated> = Vec::new();
    for ext in exts {
        match activate_one(ops, ext, req.run_dir) {
            Ok(a) => done.push(a),
            Err(e) => {
                teardown(ops, &done);
                return Err(e);
            }
        }
    }
    if !done.is_empty() {
        if let Err(reason) = ops.refresh() {
            teardown(ops, &done);
            return Err(Error::Activate {
                name: done
                    .iter()
                    .map(|a| a.extension.statement.name.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                operation: "systemd-sysext refresh",
                reason,
            });
        }
    }
    Ok(done)
}

fn teardown<O: NodeOps>(ops: &mut O, done: &[Activated]) {
    for a in done.iter().rev() {
        // Best effort: the error that made us tear down is what gets reported.
        let _ = ops.unmount(&a.mount_point);
        let _ = ops.remove_verity(&format!("{DM_PREFIX}{}", a.extension.statement.name));
    }
}

fn activate_one<O: NodeOps>(ops: &mut O, ext: Extension, run_dir: &Path) -> Result<Activated> {
    let name = ext.statement.name.clone();
    let fail = |operation: &'static str, reason: String| Error::Activate {
        name: name.clone(),
        operation,
        reason,
    };
    let dm_name = format!("{DM_PREFIX}{name}");
    let (hold, loop_dev) = ops
        .attach_loop(&ext.path)
        .map_err(|e| fail("attach a loop device", e.to_string()))?;
    let table = verity_table(&ext, &loop_dev)?;
    let device = ops
        .create_verity(&dm_name, &table)
        .map_err(|e| fail("create the dm-verity device", e))?;
    drop(hold);
    let mount_point = run_dir.join(&name);
    if let Err(e) = ops.mount_erofs(&device, &mount_point) {
        let _ = ops.remove_verity(&dm_name);
        return Err(fail(
            "mount the erofs read-only",
            format!("{}: {e}", mount_point.display()),
        ));
    }
    let release = mount_point.join(compat::release_path(&name));
    let verdict = match ops.read_file(&release) {
        Ok(Some(text)) if text == ext.statement.extension_release => Ok(()),
        Ok(Some(_)) => Err("differs from the signed extension-release".to_owned()),
        Ok(None) => Err("missing from the image".to_owned()),
        Err(e) => Err(format!("unreadable: {e}")),
    };
    if let Err(reason) = verdict {
        let _ = ops.unmount(&mount_point);
        let _ = ops.remove_verity(&dm_name);
        return Err(Error::ReleaseFile {
            name,
            path: release,
            reason,
        });
    }
    Ok(Activated {
        extension: ext,
        device,
        mount_point,
    })
}

/// What a boot unit runs: the booted OS from `os_release` (its `VERSION_ID` names the set,
/// `ID`/`SYSEXT_LEVEL`/`VERSION_ID` are what the extensions must fit), this machine's
/// architecture, then [`activate_set`].
pub fn activate_booted<O: NodeOps>(
    ops: &mut O,
    store: &Store,
    root: &TrustRoot,
    os_release: &Path,
    run_dir: &Path,
) -> Result<Vec<Activated>> {
    let host = HostOs::read(os_release, compat::native_architecture())?;
    let version_id = host
        .version_id
        .as_deref()
        .ok_or_else(|| Error::HostRelease {
            path: os_release.to_path_buf(),
            reason: "no VERSION_ID=: the extension set is chosen by the booted OS version".into(),
        })?;
    let os_version = Version::parse(version_id).map_err(|e| Error::HostRelease {
        path: os_release.to_path_buf(),
        reason: format!("VERSION_ID={version_id} is not a version: {e}"),
    })?;
    activate_set(
        ops,
        &Request {
            store,
            os_version: &os_version,
            root,
            host: &host,
            run_dir,
        },
    )
}

/// The real node operations: loop ioctls, basalt-init's device-mapper code, mount(2) and
/// `systemd-sysext`.
#[derive(Debug, Default)]
pub struct System;

impl NodeOps for System {
    type Loop = crate::loopdev::LoopDevice;

    fn attach_loop(&mut self, image: &Path) -> std::io::Result<(Self::Loop, PathBuf)> {
        let l = crate::loopdev::attach(image)?;
        let path = l.path.clone();
        Ok((l, path))
    }

    fn create_verity(&mut self, dm_name: &str, table: &VerityTable) -> Result<PathBuf, String> {
        let control = basalt_initramfs::dm::Control::open().map_err(|e| e.to_string())?;
        control
            .create_verity(dm_name, table)
            .map_err(|e| e.to_string())
    }

    fn remove_verity(&mut self, dm_name: &str) -> Result<(), String> {
        let control = basalt_initramfs::dm::Control::open().map_err(|e| e.to_string())?;
        control
            .call(basalt_verity::dm::Cmd::DevRemove, dm_name, 0, &[])
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn mount_erofs(&mut self, device: &Path, target: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(target)?;
        basalt_initramfs::sys::mount(
            &device.display().to_string(),
            target,
            "erofs",
            libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOSUID,
            "",
        )
    }

    fn unmount(&mut self, target: &Path) -> std::io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(target.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: a valid NUL-terminated path for the duration of the call.
        if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    fn read_file(&mut self, path: &Path) -> std::io::Result<Option<String>> {
        read_small(path)
    }

    fn refresh(&mut self) -> Result<(), String> {
        run_bounded(
            Command::new("systemd-sysext").arg("refresh"),
            REFRESH_TIMEOUT,
        )
    }
}

/// Reads at most 64 KiB of a text file; `None` when it does not exist.
pub fn read_small(path: &Path) -> std::io::Result<Option<String>> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    file.take(basalt_identity::osrelease::MAX_RELEASE_BYTES as u64)
        .read_to_string(&mut text)?;
    Ok(Some(text))
}

/// Runs `cmd` with a deadline; kills it (by its PID) when it overruns.
fn run_bounded(cmd: &mut Command, timeout: Duration) -> Result<(), String> {
    let program = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run {program}: {e}"))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                let mut err = String::new();
                if let Some(mut s) = child.stderr.take() {
                    use std::io::Read;
                    let _ = s.read_to_string(&mut err);
                }
                return Err(format!("{program} failed ({status}): {}", err.trim()));
            }
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{program} did not finish within {timeout:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("wait for {program}: {e}")),
        }
    }
}
