//! The A/B slot inventory, slot naming and writing an image into a slot.
//!
//! Writing a slot is three steps a caller can drive and resume ([`begin_install`] →
//! writes through [`SlotInstall::writer`] → [`finish_install`]), or one call for an image
//! already at hand ([`write_slot`]). The order never changes: the slot is made unbootable
//! (labels `_installing`, GPT-priority bits cleared, random partition UUIDs) before its first
//! byte is written, and named (UUIDs from the root hash, `{os}_{version}` labels) only after
//! the caller synced and verified what it wrote.
//!
//! How a slot's state is recorded (all in the GPT, so any tool can read it):
//!
//! | state        | data partition label      | verity partition label          | UUIDs            |
//! |--------------|---------------------------|---------------------------------|------------------|
//! | `Empty`      | `_empty`                  | `_empty`                        | random           |
//! | `Installing` | `_installing`             | `_installing`                   | random           |
//! | `Valid`      | `{os}_{version}`          | `{os}_{version}_verity`         | from root hash   |
//! | `Bad`        | `{os}_{version}_bad`      | `{os}_{version}_verity`         | from root hash   |
//! | `Active`     | a `Valid` slot whose root hash is the booted `usrhash=`                          |
//!
//! `_empty` is systemd-sysupdate's marker for a free partition; `{os}_{version}` matches a
//! sysupdate `MatchPattern=` of `basalt_@v`. `_` cannot occur in a semver version nor in an OS
//! name we accept, so labels parse unambiguously. Labels hold at most 36 UTF-16 units (GPT).
//! `Bad` is the *content* verdict (e.g. a re-verification failed); boot-counting verdicts
//! live in the boot-control backends.
//!
//! Partition UUIDs follow systemd's convention (src/shared/dissect-image.c): the data
//! partition's UUID is the first 16 bytes of the verity root hash and the verity partition's
//! the last 16, copied verbatim into the UUID's textual byte order — *no* version/variant bits
//! are set, because systemd compares the raw bytes (`memcpy` of the hash into an
//! `sd_id128_t`) when it looks for the partitions of a `usrhash=`. A SHA-256 root hash is
//! exactly 32 bytes, so the two UUIDs together carry the whole hash and the inventory can
//! report it.

use std::fs::OpenOptions;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use gptman::GPTPartitionEntry;

use crate::gpt::{
    random_guid, read_table, write_table, DiskIo, Guid, Table, TableHealth, SECTOR_SIZE,
};
use crate::layout::{slot_index, Layout, LABEL_EMPTY};
use crate::range::{PartitionRange, RangeWriter};
use crate::{Error, Slot};

/// Label of a slot partition while an image is being written into it.
pub const LABEL_INSTALLING: &str = "_installing";
const VERITY_SUFFIX: &str = "_verity";
const BAD_SUFFIX: &str = "_bad";
/// Longest GPT partition label, in UTF-16 code units.
pub const MAX_LABEL: usize = 36;

/// Content state of a slot (see the module table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    Empty,
    Installing,
    Valid,
    /// Valid and currently booted (its root hash is the kernel's `usrhash=`).
    Active,
    Bad,
    /// A label Basalt did not write: content unknown, never treated as bootable content.
    Unknown,
}

impl SlotState {
    /// Lower-case name for output.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Empty => "empty",
            SlotState::Installing => "installing",
            SlotState::Valid => "valid",
            SlotState::Active => "active",
            SlotState::Bad => "bad",
            SlotState::Unknown => "unknown",
        }
    }

    /// The slot holds a complete image (valid, active or bad).
    pub fn has_image(self) -> bool {
        matches!(self, SlotState::Valid | SlotState::Active | SlotState::Bad)
    }
}

/// What a slot data label says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataLabel {
    Empty,
    Installing,
    Image {
        os: String,
        version: String,
        bad: bool,
    },
    Unknown,
}

/// Parse a data partition label.
pub fn parse_data_label(label: &str) -> DataLabel {
    match label {
        LABEL_EMPTY => return DataLabel::Empty,
        LABEL_INSTALLING => return DataLabel::Installing,
        _ => {}
    }
    let Some((os, rest)) = label.split_once('_') else {
        return DataLabel::Unknown;
    };
    let (version, bad) = match rest.strip_suffix(BAD_SUFFIX) {
        Some(v) => (v, true),
        None => (rest, false),
    };
    if check_os(os).is_err() || check_version(version).is_err() {
        return DataLabel::Unknown;
    }
    DataLabel::Image {
        os: os.to_string(),
        version: version.to_string(),
        bad,
    }
}

