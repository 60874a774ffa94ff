//! Adaptive install of a `usr` image: reuse every block the booted slot already holds,
//! rebuild runs of rebuilt binaries from binary deltas against the booted release, fetch
//! only the frames that hold the other blocks it lacks (format: `basalt_manifest::adaptive`).
//!
//! ```text
//!  index:   fetch the block index (size and sha256 from the signed manifest) → parse
//!  local:   read the booted slot through its hash tree (basalt_verity::VerifiedBlocks, the
//!           booted usrhash= as root): every block that matches its tree goes into a map
//!           short hash → block; a bad local block is never in the map, so never copied
//!  resume:  frames 0..k claimed by the journal (key "<artifact>+adaptive") are read back
//!           from the target and checked against the index; fetching starts at the first
//!           mismatch
//!  frames:  in order; all blocks in the map → copy them (each block's short hash checked
//!           again as it is copied); else the frame comes from the frame store: consecutive
//!           missing frames share ONE ranged request; per frame: truncated sha256 == index
//!           (before zstd sees a byte) → decode to exactly its blocks → every block's short
//!           hash == index → write; fdatasync + journal every `checkpoint_bytes`
//!  deltas:  where `BlockIndex::plan` says so (a delta from the booted root hash covering a
//!           frame that is not local): the reference read from the booted slot, its 128-bit
//!           digest == index (else the delta's frames are fetched instead) → the delta in
//!           its own ranged request, digest == index before zstd sees it → decoded with the
//!           reference as prefix → every block's short hash == index → written like frames
//!  tree:    computed from the written data with the signed salt, written after the
//!           superblock (which came from a frame)
//!  whole:   the written artifact read back: sha256 == the signed artifact sha256 (the slot is
//!           byte-identical to a full install); the caller then re-verifies verity and the
//!           usr-hash statement exactly as after a full install
//! ```
//!
//! Any mismatch (a wrong index entry, a corrupt or missing frame, a local block that changed
//! after it was hashed, a booted tree that does not verify) is an error for which
//! [`falls_back`] is true: the caller then installs from the full stream. Network failures,
//! cancellation and local I/O errors are not: the download fails as usual and its retry
//! resumes here.
//!
//! Memory: the index (8 bytes per block + 28 per frame, ≈ 0.9 MB for a 315 MB image), the
//! local map (16 bytes per local block, ≈ 1.2 MB), one frame (≤ 256 KiB) and its compressed
//! bytes; with deltas, a reference (≤ 3 MiB), the output (≤ 1 MiB) and the delta (≤ 1 MiB);
//! all dropped when the install returns. Then the tree (1/128 of the data) while it is
//! computed.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use basalt_disk::Slot;
use basalt_manifest::adaptive::{block_hash, frame_digest, BlockIndex, FrameSource, BLOCK_SIZE};
use basalt_manifest::{repo, AdaptiveRef, Artifact, Verity};
use basalt_verity::{Device, VerifiedBlocks};
use ring::digest::{Context, SHA256};

use super::error::{Checked, Error};
use super::stream::{finish, Meter, Sink, Streamed};
use crate::engine::CancelFlag;
use crate::source::{ByteRange, Source, SourceError};

/// The journal key of an adaptive install of `artifact`.
pub fn journal_key(artifact: &str) -> String {
    format!("{artifact}+adaptive")
}

/// The booted slot, read through its hash tree.
#[derive(Debug, Clone, Copy)]
pub struct Local<'a> {
    pub disk: &'a Path,
    pub slot: Slot,
    pub data_offset: u64,
    pub verity_offset: u64,
    /// The booted root hash (`usrhash=`, what basalt-init verified against its signature).
    pub root_hash: [u8; 32],
}

/// Everything [`install`] needs besides the sink.
#[derive(Debug)]
pub struct AdaptiveJob<'a> {
    pub source: &'a dyn Source,
    pub artifact: &'a Artifact,
    pub refs: &'a AdaptiveRef,
    pub verity: &'a Verity,
    pub salt: &'a [u8],
    pub local: Local<'a>,
    /// Frames the journal claims are written.
    pub claimed: usize,
    pub checkpoint_bytes: u64,
    pub cancel: &'a CancelFlag,
}

