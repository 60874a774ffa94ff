//! The verity superblock and tree size as `veritysetup format` (package `cryptsetup-bin`)
//! writes them: the superblock `basalt_verity` parses from its hash file passes our fit check,
//! and one block less on either partition is refused.

mod common;

use basalt_initramfs::slot::check_superblock;
use basalt_verity::Superblock;
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
        let sb = Superblock::parse(&buf[..512]).unwrap();
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
        assert_eq!(
            basalt_identity::hex::encode(&sb.salt),
            dump_field(&dump, "Salt")
        );
        check_superblock(&sb, &hash, blocks * 4096, buf.len() as u64).unwrap();
        // One block short on either partition is refused.
        assert!(check_superblock(&sb, &hash, blocks * 4096 - 4096, buf.len() as u64).is_err());
        assert!(check_superblock(&sb, &hash, blocks * 4096, buf.len() as u64 - 4096).is_err());
    }
}
