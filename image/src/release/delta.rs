//! The publisher's binary deltas (format and node rules: `basalt_manifest::adaptive`, "Binary
//! deltas"): runs of a new `usr.img`'s blocks rebuilt from runs of an earlier release's
//! blocks, compressed by zstd with those earlier blocks as prefix (`zstd --patch-from`).
//!
//! **Which blocks, from which reference.** Per earlier release (one of the channel's last
//! [`super::adaptive::HISTORY`]) the frames a node on it would fetch are grouped into
//! *regions*: runs of missing frames, joined across gaps of at most [`GAP_BLOCKS`] present
//! blocks (a rebuilt binary keeps a few blocks unchanged here and there). A region's earlier
//! counterpart is found from **anchors**, the nearest blocks before and after it that the
//! earlier release holds exactly once: erofs lays files out in a stable order, so the blocks
//! between the two anchors there are the region's earlier version (a rebuilt file, its
//! neighbours). No erofs parser and no file names are needed, and the rule works for any
//! content. A region is cut into pieces of at most [`MAX_DELTA_BLOCKS`] whole frames; each
//! piece's reference is the proportional part of the earlier range widened on both sides to
//! at most [`MAX_DELTA_REF_BLOCKS`] (code moves a little between builds). A piece is kept
//! only when its delta is smaller than the missing frames it replaces.
//!
//! Why over the *stored* (lz4hc) blocks and not the files' bytes: a patch over a file's
//! bytes is 2–3× smaller (containerd: 1.36 MB against 2.8 MB), but the node would then have
//! to recompress it into erofs' exact pclusters, or erofs would have to store such files
//! uncompressed (+28 % per slot for the containerd family). Measured on the real packages:
//! `docs/ARCHITECTURE.md`, "Binary deltas".
//!
//! The reference is read back from the earlier release's frame store (decoded frames, each
//! checked against its index entry), so publishing needs nothing but the repository.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use basalt_manifest::adaptive::{
    delta_decode, delta_encode, frame_digest, BlockIndex, Delta, StoreFrame, BLOCK_SIZE,
    DELTA_RECORD_LEN, MAX_DELTA_BLOCKS, MAX_DELTA_LEN, MAX_DELTA_REF_BLOCKS,
};

use super::adaptive::Previous;

/// Present blocks a region may span between two missing frames.
pub const GAP_BLOCKS: u64 = 16;
/// Regions with fewer missing blocks get no delta (their frames are small anyway).
pub const MIN_REGION_BLOCKS: u64 = 32;
/// How far from a region an anchor is looked for.
pub const ANCHOR_SEARCH: u64 = 1024;

/// A delta to try: blocks `first..first+blocks` of the new image from blocks
/// `ref_first..ref_first+ref_blocks` of an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub first: u64,
    pub blocks: u32,
    pub ref_first: u64,
    pub ref_blocks: u32,
    /// Compressed bytes of the missing frames it would replace.
    pub frames_bytes: u64,
}

