//! Fuzzes the block index parser of adaptive installs (`basalt_manifest::adaptive`, format
//! `BSLTBIX1`) that a node runs on a blob fetched from the repository (after its SHA-256
//! matched the signed manifest, but the parser must not rely on that). The first 24 bytes of
//! the input choose the artifact's size, its verity hash offset (data blocks = hash offset /
//! 4096) and the frame store's size; the rest is the index.
//!
//! Properties: never panics; an accepted index re-encodes to exactly its input, its frames
//! lie in block order, each of 1..=64 blocks, never touch the verity tree; every block
//! outside the tree is in exactly one frame; its binary deltas cover whole frames (never the
//! tree), within their bounds, in block order per earlier release, and follow the frames in
//! the store so that frames and deltas fill it exactly.
//! `cargo +nightly fuzz run block_index corpus/block_index seeds/block_index`.

#![no_main]

use basalt_manifest::adaptive::{
    BlockIndex, MAX_DELTA_BLOCKS, MAX_DELTA_REF_BLOCKS, MAX_FRAME_BLOCKS,
};
use basalt_manifest::{Artifact, ArtifactKind, Digest, HashAlgorithm, Verity};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 24 {
        return;
    }
    let word = |i: usize| u64::from_le_bytes(data[i..i + 8].try_into().expect("8 bytes"));
    // Keep sizes plausible so accepted inputs exist: at most 2^20 blocks.
    let size = (word(0) % (1 << 20)) * 4096;
    let hash_offset = (word(8) % (1 << 20)) * 4096;
    let store = word(16);
    let index = &data[24..];
    let artifact = Artifact {
        kind: ArtifactKind::Usr,
        name: "usr.img".into(),
        size,
        sha256: Digest([0; 32]),
        compression: None,
        verity: Some(Verity {
            root_hash: Digest([0; 32]),
            salt: String::new(),
            data_blocks: (hash_offset / 4096).max(1),
            hash_offset,
            hash_algorithm: HashAlgorithm::Sha256,
            data_block_size: 4096,
            hash_block_size: 4096,
        }),
    };
    let Ok(parsed) = BlockIndex::parse(index, &artifact, store) else {
        return;
    };
    assert_eq!(parsed.encode(), index, "re-encoding changed the bytes");
    assert_eq!(parsed.store_size(), store);
    let tree = parsed.tree();
    let blocks = parsed.hashes().len() as u64;
    assert_eq!(blocks, size / 4096);
    let (mut next, mut off) = (0u64, 0u64);
    for f in parsed.frames() {
        if next == tree.first && tree.count > 0 {
            next += tree.count;
        }
        assert_eq!((f.first_block, f.compressed_offset), (next, off));
        assert!(f.blocks >= 1 && f.blocks <= MAX_FRAME_BLOCKS && f.compressed_len > 0);
        assert!(f.end_block() <= tree.first || f.first_block >= tree.first + tree.count);
        next = f.end_block();
        off = f.compressed_end();
    }
    if next == tree.first && tree.count > 0 {
        next += tree.count;
    }
    assert_eq!(next, blocks);
    let mut last_end = std::collections::HashMap::new();
    for d in parsed.deltas() {
        assert_eq!(d.compressed_offset, off);
        assert!(d.blocks >= 1 && d.blocks <= MAX_DELTA_BLOCKS);
        assert!(d.ref_blocks >= 1 && d.ref_blocks <= MAX_DELTA_REF_BLOCKS);
        assert!(d.compressed_len > 0);
        let first = parsed.frame_at(d.first_block).expect("a delta starts in a frame");
        let last = parsed.frame_at(d.end_block() - 1).expect("a delta ends in a frame");
        assert_eq!(parsed.frames()[first].first_block, d.first_block);
        assert_eq!(parsed.frames()[last].end_block(), d.end_block());
        assert!(d.end_block() <= tree.first || d.first_block >= tree.first + tree.count);
        let prev = last_end.insert(d.from_root, d.end_block()).unwrap_or(0);
        assert!(d.first_block >= prev);
        off = d.compressed_end();
    }
    assert_eq!(off, store);
});
