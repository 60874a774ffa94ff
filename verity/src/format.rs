//! `veritysetup format`, byte for byte: build the tree of a data range and write it (and the
//! superblock) into a hash range.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ring::rand::{SecureRandom, SystemRandom};

use crate::device::Device;
use crate::dm::VerityTable;
use crate::error::{Error, Result};
use crate::geometry::{Geometry, BLOCK_SIZE, DIGEST_SIZE};
use crate::hash::{digest_block, hash_level, level_bytes, salted, Input};
use crate::superblock::{Superblock, MAX_SALT_SIZE, SUPERBLOCK_SIZE};

/// The hash algorithm (the only one Basalt supports), as the kernel and veritysetup name it.
pub const ALGORITHM: &str = "sha256";
/// The hash format: 1 = normal (`sha256(salt || block)`), as veritysetup's default.
pub const HASH_TYPE: u32 = 1;
/// Salt size veritysetup uses by default (and `basalt verity format` too).
pub const DEFAULT_SALT_SIZE: usize = 32;

/// How to format.
#[derive(Debug, Clone)]
pub struct FormatOptions {
    /// The salt (0..=256 bytes; empty = no salt, veritysetup's `--salt -`).
    pub salt: Vec<u8>,
    /// Write veritysetup's superblock at `hash_offset` (the tree then starts one 4 KiB block
    /// later). Without it, the tree starts at `hash_offset` (`--no-superblock`).
    pub superblock: bool,
    /// UUID for the superblock; `None` draws a random (version 4) one, as veritysetup does.
    pub uuid: Option<[u8; 16]>,
    /// Byte offset of the hash area in the hash file (`--hash-offset`); a multiple of 512.
    pub hash_offset: u64,
    /// Hashing threads; 0 = one per available core.
    pub threads: usize,
}

impl Default for FormatOptions {
    fn default() -> Self {
        FormatOptions {
            salt: Vec::new(),
            superblock: true,
            uuid: None,
            hash_offset: 0,
            threads: 0,
        }
    }
}

/// What a format (or a successful verify) established: everything needed for a dm-verity
/// table, plus what veritysetup prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityInfo {
    /// The root hash.
    pub root_hash: [u8; DIGEST_SIZE],
    /// The salt (may be empty).
    pub salt: Vec<u8>,
    /// Number of 4 KiB data blocks covered.
    pub data_blocks: u64,
    /// Number of 4 KiB hash blocks in the tree (superblock excluded), veritysetup's
    /// "Hash blocks".
    pub hash_blocks: u64,
    /// Byte offset of the hash area (the superblock, if any) in the hash file.
    pub hash_offset: u64,
    /// Byte offset of the tree's first block in the hash file.
    pub tree_offset: u64,
    /// The superblock UUID, `None` without a superblock.
    pub uuid: Option<[u8; 16]>,
}

impl VerityInfo {
    /// The kernel's `hash_start` table argument: the tree's first block, in hash blocks.
    pub fn hash_start_block(&self) -> u64 {
        self.tree_offset / BLOCK_SIZE
    }

    /// Byte offset just past the tree (with no tree, just past the superblock).
    pub fn hash_end(&self) -> u64 {
        self.tree_offset + self.hash_blocks * BLOCK_SIZE
    }

    /// The dm-verity table for these devices (paths or `major:minor`), without options.
    pub fn table(&self, data_dev: &str, hash_dev: &str) -> VerityTable {
        VerityTable {
            data_dev: data_dev.to_string(),
            hash_dev: hash_dev.to_string(),
            data_block_size: BLOCK_SIZE as u32,
            hash_block_size: BLOCK_SIZE as u32,
            data_blocks: self.data_blocks,
            hash_start_block: self.hash_start_block(),
            algorithm: ALGORITHM.to_string(),
            root_hash: self.root_hash.to_vec(),
            salt: self.salt.clone(),
            options: Vec::new(),
        }
    }
}

/// Where the tree starts for a hash area at `hash_offset`, as cryptsetup's
/// `VERITY_hash_offset_block`: after the 512-byte superblock rounded up to a hash block, or
/// (without superblock) at the hash block containing `hash_offset`.
pub(crate) fn tree_offset(hash_offset: u64, superblock: bool) -> Result<u64> {
    if hash_offset % 512 != 0 {
        return Err(Error::InvalidParameters {
            reason: format!("hash offset {hash_offset} is not a multiple of 512"),
        });
    }
    let block = if superblock {
        hash_offset
            .checked_add(SUPERBLOCK_SIZE as u64 + BLOCK_SIZE - 1)
            .ok_or_else(|| Error::InvalidParameters {
                reason: format!("hash offset {hash_offset} is too large"),
            })?
            / BLOCK_SIZE
    } else {
        hash_offset / BLOCK_SIZE
    };
    Ok(block * BLOCK_SIZE)
}

