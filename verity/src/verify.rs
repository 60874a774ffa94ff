//! Offline verification of a data range against its hash tree and root hash, reporting the
//! first corrupted block the way the kernel would find it: top down, so a damaged hash block
//! is reported before the data blocks it covers.
//!
//! Memory is bounded, whatever the image size: the levels above level 0 (1/16384 of the
//! data) are held, level 0 and the data are streamed in windows of 64 hash blocks (32 MiB of
//! data), and every window's hash blocks are re-checked against the level above when they
//! are read again (nothing read earlier is trusted later). The updater re-verifies a written
//! slot with this before the slot is named.

use std::path::Path;

use crate::device::Device;
use crate::error::{Corruption, Error, Result};
use crate::format::{check_range, hash_data, open, tree_offset, VerityInfo, ALGORITHM, HASH_TYPE};
use crate::geometry::{Geometry, BLOCK_SIZE, DIGEST_SIZE, HASHES_PER_BLOCK};
use crate::hash::{digest_block, hash_level, level_bytes, salted, Input};
use crate::superblock::{Superblock, SUPERBLOCK_SIZE};

/// How to find the tree.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Byte offset of the hash area in the hash file.
    pub hash_offset: u64,
    /// Read veritysetup's superblock at `hash_offset` (salt and data block count come from
    /// it). Without it, `salt` is required.
    pub superblock: bool,
    /// The salt: required without superblock; with one, must match it if given.
    pub salt: Option<Vec<u8>>,
    /// Number of data blocks: default from the superblock, else the data length / 4096; with
    /// a superblock, must match it if given.
    pub data_blocks: Option<u64>,
    /// Hashing threads; 0 = one per available core.
    pub threads: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            hash_offset: 0,
            superblock: true,
            salt: None,
            data_blocks: None,
            threads: 0,
        }
    }
}

fn invalid(reason: String) -> Error {
    Error::InvalidParameters { reason }
}

/// Read and check the superblock against what Basalt supports and what the caller said.
fn read_superblock(hash: Device<'_>, opts: &VerifyOptions) -> Result<Superblock> {
    let mut buf = [0u8; SUPERBLOCK_SIZE];
    hash.read_at(&mut buf, opts.hash_offset)?;
    // An unparsable superblock is a corrupted hash area (exit 3 in the CLI), reported like a
    // bad block; `Superblock::parse` gives the precise reason to callers who want it.
    let sb = Superblock::parse(&buf).map_err(|_| Error::Corrupted {
        what: Corruption::Superblock,
        block: 0,
        path: hash.path.to_path_buf(),
        offset: opts.hash_offset,
    })?;
    if sb.algorithm != ALGORITHM
        || sb.hash_type != HASH_TYPE
        || u64::from(sb.data_block_size) != BLOCK_SIZE
        || u64::from(sb.hash_block_size) != BLOCK_SIZE
    {
        return Err(invalid(format!(
            "unsupported tree in {}: hash type {}, {}, blocks {}/{} (Basalt supports type 1, sha256, 4096/4096)",
            hash.path.display(),
            sb.hash_type,
            sb.algorithm,
            sb.data_block_size,
            sb.hash_block_size
        )));
    }
    if let Some(salt) = &opts.salt {
        if *salt != sb.salt {
            return Err(invalid(
                "the given salt differs from the superblock's".into(),
            ));
        }
    }
    if let Some(n) = opts.data_blocks {
        if n != sb.data_blocks {
            return Err(invalid(format!(
                "{n} data blocks given, the superblock says {}",
                sb.data_blocks
            )));
        }
    }
    Ok(sb)
}

/// Index (in 32-byte entries) of the first difference between two equally long digest areas.
fn first_mismatch(expected: &[u8], computed: &[u8]) -> Option<u64> {
    expected
        .chunks(DIGEST_SIZE)
        .zip(computed.chunks(DIGEST_SIZE))
        .position(|(a, b)| a != b)
        .map(|i| i as u64)
}

