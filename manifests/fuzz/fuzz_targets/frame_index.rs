//! Fuzzes the frame index parser (`basalt_manifest::frames`, format `BSLTFRM1`) that a node
//! runs on a blob fetched from the repository (after its SHA-256 matched the signed manifest,
//! but the parser must not rely on that). The first 16 bytes of the input choose the
//! artifact's uncompressed and compressed sizes; the rest is the index.
//!
//! Properties: never panics; an accepted index re-encodes to exactly its input, its frames
//! are contiguous with non-zero lengths, cover exactly the artifact's sizes, and `frame_at`
//! finds the frame holding each frame's first and last byte.
//! `cargo +nightly fuzz run frame_index corpus/frame_index seeds/frame_index`.

#![no_main]

use basalt_manifest::frames::{FrameIndex, MAX_FRAME_LEN};
use basalt_manifest::{Artifact, ArtifactKind, Compression, CompressionAlgorithm, Digest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let size = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let compressed_size = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
    let index = &data[16..];
    let artifact = Artifact {
        kind: ArtifactKind::Usr,
        name: "usr.img".into(),
        size,
        sha256: Digest([0; 32]),
        compression: Some(Compression {
            algorithm: CompressionAlgorithm::Zstd,
            compressed_size,
            compressed_sha256: Digest([0; 32]),
            frame_index: None,
            adaptive: None,
        }),
        verity: None,
    };
    let Ok(parsed) = FrameIndex::parse(index, &artifact) else {
        return;
    };
    assert_eq!(parsed.encode(), index, "re-encoding changed the bytes");
    assert_eq!(parsed.uncompressed_size(), size);
    assert_eq!(parsed.compressed_size(), compressed_size);
    let (mut off, mut coff) = (0u64, 0u64);
    for (i, f) in parsed.frames().iter().enumerate() {
        assert_eq!((f.offset, f.compressed_offset), (off, coff), "frame {i} not contiguous");
        assert!(f.len > 0 && f.len <= MAX_FRAME_LEN && f.compressed_len > 0);
        assert_eq!(parsed.frame_at(f.offset), Some(i));
        assert_eq!(parsed.frame_at(f.end() - 1), Some(i));
        off = f.end();
        coff = f.compressed_end();
    }
    assert_eq!(parsed.frame_at(size), None);
});
