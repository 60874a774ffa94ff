//! The GUID partition table, read and written with both copies accounted for.
//!
//! Reading is `basalt_identity::gpt`'s (the one GPT reader, bounded and fuzzed, shared with
//! basalt-init); `gptman` provides the structures this module keeps in memory, their
//! serialisation and the CRC32s for writing. This module adds what an updater needs on top:
//!
//! - **Reading reports the health of both copies.** The primary (LBA 1) and the backup (last
//!   LBA) are each checked (signature, CRCs, self-location, array bounds); the primary wins when
//!   valid, else the backup. A corrupt, missing or stale (valid but different) copy is reported in
//!   [`TableHealth`] instead of silently ignored.
//! - **Writing is ordered so a torn write always leaves one valid copy.** Each copy is written
//!   entries first, header last (the header's CRC covers the array, so a half-written copy never
//!   validates), with an `fdatasync` between the copies. The primary is written first, unless it
//!   is the only valid copy, in which case the backup is repaired first.
//!
//! Only 512-byte logical sectors and the standard 128 × 128-byte entry array are supported
//! (what sgdisk, sfdisk and cgpt write by default); anything else is a typed refusal.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use basalt_identity::gpt as idgpt;
use gptman::{GPTHeader, GPTPartitionEntry};

use crate::Error;

/// Logical sector size of every disk Basalt handles.
pub const SECTOR_SIZE: u64 = 512;
/// Number of entries in the partition array.
pub const ENTRY_COUNT: u32 = 128;
const ENTRY_SIZE: u32 = 128;
/// Sectors taken by the entry array (128 × 128 bytes).
pub const ARRAY_SECTORS: u64 = (ENTRY_COUNT as u64 * ENTRY_SIZE as u64) / SECTOR_SIZE;
/// Smallest disk that can hold a GPT: MBR, two headers, two arrays, one usable sector.
pub const MIN_DISK_SECTORS: u64 = 2 + 2 * ARRAY_SECTORS + 2;

/// GUIDs in text byte order and the DPS type GUIDs: `basalt_identity`'s, the one definition
/// shared with basalt-init and the updater.
pub use basalt_identity::{types, Guid};

/// A fresh random (version 4) GUID from the kernel's random source.
pub fn random_guid() -> Result<Guid, Error> {
    let path = Path::new("/dev/urandom");
    let mut bytes = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|source| Error::Io {
            op: "read random bytes from",
            path: path.to_path_buf(),
            source,
        })?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Ok(Guid(bytes))
}

/// What was found at one of the two GPT locations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyHealth {
    /// Valid and identical to the copy in use.
    Valid,
    /// Valid CRCs but a different table than the one in use (an interrupted write, or a tool
    /// that updated only one copy). It will be rewritten on the next write.
    Stale,
    /// Unusable; the reason says why (bad signature, CRC mismatch, out-of-range field).
    Corrupt(String),
}

/// Which copy the table in use was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableSource {
    Primary,
    Backup,
}

/// Health of both GPT copies, as found by [`read_table`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableHealth {
    pub primary: CopyHealth,
    pub backup: CopyHealth,
    /// The copy the table in use came from.
    pub source: TableSource,
}

impl TableHealth {
    /// Both copies valid and identical.
    pub fn is_clean(&self) -> bool {
        self.primary == CopyHealth::Valid && self.backup == CopyHealth::Valid
    }

    /// Human-readable warnings, empty when clean.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        match &self.primary {
            CopyHealth::Valid => {}
            CopyHealth::Stale => out.push("primary GPT is stale".to_string()),
            CopyHealth::Corrupt(why) => {
                out.push(format!("primary GPT is corrupt ({why}); using the backup"))
            }
        }
        match &self.backup {
            CopyHealth::Valid => {}
            CopyHealth::Stale => out.push("backup GPT is stale (differs from primary)".into()),
            CopyHealth::Corrupt(why) => out.push(format!("backup GPT is corrupt ({why})")),
        }
        out
    }
}

/// A partition table in memory: the header in its primary form (`primary_lba` 1, entries at
/// LBA 2) and all 128 entries, index 0 = partition 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub header: GPTHeader,
    pub entries: Vec<GPTPartitionEntry>,
}