fn check_os(os: &str) -> Result<(), String> {
    let ok = !os.is_empty()
        && os.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && os
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    ok.then_some(())
        .ok_or_else(|| "use lower-case letters, digits, '-' and '.'".to_string())
}

fn check_version(v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '~'));
    ok.then_some(())
        .ok_or_else(|| "use letters, digits and . - + ~ (no '_')".to_string())
}

/// The data and verity labels for `os` `version`, checked to fit a GPT label.
pub fn image_labels(os: &str, version: &str) -> Result<(String, String), Error> {
    check_os(os).map_err(|reason| Error::InvalidLabel {
        what: "OS name",
        value: os.to_string(),
        reason,
    })?;
    check_version(version).map_err(|reason| Error::InvalidLabel {
        what: "version",
        value: version.to_string(),
        reason,
    })?;
    let data = format!("{os}_{version}");
    let verity = format!("{data}{VERITY_SUFFIX}");
    // The bad marker is the longest form a data label takes; the verity label is longer still.
    if verity.len() > MAX_LABEL || data.len() + BAD_SUFFIX.len() > MAX_LABEL {
        return Err(Error::InvalidLabel {
            what: "version",
            value: version.to_string(),
            reason: format!("label {verity:?} exceeds {MAX_LABEL} characters"),
        });
    }
    Ok((data, verity))
}

/// A verity root hash: `basalt_identity`'s (one type for the initramfs, this crate and the
/// updater: 32 bytes, never all zero, partition UUIDs by systemd's rule).
pub use basalt_identity::RootHash;

/// The `/usr` root hash the kernel command line names (`usrhash=`, systemd; or
/// `verity.usrhash=`, Flatcar), the last occurrence winning as for the kernel, split with the
/// kernel's quoting rules — `basalt_identity::cmdline::usrhash`, the reader basalt-init uses
/// on the same line. `Some(Err)` when present but malformed.
pub fn cmdline_usrhash(cmdline: &str) -> Option<Result<RootHash, Error>> {
    basalt_identity::cmdline::usrhash(cmdline).map(|r| {
        r.map_err(|e| Error::InvalidRootHash {
            value: match e {
                basalt_identity::Error::ParseRootHash { value, .. } => value,
                other => other.to_string(),
            },
        })
    })
}

/// One partition as the inventory reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// 1-based partition number.
    pub number: u32,
    pub type_guid: Guid,
    pub uuid: Guid,
    pub label: String,
    /// Byte offset on the disk.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// The 64 GPT attribute bits.
    pub attributes: u64,
}

impl PartitionInfo {
    fn from_entry(number: u32, e: &GPTPartitionEntry) -> PartitionInfo {
        PartitionInfo {
            number,
            type_guid: Guid::from_gpt_bytes(e.partition_type_guid),
            uuid: Guid::from_gpt_bytes(e.unique_partition_guid),
            label: e.partition_name.as_str().to_string(),
            offset: e.starting_lba.saturating_mul(SECTOR_SIZE),
            size: (e.ending_lba.saturating_sub(e.starting_lba))
                .saturating_add(1)
                .saturating_mul(SECTOR_SIZE),
            attributes: e.attribute_bits,
        }
    }
}

/// Which partition of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotPart {
    Data,
    Verity,
}

impl SlotPart {
    /// `data` / `verity`.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotPart::Data => "data",
            SlotPart::Verity => "verity",
        }
    }
}

/// One slot as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub slot: Slot,
    pub data: PartitionInfo,
    pub verity: PartitionInfo,
    pub state: SlotState,
    pub os: Option<String>,
    pub version: Option<String>,
    /// The root hash carried by the partition UUIDs, for slots holding an image.
    pub root_hash: Option<RootHash>,
    /// This slot's root hash is the booted `usrhash=`.
    pub booted: bool,
}

