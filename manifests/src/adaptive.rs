//! The block index of an adaptive (block-reuse) install: a short hash of every 4 KiB block of
//! a `usr.img`, and the table of the **frame store**, a blob of independently decodable zstd
//! frames that together hold every block except the verity tree.
//!
//! A node that already runs an earlier release holds almost every block of the next one in its
//! booted slot (measurements: `docs/ARCHITECTURE.md`, "Adaptive updates"). With this index it
//! copies every block it can find locally (by content, wherever it lies), fetches only the
//! frames that hold a block it lacks, recomputes the verity tree, and then verifies the whole
//! slot against the signed root hash exactly as after a full install. Both blobs are named by
//! SHA-256 and size in the signed manifest ([`crate::AdaptiveRef`]); the single zstd stream
//! ([`crate::frames`]) stays the full-install path and the fallback.
//!
//! # Format (`BSLTBIX1`, little endian)
//!
//! ```text
//! offset        size    field
//! 0             8       magic "BSLTBIX1"
//! 8             8       block count B (= artifact size / 4096)
//! 16            4       frame count F (1 ..= B)
//! 20            4       delta count D (0 ..= MAX_DELTAS; 0 in indexes from before deltas)
//! 24            8×B     block hashes: the first 8 bytes of SHA-256(block), unsalted
//! 24+8B         28×F    frames: u32 first_block, u32 blocks (1..=64), u32 compressed_len,
//!                       [16] first 16 bytes of SHA-256(compressed frame)
//! 24+8B+28F     84×D    deltas: [32] from_root, u32 first_block, u32 blocks (1..=256),
//!                       u32 ref_first_block, u32 ref_blocks (1..=768), u32 compressed_len,
//!                       [16] first 16 bytes of SHA-256(compressed delta),
//!                       [16] first 16 bytes of SHA-256(reference bytes)
//! ```
//!
//! Frames lie in block order without gaps or overlaps, except that no frame covers the verity
//! tree (`[hash_offset/4096 + 1, + tree blocks)`: the node computes it from the data and the
//! signed salt; shipping it would cost ≈ 0.8 % of the data per release, as the salt changes
//! with every version). A frame starts where the one before ended in the store; the sum of the
//! compressed lengths is the store's size. The hashes of the tree's blocks are stored but
//! never used.
//!
//! # Binary deltas
//!
//! A rebuilt binary changes almost every one of its blocks (containerd u2 → u3: 4 700 of
//! 5 568), so block reuse alone fetches it whole. A **delta** rebuilds a run of this image's
//! blocks from a run of an earlier release's blocks: a zstd frame compressed with those
//! earlier blocks as its prefix (`zstd --patch-from`), over the blocks *as stored* (lz4hc
//! pclusters and all), so the image layout does not change and the node needs no erofs
//! parser. `from_root` names the earlier release by its usr verity root hash (what a node
//! booted, `usrhash=`); the reference is blocks `ref_first_block..+ref_blocks` of that
//! release's usr data. A delta covers whole frames (it starts at a frame's first block and
//! ends at a frame's end), never the verity tree; deltas with the same `from_root` are in
//! block order and do not overlap. Their compressed bytes follow the frames in the store,
//! in record order. Bounds keep a node's buffers small: 1 MiB of output, 3 MiB of
//! reference. A node uses a delta only when its booted root hash is `from_root`, the
//! reference it reads has `ref_digest`, the delta's bytes have `digest` (checked before
//! zstd sees them) and every block it decodes has its short hash; otherwise it fetches the
//! delta's frames. Measurements and the publisher's choice of references:
//! `docs/ARCHITECTURE.md`, "Binary deltas".
//!
//! # Why 8 bytes per block and 16 per frame are enough
//!
//! Integrity never rests on this index: the node verifies the written slot against the signed
//! root hash (every block, the whole tree) and falls back to the full stream on any mismatch.
//! A block hash only decides *which* local block to copy. An accidental 64-bit collision
//! between one of ≈ 80 000 local blocks and one of ≈ 80 000 new ones has a probability of
//! ≈ 80 000² / 2⁶⁴ ≈ 3·10⁻¹⁰ per update, and even then costs a fallback, not a bad slot. A
//! deliberate collision (2³² work for someone who controls a file in one release and knows a
//! block of the next) also only forces that fallback. 8 bytes instead of 32 keep the index at
//! ≈ 0.4 % of the compressed image instead of 1.4 %. The 16-byte frame digest is checked
//! before the decoder sees a frame (so zstd only ever reads bytes the signed index names):
//! forging a frame means a second preimage of a truncated SHA-256 of 128 bits.

use std::collections::HashSet;

use crate::error::{Document, Error, Result};
use crate::manifest::Artifact;

