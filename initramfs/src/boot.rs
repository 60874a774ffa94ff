//! The boot sequence of `basalt-init`, step by step; every step's failure carries its
//! [`Reason`]. On success it ends in `exec` of the real init; it returns only a failure,
//! which `main` logs before rebooting.
//!
//! ```text
//! mount /dev /proc /sys /run ─► parse /proc/cmdline ─► boot policy (/etc/basalt/boot-policy:
//!      basalt.verity=eio|logging only in test images) ─► load modules (/etc/basalt/modules)
//!   ─► EFI variables (efivarfs): LoaderDevicePartUUID, the /usr version floor
//!   ─► poll disks (≤ basalt.wait s) for the boot disk (the one
//!      holding the loader's ESP, else the only one holding the usr data partition,
//!      UUID = usrhash[0..16]) ─► its verity partition (UUID = usrhash[16..32]) + root
//!   ─► verity superblock fits the partitions ─► usrhash signed (if trust root present)
//!   ─► every mapped verity parameter is the signed one; OS = the policy's; version ≥
//!      max(policy min-usr-version, BasaltUsrFloor)
//!   ─► dm-verity "usr" (read-only, restart_on_corruption)
//!   ─► root partition blank? mke2fs (neither blank nor ext: refuse) ─► mount it at /sysroot
//!   ─► repair the root's mount points and merged-/usr links (usr dev proc sys run: real
//!      directories; bin sbin lib lib64: links into usr/), checked without following links
//!   ─► mount erofs /dev/dm-N at /sysroot/usr (ro, not following links) ─► /etc from
//!      factory if missing ─► /var from factory if empty ─► missing skeleton directories
//!   ─► init= resolves, inside the new root, to an executable on the verified /usr
//!   ─► switch_root + exec init
//! any failure ─► "BASALT-INIT FAILED reason=…" ─► sync ─► reboot
//! ```

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::blockdev::BlockRoots;
use crate::cmdline::{Cmdline, VerityErrorMode};
use crate::error::Error;
use crate::locate::{locate, Located, Pin};
use crate::modules::{is_compressed, parse_module_list, ModuleListEntry, MODULE_LIST_PATH};
use crate::policy::{BootPolicy, POLICY_PATH};
use crate::reason::{Classify, Failure, Reason};
use crate::rootfs;
use crate::slot::{check_superblock, verity_table};
use crate::sys::{self, Log};
use crate::usrsig;
use basalt_identity::efivar;
use basalt_manifest::semver::Version;
use basalt_verity::Superblock;

/// The new root's mount point.
pub const SYSROOT: &str = "/sysroot";
/// The DM device name of `/usr`.
pub const DM_NAME: &str = "usr";

fn mount_err(
    source_name: &str,
    fstype: &str,
    target: &Path,
) -> impl FnOnce(std::io::Error) -> Error {
    let (source_name, fstype, target) =
        (source_name.to_owned(), fstype.to_owned(), target.to_owned());
    move |source| Error::Mount {
        source_name,
        fstype,
        target,
        source,
    }
}

fn mkdir(path: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(path).map_err(|source| Error::Fs {
        operation: "creating",
        path: path.to_owned(),
        source,
    })
}

/// Mount devtmpfs, proc, sysfs and a tmpfs `/run`. An already-mounted `/dev` (a kernel
/// with `CONFIG_DEVTMPFS_MOUNT`) is fine.
fn early_mounts() -> Result<(), Error> {
    let nosuid_noexec = libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV;
    let mounts: [(&str, &str, libc::c_ulong, &str); 4] = [
        ("devtmpfs", "/dev", libc::MS_NOSUID, "mode=0755"),
        ("proc", "/proc", nosuid_noexec, ""),
        ("sysfs", "/sys", nosuid_noexec, ""),
        (
            "tmpfs",
            "/run",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=0755",
        ),
    ];
    for (fstype, target, flags, data) in mounts {
        let target = Path::new(target);
        mkdir(target)?;
        match sys::mount(fstype, target, fstype, flags, data) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(mount_err(fstype, fstype, target)(e)),
        }
    }
    Ok(())
}