impl Table {
    /// Entry of partition `number` (1-based), if it exists and is used.
    pub fn partition(&self, number: u32) -> Option<&GPTPartitionEntry> {
        let e = self.entries.get(number.checked_sub(1)? as usize)?;
        e.is_used().then_some(e)
    }

    /// Mutable entry of partition `number` (1-based), used or not.
    pub fn entry_mut(&mut self, number: u32) -> Option<&mut GPTPartitionEntry> {
        self.entries.get_mut(number.checked_sub(1)? as usize)
    }

    /// The header as written at the end of the disk.
    fn backup_header(&self) -> GPTHeader {
        let mut b = self.header.clone();
        b.primary_lba = self.header.backup_lba;
        b.backup_lba = self.header.primary_lba;
        b.partition_entry_lba = self.header.last_usable_lba + 1;
        b
    }

    /// Check what `gptman` would check before writing, plus bounds it assumes, without panics.
    fn validate(&self, path: &Path) -> Result<(), Error> {
        let bad = |reason: String| Error::GptWrite {
            path: path.to_path_buf(),
            reason,
        };
        let mut used: Vec<&GPTPartitionEntry> =
            self.entries.iter().filter(|e| e.is_used()).collect();
        let mut guids: Vec<[u8; 16]> = used.iter().map(|e| e.unique_partition_guid).collect();
        guids.sort_unstable();
        if guids.windows(2).any(|w| w[0] == w[1]) {
            return Err(bad("two partitions share a partition GUID".into()));
        }
        used.sort_unstable_by_key(|e| e.starting_lba);
        let mut next_free = self.header.first_usable_lba;
        for e in used {
            if e.starting_lba < next_free || e.ending_lba < e.starting_lba {
                return Err(bad("partitions overlap or have negative size".into()));
            }
            if e.ending_lba > self.header.last_usable_lba {
                return Err(bad("a partition ends beyond the last usable sector".into()));
            }
            next_free = e.ending_lba + 1;
        }
        Ok(())
    }
}

/// Read+Write+Seek plus a durability barrier: what table and slot writes need.
pub trait DiskIo: Read + Write + Seek {
    /// Make everything written so far durable (`fdatasync` for files and devices).
    fn sync_data(&mut self) -> io::Result<()>;
}

impl DiskIo for std::fs::File {
    fn sync_data(&mut self) -> io::Result<()> {
        std::fs::File::sync_data(self)
    }
}