/// Refuse a data range whose end does not fit in 64 bits (so later offset sums cannot overflow).
pub(crate) fn check_range(data_offset: u64, data_len: u64) -> Result<()> {
    match data_offset.checked_add(data_len) {
        Some(_) => Ok(()),
        None => Err(Error::InvalidParameters {
            reason: format!("data range {data_offset}+{data_len} ends beyond 2^64 bytes"),
        }),
    }
}

/// Random bytes from the operating system (for salts and UUIDs).
pub fn random_bytes(len: usize) -> Result<Vec<u8>> {
    let mut v = vec![0u8; len];
    SystemRandom::new()
        .fill(&mut v)
        .map_err(|_| Error::Random)?;
    Ok(v)
}

/// A random salt of veritysetup's default size (32 bytes).
pub fn random_salt() -> Result<Vec<u8>> {
    random_bytes(DEFAULT_SALT_SIZE)
}

fn random_uuid() -> Result<[u8; 16]> {
    let mut u = [0u8; 16];
    u.copy_from_slice(&random_bytes(16)?);
    u[6] = (u[6] & 0x0f) | 0x40; // version 4
    u[8] = (u[8] & 0x3f) | 0x80; // RFC 4122 variant
    Ok(u)
}

/// Check that `dev` holds `len` bytes at `offset` (a clear error before any hashing).
pub(crate) fn ensure_available(dev: Device<'_>, offset: u64, len: u64) -> Result<()> {
    let size = dev.size()?;
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(Error::Read {
            path: dev.path.to_path_buf(),
            offset: size,
            source: std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{len} bytes at offset {offset} needed, the size is {size}"),
            ),
        });
    }
    Ok(())
}

/// Hash the data blocks of `data` at `data_offset` into `out` (zeroed, whole hash blocks)
/// through positional reads. (A memory mapping instead of `pread` was measured: no faster
/// here, page faults cost what the copy did, so the simpler, SIGBUS-free reads stay.)
pub(crate) fn hash_data(
    data: Device<'_>,
    data_offset: u64,
    data_blocks: u64,
    out: &mut [u8],
    salt: &[u8],
    threads: usize,
) -> Result<()> {
    let len = data_blocks * BLOCK_SIZE;
    ensure_available(data, data_offset, len)?;
    let read = |first: u64, buf: &mut [u8]| data.read_at(buf, data_offset + first * BLOCK_SIZE);
    hash_level(data_blocks, out, salt, threads, &Input::Read(&read))
}

/// Compute the whole tree (on-disk order: top level first) and the root hash of the
/// `geometry.data_blocks` blocks of `data` at `data_offset`.
/// The hash tree over `data_blocks` blocks of `data` from `data_offset` (as [`format`] would
/// write it after the superblock, top level first) and its root hash, in memory: for callers
/// that write the tree through their own I/O (the updater's adaptive install). Memory: the
/// tree, 1/128 of the data.
pub fn tree(
    data: Device<'_>,
    data_offset: u64,
    data_blocks: u64,
    salt: &[u8],
    threads: usize,
) -> Result<(Vec<u8>, [u8; DIGEST_SIZE])> {
    if salt.len() > MAX_SALT_SIZE {
        return Err(Error::InvalidParameters {
            reason: format!("salt of {} bytes exceeds {MAX_SALT_SIZE}", salt.len()),
        });
    }
    check_range(data_offset, data_blocks.saturating_mul(BLOCK_SIZE))?;
    let geometry = Geometry::new(data_blocks)?;
    build_tree(&geometry, salt, threads, data, data_offset)
}

pub(crate) fn build_tree(
    geometry: &Geometry,
    salt: &[u8],
    threads: usize,
    data: Device<'_>,
    data_offset: u64,
) -> Result<(Vec<u8>, [u8; DIGEST_SIZE])> {
    let mut tree = vec![0u8; geometry.tree_size() as usize];
    if geometry.levels.is_empty() {
        // One data block: its digest is the root hash; no hash blocks.
        let mut digest = vec![0u8; level_bytes(1)];
        hash_data(data, data_offset, 1, &mut digest, salt, 1)?;
        let mut root = [0u8; DIGEST_SIZE];
        root.copy_from_slice(&digest[..DIGEST_SIZE]);
        return Ok((tree, root));
    }
    let bs = BLOCK_SIZE as usize;
    for (i, level) in geometry.levels.iter().enumerate() {
        let start = level.start as usize * bs;
        let len = level.blocks as usize * bs;
        if i == 0 {
            let here = &mut tree[start..start + len];
            hash_data(data, data_offset, geometry.data_blocks, here, salt, threads)?;
        } else {
            // Level i hashes level i-1, which lies *after* it on disk.
            let below = geometry.levels[i - 1];
            let (head, tail) = tree.split_at_mut(below.start as usize * bs);
            let here = &mut head[start..start + len];
            let input = Input::Memory(&tail[..below.blocks as usize * bs]);
            hash_level(below.blocks, here, salt, threads, &input)?;
        }
    }
    let top = &tree[..bs];
    let root = digest_block(&salted(salt), top);
    Ok((tree, root))
}

