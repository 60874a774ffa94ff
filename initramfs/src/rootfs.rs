//! The root partition on first boot: decide whether it is blank ([`classify`]), create the
//! ext4 file system on a blank one ([`make_ext4`], running `mke2fs` from the initramfs), and
//! give a mounted root its skeleton ([`create_skeleton`]) and `/var` ([`populate_var`]).
//!
//! The rule is "nothing is lost": only a partition that is provably unused is formatted.
//! "Blank" means: no file-system, swap or encryption signature we know, **and** the first
//! [`HEAD_LEN`] bytes (1 MiB) are all zeros. A fresh cloud disk, a `truncate`d image or a
//! `blkdiscard`ed partition is blank; a partition that held anything — even after `wipefs`,
//! which erases only the magic bytes — is not, and is refused ([`Content::Unrecognised`])
//! rather than formatted. An ext2/3/4 superblock magic means "ours": it is mounted, never
//! reformatted, so a corrupted ext4 fails at mount time (`mount-root`) and the data stays.
//!
//! Known limit: `mke2fs` zeroes the first sectors, then writes metadata, and writes the
//! superblock last; a power loss in between leaves a partition that is neither blank nor
//! ext4, which the next boot refuses (`root-unrecognised`). Recovery is manual: zero the
//! first MiB of the partition (`dd if=/dev/zero of=/dev/vdaN bs=1M count=1`).

use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::factory::copy_tree;

/// How much of the partition's start is read to decide whether it is blank (1 MiB: covers
/// every signature below, the btrfs superblock at 64 KiB included).
pub const HEAD_LEN: usize = 1 << 20;

/// Where `mke2fs` lives in the initramfs (`basalt initramfs build --with-binary /sbin/mke2fs`).
pub const MKE2FS: &str = "/sbin/mke2fs";

/// The label of a root file system created by `basalt-init`.
pub const ROOT_LABEL: &str = "basalt-root";

/// How long `mke2fs` may run before it is killed. Generous: TCG guests are slow, and a large
/// disk's discard takes a while; `lazy_itable_init` (the kernel's default once ext4 is
/// loaded) keeps the writes themselves small.
pub const MKFS_TIMEOUT: Duration = Duration::from_secs(300);

/// Where the image keeps its default `/var`, relative to the new root.
pub const FACTORY_VAR: &str = "usr/share/factory/var";

/// What the start of a partition holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// No signature and all zeros: safe to format.
    Blank,
    /// An ext2/3/4 superblock magic: mount it (as ext4), never format it.
    Ext,
    /// Something else — a known signature (named) or non-zero bytes: refuse.
    Unrecognised(String),
}

/// A signature: name, byte offset, magic bytes.
type Signature = (&'static str, usize, &'static [u8]);

/// Signatures of what we refuse to overwrite (offsets and magics as in util-linux libblkid's
/// probers). ext is checked separately since it is the one we accept.
const FOREIGN: &[Signature] = &[
    ("xfs", 0, b"XFSB"),
    ("btrfs", 65536 + 64, b"_BHRfS_M"),
    // EROFS_SUPER_MAGIC_V1 0xE0F5E1E2, little-endian, at 1024.
    ("erofs", 1024, &[0xe2, 0xe1, 0xf5, 0xe0]),
    ("squashfs", 0, b"hsqs"),
    ("luks", 0, b"LUKS\xba\xbe"),
    ("luks2 (secondary header)", 16384, b"SKUL\xba\xbe"),
    ("vfat (FAT32)", 82, b"FAT32   "),
    ("vfat (FAT12/16)", 54, b"FAT"),
    ("ntfs", 3, b"NTFS    "),
    ("swap", 4096 - 10, b"SWAPSPACE2"),
    ("swap (v0)", 4096 - 10, b"SWAP-SPACE"),
    ("swap (64 KiB pages)", 65536 - 10, b"SWAPSPACE2"),
    ("iso9660", 32769, b"CD001"),
    ("gpt (nested partition table)", 512, b"EFI PART"),
    ("linux raid (md 1.1)", 0, &[0xfc, 0x4e, 0x2b, 0xa9]),
    ("linux raid (md 1.2)", 4096, &[0xfc, 0x4e, 0x2b, 0xa9]),
    ("lvm2 pv", 512 + 24, b"LVM2 001"),
    ("dos boot sector", 510, &[0x55, 0xaa]),
];

