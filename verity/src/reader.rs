//! Reading the data blocks of a verity-protected image with each block checked against its
//! tree, as the kernel's dm-verity target does on every read: what the updater uses to reuse
//! blocks of the booted slot (adaptive installs) without ever trusting a block the signed root
//! hash does not vouch for.
//!
//! [`VerifiedBlocks::open`] reads the superblock, checks every level above level 0 top down
//! against the root hash and keeps them (1/16384 of the data). [`VerifiedBlocks::read_window`]
//! then reads the 128 data blocks one level-0 hash block covers, checks that hash block
//! against level 1, and says block by block whether the data matches. A damaged data block is
//! reported as bad (never an error): the caller just does not use it. A damaged level-0 block
//! makes its whole window bad; a damaged upper level or superblock fails `open`.
//!
//! Userspace, not the DM device: the host and CI have no device-mapper, the agent's sandbox
//! need not reach `/dev/dm-*`, and the check is the same one the kernel makes (salted SHA-256
//! per block against the tree whose top gives the root hash).

use crate::device::Device;
use crate::error::{Corruption, Error, Result};
use crate::format::{tree_offset, ALGORITHM, HASH_TYPE};
use crate::geometry::{Geometry, BLOCK_SIZE, DIGEST_SIZE, HASHES_PER_BLOCK};
use crate::hash::{digest_block, salted};
use crate::superblock::{Superblock, SUPERBLOCK_SIZE};

/// A verity image opened for checked block reads (see the module docs).
#[derive(Debug)]
pub struct VerifiedBlocks<'a> {
    data: Device<'a>,
    data_offset: u64,
    hash: Device<'a>,
    tree_offset: u64,
    geometry: Geometry,
    salt: Vec<u8>,
    /// Levels above level 0, verified (empty when level 0 is the top).
    upper: Vec<u8>,
    /// The top hash block when level 0 is the top (a tree of one hash block).
    top: Option<Vec<u8>>,
}

impl<'a> VerifiedBlocks<'a> {
    /// Open the image whose data starts at `data_offset` of `data` and whose veritysetup
    /// superblock is at `hash_offset` of `hash`, trusting only `root_hash`.
    pub fn open(
        data: Device<'a>,
        data_offset: u64,
        hash: Device<'a>,
        hash_offset: u64,
        root_hash: &[u8; DIGEST_SIZE],
    ) -> Result<Self> {
        let mut buf = [0u8; SUPERBLOCK_SIZE];
        hash.read_at(&mut buf, hash_offset)?;
        let sb = Superblock::parse(&buf).map_err(|_| Error::Corrupted {
            what: Corruption::Superblock,
            block: 0,
            path: hash.path.to_path_buf(),
            offset: hash_offset,
        })?;
        if sb.algorithm != ALGORITHM
            || sb.hash_type != HASH_TYPE
            || u64::from(sb.data_block_size) != BLOCK_SIZE
            || u64::from(sb.hash_block_size) != BLOCK_SIZE
        {
            return Err(Error::InvalidParameters {
                reason: format!(
                    "unsupported tree in {}: hash type {}, {}, blocks {}/{}",
                    hash.path.display(),
                    sb.hash_type,
                    sb.algorithm,
                    sb.data_block_size,
                    sb.hash_block_size
                ),
            });
        }
        let geometry = Geometry::new(sb.data_blocks)?;
        let Some(&level0) = geometry.levels.first() else {
            return Err(Error::InvalidParameters {
                reason: "a one-block image has no hash tree to read blocks through".into(),
            });
        };
        let tree_offset = tree_offset(hash_offset, true)?;
        let bs = BLOCK_SIZE as usize;
        let salt = sb.salt;
        let ctx = salted(&salt);
        let mut upper = vec![0u8; level0.start as usize * bs];
        hash.read_at(&mut upper, tree_offset)?;
        let top = if upper.is_empty() {
            let mut t = vec![0u8; bs];
            hash.read_at(&mut t, tree_offset)?;
            t
        } else {
            upper[..bs].to_vec()
        };
        let computed = digest_block(&ctx, &top);
        if computed != *root_hash {
            return Err(Error::RootHashMismatch {
                expected: hex::encode(root_hash),
                computed: hex::encode(computed),
            });
        }
        // Each upper level below the top against the one above it.
        for i in (1..geometry.levels.len().saturating_sub(1)).rev() {
            let level = geometry.levels[i];
            let parent = geometry.levels[i + 1];
            for b in 0..level.blocks {
                let at = (level.start + b) as usize * bs;
                let d = digest_block(&ctx, &upper[at..at + bs]);
                let entry = parent.start as usize * bs + b as usize * DIGEST_SIZE;
                if upper[entry..entry + DIGEST_SIZE] != d {
                    return Err(Error::Corrupted {
                        what: Corruption::Hash,
                        block: level.start + b,
                        path: hash.path.to_path_buf(),
                        offset: tree_offset + (level.start + b) * BLOCK_SIZE,
                    });
                }
            }
        }
        Ok(VerifiedBlocks {
            data,
            data_offset,
            hash,
            tree_offset,
            salt,
            top: upper.is_empty().then_some(top),
            upper,
            geometry,
        })
    }

