//! The frame index of a compressed artifact: where each independently decodable compressed
//! frame lies, and the SHA-256 of its compressed and uncompressed bytes.
//!
//! Why it exists: a whole-file `compressed_sha256` can only be checked on a download that
//! started at byte 0, and a zstd stream cannot be resumed from the middle. A published artifact
//! is therefore compressed as a sequence of **independent zstd frames** (each decodes on its
//! own), and this index — a blob named by its SHA-256 in the signed manifest
//! ([`crate::FrameIndexRef`]) — lets a node
//!
//! - check every compressed frame *before* the decompressor sees it (the decoder only ever
//!   reads signed bytes),
//! - resume an interrupted download with an HTTP `Range` request at a frame boundary, after
//!   re-reading and re-hashing the frames already written (never trusting half-written data),
//! - (adaptive updates) fetch only some frames: frames may have any length, e.g. cut at file
//!   boundaries.
//!
//! # Format (`BSLTFRM1`, little endian)
//!
//! ```text
//! offset  size   field
//! 0       8      magic "BSLTFRM1"
//! 8       4      frame count N (1 ..= MAX_FRAMES)
//! 12      4      reserved, 0
//! 16      72×N   records: u32 compressed_len, u32 len, [32] compressed_sha256, [32] sha256
//! ```
//!
//! Offsets are not stored: frame `i` starts where frame `i-1` ends, in the compressed file and
//! in the uncompressed artifact alike, so the index cannot describe gaps or overlaps. The sums
//! of the lengths must equal the artifact's `compression.compressed_size` and `size`.

use crate::error::{Document, Error, Result};
use crate::keys::Digest;
use crate::manifest::Artifact;

/// First bytes of a frame index.
pub const FRAME_INDEX_MAGIC: [u8; 8] = *b"BSLTFRM1";
/// Bytes before the first record.
pub const HEADER_LEN: usize = 16;
/// Bytes per frame record.
pub const RECORD_LEN: usize = 72;
/// Most frames an index may list (an index is then at most ≈18 MiB).
pub const MAX_FRAMES: usize = 256 * 1024;
/// Longest frame, uncompressed or compressed (64 MiB): bounds what a node buffers for one frame.
pub const MAX_FRAME_LEN: u32 = 64 << 20;
/// The uncompressed frame length `basalt release publish` cuts by default (4 MiB).
pub const DEFAULT_FRAME_LEN: u32 = 4 << 20;

/// One frame, with its offsets derived from the lengths before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Byte offset of the frame in the compressed file.
    pub compressed_offset: u64,
    /// Length of the compressed frame.
    pub compressed_len: u32,
    /// Byte offset of the frame's content in the uncompressed artifact.
    pub offset: u64,
    /// Length of the frame's uncompressed content.
    pub len: u32,
    /// SHA-256 of the compressed frame bytes.
    pub compressed_sha256: Digest,
    /// SHA-256 of the uncompressed frame content.
    pub sha256: Digest,
}

impl Frame {
    /// End of the frame in the compressed file (exclusive).
    pub fn compressed_end(&self) -> u64 {
        self.compressed_offset + u64::from(self.compressed_len)
    }