/// Whether a failed adaptive install should be followed by a full-stream install (see the
/// module docs): integrity and format problems yes; cancellation, network trouble that a
/// retry resumes, and local I/O no.
pub fn falls_back(e: &Error) -> bool {
    match e {
        Error::Cancelled { .. } | Error::Io { .. } | Error::Disk { .. } => false,
        Error::Fetch { source, .. } => matches!(
            source,
            SourceError::NotFound { .. } | SourceError::Status { .. } | SourceError::Length { .. }
        ),
        _ => true,
    }
}

fn cancelled(job: &AdaptiveJob<'_>, frame: usize) -> Result<(), Error> {
    if job.cancel.is_cancelled() {
        return Err(Error::Cancelled {
            during: format!(
                "installing {} adaptively (frame {frame})",
                job.artifact.name
            ),
        });
    }
    Ok(())
}

fn index_error(job: &AdaptiveJob<'_>, location: &str, reason: String) -> Error {
    Error::FrameIndex {
        artifact: job.artifact.name.clone(),
        location: location.to_owned(),
        source: Box::new(basalt_manifest::Error::InvalidContent {
            document: basalt_manifest::Document::BlockIndex,
            reason,
        }),
    }
}

/// Fetch and check the block index.
fn fetch_index(job: &AdaptiveJob<'_>) -> Result<BlockIndex, Error> {
    let r = &job.refs.block_index;
    let rel = repo::blob_path(&r.sha256);
    let location = job.source.location(&rel);
    let bytes = job
        .source
        .read_small(&rel, r.size)
        .map_err(|source| Error::Fetch {
            what: format!("block index of {}", job.artifact.name),
            source,
        })?;
    if bytes.len() as u64 != r.size {
        return Err(Error::Length {
            artifact: job.artifact.name.clone(),
            location,
            detail: format!(
                "block index of {} bytes, the manifest says {}",
                bytes.len(),
                r.size
            ),
        });
    }
    let found = super::stream::sha256(&bytes);
    if found != r.sha256 {
        return Err(Error::Digest {
            artifact: job.artifact.name.clone(),
            location,
            what: Checked::BlockIndex,
            expected: r.sha256.to_hex(),
            found: found.to_hex(),
        });
    }
    BlockIndex::parse(&bytes, job.artifact, job.refs.frame_store.size).map_err(|e| {
        Error::FrameIndex {
            artifact: job.artifact.name.clone(),
            location,
            source: Box::new(e),
        }
    })
}

/// Short hash → block of the booted slot, for every block that matches its tree; and the
/// slot's number of data blocks.
fn local_map(job: &AdaptiveJob<'_>) -> Result<(HashMap<u64, u32>, u64), Error> {
    let l = job.local;
    let file = std::fs::File::open(l.disk).map_err(super::error::io("open", l.disk))?;
    let dev = Device::new(&file, l.disk);
    let local_err = |source| Error::LocalSlot {
        slot: l.slot,
        source,
    };
    let reader = VerifiedBlocks::open(dev, l.data_offset, dev, l.verity_offset, &l.root_hash)
        .map_err(local_err)?;
    let mut map = HashMap::with_capacity(reader.data_blocks() as usize);
    let mut buf = vec![0u8; 128 * BLOCK_SIZE as usize];
    let mut bad = 0u64;
    for w in 0..reader.windows() {
        cancelled(job, 0)?;
        let ok = reader.read_window(w, &mut buf).map_err(local_err)?;
        for (i, good) in ok.iter().enumerate() {
            let block = w * 128 + i as u64;
            if !good {
                bad += 1;
                continue;
            }
            let bytes = &buf[i * BLOCK_SIZE as usize..(i + 1) * BLOCK_SIZE as usize];
            // Blocks past u32::MAX are not indexed (16 TiB slots); never the case here.
            if let Ok(b) = u32::try_from(block) {
                map.entry(block_hash(bytes)).or_insert(b);
            }
        }
    }
    if bad > 0 {
        tracing::warn!(slot = %l.slot, bad, "blocks of the booted slot do not match its hash tree; they are not reused");
    }
    Ok((map, reader.data_blocks()))
}