/// First bytes of a block index.
pub const BLOCK_INDEX_MAGIC: [u8; 8] = *b"BSLTBIX1";
/// Bytes before the block hashes.
pub const HEADER_LEN: usize = 24;
/// Bytes per block hash.
pub const BLOCK_HASH_LEN: usize = 8;
/// Bytes per frame record.
pub const FRAME_RECORD_LEN: usize = 28;
/// Bytes per delta record.
pub const DELTA_RECORD_LEN: usize = 84;
/// Bytes of the (truncated) SHA-256 of a compressed frame.
pub const FRAME_DIGEST_LEN: usize = 16;
/// Most blocks one delta rebuilds (1 MiB): what a node decodes at once.
pub const MAX_DELTA_BLOCKS: u32 = 256;
/// Most blocks of reference one delta reads from the booted slot (3 MiB).
pub const MAX_DELTA_REF_BLOCKS: u32 = 768;
/// Largest compressed delta accepted.
pub const MAX_DELTA_LEN: u32 = (MAX_DELTA_BLOCKS * BLOCK_SIZE as u32) + 4096;
/// Most deltas one index lists.
pub const MAX_DELTAS: u32 = 1 << 16;
/// The block size the index is about (the verity data block size Basalt uses).
pub const BLOCK_SIZE: u64 = 4096;
/// Most blocks one frame holds (256 KiB): bounds what a node buffers for one frame.
pub const MAX_FRAME_BLOCKS: u32 = 64;
/// Most blocks an index describes (16 GiB of `usr.img`, an index of ≈ 40 MiB at most).
pub const MAX_BLOCKS: u64 = 4 << 20;
/// Largest compressed frame accepted (a zstd frame of 256 KiB of incompressible data is a
/// few bytes longer than its input).
pub const MAX_COMPRESSED_FRAME_LEN: u32 = (MAX_FRAME_BLOCKS * BLOCK_SIZE as u32) + 4096;

/// The size of an index of `blocks` blocks, `frames` frames and `deltas` deltas.
pub const fn index_len(blocks: u64, frames: u64, deltas: u64) -> u64 {
    HEADER_LEN as u64
        + BLOCK_HASH_LEN as u64 * blocks
        + FRAME_RECORD_LEN as u64 * frames
        + DELTA_RECORD_LEN as u64 * deltas
}

/// The largest index: [`MAX_BLOCKS`] blocks and frames, [`MAX_DELTAS`] deltas.
pub const MAX_INDEX_LEN: u64 = index_len(MAX_BLOCKS, MAX_BLOCKS, MAX_DELTAS as u64);

/// The short hash of one block: the first 8 bytes of its SHA-256, as a number.
pub fn block_hash(block: &[u8]) -> u64 {
    let d = ring::digest::digest(&ring::digest::SHA256, block);
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    u64::from_le_bytes(b)
}

/// The truncated SHA-256 a frame record carries for its compressed bytes.
pub fn frame_digest(compressed: &[u8]) -> [u8; FRAME_DIGEST_LEN] {
    let d = ring::digest::digest(&ring::digest::SHA256, compressed);
    let mut out = [0u8; FRAME_DIGEST_LEN];
    out.copy_from_slice(&d.as_ref()[..FRAME_DIGEST_LEN]);
    out
}

/// One frame of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreFrame {
    /// First block of `usr.img` the frame holds.
    pub first_block: u64,
    /// Number of blocks (1 ..= [`MAX_FRAME_BLOCKS`]).
    pub blocks: u32,
    /// Byte offset of the frame in the store.
    pub compressed_offset: u64,
    /// Length of the compressed frame.
    pub compressed_len: u32,
    /// First 16 bytes of the SHA-256 of the compressed frame.
    pub digest: [u8; FRAME_DIGEST_LEN],
}

impl StoreFrame {
    /// One past the frame's last block.
    pub fn end_block(&self) -> u64 {
        self.first_block + u64::from(self.blocks)
    }

    /// One past the frame's last byte in the store.
    pub fn compressed_end(&self) -> u64 {
        self.compressed_offset + u64::from(self.compressed_len)
    }
}

/// zstd window of a delta: reference (≤ 3 MiB) + output (≤ 1 MiB) fit in 2^23 bytes.
pub const DELTA_WINDOW_LOG: u32 = 23;

/// `target` compressed by zstd at `level` with `reference` as its prefix (a delta's bytes).
#[cfg(all(feature = "codec", feature = "sign"))]
pub fn delta_encode(reference: &[u8], target: &[u8], level: i32) -> Result<Vec<u8>, String> {
    use zstd::zstd_safe::{compress_bound, get_error_name, CCtx, CParameter};
    let err = |e: usize| get_error_name(e).to_owned();
    let mut cctx = CCtx::create();
    cctx.set_parameter(CParameter::CompressionLevel(level))
        .map_err(err)?;
    cctx.set_parameter(CParameter::WindowLog(DELTA_WINDOW_LOG))
        .map_err(err)?;
    cctx.set_parameter(CParameter::ContentSizeFlag(true))
        .map_err(err)?;
    cctx.ref_prefix(reference).map_err(err)?;
    let mut out = Vec::with_capacity(compress_bound(target.len()));
    cctx.compress2(&mut out, target).map_err(err)?;
    Ok(out)
}

/// `delta` decoded with `reference` as its prefix into `out`, which is cleared first and
/// receives at most its capacity (the delta's expected length); the decoded length. The
/// one decoder the publisher's self-check and the node use.
#[cfg(feature = "codec")]
pub fn delta_decode(reference: &[u8], delta: &[u8], out: &mut Vec<u8>) -> Result<usize, String> {
    use zstd::zstd_safe::{get_error_name, DCtx, DParameter};
    let err = |e: usize| get_error_name(e).to_owned();
    let mut dctx = DCtx::create();
    dctx.set_parameter(DParameter::WindowLogMax(DELTA_WINDOW_LOG))
        .map_err(err)?;
    dctx.ref_prefix(reference).map_err(err)?;
    out.clear();
    dctx.decompress(out, delta).map_err(err)
}