/// Everything known about a Basalt disk: table health, layout, both slots, what is booted.
#[derive(Debug, Clone)]
pub struct Inventory {
    pub path: PathBuf,
    pub health: TableHealth,
    pub layout: Layout,
    pub table: Table,
    pub esp: PartitionInfo,
    pub root: PartitionInfo,
    pub slots: [SlotInfo; 2],
    /// The slot the running system booted from, if the command line names one on this disk.
    pub booted: Option<Slot>,
    /// The `usrhash=` of the command line (if any), even when it matches no slot.
    pub cmdline_usrhash: Option<RootHash>,
}

impl Inventory {
    /// Read the table (either copy), recognise the layout and both slots. `cmdline` is the
    /// kernel command line of the running system (`/proc/cmdline` on a node), `None` on a build
    /// host; it decides which slot is booted. A malformed `usrhash=` is an error: guessing
    /// could expose the booted slot to writes.
    pub fn read<R: Read + Seek + ?Sized>(
        dev: &mut R,
        path: &Path,
        cmdline: Option<&str>,
    ) -> Result<Inventory, Error> {
        let (table, health) = read_table(dev, path)?;
        let layout = Layout::discover(&table, path)?;
        let usrhash = match cmdline.and_then(cmdline_usrhash) {
            Some(r) => Some(r?),
            None => None,
        };
        let info = |n: u32| -> Result<PartitionInfo, Error> {
            table
                .partition(n)
                .map(|e| PartitionInfo::from_entry(n, e))
                .ok_or_else(|| Error::NotBasaltLayout {
                    path: path.to_path_buf(),
                    reason: format!("partition {n} missing"),
                })
        };
        let slot_info = |slot: Slot| -> Result<SlotInfo, Error> {
            let data = info(layout.usr(slot))?;
            let verity = info(layout.verity(slot))?;
            let hash = RootHash::from_uuids(data.uuid, verity.uuid);
            let booted = usrhash == Some(hash);
            let (mut state, os, version) = match parse_data_label(&data.label) {
                DataLabel::Empty => (SlotState::Empty, None, None),
                DataLabel::Installing => (SlotState::Installing, None, None),
                DataLabel::Unknown => (SlotState::Unknown, None, None),
                DataLabel::Image { os, version, bad } => {
                    let s = if bad {
                        SlotState::Bad
                    } else {
                        SlotState::Valid
                    };
                    (s, Some(os), Some(version))
                }
            };
            if booted && state == SlotState::Valid {
                state = SlotState::Active;
            }
            Ok(SlotInfo {
                slot,
                root_hash: state.has_image().then_some(hash),
                data,
                verity,
                state,
                os,
                version,
                booted,
            })
        };
        let slots = [slot_info(Slot::A)?, slot_info(Slot::B)?];
        let booted = slots.iter().find(|s| s.booted).map(|s| s.slot);
        Ok(Inventory {
            path: path.to_path_buf(),
            health,
            esp: info(layout.esp)?,
            root: info(layout.root)?,
            layout,
            table,
            slots,
            booted,
            cmdline_usrhash: usrhash,
        })
    }

    /// Open `path` read-only and read its inventory.
    pub fn read_path(path: &Path, cmdline: Option<&str>) -> Result<Inventory, Error> {
        let mut f = std::fs::File::open(path).map_err(|source| Error::Io {
            op: "open",
            path: path.to_path_buf(),
            source,
        })?;
        Inventory::read(&mut f, path, cmdline)
    }

    /// The entry for `slot`.
    pub fn slot(&self, slot: Slot) -> &SlotInfo {
        &self.slots[slot_index(slot)]
    }

    /// Where `part` of `slot` lives, as device/file + offset + length.
    pub fn slot_range(&self, slot: Slot, part: SlotPart) -> PartitionRange {
        let s = self.slot(slot);
        let p = match part {
            SlotPart::Data => &s.data,
            SlotPart::Verity => &s.verity,
        };
        PartitionRange {
            path: self.path.clone(),
            offset: p.offset,
            len: p.size,
        }
    }

    /// Refuse anything that would write to the booted slot.
    pub fn ensure_not_booted(&self, slot: Slot) -> Result<(), Error> {
        if self.booted == Some(slot) {
            return Err(Error::BootedSlot { slot });
        }
        Ok(())
    }