/// Load the modules of the list file wave by wave (`ModuleListEntry::wave`), the modules of
/// one wave at the same time, one thread each; optional failures are logged only, a required
/// one stops the boot after its wave. Why in parallel: under TCG each `finit_module` of the
/// container-host's ≈ 20 modules cost ≈ 50 ms one after the other (1.0 s of basalt-init's
/// 1.2 s, docs/benchmarks.md); the kernel loads independent modules concurrently (udev
/// does the same), and a wave only holds modules whose dependencies are already loaded.
fn load_modules(log: &mut Log, list: &Path) -> Result<usize, Error> {
    let text = match std::fs::read_to_string(list) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            log.info("no module list: loading no modules");
            return Ok(0);
        }
        Err(source) => {
            return Err(Error::ReadInput {
                path: list.to_owned(),
                source,
            })
        }
    };
    let mut entries = parse_module_list(&text)?;
    // Stable: within a wave, the list's order (the order of the log lines).
    entries.sort_by_key(|m| m.wave);
    let mut loaded = 0;
    for wave in entries.chunk_by(|a, b| a.wave == b.wave) {
        let results: Vec<std::io::Result<()>> = if wave.len() == 1 {
            vec![sys::load_module(
                Path::new(&wave[0].path),
                is_compressed(&wave[0].path),
            )]
        } else {
            let load =
                |m: &ModuleListEntry| sys::load_module(Path::new(&m.path), is_compressed(&m.path));
            std::thread::scope(|scope| {
                // A thread that cannot be created (memory) leaves its module to this one.
                let handles: Vec<_> = wave
                    .iter()
                    .map(|m| {
                        std::thread::Builder::new()
                            .spawn_scoped(scope, move || load(m))
                            .map_err(|_| m)
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| match h {
                        Ok(h) => h.join().unwrap_or_else(|_| {
                            Err(std::io::Error::other("the loading thread panicked"))
                        }),
                        Err(m) => load(m),
                    })
                    .collect()
            })
        };
        let mut failed = None;
        for (m, result) in wave.iter().zip(results) {
            match result {
                Ok(()) => {
                    loaded += 1;
                    log.debug(&format!("loaded {} (wave {})", m.path, m.wave));
                }
                Err(e) if m.optional => {
                    log.warn(&format!("optional module {} not loaded: {e}", m.path))
                }
                Err(source) => {
                    failed.get_or_insert(Error::LoadModule {
                        path: PathBuf::from(&m.path),
                        source,
                    });
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
    }
    Ok(loaded)
}

/// The EFI variables basalt-init reads before it trusts any disk. efivarfs is mounted the
/// way the failure recorder mounts it (`failrec::mount_efivarfs`: loads the module if
/// needed) and left mounted — it moves into the new root with `/sys`, where systemd finds it
/// mounted as it would mount it itself.
#[derive(Debug, Default)]
struct EfiVars {
    /// systemd-boot's `LoaderDevicePartUUID`.
    loader_part: Option<std::result::Result<Option<basalt_identity::Guid>, basalt_identity::Error>>,
    /// The machine's `/usr` version floor (`BasaltUsrFloor`), when set and readable.
    floor: Option<Version>,
}

fn read_efi_vars(log: &mut Log) -> EfiVars {
    let dir = match crate::failrec::mount_efivarfs() {
        Ok(Some(dir)) => dir,
        Ok(None) => {
            log.debug("no EFI firmware (direct kernel boot or BIOS): no EFI variables");
            return EfiVars::default();
        }
        Err(e) => {
            log.warn(&format!(
                "cannot mount efivarfs at {}: {e}; EFI variables not read",
                efivar::EFIVARS_DIR
            ));
            return EfiVars::default();
        }
    };
    // An unreadable floor is ignored, logged: it is no weaker than a deleted one (root can
    // do both, see SECURITY.md), and refusing would brick the machine on a corrupt variable.
    let floor = match efivar::usr_floor(&dir) {
        Ok(None) => None,
        Ok(Some(text)) => match Version::parse(&text) {
            Ok(v) => Some(v),
            Err(e) => {
                log.warn(&format!(
                    "ignoring the BasaltUsrFloor EFI variable {text:?}: {e}"
                ));
                None
            }
        },
        Err(e) => {
            log.warn(&format!("ignoring the BasaltUsrFloor EFI variable: {e}"));
            None
        }
    };
    EfiVars {
        loader_part: Some(efivar::loader_device_part_uuid(&dir)),
        floor,
    }
}

/// Who names the boot disk: systemd-boot's `LoaderDevicePartUUID` (the ESP it started
/// from), else `basalt.bootdisk=` (direct kernel boot), else nobody (the disk holding the
/// slot must then be unique). A loader variable that is present but cannot be trusted
/// refuses the boot: falling back to "any disk" is what an attacker planting it would want.
fn boot_pin(
    log: &mut Log,
    cmd: &Cmdline,
    loader_part: Option<std::result::Result<Option<basalt_identity::Guid>, basalt_identity::Error>>,
) -> Result<Option<Pin>, Error> {
    let pin = match loader_part {
        Some(Err(source)) => return Err(Error::BootDiskVariable { source }),
        Some(Ok(Some(uuid))) => {
            if let Some(other) = cmd.boot_disk.filter(|u| *u != uuid) {
                log.warn(&format!(
                    "ignoring basalt.bootdisk=PARTUUID={other}: the boot loader started from partition {uuid}"
                ));
            }
            Some(Pin::Loader(uuid))
        }
        Some(Ok(None)) | None => cmd.boot_disk.map(Pin::Cmdline),
    };
    match pin {
        Some(p) => log.info(&format!(
            "boot disk: the disk holding partition {} ({})",
            p.uuid(),
            p.named_by()
        )),
        None => log.info("boot disk: not named by the loader; the one disk holding the slot"),
    }
    Ok(pin)
}

/// "1.0.0 (boot policy), 2.0.0 (BasaltUsrFloor)" or "none", for the log.
fn describe_floor(policy: &BootPolicy, efi: Option<&Version>) -> String {
    let parts: Vec<String> = [
        policy
            .min_usr_version
            .as_ref()
            .map(|v| format!("{v} (boot policy)")),
        efi.map(|v| format!("{v} (BasaltUsrFloor)")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

fn read_superblock(node: &Path) -> Result<Superblock, Error> {
    let mut buf = [0u8; 512];
    std::fs::File::open(node)
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|source| Error::ReadSuperblock {
            device: node.to_owned(),
            source,
        })?;
    Superblock::parse(&buf).map_err(|e| Error::SuperblockInvalid {
        device: node.to_owned(),
        reason: e.to_string(),
    })
}

/// With a trust root in the initramfs, the slot's usr-hash statement (after the hash tree)
/// must verify for `usrhash=`; it is returned for the binding and version checks. Without a
/// trust root the check is skipped with a warning (development images built without
/// `--trust`), and so are those that need a signed statement.
fn check_signature(
    log: &mut Log,
    hash_node: &Path,
    sb: &Superblock,
    hash_len: u64,
    cmd: &Cmdline,
) -> Result<Option<usrsig::Signed>, Error> {
    let trust = match std::fs::read(usrsig::TRUST_PATH) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            log.warn(&format!(
                "no trust root at {}: the usrhash signature, the verity parameters, the OS and the version floor are NOT checked",
                usrsig::TRUST_PATH
            ));
            return Ok(None);
        }
        Err(source) => {
            return Err(Error::ReadInput {
                path: usrsig::TRUST_PATH.into(),
                source,
            })
        }
    };
    let offset = usrsig::statement_offset(sb);
    let want = (usrsig::MAX_ENVELOPE + 4096) as u64;
    let len = hash_len.saturating_sub(offset).min(want) as usize;
    let mut buf = vec![0u8; len];
    std::fs::File::open(hash_node)
        .and_then(|mut f| {
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(offset))?;
            f.read_exact(&mut buf)
        })
        .map_err(|e| Error::UsrSigBlock {
            reason: format!(
                "reading {len} bytes at {offset} of {}: {e}",
                hash_node.display()
            ),
        })?;
    let signed = usrsig::verify(&buf, &trust, &cmd.usrhash.to_string())?;
    log.info(&format!("usrhash is signed: {}", signed.describe()));
    Ok(Some(signed))
}

/// Run the boot. Returns only on failure (success ends in exec).
pub fn run(log: &mut Log, init_args: &[OsString]) -> Failure {
    match run_inner(log, init_args) {
        Ok(never) => match never {},
        Err(f) => f,
    }
}

fn run_inner(log: &mut Log, init_args: &[OsString]) -> Result<std::convert::Infallible, Failure> {
    early_mounts().class(Reason::EarlyMounts)?;
    log.open_kmsg();
    let devkmsg = DevKmsgLimit::lift();

    let text = std::fs::read_to_string("/proc/cmdline")
        .map_err(|source| Error::ReadCmdline {
            path: "/proc/cmdline".into(),
            source,
        })
        .class(Reason::CmdlineInvalid)?;
    let cmd = Cmdline::parse(&text).map_err(|e| Failure {
        reason: Reason::of(&e, Reason::CmdlineInvalid),
        error: e,
    })?;
    log.verbose = cmd.debug;
    log.info(&format!(
        "usrhash={} verity={} root {} init={}",
        cmd.usrhash,
        cmd.verity_mode.name(),
        cmd.root,
        cmd.init
    ));
    let policy = match BootPolicy::load(Path::new(POLICY_PATH)).class(Reason::BootPolicy)? {
        Some(p) => p,
        None => {
            log.warn(&format!(
                "no boot policy at {POLICY_PATH}: OS name and version floor are NOT checked; options that weaken verification are refused"
            ));
            BootPolicy::default()
        }
    };
    let (verity_mode, refused) = policy.verity_mode(cmd.verity_mode);
    if let Some(line) = refused {
        log.warn(&line);
    }

    let n = load_modules(log, Path::new(MODULE_LIST_PATH)).class(Reason::ModuleLoad)?;
    log.info(&format!("loaded {n} kernel modules"));

    let efi = read_efi_vars(log);
    let pin = boot_pin(log, &cmd, efi.loader_part).map_err(|e| Failure {
        reason: Reason::of(&e, Reason::NoBootDisk),
        error: e,
    })?;
    let l = locate(&cmd, pin, &BlockRoots::default(), &mut |line: &str| {
        log.info(line)
    })
    .map_err(|e| Failure {
        reason: Reason::of(&e, Reason::NoBootDisk),
        error: e,
    })?;
    log.info(&format!(
        "slot on {}: usr {} (partition {}), verity {} (partition {}), root {} (partition {})",
        l.disk.node.display(),
        l.data_node.display(),
        l.usr.data.number,
        l.hash_node.display(),
        l.usr.verity.number,
        l.root_node.display(),
        l.root.number
    ));

    let sb = read_superblock(&l.hash_node).class(Reason::SuperblockInvalid)?;
    check_superblock(&sb, &l.hash_node, l.usr.data.len, l.usr.verity.len)
        .class(Reason::SuperblockInvalid)?;
    log.debug(&format!(
        "superblock: {} data blocks, salt {} bytes",
        sb.data_blocks,
        sb.salt.len()
    ));

    let signed = check_signature(log, &l.hash_node, &sb, l.usr.verity.len, &cmd)
        .class(Reason::UsrhashNotSigned)?;
    if let Some(signed) = &signed {
        usrsig::check_binding(&signed.statement, &sb).class(Reason::VerityNotSigned)?;
        usrsig::check_version(&signed.statement, &policy, efi.floor.as_ref()).map_err(|e| {
            Failure {
                reason: Reason::of(&e, Reason::UsrBelowFloor),
                error: e,
            }
        })?;
        log.info(&format!(
            "verity parameters, OS and version {} are the signed ones (floor {})",
            signed.statement.version,
            describe_floor(&policy, efi.floor.as_ref())
        ));
    }

    let table = verity_table(&sb, &l.data_node, &l.hash_node, &cmd.usrhash, verity_mode);
    let dm_node = crate::dm::Control::open()
        .and_then(|c| c.create_verity(DM_NAME, &table))
        .class(Reason::DmSetup)?;
    log.info(&format!("dm-verity {DM_NAME} is {}", dm_node.display()));

    let sysroot = Path::new(SYSROOT);
    mkdir(sysroot).class(Reason::MountRoot)?;
    prepare_root_partition(log, &l.root_node)?;
    let root_src = l.root_node.display().to_string();
    sys::mount(&root_src, sysroot, "ext4", 0, "")
        .map_err(mount_err(&root_src, "ext4", sysroot))
        .class(Reason::MountRoot)?;

    // Before anything is mounted into the root: nothing on it may decide where /usr, the
    // merged-/usr links or the API mount points lead.
    let entries = rootfs::secure_root_entries(sysroot).class(Reason::RootEntries)?;
    for line in &entries.repaired {
        log.warn(line);
    }
    let usr = sysroot.join("usr");
    let dm_src = dm_node.display().to_string();
    sys::mount_nofollow(&dm_src, &usr, "erofs", libc::MS_RDONLY | libc::MS_NODEV, "")
        .map_err(mount_err(&dm_src, "erofs", &usr))
        .class(Reason::MountUsr)?;
    let usr_dev = std::fs::symlink_metadata(&usr)
        .map_err(|source| Error::Fs {
            operation: "inspecting the mounted",
            path: usr.clone(),
            source,
        })
        .class(Reason::MountUsr)?
        .dev();
    // The kernel's own verdict after the mount read the superblock: `V` = verified.
    match crate::dm::Control::open().and_then(|c| c.status(DM_NAME)) {
        Ok(status) => log.info(&format!("dm-verity {DM_NAME} status {status}")),
        Err(e) => log.warn(&format!("dm-verity {DM_NAME} status unknown: {e}")),
    }

    let etc = crate::factory::populate_etc(sysroot).class(Reason::PopulateEtc)?;
    log.debug(&format!("/etc: {etc:?}"));
    populate_root(log, sysroot, entries.created).class(Reason::PopulateRoot)?;

    verify_init(sysroot, &cmd.init, usr_dev).class(Reason::InitNotVerified)?;
    let up = sys::uptime().map_or_else(|| "?".to_owned(), |s| format!("{s:.3}"));
    let record = boot_record(&cmd, verity_mode, &l, &dm_node, &up);
    if let Err(e) = std::fs::create_dir_all(RUN_DIR)
        .and_then(|()| std::fs::write(format!("{RUN_DIR}/boot.env"), record))
    {
        log.warn(&format!("cannot write {RUN_DIR}/boot.env: {e}"));
    }
    log.info(&format!(
        "switching root to {SYSROOT}, exec {} ({up} s since kernel start)",
        cmd.init
    ));
    devkmsg.restore();
    sys::sync();
    Err(crate::switch_root::switch_root(
        sysroot, &cmd.init, init_args,
    ))
    .class(Reason::SwitchRoot)
}

/// First boot on a blank root partition: create ext4 with the initramfs's mke2fs. A
/// partition that is neither blank nor ext is refused (see [`crate::rootfs`]); an ext one is
/// left to the mount, which fails (`mount-root`) rather than reformat a corrupted one.
fn prepare_root_partition(log: &mut Log, node: &Path) -> Result<(), Failure> {
    let outcome = rootfs::ensure_filesystem(
        node,
        Path::new(rootfs::MKE2FS),
        rootfs::MKFS_TIMEOUT,
        || {
            log.info(&format!(
                "root partition {} is blank: creating ext4",
                node.display()
            ))
        },
    )
    .map_err(|e| Failure {
        reason: Reason::of(&e, Reason::MountRoot),
        error: e,
    })?;
    if outcome == rootfs::RootFs::Created {
        log.info(&format!(
            "created ext4 (label {}) on {}",
            rootfs::ROOT_LABEL,
            node.display()
        ));
    }
    Ok(())
}

/// After `/etc`: `/var` from the factory tree if empty, then the skeleton's missing entries
/// (also on pre-formatted roots that lack them). `created`: the mount points and links
/// [`rootfs::secure_root_entries`] created, for the same log line.
fn populate_root(
    log: &mut Log,
    sysroot: &Path,
    mut created: Vec<&'static str>,
) -> Result<(), Error> {
    let var = rootfs::populate_var(sysroot)?;
    log.debug(&format!("/var: {var:?}"));
    created.extend(rootfs::create_skeleton(sysroot)?);
    if !created.is_empty() {
        log.info(&format!("root skeleton: created {}", created.join(" ")));
    }
    Ok(())
}

/// Where `basalt-init` leaves what it booted for the real system (`/run` moves along).
pub const RUN_DIR: &str = "/run/basalt";

/// `/run/basalt/boot.env`: what was booted, `KEY=value` lines (systemd `EnvironmentFile=`
/// syntax), for the updater and for debugging.
fn boot_record(
    cmd: &Cmdline,
    verity_mode: VerityErrorMode,
    l: &Located,
    dm_node: &Path,
    uptime: &str,
) -> String {
    format!(
        "BASALT_USRHASH={}\nBASALT_DISK={}\nBASALT_USR_PARTITION={}\nBASALT_VERITY_PARTITION={}\n\
         BASALT_ROOT_PARTITION={}\nBASALT_USR_DEVICE={}\nBASALT_VERITY_MODE={}\n\
         BASALT_INITRAMFS_DONE_SECS={uptime}\n",
        cmd.usrhash,
        l.disk.node.display(),
        l.usr.data.number,
        l.usr.verity.number,
        l.root.number,
        dm_node.display(),
        verity_mode.table_option().unwrap_or("eio"),
    )
}

/// `init` (the `init=` path) must be an executable regular file on the verified `/usr`
/// (device `usr_dev`), resolved as the new root will see it: inside `sysroot`, symlinks
/// (absolute ones too) and `..` confined to it ([`sys::open_in_root`]). So neither an
/// `init=` naming a file on the writable root nor a path that leaves `/usr` through `..` or
/// a link is ever executed. (The kernel resolves the interpreter of a script or ELF file
/// again at exec: `/usr/bin/…` stays on `/usr`; `/lib64/…` follows the link
/// [`rootfs::secure_root_entries`] just made point into `/usr`.)
pub fn verify_init(sysroot: &Path, init: &str, usr_dev: u64) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let refused = |reason: String| Error::InitNotVerified {
        path: PathBuf::from(init),
        reason,
    };
    let fd = sys::open_in_root(sysroot, init)
        .map_err(|e| refused(format!("resolving it inside the new root: {e}")))?;
    let m = sys::fstat(fd).map_err(|e| refused(format!("inspecting it: {e}")))?;
    if m.dev() != usr_dev {
        return Err(refused(format!(
            "it resolves to a file on device {}:{}, not on the verified /usr ({}:{})",
            libc::major(m.dev()),
            libc::minor(m.dev()),
            libc::major(usr_dev),
            libc::minor(usr_dev)
        )));
    }
    if !m.is_file() {
        return Err(refused("it is not a regular file".into()));
    }
    if m.permissions().mode() & 0o111 == 0 {
        return Err(refused("it is not executable".into()));
    }
    Ok(())
}

/// `printk.devkmsg` rate-limits userspace writes to /dev/kmsg by default (10 lines per 5 s),
/// which would drop our log: set it to `on` for the initramfs and restore it just before
/// switch_root. On failure it stays `on` so the failure line gets through; we reboot anyway.
struct DevKmsgLimit(Option<String>);

const PRINTK_DEVKMSG: &str = "/proc/sys/kernel/printk_devkmsg";

impl DevKmsgLimit {
    fn lift() -> Self {
        let old = std::fs::read_to_string(PRINTK_DEVKMSG).ok();
        if old.as_deref().map(str::trim) == Some("ratelimit") {
            let _ = std::fs::write(PRINTK_DEVKMSG, "on\n");
            Self(old)
        } else {
            Self(None)
        }
    }
}

impl DevKmsgLimit {
    fn restore(self) {
        if let Some(old) = &self.0 {
            let _ = std::fs::write(PRINTK_DEVKMSG, old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reason::Reason;

    /// The device check itself is exercised in the VM (`boot_hostile_root`: an `init=` on the
    /// writable root); here one device stands for "/usr" and any other for "not /usr".
    #[test]
    fn init_is_resolved_inside_the_new_root_and_must_be_an_executable_on_usr() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let write = |rel: &str, mode: u32| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "#!/usr/bin/busybox sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write("usr/lib/systemd/systemd", 0o755);
        write("usr/lib/notexec", 0o644);
        std::fs::create_dir_all(root.join("usr/sbin")).unwrap();
        // Absolute links resolve inside the new root, not in the initramfs.
        symlink("/usr/lib/systemd/systemd", root.join("usr/sbin/init")).unwrap();
        let dev = std::fs::metadata(root).unwrap().dev();
        for ok in [
            "/usr/lib/systemd/systemd",
            "/usr/sbin/init",
            "/usr//lib/../lib/systemd/systemd",
        ] {
            verify_init(root, ok, dev).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let refused = |init: &str, usr_dev: u64| {
            let e = verify_init(root, init, usr_dev).unwrap_err();
            assert_eq!(
                Reason::of(&e, Reason::Panic),
                Reason::InitNotVerified,
                "{e}"
            );
            e.to_string()
        };
        assert!(refused("/usr/lib/systemd/systemd", dev + 1).contains("not on the verified /usr"));
        assert!(refused("/usr/lib/notexec", dev).contains("not executable"));
        assert!(refused("/usr/lib", dev).contains("not a regular file"));
        // `..` cannot climb out of the new root to a file of the initramfs.
        let e = refused("/usr/../../../../../../proc/self/exe", dev);
        assert!(e.contains("resolving it inside the new root"), "{e}");
        assert!(refused("/nonexistent", dev).contains("No such file"));
    }
}
