//! A GUID partition table reader for disks nobody vouched for.
//!
//! PID 1 of the initramfs runs this on every disk the kernel shows it — a USB stick, a
//! re-attached old disk, a disk an attacker prepared — so nothing the disk claims is used
//! before it is checked: the header is one sector; the entry array's size (count × entry
//! size) is bounded by [`MAX_ARRAY_BYTES`] and must lie inside the disk *before* a single
//! entry byte is allocated or read; all arithmetic on LBAs is checked. A table that fails a
//! check is refused with a [`GptError`] naming the field and the value, never a panic.
//!
//! Both copies are read ([`Table`]): the primary at LBA 1, the backup where the primary says
//! (else the last LBA — a grown disk), each validated on its own, so callers can report a
//! stale or corrupt copy (`basalt-disk` repairs it) or simply take the valid one
//! ([`Table::copy`]).
//!
//! What counts as valid (UEFI 2.10 §5.3.2 plus what a reader must not trust): signature
//! `EFI PART`, revision 1.0, header size 92 up to one sector, header CRC32, the header at the
//! LBA it claims, entry size a power of two from 128 to 4096, 1 to [`MAX_ARRAY_BYTES`] of
//! entries inside the disk and not over the header, usable range and alternate header inside
//! the disk, array CRC32, and every used entry inside the usable range with a unique
//! partition GUID. Writing is `basalt-disk`'s business.

use std::io::{Read, Seek, SeekFrom};

use crate::error::GptError;
use crate::guid::Guid;

/// The largest entry array accepted, in bytes (1 MiB: 8192 entries of 128 bytes; tools
/// write 16 KiB). The bound PID 1 relies on: a header claiming more is refused unread.
pub const MAX_ARRAY_BYTES: u64 = 1 << 20;
/// Logical sector sizes a GPT is looked for with, in this order.
pub const SECTOR_SIZES: [u64; 2] = [512, 4096];
const SIGNATURE: &[u8; 8] = b"EFI PART";
const REVISION_1_0: u32 = 0x0001_0000;
const MIN_HEADER: u32 = 92;
/// Bytes of an entry this reader interprets (larger entries carry more, ignored).
const ENTRY_BYTES: usize = 128;
/// UTF-16 code units in an entry's name.
pub const NAME_UNITS: usize = 36;

/// One GPT header, as validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header size in bytes (92 in practice).
    pub header_size: u32,
    /// The LBA of this header.
    pub my_lba: u64,
    /// The LBA of the other copy's header.
    pub alternate_lba: u64,
    /// First LBA a partition may use.
    pub first_usable_lba: u64,
    /// Last LBA a partition may use.
    pub last_usable_lba: u64,
    /// The disk GUID.
    pub disk_guid: Guid,
    /// First LBA of the entry array.
    pub entries_lba: u64,
    /// Number of entries in the array.
    pub entry_count: u32,
    /// Bytes per entry.
    pub entry_size: u32,
    /// CRC32 of the entry array.
    pub entries_crc32: u32,
}

/// One entry of the array (used or not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Partition type GUID (nil = unused).
    pub type_guid: Guid,
    /// Unique partition GUID (`PARTUUID`).
    pub unique_guid: Guid,
    /// First LBA.
    pub first_lba: u64,
    /// Last LBA (inclusive).
    pub last_lba: u64,
    /// The 64 attribute bits.
    pub attributes: u64,
    /// The name (`PARTLABEL`), UTF-16LE as stored.
    pub name: [u16; NAME_UNITS],
}

impl Entry {
    /// An entry is used when its type GUID is not nil.
    pub fn is_used(&self) -> bool {
        !self.type_guid.is_nil()
    }

    /// The name up to its first NUL, unpaired surrogates replaced.
    pub fn name(&self) -> String {
        let end = self.name.iter().position(|&u| u == 0).unwrap_or(NAME_UNITS);
        String::from_utf16_lossy(&self.name[..end])
    }

    /// The name field for `text`: its first 36 UTF-16 units, zero-padded.
    pub fn encode_name(text: &str) -> [u16; NAME_UNITS] {
        let mut out = [0u16; NAME_UNITS];
        for (slot, unit) in out.iter_mut().zip(text.encode_utf16()) {
            *slot = unit;
        }
        out
    }

    /// Byte offset and length of the partition on a disk with `sector_size`-byte sectors,
    /// `None` if reversed or overflowing (a validated table has neither).
    pub fn byte_range(&self, sector_size: u64) -> Option<(u64, u64)> {
        let sectors = self.last_lba.checked_sub(self.first_lba)?.checked_add(1)?;
        Some((
            self.first_lba.checked_mul(sector_size)?,
            sectors.checked_mul(sector_size)?,
        ))
    }

