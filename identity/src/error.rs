//! The crate's errors: [`Error`] for text and EFI variables, [`GptError`] for partition
//! tables. Hand-written `Display`/`Error` impls: the crate has no dependencies.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Parsing an identity from text, or reading an EFI variable.
#[derive(Debug)]
pub enum Error {
    /// Text that should be a dm-verity root hash is not one.
    ParseRootHash {
        /// The text as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Text that should be a GUID (`8-4-4-4-12` hex digits) is not one.
    ParseGuid {
        /// The text as given.
        value: String,
    },
    /// Reading an EFI variable from efivarfs failed.
    ReadEfiVariable {
        /// The efivarfs file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// An EFI variable holds something we do not accept.
    EfiVariableInvalid {
        /// The efivarfs file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ParseRootHash { value, reason } => write!(
                f,
                "{value:?} is not a dm-verity root hash (64 hex digits, SHA-256): {reason}"
            ),
            Error::ParseGuid { value } => write!(
                f,
                "{value:?} is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"
            ),
            Error::ReadEfiVariable { path, source } => {
                write!(f, "reading EFI variable {}: {source}", path.display())
            }
            Error::EfiVariableInvalid { path, reason } => {
                write!(f, "EFI variable {}: {reason}", path.display())
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::ReadEfiVariable { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Why a GPT (or one of its two copies) was not accepted. Every variant names the field and
/// the value the disk claimed, so a skipped disk's log line says what was wrong with it.
#[derive(Debug)]
pub enum GptError {
    /// Reading from the disk failed.
    Read {
        /// What was being read.
        what: &'static str,
        /// Byte offset of the read.
        offset: u64,
        /// The I/O error.
        source: io::Error,
    },
    /// The disk is too small to hold a GPT with this sector size.
    DiskTooSmall {
        /// Disk length in bytes.
        len: u64,
        /// The sector size tried.
        sector_size: u64,
    },
    /// No `EFI PART` signature at this LBA.
    NoSignature {
        /// Where the header was looked for.
        lba: u64,
    },
    /// The header revision is not 1.0.
    Revision {
        /// The header's LBA.
        lba: u64,
        /// The revision found (`0x00010000` is 1.0).
        found: u32,
    },
    /// The header size is below 92 or above one sector.
    HeaderSize {
        /// The header's LBA.
        lba: u64,
        /// The size claimed.
        size: u32,
    },
    /// The header CRC32 does not match.
    HeaderCrc {
        /// The header's LBA.
        lba: u64,
        /// CRC stored in the header.
        stored: u32,
        /// CRC computed over the header.
        computed: u32,
    },
    /// The header says it lives somewhere else.
    Location {
        /// Where it was read.
        lba: u64,
        /// Where it claims to be.
        claims: u64,
    },
    /// The entry size is not a power of two from 128 to 4096 bytes.
    EntrySize {
        /// The header's LBA.
        lba: u64,
        /// The size claimed.
        size: u32,
    },
    /// The entry array is empty or larger than [`crate::gpt::MAX_ARRAY_BYTES`].
    EntryCount {
        /// The header's LBA.
        lba: u64,
        /// Entries claimed.
        count: u32,
        /// Bytes per entry claimed.
        size: u32,
    },
    /// The entry array does not lie inside the disk (or overlaps its own header).
    ArrayOutsideDisk {
        /// The header's LBA.
        lba: u64,
        /// Where the array starts, in LBAs.
        array_lba: u64,
        /// Array length in bytes.
        bytes: u64,
    },
    /// The usable range or the alternate header location lies outside the disk.
    UsableRange {
        /// The header's LBA.
        lba: u64,
        /// First usable LBA claimed.
        first: u64,
        /// Last usable LBA claimed.
        last: u64,
        /// Alternate header LBA claimed.
        alternate: u64,
    },
    /// The entry array CRC32 does not match.
    ArrayCrc {
        /// The header's LBA.
        lba: u64,
        /// CRC stored in the header.
        stored: u32,
        /// CRC computed over the array.
        computed: u32,
    },
    /// A used entry's extent is reversed or outside the usable range.
    EntryExtent {
        /// Partition number (1-based).
        number: u32,
        /// First LBA claimed.
        first: u64,
        /// Last LBA claimed.
        last: u64,
    },
    /// Two used entries share a unique partition GUID (a table the spec forbids, and one
    /// that would make "the partition with this UUID" ambiguous).
    DuplicatePartitionGuid {
        /// The GUID.
        guid: crate::Guid,
        /// The two partition numbers.
        numbers: (u32, u32),
    },
    /// Neither location holds a GPT signature.
    NoGpt,
    /// Both copies are present but neither is valid.
    BothCopiesInvalid {
        /// Why the primary copy was refused.
        primary: Box<GptError>,
        /// Why the backup copy was refused.
        backup: Box<GptError>,
    },
}

impl fmt::Display for GptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GptError::Read {
                what,
                offset,
                source,
            } => write!(f, "reading the {what} at byte {offset}: {source}"),
            GptError::DiskTooSmall { len, sector_size } => write!(
                f,
                "a disk of {len} bytes cannot hold a GPT with {sector_size}-byte sectors"
            ),
            GptError::NoSignature { lba } => write!(f, "no GPT signature at LBA {lba}"),
            GptError::Revision { lba, found } => {
                write!(f, "GPT header at LBA {lba}: revision {found:#010x} (need 1.0)")
            }
            GptError::HeaderSize { lba, size } => write!(
                f,
                "GPT header at LBA {lba}: header size {size} (92 up to one sector)"
            ),
            GptError::HeaderCrc {
                lba,
                stored,
                computed,
            } => write!(
                f,
                "GPT header at LBA {lba}: CRC32 {stored:#010x}, computed {computed:#010x}"
            ),
            GptError::Location { lba, claims } => {
                write!(f, "GPT header at LBA {lba} claims to be at LBA {claims}")
            }
            GptError::EntrySize { lba, size } => write!(
                f,
                "GPT header at LBA {lba}: entry size {size} (a power of two from 128 to 4096)"
            ),
            GptError::EntryCount { lba, count, size } => write!(
                f,
                "GPT header at LBA {lba}: {count} entries of {size} bytes (1 to {} bytes in all)",
                crate::gpt::MAX_ARRAY_BYTES
            ),
            GptError::ArrayOutsideDisk {
                lba,
                array_lba,
                bytes,
            } => write!(
                f,
                "GPT header at LBA {lba}: entry array at LBA {array_lba} ({bytes} bytes) lies outside the disk or over its header"
            ),
            GptError::UsableRange {
                lba,
                first,
                last,
                alternate,
            } => write!(
                f,
                "GPT header at LBA {lba}: usable LBAs {first}..={last} or alternate header LBA {alternate} outside the disk"
            ),
            GptError::ArrayCrc {
                lba,
                stored,
                computed,
            } => write!(
                f,
                "GPT at LBA {lba}: entry array CRC32 {stored:#010x}, computed {computed:#010x}"
            ),
            GptError::EntryExtent {
                number,
                first,
                last,
            } => write!(
                f,
                "partition {number}: LBAs {first}..={last} are reversed or outside the usable range"
            ),
            GptError::DuplicatePartitionGuid { guid, numbers } => write!(
                f,
                "partitions {} and {} share the partition GUID {guid}",
                numbers.0, numbers.1
            ),
            GptError::NoGpt => f.write_str("no GPT (no signature in either copy)"),
            GptError::BothCopiesInvalid { primary, backup } => {
                write!(f, "no valid GPT copy: primary: {primary}; backup: {backup}")
            }
        }
    }
}

impl std::error::Error for GptError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GptError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}
