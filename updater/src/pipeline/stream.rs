//! Streaming one artifact, frame by frame, from the repository into a sink.
//!
//! ```text
//!  resume:  frames 0..k claimed by the journal ─▶ read back from the sink, re-hashed;
//!           the first mismatch is where fetching starts (never trusting half-written data)
//!  fetch:   ONE ranged request from frame k's compressed offset to the end of the blob
//!           for each frame: read its compressed bytes (cancel checked per 256 KiB)
//!                        → sha256 == index? (before the decoder sees a byte)
//!                        → zstd-decode into a buffer of exactly its length
//!                        → sha256 == index? (not with verify behind, below)
//!                        → write at its offset in the sink
//!           every `checkpoint_bytes`: fdatasync the sink, then record the frames in the
//!           journal; at the end: the body must be over (no extra byte), sync, record;
//!           when the body fails: sync, record the frames verified before the failure
//!  whole:   the artifact's sha256 over every frame (re-read ones included); the blob's
//!           compressed sha256 when the stream started at byte 0
//! ```
//!
//! Memory: three compressed frames (reading, queued, decoding) and one decoded frame (4 MiB
//! each as published; at most `frames::MAX_FRAME_LEN`), whatever the artifact's size. The
//! two threads let reading and hashing overlap with decoding and writing; progress is still
//! reported from the calling thread.
//!
//! **Verify behind** (the usr image into a slot, [`StreamJob::behind`]): a third thread
//! re-reads the slot's data part from the device as soon as a checkpoint made it durable
//! (`fdatasync`, then the page cache for that range dropped), hashing it into the verity
//! tree's level 0 ([`basalt_verity::Level0Builder`], one SHA-256 kept, whatever the size).
//! The final check ([`super::reverify`]) then reads only the tree and compares its level 0
//! with that digest instead of reading the whole slot again after the download: the same
//! bytes read back from the same device, with the second core doing it while the first
//! downloads (measured: 512 MiB installed in 2.20 s before, see docs/benchmarks-agent.md).
//! Anything that keeps the digest from covering every data block (an I/O error in the
//! thread, an interrupted stream) leaves [`Streamed::level0`] empty, and the final check
//! reads the data again as before.
//!
//! With verify behind, three digests are not computed as the bytes flow: the blob's
//! compressed SHA-256, the artifact's SHA-256, and each *decoded* frame's SHA-256. On a
//! 2-core node the install is CPU-bound (every pass over the image costs ≈ 0.25 s per
//! 512 MiB here), and they prove nothing more. The frame index is named by its SHA-256 in
//! the signed manifest and covers exactly the artifact's compressed and uncompressed sizes;
//! every frame's compressed bytes are checked against it before the decoder sees them, so
//! what is decoded is fixed by signed bytes (zstd decoding is deterministic); and the bytes
//! that will boot are read back from the device and bound to the signed root hash (data and
//! tree) and the signed statement. A decoder fault or an index whose decoded digests
//! disagree with its compressed ones is therefore still refused, at the final check, naming
//! the block, and the slot stays not bootable. Resuming still re-hashes every frame the
//! journal claims against its decoded digest before trusting it. The other artifacts
//! (kernel, initrd, extensions: small) keep every digest.

use std::io::Read;

use basalt_disk::RangeWriter;
use basalt_manifest::{Digest, FrameIndex};
use ring::digest::{Context, SHA256};

use super::error::{Checked, Error};
use super::io::Disk;
use super::plan::Fetch;
use crate::engine::{CancelFlag, Phase, Progress};
use crate::source::{ByteRange, Source, SourceError};

/// Bytes read from the source per call (cancellation and progress granularity).
const READ_CHUNK: usize = 256 << 10;
/// Bytes per write into the sink (progress granularity: at least once per MiB).
const WRITE_CHUNK: usize = 1 << 20;

pub(crate) fn sha256(bytes: &[u8]) -> Digest {
    Digest::of(bytes)
}

pub(crate) fn finish(ctx: Context) -> Digest {
    let mut d = [0u8; 32];
    d.copy_from_slice(ctx.finish().as_ref());
    Digest(d)
}

/// Where an artifact's bytes go, by offset in the artifact.
pub trait Sink {
    /// Write `buf` at artifact offset `offset`.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), Error>;
    /// Read back `buf.len()` bytes at artifact offset `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Error>;
    /// Make everything written durable.
    fn sync(&mut self) -> Result<(), Error>;
    /// A read-only handle, its path and the byte offset of artifact offset 0 in it, when
    /// the artifact's data part is one contiguous range of one file or device (a slot's data
    /// partition): what the adaptive install hashes the verity tree from.
    fn data_device(&self) -> Option<(&std::fs::File, &std::path::Path, u64)> {
        None
    }
}

