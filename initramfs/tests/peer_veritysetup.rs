//! The verity superblock and tree size as `veritysetup format` (package `cryptsetup-bin`)
//! writes them: our parser reads its superblock, our size check accepts its hash file, and
//! our tree size matches the hash file's length.

mod common;

use std::path::Path;

use basalt_initramfs::slot::{check_superblock, tree_blocks, SuperblockInfo};
use common::peer_ok;

fn dump_field<'a>(dump: &'a str, key: &str) -> &'a str {
    dump.lines()
        .find_map(|l| {
            l.strip_prefix(key)
                .map(|v| v.trim_start_matches(':').trim())
        })
        .unwrap_or_else(|| panic!("veritysetup dump has no {key}: {dump}"))
}

#[test]
fn superblock_and_tree_size_match_veritysetup() {
    let t = tempfile::tempdir().unwrap();
    // Sizes around tree level boundaries: 1 block (empty tree), 128, 129, 300 blocks.
    for blocks in [1u64, 128, 129, 300] {
        let data = t.path().join(format!("data{blocks}"));
        let hash = t.path().join(format!("hash{blocks}"));
        let bytes: Vec<u8> = (0..blocks * 4096).map(|i| (i % 253) as u8).collect();
        std::fs::write(&data, bytes).unwrap();
        peer_ok(
            "veritysetup",
            "cryptsetup-bin",
            &["format", data.to_str().unwrap(), hash.to_str().unwrap()],
            None,
        );
        let dump = peer_ok(
            "veritysetup",
            "cryptsetup-bin",
            &["dump", hash.to_str().unwrap()],
            None,
        );
        let buf = std::fs::read(&hash).unwrap();
        let sb = SuperblockInfo::parse(&buf[..512], &hash).unwrap();
        assert_eq!(sb.hash_type.to_string(), dump_field(&dump, "Hash type"));
        assert_eq!(sb.algorithm, dump_field(&dump, "Hash algorithm"));
        assert_eq!(sb.data_blocks.to_string(), dump_field(&dump, "Data blocks"));
        assert_eq!(
            sb.data_block_size.to_string(),
            dump_field(&dump, "Data block size")
        );
        assert_eq!(
            sb.hash_block_size.to_string(),
            dump_field(&dump, "Hash block size")
        );
        assert_eq!(hex::encode(&sb.salt), dump_field(&dump, "Salt"));
        // The hash file is exactly superblock block + tree.
        assert_eq!(
            (1 + tree_blocks(blocks)) * 4096,
            buf.len() as u64,
            "{blocks} data blocks"
        );
        check_superblock(&sb, &hash, blocks * 4096, buf.len() as u64).unwrap();
        // One block short on either partition is refused.
        assert!(check_superblock(&sb, &hash, blocks * 4096 - 4096, buf.len() as u64).is_err());
        assert!(check_superblock(&sb, &hash, blocks * 4096, buf.len() as u64 - 4096).is_err());
    }
}

#[test]
fn garbage_is_not_a_superblock() {
    let p = Path::new("x");
    assert!(SuperblockInfo::parse(&[0u8; 512], p).is_err());
    assert!(SuperblockInfo::parse(b"verity\0\0", p).is_err());
}