/// Read back frames `0..claimed` from the target; the first frame that does not match its
/// block hashes is where installing resumes.
fn resume_point(
    job: &AdaptiveJob<'_>,
    index: &BlockIndex,
    sink: &mut dyn Sink,
    meter: &mut Meter<'_>,
) -> Result<usize, Error> {
    let mut buf = Vec::new();
    for (k, f) in index.frames().iter().enumerate().take(job.claimed) {
        cancelled(job, k)?;
        buf.resize(f.blocks as usize * BLOCK_SIZE as usize, 0);
        sink.read_at(f.first_block * BLOCK_SIZE, &mut buf)?;
        if !blocks_match(index, f.first_block, &buf) {
            tracing::info!(artifact = %job.artifact.name, frame = k, "frame does not match on resume; installing from here");
            return Ok(k);
        }
        meter.done += buf.len() as u64;
        meter.reused += buf.len() as u64;
        meter.tick();
    }
    Ok(job.claimed.min(index.frames().len()))
}

/// Every block of `bytes`, written from block `first` on, has its short hash in the index.
fn blocks_match(index: &BlockIndex, first: u64, bytes: &[u8]) -> bool {
    bytes
        .chunks_exact(BLOCK_SIZE as usize)
        .zip(first..)
        .all(|(b, n)| index.hashes().get(n as usize) == Some(&block_hash(b)))
}

/// An adaptive install is used when the frames to fetch are below 4/5 of the full stream's
/// compressed size (a booted slot that shares little, e.g. another product, is better served
/// by the stream: better compressed and one request).
const WORTH_NUM: u64 = 4;
const WORTH_DEN: u64 = 5;

/// What [`install`] did.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// The slot holds the artifact, byte-identical to a full install.
    Installed(Streamed),
    /// Nothing was written: the full stream is the better way (`fetched`: the index).
    NotWorthIt { fetched: u64 },
}

/// An open ranged request over consecutive missing frames of the store.
struct Run {
    body: Box<dyn Read + Send>,
    /// The frame after the last one this request covers.
    end: usize,
}

