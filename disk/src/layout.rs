//! The Basalt disk layout and how to create or recognise it.
//!
//! ```text
//!  LBA 0   protective MBR
//!  LBA 1   primary GPT header, LBA 2–33 entries
//!  #1 esp            ESP (vfat, systemd-boot + kernels)              type c12a7328-…
//!  #2 usr-a          slot A /usr (erofs, read-only)                  type 8484680c-… (usr x86-64)
//!  #3 usr-a-verity   slot A dm-verity hash tree                      type 77ff5f63-… (usr-verity x86-64)
//!     (reserve)      unallocated, slot A's room to grow
//!  #4 usr-b          slot B /usr
//!  #5 usr-b-verity   slot B hash tree
//!     (reserve)      unallocated, slot B's room to grow
//!  #6 root           writable /etc and /var (rest of the disk)       type 4f68bce3-… (root x86-64)
//!  last 33 LBAs      backup entries + backup header
//! ```
//!
//! Why the reserves: Flatcar's 1 GiB `/usr` cannot grow without moving partitions under a
//! running system (Flatcar#1917). Here each slot owns free space right after its own pair, so
//! a later layout migration can grow the *inactive* slot's data partition in place (and move
//! only that slot's verity partition to the end of its reserve) while the booted slot and the
//! root partition stay untouched; the next update then does the same for the other slot. Root
//! is last so it can grow into a disk that was enlarged (cloud volumes). The verity partition
//! is sized for the data partition *after* growth into the reserve (a SHA-256 tree is ≈0.8 %
//! of the data), so growth never needs a bigger verity partition.
//!
//! Slots are recognised by type GUID and table order (first `usr` partition = slot A, first
//! `usr-verity` = A's hash tree), not by label or partition number, so tables written by other
//! tools (sgdisk, systemd-repart) with the same types are read the same way.

use std::fs::OpenOptions;
use std::path::Path;

use gptman::GPTPartitionEntry;

use crate::gpt::{
    self, types, write_protective_mbr, write_table, CopyHealth, DiskIo, Guid, Table, TableHealth,
    TableSource, SECTOR_SIZE,
};
use crate::{Error, Slot};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Label of a free slot partition (as systemd-sysupdate uses it).
pub const LABEL_EMPTY: &str = "_empty";
/// Label of the ESP.
pub const LABEL_ESP: &str = "esp";
/// Label of the writable root partition.
pub const LABEL_ROOT: &str = "root";

/// Sizes of a new layout, in bytes. Every size is rounded up to `align`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutSpec {
    /// Total disk (image file) size. Default 8 GiB.
    pub disk_size: u64,
    /// ESP size. Default 256 MiB (room for three kernel + initrd pairs).
    pub esp_size: u64,
    /// Each slot's `/usr` data partition. Default 1 GiB.
    pub usr_size: u64,
    /// Each slot's verity partition. Default 32 MiB: a tree for up to ≈3.9 GiB of data, so
    /// it still fits after `usr` grows into the reserve.
    pub verity_size: u64,
    /// Unallocated space after each slot for later growth. Default 1 GiB.
    pub slot_reserve: u64,
    /// Root partition size; `None` = the rest of the disk. Default `None`.
    pub root_size: Option<u64>,
    /// Partition alignment. Default 1 MiB (what sgdisk/sfdisk use).
    pub align: u64,
}

impl Default for LayoutSpec {
    fn default() -> Self {
        LayoutSpec {
            disk_size: 8 * GIB,
            esp_size: 256 * MIB,
            usr_size: GIB,
            verity_size: 32 * MIB,
            slot_reserve: GIB,
            root_size: None,
            align: MIB,
        }
    }
}

impl LayoutSpec {
    /// A ≈8 MiB layout for tests: 1 MiB ESP, 1 MiB `usr`, 64 KiB verity, 512 KiB reserves,
    /// 64 KiB alignment, root takes the rest (≈3.8 MiB).
    pub fn tiny() -> Self {
        LayoutSpec {
            disk_size: 8 * MIB,
            esp_size: MIB,
            usr_size: MIB,
            verity_size: 64 << 10,
            slot_reserve: 512 << 10,
            root_size: None,
            align: 64 << 10,
        }
    }