/// Where the deltas from one earlier release could go (see the module docs). `hashes`,
/// `frames` and `data_blocks` describe the new image; `old` is the earlier release's block
/// hashes, of which the first `old_data_blocks` are data.
pub fn candidates(
    hashes: &[u64],
    frames: &[StoreFrame],
    data_blocks: u64,
    old: &[u64],
    old_data_blocks: u64,
) -> Vec<Candidate> {
    let old_data = &old[..(old_data_blocks as usize).min(old.len())];
    let present: HashSet<u64> = old.iter().copied().collect();
    // Short hash → its only position among the earlier data blocks (None: it repeats).
    let mut unique: HashMap<u64, Option<u64>> = HashMap::with_capacity(old_data.len());
    for (b, h) in old_data.iter().enumerate() {
        unique
            .entry(*h)
            .and_modify(|p| *p = None)
            .or_insert(Some(b as u64));
    }
    let anchor = |b: u64| unique.get(&hashes[b as usize]).copied().flatten();
    let data_frames: Vec<&StoreFrame> = frames
        .iter()
        .take_while(|f| f.end_block() <= data_blocks)
        .collect();
    let missing = |f: &StoreFrame| {
        (f.first_block..f.end_block()).any(|b| !present.contains(&hashes[b as usize]))
    };
    // Regions: (first frame, last frame) over runs of missing frames with small gaps.
    let mut regions: Vec<(usize, usize)> = Vec::new();
    for (k, f) in data_frames.iter().enumerate() {
        if !missing(f) {
            continue;
        }
        match regions.last_mut() {
            Some((_, last)) if f.first_block - data_frames[*last].end_block() <= GAP_BLOCKS => {
                *last = k;
            }
            _ => regions.push((k, k)),
        }
    }
    let mut out = Vec::new();
    for (a, z) in regions {
        let frames = &data_frames[a..=z];
        let missing_blocks: u64 = frames
            .iter()
            .filter(|f| missing(f))
            .map(|f| u64::from(f.blocks))
            .sum();
        if missing_blocks < MIN_REGION_BLOCKS {
            continue;
        }
        let start = frames[0].first_block;
        let end = frames[frames.len() - 1].end_block();
        // Anchors: the nearest uniquely placed blocks before and after the region.
        let before = (start.saturating_sub(ANCHOR_SEARCH)..start)
            .rev()
            .find_map(|b| anchor(b).map(|p| p + (start - b)));
        let Some(old_start) = before else {
            continue;
        };
        let after = (end..(end + ANCHOR_SEARCH).min(data_blocks))
            .find_map(|b| anchor(b).and_then(|q| q.checked_sub(b - end)));
        let old_end = after
            .unwrap_or(old_start + (end - start))
            .min(old_data_blocks);
        if old_end <= old_start {
            continue;
        }
        let (new_len, old_len) = (end - start, old_end - old_start);
        // Pieces of whole frames, at most MAX_DELTA_BLOCKS each.
        let mut k = 0;
        while k < frames.len() {
            let s = frames[k].first_block;
            let mut e = frames[k].end_block();
            let mut bytes = if missing(frames[k]) {
                u64::from(frames[k].compressed_len)
            } else {
                0
            };
            k += 1;
            while k < frames.len()
                && frames[k].end_block() - s <= u64::from(MAX_DELTA_BLOCKS)
                && frames[k].first_block == e
            {
                if missing(frames[k]) {
                    bytes += u64::from(frames[k].compressed_len);
                }
                e = frames[k].end_block();
                k += 1;
            }
            if bytes == 0 {
                continue;
            }
            let (ref_first, ref_blocks) = reference(
                old_start + (s - start) * old_len / new_len,
                old_start + (e - start) * old_len / new_len,
                old_data_blocks,
            );
            if ref_blocks == 0 {
                continue;
            }
            out.push(Candidate {
                first: s,
                blocks: (e - s) as u32,
                ref_first,
                ref_blocks,
                frames_bytes: bytes,
            });
        }
    }
    out
}

/// The earlier blocks `lo..hi` widened evenly on both sides to [`MAX_DELTA_REF_BLOCKS`]
/// (or narrowed around their middle to it), within `0..limit`.
fn reference(lo: u64, hi: u64, limit: u64) -> (u64, u32) {
    let max = u64::from(MAX_DELTA_REF_BLOCKS).min(limit);
    let hi = hi.max(lo + 1);
    let mid = (lo + hi) / 2;
    let start = mid.saturating_sub(max / 2).min(limit - max);
    (start, max as u32)
}

/// Blocks `first..first+count` of an earlier release's usr data, decoded from its frame store
/// (each frame checked against its index entry).
pub fn read_blocks(prev: &Previous, first: u64, count: u64) -> Result<Vec<u8>, String> {
    let store = File::open(&prev.store).map_err(|e| format!("{}: {e}", prev.store.display()))?;
    read_blocks_from(&store, &prev.store, &prev.index, first, count)
}