/// Verify `data` (the blocks starting at `data_offset`; `data_len` bytes are available) and
/// the tree in `hash` against `root_hash`. Returns what the tree describes, or
/// [`Error::Corrupted`] naming the first bad block (hash blocks checked level by level from
/// the top, then data blocks in order), or [`Error::RootHashMismatch`] when the top hash block
/// (or, for a one-block tree, the data block) does not give `root_hash`.
///
/// The unused tail of every hash block must be zero, as veritysetup writes it and checks it.
pub fn verify(
    data: Device<'_>,
    data_offset: u64,
    data_len: u64,
    hash: Device<'_>,
    root_hash: &[u8; DIGEST_SIZE],
    opts: &VerifyOptions,
) -> Result<VerityInfo> {
    check_range(data_offset, data_len)?;
    let (salt, data_blocks, uuid) = if opts.superblock {
        let sb = read_superblock(hash, opts)?;
        (sb.salt, sb.data_blocks, Some(sb.uuid))
    } else {
        let salt = opts
            .salt
            .clone()
            .ok_or_else(|| invalid("a salt is required without superblock".into()))?;
        (
            salt,
            opts.data_blocks.unwrap_or(data_len / BLOCK_SIZE),
            None,
        )
    };
    let geometry = Geometry::new(data_blocks)?;
    if data_blocks > data_len / BLOCK_SIZE {
        return Err(invalid(format!(
            "{data_blocks} data blocks do not fit in the {data_len} bytes of {}",
            data.path.display()
        )));
    }
    let tree_offset = tree_offset(opts.hash_offset, opts.superblock)?;

    let bs = BLOCK_SIZE as usize;
    let data_block_offset = |block: u64| data_offset + block * BLOCK_SIZE;
    let hash_block_offset = |block: u64| tree_offset + block * BLOCK_SIZE;
    let corrupted = |what, block| {
        let (path, offset) = match what {
            Corruption::Data => (data.path, data_block_offset(block)),
            _ => (hash.path, hash_block_offset(block)),
        };
        Error::Corrupted {
            what,
            block,
            path: path.to_path_buf(),
            offset,
        }
    };

    let info = VerityInfo {
        root_hash: *root_hash,
        salt: salt.clone(),
        data_blocks,
        hash_blocks: geometry.hash_blocks,
        hash_offset: opts.hash_offset,
        tree_offset,
        uuid,
    };

    let Some(&level0) = geometry.levels.first() else {
        // A single data block: its digest is the root hash.
        let mut digest = vec![0u8; level_bytes(1)];
        hash_data(data, data_offset, 1, &mut digest, &salt, 1)?;
        if digest[..DIGEST_SIZE] != root_hash[..] {
            return Err(corrupted(Corruption::Data, 0));
        }
        return Ok(info);
    };
    // Every level above level 0 is held in memory (on disk they come first, top level at
    // block 0): 1/16384 of the data. Level 0 (1/128 of the data) and the data are streamed
    // in windows, so memory does not grow with the image.
    let read_level0 = |first: u64, count: u64| -> Result<Vec<u8>> {
        let mut buf = vec![0u8; count as usize * bs];
        hash.read_at(&mut buf, hash_block_offset(level0.start + first))?;
        Ok(buf)
    };
    let (upper, top) = read_upper(hash, level0, tree_offset, &salt, root_hash, &read_level0)?;
    debug_assert_eq!(geometry.levels[geometry.levels.len() - 1].start, 0);

    // 1. Hash levels from the top down (a damaged hash block is reported before the data it
    //    covers, as before). Each level is trusted once the level above checked it.
    check_levels(
        &geometry,
        &upper,
        &salt,
        opts.threads,
        &read_level0,
        &corrupted,
        &mut |_| {},
    )?;

    // 2. The data, window by window against level 0. Each window's level-0 blocks are read
    //    again and checked against level 1 before they are used, so nothing read in step 1
    //    is trusted across the gap.
    let per_hash_block = HASHES_PER_BLOCK;
    let mut first = 0u64;
    while first < level0.blocks {
        let count = WINDOW_HASH_BLOCKS.min(level0.blocks - first);
        let stored = if upper.is_empty() {
            top.clone()
        } else {
            let chunk = read_level0(first, count)?;
            let level1 = geometry.levels[1];
            let trusted = &upper[level1.start as usize * bs..][..level1.blocks as usize * bs];
            check_level0_chunk(trusted, first, &chunk, &salt, opts.threads)
                .map_err(|entry| corrupted(Corruption::Hash, level0.start + first + entry))?;
            chunk
        };
        let first_data = first * per_hash_block;
        let n = (count * per_hash_block).min(data_blocks - first_data);
        let mut computed = vec![0u8; level_bytes(n)];
        hash_data(
            data,
            data_block_offset(first_data),
            n,
            &mut computed,
            &salt,
            opts.threads,
        )?;
        if let Some(entry) = first_mismatch(&stored, &computed) {
            return Err(if entry < n {
                corrupted(Corruption::Data, first_data + entry)
            } else {
                padding_block(level0.start + first, entry, &corrupted)
            });
        }
        first += count;
    }
    Ok(info)
}

