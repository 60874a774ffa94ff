//! Offline verification of a data range against its hash tree and root hash, reporting the
//! first corrupted block the way the kernel would find it: top down, so a damaged hash block
//! is reported before the data blocks it covers.

use std::path::Path;

use crate::device::Device;
use crate::error::{Corruption, Error, Result};
use crate::format::{check_range, hash_data, open, tree_offset, VerityInfo, ALGORITHM, HASH_TYPE};
use crate::geometry::{Geometry, BLOCK_SIZE, DIGEST_SIZE};
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
    let mut tree = vec![0u8; geometry.tree_size() as usize];
    hash.read_at(&mut tree, tree_offset)?;

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

    let Some(top) = geometry.levels.last() else {
        // A single data block: its digest is the root hash.
        let mut digest = vec![0u8; level_bytes(1)];
        hash_data(data, data_offset, 1, &mut digest, &salt, 1)?;
        if digest[..DIGEST_SIZE] != root_hash[..] {
            return Err(corrupted(Corruption::Data, 0));
        }
        return Ok(info);
    };
    let computed_root = digest_block(&salted(&salt), &tree[..bs]);
    if computed_root != *root_hash {
        return Err(Error::RootHashMismatch {
            expected: hex::encode(root_hash),
            computed: hex::encode(computed_root),
        });
    }
    debug_assert_eq!(top.start, 0);

    // Each level (from the top) is now trusted; check the level below it, then the data.
    for i in (0..geometry.levels.len()).rev() {
        let level = geometry.levels[i];
        let stored = &tree[level.start as usize * bs..][..level.blocks as usize * bs];
        let (children, child_count) = if i == 0 {
            (None, data_blocks)
        } else {
            (Some(geometry.levels[i - 1]), geometry.levels[i - 1].blocks)
        };
        let mut computed = vec![0u8; level_bytes(child_count)];
        match children {
            Some(below) => {
                let input = &tree[below.start as usize * bs..][..below.blocks as usize * bs];
                hash_level(
                    below.blocks,
                    &mut computed,
                    &salt,
                    opts.threads,
                    &Input::Memory(input),
                )?;
            }
            None => hash_data(
                data,
                data_offset,
                data_blocks,
                &mut computed,
                &salt,
                opts.threads,
            )?,
        }
        if let Some(entry) = first_mismatch(stored, &computed) {
            return Err(if entry < child_count {
                match children {
                    Some(below) => corrupted(Corruption::Hash, below.start + entry),
                    None => corrupted(Corruption::Data, entry),
                }
            } else {
                // The zero padding after the last digest of this (trusted) level is not zero:
                // the tree was not written by veritysetup or us.
                let per_block = BLOCK_SIZE / DIGEST_SIZE as u64;
                corrupted(Corruption::Hash, level.start + entry / per_block)
            });
        }
    }
    Ok(info)
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