/// Install `job.artifact` into `sink` (see the module docs). `checkpoint(n)` is called after
/// frames `0..n` are durable in the sink.
pub fn install(
    job: &AdaptiveJob<'_>,
    sink: &mut dyn Sink,
    meter: &mut Meter<'_>,
    checkpoint: &mut dyn FnMut(usize) -> Result<(), Error>,
) -> Result<Outcome, Error> {
    let index = fetch_index(job)?;
    meter.fetched += job.refs.block_index.size;
    let (map, local_blocks) = local_map(job)?;
    let have = |h: u64| map.contains_key(&h);
    let mut plan = index.plan(&have, &job.local.root_hash);
    // Worth it? Bytes to fetch against the full stream (better compressed, one request).
    let missing = index.plan_bytes(&plan);
    if let Some(full) = job.artifact.compression.as_ref().map(|c| c.compressed_size) {
        if missing.saturating_mul(WORTH_DEN) >= full.saturating_mul(WORTH_NUM) {
            tracing::info!(artifact = %job.artifact.name, missing, full, "the booted slot shares too little with the release; installing from the full stream");
            return Ok(Outcome::NotWorthIt {
                fetched: job.refs.block_index.size,
            });
        }
    }
    let mut stats = Streamed {
        fetched: job.refs.block_index.size,
        ..Streamed::default()
    };
    let store_rel = repo::blob_path(&job.refs.frame_store.sha256);
    let location = job.source.location(&store_rel);
    let frames = index.frames();
    let start = resume_point(job, &index, sink, meter)?;
    let local_file =
        std::fs::File::open(job.local.disk).map_err(super::error::io("open", job.local.disk))?;
    let mut decoder = zstd::bulk::Decompressor::new().map_err(|e| Error::Decode {
        artifact: job.artifact.name.clone(),
        frame: start,
        len: 0,
        detail: e.to_string(),
    })?;
    let mut run: Option<Run> = None;
    let mut comp = Vec::new();
    let mut out = Vec::new();
    let mut reference = Vec::new();
    let mut since_checkpoint = 0u64;
    let bs = BLOCK_SIZE as usize;
    // Frames 0..verified are written (not yet durable).
    let mut verified = start;
    let mut deltas_used = 0usize;
    let looped = (|| -> Result<(), Error> {
        let mut i = start;
        while i < frames.len() {
            cancelled(job, i)?;
            let f = frames[i];
            // The frames `i..next` this step writes, from `f.first_block`.
            let next;
            match plan[i] {
                FrameSource::Delta(k) => {
                    let d = index.deltas()[k];
                    let last = index.frame_at(d.end_block() - 1).unwrap_or(i);
                    let applied = if f.first_block == d.first_block {
                        let local = LocalRef {
                            file: &local_file,
                            blocks: local_blocks,
                        };
                        apply_delta(
                            job,
                            &index,
                            k,
                            local,
                            &location,
                            &mut comp,
                            &mut reference,
                            &mut out,
                        )?
                    } else {
                        // Resumed inside the delta's frames: finish them frame by frame.
                        false
                    };
                    if !applied {
                        for j in i..=last {
                            plan[j] = if index.frame_present(&frames[j], &have) {
                                FrameSource::Local
                            } else {
                                FrameSource::Fetch
                            };
                        }
                        continue;
                    }
                    run = None;
                    deltas_used += 1;
                    stats.fetched += u64::from(d.compressed_len);
                    meter.fetched += u64::from(d.compressed_len);
                    next = last + 1;
                }
                FrameSource::Local => {
                    run = None;
                    let len = f.blocks as usize * bs;
                    out.clear();
                    out.resize(len, 0);
                    for (k, block) in (f.first_block..f.end_block()).enumerate() {
                        let want = index.hashes()[block as usize];
                        let at = map.get(&want).copied().unwrap_or_default();
                        let piece = &mut out[k * bs..(k + 1) * bs];
                        use std::os::unix::fs::FileExt;
                        local_file
                            .read_exact_at(
                                piece,
                                job.local.data_offset + u64::from(at) * BLOCK_SIZE,
                            )
                            .map_err(super::error::io("read the booted slot on", job.local.disk))?;
                        if block_hash(piece) != want {
                            return Err(Error::Digest {
                                artifact: job.artifact.name.clone(),
                                location: format!(
                                    "{} slot {}",
                                    job.local.disk.display(),
                                    job.local.slot
                                ),
                                what: Checked::Block(u64::from(at)),
                                expected: format!("{want:016x}"),
                                found: format!("{:016x}", block_hash(piece)),
                            });
                        }
                    }
                    stats.reused += len as u64;
                    meter.reused += len as u64;
                    next = i + 1;
                }
                FrameSource::Fetch => {
                    let len = f.blocks as usize * bs;
                    if run.as_ref().is_none_or(|r| r.end <= i) {
                        let end = plan[i..]
                            .iter()
                            .position(|p| *p != FrameSource::Fetch)
                            .map_or(frames.len(), |p| i + p);
                        let offset = f.compressed_offset;
                        let total = frames[end - 1].compressed_end() - offset;
                        let body = job
                            .source
                            .open(
                                &store_rel,
                                Some(ByteRange {
                                    offset,
                                    len: Some(total),
                                }),
                                Some(total),
                            )
                            .map_err(|source| Error::Fetch {
                                what: format!(
                                    "{} frames {i}..{end} (frame store {})",
                                    job.artifact.name, store_rel
                                ),
                                source,
                            })?;
                        run = Some(Run { body, end });
                    }
                    let Some(r) = run.as_mut() else {
                        continue;
                    };
                    comp.clear();
                    comp.resize(f.compressed_len as usize, 0);
                    read_frame(
                        job,
                        &mut r.body,
                        &mut comp,
                        &location,
                        &format!("frame {i}"),
                    )?;
                    let found = frame_digest(&comp);
                    if found != f.digest {
                        return Err(Error::Digest {
                            artifact: job.artifact.name.clone(),
                            location: location.clone(),
                            what: Checked::StoreFrame(i),
                            expected: hex::encode(f.digest),
                            found: hex::encode(found),
                        });
                    }
                    stats.fetched += comp.len() as u64;
                    meter.fetched += comp.len() as u64;
                    out.clear();
                    out.reserve_exact(len);
                    let n = decoder
                        .decompress_to_buffer(&comp[..], &mut out)
                        .map_err(|e| Error::Decode {
                            artifact: job.artifact.name.clone(),
                            frame: i,
                            len: len as u32,
                            detail: e.to_string(),
                        })?;
                    if n != len || out.len() != len {
                        return Err(Error::Decode {
                            artifact: job.artifact.name.clone(),
                            frame: i,
                            len: len as u32,
                            detail: format!("it decodes to {n} bytes"),
                        });
                    }
                    if !blocks_match(&index, f.first_block, &out) {
                        return Err(index_error(
                            job,
                            &location,
                            format!("frame {i} decodes to blocks whose hashes are not the index's"),
                        ));
                    }
                    next = i + 1;
                }
            }
            sink.write_at(f.first_block * BLOCK_SIZE, &out)?;
            meter.done += out.len() as u64;
            meter.tick();
            verified = next;
            since_checkpoint += out.len() as u64;
            if since_checkpoint >= job.checkpoint_bytes && next < frames.len() {
                sink.sync()?;
                checkpoint(next)?;
                since_checkpoint = 0;
            }
            i = next;
        }
        Ok(())
    })();
    if let Err(e) = looped {
        // Keep what was written and checked, so a retry resumes after it (the same order as
        // a checkpoint: sync before the journal names the frames).
        if verified > start && sink.sync().is_ok() {
            let _ = checkpoint(verified);
        }
        return Err(e);
    }
    drop(map);
    if deltas_used > 0 {
        tracing::info!(artifact = %job.artifact.name, deltas = deltas_used, "blocks rebuilt from binary deltas against the booted slot");
    }
    sink.sync()?;
    checkpoint(frames.len())?;
    write_tree(job, &index, sink)?;
    check_whole(job, sink)?;
    meter.emit();
    Ok(Outcome::Installed(stats))
}