/// The levels above level 0 (`upper`, on disk from `tree_offset`, top level first) and the
/// top hash block (the first of `upper`, or level 0's only block), once the top block gives
/// `root_hash`.
fn read_upper(
    hash: Device<'_>,
    level0: crate::geometry::Level,
    tree_offset: u64,
    salt: &[u8],
    root_hash: &[u8; DIGEST_SIZE],
    read_level0: &dyn Fn(u64, u64) -> Result<Vec<u8>>,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let bs = BLOCK_SIZE as usize;
    let mut upper = vec![0u8; level0.start as usize * bs];
    hash.read_at(&mut upper, tree_offset)?;
    let top = if upper.is_empty() {
        read_level0(0, 1)?
    } else {
        upper[..bs].to_vec()
    };
    let computed_root = digest_block(&salted(salt), &top);
    if computed_root != *root_hash {
        return Err(Error::RootHashMismatch {
            expected: hex::encode(root_hash),
            computed: hex::encode(computed_root),
        });
    }
    Ok((upper, top))
}

/// Step 1 of [`verify`] and [`verify_tree`]: every hash level below the top, from the top
/// down, against the level above (the upper levels from `upper`, level 0 read in windows by
/// `read_level0(first, count)`), and the zero padding after each level's last digest.
/// `on_level0` sees each window of level 0 once it is checked, in order.
fn check_levels(
    geometry: &Geometry,
    upper: &[u8],
    salt: &[u8],
    threads: usize,
    read_level0: &dyn Fn(u64, u64) -> Result<Vec<u8>>,
    corrupted: &dyn Fn(Corruption, u64) -> Error,
    on_level0: &mut dyn FnMut(&[u8]),
) -> Result<()> {
    let bs = BLOCK_SIZE as usize;
    for i in (1..geometry.levels.len()).rev() {
        let level = geometry.levels[i];
        let stored = &upper[level.start as usize * bs..][..level.blocks as usize * bs];
        let below = geometry.levels[i - 1];
        if i > 1 {
            let mut computed = vec![0u8; level_bytes(below.blocks)];
            let input = &upper[below.start as usize * bs..][..below.blocks as usize * bs];
            hash_level(
                below.blocks,
                &mut computed,
                salt,
                threads,
                &Input::Memory(input),
            )?;
            if let Some(entry) = first_mismatch(stored, &computed) {
                return Err(if entry < below.blocks {
                    corrupted(Corruption::Hash, below.start + entry)
                } else {
                    padding_block(level.start, entry, corrupted)
                });
            }
            continue;
        }
        // Level 0, streamed against level 1.
        let mut first = 0u64;
        while first < below.blocks {
            let count = WINDOW_HASH_BLOCKS.min(below.blocks - first);
            let chunk = read_level0(first, count)?;
            check_level0_chunk(stored, first, &chunk, salt, threads)
                .map_err(|entry| corrupted(Corruption::Hash, below.start + first + entry))?;
            on_level0(&chunk);
            first += count;
        }
        let entries = below.blocks as usize * DIGEST_SIZE;
        if let Some(pos) = stored[entries..].iter().position(|b| *b != 0) {
            let entry = (entries + pos) as u64 / DIGEST_SIZE as u64;
            return Err(padding_block(level.start, entry, corrupted));
        }
    }
    Ok(())
}

/// Level 0 of a verity tree computed from the data as it is read back, in order, kept as a
/// SHA-256 of the level's bytes only: memory does not grow with the data. With
/// [`verify_tree`] it proves what [`verify`] proves, but the data can be read while it is
/// still being written elsewhere (the updater re-reads each part of a slot as soon as it is
/// durable, while the download goes on).
///
/// Why a digest of level 0 is enough: the data blocks, read back, hash to exactly the level
/// this builder digests; [`verify_tree`] checks that the tree's stored level 0 has the same
/// SHA-256 (so, by collision resistance, the same bytes) and that every level above it, up
/// to the root hash, matches.
pub struct Level0Builder {
    salt: Vec<u8>,
    data_blocks: u64,
    done: u64,
    threads: usize,
    level: ring::digest::Context,
}