    /// A writer for `part` of `slot` on `dev` (the disk this inventory was read from).
    /// Refuses the booted slot with [`Error::BootedSlot`].
    pub fn slot_writer<D: DiskIo>(
        &self,
        dev: D,
        slot: Slot,
        part: SlotPart,
    ) -> Result<RangeWriter<D>, Error> {
        self.ensure_not_booted(slot)?;
        let r = self.slot_range(slot, part);
        Ok(RangeWriter::new(dev, &self.path, r.offset, r.len))
    }
}

/// An image to install: data (erofs) and verity tree, with their exact lengths.
#[derive(Debug)]
pub struct SlotImage<'a, RD: Read, RV: Read> {
    pub data: &'a mut RD,
    pub data_path: &'a Path,
    pub data_len: u64,
    pub verity: &'a mut RV,
    pub verity_path: &'a Path,
    pub verity_len: u64,
    /// The verity root hash of `data` (the caller verified it belongs to the tree).
    pub root_hash: RootHash,
    pub os: &'a str,
    pub version: &'a str,
}

/// What an install will write, known before the first byte: checked by [`begin_install`]
/// (sizes, labels, root hash) and used again by [`finish_install`] to name the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstallPlan<'a> {
    /// Bytes that go to the data partition.
    pub data_len: u64,
    /// Bytes that go to the verity partition (superblock, tree and anything stored after it).
    pub verity_len: u64,
    /// The verity root hash the slot will carry (its partition UUIDs when named).
    pub root_hash: RootHash,
    pub os: &'a str,
    pub version: &'a str,
}

/// A slot being written: labelled `_installing`, GPT-priority bits cleared, partition UUIDs
/// random (so no `usrhash=` of an earlier image finds these partitions). Only
/// [`begin_install`] makes one, after refusing the booted slot; it is plain data (where the
/// partitions are), so a resumed install simply calls [`begin_install`] again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInstall {
    pub slot: Slot,
    /// The disk (device or image file).
    pub path: PathBuf,
    /// The slot's data partition.
    pub data: PartitionRange,
    /// The slot's verity partition.
    pub verity: PartitionRange,
}

impl SlotInstall {
    /// The range of `part`.
    pub fn range(&self, part: SlotPart) -> &PartitionRange {
        match part {
            SlotPart::Data => &self.data,
            SlotPart::Verity => &self.verity,
        }
    }

    /// A writer for `part` on `dev` (the disk this install was begun on), at position 0;
    /// [`RangeWriter::set_position`] moves it (a resumed install starts mid-partition).
    pub fn writer<D: DiskIo>(&self, dev: D, part: SlotPart) -> RangeWriter<D> {
        let r = self.range(part);
        RangeWriter::new(dev, &self.path, r.offset, r.len)
    }
}

/// Clear the GPT-priority bits (48–56) of an entry: a slot being rewritten or marked bad
/// must never be picked by a gptprio boot loader.
fn clear_prio_bits(e: &mut GPTPartitionEntry) {
    e.attribute_bits &= !crate::layout::PRIO_MASK;
}

/// The checks every install starts with: never the booted slot, the image fits, the labels
/// can be written, no other partition carries the root hash's UUIDs.
fn check_install(inv: &Inventory, slot: Slot, plan: &InstallPlan<'_>) -> Result<(), Error> {
    let path = &inv.path;
    inv.ensure_not_booted(slot)?;
    image_labels(plan.os, plan.version)?;
    let info = inv.slot(slot);
    for (part, capacity, needed) in [
        ("data", info.data.size, plan.data_len),
        ("verity", info.verity.size, plan.verity_len),
    ] {
        if needed > capacity {
            return Err(Error::SlotTooSmall {
                path: path.clone(),
                slot,
                part,
                capacity,
                needed,
            });
        }
    }
    let (du, vu) = (plan.root_hash.data_uuid(), plan.root_hash.verity_uuid());
    let clash = inv.table.entries.iter().enumerate().any(|(i, e)| {
        let n = i as u32 + 1;
        e.is_used()
            && n != info.data.number
            && n != info.verity.number
            && [du, vu].contains(&Guid::from_gpt_bytes(e.unique_partition_guid))
    });
    if clash {
        return Err(Error::DuplicateRootHash {
            path: path.clone(),
            other: !slot,
            root_hash: plan.root_hash.to_hex(),
        });
    }
    Ok(())
}

