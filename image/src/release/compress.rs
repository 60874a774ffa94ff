//! Compressing an artifact as independent zstd frames, frames compressed in parallel.
//!
//! The artifact is cut into frames of `frame_len` uncompressed bytes (the last one shorter);
//! each frame is compressed on its own (`zstd::bulk`), so it decodes on its own and a node can
//! check and resume frame by frame (see `basalt_manifest::frames`). The concatenation of the
//! frames is a valid zstd stream (`zstd -dc BLOB` gives back the artifact).
//!
//! Parallelism: frames are handled in batches of `2 × threads`; the batch is read, compressed
//! by `threads` scoped workers, then hashed and written in order. Memory is therefore about
//! `4 × threads × frame_len` (a batch of inputs and outputs), independent of the artifact's
//! size. The input is read with `pread` and the output written sequentially.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use basalt_manifest::{Digest, FrameIndex};
use ring::digest::{Context, SHA256};

/// What compressing an artifact produced.
#[derive(Debug, Clone)]
pub struct Compressed {
    /// The artifact's length and SHA-256 (as read while compressing).
    pub size: u64,
    pub sha256: Digest,
    /// The compressed blob's length and SHA-256.
    pub compressed_size: u64,
    pub compressed_sha256: Digest,
    /// The frame index of the blob.
    pub index: FrameIndex,
}

/// How to compress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressOptions {
    /// zstd level (see `release::DEFAULT_ZSTD_LEVEL` for the measured choice).
    pub level: i32,
    /// Uncompressed bytes per frame (`basalt_manifest::frames::DEFAULT_FRAME_LEN`).
    pub frame_len: u32,
    /// Worker threads; 0 = one per available core.
    pub threads: usize,
}

/// Why compressing failed: reading, a frame's zstd call, writing, or the index.
#[derive(Debug)]
pub enum CompressError {
    /// Reading the artifact.
    Read(std::io::Error),
    /// zstd refused a frame.
    Frame {
        frame: usize,
        source: std::io::Error,
    },
    /// Writing the blob.
    Write(std::io::Error),
    /// The frame index (too many frames, bad lengths).
    Index(basalt_manifest::Error),
}

fn finish(ctx: Context) -> Digest {
    let mut d = [0u8; 32];
    d.copy_from_slice(ctx.finish().as_ref());
    Digest(d)
}

fn sha256(bytes: &[u8]) -> Digest {
    Digest::of(bytes)
}

/// What [`compress_ranges`] calls per frame, in order: `(frame, input, compressed)`.
pub type EachFrame<'a> = dyn FnMut(usize, &[u8], &[u8]) -> Result<(), CompressError> + 'a;

/// Compress each `(offset, len)` range of `input` as one independent zstd frame at `level`,
/// on `threads` workers (0 = one per core), and hand `(range index, input, compressed)` to
/// `each` in range order. Memory: a batch of `2 × threads` inputs and outputs.
pub fn compress_ranges(
    input: &File,
    ranges: &[(u64, usize)],
    level: i32,
    threads: usize,
    each: &mut EachFrame<'_>,
) -> Result<(), CompressError> {
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    let batch = 2 * threads;
    let mut first = 0usize;
    while first < ranges.len() {
        let count = batch.min(ranges.len() - first);
        // Read the batch.
        let mut inputs = Vec::with_capacity(count);
        for &(off, n) in &ranges[first..first + count] {
            let mut buf = vec![0u8; n];
            input
                .read_exact_at(&mut buf, off)
                .map_err(CompressError::Read)?;
            inputs.push(buf);
        }
        // Compress it on `threads` workers.
        let outputs: Vec<Mutex<Option<std::io::Result<Vec<u8>>>>> =
            (0..count).map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..threads.min(count) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    let result = zstd::bulk::compress(&inputs[i], level);
                    *outputs[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
                });
            }
        });
        // Hand on in order.
        for (k, (input, output)) in inputs.iter().zip(outputs).enumerate() {
            let frame = first + k;
            let compressed = output
                .into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_else(|| Err(std::io::Error::other("frame was not compressed")))
                .map_err(|source| CompressError::Frame { frame, source })?;
            each(frame, input, &compressed)?;
        }
        first += count;
    }
    Ok(())
}

/// Compress the `len` bytes of `input` into `out` as independent zstd frames.
pub fn compress_frames(
    input: &File,
    len: u64,
    out: &mut dyn Write,
    opts: &CompressOptions,
) -> Result<Compressed, CompressError> {
    let frame_len = u64::from(opts.frame_len.max(1));
    let ranges: Vec<(u64, usize)> = (0..len.div_ceil(frame_len))
        .map(|i| {
            let off = i * frame_len;
            (off, frame_len.min(len - off) as usize)
        })
        .collect();
    let mut records: Vec<(u32, u32, Digest, Digest)> = Vec::with_capacity(ranges.len());
    let (mut whole, mut whole_compressed) = (Context::new(&SHA256), Context::new(&SHA256));
    let mut compressed_size = 0u64;
    compress_ranges(
        input,
        &ranges,
        opts.level,
        opts.threads,
        &mut |frame, input, compressed| {
            whole.update(input);
            whole_compressed.update(compressed);
            out.write_all(compressed).map_err(CompressError::Write)?;
            compressed_size += compressed.len() as u64;
            let too_long = |n: usize| {
                u32::try_from(n).map_err(|_| CompressError::Frame {
                    frame,
                    source: std::io::Error::other(format!("frame of {n} bytes")),
                })
            };
            records.push((
                too_long(compressed.len())?,
                too_long(input.len())?,
                sha256(compressed),
                sha256(input),
            ));
            Ok(())
        },
    )?;
    out.flush().map_err(CompressError::Write)?;
    let index = FrameIndex::from_records(&records).map_err(CompressError::Index)?;
    Ok(Compressed {
        size: len,
        sha256: finish(whole),
        compressed_size,
        compressed_sha256: finish(whole_compressed),
        index,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_decode_alone_and_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        let data: Vec<u8> = (0..100_000u32)
            .map(|i| (i % 251) as u8 ^ (i >> 9) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let f = File::open(&path).unwrap();
        let mut blob = Vec::new();
        let opts = CompressOptions {
            level: 3,
            frame_len: 16 << 10,
            threads: 3,
        };
        let c = compress_frames(&f, data.len() as u64, &mut blob, &opts).unwrap();
        assert_eq!(c.index.frames().len(), 7);
        assert_eq!(c.size, data.len() as u64);
        assert_eq!(c.sha256, sha256(&data));
        assert_eq!(c.compressed_size, blob.len() as u64);
        assert_eq!(c.compressed_sha256, sha256(&blob));
        // The whole blob is one zstd stream of the artifact.
        assert_eq!(zstd::decode_all(&blob[..]).unwrap(), data);
        // Each frame decodes alone to its slice, with the indexed hashes.
        for f in c.index.frames() {
            let comp = &blob[f.compressed_offset as usize..f.compressed_end() as usize];
            assert_eq!(sha256(comp), f.compressed_sha256);
            let plain = zstd::bulk::decompress(comp, f.len as usize).unwrap();
            assert_eq!(plain, data[f.offset as usize..f.end() as usize]);
            assert_eq!(sha256(&plain), f.sha256);
        }
    }
}