impl std::fmt::Debug for Level0Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Level0Builder")
            .field("data_blocks", &self.data_blocks)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Level0Builder {
    /// A builder for a tree over `data_blocks` blocks with `salt`, hashing on `threads`
    /// threads (0 = one per core).
    pub fn new(salt: &[u8], data_blocks: u64, threads: usize) -> Self {
        Level0Builder {
            salt: salt.to_vec(),
            data_blocks,
            done: 0,
            threads,
            level: ring::digest::Context::new(&ring::digest::SHA256),
        }
    }

    /// Data blocks hashed so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// Hashes the next `count` data blocks (blocks `done()..done() + count`), read from
    /// `data` at byte `offset`. `count` must be a multiple of [`HASHES_PER_BLOCK`] (whole
    /// level-0 blocks) unless it ends the data.
    pub fn update(&mut self, data: Device<'_>, offset: u64, count: u64) -> Result<()> {
        let end = self
            .done
            .checked_add(count)
            .filter(|e| *e <= self.data_blocks);
        let Some(end) = end else {
            return Err(invalid(format!(
                "{count} blocks after block {} pass the {} data blocks",
                self.done, self.data_blocks
            )));
        };
        if count % HASHES_PER_BLOCK != 0 && end != self.data_blocks {
            return Err(invalid(format!(
                "{count} blocks is not a whole number of level-0 hash blocks"
            )));
        }
        if count == 0 {
            return Ok(());
        }
        let mut out = vec![0u8; level_bytes(count)];
        hash_data(data, offset, count, &mut out, &self.salt, self.threads)?;
        self.level.update(&out);
        self.done = end;
        Ok(())
    }

    /// The SHA-256 of level 0, once every data block was hashed.
    pub fn finish(self) -> Result<[u8; DIGEST_SIZE]> {
        if self.done != self.data_blocks {
            return Err(invalid(format!(
                "{} of {} data blocks hashed",
                self.done, self.data_blocks
            )));
        }
        let mut out = [0u8; DIGEST_SIZE];
        out.copy_from_slice(self.level.finish().as_ref());
        Ok(out)
    }
}

/// [`verify`] without reading the data: the tree in `hash` against `root_hash`, top down,
/// and its level 0 against `level0_sha256`, the digest a [`Level0Builder`] computed from the
/// data. A tree that does not verify is reported as [`verify`] reports it; a level 0 other
/// than the data's as [`Error::DataDiffers`]. Needs the salt and block count (superblock,
/// or `opts.salt` and `opts.data_blocks`); a one-block tree has no level 0 (use [`verify`]).
pub fn verify_tree(
    hash: Device<'_>,
    root_hash: &[u8; DIGEST_SIZE],
    opts: &VerifyOptions,
    level0_sha256: &[u8; DIGEST_SIZE],
) -> Result<VerityInfo> {
    let (salt, data_blocks, uuid) = if opts.superblock {
        let sb = read_superblock(hash, opts)?;
        (sb.salt, sb.data_blocks, Some(sb.uuid))
    } else {
        match (&opts.salt, opts.data_blocks) {
            (Some(salt), Some(n)) => (salt.clone(), n, None),
            _ => {
                return Err(invalid(
                    "a salt and a data block count are required without superblock".into(),
                ))
            }
        }
    };
    let geometry = Geometry::new(data_blocks)?;
    let Some(&level0) = geometry.levels.first() else {
        return Err(invalid(
            "a one-block tree has no level 0: verify the data block itself".into(),
        ));
    };
    let tree_offset = tree_offset(opts.hash_offset, opts.superblock)?;
    let bs = BLOCK_SIZE as usize;
    let hash_block_offset = |block: u64| tree_offset + block * BLOCK_SIZE;
    let corrupted = |what, block| Error::Corrupted {
        what,
        block,
        path: hash.path.to_path_buf(),
        offset: hash_block_offset(block),
    };
    let read_level0 = |first: u64, count: u64| -> Result<Vec<u8>> {
        let mut buf = vec![0u8; count as usize * bs];
        hash.read_at(&mut buf, hash_block_offset(level0.start + first))?;
        Ok(buf)
    };
    let (upper, top) = read_upper(hash, level0, tree_offset, &salt, root_hash, &read_level0)?;
    let mut stored = ring::digest::Context::new(&ring::digest::SHA256);
    if upper.is_empty() {
        // Level 0 is the top block, checked against the root hash above.
        stored.update(&top);
    }
    check_levels(
        &geometry,
        &upper,
        &salt,
        opts.threads,
        &read_level0,
        &corrupted,
        &mut |chunk| stored.update(chunk),
    )?;
    if stored.finish().as_ref() != &level0_sha256[..] {
        return Err(Error::DataDiffers {
            path: hash.path.to_path_buf(),
        });
    }
    Ok(VerityInfo {
        root_hash: *root_hash,
        salt,
        data_blocks,
        hash_blocks: geometry.hash_blocks,
        hash_offset: opts.hash_offset,
        tree_offset,
        uuid,
    })
}