/// Step 1 of an install: check (nothing written on refusal), then make `slot` unbootable
/// before any of its bytes change — labels `_installing`, GPT-priority bits cleared, partition
/// UUIDs replaced by `scratch` (random: a stale boot entry's `usrhash=` then finds no
/// partition, and a half-written slot can never be mistaken for an image) — in one ordered
/// table write. A slot already in that state (an interrupted install being resumed) is left
/// as it is: nothing is written.
///
/// The caller writes the partitions through [`SlotInstall::writer`], syncs, verifies what it
/// wrote, then names the slot with [`finish_install`]. A crash anywhere in between leaves the
/// slot `Installing`: never bootable, resumable or rewritable.
pub fn begin_install<D: DiskIo>(
    dev: &mut D,
    path: &Path,
    slot: Slot,
    cmdline: Option<&str>,
    plan: &InstallPlan<'_>,
    scratch: [Guid; 2],
) -> Result<SlotInstall, Error> {
    let inv = Inventory::read(dev, path, cmdline)?;
    check_install(&inv, slot, plan)?;
    let info = inv.slot(slot);
    let install = SlotInstall {
        slot,
        path: path.to_path_buf(),
        data: inv.slot_range(slot, SlotPart::Data),
        verity: inv.slot_range(slot, SlotPart::Verity),
    };
    let (dn, vn) = (info.data.number, info.verity.number);
    let already = info.data.label == LABEL_INSTALLING
        && info.verity.label == LABEL_INSTALLING
        && info.data.attributes & crate::layout::PRIO_MASK == 0
        && inv.health.is_clean();
    if already {
        return Ok(install);
    }
    if scratch[0] == scratch[1] || scratch.iter().any(|g| g.is_nil()) {
        return Err(Error::InvalidLabel {
            what: "scratch partition UUID",
            value: format!("{} {}", scratch[0], scratch[1]),
            reason: "two distinct, non-nil UUIDs are needed".into(),
        });
    }
    let mut table = inv.table.clone();
    set_entry(&mut table, dn, path, |e| {
        e.partition_name = LABEL_INSTALLING.into();
        e.unique_partition_guid = scratch[0].to_gpt_bytes();
        clear_prio_bits(e);
    })?;
    set_entry(&mut table, vn, path, |e| {
        e.partition_name = LABEL_INSTALLING.into();
        e.unique_partition_guid = scratch[1].to_gpt_bytes();
    })?;
    write_table(dev, path, &table, &inv.health)?;
    Ok(install)
}

/// Last step of an install: the slot's bytes were written, synced and verified by the
/// caller; give its partitions the UUIDs derived from the root hash and the labels
/// `{os}_{version}` / `…_verity` (one ordered table write). Refuses the booted slot and a
/// slot that is not `Installing` (someone else changed it since [`begin_install`]).
pub fn finish_install<D: DiskIo>(
    dev: &mut D,
    path: &Path,
    slot: Slot,
    cmdline: Option<&str>,
    plan: &InstallPlan<'_>,
) -> Result<(), Error> {
    let inv = Inventory::read(dev, path, cmdline)?;
    check_install(&inv, slot, plan)?;
    let info = inv.slot(slot);
    if info.state != SlotState::Installing {
        return Err(Error::IllegalTransition {
            op: "finish installing",
            slot,
            reason: format!(
                "it is {} (label {:?}), not being installed",
                info.state.as_str(),
                info.data.label
            ),
        });
    }
    let (data_label, verity_label) = image_labels(plan.os, plan.version)?;
    let (du, vu) = (plan.root_hash.data_uuid(), plan.root_hash.verity_uuid());
    let mut table = inv.table.clone();
    set_entry(&mut table, info.data.number, path, |e| {
        e.partition_name = data_label.as_str().into();
        e.unique_partition_guid = du.to_gpt_bytes();
    })?;
    set_entry(&mut table, info.verity.number, path, |e| {
        e.partition_name = verity_label.as_str().into();
        e.unique_partition_guid = vu.to_gpt_bytes();
    })?;
    write_table(dev, path, &table, &inv.health)
}

