//! The veritysetup superblock (`struct verity_sb` of cryptsetup): 512 bytes, little endian,
//! at the start of the hash area. The tree then starts at the next hash-block boundary
//! (so with 4 KiB hash blocks the superblock takes one whole block).
//!
//! ```text
//! off size field
//!   0    8 signature "verity\0\0"
//!   8    4 version (of the superblock format: 1)
//!  12    4 hash_type (0 = Chrome OS, 1 = normal)
//!  16   16 uuid (binary, RFC 4122 byte order)
//!  32   32 algorithm (NUL-padded, e.g. "sha256")
//!  64    4 data_block_size
//!  68    4 hash_block_size
//!  72    8 data_blocks
//!  80    2 salt_size
//!  82    6 padding
//!  88  256 salt
//! 344  168 padding
//! ```

use crate::error::{Error, Result};

/// Size of the encoded superblock (`sizeof(struct verity_sb)`).
pub const SUPERBLOCK_SIZE: usize = 512;
/// The signature at offset 0.
pub const SIGNATURE: [u8; 8] = *b"verity\0\0";
/// The only superblock format version.
pub const SUPERBLOCK_VERSION: u32 = 1;
/// The largest salt the superblock can carry.
pub const MAX_SALT_SIZE: usize = 256;
const ALGORITHM_LEN: usize = 32;

/// A decoded veritysetup superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Hash format: 1 = normal (salt hashed first), 0 = Chrome OS (salt hashed last).
    pub hash_type: u32,
    /// The UUID veritysetup prints (binary).
    pub uuid: [u8; 16],
    /// Hash algorithm name, e.g. `sha256` (at most 31 bytes, no NUL).
    pub algorithm: String,
    /// Data block size in bytes.
    pub data_block_size: u32,
    /// Hash block size in bytes.
    pub hash_block_size: u32,
    /// Number of data blocks covered by the tree.
    pub data_blocks: u64,
    /// The salt (at most 256 bytes; may be empty).
    pub salt: Vec<u8>,
}

fn bad(reason: impl Into<String>) -> Error {
    Error::ParseSuperblock {
        reason: reason.into(),
    }
}

fn le_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

impl Superblock {
    /// Parse the first 512 bytes of `buf`. Checks what cryptsetup checks: the signature, the
    /// version, the hash type, the salt size, a NUL-terminated algorithm name, and block
    /// sizes that are powers of two between 512 bytes and 512 KiB. Never panics.
    pub fn parse(buf: &[u8]) -> Result<Self> {
        if buf.len() < SUPERBLOCK_SIZE {
            return Err(bad(format!(
                "need {SUPERBLOCK_SIZE} bytes, got {}",
                buf.len()
            )));
        }
        if buf[0..8] != SIGNATURE {
            return Err(bad("no \"verity\" signature"));
        }
        let version = le_u32(buf, 8);
        if version != SUPERBLOCK_VERSION {
            return Err(bad(format!("unsupported superblock version {version}")));
        }
        let hash_type = le_u32(buf, 12);
        if hash_type > 1 {
            return Err(bad(format!("unsupported hash type {hash_type}")));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&buf[16..32]);
        let alg = &buf[32..32 + ALGORITHM_LEN];
        let alg_len = alg
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| bad("algorithm name is not NUL-terminated"))?;
        let algorithm = std::str::from_utf8(&alg[..alg_len])
            .map_err(|_| bad("algorithm name is not UTF-8"))?
            .to_string();
        if algorithm.is_empty() {
            return Err(bad("empty algorithm name"));
        }
        let data_block_size = le_u32(buf, 64);
        let hash_block_size = le_u32(buf, 68);
        for (name, size) in [("data", data_block_size), ("hash", hash_block_size)] {
            if !size.is_power_of_two() || !(512..=512 * 1024).contains(&size) {
                return Err(bad(format!("invalid {name} block size {size}")));
            }
        }
        let mut db = [0u8; 8];
        db.copy_from_slice(&buf[72..80]);
        let data_blocks = u64::from_le_bytes(db);
        let salt_size = usize::from(u16::from_le_bytes([buf[80], buf[81]]));
        if salt_size > MAX_SALT_SIZE {
            return Err(bad(format!(
                "salt size {salt_size} exceeds {MAX_SALT_SIZE}"
            )));
        }
        Ok(Superblock {
            hash_type,
            uuid,
            algorithm,
            data_block_size,
            hash_block_size,
            data_blocks,
            salt: buf[88..88 + salt_size].to_vec(),
        })
    }

    /// Encode to the 512 bytes veritysetup writes. Fails if the salt or algorithm name do not
    /// fit.
    pub fn to_bytes(&self) -> Result<[u8; SUPERBLOCK_SIZE]> {
        if self.salt.len() > MAX_SALT_SIZE {
            return Err(Error::InvalidParameters {
                reason: format!("salt of {} bytes exceeds {MAX_SALT_SIZE}", self.salt.len()),
            });
        }
        let alg = self.algorithm.as_bytes();
        if alg.len() >= ALGORITHM_LEN || alg.contains(&0) {
            return Err(Error::InvalidParameters {
                reason: format!("algorithm name {:?} does not fit", self.algorithm),
            });
        }
        let mut b = [0u8; SUPERBLOCK_SIZE];
        b[0..8].copy_from_slice(&SIGNATURE);
        b[8..12].copy_from_slice(&SUPERBLOCK_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.hash_type.to_le_bytes());
        b[16..32].copy_from_slice(&self.uuid);
        b[32..32 + alg.len()].copy_from_slice(alg);
        b[64..68].copy_from_slice(&self.data_block_size.to_le_bytes());
        b[68..72].copy_from_slice(&self.hash_block_size.to_le_bytes());
        b[72..80].copy_from_slice(&self.data_blocks.to_le_bytes());
        // The salt length fits: checked against MAX_SALT_SIZE above.
        b[80..82].copy_from_slice(&(self.salt.len() as u16).to_le_bytes());
        b[88..88 + self.salt.len()].copy_from_slice(&self.salt);
        Ok(b)
    }
}

