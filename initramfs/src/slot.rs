//! The `/usr` slot's verity parameters: checking the superblock found on the hash partition
//! against the partitions and building the dm-verity table. Pure: no I/O.
//!
//! The superblock's format and the tree geometry are `basalt_verity`'s.
//! Basalt's layout on the verity partition (what `veritysetup format` writes): the 512-byte
//! superblock in block 0, the hash tree from block 1 (`hash_start_block` 1).

use std::path::Path;

use basalt_verity::dm::VerityTable;
use basalt_verity::{hash_tree_size, Superblock};

use crate::cmdline::{RootHash, VerityErrorMode};
use crate::error::{Error, Result};

/// The block size Basalt uses for data and hashes.
pub const BLOCK: u32 = 4096;

/// Check the superblock against the partitions it must describe.
pub fn check_superblock(
    sb: &Superblock,
    device: &Path,
    data_len: u64,
    hash_len: u64,
) -> Result<()> {
    let bad = |reason: String| Error::SuperblockInvalid {
        device: device.to_owned(),
        reason,
    };
    if sb.hash_type != 1 {
        return Err(bad(format!("hash type {} (need 1)", sb.hash_type)));
    }
    if sb.algorithm != "sha256" {
        return Err(bad(format!("algorithm {:?} (need sha256)", sb.algorithm)));
    }
    if sb.data_block_size != BLOCK || sb.hash_block_size != BLOCK {
        return Err(bad(format!(
            "block sizes {}/{} (need {BLOCK}/{BLOCK})",
            sb.data_block_size, sb.hash_block_size
        )));
    }
    if sb.data_blocks == 0 {
        return Err(bad("zero data blocks".into()));
    }
    let data_bytes = sb.data_blocks.checked_mul(u64::from(BLOCK));
    if data_bytes.is_none_or(|b| b > data_len) {
        return Err(bad(format!(
            "{} data blocks do not fit the {data_len}-byte data partition",
            sb.data_blocks
        )));
    }
    let hash_bytes = u64::from(BLOCK) + hash_tree_size(sb.data_blocks);
    if hash_bytes > hash_len {
        return Err(bad(format!(
            "superblock + tree need {hash_bytes} bytes, the hash partition has {hash_len}"
        )));
    }
    if sb.salt.len() > 256 {
        return Err(bad(format!(
            "salt of {} bytes (at most 256)",
            sb.salt.len()
        )));
    }
    Ok(())
}

/// The dm-verity table for the slot.
pub fn verity_table(
    sb: &Superblock,
    data_dev: &Path,
    hash_dev: &Path,
    root: &RootHash,
    mode: VerityErrorMode,
) -> VerityTable {
    VerityTable {
        data_dev: data_dev.display().to_string(),
        hash_dev: hash_dev.display().to_string(),
        data_block_size: sb.data_block_size,
        hash_block_size: sb.hash_block_size,
        data_blocks: sb.data_blocks,
        hash_start_block: 1,
        algorithm: sb.algorithm.clone(),
        root_hash: root.as_bytes().to_vec(),
        salt: sb.salt.clone(),
        options: mode.table_option().map(str::to_owned).into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb(data_blocks: u64) -> Superblock {
        Superblock {
            hash_type: 1,
            uuid: [0; 16],
            algorithm: "sha256".into(),
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks,
            salt: vec![0x5a; 32],
        }
    }

    #[test]
    fn accepts_a_fitting_superblock() {
        let d = Path::new("/dev/vda3");
        check_superblock(&sb(1000), d, 1000 * 4096, (1 + 9) * 4096).unwrap();
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let d = Path::new("/dev/vda3");
        let cases = [
            (
                Superblock {
                    hash_type: 0,
                    ..sb(10)
                },
                1 << 20,
                1 << 20,
            ),
            (
                Superblock {
                    algorithm: "sha1".into(),
                    ..sb(10)
                },
                1 << 20,
                1 << 20,
            ),
            (
                Superblock {
                    data_block_size: 512,
                    ..sb(10)
                },
                1 << 20,
                1 << 20,
            ),
            (sb(0), 1 << 20, 1 << 20),
            (sb(257), 256 * 4096, 1 << 20),
            (sb(1000), 1000 * 4096, 9 * 4096),
            (
                Superblock {
                    salt: vec![0; 257],
                    ..sb(10)
                },
                1 << 20,
                1 << 20,
            ),
            (sb(u64::MAX), u64::MAX, u64::MAX),
        ];
        for (i, (s, dl, hl)) in cases.into_iter().enumerate() {
            assert!(
                matches!(
                    check_superblock(&s, d, dl, hl),
                    Err(Error::SuperblockInvalid { .. })
                ),
                "case {i}"
            );
        }
    }

    #[test]
    fn table_line_has_the_mode_option() {
        let root = RootHash([0x11; 32]);
        let t = verity_table(
            &sb(256),
            Path::new("/dev/vda3"),
            Path::new("/dev/vda4"),
            &root,
            VerityErrorMode::Restart,
        );
        assert_eq!(
            t.params(),
            format!(
                "1 /dev/vda3 /dev/vda4 4096 4096 256 1 sha256 {} {} 1 restart_on_corruption",
                "11".repeat(32),
                "5a".repeat(32)
            )
        );
        assert_eq!(t.target().length, 256 * 8);
        let t = verity_table(
            &sb(256),
            Path::new("a"),
            Path::new("b"),
            &root,
            VerityErrorMode::Eio,
        );
        assert!(t.options.is_empty());
    }
}
