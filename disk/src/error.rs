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
    /// An EFI variable's content is not a valid string variable.
    #[error("EFI variable {name}: {reason}")]
    EfiVar { name: String, reason: &'static str },
}