/// ext2/3/4: `s_magic` 0xEF53 (little-endian) at superblock (1024) + 0x38.
const EXT_MAGIC: Signature = ("ext", 1024 + 0x38, &[0x53, 0xef]);

fn has(head: &[u8], (_, off, magic): &Signature) -> bool {
    head.get(*off..off + magic.len()) == Some(magic)
}

/// Classify the first bytes of a partition (pass up to [`HEAD_LEN`]; a shorter slice is the
/// whole partition). Pure.
pub fn classify(head: &[u8]) -> Content {
    if has(head, &EXT_MAGIC) {
        return Content::Ext;
    }
    if let Some((name, _, _)) = FOREIGN.iter().find(|s| has(head, s)) {
        return Content::Unrecognised(format!("{name} signature"));
    }
    match head.iter().position(|&b| b != 0) {
        None => Content::Blank,
        Some(at) => Content::Unrecognised(format!(
            "no known signature, but non-zero data at byte {at} of the first {} bytes",
            head.len()
        )),
    }
}

/// Read up to [`HEAD_LEN`] bytes from the start of a device (or image file).
pub fn read_head(device: &Path) -> Result<Vec<u8>> {
    let err = |source| Error::ReadRootPartition {
        device: device.to_owned(),
        source,
    };
    let f = fs::File::open(device).map_err(err)?;
    let mut head = Vec::with_capacity(HEAD_LEN);
    f.take(HEAD_LEN as u64)
        .read_to_end(&mut head)
        .map_err(err)?;
    Ok(head)
}

/// What [`ensure_filesystem`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootFs {
    /// The partition already held ext2/3/4.
    Present,
    /// The partition was blank and now holds a fresh ext4.
    Created,
}

/// Make sure `device` holds an ext file system: format it with `mke2fs` if (and only if) it
/// is blank; refuse anything unrecognised. `before_mkfs` runs just before formatting (the
/// boot logs there). This is exactly what `basalt-init` runs on the root partition.
pub fn ensure_filesystem(
    device: &Path,
    mke2fs: &Path,
    timeout: Duration,
    before_mkfs: impl FnOnce(),
) -> Result<RootFs> {
    match classify(&read_head(device)?) {
        Content::Ext => Ok(RootFs::Present),
        Content::Unrecognised(found) => Err(Error::RootUnrecognised {
            device: device.to_owned(),
            found,
        }),
        Content::Blank => {
            before_mkfs();
            make_ext4(mke2fs, device, timeout)?;
            // mke2fs said it succeeded; check that it left what the next boot will accept.
            match classify(&read_head(device)?) {
                Content::Ext => Ok(RootFs::Created),
                other => Err(Error::Mkfs {
                    device: device.to_owned(),
                    reason: format!("mke2fs succeeded but the partition reads as {other:?}"),
                }),
            }
        }
    }
}

/// Run `mke2fs -t ext4 -L basalt-root -q -F <device>`, killing it after `timeout`. `-F`:
/// the device may be a regular file (host tests) and no prompt can be answered in an
/// initramfs. Without `/etc/mke2fs.conf`, mke2fs uses its built-in defaults (the same
/// ext4 features as Debian's file).
pub fn make_ext4(mke2fs: &Path, device: &Path, timeout: Duration) -> Result<()> {
    let fail = |reason: String| Error::Mkfs {
        device: device.to_owned(),
        reason,
    };
    let mut child = Command::new(mke2fs)
        .args(["-t", "ext4", "-L", ROOT_LABEL, "-q", "-F"])
        .arg(device)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                " (build the initramfs with --with-binary /sbin/mke2fs)"
            } else {
                ""
            };
            fail(format!("cannot run {}: {e}{hint}", mke2fs.display()))
        })?;
    // Drain both pipes on threads so a chatty mke2fs never blocks on a full pipe.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut out);
            }
            out
        })
    };
    let out = drain(child.stdout.take().map(|s| Box::new(s) as _));
    let err = drain(child.stderr.take().map(|s| Box::new(s) as _));
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "{} did not finish within {} s: killed",
                    mke2fs.display(),
                    timeout.as_secs()
                )));
            }
            Err(e) => return Err(fail(format!("waiting for {}: {e}", mke2fs.display()))),
        }
    };
    let mut output = out.join().unwrap_or_default();
    output.extend(err.join().unwrap_or_default());
    if status.success() {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(&output);
        Err(fail(format!(
            "{} exited with {status}: {}",
            mke2fs.display(),
            text.trim()
        )))
    }
}