/// Install an image into `slot` of the disk `dev` in one call, in the order that keeps every
/// crash recoverable ([`begin_install`] → copy → sync → [`finish_install`]):
///
/// 1. checks (never the booted slot, sizes, labels, root hash unique) — nothing written yet;
/// 2. labels → `_installing`, priority bits cleared, UUIDs random; table written (both
///    copies, synced);
/// 3. data and verity copied into their partitions (bounded memory), `fdatasync`;
/// 4. partition UUIDs ← root hash, labels ← `{os}_{version}` / `…_verity`; table written.
///
/// A crash before 4 leaves the slot `Installing`: never bootable, rewritten next time. The
/// caller vouches that the image matches `root_hash` (the updater's pipeline re-verifies the
/// written bytes between 3 and 4 instead).
pub fn write_slot<D: DiskIo, RD: Read, RV: Read>(
    dev: &mut D,
    path: &Path,
    slot: Slot,
    cmdline: Option<&str>,
    image: SlotImage<'_, RD, RV>,
) -> Result<(), Error> {
    let plan = InstallPlan {
        data_len: image.data_len,
        verity_len: image.verity_len,
        root_hash: image.root_hash,
        os: image.os,
        version: image.version,
    };
    let scratch = [random_guid()?, random_guid()?];
    let install = begin_install(dev, path, slot, cmdline, &plan, scratch)?;
    for (part, src, src_path, len) in [
        (
            SlotPart::Data,
            image.data as &mut dyn Read,
            image.data_path,
            image.data_len,
        ),
        (
            SlotPart::Verity,
            image.verity as &mut dyn Read,
            image.verity_path,
            image.verity_len,
        ),
    ] {
        let mut w = install.writer(&mut *dev, part);
        let n = w.copy_from(src, src_path)?;
        w.finish()?;
        if n != len {
            return Err(Error::Io {
                op: "read the announced length of",
                path: src_path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("expected {len} bytes, got {n}"),
                ),
            });
        }
    }
    finish_install(dev, path, slot, cmdline, &plan)
}

/// Record that the image in `slot` is bad (e.g. re-verification failed): data label gets the
/// `_bad` suffix and the GPT-priority bits are cleared. Refuses the booted slot.
pub fn mark_slot_bad<D: DiskIo>(
    dev: &mut D,
    path: &Path,
    slot: Slot,
    cmdline: Option<&str>,
) -> Result<(), Error> {
    let inv = Inventory::read(dev, path, cmdline)?;
    inv.ensure_not_booted(slot)?;
    let info = inv.slot(slot);
    let (Some(os), Some(version)) = (&info.os, &info.version) else {
        return Err(Error::IllegalTransition {
            op: "mark bad",
            slot,
            reason: format!("it holds no image (state {})", info.state.as_str()),
        });
    };
    let label = format!("{os}_{version}{BAD_SUFFIX}");
    let mut table = inv.table.clone();
    set_entry(&mut table, info.data.number, path, |e| {
        e.partition_name = label.as_str().into();
        clear_prio_bits(e);
    })?;
    write_table(dev, path, &table, &inv.health)
}

/// Open the disk at `path` read-write (block device or image file).
pub fn open_rw(path: &Path) -> Result<std::fs::File, Error> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| Error::Io {
            op: "open for writing",
            path: path.to_path_buf(),
            source,
        })
}