fn read_blocks_from(
    store: &File,
    path: &Path,
    index: &BlockIndex,
    first: u64,
    count: u64,
) -> Result<Vec<u8>, String> {
    let bs = BLOCK_SIZE as usize;
    let mut out = vec![0u8; count as usize * bs];
    let mut b = first;
    let end = first + count;
    let mut comp = Vec::new();
    let mut frame = Vec::new();
    while b < end {
        let k = index
            .frame_at(b)
            .ok_or_else(|| format!("block {b} is in no frame of {}", path.display()))?;
        let f = index.frames()[k];
        comp.resize(f.compressed_len as usize, 0);
        store
            .read_exact_at(&mut comp, f.compressed_offset)
            .map_err(|e| format!("{} frame {k}: {e}", path.display()))?;
        if frame_digest(&comp) != f.digest {
            return Err(format!(
                "{} frame {k} does not match its index entry",
                path.display()
            ));
        }
        frame.clear();
        frame.reserve_exact(f.blocks as usize * bs);
        zstd::bulk::Decompressor::new()
            .and_then(|mut d| d.decompress_to_buffer(&comp[..], &mut frame))
            .map_err(|e| format!("{} frame {k}: {e}", path.display()))?;
        if frame.len() != f.blocks as usize * bs {
            return Err(format!(
                "{} frame {k} decodes to {} bytes",
                path.display(),
                frame.len()
            ));
        }
        let upto = end.min(f.end_block());
        let from = ((b - f.first_block) as usize) * bs;
        let to = ((upto - f.first_block) as usize) * bs;
        let at = ((b - first) as usize) * bs;
        out[at..at + (to - from)].copy_from_slice(&frame[from..to]);
        b = upto;
    }
    Ok(out)
}

/// What [`make`] produced: the deltas (compressed offsets not yet set) and their bytes, in
/// record order.
pub type Made = Vec<MadeOne>;

/// One delta and its compressed bytes.
pub type MadeOne = (Delta, Vec<u8>);

/// The deltas of the new image (`usr`, its short `hashes` and `frames`, `data_blocks` data
/// blocks) from each of `previous`, compressed at `level` on `threads` threads. A release
/// whose blocks cannot be read is skipped with a warning (deltas only save bytes).
pub fn make(
    usr: &File,
    hashes: &[u64],
    frames: &[StoreFrame],
    data_blocks: u64,
    previous: &[Previous],
    level: i32,
    threads: usize,
) -> std::io::Result<Made> {
    let mut out = Made::new();
    for prev in previous {
        let cands = candidates(
            hashes,
            frames,
            data_blocks,
            prev.index.hashes(),
            prev.data_blocks,
        );
        if cands.is_empty() {
            continue;
        }
        let store = match File::open(&prev.store) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(from = %prev.version, store = %prev.store.display(), %e, "no deltas from this release");
                continue;
            }
        };
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<MadeOne>>> = Mutex::new(vec![None; cands.len()]);
        let failure: Mutex<Option<std::io::Error>> = Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..threads.max(1) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(c) = cands.get(i) else { break };
                    match one(usr, &store, prev, c, level) {
                        Ok(Some(d)) => {
                            if let Ok(mut r) = results.lock() {
                                r[i] = Some(d);
                            }
                        }
                        Ok(None) => {}
                        Err(One::Io(e)) => {
                            if let Ok(mut f) = failure.lock() {
                                f.get_or_insert(e);
                            }
                            break;
                        }
                        Err(One::Skip(reason)) => {
                            tracing::warn!(from = %prev.version, block = c.first, %reason, "delta skipped")
                        }
                    }
                });
            }
        });
        if let Some(e) = failure.into_inner().ok().flatten() {
            return Err(e);
        }
        let made: Made = results
            .into_inner()
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .collect();
        tracing::info!(
            from = %prev.version,
            candidates = cands.len(),
            kept = made.len(),
            bytes = made.iter().map(|(_, b)| b.len() as u64).sum::<u64>(),
            replaces = made.iter().map(|(d, _)| cands.iter().find(|c| c.first == d.first_block).map_or(0, |c| c.frames_bytes)).sum::<u64>(),
            "binary deltas"
        );
        out.extend(made);
    }
    Ok(out)
}

enum One {
    /// Reading the new image failed: the publish fails.
    Io(std::io::Error),
    /// This candidate only: the earlier store is unreadable, zstd refused, or the delta does
    /// not decode back.
    Skip(String),
}