/// The root's API mount points and `usr`: real directories, whatever the root partition
/// holds. A symlink here would redirect a mount — `usr → /sysroot/evil` puts the verified
/// erofs somewhere else and leaves `/usr` pointing at the attacker's files after
/// switch_root; `run → usr/lib/basalt` makes the moved `/run` shadow part of `/usr`.
pub const MOUNT_POINTS: [(&str, u32); 5] = [
    ("usr", 0o755),
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("run", 0o755),
];

/// The merged-/usr links, exactly these targets: a real `lib64` directory with another
/// `ld-linux-x86-64.so.2` would run under every dynamically linked program.
pub const USR_LINKS: [(&str, &str); 4] = [
    ("bin", "usr/bin"),
    ("sbin", "usr/sbin"),
    ("lib", "usr/lib"),
    ("lib64", "usr/lib64"),
];

/// The rest of the root's skeleton: created when missing, otherwise the node's business.
/// `etc` and `var` come last so that [`crate::factory::populate_etc`] and [`populate_var`],
/// which run first, decide their content.
pub const SKELETON: &[(&str, u32)] = &[
    ("tmp", 0o1777),
    ("root", 0o700),
    ("home", 0o755),
    ("mnt", 0o755),
    ("etc", 0o755),
    ("var", 0o755),
];

/// Suffix of an entry moved out of the way by [`secure_root_entries`].
pub const DISPLACED_SUFFIX: &str = ".basalt-displaced";
/// How many displaced copies of one entry may pile up before the boot is refused.
const MAX_DISPLACED: u32 = 100;

fn fs_err(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Fs {
        operation,
        path,
        source,
    }
}

/// What [`secure_root_entries`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootEntries {
    /// Entries that were missing and were created.
    pub created: Vec<&'static str>,
    /// Entries that were wrong, one log line each: what was found, what was done.
    pub repaired: Vec<String>,
}

fn kind(m: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_symlink() {
        "a symlink"
    } else if t.is_fifo() {
        "a fifo"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a device node"
    }
}

/// Move `path` to the first free `<name>.basalt-displaced[.N]` beside it; returns that name.
/// Nothing is deleted: whatever the node (or an attacker) put there stays readable, it just
/// no longer decides what the system runs.
fn displace(root: &Path, name: &str) -> Result<String> {
    let from = root.join(name);
    for n in 0..MAX_DISPLACED {
        let aside = if n == 0 {
            format!("{name}{DISPLACED_SUFFIX}")
        } else {
            format!("{name}{DISPLACED_SUFFIX}.{n}")
        };
        let to = root.join(&aside);
        if fs::symlink_metadata(&to).is_ok() {
            continue;
        }
        fs::rename(&from, &to).map_err(fs_err("moving aside", &from))?;
        return Ok(aside);
    }
    Err(Error::RootEntry {
        name: name.to_owned(),
        reason: format!("{MAX_DISPLACED} displaced copies already exist; clean them up"),
    })
}