/// Format `data_len` bytes of `data` starting at `data_offset` (whole 4 KiB blocks; a partial
/// last block is ignored, as veritysetup does): write the hash tree, and the superblock unless
/// `opts.superblock` is false, into `hash` at `opts.hash_offset`. `data` and `hash` may be the
/// same file when the areas do not overlap. A regular hash file is grown to the end of the
/// tree; nothing outside the hash area is written. Memory: the tree plus one read buffer per
/// thread (256 KiB).
pub fn format(
    data: Device<'_>,
    data_offset: u64,
    data_len: u64,
    hash: Device<'_>,
    opts: &FormatOptions,
) -> Result<VerityInfo> {
    if opts.salt.len() > MAX_SALT_SIZE {
        return Err(Error::InvalidParameters {
            reason: format!("salt of {} bytes exceeds {MAX_SALT_SIZE}", opts.salt.len()),
        });
    }
    check_range(data_offset, data_len)?;
    let geometry = Geometry::new(data_len / BLOCK_SIZE)?;
    let tree_offset = tree_offset(opts.hash_offset, opts.superblock)?;
    let hash_end = tree_offset
        .checked_add(geometry.tree_size())
        .ok_or_else(|| Error::InvalidParameters {
            reason: "hash area ends beyond 2^64 bytes".into(),
        })?;
    if data.same_file(&hash)? {
        let data_end = data_offset + geometry.data_blocks * BLOCK_SIZE;
        if opts.hash_offset < data_end && data_offset < hash_end {
            return Err(Error::InvalidParameters {
                reason: format!(
                    "hash area {}..{hash_end} overlaps data area {data_offset}..{data_end} in {}",
                    opts.hash_offset,
                    data.path.display()
                ),
            });
        }
    }
    let uuid = if opts.superblock {
        Some(match opts.uuid {
            Some(u) => u,
            None => random_uuid()?,
        })
    } else {
        None
    };

    let (tree, root_hash) = build_tree(&geometry, &opts.salt, opts.threads, data, data_offset)?;

    hash.ensure_len(hash_end)?;
    hash.write_at(&tree, tree_offset)?;
    if let Some(uuid) = uuid {
        let sb = Superblock {
            hash_type: HASH_TYPE,
            uuid,
            algorithm: ALGORITHM.to_string(),
            data_block_size: BLOCK_SIZE as u32,
            hash_block_size: BLOCK_SIZE as u32,
            data_blocks: geometry.data_blocks,
            salt: opts.salt.clone(),
        };
        hash.write_at(&sb.to_bytes()?, opts.hash_offset)?;
    }
    hash.sync()?;
    Ok(VerityInfo {
        root_hash,
        salt: opts.salt.clone(),
        data_blocks: geometry.data_blocks,
        hash_blocks: geometry.hash_blocks,
        hash_offset: opts.hash_offset,
        tree_offset,
        uuid,
    })
}

/// Open a file or block device for reading (and writing when `write`), creating a missing
/// hash file.
pub(crate) fn open(path: &Path, write: bool) -> Result<File> {
    // Like veritysetup, a hash file we create is private to its owner (0600).
    OpenOptions::new()
        .mode(0o600)
        .read(true)
        .write(write)
        .create(write)
        .truncate(false)
        .open(path)
        .map_err(|source| Error::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// [`format`] on paths, like `veritysetup format DATA HASH [--data-blocks N]`: the data area
/// starts at byte 0 and covers `data_blocks` blocks (default: the whole file or device). The
/// hash file is created if missing and never truncated; it may be the data file itself.
pub fn format_path(
    data_path: &Path,
    hash_path: &Path,
    data_blocks: Option<u64>,
    opts: &FormatOptions,
) -> Result<VerityInfo> {
    let hash_file = open(hash_path, true)?;
    let data_file = open(data_path, false)?;
    let data = Device::new(&data_file, data_path);
    let hash = Device::new(&hash_file, hash_path);
    let data_len = match data_blocks {
        Some(n) => n
            .checked_mul(BLOCK_SIZE)
            .ok_or_else(|| Error::InvalidParameters {
                reason: format!("data block count {n} is out of range"),
            })?,
        None => data.size()?,
    };
    format(data, 0, data_len, hash, opts)
}