/// Read exactly `buf.len()` bytes of `what` ("frame 3", "delta 1") from a ranged body.
fn read_frame(
    job: &AdaptiveJob<'_>,
    body: &mut Box<dyn Read + Send>,
    buf: &mut [u8],
    location: &str,
    what: &str,
) -> Result<(), Error> {
    let mut got = 0usize;
    while got < buf.len() {
        match body.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(Error::Fetch {
                    what: format!("{} {what} (frame store)", job.artifact.name),
                    source: SourceError::Transport {
                        location: location.to_owned(),
                        detail: format!(
                            "the body ended inside {what} ({got} of {} bytes)",
                            buf.len()
                        ),
                    },
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                // A body that breaks off is a network failure, whatever the source calls it:
                // the retry resumes from the last checkpoint instead of falling back (a
                // store that is really short fails at the next open, which falls back).
                let source = match e.into_inner().map(|inner| inner.downcast::<SourceError>()) {
                    Some(Ok(s)) => match *s {
                        SourceError::Length { location, detail } => SourceError::Transport {
                            location,
                            detail: format!("body length wrong: {detail}"),
                        },
                        other => other,
                    },
                    Some(Err(other)) => SourceError::Transport {
                        location: location.to_owned(),
                        detail: other.to_string(),
                    },
                    None => SourceError::Transport {
                        location: location.to_owned(),
                        detail: "the body could not be read".into(),
                    },
                };
                return Err(Error::Fetch {
                    what: format!("{} {what} (frame store)", job.artifact.name),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// The booted slot's data as a delta reads it.
#[derive(Clone, Copy)]
struct LocalRef<'a> {
    file: &'a std::fs::File,
    /// Its data blocks (a reference must lie among them).
    blocks: u64,
}

/// Rebuild the blocks of delta `k` into `out`: fetch it (its own ranged request), check its
/// digest before zstd sees it, read its reference from the booted slot and check that
/// digest, decode, check every block's short hash. `Ok(false)`: the booted slot does not
/// hold the reference (a block that changed, a reference outside the slot), so the caller
/// fetches the delta's frames instead. Errors: a delta that does not match the index (falls
/// back to the full stream), network and local I/O failures (retried).
#[allow(clippy::too_many_arguments)]
fn apply_delta(
    job: &AdaptiveJob<'_>,
    index: &BlockIndex,
    k: usize,
    local: LocalRef<'_>,
    location: &str,
    comp: &mut Vec<u8>,
    reference: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<bool, Error> {
    use std::os::unix::fs::FileExt;
    let d = index.deltas()[k];
    let bs = BLOCK_SIZE as usize;
    if d.ref_first_block + u64::from(d.ref_blocks) > local.blocks {
        tracing::warn!(artifact = %job.artifact.name, delta = k, "the delta's reference lies outside the booted slot; fetching its frames");
        return Ok(false);
    }
    reference.clear();
    reference.resize(d.ref_blocks as usize * bs, 0);
    local
        .file
        .read_exact_at(
            reference,
            job.local.data_offset + d.ref_first_block * BLOCK_SIZE,
        )
        .map_err(super::error::io("read the booted slot on", job.local.disk))?;
    if frame_digest(reference) != d.ref_digest {
        tracing::warn!(artifact = %job.artifact.name, delta = k, slot = %job.local.slot, "the booted slot does not hold the delta's reference; fetching its frames");
        return Ok(false);
    }
    let store_rel = repo::blob_path(&job.refs.frame_store.sha256);
    let len = u64::from(d.compressed_len);
    let mut body = job
        .source
        .open(
            &store_rel,
            Some(ByteRange {
                offset: d.compressed_offset,
                len: Some(len),
            }),
            Some(len),
        )
        .map_err(|source| Error::Fetch {
            what: format!("{} delta {k} (frame store {store_rel})", job.artifact.name),
            source,
        })?;
    comp.clear();
    comp.resize(d.compressed_len as usize, 0);
    read_frame(job, &mut body, comp, location, &format!("delta {k}"))?;
    let found = frame_digest(comp);
    if found != d.digest {
        return Err(Error::Digest {
            artifact: job.artifact.name.clone(),
            location: location.to_owned(),
            what: Checked::Delta(k),
            expected: hex::encode(d.digest),
            found: hex::encode(found),
        });
    }
    let want = d.blocks as usize * bs;
    out.clear();
    out.reserve_exact(want);
    let bad = |detail: String| Error::Decode {
        artifact: job.artifact.name.clone(),
        frame: index.frame_at(d.first_block).unwrap_or_default(),
        len: want as u32,
        detail: format!("delta {k}: {detail}"),
    };
    let n = basalt_manifest::adaptive::delta_decode(reference, comp, out).map_err(bad)?;
    if n != want || out.len() != want {
        return Err(bad(format!("it decodes to {n} bytes, not {want}")));
    }
    if !blocks_match(index, d.first_block, out) {
        return Err(index_error(
            job,
            location,
            format!("delta {k} decodes to blocks whose hashes are not the index's"),
        ));
    }
    Ok(true)
}

/// Compute the verity tree over the written data with the signed salt
/// (`basalt_verity::tree`, on all cores) and write it after the superblock.
fn write_tree(job: &AdaptiveJob<'_>, index: &BlockIndex, sink: &mut dyn Sink) -> Result<(), Error> {
    let tree = index.tree();
    if tree.count == 0 {
        return Ok(());
    }
    let bytes = {
        let Some((file, path, data_offset)) = sink.data_device() else {
            return Err(Error::State {
                path: job.local.disk.to_path_buf(),
                reason: "this sink cannot be read as a device to compute the hash tree".into(),
            });
        };
        let (bytes, _root) = basalt_verity::tree(
            Device::new(file, path),
            data_offset,
            job.verity.data_blocks,
            job.salt,
            0,
        )
        .map_err(|source| Error::LocalSlot {
            slot: !job.local.slot,
            source,
        })?;
        bytes
    };
    sink.write_at(tree.first * BLOCK_SIZE, &bytes)?;
    sink.sync()
}

/// The written artifact, read back, has the signed SHA-256.
fn check_whole(job: &AdaptiveJob<'_>, sink: &mut dyn Sink) -> Result<(), Error> {
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < job.artifact.size {
        cancelled(job, 0)?;
        let n = (job.artifact.size - off).min(buf.len() as u64) as usize;
        sink.read_at(off, &mut buf[..n])?;
        ctx.update(&buf[..n]);
        off += n as u64;
    }
    let found = finish(ctx);
    if found != job.artifact.sha256 {
        return Err(Error::Digest {
            artifact: job.artifact.name.clone(),
            location: format!("slot written adaptively on {}", job.local.disk.display()),
            what: Checked::Artifact,
            expected: job.artifact.sha256.to_hex(),
            found: found.to_hex(),
        });
    }
    Ok(())
}
