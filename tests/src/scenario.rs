//! Steps the boot-chain scenarios (`tests/tests/boot_*.rs`) share: install a release's `/usr`
//! into a slot of a disk image exactly as the updater does (basalt-disk's `write_slot`),
//! stage its counted systemd-boot entry ([`BlsBackend`]'s `stage` on the image's FAT ESP),
//! read the entries back — through basalt-disk and through mtools (`mdir`), the peer — and
//! count markers on a guest console.
//!
//! Everything works on a disk image *file*: the host kernel sees no partitions (see
//! /work/shared/notes/environment.md), so slots and the ESP are byte ranges found through the
//! GPT ([`Inventory`]).

use std::path::{Path, PathBuf};

use basalt_disk::{
    BlsBackend, BootControl, BootStatus, BootTarget, FatImageEsp, Inventory, PartitionRange,
    RootHash, Slot, SlotPart,
};
use basalt_image::build::image::write_usr_slot;
use basalt_manifest::Digest;

use crate::artifacts::MinimalImage;
use crate::error::{Error, Result};
use crate::tool::MDIR;

/// A `/usr` image as a release ships it (`usr.img`): the erofs bytes, then at `hash_offset`
/// the verity superblock + tree + signed statement block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsrImage {
    /// The file.
    pub path: PathBuf,
    /// Where the hash area starts (= the erofs size): the data partition gets `[0, hash_offset)`.
    pub hash_offset: u64,
    /// The file's length: the verity partition gets `[hash_offset, len)`.
    pub len: u64,
    /// The dm-verity root hash of the data (names the slot's partitions).
    pub root_hash: RootHash,
    /// OS name (slot label).
    pub os: String,
    /// OS version (slot label, boot entry).
    pub version: String,
}

impl UsrImage {
    /// The `usr.img` of a built release, described by its `build.json` facts.
    pub fn of_release(image: &MinimalImage) -> Result<Self> {
        let facts = &image.report.facts;
        let path = image.file(basalt_image::build::image::USR_IMG);
        let root_hash = RootHash::parse(&facts.root_hash).map_err(|e| Error::ScenarioInput {
            path: image.file(basalt_image::build::image::BUILD_JSON),
            problem: format!("root hash {:?}: {e}", facts.root_hash),
        })?;
        Ok(Self {
            path,
            hash_offset: facts.hash_offset,
            len: facts.usr_img_bytes,
            root_hash,
            os: facts.os.clone(),
            version: facts.version.clone(),
        })
    }
}

/// Write `usr` into `slot` of the disk image `disk` as the updater does on a node: the image
/// builder's `write_usr_slot`, i.e. basalt-disk's `write_slot` (labels `_installing` → copy
/// data and verity partitions → partition UUIDs from the root hash, `{os}_{version}` labels).
pub fn install_usr(disk: &Path, slot: Slot, usr: &UsrImage) -> Result<()> {
    if usr.hash_offset == 0 || usr.hash_offset >= usr.len {
        return Err(Error::ScenarioInput {
            path: usr.path.clone(),
            problem: format!(
                "hash offset {} outside the image of {} bytes",
                usr.hash_offset, usr.len
            ),
        });
    }
    write_usr_slot(
        disk,
        slot,
        &usr.path,
        usr.hash_offset,
        usr.len,
        &Digest(usr.root_hash.0),
        &usr.os,
        &usr.version,
    )?;
    Ok(())
}

/// Where `part` of `slot` lives in the disk image (offset and length from the GPT).
pub fn slot_range(disk: &Path, slot: Slot, part: SlotPart) -> Result<PartitionRange> {
    let inventory = Inventory::read_path(disk, None).map_err(|source| Error::Slot {
        what: "read the GPT",
        slot,
        disk: disk.to_path_buf(),
        source,
    })?;
    Ok(inventory.slot_range(slot, part))
}

/// The ESP partition of `disk` as byte range (offset, length).
fn esp_range(disk: &Path) -> Result<(u64, u64)> {
    let inventory = Inventory::read_path(disk, None).map_err(|source| Error::BootEntries {
        what: "read the GPT",
        disk: disk.to_path_buf(),
        source,
    })?;
    Ok((inventory.esp.offset, inventory.esp.size))
}

/// The systemd-boot backend on the FAT ESP inside the disk image `disk`.
pub fn esp_backend(disk: &Path) -> Result<BlsBackend<FatImageEsp>> {
    let (offset, len) = esp_range(disk)?;
    let esp = FatImageEsp::open(disk, offset, len).map_err(|source| Error::BootEntries {
        what: "open the FAT file system",
        disk: disk.to_path_buf(),
        source,
    })?;
    Ok(BlsBackend::new(esp))
}

/// What the updater stages for `image` in a slot whose `/usr` has root hash `usr_hash`: the
/// release's kernel and initrd, its command line plus `extra_options`.
pub fn release_target(
    image: &MinimalImage,
    usr_hash: &RootHash,
    extra_options: &str,
) -> BootTarget {
    let facts = &image.report.facts;
    let options = [facts.cmdline.as_str(), extra_options]
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    BootTarget {
        version: facts.version.clone(),
        usr_hash: usr_hash.to_hex(),
        kernel: Some(image.file(basalt_image::build::image::VMLINUZ)),
        initrd: Some(image.file(basalt_image::build::image::INITRD_IMG)),
        options,
    }
}

