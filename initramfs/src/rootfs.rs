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

/// One entry of the root skeleton.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkeletonEntry {
    /// A directory with this mode.
    Dir(&'static str, u32),
    /// A symlink to this (relative) target.
    Link(&'static str, &'static str),
}

/// The root's skeleton: the merged-/usr links and the top-level directories. `etc` and
/// `var` come last so that [`crate::factory::populate_etc`] and [`populate_var`], which run
/// first, decide their content.
pub const SKELETON: &[SkeletonEntry] = &[
    SkeletonEntry::Dir("usr", 0o755),
    SkeletonEntry::Link("bin", "usr/bin"),
    SkeletonEntry::Link("sbin", "usr/sbin"),
    SkeletonEntry::Link("lib", "usr/lib"),
    SkeletonEntry::Link("lib64", "usr/lib64"),
    SkeletonEntry::Dir("dev", 0o755),
    SkeletonEntry::Dir("proc", 0o555),
    SkeletonEntry::Dir("sys", 0o555),
    SkeletonEntry::Dir("run", 0o755),
    SkeletonEntry::Dir("tmp", 0o1777),
    SkeletonEntry::Dir("root", 0o700),
    SkeletonEntry::Dir("home", 0o755),
    SkeletonEntry::Dir("mnt", 0o755),
    SkeletonEntry::Dir("etc", 0o755),
    SkeletonEntry::Dir("var", 0o755),
];

fn fs_err(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Fs {
        operation,
        path,
        source,
    }
}

/// Create the missing entries of [`SKELETON`] under `root`; returns the names created.
/// Idempotent: an existing entry (of whatever kind and mode) is left alone — it is the
/// node's, not ours. Modes are set explicitly, independent of the umask.
pub fn create_skeleton(root: &Path) -> Result<Vec<&'static str>> {
    let mut created = Vec::new();
    for entry in SKELETON {
        let name = match entry {
            SkeletonEntry::Dir(n, _) | SkeletonEntry::Link(n, _) => *n,
        };
        let path = root.join(name);
        if fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        match entry {
            SkeletonEntry::Dir(_, mode) => {
                fs::create_dir(&path).map_err(fs_err("creating", &path))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(*mode))
                    .map_err(fs_err("chmod", &path))?;
            }
            SkeletonEntry::Link(_, target) => {
                symlink(target, &path).map_err(fs_err("creating link", &path))?;
            }
        }
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

    #[test]
    fn skeleton_has_modes_links_and_is_idempotent() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let created = create_skeleton(root).unwrap();
        assert_eq!(created.len(), SKELETON.len());
        let mode = |n: &str| fs::symlink_metadata(root.join(n)).unwrap().mode() & 0o7777;
        assert_eq!(mode("tmp"), 0o1777);
        assert_eq!(mode("root"), 0o700);
        assert_eq!(mode("etc"), 0o755);
        assert_eq!(mode("proc"), 0o555);
        for (link, target) in [
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            assert_eq!(fs::read_link(root.join(link)).unwrap(), Path::new(target));
        }
        // Second run creates nothing and changes nothing the node changed.
        fs::set_permissions(root.join("home"), fs::Permissions::from_mode(0o750)).unwrap();
        assert!(create_skeleton(root).unwrap().is_empty());
        assert_eq!(mode("home"), 0o750);
    }

    #[test]
    fn skeleton_fills_only_the_gaps_of_a_preformatted_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir(root.join("bin")).unwrap(); // a non-merged root stays non-merged
        fs::create_dir(root.join("lost+found")).unwrap();
        let created = create_skeleton(root).unwrap();
        assert!(!created.contains(&"bin"));
        assert!(created.contains(&"sbin") && created.contains(&"tmp"));
        assert!(fs::symlink_metadata(root.join("bin")).unwrap().is_dir());
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
