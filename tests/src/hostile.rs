//! What an attacker writes, for the trusted-boot scenarios (`tests/tests/boot_hostile_*.rs`,
//! `boot_foreign_disks.rs`, `boot_usr_binding.rs`): someone with root on the node, the disk
//! in hand, or a USB stick. Everything here edits a private copy of a built disk image as
//! bytes (the host sees no partitions), the way such an attacker would:
//!
//! - [`write_root_tree`]: replace the writable root partition's file system with a tree of
//!   the attacker's choosing (`mke2fs -d` at the partition's offset, as the image builder
//!   creates the genuine one);
//! - [`replace_in_range`]: change bytes inside a partition (e.g. `/usr` content under a signed
//!   root hash);
//! - [`attacker_program`]: a script that prints [`ATTACKER_MARKER`] and powers off — if the
//!   marker ever reaches the console, the attacker's program ran;
//! - [`write_absurd_gpt`]: a disk whose partition table claims more entries than memory;
//! - [`direct_boot`]: the release's own kernel (PVH `vmlinux`), initramfs and command line
//!   booted without firmware, the fastest way to run basalt-init against a disk.

use std::fs;
use std::os::unix::fs::{symlink, FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use basalt_disk::Inventory;
use basalt_image::tool::MKE2FS;

use crate::artifacts::MinimalImage;
use crate::error::{Error, Result};
use crate::kernel::KernelTree;
use crate::vm::VmConfig;

/// What an attacker's program prints: the scenarios fail if it ever appears on a console.
pub const ATTACKER_MARKER: &str = "ATTACKER RAN";

/// The static busybox (package `busybox-static`) attackers bring along.
pub const HOST_BUSYBOX: &str = "/bin/busybox";

/// A shell script run by the busybox at `/usr/bin/busybox` of whatever `/usr` resolves to:
/// prints `ATTACKER RAN: <what>` on the console and powers the guest off.
pub fn attacker_program(what: &str) -> String {
    format!(
        "#!/usr/bin/busybox sh\n\
         echo \"{ATTACKER_MARKER}: {what} (pid $$)\" > /dev/console 2>/dev/null || echo \"{ATTACKER_MARKER}: {what}\"\n\
         /usr/bin/busybox poweroff -f\n"
    )
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::WriteFile {
        path: path.to_path_buf(),
        source,
    }
}

/// Create `path` (and its parents) with `content` and `mode`.
pub fn put_file(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|source| Error::CreateDir {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    fs::write(path, content).map_err(write_err(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(write_err(path))
}

/// Create the symlink `path` → `target` (parents created).
pub fn put_link(path: &Path, target: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|source| Error::CreateDir {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    symlink(target, path).map_err(write_err(path))
}

/// Copy the host's static busybox to `path` (the attacker's own shell).
pub fn put_busybox(path: &Path) -> Result<()> {
    let bytes = fs::read(HOST_BUSYBOX).map_err(|source| Error::ReadFile {
        path: PathBuf::from(format!("{HOST_BUSYBOX} (apt-get install busybox-static)")),
        source,
    })?;
    put_file(path, &bytes, 0o755)
}

/// Replace the file system of the root partition of `disk` with an ext4 holding `tree`
/// (`mke2fs -d`, at the partition's offset, the whole partition).
pub fn write_root_tree(disk: &Path, tree: &Path) -> Result<()> {
    let inv = Inventory::read_path(disk, None).map_err(|source| Error::Disk {
        path: disk.to_path_buf(),
        source,
    })?;
    let mut cmd = MKE2FS.command()?;
    cmd.args(["-q", "-F", "-t", "ext4", "-b", "4096", "-L", "root", "-E"])
        .arg(format!("offset={}", inv.root.offset))
        .arg("-d")
        .arg(tree)
        .arg(disk)
        .arg((inv.root.size / 4096).to_string());
    MKE2FS.run(&mut cmd)?;
    Ok(())
}

/// Replace the one occurrence of `from` inside bytes `[offset, offset + len)` of `file` by
/// `to` (same length). Returns the absolute offset changed. Errors if `from` occurs zero or
/// several times.
pub fn replace_in_range(file: &Path, offset: u64, len: u64, from: &[u8], to: &[u8]) -> Result<u64> {
    let bad = |problem: String| Error::ScenarioInput {
        path: file.to_path_buf(),
        problem,
    };
    if from.len() != to.len() || from.is_empty() {
        return Err(bad(format!(
            "replacement of {} bytes by {} bytes",
            from.len(),
            to.len()
        )));
    }
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .map_err(write_err(file))?;
    let mut buf = vec![0u8; usize::try_from(len).map_err(|e| bad(e.to_string()))?];
    f.read_exact_at(&mut buf, offset)
        .map_err(|source| Error::ReadFile {
            path: file.to_path_buf(),
            source,
        })?;
    let hits: Vec<usize> = buf
        .windows(from.len())
        .enumerate()
        .filter(|(_, w)| *w == from)
        .map(|(i, _)| i)
        .collect();
    let [at] = hits.as_slice() else {
        return Err(bad(format!(
            "{:?} occurs {} times in bytes {offset}+{len}, expected once",
            String::from_utf8_lossy(from),
            hits.len()
        )));
    };
    let at = offset + *at as u64;
    f.write_all_at(to, at)
        .and_then(|()| f.sync_all())
        .map_err(write_err(file))?;
    Ok(at)
}

/// A disk image of `len` bytes whose GPT headers (both copies, valid CRCs) claim 2^32-1
/// entries of 128 bytes: a reader that allocates what a header claims before checking it
/// aborts — in PID 1, the kernel panics.
pub fn write_absurd_gpt(path: &Path, len: u64) -> Result<()> {
    use basalt_identity::gpt::crc32;
    let sectors = len / 512;
    let header = |lba: u64, alternate: u64, array: u64| {
        let mut h = vec![0u8; 512];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&lba.to_le_bytes());
        h[32..40].copy_from_slice(&alternate.to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&(sectors - 34).to_le_bytes());
        h[56..72].copy_from_slice(&[0x66; 16]);
        h[72..80].copy_from_slice(&array.to_le_bytes());
        h[80..84].copy_from_slice(&u32::MAX.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        let crc = crc32(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    let f = fs::File::create(path).map_err(write_err(path))?;
    f.set_len(len).map_err(write_err(path))?;
    // A protective MBR, as any GPT disk has.
    let mut mbr = vec![0u8; 512];
    mbr[446 + 4] = 0xee;
    mbr[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    mbr[446 + 12..446 + 16]
        .copy_from_slice(&u32::try_from(sectors - 1).unwrap_or(u32::MAX).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    f.write_all_at(&mbr, 0)
        .and_then(|()| f.write_all_at(&header(1, sectors - 1, 2), 512))
        .and_then(|()| f.write_all_at(&header(sectors - 1, 1, sectors - 33), (sectors - 1) * 512))
        .and_then(|()| f.sync_all())
        .map_err(write_err(path))
}

/// The kernel command line the release's boot entry carries for `/usr` root hash `usrhash`,
/// plus `extra`: what systemd-boot would pass, for direct boots.
pub fn release_cmdline(image: &MinimalImage, usrhash: &str, extra: &str) -> String {
    let facts = &image.report.facts;
    [facts.cmdline.as_str(), &format!("usrhash={usrhash}"), extra]
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Boot `image`'s kernel (the PVH `vmlinux` of the same Debian package) and initramfs
/// directly, with the release's command line for its own `/usr` plus `extra`; logs in
/// `dir`. Add disks with [`VmConfig::disk`] / [`VmConfig::arg`].
pub fn direct_boot(dir: &Path, image: &MinimalImage, extra: &str) -> Result<VmConfig> {
    direct_boot_usr(dir, image, &image.report.facts.root_hash, extra)
}

/// [`direct_boot`] with `usrhash` naming another `/usr` than the release's own (an edited
/// boot entry).
pub fn direct_boot_usr(
    dir: &Path,
    image: &MinimalImage,
    usrhash: &str,
    extra: &str,
) -> Result<VmConfig> {
    let kernel = KernelTree::shared()?;
    let facts = &image.report.facts;
    if kernel.package != facts.kernel_package {
        return Err(Error::ScenarioInput {
            path: image.file(basalt_image::build::image::BUILD_JSON),
            problem: format!(
                "built with {}, the cached kernel is {}",
                facts.kernel_package, kernel.package
            ),
        });
    }
    Ok(VmConfig::direct(
        dir,
        &kernel.vmlinux,
        Some(image.file(basalt_image::build::image::INITRD_IMG)),
        release_cmdline(image, usrhash, extra),
    )
    .no_reboot(true))
}

/// A second read-write virtio disk for `config` (after the main disk: `/dev/vdb` when there
/// are no data disks).
pub fn extra_rw_disk(config: VmConfig, image: &Path) -> VmConfig {
    let mut spec = std::ffi::OsString::from("if=virtio,format=raw,file=");
    spec.push(image.as_os_str());
    config.arg("-drive").arg(spec)
}