/// Format a binary UUID the way veritysetup prints it (`8-4-4-4-12` lowercase hex).
pub fn format_uuid(uuid: &[u8; 16]) -> String {
    let h = hex::encode(uuid);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Parse a textual UUID (`8-4-4-4-12` hex, any case; dashes where veritysetup puts them).
pub fn parse_uuid(s: &str) -> Result<[u8; 16]> {
    let invalid = || Error::InvalidParameters {
        reason: format!("invalid UUID {s:?}"),
    };
    let groups: Vec<&str> = s.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    if lens != [8, 4, 4, 4, 12] {
        return Err(invalid());
    }
    let bytes = hex::decode(groups.concat()).map_err(|_| invalid())?;
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&bytes);
    Ok(uuid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Superblock {
        Superblock {
            hash_type: 1,
            uuid: [0x12; 16],
            algorithm: "sha256".into(),
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks: 3,
            salt: vec![0xab; 32],
        }
    }

    #[test]
    fn rejects_damage() {
        let good = sample().to_bytes().expect("encode");
        assert!(Superblock::parse(&good).is_ok());
        assert!(Superblock::parse(&good[..511]).is_err());
        for (off, val) in [(0, b'X'), (8, 2), (12, 2), (64, 1), (69, 0x30), (81, 1)] {
            let mut b = good;
            b[off] = val;
            assert!(Superblock::parse(&b).is_err(), "byte {off} = {val}");
        }
        let mut b = good;
        b[32..64].fill(b'a');
        assert!(Superblock::parse(&b).is_err());
    }

    #[test]
    fn uuid_text_round_trip() {
        let u = parse_uuid("12345678-1234-1234-1234-123456789ABC").expect("parse");
        assert_eq!(format_uuid(&u), "12345678-1234-1234-1234-123456789abc");
        assert!(parse_uuid("12345678123412341234123456789abc").is_err());
        assert!(parse_uuid("1234567g-1234-1234-1234-123456789abc").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn superblock_round_trips(
            hash_type in 0u32..=1,
            uuid in any::<[u8; 16]>(),
            algorithm in "[a-z0-9-]{1,31}",
            dbs_log in 9u32..=19,
            hbs_log in 9u32..=19,
            data_blocks in any::<u64>(),
            salt in proptest::collection::vec(any::<u8>(), 0..=256),
        ) {
            let sb = Superblock {
                hash_type, uuid, algorithm,
                data_block_size: 1 << dbs_log,
                hash_block_size: 1 << hbs_log,
                data_blocks, salt,
            };
            let bytes = sb.to_bytes().expect("encode");
            prop_assert_eq!(Superblock::parse(&bytes).expect("parse"), sb.clone());
            // Re-encoding what we parsed gives the same bytes (padding stays zero).
            prop_assert_eq!(Superblock::parse(&bytes).expect("parse").to_bytes().expect("encode"), bytes);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Superblock::parse(&bytes);
        }
    }
}