fn make_dir(path: &Path, mode: u32) -> Result<()> {
    fs::create_dir(path).map_err(fs_err("creating", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(fs_err("chmod", path))
}

/// Make the top of a mounted root partition safe to build the system on, before `/usr` is
/// mounted: every [`MOUNT_POINTS`] entry a real directory, every [`USR_LINKS`] entry a
/// symlink with exactly its target. Checked without following symlinks; a wrong symlink is
/// replaced (it holds no data), anything else in the way is moved aside
/// ([`DISPLACED_SUFFIX`]), never deleted. Missing entries are created.
///
/// Safe without races: this runs in PID 1 of the initramfs before anything from the root
/// partition runs; the mounts that follow use the checked directories without following
/// links again ([`crate::sys::mount_nofollow`]).
pub fn secure_root_entries(root: &Path) -> Result<RootEntries> {
    let mut out = RootEntries::default();
    for (name, mode) in MOUNT_POINTS {
        let path = root.join(name);
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                make_dir(&path, mode)?;
                out.created.push(name);
            }
            Err(e) => return Err(fs_err("inspecting", &path)(e)),
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(&path).map_err(fs_err("reading link", &path))?;
                fs::remove_file(&path).map_err(fs_err("removing link", &path))?;
                make_dir(&path, mode)?;
                out.repaired.push(format!(
                    "repaired root entry {name}: was a symlink to {}; now a directory",
                    target.display()
                ));
            }
            Ok(m) => {
                let aside = displace(root, name)?;
                make_dir(&path, mode)?;
                out.repaired.push(format!(
                    "repaired root entry {name}: was {}, moved to {aside}; now a directory",
                    kind(&m)
                ));
            }
        }
    }
    for (name, target) in USR_LINKS {
        let path = root.join(name);
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                symlink(target, &path).map_err(fs_err("creating link", &path))?;
                out.created.push(name);
            }
            Err(e) => return Err(fs_err("inspecting", &path)(e)),
            Ok(m) if m.file_type().is_symlink() => {
                let found = fs::read_link(&path).map_err(fs_err("reading link", &path))?;
                if found == Path::new(target) {
                    continue;
                }
                fs::remove_file(&path).map_err(fs_err("removing link", &path))?;
                symlink(target, &path).map_err(fs_err("creating link", &path))?;
                out.repaired.push(format!(
                    "repaired root entry {name}: was a symlink to {}; now a link to {target}",
                    found.display()
                ));
            }
            Ok(m) => {
                let aside = displace(root, name)?;
                symlink(target, &path).map_err(fs_err("creating link", &path))?;
                out.repaired.push(format!(
                    "repaired root entry {name}: was {}, moved to {aside}; now a link to {target}",
                    kind(&m)
                ));
            }
        }
    }
    Ok(out)
}

/// Create the missing entries of [`SKELETON`] under `root`; returns the names created.
/// Idempotent: an existing entry (of whatever kind and mode) is left alone — it is the
/// node's, not ours. Modes are set explicitly, independent of the umask.
pub fn create_skeleton(root: &Path) -> Result<Vec<&'static str>> {
    let mut created = Vec::new();
    for &(name, mode) in SKELETON {
        let path = root.join(name);
        if fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        make_dir(&path, mode)?;
        created.push(name);
    }
    Ok(created)
}

/// What [`populate_var`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarOutcome {
    /// `/var` has content (or is not a directory); nothing done.
    Present,
    /// No factory `/var` in the image; nothing done.
    NoFactory,
    /// `/var` was copied from the factory tree (number of entries).
    Populated(usize),
}

