//! The statement block after the hash tree does not disturb `veritysetup verify` (package
//! `cryptsetup-bin`), and is found again at the offset the superblock implies.

mod common;

use basalt_initramfs::usrsig::{decode_block, encode_block, statement_offset, write_to_hash_image};
use basalt_verity::Superblock;
use common::peer_ok;

#[test]
fn statement_after_tree_keeps_veritysetup_happy() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let hash = t.path().join("hash");
    let bytes: Vec<u8> = (0..300 * 4096u32).map(|i| (i % 249) as u8).collect();
    std::fs::write(&data, bytes).unwrap();
    let out = peer_ok(
        "veritysetup",
        "cryptsetup-bin",
        &["format", data.to_str().unwrap(), hash.to_str().unwrap()],
        None,
    );
    let root = out
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .unwrap()
        .trim()
        .to_owned();
    let original = std::fs::read(&hash).unwrap();
    let sb = Superblock::parse(&original[..512]).unwrap();
    // veritysetup's hash image ends exactly where the statement goes.
    assert_eq!(statement_offset(&sb), original.len() as u64);
    // Written twice (a re-signed slot): the second replaces the first.
    write_to_hash_image(&hash, b"{\"first\":1}").unwrap();
    write_to_hash_image(&hash, b"{\"payloadType\":\"x\"}").unwrap();
    let image = std::fs::read(&hash).unwrap();
    assert_eq!(
        image.len(),
        original.len() + encode_block(b"x").unwrap().len()
    );
    assert_eq!(image[..original.len()], original[..]);
    peer_ok(
        "veritysetup",
        "cryptsetup-bin",
        &[
            "verify",
            data.to_str().unwrap(),
            hash.to_str().unwrap(),
            &root,
        ],
        None,
    );
    let off = statement_offset(&sb) as usize;
    assert_eq!(
        decode_block(&image[off..]).unwrap(),
        b"{\"payloadType\":\"x\"}"
    );
}