/// One binary delta (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delta {
    /// The usr verity root hash of the release whose blocks are the reference.
    pub from_root: [u8; 32],
    /// First block of `usr.img` the delta rebuilds (a frame's first block).
    pub first_block: u64,
    /// Number of blocks (1 ..= [`MAX_DELTA_BLOCKS`]; ends at a frame's end).
    pub blocks: u32,
    /// First block of the earlier release's usr data the reference starts at.
    pub ref_first_block: u64,
    /// Blocks of reference (1 ..= [`MAX_DELTA_REF_BLOCKS`]).
    pub ref_blocks: u32,
    /// Byte offset of the delta in the store (after every frame); set by [`BlockIndex::new`].
    pub compressed_offset: u64,
    /// Length of the compressed delta.
    pub compressed_len: u32,
    /// First 16 bytes of the SHA-256 of the compressed delta.
    pub digest: [u8; FRAME_DIGEST_LEN],
    /// First 16 bytes of the SHA-256 of the reference's bytes.
    pub ref_digest: [u8; FRAME_DIGEST_LEN],
}

impl Delta {
    /// One past the last block the delta rebuilds.
    pub fn end_block(&self) -> u64 {
        self.first_block + u64::from(self.blocks)
    }

    /// One past the delta's last byte in the store.
    pub fn compressed_end(&self) -> u64 {
        self.compressed_offset + u64::from(self.compressed_len)
    }
}

/// Where a node gets one frame's blocks from (see [`BlockIndex::plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSource {
    /// Every block is in the booted slot: copy.
    Local,
    /// Fetch the frame from the store.
    Fetch,
    /// Rebuild it with delta `k` of [`BlockIndex::deltas`] (which covers it whole).
    Delta(usize),
}

/// The blocks of `usr.img` no frame covers: the verity tree, computed by the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeBlocks {
    pub first: u64,
    pub count: u64,
}

impl TreeBlocks {
    /// The tree's blocks for an artifact with verity parameters (superblock at `hash_offset`,
    /// the tree in the next block, as `basalt image build` and veritysetup write it).
    pub fn of(artifact: &Artifact) -> Result<TreeBlocks> {
        let Some(v) = &artifact.verity else {
            return Err(invalid(format!(
                "artifact {:?} has no verity parameters, so no block index",
                artifact.name
            )));
        };
        if v.hash_offset % BLOCK_SIZE != 0 || artifact.size % BLOCK_SIZE != 0 {
            return Err(invalid(format!(
                "artifact {:?}: hash offset {} and size {} must be multiples of 4096",
                artifact.name, v.hash_offset, artifact.size
            )));
        }
        let tree = basalt_verity_tree_blocks(v.data_blocks);
        let first = v.hash_offset / BLOCK_SIZE + 1;
        if first + tree > artifact.size / BLOCK_SIZE {
            return Err(invalid(format!(
                "artifact {:?}: the verity tree (blocks {first}..{}) ends after the artifact",
                artifact.name,
                first + tree
            )));
        }
        Ok(TreeBlocks { first, count: tree })
    }

    fn contains(&self, block: u64) -> bool {
        block >= self.first && block < self.first + self.count
    }
}

/// Hash blocks of a dm-verity tree (4 KiB blocks, sha256, 128 digests per block) over
/// `data_blocks` blocks; the same geometry as `basalt_verity::hash_tree_size` (which this crate
/// does not link: the initramfs links it without the verity crate).
fn basalt_verity_tree_blocks(data_blocks: u64) -> u64 {
    if data_blocks <= 1 {
        return 0;
    }
    let mut total = 0u64;
    let mut n = data_blocks;
    while n > 1 {
        n = n.div_ceil(128);
        total += n;
    }
    total
}