/// Stage `target` for `slot` with `tries` boot attempts (`BlsBackend::stage`: kernel and
/// initrd under `basalt/<version>/`, entry `basalt-<version>+<tries>.conf`), as after an
/// update: systemd-boot boots it next.
pub fn stage(disk: &Path, slot: Slot, target: &BootTarget, tries: u32) -> Result<()> {
    let mut bls = esp_backend(disk)?;
    bls.stage(slot, target, tries)
        .map_err(|source| Error::BootEntries {
            what: "stage the boot entry",
            disk: disk.to_path_buf(),
            source,
        })
}

/// The entry files in `loader/entries` as basalt-disk reads them (sorted by name).
pub fn entry_files(disk: &Path) -> Result<Vec<String>> {
    let bls = esp_backend(disk)?;
    let mut names: Vec<String> = bls
        .entries()
        .map_err(|source| Error::BootEntries {
            what: "list the boot entries",
            disk: disk.to_path_buf(),
            source,
        })?
        .into_iter()
        .map(|e| e.file)
        .collect();
    names.sort();
    Ok(names)
}

/// The `.conf` files in `loader/entries` as mtools lists them (`mdir -b`, sorted by name):
/// the peer view of the ESP, independent of basalt-disk's FAT code.
pub fn entry_files_mtools(disk: &Path) -> Result<Vec<String>> {
    let (offset, _) = esp_range(disk)?;
    let mut spec = disk.as_os_str().to_os_string();
    spec.push(format!("@@{offset}"));
    let mut mdir = MDIR.command()?;
    // mtools refuses FATs whose geometry looks odd to it; this is a file, not a floppy.
    mdir.env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(&spec)
        .args(["-b", "::/loader/entries"]);
    let output = MDIR.run(&mut mdir)?;
    let mut names: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.trim().rsplit('/').next())
        .filter(|n| n.ends_with(".conf"))
        .map(str::to_string)
        .collect();
    names.sort();
    Ok(names)
}

/// The first line every kernel boot prints (`linux_banner`, init/version.c). Messages can be
/// duplicated on the console (basalt-init writes a failure to `/dev/kmsg` *and* the console),
/// so scenarios count boots by this banner, not by their own markers.
pub const KERNEL_BANNER: &str = "Linux version ";

/// The console split into kernel boots: each part starts at a [`KERNEL_BANNER`] and runs to
/// the next one (firmware output before the first banner is dropped).
pub fn kernel_boots(console: &str) -> Vec<&str> {
    let starts: Vec<usize> = console
        .match_indices(KERNEL_BANNER)
        .map(|(i, _)| i)
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(n, &start)| &console[start..starts.get(n + 1).copied().unwrap_or(console.len())])
        .collect()
}

/// The last 60 lines of `text`, for failure messages about one boot.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// Check one kernel boot's console (`n` counts from 0): each `(marker, present)` must be in
/// `boot` when `present` and absent otherwise. The error names the marker and shows the end of
/// that boot.
pub fn expect_markers(n: usize, boot: &str, markers: &[(&str, bool)]) -> Result<()> {
    for &(marker, present) in markers {
        if boot.contains(marker) != present {
            return Err(Error::ScenarioCheck(format!(
                "boot {}: {marker:?} {}expected; that boot's end:\n{}",
                n + 1,
                if present { "" } else { "not " },
                tail(boot)
            )));
        }
    }
    Ok(())
}

/// The ESP after a fallback run: exactly `v1_entry` (blessed) and `v2_spent` (tries used up),
/// as basalt-disk and mtools both read them; slot A good, slot B bad, A boots next. Returns
/// the backend for the scenario's own further checks.
pub fn expect_fell_back(
    disk: &Path,
    v1_entry: &str,
    v2_spent: &str,
) -> Result<BlsBackend<FatImageEsp>> {
    let check = |ok: bool, what: String| {
        if ok {
            Ok(())
        } else {
            Err(Error::ScenarioCheck(what))
        }
    };
    let mut want = vec![v1_entry.to_string(), v2_spent.to_string()];
    want.sort();
    let after = entry_files(disk)?;
    check(
        after == want,
        format!("entries after the run: {after:?}, expected {want:?}"),
    )?;
    check(
        entry_files_mtools(disk)? == want,
        format!("mtools disagrees with basalt-disk on {want:?}"),
    )?;
    let bls = esp_backend(disk)?;
    let state = bls.status().map_err(|source| Error::BootEntries {
        what: "read the boot state",
        disk: disk.to_path_buf(),
        source,
    })?;
    check(
        state.slot(Slot::A).status == BootStatus::Good
            && state.slot(Slot::B).status == BootStatus::Bad
            && state.next == Some(Slot::A),
        format!("after the fallback, A must be good and next, B bad: {state:?}"),
    )?;
    Ok(bls)
}

/// How many times `marker` occurs in `console` (non-overlapping).
pub fn count_markers(console: &str, marker: &str) -> usize {
    if marker.is_empty() {
        return 0;
    }
    console.matches(marker).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_splits_at_each_kernel_banner() {
        let console = "firmware\nLinux version 6.1 a\nboot 1\nLinux version 6.1 b\nboot 2";
        assert_eq!(
            kernel_boots(console),
            [
                "Linux version 6.1 a\nboot 1\n",
                "Linux version 6.1 b\nboot 2"
            ]
        );
        assert!(kernel_boots("firmware only").is_empty());
    }

    #[test]
    fn markers_are_counted_without_overlap() {
        let console = "up, version=2.0.0\nreboot\nup, version=2.0.0\nup, version=1.0.0";
        assert_eq!(count_markers(console, "version=2.0.0"), 2);
        assert_eq!(count_markers(console, "version=1.0.0"), 1);
        assert_eq!(count_markers("aaaa", "aa"), 2);
        assert_eq!(count_markers(console, ""), 0);
        assert_eq!(count_markers(console, "version=3"), 0);
    }
}