    fn parse(b: &[u8]) -> Entry {
        let mut name = [0u16; NAME_UNITS];
        for (i, unit) in name.iter_mut().enumerate() {
            *unit = u16::from_le_bytes([b[56 + 2 * i], b[57 + 2 * i]]);
        }
        Entry {
            type_guid: Guid::from_gpt_bytes(arr16(&b[0..16])),
            unique_guid: Guid::from_gpt_bytes(arr16(&b[16..32])),
            first_lba: le64(&b[32..40]),
            last_lba: le64(&b[40..48]),
            attributes: le64(&b[48..56]),
            name,
        }
    }
}

/// One copy of the table: its header and every entry (index 0 = partition 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// The header.
    pub header: Header,
    /// All `header.entry_count` entries, used or not.
    pub entries: Vec<Entry>,
}

impl Copy {
    /// The used entries with their 1-based partition numbers.
    pub fn used(&self) -> impl Iterator<Item = (u32, &Entry)> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.is_used())
            .map(|(i, e)| (i as u32 + 1, e))
    }
}

/// Both copies of a disk's table, each with its own verdict.
#[derive(Debug)]
pub struct Table {
    /// The logical sector size the table was found with.
    pub sector_size: u64,
    /// Disk length in bytes.
    pub disk_len: u64,
    /// The primary copy (LBA 1).
    pub primary: Result<Copy, GptError>,
    /// The backup copy (where the primary says, else the last LBA).
    pub backup: Result<Copy, GptError>,
}

impl Table {
    /// The copy to use: the primary when valid, else the backup.
    pub fn copy(&self) -> Option<&Copy> {
        self.primary.as_ref().ok().or(self.backup.as_ref().ok())
    }

    /// Both copies valid but describing different partitions or usable ranges.
    pub fn copies_differ(&self) -> bool {
        match (&self.primary, &self.backup) {
            (Ok(p), Ok(b)) => {
                p.entries != b.entries
                    || p.header.disk_guid != b.header.disk_guid
                    || p.header.first_usable_lba != b.header.first_usable_lba
                    || p.header.last_usable_lba != b.header.last_usable_lba
            }
            _ => false,
        }
    }
}

fn arr16(b: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&b[..16]);
    out
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// CRC-32 (IEEE 802.3, reflected, as UEFI uses it).
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = !0u32;
    for &b in data {
        c = TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

fn read_at<R: Read + Seek + ?Sized>(
    dev: &mut R,
    what: &'static str,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), GptError> {
    dev.seek(SeekFrom::Start(offset))
        .and_then(|_| dev.read_exact(buf))
        .map_err(|source| GptError::Read {
            what,
            offset,
            source,
        })
}

/// Read and validate the copy whose header is at `lba`, on a disk of `disk_len` bytes with
/// `sector_size`-byte sectors. Reads one sector, then at most [`MAX_ARRAY_BYTES`].
pub fn read_copy<R: Read + Seek + ?Sized>(
    dev: &mut R,
    sector_size: u64,
    lba: u64,
    disk_len: u64,
) -> Result<Copy, GptError> {
    let sectors = disk_len / sector_size;
    // MBR + header + at least one sector of entries and one usable sector, both copies.
    if sectors < 6 {
        return Err(GptError::DiskTooSmall {
            len: disk_len,
            sector_size,
        });
    }
    if lba == 0 || lba >= sectors {
        return Err(GptError::NoSignature { lba });
    }
    // sector_size is 512 or 4096 (callers pass SECTOR_SIZES), so this allocation is bounded.
    let mut sector = vec![0u8; sector_size.min(4096) as usize];
    read_at(dev, "GPT header", lba * sector_size, &mut sector)?;
    if &sector[..8] != SIGNATURE {
        return Err(GptError::NoSignature { lba });
    }
    let revision = le32(&sector[8..12]);
    if revision != REVISION_1_0 {
        return Err(GptError::Revision {
            lba,
            found: revision,
        });
    }
    let header_size = le32(&sector[12..16]);
    if header_size < MIN_HEADER || u64::from(header_size) > sector.len() as u64 {
        return Err(GptError::HeaderSize {
            lba,
            size: header_size,
        });
    }
    let stored = le32(&sector[16..20]);
    let mut h = sector[..header_size as usize].to_vec();
    h[16..20].fill(0);
    let computed = crc32(&h);
    if stored != computed {
        return Err(GptError::HeaderCrc {
            lba,
            stored,
            computed,
        });
    }
    let header = Header {
        header_size,
        my_lba: le64(&sector[24..32]),
        alternate_lba: le64(&sector[32..40]),
        first_usable_lba: le64(&sector[40..48]),
        last_usable_lba: le64(&sector[48..56]),
        disk_guid: Guid::from_gpt_bytes(arr16(&sector[56..72])),
        entries_lba: le64(&sector[72..80]),
        entry_count: le32(&sector[80..84]),
        entry_size: le32(&sector[84..88]),
        entries_crc32: le32(&sector[88..92]),
    };
    if header.my_lba != lba {
        return Err(GptError::Location {
            lba,
            claims: header.my_lba,
        });
    }
    let size = header.entry_size;
    if !(128..=4096).contains(&size) || !size.is_power_of_two() {
        return Err(GptError::EntrySize { lba, size });
    }
    let array_bytes = u64::from(header.entry_count) * u64::from(size);
    if header.entry_count == 0 || array_bytes > MAX_ARRAY_BYTES {
        return Err(GptError::EntryCount {
            lba,
            count: header.entry_count,
            size,
        });
    }
    let outside = || GptError::ArrayOutsideDisk {
        lba,
        array_lba: header.entries_lba,
        bytes: array_bytes,
    };
    let array_start = header
        .entries_lba
        .checked_mul(sector_size)
        .ok_or_else(outside)?;
    let array_end = array_start.checked_add(array_bytes).ok_or_else(outside)?;
    let header_start = lba * sector_size;
    let overlaps_header = array_start < header_start + sector_size && header_start < array_end;
    if header.entries_lba == 0 || array_end > sectors * sector_size || overlaps_header {
        return Err(outside());
    }
    if header.first_usable_lba == 0
        || header.first_usable_lba > header.last_usable_lba
        || header.last_usable_lba >= sectors
        || header.alternate_lba == 0
        || header.alternate_lba >= sectors
    {
        return Err(GptError::UsableRange {
            lba,
            first: header.first_usable_lba,
            last: header.last_usable_lba,
            alternate: header.alternate_lba,
        });
    }
    // Bounded above: array_bytes <= MAX_ARRAY_BYTES and inside the disk.
    let mut array = vec![0u8; array_bytes as usize];
    read_at(dev, "GPT entry array", array_start, &mut array)?;
    let computed = crc32(&array);
    if computed != header.entries_crc32 {
        return Err(GptError::ArrayCrc {
            lba,
            stored: header.entries_crc32,
            computed,
        });
    }
    let entries: Vec<Entry> = array
        .chunks_exact(size as usize)
        .map(|c| Entry::parse(&c[..ENTRY_BYTES]))
        .collect();
    let copy = Copy { header, entries };
    let mut seen: Vec<(Guid, u32)> = Vec::new();
    for (number, e) in copy.used() {
        if e.first_lba < copy.header.first_usable_lba
            || e.last_lba > copy.header.last_usable_lba
            || e.first_lba > e.last_lba
        {
            return Err(GptError::EntryExtent {
                number,
                first: e.first_lba,
                last: e.last_lba,
            });
        }
        seen.push((e.unique_guid, number));
    }
    seen.sort_unstable();
    if let Some(w) = seen.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(GptError::DuplicatePartitionGuid {
            guid: w[0].0,
            numbers: (w[0].1, w[1].1),
        });
    }
    Ok(copy)
}

