//! The one error type of `basalt-verity`.

use std::path::PathBuf;

/// Which kind of block a verification found corrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// A data block: `block` is its index in the data area (0-based, as the kernel reports it).
    Data,
    /// A hash block: `block` is its index in the hash area (0-based, counted from the first
    /// hash block, i.e. after the superblock if there is one).
    Hash,
    /// The veritysetup superblock at the start of the hash area does not parse (bad signature,
    /// version, sizes...); `block` is 0.
    Superblock,
}

impl std::fmt::Display for Corruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Corruption::Data => "data",
            Corruption::Hash => "hash",
            Corruption::Superblock => "superblock",
        })
    }
}

/// Everything that can fail in this crate. Variants are named after the failed operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Encoding a device-mapper request failed (a name too long, a NUL inside a string...).
    #[error("encoding device-mapper request: {field}: {reason}")]
    DmEncode {
        /// The field that could not be encoded.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A device-mapper reply (or header) is malformed or truncated.
    #[error("decoding device-mapper reply: {reason}")]
    DmDecode {
        /// What is wrong with the reply.
        reason: String,
    },
    /// A verity superblock could not be parsed.
    #[error("parsing verity superblock: {reason}")]
    ParseSuperblock {
        /// What is wrong with it.
        reason: String,
    },
    /// The requested geometry or options are not supported or inconsistent.
    #[error("invalid verity parameters: {reason}")]
    InvalidParameters {
        /// What is wrong.
        reason: String,
    },
    /// Reading the data or hash area failed.
    #[error("reading {path} at byte {offset}: {source}")]
    Read {
        /// The file or device.
        path: PathBuf,
        /// Byte offset of the failed read.
        offset: u64,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Writing the hash area failed.
    #[error("writing {path} at byte {offset}: {source}")]
    Write {
        /// The file or device.
        path: PathBuf,
        /// Byte offset of the failed write.
        offset: u64,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Opening (or inspecting) a file failed.
    #[error("opening {path}: {source}")]
    Open {
        /// The file or device.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The operating system's random number generator failed (salt or UUID generation).
    #[error("drawing random bytes for a salt or UUID failed")]
    Random,
    /// Verification found a block whose content does not match the tree.
    #[error(
        "verity verification failed: {what} block {block} is corrupted (byte {offset} of {path})"
    )]
    Corrupted {
        /// Data, hash, or superblock.
        what: Corruption,
        /// The block index (see [`Corruption`]).
        block: u64,
        /// The file or device holding the block.
        path: PathBuf,
        /// Byte offset of the block in that file.
        offset: u64,
    },
    /// The data, hashed as it was read back, does not give the tree's level 0 (see
    /// [`crate::verify_tree`]): some data block differs from what the tree says; which one
    /// is not known without reading the data again ([`crate::verify`] names it).
    #[error("the data read back from {path} does not match the hash tree's level 0 (some data block differs)")]
    DataDiffers {
        /// The file or device holding the tree.
        path: std::path::PathBuf,
    },
    /// The computed root hash differs from the expected one (the top hash block is corrupted
    /// or the root hash belongs to other data).
    #[error(
        "verity verification failed: root hash mismatch (expected {expected}, computed {computed})"
    )]
    RootHashMismatch {
        /// Hex of the expected root hash.
        expected: String,
        /// Hex of the root hash computed from the top hash block.
        computed: String,
    },
}

impl Error {
    /// True when the error means "the data (or hash tree) is corrupt", as opposed to an I/O or
    /// usage failure: a block mismatch, a root hash mismatch, or an unreadable superblock. The
    /// CLI maps this to exit code 3.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::Corrupted { .. }
                | Error::DataDiffers { .. }
                | Error::RootHashMismatch { .. }
                | Error::ParseSuperblock { .. }
        )
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