/// Fill `/var` from `/usr/share/factory/var` when `/var` is missing or an empty directory.
/// The copy goes to `var.basalt-tmp` and is renamed over the (empty) `/var`, so an
/// interrupted first boot retries from scratch.
pub fn populate_var(root: &Path) -> Result<VarOutcome> {
    let var = root.join("var");
    match fs::symlink_metadata(&var) {
        Ok(m) if !m.is_dir() => return Ok(VarOutcome::Present),
        Ok(_) => {
            let mut entries = fs::read_dir(&var).map_err(fs_err("listing", &var))?;
            if entries.next().is_some() {
                return Ok(VarOutcome::Present);
            }
        }
        Err(_) => {}
    }
    let factory = root.join(FACTORY_VAR);
    if !factory.is_dir() {
        return Ok(VarOutcome::NoFactory);
    }
    let tmp: PathBuf = root.join("var.basalt-tmp");
    if fs::symlink_metadata(&tmp).is_ok() {
        fs::remove_dir_all(&tmp).map_err(fs_err("removing", &tmp))?;
    }
    let n = copy_tree(&factory, &tmp)?;
    // rename(2) replaces an empty directory atomically.
    fs::rename(&tmp, &var).map_err(fs_err("renaming into place", &var))?;
    Ok(VarOutcome::Populated(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reason::Reason;
    use std::os::unix::fs::MetadataExt;

    fn with(off: usize, magic: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; HEAD_LEN];
        h[off..off + magic.len()].copy_from_slice(magic);
        h
    }

    #[test]
    fn zeros_are_blank_at_any_length() {
        assert_eq!(classify(&vec![0u8; HEAD_LEN]), Content::Blank);
        assert_eq!(classify(&[0u8; 4096]), Content::Blank);
        assert_eq!(classify(&[]), Content::Blank);
    }

    #[test]
    fn ext_magic_is_ext_even_when_the_rest_is_garbage() {
        assert_eq!(classify(&with(1080, &[0x53, 0xef])), Content::Ext);
        let mut h: Vec<u8> = (0..HEAD_LEN).map(|i| (i * 131 % 251) as u8).collect();
        h[1080] = 0x53;
        h[1081] = 0xef;
        assert_eq!(classify(&h), Content::Ext);
        // Byte order matters: 0xEF53 big-endian is not ext.
        assert!(matches!(
            classify(&with(1080, &[0xef, 0x53])),
            Content::Unrecognised(_)
        ));
    }

    #[test]
    fn each_foreign_signature_is_refused_by_name() {
        let cases: &[(&str, usize, &[u8])] = &[
            ("xfs", 0, b"XFSB"),
            ("btrfs", 65600, b"_BHRfS_M"),
            ("erofs", 1024, &[0xe2, 0xe1, 0xf5, 0xe0]),
            ("squashfs", 0, b"hsqs"),
            ("luks", 0, b"LUKS\xba\xbe"),
            ("vfat (FAT32)", 82, b"FAT32   "),
            ("vfat (FAT12/16)", 54, b"FAT16   "),
            ("swap", 4086, b"SWAPSPACE2"),
            ("ntfs", 3, b"NTFS    "),
            ("iso9660", 32769, b"CD001"),
        ];
        for (name, off, magic) in cases {
            match classify(&with(*off, magic)) {
                Content::Unrecognised(why) => {
                    assert_eq!(why, format!("{name} signature"), "{name}")
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn garbage_or_one_stray_byte_is_unrecognised() {
        let mut h = vec![0u8; HEAD_LEN];
        h[HEAD_LEN - 1] = 1;
        match classify(&h) {
            Content::Unrecognised(why) => assert!(why.contains("1048575"), "{why}"),
            other => panic!("{other:?}"),
        }
        // A pseudo-random head (xorshift) without the ext magic.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut g = vec![0u8; HEAD_LEN];
        for b in g.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        g[1080] = 0;
        assert!(matches!(classify(&g), Content::Unrecognised(_)));
    }

    fn mode(root: &Path, n: &str) -> u32 {
        fs::symlink_metadata(root.join(n)).unwrap().mode() & 0o7777
    }

    #[test]
    fn fresh_root_gets_mount_points_links_and_skeleton_idempotently() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let e = secure_root_entries(root).unwrap();
        assert_eq!(
            e.created,
            ["usr", "dev", "proc", "sys", "run", "bin", "sbin", "lib", "lib64"]
        );
        assert!(e.repaired.is_empty());
        let created = create_skeleton(root).unwrap();
        assert_eq!(created, ["tmp", "root", "home", "mnt", "etc", "var"]);
        assert_eq!(mode(root, "tmp"), 0o1777);
        assert_eq!(mode(root, "root"), 0o700);
        assert_eq!(mode(root, "proc"), 0o555);
        for (link, target) in USR_LINKS {
            assert_eq!(fs::read_link(root.join(link)).unwrap(), Path::new(target));
        }
        // Second boot: nothing created, nothing repaired, the node's changes stay.
        fs::set_permissions(root.join("home"), fs::Permissions::from_mode(0o750)).unwrap();
        assert_eq!(secure_root_entries(root).unwrap(), RootEntries::default());
        assert!(create_skeleton(root).unwrap().is_empty());
        assert_eq!(mode(root, "home"), 0o750);
    }

    /// Every kind of thing an attacker can leave where a mount point or a merged-/usr link
    /// must be: each is repaired, nothing is deleted but links.
    #[test]
    fn hostile_entries_are_repaired_and_kept_aside() {
        use std::os::unix::net::UnixListener;
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        symlink("/sysroot/evil", root.join("usr")).unwrap(); // redirects the erofs mount
        symlink("usr/lib/basalt", root.join("run")).unwrap(); // the moved /run would shadow /usr
        fs::write(root.join("dev"), "not a dir").unwrap();
        let _sock = UnixListener::bind(root.join("sys")).unwrap();
        fs::create_dir_all(root.join("proc/1")).unwrap(); // a real dir: fine as a mount point
        fs::create_dir(root.join("bin")).unwrap();
        fs::write(root.join("bin/sh"), "evil").unwrap();
        fs::create_dir(root.join("lib64")).unwrap();
        fs::write(root.join("lib64/ld-linux-x86-64.so.2"), "evil").unwrap();
        fs::create_dir(root.join("lib64.basalt-displaced")).unwrap(); // an earlier repair
        symlink("/sysroot/evil/bin", root.join("sbin")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap(); // already right
        libc_mkfifo(&root.join("tmp"));

        let e = secure_root_entries(root).unwrap();
        let lines = e.repaired.join("\n");
        for want in [
            "repaired root entry usr: was a symlink to /sysroot/evil; now a directory",
            "repaired root entry run: was a symlink to usr/lib/basalt; now a directory",
            "repaired root entry dev: was a regular file, moved to dev.basalt-displaced; now a directory",
            "repaired root entry sys: was a socket, moved to sys.basalt-displaced; now a directory",
            "repaired root entry bin: was a directory, moved to bin.basalt-displaced; now a link to usr/bin",
            "repaired root entry sbin: was a symlink to /sysroot/evil/bin; now a link to usr/sbin",
            "repaired root entry lib64: was a directory, moved to lib64.basalt-displaced.1; now a link to usr/lib64",
        ] {
            assert!(lines.contains(want), "missing {want:?} in:\n{lines}");
        }
        assert_eq!(e.repaired.len(), 7, "{lines}");
        assert!(e.created.is_empty());
        for (name, _) in MOUNT_POINTS {
            let m = fs::symlink_metadata(root.join(name)).unwrap();
            assert!(m.is_dir() && !m.file_type().is_symlink(), "{name}");
        }
        for (link, target) in USR_LINKS {
            assert_eq!(fs::read_link(root.join(link)).unwrap(), Path::new(target));
        }
        assert!(root.join("proc/1").is_dir());
        assert_eq!(
            fs::read_to_string(root.join("bin.basalt-displaced/sh")).unwrap(),
            "evil"
        );
        assert_eq!(
            fs::read_to_string(root.join("dev.basalt-displaced")).unwrap(),
            "not a dir"
        );
        // The fifo at tmp is the node's business (not a mount point, not a link).
        assert!(create_skeleton(root).unwrap().iter().all(|n| *n != "tmp"));
        assert_eq!(secure_root_entries(root).unwrap(), RootEntries::default());
    }

    fn libc_mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    }

    #[test]
    fn too_many_displaced_copies_refuse_the_boot() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir(root.join("bin")).unwrap();
        fs::create_dir(root.join("bin.basalt-displaced")).unwrap();
        for n in 1..MAX_DISPLACED {
            fs::create_dir(root.join(format!("bin.basalt-displaced.{n}"))).unwrap();
        }
        let err = secure_root_entries(root).unwrap_err();
        assert!(
            matches!(&err, Error::RootEntry { name, .. } if name == "bin"),
            "{err}"
        );
        assert_eq!(Reason::of(&err, Reason::Panic), Reason::RootEntries);
    }

    #[test]
    fn var_from_factory_only_when_empty() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        assert_eq!(populate_var(root).unwrap(), VarOutcome::NoFactory);
        let f = root.join(FACTORY_VAR);
        fs::create_dir_all(f.join("lib/basalt")).unwrap();
        fs::write(f.join("lib/basalt/state"), "x").unwrap();
        fs::create_dir(root.join("var")).unwrap(); // skeleton's empty /var
        assert_eq!(populate_var(root).unwrap(), VarOutcome::Populated(4));
        assert_eq!(
            fs::read_to_string(root.join("var/lib/basalt/state")).unwrap(),
            "x"
        );
        fs::write(root.join("var/lib/basalt/state"), "node").unwrap();
        assert_eq!(populate_var(root).unwrap(), VarOutcome::Present);
        assert_eq!(
            fs::read_to_string(root.join("var/lib/basalt/state")).unwrap(),
            "node"
        );
    }
}