    /// Where every partition goes on a disk of `self.disk_size`.
    pub fn plan(&self, path: &Path) -> Result<Plan, Error> {
        let param = |name: &'static str, reason: &str| Error::LayoutParameter {
            name,
            reason: reason.to_string(),
        };
        if self.align == 0 || self.align % SECTOR_SIZE != 0 {
            return Err(param("align", "must be a non-zero multiple of 512"));
        }
        for (name, v) in [
            ("esp-size", self.esp_size),
            ("usr-size", self.usr_size),
            ("verity-size", self.verity_size),
        ] {
            if v == 0 {
                return Err(param(name, "must not be zero"));
            }
        }
        if self.root_size == Some(0) {
            return Err(param("root-size", "must not be zero"));
        }
        let sectors = self.disk_size / SECTOR_SIZE;
        let too_small = |needed: u64| Error::LayoutTooSmall {
            path: path.to_path_buf(),
            needed,
            available: self.disk_size,
        };
        if sectors < gpt::MIN_DISK_SECTORS {
            return Err(too_small(gpt::MIN_DISK_SECTORS * SECTOR_SIZE));
        }
        let align = self.align / SECTOR_SIZE;
        let last_usable = sectors - 2 - gpt::ARRAY_SECTORS;
        let up = |lba: u64| lba.div_ceil(align).checked_mul(align);
        let len = |bytes: u64| bytes.div_ceil(self.align).checked_mul(align);
        let overflow = || param("disk-size", "sizes overflow");
        // `cursor` is the next free LBA; each extent is [start, start+n).
        let mut cursor = 2 + gpt::ARRAY_SECTORS;
        let mut take = |bytes: u64| -> Result<Extent, Error> {
            let start = up(cursor).ok_or_else(overflow)?;
            let n = len(bytes).ok_or_else(overflow)?;
            let end = start.checked_add(n).ok_or_else(overflow)?;
            cursor = end;
            Ok(Extent {
                first_lba: start,
                last_lba: end - 1,
            })
        };
        let esp = take(self.esp_size)?;
        let usr_a = take(self.usr_size)?;
        let verity_a = take(self.verity_size)?;
        let _reserve_a = take(self.slot_reserve)?;
        let usr_b = take(self.usr_size)?;
        let verity_b = take(self.verity_size)?;
        let _reserve_b = take(self.slot_reserve)?;
        let root = match self.root_size {
            Some(size) => take(size)?,
            // Rest of the disk, at least one alignment unit.
            None => {
                let start = up(cursor).ok_or_else(overflow)?;
                // End on an alignment boundary too (sgdisk warns otherwise).
                let end = ((last_usable + 1) / align) * align;
                Extent {
                    first_lba: start,
                    last_lba: end.max(start + align) - 1,
                }
            }
        };
        if root.last_lba > last_usable {
            let needed = (root.last_lba + 1 + 1 + gpt::ARRAY_SECTORS) * SECTOR_SIZE;
            return Err(too_small(needed));
        }
        Ok(Plan {
            esp,
            usr: [usr_a, usr_b],
            verity: [verity_a, verity_b],
            root,
        })
    }
}

/// An inclusive LBA range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub first_lba: u64,
    pub last_lba: u64,
}

impl Extent {
    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        (self.last_lba - self.first_lba + 1) * SECTOR_SIZE
    }
}

/// The computed positions of a new layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub esp: Extent,
    pub usr: [Extent; 2],
    pub verity: [Extent; 2],
    pub root: Extent,
}

/// Partition numbers (1-based) of the Basalt roles in one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub esp: u32,
    /// `/usr` data partitions, slot A then B.
    pub usr: [u32; 2],
    /// Verity partitions, slot A then B.
    pub verity: [u32; 2],
    pub root: u32,
}