    /// Number of data blocks.
    pub fn data_blocks(&self) -> u64 {
        self.geometry.data_blocks
    }

    /// Number of windows (level-0 hash blocks), each covering up to 128 data blocks.
    pub fn windows(&self) -> u64 {
        self.geometry.levels[0].blocks
    }

    /// Read window `w` (data blocks `128·w ..`) into `buf` (at least 128 × 4096 bytes) and
    /// return, per block read, whether it matches the tree. Errors are read errors of the hash
    /// area only; an unreadable data window is reported as all bad.
    pub fn read_window(&self, w: u64, buf: &mut [u8]) -> Result<Vec<bool>> {
        let bs = BLOCK_SIZE as usize;
        let level0 = self.geometry.levels[0];
        let first = w * HASHES_PER_BLOCK;
        let n = HASHES_PER_BLOCK.min(self.geometry.data_blocks.saturating_sub(first)) as usize;
        if w >= level0.blocks || n == 0 {
            return Ok(Vec::new());
        }
        let ctx = salted(&self.salt);
        let stored = match &self.top {
            Some(top) => top.clone(),
            None => {
                let mut block = vec![0u8; bs];
                self.hash.read_at(
                    &mut block,
                    self.tree_offset + (level0.start + w) * BLOCK_SIZE,
                )?;
                let level1 = self.geometry.levels[1];
                let entry = level1.start as usize * bs + w as usize * DIGEST_SIZE;
                if self.upper[entry..entry + DIGEST_SIZE] != digest_block(&ctx, &block) {
                    return Ok(vec![false; n]);
                }
                block
            }
        };
        let data = &mut buf[..n * bs];
        if self
            .data
            .read_at(data, self.data_offset + first * BLOCK_SIZE)
            .is_err()
        {
            return Ok(vec![false; n]);
        }
        Ok(data
            .chunks_exact(bs)
            .enumerate()
            .map(|(i, block)| {
                stored[i * DIGEST_SIZE..(i + 1) * DIGEST_SIZE] == digest_block(&ctx, block)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{format, FormatOptions};

    fn image(blocks: u64) -> (tempfile::NamedTempFile, u64) {
        let f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..blocks * BLOCK_SIZE)
            .map(|i| (i / 4096 % 251) as u8 ^ (i % 7) as u8)
            .collect();
        std::fs::write(f.path(), &data).unwrap();
        (f, blocks * BLOCK_SIZE)
    }

    fn check(blocks: u64) {
        let (f, len) = image(blocks);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(f.path())
            .unwrap();
        let dev = Device::new(&file, f.path());
        let opts = FormatOptions {
            salt: vec![7; 32],
            hash_offset: len,
            ..Default::default()
        };
        let info = format(dev, 0, len, dev, &opts).unwrap();
        // Corrupt data block 3 and, for big trees, level-0 block 1 (blocks 128..256).
        file.write_all_at(b"X", 3 * 4096 + 10).unwrap();
        use std::os::unix::fs::FileExt;
        let reader = VerifiedBlocks::open(dev, 0, dev, len, &info.root_hash).unwrap();
        assert_eq!(reader.data_blocks(), blocks);
        let mut buf = vec![0u8; 128 * 4096];
        let mut good = 0;
        for w in 0..reader.windows() {
            let ok = reader.read_window(w, &mut buf).unwrap();
            for (i, b) in ok.iter().enumerate() {
                let block = w * 128 + i as u64;
                assert_eq!(*b, block != 3, "block {block}");
                good += usize::from(*b);
            }
        }
        assert_eq!(good as u64, blocks - 1);
        // Another root hash: refused at open.
        assert!(matches!(
            VerifiedBlocks::open(dev, 0, dev, len, &[0; 32]),
            Err(Error::RootHashMismatch { .. })
        ));
        if reader.windows() > 1 {
            // A damaged level-0 hash block: its window is bad, the others still good.
            let level0 = reader.geometry.levels[0];
            file.write_all_at(b"Y", info.tree_offset + (level0.start + 1) * 4096 + 5)
                .unwrap();
            let reader = VerifiedBlocks::open(dev, 0, dev, len, &info.root_hash).unwrap();
            assert!(reader.read_window(1, &mut buf).unwrap().iter().all(|b| !b));
            assert!(reader.read_window(2, &mut buf).unwrap().iter().all(|b| *b));
            if level0.start > 1 {
                // A damaged upper level fails open.
                file.write_all_at(b"Z", info.tree_offset + 4096 + 3)
                    .unwrap();
                assert!(VerifiedBlocks::open(dev, 0, dev, len, &info.root_hash).is_err());
            }
        }
    }

    #[test]
    fn bad_blocks_are_reported_per_block() {
        check(100); // level 0 is the top
        check(1000); // two levels
        check(16_385 + 3); // three levels
    }
}
