//! dm-verity for Basalt: hash trees byte-compatible with `veritysetup format`, their
//! superblock, offline verification, and the pure encoding of device-mapper requests.
//!
//! Owns: the on-disk verity format (tree + superblock) and the bytes of `dm_ioctl`
//! requests. Does not own: issuing ioctls (the initramfs does that), partitions (`basalt-disk`)
//! or signatures over root hashes (`basalt-manifest`).

pub mod dm;
mod error;

pub use error::{Corruption, Error, Result};
