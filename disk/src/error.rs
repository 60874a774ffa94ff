//! The one error type of `basalt-disk`. Variants are named after the failed operation and
//! carry the path, partition or entry involved.

use std::path::PathBuf;

use crate::boot::Slot;

/// Everything that can go wrong reading or changing a Basalt disk.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a file or device failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A request would write to the slot the machine is running from.
    #[error("refusing to write slot {slot}: it is the booted slot")]
    BootedSlot { slot: Slot },
    /// A boot-control operation is not legal in the current state.
    #[error("cannot {op} slot {slot}: {reason}")]
    IllegalTransition {
        op: &'static str,
        slot: Slot,
        reason: String,
    },
    // --- GPT / layout / slots / range I/O (helper "disk") ---
    /// Neither GPT location holds a GPT signature (blank disk, MBR disk, garbage).
    #[error("{path}: no GUID partition table found")]
    NoGpt { path: PathBuf },
    /// Both GPT copies are present but unusable.
    #[error("{path}: both GPT copies are corrupt (primary: {primary}; backup: {backup})")]
    GptCorrupt {
        path: PathBuf,
        primary: String,
        backup: String,
    },
    /// A partition table could not be written (inconsistent table or serialisation failure).
    #[error("write GPT to {path}: {reason}")]
    GptWrite { path: PathBuf, reason: String },
    /// The disk has a GPT but not the Basalt layout.
    #[error("{path}: not a Basalt disk layout: {reason}")]
    NotBasaltLayout { path: PathBuf, reason: String },
    /// The requested layout does not fit on the disk.
    #[error("{path}: layout needs {needed} bytes, disk has {available}")]
    LayoutTooSmall {
        path: PathBuf,
        needed: u64,
        available: u64,
    },
    /// A layout parameter is unusable (zero size, misaligned, unparsable).
    #[error("invalid layout parameter {name}: {reason}")]
    LayoutParameter { name: &'static str, reason: String },
    /// An image does not fit the slot partition it is meant for.
    #[error(
        "{path}: slot {slot} {part} partition holds {capacity} bytes, image is {needed} bytes"
    )]
    SlotTooSmall {
        path: PathBuf,
        slot: Slot,
        part: &'static str,
        capacity: u64,
        needed: u64,
    },
    /// A verity root hash is not 64 lower- or upper-case hex digits (or is all zero).
    #[error("invalid verity root hash {value:?}: expected 64 hex digits, not all zero")]
    InvalidRootHash { value: String },
    /// An OS name or version cannot be carried in a partition label.
    #[error("cannot label slot with {what} {value:?}: {reason}")]
    InvalidLabel {
        what: &'static str,
        value: String,
        reason: String,
    },
    /// The other slot already carries this root hash (partition GUIDs must be unique).
    #[error("{path}: slot {other} already holds root hash {root_hash}")]
    DuplicateRootHash {
        path: PathBuf,
        other: Slot,
        root_hash: String,
    },
    /// A write would leave the partition range it was opened on.
    #[error("{path}: write of {attempted} bytes at {at} exceeds the {len}-byte range at offset {offset}")]
    RangeOverflow {
        path: PathBuf,
        offset: u64,
        len: u64,
        at: u64,
        attempted: u64,
    },

    // --- ESP / BLS (helper "bls") ---
    /// An operation on a file or directory of the ESP failed (`path` is relative to the ESP root).
    #[error("ESP {op} {path}: {source}")]
    EspIo {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The ESP has no room for a file; nothing visible was changed (the temp file is removed).
    #[error("ESP full writing {path}: {needed} bytes needed, {free} bytes free")]
    EspFull {
        path: String,
        needed: u64,
        free: u64,
    },
    /// A path given for the ESP is not a plain relative path (`..`, empty or NUL components).
    #[error("invalid ESP path {path:?}: {reason}")]
    EspPath { path: String, reason: &'static str },
    /// Formatting or opening a FAT file system inside an image file failed.
    #[error("FAT ESP in {image} at offset {offset} length {len}: {reason}")]
    EspImage {
        image: PathBuf,
        offset: u64,
        len: u64,
        reason: String,
    },
    /// A BLS entry file name has a malformed boot counter (`NAME+LEFT[-DONE].conf`).
    #[error("boot entry name {name:?}: {reason}")]
    BlsEntryName { name: String, reason: &'static str },
    /// A BLS entry file could not be parsed or lacks what Basalt needs.
    #[error("boot entry {name}: {reason}")]
    BlsEntryParse { name: String, reason: String },
    /// A staging request cannot be turned into a boot entry.
    #[error("cannot stage version {version:?}: {reason}")]
    BlsTarget { version: String, reason: String },
    /// The backend cannot boot a release's unified kernel image.
    #[error(
        "cannot stage version {version:?} as a unified kernel image: the {backend} backend \
         boots no UKI (use the bls backend with systemd-boot)"
    )]
    UkiUnsupported {
        backend: &'static str,
        version: String,
    },
    /// A unified kernel image cannot be staged as given (unreadable, no signed command line,
    /// or one that names another `/usr`).
    #[error("cannot stage the UKI {path} of version {version:?}: {reason}")]
    UkiTarget {
        path: PathBuf,
        version: String,
        reason: String,
    },
    /// An EFI variable's content is not a valid string variable.
    #[error("EFI variable {name}: {reason}")]
    EfiVar { name: String, reason: &'static str },
}