/// Level-0 hash blocks verified per window (64 blocks = 256 KiB of hashes covering 32 MiB of
/// data): what bounds the memory of [`verify`] besides the upper levels.
const WINDOW_HASH_BLOCKS: u64 = 64;

/// Check the level-0 hash blocks `chunk` (blocks `first..` of level 0) against their digests
/// in the trusted level-1 bytes `level1`; `Err(i)` names the first bad block of the chunk.
fn check_level0_chunk(
    level1: &[u8],
    first: u64,
    chunk: &[u8],
    salt: &[u8],
    threads: usize,
) -> std::result::Result<(), u64> {
    let count = (chunk.len() / BLOCK_SIZE as usize) as u64;
    let mut computed = vec![0u8; level_bytes(count)];
    // Hashing memory cannot fail (only reads can).
    if hash_level(count, &mut computed, salt, threads, &Input::Memory(chunk)).is_err() {
        return Err(0);
    }
    let at = first as usize * DIGEST_SIZE;
    let len = count as usize * DIGEST_SIZE;
    match first_mismatch(&level1[at..at + len], &computed[..len]) {
        Some(entry) => Err(entry),
        None => Ok(()),
    }
}

/// The error for a non-zero byte in the padding after the last digest of a (trusted) level
/// starting at hash block `level_start`: the tree was not written by veritysetup or us.
fn padding_block(
    level_start: u64,
    entry: u64,
    corrupted: &dyn Fn(Corruption, u64) -> Error,
) -> Error {
    corrupted(Corruption::Hash, level_start + entry / HASHES_PER_BLOCK)
}

/// [`verify`] on paths: the data area starts at byte 0 and the data length is the whole file
/// or device.
pub fn verify_path(
    data_path: &Path,
    hash_path: &Path,
    root_hash: &[u8; DIGEST_SIZE],
    opts: &VerifyOptions,
) -> Result<VerityInfo> {
    let data_file = open(data_path, false)?;
    let hash_file = open(hash_path, false)?;
    let data = Device::new(&data_file, data_path);
    verify(
        data,
        0,
        data.size()?,
        Device::new(&hash_file, hash_path),
        root_hash,
        opts,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_level0_builder_takes_whole_level0_blocks_in_order_and_all_of_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data");
        let blocks = 2 * HASHES_PER_BLOCK + 5;
        std::fs::write(&path, vec![7u8; (blocks * BLOCK_SIZE) as usize]).expect("write");
        let file = std::fs::File::open(&path).expect("open");
        let data = Device::new(&file, &path);
        let mut b = Level0Builder::new(b"salt", blocks, 1);
        // Not a whole level-0 block, and not the end: refused, nothing counted.
        assert!(b.update(data, 0, 100).is_err());
        assert_eq!(b.done(), 0);
        // Past the end: refused.
        assert!(b.update(data, 0, blocks + 1).is_err());
        b.update(data, 0, HASHES_PER_BLOCK)
            .expect("one level-0 block");
        // Unfinished: refused.
        let mut partial = Level0Builder::new(b"salt", blocks, 1);
        partial
            .update(data, 0, HASHES_PER_BLOCK)
            .expect("one level-0 block");
        assert!(partial.finish().is_err());
        // The rest, ending with the short tail.
        b.update(data, HASHES_PER_BLOCK * BLOCK_SIZE, HASHES_PER_BLOCK + 5)
            .expect("to the end");
        assert_eq!(b.done(), blocks);
        let split = b.finish().expect("complete");
        // The same digest in one go, and a different one with another salt.
        let mut whole = Level0Builder::new(b"salt", blocks, 2);
        whole.update(data, 0, blocks).expect("all");
        assert_eq!(whole.finish().expect("complete"), split);
        let mut other = Level0Builder::new(b"pepper", blocks, 2);
        other.update(data, 0, blocks).expect("all");
        assert_ne!(other.finish().expect("complete"), split);
    }
}
