//! Where each level of the hash tree lives, computed exactly as cryptsetup
//! (`VERITY_create_or_verify_hash`) and the kernel (`verity_ctr`) do.
//!
//! With `n` data blocks and 128 digests per 4 KiB hash block, the tree has `levels` levels,
//! the smallest number with `(n - 1) >> (7 * levels) == 0`. Level `i` (0 = the level that hashes
//! the data) has `ceil(n / 128^(i+1))` blocks. On disk the TOP level comes first, level 0 last:
//!
//! ```text
//! [superblock?] [level L-1 (1 block)] [level L-2] ... [level 0]
//! ```
//!
//! A single data block gives zero levels: the root hash is that block's digest and the tree
//! is empty (veritysetup prints "Hash blocks: 0").

use crate::error::{Error, Result};

/// Data and hash block size: Basalt only supports 4096-byte blocks (what veritysetup and the
/// kernel default to, and the page size).
pub const BLOCK_SIZE: u64 = 4096;
/// SHA-256 digest size.
pub const DIGEST_SIZE: usize = 32;
/// Digests per hash block.
pub const HASHES_PER_BLOCK: u64 = BLOCK_SIZE / DIGEST_SIZE as u64;
const HASH_PER_BLOCK_BITS: u32 = HASHES_PER_BLOCK.trailing_zeros();
/// The largest number of data blocks whose byte size fits in a `u64`.
pub const MAX_DATA_BLOCKS: u64 = u64::MAX / BLOCK_SIZE;

/// One level of the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    /// Index of the level's first block, counted from the first block of the tree.
    pub start: u64,
    /// Number of hash blocks in the level.
    pub blocks: u64,
}

/// The shape of a hash tree over `data_blocks` blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    /// Number of data blocks covered.
    pub data_blocks: u64,
    /// The levels, index 0 = the level holding the digests of the data blocks.
    pub levels: Vec<Level>,
    /// Total number of hash blocks (what veritysetup prints as "Hash blocks").
    pub hash_blocks: u64,
}

impl Geometry {
    /// Compute the geometry. `data_blocks` must be between 1 and [`MAX_DATA_BLOCKS`].
    pub fn new(data_blocks: u64) -> Result<Self> {
        if data_blocks == 0 || data_blocks > MAX_DATA_BLOCKS {
            return Err(Error::InvalidParameters {
                reason: format!("data block count {data_blocks} is out of range"),
            });
        }
        let mut levels_count = 0u32;
        while HASH_PER_BLOCK_BITS * levels_count < 64
            && (data_blocks - 1) >> (HASH_PER_BLOCK_BITS * levels_count) != 0
        {
            levels_count += 1;
        }
        // Sizes bottom-up, then positions top-down.
        let sizes: Vec<u64> = (0..levels_count)
            .map(|i| {
                let shift = HASH_PER_BLOCK_BITS * (i + 1);
                if shift >= 64 {
                    1
                } else {
                    data_blocks.div_ceil(1u64 << shift)
                }
            })
            .collect();
        let mut levels = vec![
            Level {
                start: 0,
                blocks: 0
            };
            sizes.len()
        ];
        let mut position = 0u64;
        for i in (0..sizes.len()).rev() {
            levels[i] = Level {
                start: position,
                blocks: sizes[i],
            };
            position += sizes[i];
        }
        Ok(Geometry {
            data_blocks,
            levels,
            hash_blocks: position,
        })
    }

    /// Size of the tree in bytes (superblock excluded).
    pub fn tree_size(&self) -> u64 {
        self.hash_blocks * BLOCK_SIZE
    }
}

/// Size in bytes of the hash tree over `data_blocks` 4 KiB blocks (superblock excluded; add
/// [`BLOCK_SIZE`] for veritysetup's superblock at a block-aligned offset). Zero for zero blocks.
pub fn hash_tree_size(data_blocks: u64) -> u64 {
    Geometry::new(data_blocks).map_or(0, |g| g.tree_size())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_counts_follow_cryptsetup() {
        // Derived from the rule in cryptsetup's verity_hash.c: levels grow when
        // (n - 1) >> (7 * levels) is non-zero.
        let g = |n| Geometry::new(n).expect("geometry");
        assert_eq!(g(1).levels.len(), 0);
        assert_eq!(g(1).hash_blocks, 0);
        assert_eq!(g(2).levels.len(), 1);
        assert_eq!(g(128).hash_blocks, 1);
        assert_eq!(g(129).levels.len(), 2);
        assert_eq!(g(129).hash_blocks, 3);
        assert_eq!(g(129).levels[1].start, 0);
        assert_eq!(
            g(129).levels[0],
            Level {
                start: 1,
                blocks: 2
            }
        );
        assert_eq!(g(128 * 128 + 1).levels.len(), 3);
        assert!(Geometry::new(0).is_err());
        assert!(Geometry::new(MAX_DATA_BLOCKS + 1).is_err());
        let huge = g(MAX_DATA_BLOCKS);
        assert_eq!(huge.levels.last().map(|l| l.blocks), Some(1));
    }
}