impl DiskIo for io::Cursor<Vec<u8>> {
    fn sync_data(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<D: DiskIo + ?Sized> DiskIo for &mut D {
    fn sync_data(&mut self) -> io::Result<()> {
        (**self).sync_data()
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Size of the disk in bytes (seeks to the end).
pub fn disk_len<R: Seek + ?Sized>(dev: &mut R, path: &Path) -> Result<u64, Error> {
    dev.seek(SeekFrom::End(0))
        .map_err(io_err("measure size of", path))
}

/// The copy `basalt_identity::gpt` read, as `gptman` structures, after the checks this
/// crate needs to write it back: the standard 128 × 128-byte entry array, the usable range
/// starting after the primary array, and room for the backup array before the backup header.
fn to_table(copy: &idgpt::Copy) -> Result<(GPTHeader, Vec<GPTPartitionEntry>), String> {
    let h = &copy.header;
    if h.entry_count != ENTRY_COUNT || h.entry_size != ENTRY_SIZE {
        return Err(format!(
            "unsupported entry array: {} entries of {} bytes",
            h.entry_count, h.entry_size
        ));
    }
    if h.first_usable_lba < 2 + ARRAY_SECTORS {
        return Err("usable range starts inside the primary entry array".into());
    }
    // The backup array sits between the last usable LBA and the backup header; a table
    // claiming otherwise would make us write past the end of the disk.
    let backup_header_lba = h.my_lba.max(h.alternate_lba);
    if h.last_usable_lba + ARRAY_SECTORS >= backup_header_lba {
        return Err("no room for the backup entry array before the backup header".into());
    }
    let mut header = GPTHeader {
        signature: *b"EFI PART",
        revision: [0, 0, 1, 0],
        header_size: 92,
        crc32_checksum: 0,
        reserved: [0; 4],
        primary_lba: h.my_lba,
        backup_lba: h.alternate_lba,
        first_usable_lba: h.first_usable_lba,
        last_usable_lba: h.last_usable_lba,
        disk_guid: h.disk_guid.to_gpt_bytes(),
        partition_entry_lba: h.entries_lba,
        number_of_partition_entries: h.entry_count,
        size_of_partition_entry: h.entry_size,
        partition_entry_array_crc32: h.entries_crc32,
    };
    header.crc32_checksum = header.generate_crc32_checksum();
    let entries = copy
        .entries
        .iter()
        .map(|e| GPTPartitionEntry {
            partition_type_guid: e.type_guid.to_gpt_bytes(),
            unique_partition_guid: e.unique_guid.to_gpt_bytes(),
            starting_lba: e.first_lba,
            ending_lba: e.last_lba,
            attribute_bits: e.attributes,
            partition_name: e.name().as_str().into(),
        })
        .collect();
    Ok((header, entries))
}

/// Read the partition table, checking both copies. Errors when neither copy is usable
/// ([`Error::NoGpt`] when neither location even has a GPT signature).
pub fn read_table<R: Read + Seek + ?Sized>(
    dev: &mut R,
    path: &Path,
) -> Result<(Table, TableHealth), Error> {
    let len = disk_len(dev, path)?;
    if len / SECTOR_SIZE < MIN_DISK_SECTORS {
        return Err(Error::NoGpt {
            path: path.to_path_buf(),
        });
    }
    let read = idgpt::read_with_sector_size(dev, SECTOR_SIZE, len).map_err(|e| match e {
        basalt_identity::GptError::NoGpt => Error::NoGpt {
            path: path.to_path_buf(),
        },
        basalt_identity::GptError::BothCopiesInvalid { primary, backup } => Error::GptCorrupt {
            path: path.to_path_buf(),
            primary: primary.to_string(),
            backup: backup.to_string(),
        },
        other => Error::GptCorrupt {
            path: path.to_path_buf(),
            primary: other.to_string(),
            backup: other.to_string(),
        },
    })?;
    let differ = read.copies_differ();
    let check = |c: &Result<idgpt::Copy, basalt_identity::GptError>| match c {
        Ok(copy) => to_table(copy),
        Err(e) => Err(e.to_string()),
    };
    match (check(&read.primary), check(&read.backup)) {
        (Ok((ph, pe)), Ok(_)) => Ok((
            Table {
                header: ph,
                entries: pe,
            },
            TableHealth {
                primary: CopyHealth::Valid,
                backup: if differ {
                    CopyHealth::Stale
                } else {
                    CopyHealth::Valid
                },
                source: TableSource::Primary,
            },
        )),
        (Ok((ph, pe)), Err(why)) => Ok((
            Table {
                header: ph,
                entries: pe,
            },
            TableHealth {
                primary: CopyHealth::Valid,
                backup: CopyHealth::Corrupt(why),
                source: TableSource::Primary,
            },
        )),
        (Err(why), Ok((bh, be))) => {
            let mut header = bh;
            header.backup_lba = header.primary_lba;
            header.primary_lba = 1;
            header.partition_entry_lba = 2;
            Ok((
                Table {
                    header,
                    entries: be,
                },
                TableHealth {
                    primary: CopyHealth::Corrupt(why),
                    backup: CopyHealth::Valid,
                    source: TableSource::Backup,
                },
            ))
        }
        (Err(p), Err(b)) => Err(Error::GptCorrupt {
            path: path.to_path_buf(),
            primary: p,
            backup: b,
        }),
    }
}

/// A `Write + Seek` sink that records what `gptman` writes, coalescing contiguous writes, so
/// the real device sees a few large writes in an order we choose.
#[derive(Debug, Default)]
struct Capture {
    pos: u64,
    runs: Vec<(u64, Vec<u8>)>,
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.runs.last_mut() {
            Some((off, data)) if *off + data.len() as u64 == self.pos => {
                data.extend_from_slice(buf)
            }
            _ => self.runs.push((self.pos, buf.to_vec())),
        }
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Capture {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        match to {
            SeekFrom::Start(p) => {
                self.pos = p;
                Ok(p)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "capture only seeks from start",
            )),
        }
    }
}

/// The byte runs of one copy: entry array first, header last.
fn copy_runs(
    header: &mut GPTHeader,
    entries: &[GPTPartitionEntry],
    path: &Path,
) -> Result<Vec<(u64, Vec<u8>)>, Error> {
    let mut cap = Capture::default();
    header
        .write_into(&mut cap, SECTOR_SIZE, entries)
        .map_err(|e| Error::GptWrite {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let header_off = header.primary_lba * SECTOR_SIZE;
    let (mut head, mut rest): (Vec<_>, Vec<_>) = cap
        .runs
        .into_iter()
        .partition(|(off, _)| *off == header_off);
    rest.append(&mut head);
    Ok(rest)
}

/// Write both copies of `table` in crash-safe order (see the module docs), syncing after
/// each copy. `health` is what [`read_table`] reported for the disk now.
pub fn write_table<D: DiskIo + ?Sized>(
    dev: &mut D,
    path: &Path,
    table: &Table,
    health: &TableHealth,
) -> Result<(), Error> {
    table.validate(path)?;
    let mut primary = table.header.clone();
    let mut backup = table.backup_header();
    let primary_runs = copy_runs(&mut primary, &table.entries, path)?;
    let backup_runs = copy_runs(&mut backup, &table.entries, path)?;
    let primary_only_valid =
        health.primary == CopyHealth::Valid && health.backup != CopyHealth::Valid;
    let order = if primary_only_valid {
        [backup_runs, primary_runs]
    } else {
        [primary_runs, backup_runs]
    };
    for runs in order {
        for (off, data) in runs {
            dev.seek(SeekFrom::Start(off))
                .and_then(|_| dev.write_all(&data))
                .map_err(io_err("write partition table to", path))?;
        }
        dev.sync_data()
            .map_err(io_err("sync partition table on", path))?;
    }
    Ok(())
}

/// Start a new empty table covering a disk of `disk_len` bytes.
pub fn new_table(disk_len: u64, disk_guid: Guid, path: &Path) -> Result<Table, Error> {
    let sectors = disk_len / SECTOR_SIZE;
    if sectors < MIN_DISK_SECTORS {
        return Err(Error::LayoutTooSmall {
            path: path.to_path_buf(),
            needed: MIN_DISK_SECTORS * SECTOR_SIZE,
            available: disk_len,
        });
    }
    let header = GPTHeader {
        signature: *b"EFI PART",
        revision: [0, 0, 1, 0],
        header_size: 92,
        crc32_checksum: 0,
        reserved: [0; 4],
        primary_lba: 1,
        backup_lba: sectors - 1,
        first_usable_lba: 2 + ARRAY_SECTORS,
        last_usable_lba: sectors - 2 - ARRAY_SECTORS,
        disk_guid: disk_guid.to_gpt_bytes(),
        partition_entry_lba: 2,
        number_of_partition_entries: ENTRY_COUNT,
        size_of_partition_entry: ENTRY_SIZE,
        partition_entry_array_crc32: 0,
    };
    Ok(Table {
        header,
        entries: vec![GPTPartitionEntry::empty(); ENTRY_COUNT as usize],
    })
}

/// Write the protective MBR (one 0xEE partition covering the disk) into sector 0.
pub fn write_protective_mbr<D: DiskIo>(dev: &mut D, path: &Path) -> Result<(), Error> {
    gptman::GPT::write_protective_mbr_into(dev, SECTOR_SIZE).map_err(|e| Error::GptWrite {
        path: path.to_path_buf(),
        reason: format!("protective MBR: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk_with_table(len: usize) -> (io::Cursor<Vec<u8>>, Table) {
        let mut dev = io::Cursor::new(vec![0u8; len]);
        let path = Path::new("mem");
        let mut t = new_table(len as u64, Guid([7; 16]), path).unwrap();
        t.entries[0] = GPTPartitionEntry {
            partition_type_guid: types::ESP.to_gpt_bytes(),
            unique_partition_guid: [1; 16],
            starting_lba: 2048,
            ending_lba: 4095,
            attribute_bits: 0,
            partition_name: "esp".into(),
        };
        let fresh = TableHealth {
            primary: CopyHealth::Corrupt("new".into()),
            backup: CopyHealth::Corrupt("new".into()),
            source: TableSource::Primary,
        };
        write_table(&mut dev, path, &t, &fresh).unwrap();
        (dev, t)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 64, failure_persistence: None, ..Default::default()
        })]

        /// Any set of non-overlapping partitions with arbitrary GUIDs, attributes and labels
        /// (up to 36 UTF-16 units) reads back exactly, both copies clean.
        #[test]
        fn table_round_trips(
            parts in proptest::collection::vec(
                (1u64..40, 0u64..20, proptest::array::uniform16(1u8..), 0u64.., "\\PC{0,36}"),
                0..12,
            ),
            slots in proptest::collection::vec(0usize..128, 12),
        ) {
            let len = 2 << 20;
            let mut dev = io::Cursor::new(vec![0u8; len]);
            let path = Path::new("mem");
            let mut t = new_table(len as u64, Guid([3; 16]), path).unwrap();
            let mut lba = t.header.first_usable_lba;
            let mut used = std::collections::HashSet::new();
            for (i, (size, gap, uuid, attrs, label)) in parts.iter().enumerate() {
                let label: String = label.chars().take_while({
                    let mut units = 0;
                    move |c| { units += c.len_utf16(); units <= 36 }
                }).collect();
                let slot = slots[i];
                if !used.insert(slot) { continue; }
                let mut uuid = *uuid;
                uuid[0] = i as u8; // unique
                lba += gap;
                t.entries[slot] = GPTPartitionEntry {
                    partition_type_guid: types::USR_X86_64.to_gpt_bytes(),
                    unique_partition_guid: uuid,
                    starting_lba: lba,
                    ending_lba: lba + size - 1,
                    attribute_bits: *attrs,
                    partition_name: label.as_str().into(),
                };
                lba += size;
            }
            let blank = TableHealth {
                primary: CopyHealth::Corrupt("new".into()),
                backup: CopyHealth::Corrupt("new".into()),
                source: TableSource::Primary,
            };
            write_table(&mut dev, path, &t, &blank).unwrap();
            let (back, health) = read_table(&mut dev, path).unwrap();
            proptest::prop_assert!(health.is_clean());
            proptest::prop_assert_eq!(back.entries, t.entries);
        }
    }

    #[test]
    fn write_then_read_is_clean() {
        let (mut dev, t) = disk_with_table(4 << 20);
        let (back, health) = read_table(&mut dev, Path::new("mem")).unwrap();
        assert!(health.is_clean(), "{health:?}");
        assert_eq!(back.entries, t.entries);
    }

    #[test]
    fn corrupt_primary_falls_back_and_reports() {
        let (mut dev, t) = disk_with_table(4 << 20);
        dev.get_mut()[512 + 20] ^= 0xff;
        let (back, health) = read_table(&mut dev, Path::new("mem")).unwrap();
        assert_eq!(health.source, TableSource::Backup);
        assert!(matches!(health.primary, CopyHealth::Corrupt(_)));
        assert_eq!(back.entries, t.entries);
        assert_eq!(back.header.primary_lba, 1);
    }

    #[test]
    fn both_corrupt_is_typed_error_and_zero_disk_is_no_gpt() {
        let (mut dev, _) = disk_with_table(4 << 20);
        let len = dev.get_ref().len();
        dev.get_mut()[512 + 20] ^= 0xff;
        dev.get_mut()[len - 512 + 20] ^= 0xff;
        assert!(matches!(
            read_table(&mut dev, Path::new("mem")),
            Err(Error::GptCorrupt { .. })
        ));
        let mut zero = io::Cursor::new(vec![0u8; 1 << 20]);
        assert!(matches!(
            read_table(&mut zero, Path::new("mem")),
            Err(Error::NoGpt { .. })
        ));
    }
}