/// A parsed, validated block index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockIndex {
    hashes: Vec<u64>,
    frames: Vec<StoreFrame>,
    deltas: Vec<Delta>,
    tree: TreeBlocks,
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidContent {
        document: Document::BlockIndex,
        reason: reason.into(),
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// One frame as a publisher describes it: `(first_block, blocks, compressed_len, digest)`.
pub type FrameRecord = (u64, u32, u32, [u8; FRAME_DIGEST_LEN]);

/// Checks the deltas' rules (module docs) against the frames and the tree, and lays them out
/// in the store after the frames (which end at `frames_end`).
fn check_deltas(
    deltas: &[Delta],
    frames: &[StoreFrame],
    tree: TreeBlocks,
    frames_end: u64,
) -> Result<Vec<Delta>> {
    if deltas.len() as u64 > u64::from(MAX_DELTAS) {
        return Err(invalid(format!(
            "{} deltas; an index lists at most {MAX_DELTAS}",
            deltas.len()
        )));
    }
    let starts_frame = |b: u64| frames.binary_search_by_key(&b, |f| f.first_block).is_ok();
    let ends_frame = |b: u64| frames.binary_search_by_key(&b, |f| f.end_block()).is_ok();
    let mut last_end: std::collections::HashMap<[u8; 32], u64> = Default::default();
    let mut offset = frames_end;
    let mut out = Vec::with_capacity(deltas.len());
    for (i, d) in deltas.iter().enumerate() {
        if d.blocks == 0 || d.blocks > MAX_DELTA_BLOCKS {
            return Err(invalid(format!(
                "delta {i} rebuilds {} blocks, outside 1..={MAX_DELTA_BLOCKS}",
                d.blocks
            )));
        }
        if d.ref_blocks == 0 || d.ref_blocks > MAX_DELTA_REF_BLOCKS {
            return Err(invalid(format!(
                "delta {i} reads {} blocks of reference, outside 1..={MAX_DELTA_REF_BLOCKS}",
                d.ref_blocks
            )));
        }
        if d.compressed_len == 0 || d.compressed_len > MAX_DELTA_LEN {
            return Err(invalid(format!(
                "delta {i}: compressed length {} is outside 1..={MAX_DELTA_LEN}",
                d.compressed_len
            )));
        }
        let end = d.end_block();
        if !starts_frame(d.first_block) || !ends_frame(end) {
            return Err(invalid(format!(
                "delta {i} (blocks {}..{end}) does not cover whole frames",
                d.first_block
            )));
        }
        if tree.count > 0 && d.first_block < tree.first + tree.count && end > tree.first {
            return Err(invalid(format!(
                "delta {i} (blocks {}..{end}) overlaps the verity tree",
                d.first_block
            )));
        }
        let last = last_end.entry(d.from_root).or_insert(0);
        if d.first_block < *last {
            return Err(invalid(format!(
                "delta {i} (blocks {}..{end}) starts before the end of the previous delta \
                 from the same release (block {last})",
                d.first_block
            )));
        }
        *last = end;
        out.push(Delta {
            compressed_offset: offset,
            ..*d
        });
        offset += u64::from(d.compressed_len);
    }
    Ok(out)
}

impl BlockIndex {
    /// Builds an index from the block hashes, the frames and the deltas (their
    /// `compressed_offset` is computed here: deltas follow the frames in the store, in this
    /// order), checking every rule [`BlockIndex::parse`] checks against `artifact` except the
    /// store's total size.
    pub fn new(
        hashes: Vec<u64>,
        records: &[FrameRecord],
        deltas: &[Delta],
        artifact: &Artifact,
    ) -> Result<Self> {
        let tree = TreeBlocks::of(artifact)?;
        let blocks = hashes.len() as u64;
        if blocks == 0 || blocks > MAX_BLOCKS {
            return Err(invalid(format!(
                "{blocks} blocks; an index describes 1 to {MAX_BLOCKS}"
            )));
        }
        if blocks != artifact.size / BLOCK_SIZE {
            return Err(invalid(format!(
                "{blocks} blocks, but artifact {:?} has {} bytes = {} blocks",
                artifact.name,
                artifact.size,
                artifact.size / BLOCK_SIZE
            )));
        }
        if records.is_empty() || records.len() as u64 > blocks {
            return Err(invalid(format!(
                "{} frames for {blocks} blocks; an index lists 1 to {blocks}",
                records.len()
            )));
        }
        let mut frames = Vec::with_capacity(records.len());
        let (mut next_block, mut offset) = (0u64, 0u64);
        for (i, &(first_block, n, compressed_len, digest)) in records.iter().enumerate() {
            if next_block == tree.first && tree.count > 0 {
                next_block += tree.count;
            }
            if first_block != next_block {
                return Err(invalid(format!(
                    "frame {i} starts at block {first_block}, expected {next_block} (frames \
                     cover every block but the verity tree, in order)"
                )));
            }
            if n == 0 || n > MAX_FRAME_BLOCKS {
                return Err(invalid(format!(
                    "frame {i} holds {n} blocks, outside 1..={MAX_FRAME_BLOCKS}"
                )));
            }
            if compressed_len == 0 || compressed_len > MAX_COMPRESSED_FRAME_LEN {
                return Err(invalid(format!(
                    "frame {i}: compressed length {compressed_len} is outside \
                     1..={MAX_COMPRESSED_FRAME_LEN}"
                )));
            }
            let end = first_block + u64::from(n);
            if end > blocks {
                return Err(invalid(format!(
                    "frame {i} ends at block {end}, after the last block {blocks}"
                )));
            }
            if (first_block..end).any(|b| tree.contains(b)) {
                return Err(invalid(format!(
                    "frame {i} (blocks {first_block}..{end}) overlaps the verity tree \
                     (blocks {}..{})",
                    tree.first,
                    tree.first + tree.count
                )));
            }
            frames.push(StoreFrame {
                first_block,
                blocks: n,
                compressed_offset: offset,
                compressed_len,
                digest,
            });
            offset += u64::from(compressed_len);
            next_block = end;
        }
        if next_block == tree.first && tree.count > 0 {
            next_block += tree.count;
        }
        if next_block != blocks {
            return Err(invalid(format!(
                "frames end at block {next_block}, the artifact has {blocks}"
            )));
        }
        let deltas = check_deltas(deltas, &frames, tree, offset)?;
        Ok(BlockIndex {
            hashes,
            frames,
            deltas,
            tree,
        })
    }

    /// Parses an index and checks it against the `usr` artifact it belongs to: sizes, frame
    /// order and bounds, the verity tree left out, and that the frames fill exactly
    /// `store_size` bytes. The caller has already checked the blob's SHA-256 and size against
    /// [`crate::AdaptiveRef`].
    pub fn parse(bytes: &[u8], artifact: &Artifact, store_size: u64) -> Result<BlockIndex> {
        if bytes.len() < HEADER_LEN {
            return Err(invalid(format!(
                "{} bytes, shorter than the {HEADER_LEN}-byte header",
                bytes.len()
            )));
        }
        if bytes[..8] != BLOCK_INDEX_MAGIC {
            return Err(invalid("does not start with the magic \"BSLTBIX1\""));
        }
        let blocks = u64_at(bytes, 8);
        let frames = u64::from(u32_at(bytes, 16));
        let deltas = u32_at(bytes, 20);
        if deltas > MAX_DELTAS {
            return Err(invalid(format!(
                "{deltas} deltas; an index lists at most {MAX_DELTAS}"
            )));
        }
        let deltas = u64::from(deltas);
        if blocks == 0 || blocks > MAX_BLOCKS {
            return Err(invalid(format!(
                "{blocks} blocks; an index describes 1 to {MAX_BLOCKS}"
            )));
        }
        if frames == 0 || frames > blocks {
            return Err(invalid(format!(
                "{frames} frames for {blocks} blocks; an index lists 1 to {blocks}"
            )));
        }
        let expected = index_len(blocks, frames, deltas);
        if bytes.len() as u64 != expected {
            return Err(invalid(format!(
                "{} bytes, but {blocks} blocks, {frames} frames and {deltas} deltas take \
                 exactly {expected}",
                bytes.len()
            )));
        }
        let table = HEADER_LEN + BLOCK_HASH_LEN * blocks as usize;
        let hashes = bytes[HEADER_LEN..table]
            .chunks_exact(BLOCK_HASH_LEN)
            .map(|c| u64_at(c, 0))
            .collect();
        let delta_table = table + FRAME_RECORD_LEN * frames as usize;
        let records: Vec<FrameRecord> = bytes[table..delta_table]
            .chunks_exact(FRAME_RECORD_LEN)
            .map(|r| {
                let mut d = [0u8; FRAME_DIGEST_LEN];
                d.copy_from_slice(&r[12..28]);
                (u64::from(u32_at(r, 0)), u32_at(r, 4), u32_at(r, 8), d)
            })
            .collect();
        let deltas: Vec<Delta> = bytes[delta_table..]
            .chunks_exact(DELTA_RECORD_LEN)
            .map(|r| {
                let mut from_root = [0u8; 32];
                from_root.copy_from_slice(&r[..32]);
                let mut digest = [0u8; FRAME_DIGEST_LEN];
                digest.copy_from_slice(&r[52..68]);
                let mut ref_digest = [0u8; FRAME_DIGEST_LEN];
                ref_digest.copy_from_slice(&r[68..84]);
                Delta {
                    from_root,
                    first_block: u64::from(u32_at(r, 32)),
                    blocks: u32_at(r, 36),
                    ref_first_block: u64::from(u32_at(r, 40)),
                    ref_blocks: u32_at(r, 44),
                    compressed_offset: 0,
                    compressed_len: u32_at(r, 48),
                    digest,
                    ref_digest,
                }
            })
            .collect();
        let index = BlockIndex::new(hashes, &records, &deltas, artifact)?;
        if index.store_size() != store_size {
            return Err(invalid(format!(
                "frames fill {} bytes, the frame store of artifact {:?} has {store_size}",
                index.store_size(),
                artifact.name
            )));
        }
        Ok(index)
    }

    /// The encoded index (what [`BlockIndex::parse`] reads).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len() as usize);
        out.extend_from_slice(&BLOCK_INDEX_MAGIC);
        out.extend_from_slice(&(self.hashes.len() as u64).to_le_bytes());
        // `new` bounds frames to blocks ≤ MAX_BLOCKS, far below u32::MAX; blocks too, and
        // deltas to MAX_DELTAS.
        out.extend_from_slice(&(self.frames.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.deltas.len() as u32).to_le_bytes());
        for h in &self.hashes {
            out.extend_from_slice(&h.to_le_bytes());
        }
        for f in &self.frames {
            out.extend_from_slice(&(f.first_block as u32).to_le_bytes());
            out.extend_from_slice(&f.blocks.to_le_bytes());
            out.extend_from_slice(&f.compressed_len.to_le_bytes());
            out.extend_from_slice(&f.digest);
        }
        for d in &self.deltas {
            out.extend_from_slice(&d.from_root);
            for x in [
                d.first_block as u32,
                d.blocks,
                d.ref_first_block as u32,
                d.ref_blocks,
                d.compressed_len,
            ] {
                out.extend_from_slice(&x.to_le_bytes());
            }
            out.extend_from_slice(&d.digest);
            out.extend_from_slice(&d.ref_digest);
        }
        out
    }

    /// The length of [`BlockIndex::encode`]'s output.
    pub fn encoded_len(&self) -> u64 {
        index_len(
            self.hashes.len() as u64,
            self.frames.len() as u64,
            self.deltas.len() as u64,
        )
    }

    /// The deltas, in record (= store) order.
    pub fn deltas(&self) -> &[Delta] {
        &self.deltas
    }

    /// The short hash of every block (tree blocks included, unused).
    pub fn hashes(&self) -> &[u64] {
        &self.hashes
    }

    /// The frames, in block order.
    pub fn frames(&self) -> &[StoreFrame] {
        &self.frames
    }

    /// The blocks the node computes (the verity tree).
    pub fn tree(&self) -> TreeBlocks {
        self.tree
    }

    /// Bytes of the frame store (frames, then deltas).
    pub fn store_size(&self) -> u64 {
        let frames = self.frames.last().map_or(0, StoreFrame::compressed_end);
        self.deltas.last().map_or(frames, Delta::compressed_end)
    }

    /// Whether every block of `frame` is in `have` (a node's local blocks, by short hash).
    pub fn frame_present(&self, frame: &StoreFrame, have: &dyn Fn(u64) -> bool) -> bool {
        (frame.first_block..frame.end_block()).all(|b| have(self.hashes[b as usize]))
    }

    /// The frames a node holding the blocks of `have` must fetch.
    pub fn missing_frames<'a>(
        &'a self,
        have: &'a dyn Fn(u64) -> bool,
    ) -> impl Iterator<Item = &'a StoreFrame> + 'a {
        self.frames
            .iter()
            .filter(move |f| !self.frame_present(f, have))
    }

    /// Where a node holding the blocks of `have`, booted from the release whose usr root
    /// hash is `booted_root`, gets each frame: a frame whose blocks are all local is copied;
    /// a delta from `booted_root` is used when it covers at least one frame that is not
    /// (it then rebuilds every frame it covers); the rest is fetched. The one rule both the
    /// node and `basalt release inspect` follow.
    pub fn plan(&self, have: &dyn Fn(u64) -> bool, booted_root: &[u8; 32]) -> Vec<FrameSource> {
        let mut plan: Vec<FrameSource> = self
            .frames
            .iter()
            .map(|f| {
                if self.frame_present(f, have) {
                    FrameSource::Local
                } else {
                    FrameSource::Fetch
                }
            })
            .collect();
        for (k, d) in self.deltas.iter().enumerate() {
            if d.from_root != *booted_root {
                continue;
            }
            let first = self.frame_at(d.first_block);
            let last = self.frame_at(d.end_block() - 1);
            let (Some(first), Some(last)) = (first, last) else {
                continue;
            };
            if plan[first..=last].contains(&FrameSource::Fetch) {
                plan[first..=last].fill(FrameSource::Delta(k));
            }
        }
        plan
    }

    /// The frame holding `block`, if a frame does.
    pub fn frame_at(&self, block: u64) -> Option<usize> {
        let k = self.frames.partition_point(|f| f.end_block() <= block);
        (k < self.frames.len() && self.frames[k].first_block <= block).then_some(k)
    }

    /// Bytes a node running the release whose block hashes are `old` and whose usr root
    /// hash is `old_root` downloads to install this one adaptively: this index, the frames
    /// it fetches and the deltas it uses ([`BlockIndex::plan`]). What `basalt release
    /// inspect` prints per earlier release.
    pub fn expected_download(&self, old: &HashSet<u64>, old_root: &[u8; 32]) -> u64 {
        let have = |h: u64| old.contains(&h);
        self.encoded_len() + self.plan_bytes(&self.plan(&have, old_root))
    }

    /// Bytes of the store a node following `plan` fetches: its frames and its deltas.
    pub fn plan_bytes(&self, plan: &[FrameSource]) -> u64 {
        let mut bytes = 0;
        let mut last_delta = None;
        for (f, p) in self.frames.iter().zip(plan) {
            match *p {
                FrameSource::Local => {}
                FrameSource::Fetch => bytes += u64::from(f.compressed_len),
                FrameSource::Delta(k) => {
                    if last_delta != Some(k) {
                        bytes += u64::from(self.deltas[k].compressed_len);
                        last_delta = Some(k);
                    }
                }
            }
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Digest;
    use crate::manifest::{ArtifactKind, HashAlgorithm, Verity};

    /// 10 data blocks, superblock at block 10, tree (1 block) at 11, statement at 12.
    fn artifact() -> Artifact {
        Artifact {
            kind: ArtifactKind::Usr,
            name: "usr.img".into(),
            size: 13 * 4096,
            sha256: Digest([1; 32]),
            compression: None,
            verity: Some(Verity {
                root_hash: Digest([2; 32]),
                salt: String::new(),
                data_blocks: 10,
                hash_offset: 10 * 4096,
                hash_algorithm: HashAlgorithm::Sha256,
                data_block_size: 4096,
                hash_block_size: 4096,
            }),
        }
    }

    fn records() -> Vec<FrameRecord> {
        vec![
            (0, 4, 100, [1; 16]),
            (4, 7, 50, [2; 16]),
            (12, 1, 10, [3; 16]),
        ]
    }

    fn sample() -> BlockIndex {
        BlockIndex::new((0..13).collect(), &records(), &[], &artifact()).unwrap()
    }

    fn reason(bytes: &[u8], store: u64) -> String {
        match BlockIndex::parse(bytes, &artifact(), store) {
            Err(Error::InvalidContent { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn round_trip_offsets_and_tree() {
        let index = sample();
        let bytes = index.encode();
        assert_eq!(bytes.len() as u64, index_len(13, 3, 0));
        let back = BlockIndex::parse(&bytes, &artifact(), 160).unwrap();
        assert_eq!(back, index);
        assert_eq!(
            back.tree(),
            TreeBlocks {
                first: 11,
                count: 1
            }
        );
        let f = back.frames()[2];
        assert_eq!((f.compressed_offset, f.end_block()), (150, 13));
        let old: HashSet<u64> = (0..11).collect();
        // Only the last frame (block 12) is missing: 10 bytes plus the index.
        assert_eq!(
            back.expected_download(&old, &[0; 32]),
            10 + index_len(13, 3, 0)
        );
        assert_eq!(
            back.expected_download(&HashSet::new(), &[0; 32]),
            160 + index_len(13, 3, 0)
        );
    }

    #[test]
    fn refusals_name_the_problem() {
        let good = sample().encode();
        assert!(reason(&good[..10], 160).contains("shorter than"));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(reason(&bad, 160).contains("magic"));
        let mut bad = good.clone();
        bad[20..24].copy_from_slice(&(MAX_DELTAS + 1).to_le_bytes());
        assert!(reason(&bad, 160).contains("deltas; an index lists at most"));
        let mut bad = good.clone();
        bad[20] = 1;
        assert!(reason(&bad, 160).contains("1 deltas take exactly"));
        let mut bad = good.clone();
        bad[8..16].copy_from_slice(&0u64.to_le_bytes());
        assert!(reason(&bad, 160).contains("0 blocks"));
        let mut bad = good.clone();
        bad[8..16].copy_from_slice(&(MAX_BLOCKS + 1).to_le_bytes());
        assert!(reason(&bad, 160).contains("blocks; an index describes"));
        let mut bad = good.clone();
        bad[16..20].copy_from_slice(&14u32.to_le_bytes());
        assert!(reason(&bad, 160).contains("14 frames for 13 blocks"));
        assert!(reason(&good[..good.len() - 1], 160).contains("take exactly"));
        assert!(reason(&good, 161).contains("frame store"));
        let t = HEADER_LEN + 8 * 13;
        // A gap, an overlap with the tree, a too-long frame, a zero compressed length.
        let mut bad = good.clone();
        bad[t + 28..t + 32].copy_from_slice(&5u32.to_le_bytes());
        assert!(reason(&bad, 160).contains("starts at block 5, expected 4"));
        let mut bad = good.clone();
        bad[t + 32..t + 36].copy_from_slice(&8u32.to_le_bytes());
        assert!(reason(&bad, 160).contains("overlaps the verity tree"));
        let mut bad = good.clone();
        bad[t + 4..t + 8].copy_from_slice(&65u32.to_le_bytes());
        assert!(reason(&bad, 160).contains("outside 1..=64"));
        let mut bad = good.clone();
        bad[t + 8..t + 12].copy_from_slice(&0u32.to_le_bytes());
        assert!(reason(&bad, 160).contains("compressed length 0"));
    }

    #[test]
    fn builder_refusals() {
        let a = artifact();
        let err = |h: Vec<u64>, r: &[FrameRecord]| match BlockIndex::new(h, r, &[], &a) {
            Err(Error::InvalidContent { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(err((0..12).collect(), &records()).contains("13 blocks"));
        let mut r = records();
        r.pop();
        assert!(err((0..13).collect(), &r).contains("frames end at block 12"));
        assert!(err((0..13).collect(), &[]).contains("0 frames"));
        let mut odd = artifact();
        odd.size += 1;
        assert!(BlockIndex::new((0..13).collect(), &records(), &[], &odd).is_err());
        let mut no_verity = artifact();
        no_verity.verity = None;
        assert!(BlockIndex::new((0..13).collect(), &records(), &[], &no_verity).is_err());
    }

    fn delta(from: u8, first_block: u64, blocks: u32, len: u32) -> Delta {
        Delta {
            from_root: [from; 32],
            first_block,
            blocks,
            ref_first_block: 3,
            ref_blocks: 9,
            compressed_offset: 0,
            compressed_len: len,
            digest: [from; 16],
            ref_digest: [from ^ 0xff; 16],
        }
    }

    /// Frames (0,2) (2,2) (4,7) (12,1): finer cuts than `records()` so deltas can cover
    /// some of them.
    fn fine_records() -> Vec<FrameRecord> {
        vec![
            (0, 2, 40, [1; 16]),
            (2, 2, 60, [2; 16]),
            (4, 7, 50, [3; 16]),
            (12, 1, 10, [4; 16]),
        ]
    }

    #[test]
    fn deltas_round_trip_and_follow_the_frames_in_the_store() {
        let deltas = [delta(7, 0, 4, 30), delta(8, 2, 2, 5), delta(7, 4, 7, 20)];
        let index =
            BlockIndex::new((0..13).collect(), &fine_records(), &deltas, &artifact()).unwrap();
        let bytes = index.encode();
        assert_eq!(bytes.len() as u64, index_len(13, 4, 3));
        // Frames fill 160 bytes; the deltas follow in record order.
        let back = BlockIndex::parse(&bytes, &artifact(), 160 + 55).unwrap();
        assert_eq!(back, index);
        let offsets: Vec<u64> = back.deltas().iter().map(|d| d.compressed_offset).collect();
        assert_eq!(offsets, vec![160, 190, 195]);
        assert_eq!(back.deltas()[2].ref_digest, [7 ^ 0xff; 16]);
        assert!(matches!(
            BlockIndex::parse(&bytes, &artifact(), 160),
            Err(Error::InvalidContent { .. })
        ));
    }

    #[test]
    fn the_plan_uses_a_delta_only_from_the_booted_release_and_only_where_blocks_lack() {
        let deltas = [delta(7, 0, 4, 30), delta(8, 2, 2, 5), delta(7, 4, 7, 20)];
        let index =
            BlockIndex::new((0..13).collect(), &fine_records(), &deltas, &artifact()).unwrap();
        // Blocks 2 and 3 are missing, everything else is local.
        let old: HashSet<u64> = (0..13).filter(|b| *b != 2 && *b != 3).collect();
        let have = |h: u64| old.contains(&h);
        use FrameSource::*;
        // Booted 7: its first delta covers frames 0 and 1 (1 lacks blocks) and is used for
        // both; its second covers frame 2 only, which is local, so it is not used.
        assert_eq!(
            index.plan(&have, &[7; 32]),
            vec![Delta(0), Delta(0), Local, Local]
        );
        assert_eq!(
            index.expected_download(&old, &[7; 32]),
            30 + index.encoded_len()
        );
        assert_eq!(
            index.plan(&have, &[8; 32]),
            vec![Local, Delta(1), Local, Local]
        );
        assert_eq!(
            index.expected_download(&old, &[8; 32]),
            5 + index.encoded_len()
        );
        // Booted from a release no delta names: the frame is fetched.
        assert_eq!(
            index.plan(&have, &[9; 32]),
            vec![Local, Fetch, Local, Local]
        );
        assert_eq!(
            index.expected_download(&old, &[9; 32]),
            60 + index.encoded_len()
        );
        assert_eq!(index.frame_at(3), Some(1));
        assert_eq!(index.frame_at(11), None);
        assert_eq!(index.frame_at(12), Some(3));
    }

    #[test]
    fn delta_refusals_name_the_problem() {
        let a = artifact();
        let err = |d: &[Delta]| match BlockIndex::new((0..13).collect(), &fine_records(), d, &a) {
            Err(Error::InvalidContent { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(err(&[delta(7, 1, 3, 9)]).contains("does not cover whole frames"));
        assert!(err(&[delta(7, 0, 3, 9)]).contains("does not cover whole frames"));
        // Frames 2 and 3 are contiguous around the tree only in block numbers: 4..13 covers
        // the superblock, the tree (block 11) and the statement.
        assert!(err(&[delta(7, 4, 9, 9)]).contains("overlaps the verity tree"));
        assert!(err(&[delta(7, 0, 0, 9)]).contains("rebuilds 0 blocks"));
        assert!(err(&[delta(7, 0, MAX_DELTA_BLOCKS + 1, 9)]).contains("outside 1..=256"));
        let mut d = delta(7, 0, 2, 9);
        d.ref_blocks = MAX_DELTA_REF_BLOCKS + 1;
        assert!(err(&[d]).contains("blocks of reference"));
        assert!(err(&[delta(7, 0, 2, 0)]).contains("compressed length 0"));
        assert!(err(&[delta(7, 0, 2, MAX_DELTA_LEN + 1)]).contains("compressed length"));
        assert!(err(&[delta(7, 2, 2, 9), delta(7, 0, 4, 9)]).contains("starts before the end"));
        // The same blocks from two different releases are fine.
        let ok = [delta(7, 0, 4, 9), delta(8, 0, 4, 9)];
        assert!(BlockIndex::new((0..13).collect(), &fine_records(), &ok, &a).is_ok());
    }

    #[cfg(all(feature = "codec", feature = "sign"))]
    #[test]
    fn deltas_decode_with_their_reference_only() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let reference: Vec<u8> = (0..3 * 4096u32)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut target = reference[4096..].to_vec();
        target[100] ^= 0x55;
        target.extend_from_slice(&reference[..4096]);
        let d = delta_encode(&reference, &target, 3).unwrap();
        assert!(d.len() < 200, "{} bytes", d.len());
        let mut out = Vec::with_capacity(target.len());
        delta_decode(&reference, &d, &mut out).unwrap();
        assert_eq!(out, target);
        let mut wrong = reference.clone();
        wrong[5000] ^= 1;
        let mut out = Vec::with_capacity(target.len());
        let _ = delta_decode(&wrong, &d, &mut out);
        assert!(out != target, "a wrong reference decoded to the target");
    }

    #[test]
    fn tree_geometry_matches_verity() {
        for (data, tree) in [
            (1, 0),
            (2, 1),
            (128, 1),
            (129, 3),
            (16384, 129),
            (16385, 132),
        ] {
            assert_eq!(basalt_verity_tree_blocks(data), tree, "{data} data blocks");
        }
    }

    proptest::proptest! {
        /// Any valid index survives encode → parse unchanged, and any single flipped byte in
        /// the header or table is either refused or parsed into a different index.
        #[test]
        fn encode_parse_round_trip(lens in proptest::collection::vec((1u32..=64, 1u32..5000), 1..40)) {
            // Data blocks = sum of lens; then superblock, tree, one statement block.
            let data: u64 = lens.iter().map(|(n, _)| u64::from(*n)).sum();
            let tree = basalt_verity_tree_blocks(data);
            let mut a = artifact();
            let v = a.verity.as_mut().unwrap();
            v.data_blocks = data;
            v.hash_offset = data * 4096;
            a.size = (data + 1 + tree + 1) * 4096;
            let mut recs = Vec::new();
            let mut b = 0u64;
            for (n, c) in &lens {
                recs.push((b, *n, *c, [(*c % 251) as u8; 16]));
                b += u64::from(*n);
            }
            recs.push((data, 1, 7, [0; 16]));
            recs.push((data + 1 + tree, 1, 9, [0; 16]));
            let total = data + 2 + tree;
            let index = BlockIndex::new((0..total).map(|x| x * 31).collect(), &recs, &[], &a).unwrap();
            let bytes = index.encode();
            let parsed = BlockIndex::parse(&bytes, &a, index.store_size()).unwrap();
            proptest::prop_assert_eq!(parsed, index);
        }
    }
}