impl Layout {
    /// Data partition number of `slot`.
    pub fn usr(&self, slot: Slot) -> u32 {
        self.usr[slot_index(slot)]
    }

    /// Verity partition number of `slot`.
    pub fn verity(&self, slot: Slot) -> u32 {
        self.verity[slot_index(slot)]
    }

    /// Recognise the Basalt layout in `table`: one ESP, two `usr`, two `usr-verity`, one root,
    /// by type GUID, slots in table order.
    pub fn discover(table: &Table, path: &Path) -> Result<Layout, Error> {
        let of_type = |t: Guid| -> Vec<u32> {
            table
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.is_used() && Guid::from_gpt_bytes(e.partition_type_guid) == t)
                .map(|(i, _)| i as u32 + 1)
                .collect()
        };
        let not = |reason: String| Error::NotBasaltLayout {
            path: path.to_path_buf(),
            reason,
        };
        let esp = of_type(types::ESP);
        let usr = of_type(types::USR_X86_64);
        let verity = of_type(types::USR_VERITY_X86_64);
        let root = of_type(types::ROOT_X86_64);
        let one = |v: &[u32], what: &str| -> Result<u32, Error> {
            match v {
                [n] => Ok(*n),
                _ => Err(not(format!(
                    "expected 1 {what} partition, found {}",
                    v.len()
                ))),
            }
        };
        let two = |v: &[u32], what: &str| -> Result<[u32; 2], Error> {
            match v {
                [a, b] => Ok([*a, *b]),
                _ => Err(not(format!(
                    "expected 2 {what} partitions, found {}",
                    v.len()
                ))),
            }
        };
        let layout = Layout {
            esp: one(&esp, "ESP")?,
            usr: two(&usr, "usr")?,
            verity: two(&verity, "usr-verity")?,
            root: one(&root, "root")?,
        };
        for n in [layout.esp, layout.root]
            .into_iter()
            .chain(layout.usr)
            .chain(layout.verity)
        {
            let e = table
                .partition(n)
                .ok_or_else(|| not(format!("partition {n} vanished")))?;
            if e.ending_lba < e.starting_lba || e.starting_lba < table.header.first_usable_lba {
                return Err(not(format!("partition {n} has an invalid extent")));
            }
            if e.ending_lba > table.header.last_usable_lba {
                return Err(not(format!("partition {n} ends beyond the usable area")));
            }
        }
        Ok(layout)
    }
}

/// 0 for A, 1 for B.
pub fn slot_index(slot: Slot) -> usize {
    match slot {
        Slot::A => 0,
        Slot::B => 1,
    }
}

fn entry(type_guid: Guid, uuid: Guid, ext: Extent, label: &str) -> GPTPartitionEntry {
    GPTPartitionEntry {
        partition_type_guid: type_guid.to_gpt_bytes(),
        unique_partition_guid: uuid.to_gpt_bytes(),
        starting_lba: ext.first_lba,
        ending_lba: ext.last_lba,
        attribute_bits: 0,
        partition_name: label.into(),
    }
}

/// Write a fresh Basalt layout onto `dev` (whose length must be `spec.disk_size` or more):
/// protective MBR, both GPT copies, six partitions, both slots `_empty`. `new_guid` supplies
/// the disk GUID and the partition GUIDs (tests pass a deterministic source). Partition
/// contents are not touched.
pub fn create_layout<D: DiskIo>(
    dev: &mut D,
    path: &Path,
    spec: &LayoutSpec,
    new_guid: &mut dyn FnMut() -> Result<Guid, Error>,
) -> Result<Layout, Error> {
    let plan = spec.plan(path)?;
    let len = gpt::disk_len(dev, path)?;
    if len < spec.disk_size {
        return Err(Error::LayoutTooSmall {
            path: path.to_path_buf(),
            needed: spec.disk_size,
            available: len,
        });
    }
    // The table describes `disk_size` even on a bigger device: the layout is what was asked.
    let mut table = gpt::new_table(spec.disk_size, new_guid()?, path)?;
    let parts = [
        (types::ESP, plan.esp, LABEL_ESP),
        (types::USR_X86_64, plan.usr[0], LABEL_EMPTY),
        (types::USR_VERITY_X86_64, plan.verity[0], LABEL_EMPTY),
        (types::USR_X86_64, plan.usr[1], LABEL_EMPTY),
        (types::USR_VERITY_X86_64, plan.verity[1], LABEL_EMPTY),
        (types::ROOT_X86_64, plan.root, LABEL_ROOT),
    ];
    for (i, (t, ext, label)) in parts.into_iter().enumerate() {
        table.entries[i] = entry(t, new_guid()?, ext, label);
    }
    write_protective_mbr(dev, path)?;
    let blank = TableHealth {
        primary: CopyHealth::Corrupt("new disk".into()),
        backup: CopyHealth::Corrupt("new disk".into()),
        source: TableSource::Primary,
    };
    write_table(dev, path, &table, &blank)?;
    Layout::discover(&table, path)
}

