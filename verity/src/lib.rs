//! dm-verity for Basalt: hash trees byte-compatible with `veritysetup format`, their
//! superblock, offline verification, block reads checked against a tree ([`VerifiedBlocks`]),
//! and the pure encoding of device-mapper requests.
//!
//! Owns: the on-disk verity format (tree + superblock) and the bytes of `dm_ioctl`
//! requests. Does not own: issuing ioctls (the initramfs does that), partitions (`basalt-disk`)
//! or signatures over root hashes (`basalt-manifest`).
//!
//! Supported format: what `veritysetup format` writes by default — hash type 1, sha256,
//! 4096-byte data and hash blocks, any salt of 0..=256 bytes — with or without the 4 KiB
//! superblock, in a separate file or appended to the data at a hash offset. Trees and root
//! hashes are byte-identical to veritysetup's (peer-tested in `tests/veritysetup_peer.rs`).
//!
//! Everything works on "an open file or block device + byte offset + length" ([`Device`]),
//! because a slot is a range inside a disk image; the `*_path` functions are conveniences.
//! Data is streamed (2 MiB work items, 256 KiB reads) on all cores
//! ([`FormatOptions::threads`]); memory is the tree (1/128 of the data) plus one read buffer
//! per thread.
//!
//! ```no_run
//! use basalt_verity::{format_path, verify_path, FormatOptions, VerifyOptions};
//! # fn main() -> Result<(), basalt_verity::Error> {
//! let opts = FormatOptions { salt: basalt_verity::random_salt()?, ..Default::default() };
//! let info = format_path("usr.img".as_ref(), "usr.verity".as_ref(), None, &opts)?;
//! verify_path("usr.img".as_ref(), "usr.verity".as_ref(), &info.root_hash, &VerifyOptions::default())?;
//! println!("{}", info.table("/dev/vda3", "/dev/vda4").params());
//! # Ok(()) }
//! ```

mod device;
pub mod dm;
mod error;
mod format;
mod geometry;
mod hash;
mod reader;
pub mod superblock;
mod verify;

pub use device::Device;
pub use error::{Corruption, Error, Result};
pub use format::{
    format, format_path, random_bytes, random_salt, tree, FormatOptions, VerityInfo, ALGORITHM,
    DEFAULT_SALT_SIZE, HASH_TYPE,
};
pub use geometry::{hash_tree_size, Geometry, Level, BLOCK_SIZE, DIGEST_SIZE, HASHES_PER_BLOCK};
pub use reader::VerifiedBlocks;
pub use superblock::Superblock;
pub use verify::{verify, verify_path, verify_tree, Level0Builder, VerifyOptions};