pub(crate) fn set_entry(
    table: &mut Table,
    number: u32,
    path: &Path,
    f: impl FnOnce(&mut GPTPartitionEntry),
) -> Result<(), Error> {
    let e = table
        .entry_mut(number)
        .ok_or_else(|| Error::NotBasaltLayout {
            path: path.to_path_buf(),
            reason: format!("partition {number} missing"),
        })?;
    f(e);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip() {
        let (d, v) = image_labels("basalt", "1.2.3").unwrap();
        assert_eq!(
            (d.as_str(), v.as_str()),
            ("basalt_1.2.3", "basalt_1.2.3_verity")
        );
        assert_eq!(
            parse_data_label(&d),
            DataLabel::Image {
                os: "basalt".into(),
                version: "1.2.3".into(),
                bad: false
            }
        );
        assert_eq!(
            parse_data_label("basalt_1.2.3_bad"),
            DataLabel::Image {
                os: "basalt".into(),
                version: "1.2.3".into(),
                bad: true
            }
        );
        assert_eq!(parse_data_label("_empty"), DataLabel::Empty);
        assert_eq!(parse_data_label("_installing"), DataLabel::Installing);
        assert_eq!(parse_data_label("USR-A"), DataLabel::Unknown);
        assert_eq!(parse_data_label("Basalt_1"), DataLabel::Unknown);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 128, failure_persistence: None, ..Default::default()
        })]

        /// Every label we agree to write parses back to the same OS and version.
        #[test]
        fn accepted_labels_parse_back(os in "[a-z0-9][a-z0-9.-]{0,10}", version in "[0-9A-Za-z.+~-]{1,20}") {
            if let Ok((data, verity)) = image_labels(&os, &version) {
                proptest::prop_assert!(verity.len() <= MAX_LABEL);
                proptest::prop_assert_eq!(
                    parse_data_label(&data),
                    DataLabel::Image { os: os.clone(), version: version.clone(), bad: false }
                );
                proptest::prop_assert_eq!(
                    parse_data_label(&format!("{data}{BAD_SUFFIX}")),
                    DataLabel::Image { os, version, bad: true }
                );
            }
        }

        /// Parsing any label never panics.
        #[test]
        fn any_label_parses(label in "\\PC{0,40}") {
            let _ = parse_data_label(&label);
            let _ = cmdline_usrhash(&label);
        }
    }

    #[test]
    fn labels_refuse_what_cannot_round_trip() {
        assert!(image_labels("basalt", "1_2").is_err());
        assert!(image_labels("Basalt", "1.2").is_err());
        assert!(image_labels("basalt", "").is_err());
        assert!(image_labels("basalt", "2026.11.29-rc.1+build.77").is_err()); // 38 > 36
        assert!(image_labels("basalt", "2026.11.29-rc.1").is_ok());
    }

    #[test]
    fn root_hash_uuids_are_verbatim_halves() {
        let hex = "00112233445566778899aabbccddeeff0123456789abcdeffedcba9876543210";
        let h = RootHash::parse(hex).unwrap();
        assert_eq!(
            h.data_uuid().to_string(),
            "00112233-4455-6677-8899-aabbccddeeff"
        );
        assert_eq!(
            h.verity_uuid().to_string(),
            "01234567-89ab-cdef-fedc-ba9876543210"
        );
        assert_eq!(RootHash::from_uuids(h.data_uuid(), h.verity_uuid()), h);
        assert_eq!(h.to_hex(), hex);
        assert!(RootHash::parse(&"0".repeat(64)).is_err());
        assert!(RootHash::parse("abc").is_err());
        assert!(RootHash::parse(&"g".repeat(64)).is_err());
    }

    #[test]
    fn cmdline_parsing() {
        let h = "ab".repeat(32);
        let line = format!(
            "console=ttyS0 usrhash={} ro usrhash={h} quiet",
            "cd".repeat(32)
        );
        assert_eq!(cmdline_usrhash(&line).unwrap().unwrap().to_hex(), h);
        let flatcar = format!("verity.usrhash={h}");
        assert_eq!(cmdline_usrhash(&flatcar).unwrap().unwrap().to_hex(), h);
        assert!(cmdline_usrhash("console=ttyS0 root=/dev/vda").is_none());
        assert!(cmdline_usrhash("usrhash=xyz").unwrap().is_err());
        assert!(cmdline_usrhash("myusrhash=abc").is_none());
        // The kernel's quoting, as basalt-init reads the same line: quotes are removed
        // wherever they are, a quoted space does not split, `--` ends the kernel's part.
        for quoted in [
            format!("usrhash=\"{h}\""),
            format!("\"usrhash={h}\""),
            format!("a=\"x y\" usrhash={h}"),
        ] {
            assert_eq!(
                cmdline_usrhash(&quoted).unwrap().unwrap().to_hex(),
                h,
                "{quoted}"
            );
        }
        assert!(cmdline_usrhash(&format!("a=\"x usrhash={h}\"")).is_none());
        assert!(cmdline_usrhash(&format!("ro -- usrhash={h}")).is_none());
        assert!(matches!(
            cmdline_usrhash(&format!("usrhash={}", "0".repeat(64))),
            Some(Err(Error::InvalidRootHash { .. }))
        ));
        assert!(matches!(
            cmdline_usrhash("usrhash"),
            Some(Err(Error::InvalidRootHash { .. }))
        ));
    }
}