/// Create a new sparse image file at `path` (refusing to overwrite) with the Basalt layout,
/// its disk and partition GUIDs drawn at random.
pub fn create_image(path: &Path, spec: &LayoutSpec) -> Result<Layout, Error> {
    create_image_with(path, spec, &mut gpt::random_guid)
}

/// [`create_image`] with the GUIDs taken from `new_guid`, in order: the disk GUID, then the
/// six partitions in table order (ESP, usr A, verity A, usr B, verity B, root). An image
/// builder passes GUIDs derived from the release, so the same inputs give the same bytes.
pub fn create_image_with(
    path: &Path,
    spec: &LayoutSpec,
    new_guid: &mut dyn FnMut() -> Result<Guid, Error>,
) -> Result<Layout, Error> {
    spec.plan(path)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| Error::Io {
            op: "create disk image",
            path: path.to_path_buf(),
            source,
        })?;
    file.set_len(spec.disk_size).map_err(|source| Error::Io {
        op: "size disk image",
        path: path.to_path_buf(),
        source,
    })?;
    create_layout(&mut file, path, spec, new_guid)
}

/// Parse a size: plain bytes, or with a suffix K/M/G/T (optionally `iB`), powers of 1024.
pub fn parse_size(text: &str) -> Result<u64, Error> {
    let bad = |reason: &str| Error::LayoutParameter {
        name: "size",
        reason: format!("{text:?}: {reason}"),
    };
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad("expected a number"))?;
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return Err(bad("unknown suffix (use K, M, G, T)")),
    };
    n.checked_mul(1u64 << shift).ok_or_else(|| bad("too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_plan_is_aligned_and_ordered() {
        let p = LayoutSpec::default().plan(Path::new("x")).unwrap();
        let all = [p.esp, p.usr[0], p.verity[0], p.usr[1], p.verity[1], p.root];
        for w in all.windows(2) {
            assert!(w[0].last_lba < w[1].first_lba);
        }
        for e in all {
            assert_eq!(e.first_lba % 2048, 0);
        }
        assert_eq!(p.esp.bytes(), 256 * MIB);
        assert_eq!(p.usr[1].bytes(), GIB);
        // The reserve after slot A is a full GiB.
        assert!((p.usr[1].first_lba - p.verity[0].last_lba - 1) * 512 >= GIB);
    }

    #[test]
    fn too_small_disk_is_typed() {
        let spec = LayoutSpec {
            disk_size: 4 * MIB,
            ..LayoutSpec::tiny()
        };
        assert!(matches!(
            spec.plan(Path::new("x")),
            Err(Error::LayoutTooSmall { .. })
        ));
        let zero = LayoutSpec {
            usr_size: 0,
            ..LayoutSpec::tiny()
        };
        assert!(matches!(
            zero.plan(Path::new("x")),
            Err(Error::LayoutParameter { .. })
        ));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("256M").unwrap(), 256 * MIB);
        assert_eq!(parse_size("8GiB").unwrap(), 8 * GIB);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        for bad in ["", "M", "1.5G", "12Q", "99999999999999999999T", "-1"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