/// `usr.img` into a slot being installed: bytes before `hash_offset` go to the data
/// partition at the same offset, the rest to the verity partition from its start.
pub struct SlotSink {
    pub data: RangeWriter<Box<dyn Disk>>,
    pub verity: RangeWriter<Box<dyn Disk>>,
    /// A read-only handle on the disk for reading frames back.
    pub reader: std::fs::File,
    pub disk: std::path::PathBuf,
    pub data_offset: u64,
    pub verity_offset: u64,
    pub hash_offset: u64,
}

impl std::fmt::Debug for SlotSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotSink")
            .field("disk", &self.disk)
            .field("data_offset", &self.data_offset)
            .field("verity_offset", &self.verity_offset)
            .field("hash_offset", &self.hash_offset)
            .finish_non_exhaustive()
    }
}

impl SlotSink {
    /// Split `[offset, offset + len)` of the artifact at `hash_offset`: pieces of
    /// `(is_data, offset in that partition, start in buf, len)`.
    fn split(&self, offset: u64, len: usize) -> Vec<(bool, u64, usize, usize)> {
        let end = offset + len as u64;
        let mut out = Vec::with_capacity(2);
        if offset < self.hash_offset {
            let n = (end.min(self.hash_offset) - offset) as usize;
            out.push((true, offset, 0, n));
        }
        if end > self.hash_offset {
            let start = offset.max(self.hash_offset);
            let skip = (start - offset) as usize;
            out.push((false, start - self.hash_offset, skip, len - skip));
        }
        out
    }
}

impl Sink for SlotSink {
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), Error> {
        for (is_data, at, start, n) in self.split(offset, buf.len()) {
            let (w, base) = if is_data {
                (&mut self.data, self.data_offset)
            } else {
                (&mut self.verity, self.verity_offset)
            };
            w.set_position(at)
                .and_then(|()| w.write(&buf[start..start + n]))
                .map_err(super::error::disk("write the slot"))?;
            start_writeback(&self.reader, base + at, n as u64);
        }
        Ok(())
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        use std::os::unix::fs::FileExt;
        for (is_data, at, start, n) in self.split(offset, buf.len()) {
            let base = if is_data {
                self.data_offset
            } else {
                self.verity_offset
            };
            self.reader
                .read_exact_at(&mut buf[start..start + n], base + at)
                .map_err(super::error::io("read back the slot on", &self.disk))?;
        }
        Ok(())
    }

    fn data_device(&self) -> Option<(&std::fs::File, &std::path::Path, u64)> {
        Some((&self.reader, &self.disk, self.data_offset))
    }

    fn sync(&mut self) -> Result<(), Error> {
        self.data
            .sync()
            .and_then(|()| self.verity.sync())
            .map_err(super::error::disk("sync the slot"))
    }
}

/// Ask the kernel to start writing `[offset, offset + len)` of the disk back now
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, asynchronous): the checkpoints' and the final
/// `fdatasync` then find most pages already on their way, so writing overlaps with fetching
/// and decoding instead of stalling at each sync. Advice only: durability still comes from
/// `fdatasync`, and a failure here changes nothing.
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range on a descriptor we own; no memory is passed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// A staged file (kernel, initrd) in the state folder.
pub struct FileSink {
    pub file: Box<dyn Disk>,
    pub path: std::path::PathBuf,
}

impl std::fmt::Debug for FileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Sink for FileSink {
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<(), Error> {
        use std::io::{Seek, SeekFrom, Write};
        self.file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| self.file.write_all(buf))
            .map_err(super::error::io("write", &self.path))
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        use std::io::{Seek, SeekFrom};
        self.file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| self.file.read_exact(buf))
            .map_err(super::error::io("read back", &self.path))
    }

    fn sync(&mut self) -> Result<(), Error> {
        self.file
            .sync_data()
            .map_err(super::error::io("sync", &self.path))
    }
}

/// Progress across the artifacts of one call.
pub struct Meter<'a> {
    pub report: &'a mut dyn FnMut(&Progress),
    pub phase: Phase,
    pub done: u64,
    pub total: u64,
    pub fetched: u64,
    pub reused: u64,
    last: u64,
}