/// Read both copies of the table of a disk of `disk_len` bytes whose logical sector size is
/// `sector_size`. Errors when neither copy is valid ([`GptError::NoGpt`] when neither even
/// has a signature).
pub fn read_with_sector_size<R: Read + Seek + ?Sized>(
    dev: &mut R,
    sector_size: u64,
    disk_len: u64,
) -> Result<Table, GptError> {
    let sectors = disk_len / sector_size;
    let primary = read_copy(dev, sector_size, 1, disk_len);
    let last = sectors.saturating_sub(1);
    let backup_lba = match &primary {
        Ok(p) => p.header.alternate_lba,
        Err(_) => last,
    };
    let mut backup = read_copy(dev, sector_size, backup_lba, disk_len);
    if backup.is_err() && backup_lba != last {
        // The disk may have grown: the spec puts the backup at the last LBA.
        if let Ok(b) = read_copy(dev, sector_size, last, disk_len) {
            backup = Ok(b);
        }
    }
    match (primary, backup) {
        (Err(p), Err(b)) => {
            let absent = |e: &GptError| {
                matches!(
                    e,
                    GptError::NoSignature { .. } | GptError::DiskTooSmall { .. }
                )
            };
            if absent(&p) && absent(&b) {
                Err(GptError::NoGpt)
            } else {
                Err(GptError::BothCopiesInvalid {
                    primary: Box::new(p),
                    backup: Box::new(b),
                })
            }
        }
        (primary, backup) => Ok(Table {
            sector_size,
            disk_len,
            primary,
            backup,
        }),
    }
}

/// Read the table of a disk whose logical sector size is unknown (an image file): try each
/// of [`SECTOR_SIZES`], the first with a valid copy wins. When none has one, the error of
/// the size that got furthest (a signature found) is returned.
pub fn read<R: Read + Seek + ?Sized>(dev: &mut R, disk_len: u64) -> Result<Table, GptError> {
    let mut first_err = None;
    for ss in SECTOR_SIZES {
        match read_with_sector_size(dev, ss, disk_len) {
            Ok(t) => return Ok(t),
            Err(GptError::NoGpt) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or(GptError::NoGpt))
}

/// The length of a disk or image (seeks to its end).
pub fn disk_len<R: Seek + ?Sized>(dev: &mut R) -> Result<u64, GptError> {
    dev.seek(SeekFrom::End(0)).map_err(|source| GptError::Read {
        what: "disk length",
        offset: 0,
        source,
    })
}

#[cfg(test)]
mod tests;