fn one(
    usr: &File,
    store: &File,
    prev: &Previous,
    c: &Candidate,
    level: i32,
) -> Result<Option<MadeOne>, One> {
    let reference = read_blocks_from(
        store,
        &prev.store,
        &prev.index,
        c.ref_first,
        u64::from(c.ref_blocks),
    )
    .map_err(One::Skip)?;
    let mut target = vec![0u8; c.blocks as usize * BLOCK_SIZE as usize];
    usr.read_exact_at(&mut target, c.first * BLOCK_SIZE)
        .map_err(One::Io)?;
    let delta = delta_encode(&reference, &target, level).map_err(One::Skip)?;
    // Worth it only when smaller than the frames it replaces (and within the format's bound,
    // which only incompressible data could reach).
    if delta.len() as u64 + DELTA_RECORD_LEN as u64 >= c.frames_bytes
        || delta.len() > MAX_DELTA_LEN as usize
    {
        return Ok(None);
    }
    // The node's decoder must give the target back: check it here, once, not on every node.
    let mut back = Vec::with_capacity(target.len());
    delta_decode(&reference, &delta, &mut back).map_err(One::Skip)?;
    if back != target {
        return Err(One::Skip("the delta does not decode to its target".into()));
    }
    Ok(Some((
        Delta {
            from_root: prev.root,
            first_block: c.first,
            blocks: c.blocks,
            ref_first_block: c.ref_first,
            ref_blocks: c.ref_blocks,
            compressed_offset: 0,
            compressed_len: delta.len() as u32,
            digest: frame_digest(&delta),
            ref_digest: frame_digest(&reference),
        },
        delta,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames_of(cuts: &[(u64, u32)]) -> Vec<StoreFrame> {
        cuts.iter()
            .map(|&(first_block, blocks)| StoreFrame {
                first_block,
                blocks,
                compressed_offset: 0,
                compressed_len: blocks * 1000,
                digest: [0; 16],
            })
            .collect()
    }

    #[test]
    fn a_rebuilt_run_gets_a_reference_between_its_anchors() {
        // Old: 0..100 unique, 100..400 the "binary" (hashes 1000+), 400..500 unique.
        let old: Vec<u64> = (0..100)
            .chain(1000..1300)
            .chain(100..200)
            .collect::<Vec<u64>>();
        // New: 20 blocks inserted before; the binary rebuilt (hashes 5000+) except 3 blocks.
        let mut new: Vec<u64> = (9000..9020).chain(0..100).collect();
        new.extend((0..300).map(|i| if i % 100 == 50 { 1000 + i } else { 5000 + i }));
        new.extend(100..200);
        let data = new.len() as u64;
        // Frames of ≤ 64 blocks, cut where presence changes (what cut_frames does).
        let mut cuts = vec![(0u64, 20u32), (20, 64), (84, 36)];
        let mut b = 120u64;
        while b < 420 {
            let n = (420 - b).min(64) as u32;
            cuts.push((b, n));
            b += u64::from(n);
        }
        cuts.push((420, 64));
        cuts.push((484, 36));
        let frames = frames_of(&cuts);
        let c = candidates(&new, &frames, data, &old, old.len() as u64);
        // The 20 inserted blocks have no anchor before them: no delta. The binary: pieces
        // of whole frames, ≤ 256 blocks, reference around old 100..400.
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!((c[0].first, c[0].blocks), (120, 256));
        assert_eq!((c[1].first, c[1].blocks), (376, 44));
        for x in &c {
            assert!(x.ref_first + u64::from(x.ref_blocks) <= old.len() as u64);
            assert_eq!(x.ref_blocks, (old.len() as u32).min(MAX_DELTA_REF_BLOCKS));
        }
        assert_eq!(c[0].frames_bytes, 256 * 1000);
    }

    #[test]
    fn reference_window_is_bounded_and_inside_the_data() {
        assert_eq!(reference(0, 10, 100), (0, 100));
        assert_eq!(reference(1000, 1256, 5000), (744, 768));
        assert_eq!(reference(4900, 5000, 5000), (4232, 768));
        assert_eq!(reference(10, 10, 5000), (0, 768));
    }
}