impl std::fmt::Debug for Meter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter")
            .field("phase", &self.phase)
            .field("done", &self.done)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl<'a> Meter<'a> {
    pub fn new(report: &'a mut dyn FnMut(&Progress), total: u64) -> Self {
        Meter {
            report,
            phase: Phase::Downloading,
            done: 0,
            total,
            fetched: 0,
            reused: 0,
            last: 0,
        }
    }

    /// Report now.
    pub fn emit(&mut self) {
        self.last = self.done;
        (self.report)(&Progress {
            phase: self.phase,
            done: self.done,
            total: self.total,
            fetched: self.fetched,
            reused: self.reused,
        });
    }

    /// Report if a MiB passed since the last report.
    pub fn tick(&mut self) {
        if self.done.saturating_sub(self.last) >= 1 << 20 || self.done < self.last {
            self.emit();
        }
    }

    /// Switch to `phase` with `total` bytes.
    pub fn phase(&mut self, phase: Phase, total: u64) {
        self.phase = phase;
        self.done = 0;
        self.total = total;
        self.emit();
    }
}

/// What streaming one artifact did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Streamed {
    /// Compressed bytes fetched.
    pub fetched: u64,
    /// Uncompressed bytes kept from earlier (re-verified).
    pub reused: u64,
    /// With [`StreamJob::behind`]: the SHA-256 of the verity tree's level 0, computed from
    /// every data block read back from the device once durable (see the module docs).
    pub level0: Option<[u8; 32]>,
}

/// The verity parameters of an artifact whose data part is re-read while it streams (see
/// the module docs).
#[derive(Debug, Clone, Copy)]
pub struct VerifyBehind<'a> {
    /// The tree's salt.
    pub salt: &'a [u8],
    /// Data blocks the tree covers (the artifact's first `data_blocks * 4096` bytes).
    pub data_blocks: u64,
}

/// Everything [`stream_artifact`] needs besides the sink.
#[derive(Debug)]
pub struct StreamJob<'a> {
    pub source: &'a dyn Source,
    pub fetch: &'a Fetch<'a>,
    pub index: &'a FrameIndex,
    /// Frames the journal claims are written.
    pub claimed: usize,
    pub checkpoint_bytes: u64,
    pub cancel: &'a CancelFlag,
    /// Re-read the data part while streaming (a sink with a [`Sink::data_device`] only).
    pub behind: Option<VerifyBehind<'a>>,
}

fn cancelled(job: &StreamJob<'_>, frame: usize) -> Result<(), Error> {
    if job.cancel.is_cancelled() {
        return Err(Error::Cancelled {
            during: format!("downloading {} (frame {frame})", job.fetch.artifact.name),
        });
    }
    Ok(())
}

/// Map a read error of the body to the pipeline's error.
fn body_error(job: &StreamJob<'_>, location: &str, e: std::io::Error) -> Error {
    let artifact = job.fetch.artifact.name.clone();
    let what = format!("{artifact} (blob {})", job.fetch.blob);
    if e.get_ref().is_some_and(|inner| inner.is::<SourceError>()) {
        if let Some(inner) = e.into_inner() {
            if let Ok(source) = inner.downcast::<SourceError>() {
                return Error::Fetch {
                    what,
                    source: *source,
                };
            }
        }
        return Error::Length {
            artifact,
            location: location.to_owned(),
            detail: "the body could not be read".into(),
        };
    }
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return Error::Length {
            artifact,
            location: location.to_owned(),
            detail: format!(
                "the body ended before the {} signed compressed bytes",
                job.fetch.compressed_size
            ),
        };
    }
    Error::Fetch {
        what,
        source: SourceError::Io {
            location: location.to_owned(),
            source: e,
        },
    }
}

/// A compressed frame whose digest matched, on its way to the decoder.
struct Fetched {
    frame: usize,
    bytes: Vec<u8>,
}