    /// End of the frame's content in the uncompressed artifact (exclusive).
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// A parsed, validated frame index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameIndex {
    frames: Vec<Frame>,
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidContent {
        document: Document::FrameIndex,
        reason: reason.into(),
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn digest_at(bytes: &[u8], at: usize) -> Digest {
    let mut d = [0u8; 32];
    d.copy_from_slice(&bytes[at..at + 32]);
    Digest(d)
}

impl FrameIndex {
    /// Builds an index from `(compressed_len, len, compressed_sha256, sha256)` per frame, in
    /// order. Checks the same rules as [`FrameIndex::parse`] except the totals.
    pub fn from_records(records: &[(u32, u32, Digest, Digest)]) -> Result<FrameIndex> {
        if records.is_empty() || records.len() > MAX_FRAMES {
            return Err(invalid(format!(
                "{} frames; an index lists 1 to {MAX_FRAMES}",
                records.len()
            )));
        }
        let mut frames = Vec::with_capacity(records.len());
        let (mut coff, mut off) = (0u64, 0u64);
        for (i, &(compressed_len, len, compressed_sha256, sha256)) in records.iter().enumerate() {
            for (what, n) in [("compressed length", compressed_len), ("length", len)] {
                if n == 0 || n > MAX_FRAME_LEN {
                    return Err(invalid(format!(
                        "frame {i}: {what} {n} is outside 1..={MAX_FRAME_LEN}"
                    )));
                }
            }
            frames.push(Frame {
                compressed_offset: coff,
                compressed_len,
                offset: off,
                len,
                compressed_sha256,
                sha256,
            });
            coff += u64::from(compressed_len);
            off += u64::from(len);
        }
        Ok(FrameIndex { frames })
    }

    /// Parses an index and checks it against the artifact it belongs to: record count, frame
    /// lengths, and that the frames cover exactly `artifact.size` uncompressed bytes and
    /// exactly `compression.compressed_size` compressed bytes. The caller has already checked
    /// the index blob's SHA-256 against [`crate::FrameIndexRef::sha256`].
    pub fn parse(bytes: &[u8], artifact: &Artifact) -> Result<FrameIndex> {
        if bytes.len() < HEADER_LEN {
            return Err(invalid(format!(
                "{} bytes, shorter than the {HEADER_LEN}-byte header",
                bytes.len()
            )));
        }
        if bytes[..8] != FRAME_INDEX_MAGIC {
            return Err(invalid("does not start with the magic \"BSLTFRM1\""));
        }
        let count = u32_at(bytes, 8) as usize;
        if u32_at(bytes, 12) != 0 {
            return Err(invalid("reserved header field is not 0"));
        }
        if count == 0 || count > MAX_FRAMES {
            return Err(invalid(format!(
                "{count} frames; an index lists 1 to {MAX_FRAMES}"
            )));
        }
        let expected_len = HEADER_LEN + RECORD_LEN * count;
        if bytes.len() != expected_len {
            return Err(invalid(format!(
                "{} bytes, but {count} frames take exactly {expected_len}",
                bytes.len()
            )));
        }
        let records: Vec<_> = bytes[HEADER_LEN..]
            .chunks_exact(RECORD_LEN)
            .map(|r| {
                (
                    u32_at(r, 0),
                    u32_at(r, 4),
                    digest_at(r, 8),
                    digest_at(r, 40),
                )
            })
            .collect();
        let index = FrameIndex::from_records(&records)?;
        index.check_totals(artifact)?;
        Ok(index)
    }

    /// The frames cover exactly the artifact's uncompressed and compressed sizes.
    pub fn check_totals(&self, artifact: &Artifact) -> Result<()> {
        let Some(compression) = &artifact.compression else {
            return Err(invalid(format!(
                "artifact {:?} is not compressed, so it has no frame index",
                artifact.name
            )));
        };
        let (size, compressed) = (self.uncompressed_size(), self.compressed_size());
        if size != artifact.size {
            return Err(invalid(format!(
                "frames cover {size} bytes of artifact {:?}, which has {}",
                artifact.name, artifact.size
            )));
        }
        if compressed != compression.compressed_size {
            return Err(invalid(format!(
                "frames cover {compressed} compressed bytes of artifact {:?}, which has {}",
                artifact.name, compression.compressed_size
            )));
        }
        Ok(())
    }

    /// The encoded index (what [`FrameIndex::parse`] reads).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + RECORD_LEN * self.frames.len());
        out.extend_from_slice(&FRAME_INDEX_MAGIC);
        // from_records bounds the count to MAX_FRAMES, far below u32::MAX.
        out.extend_from_slice(&(self.frames.len() as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        for f in &self.frames {
            out.extend_from_slice(&f.compressed_len.to_le_bytes());
            out.extend_from_slice(&f.len.to_le_bytes());
            out.extend_from_slice(&f.compressed_sha256.0);
            out.extend_from_slice(&f.sha256.0);
        }
        out
    }

    /// All frames, in order.
    pub fn frames(&self) -> &[Frame] {
        &self.frames
    }

    /// Total uncompressed bytes.
    pub fn uncompressed_size(&self) -> u64 {
        self.frames.last().map_or(0, Frame::end)
    }

    /// Total compressed bytes.
    pub fn compressed_size(&self) -> u64 {
        self.frames.last().map_or(0, Frame::compressed_end)
    }

    /// The index of the frame holding uncompressed byte `offset`, if it is inside the artifact.
    pub fn frame_at(&self, offset: u64) -> Option<usize> {
        let i = self.frames.partition_point(|f| f.end() <= offset);
        (i < self.frames.len()).then_some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ArtifactKind, Compression, CompressionAlgorithm};

    fn d(b: u8) -> Digest {
        Digest([b; 32])
    }

    fn artifact(size: u64, compressed_size: u64) -> Artifact {
        Artifact {
            kind: ArtifactKind::Kernel,
            name: "vmlinuz".into(),
            size,
            sha256: d(9),
            compression: Some(Compression {
                algorithm: CompressionAlgorithm::Zstd,
                compressed_size,
                compressed_sha256: d(8),
                frame_index: None,
                adaptive: None,
            }),
            verity: None,
        }
    }

    fn sample() -> FrameIndex {
        FrameIndex::from_records(&[(10, 100, d(1), d(2)), (20, 50, d(3), d(4))]).unwrap()
    }

    #[test]
    fn round_trip_and_offsets() {
        let index = sample();
        let parsed = FrameIndex::parse(&index.encode(), &artifact(150, 30)).unwrap();
        assert_eq!(parsed, index);
        let f = parsed.frames()[1];
        assert_eq!((f.compressed_offset, f.offset, f.end()), (10, 100, 150));
        assert_eq!(parsed.frame_at(0), Some(0));
        assert_eq!(parsed.frame_at(99), Some(0));
        assert_eq!(parsed.frame_at(100), Some(1));
        assert_eq!(parsed.frame_at(150), None);
    }

    fn reason(bytes: &[u8], a: &Artifact) -> String {
        match FrameIndex::parse(bytes, a) {
            Err(Error::InvalidContent { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn refusals_name_the_problem() {
        let good = sample().encode();
        let a = artifact(150, 30);
        assert!(reason(&good[..10], &a).contains("shorter than"));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(reason(&bad, &a).contains("magic"));
        let mut bad = good.clone();
        bad[12] = 1;
        assert!(reason(&bad, &a).contains("reserved"));
        let mut bad = good.clone();
        bad[8..12].copy_from_slice(&0u32.to_le_bytes());
        assert!(reason(&bad, &a).contains("0 frames"));
        let mut bad = good.clone();
        bad[8..12].copy_from_slice(&3u32.to_le_bytes());
        assert!(reason(&bad, &a).contains("take exactly"));
        assert!(reason(&good[..good.len() - 1], &a).contains("take exactly"));
        let mut bad = good.clone();
        bad[HEADER_LEN + 4..HEADER_LEN + 8].copy_from_slice(&0u32.to_le_bytes());
        assert!(reason(&bad, &a).contains("length 0"));
        let mut bad = good.clone();
        bad[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&(MAX_FRAME_LEN + 1).to_le_bytes());
        assert!(reason(&bad, &a).contains("compressed length"));
        assert!(reason(&good, &artifact(151, 30)).contains("which has 151"));
        assert!(reason(&good, &artifact(150, 31)).contains("which has 31"));
        let mut plain = artifact(150, 30);
        plain.compression = None;
        assert!(reason(&good, &plain).contains("not compressed"));
    }

    #[test]
    fn too_many_frames_refused_before_allocation() {
        let mut bytes = FRAME_INDEX_MAGIC.to_vec();
        bytes.extend_from_slice(&((MAX_FRAMES + 1) as u32).to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        assert!(reason(&bytes, &artifact(1, 1)).contains("frames; an index lists"));
    }
}