/// The fetch thread: read frames `first..` from `body`, check each compressed digest before
/// handing it on, then require the body to end exactly after the last frame. Returns the
/// blob's digest when the body started at byte 0. Stops quietly when the receiver is gone.
fn fetch_frames(
    job: &StreamJob<'_>,
    mut body: Box<dyn Read + Send>,
    first: usize,
    location: &str,
    tx: std::sync::mpsc::SyncSender<Result<Fetched, Error>>,
    recycled: std::sync::mpsc::Receiver<Vec<u8>>,
    blob_digest: bool,
) -> Result<Option<Digest>, Error> {
    let artifact = job.fetch.artifact;
    // The blob's whole digest adds nothing the frames' do not prove when the data is read
    // back against its verity tree (see the module docs): skipped then.
    let mut blob_ctx = (first == 0 && blob_digest).then(|| Context::new(&SHA256));
    for (i, f) in job.index.frames().iter().enumerate().skip(first) {
        let mut comp = recycled.try_recv().unwrap_or_default();
        comp.clear();
        comp.resize(f.compressed_len as usize, 0);
        let mut got = 0usize;
        let read: Result<(), Error> = (|| {
            while got < comp.len() {
                cancelled(job, i)?;
                let end = (got + READ_CHUNK).min(comp.len());
                match body.read(&mut comp[got..end]) {
                    Ok(0) => {
                        return Err(body_error(
                            job,
                            location,
                            std::io::ErrorKind::UnexpectedEof.into(),
                        ))
                    }
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(body_error(job, location, e)),
                }
            }
            let found = sha256(&comp);
            if found != f.compressed_sha256 {
                return Err(Error::Digest {
                    artifact: artifact.name.clone(),
                    location: location.to_owned(),
                    what: Checked::CompressedFrame(i),
                    expected: f.compressed_sha256.to_hex(),
                    found: found.to_hex(),
                });
            }
            Ok(())
        })();
        if let Err(e) = read {
            // The decoder side reports it (its channel yields the error in order).
            let _ = tx.send(Err(e));
            return Ok(None);
        }
        if let Some(ctx) = blob_ctx.as_mut() {
            ctx.update(&comp);
        }
        if tx
            .send(Ok(Fetched {
                frame: i,
                bytes: comp,
            }))
            .is_err()
        {
            return Ok(None);
        }
    }
    drop(tx);
    // Not one byte more than signed.
    let mut extra = [0u8; 1];
    loop {
        match body.read(&mut extra) {
            Ok(0) => break,
            Ok(_) => {
                return Err(Error::Length {
                    artifact: artifact.name.clone(),
                    location: location.to_owned(),
                    detail: format!(
                        "the body goes on after the {} signed compressed bytes",
                        job.fetch.compressed_size
                    ),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(body_error(job, location, e)),
        }
    }
    Ok(blob_ctx.map(finish))
}

/// Stream one artifact into `sink` (see the module docs). `checkpoint(n)` is called after
/// frames `0..n` are durable in the sink.
pub fn stream_artifact(
    job: &StreamJob<'_>,
    sink: &mut dyn Sink,
    meter: &mut Meter<'_>,
    checkpoint: &mut dyn FnMut(usize) -> Result<(), Error>,
) -> Result<Streamed, Error> {
    let behind = job.behind.and_then(|b| {
        let (file, path, base) = sink.data_device()?;
        let file = file.try_clone().ok()?;
        Some((b, file, path.to_path_buf(), base))
    });
    let Some((b, file, path, base)) = behind else {
        return stream_frames(job, sink, meter, checkpoint, None);
    };
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    std::thread::scope(|scope| {
        let verifier = scope.spawn(move || hash_behind(b, &file, &path, base, rx));
        let notify = |durable: u64| {
            // A verifier that stopped only means the final check reads everything.
            let _ = tx.send(durable);
        };
        let result = stream_frames(job, sink, meter, checkpoint, Some(&notify));
        drop(tx);
        let level0 = verifier.join().ok().flatten();
        result.map(|s| Streamed { level0, ..s })
    })
}

/// The verify-behind thread (see the module docs): for each durable prefix of the artifact
/// (`rx`, in bytes), re-reads the new whole level-0 blocks' worth of data from the device
/// and hashes it; the level-0 digest once every data block is in, else `None`.
fn hash_behind(
    b: VerifyBehind<'_>,
    file: &std::fs::File,
    path: &std::path::Path,
    base: u64,
    rx: std::sync::mpsc::Receiver<u64>,
) -> Option<[u8; 32]> {
    use basalt_verity::{Level0Builder, BLOCK_SIZE, HASHES_PER_BLOCK};
    let device = basalt_verity::Device::new(file, path);
    // One thread: the download has the other core.
    let mut level0 = Level0Builder::new(b.salt, b.data_blocks, 1);
    for durable in rx.iter() {
        let mut upto = (durable / BLOCK_SIZE).min(b.data_blocks);
        if upto < b.data_blocks {
            upto -= upto % HASHES_PER_BLOCK;
        }
        let from = level0.done();
        if upto <= from {
            continue;
        }
        let (at, n) = (base + from * BLOCK_SIZE, upto - from);
        super::reverify::drop_cache(file, at, n * BLOCK_SIZE);
        if let Err(e) = level0.update(device, at, n) {
            tracing::warn!(disk = %path.display(), error = %e, "re-reading the slot during the download failed; it is read again after it");
            return None;
        }
    }
    if level0.done() < b.data_blocks {
        return None;
    }
    level0.finish().ok()
}

/// [`stream_artifact`]'s frames. `behind`, when the data part is read back while it streams
/// (see the module docs), is told each time the artifact's first `n` bytes are durable on
/// the sink (at least); the whole digests are skipped then.
fn stream_frames(
    job: &StreamJob<'_>,
    sink: &mut dyn Sink,
    meter: &mut Meter<'_>,
    checkpoint: &mut dyn FnMut(usize) -> Result<(), Error>,
    behind: Option<&dyn Fn(u64)>,
) -> Result<Streamed, Error> {
    let durable = |n: u64| {
        if let Some(tell) = behind {
            tell(n);
        }
    };
    let artifact = job.fetch.artifact;
    let frames = job.index.frames();
    let location = job.source.location(&job.fetch.blob);
    let digest_err = |what: Checked, expected: &Digest, found: &Digest| Error::Digest {
        artifact: artifact.name.clone(),
        location: location.clone(),
        what,
        expected: expected.to_hex(),
        found: found.to_hex(),
    };
    // The artifact's whole SHA-256: redundant when the data part is read back against its
    // verity tree (see the module docs), so skipped then; checked for everything else.
    let check_whole = behind.is_none();
    let mut whole = Context::new(&SHA256);
    let mut out: Vec<u8> = Vec::new();
    let mut stats = Streamed::default();

    // 1. Re-verify what the journal claims.
    let mut k = 0usize;
    while k < job.claimed.min(frames.len()) {
        cancelled(job, k)?;
        let f = frames[k];
        out.resize(f.len as usize, 0);
        sink.read_at(f.offset, &mut out)?;
        if sha256(&out) != f.sha256 {
            tracing::info!(artifact = %artifact.name, frame = k, "frame does not match on resume; fetching from here");
            break;
        }
        if check_whole {
            whole.update(&out);
        }
        stats.reused += u64::from(f.len);
        meter.done += u64::from(f.len);
        meter.reused += u64::from(f.len);
        meter.tick();
        k += 1;
    }
    // What the journal claimed was synced before it was recorded.
    durable(frames.get(k).map_or(u64::MAX, |f| f.offset));

    // 2. Fetch the rest with one ranged request: a fetch thread reads and checks the
    //    compressed frames, this thread decodes, checks and writes them.
    if k < frames.len() {
        let start = frames[k].compressed_offset;
        let len = job.fetch.compressed_size - start;
        let range = (start > 0).then_some(ByteRange {
            offset: start,
            len: None,
        });
        let body = job
            .source
            .open(&job.fetch.blob, range, Some(len))
            .map_err(|source| Error::Fetch {
                what: format!(
                    "{} (blob {}) from byte {start}",
                    artifact.name, job.fetch.blob
                ),
                source,
            })?;
        let mut decoder = zstd::bulk::Decompressor::new().map_err(|e| Error::Decode {
            artifact: artifact.name.clone(),
            frame: k,
            len: 0,
            detail: e.to_string(),
        })?;
        // One frame in the channel, one being read, one being decoded: bounded memory.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Fetched, Error>>(1);
        // Decoded-from buffers go back to the fetcher: no allocation per frame.
        let (back_tx, back_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let fetched_blob = std::thread::scope(|scope| -> Result<Option<Digest>, Error> {
            let fetcher =
                scope.spawn(|| fetch_frames(job, body, k, &location, tx, back_rx, check_whole));
            // Frames 0..verified are decoded, checked and written (not yet durable).
            let mut verified = k;
            let written = (|| -> Result<(), Error> {
                let mut since_checkpoint = 0u64;
                for msg in rx.iter() {
                    let Fetched {
                        frame: i,
                        bytes: comp,
                    } = msg?;
                    let f = frames[i];
                    stats.fetched += comp.len() as u64;
                    meter.fetched += comp.len() as u64;
                    cancelled(job, i)?;
                    // Decode into exactly its length.
                    out.clear();
                    out.reserve_exact(f.len as usize);
                    let n = decoder
                        .decompress_to_buffer(&comp[..], &mut out)
                        .map_err(|e| Error::Decode {
                            artifact: artifact.name.clone(),
                            frame: i,
                            len: f.len,
                            detail: e.to_string(),
                        })?;
                    if n != f.len as usize || out.len() != f.len as usize {
                        return Err(Error::Decode {
                            artifact: artifact.name.clone(),
                            frame: i,
                            len: f.len,
                            detail: format!("it decodes to {n} bytes"),
                        });
                    }
                    if check_whole {
                        let found = sha256(&out);
                        if found != f.sha256 {
                            return Err(digest_err(Checked::Frame(i), &f.sha256, &found));
                        }
                        whole.update(&out);
                    }
                    for (j, piece) in out.chunks(WRITE_CHUNK).enumerate() {
                        sink.write_at(f.offset + (j * WRITE_CHUNK) as u64, piece)?;
                        meter.done += piece.len() as u64;
                        meter.tick();
                    }
                    let _ = back_tx.try_send(comp);
                    verified = i + 1;
                    since_checkpoint += u64::from(f.len);
                    if since_checkpoint >= job.checkpoint_bytes && i + 1 < frames.len() {
                        sink.sync()?;
                        checkpoint(i + 1)?;
                        durable(frames[i + 1].offset);
                        since_checkpoint = 0;
                    }
                }
                Ok(())
            })();
            // Stop the fetcher (its next send fails) before waiting for it.
            drop(rx);
            let fetch_result = fetcher.join().unwrap_or_else(|_| {
                Err(Error::State {
                    path: location.clone().into(),
                    reason: "the fetch thread panicked".into(),
                })
            });
            if let Err(e) = written {
                // The body failed (a dropped or stalled connection, a bad frame, a cancel):
                // keep what was verified before it, so the retry resumes from there rather
                // than from the last periodic checkpoint (32 MiB apart on a node). Same
                // order as a checkpoint: the sink is synced before the journal names the
                // frames. If that fails too, the body's error is the one reported.
                if verified > k && sink.sync().is_ok() {
                    let _ = checkpoint(verified);
                }
                return Err(e);
            }
            // Every frame arrived, was verified and written: record that before judging the
            // end of the body (extra bytes do not make the frames bad).
            sink.sync()?;
            checkpoint(frames.len())?;
            fetch_result
        })?;
        if let Some(found) = fetched_blob {
            if found != job.fetch.compressed_sha256 {
                return Err(digest_err(
                    Checked::Blob,
                    &job.fetch.compressed_sha256,
                    &found,
                ));
            }
        }
    }
    sink.sync()?;
    checkpoint(frames.len())?;
    durable(u64::MAX);
    meter.emit();
    if check_whole {
        let found = finish(whole);
        if found != artifact.sha256 {
            return Err(digest_err(Checked::Artifact, &artifact.sha256, &found));
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(hash_offset: u64) -> SlotSink {
        let dir = std::env::temp_dir();
        let range = basalt_disk::PartitionRange {
            path: dir.clone(),
            offset: 0,
            len: 1 << 20,
        };
        let install = basalt_disk::slots::SlotInstall {
            slot: basalt_disk::Slot::B,
            path: dir.clone(),
            data: range.clone(),
            verity: range,
        };
        let mem = || -> Box<dyn Disk> { Box::new(std::io::Cursor::new(Vec::new())) };
        SlotSink {
            data: install.writer(mem(), basalt_disk::SlotPart::Data),
            verity: install.writer(mem(), basalt_disk::SlotPart::Verity),
            reader: std::fs::File::open("/dev/null").unwrap(),
            disk: dir,
            data_offset: 0,
            verity_offset: 0,
            hash_offset,
        }
    }

    proptest::proptest! {
        /// The pieces of a split cover the range exactly, data before hash_offset, verity after.
        #[test]
        fn split_covers_the_range(hash_offset in 1u64..10_000, offset in 0u64..20_000, len in 1usize..8_000) {
            let s = sink(hash_offset);
            let pieces = s.split(offset, len);
            let mut covered = 0usize;
            for (is_data, at, start, n) in pieces {
                proptest::prop_assert_eq!(start, covered);
                proptest::prop_assert!(n > 0);
                let abs = offset + start as u64;
                if is_data {
                    proptest::prop_assert_eq!(at, abs);
                    proptest::prop_assert!(abs + n as u64 <= hash_offset);
                } else {
                    proptest::prop_assert_eq!(at, abs - hash_offset);
                    proptest::prop_assert!(abs >= hash_offset);
                }
                covered += n;
            }
            proptest::prop_assert_eq!(covered, len);
        }
    }
}
