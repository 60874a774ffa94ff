//! Where a slot's signed usr-hash statement lives, and checking it at boot.
//!
//! **Location: inside the slot's verity partition, in the block right after the hash tree.**
//! The statement then travels with the slot: the updater writes "superblock + tree +
//! statement" as one verity image, a slot can never be paired with another slot's
//! statement, and no other partition (ESP) has to be mounted in the initramfs. dm-verity and
//! `veritysetup verify` ignore bytes past the tree.
//!
//! ```text
//! verity partition: [superblock 4 KiB][hash tree][statement block][unused…]
//!                   0                 4096       4096 + tree size
//! statement block:  "BSLTUSR1" | u32 LE length | DSSE envelope (JSON) | zero padding to 4 KiB
//! ```
//!
//! The envelope is a `basalt_manifest` usr-hash statement (`{"os","version","verity":{…}}`);
//! at boot it must verify against the trust root the builder put in the initramfs
//! (`/etc/basalt/trust.json`, an initial trust-root envelope) and name exactly the
//! `usrhash=` being booted ([`verify`]); then every verity parameter basalt-init maps must be
//! the signed one ([`check_binding`]: salt, data blocks, algorithm, block sizes, the hash area
//! right after the data), the OS the initramfs's policy names and a version not below the
//! floor ([`check_version`]). Expiry is not checked at boot (the clock may not be set yet);
//! freshness is the updater's business.

use basalt_manifest::semver::Version;
use basalt_manifest::{HashAlgorithm, UsrHashStatement};
use basalt_verity::{hash_tree_size, Superblock};

use crate::error::{Error, Result};
use crate::policy::BootPolicy;

/// Magic at the start of the statement block.
pub const MAGIC: &[u8; 8] = b"BSLTUSR1";
const HEADER: usize = 12;
/// Where the trust root goes in the initramfs.
pub const TRUST_PATH: &str = "/etc/basalt/trust.json";
/// Largest envelope accepted (the same cap `basalt_manifest` applies).
pub const MAX_ENVELOPE: usize = basalt_manifest::MAX_USR_HASH_BYTES;

/// Byte offset of the statement block in the verity partition.
pub fn statement_offset(sb: &Superblock) -> u64 {
    u64::from(sb.hash_block_size) + hash_tree_size(sb.data_blocks)
}

/// The statement block for `envelope`, padded to a multiple of 4 KiB: append it to the
/// verity image (`veritysetup format` output) before writing the slot.
pub fn encode_block(envelope: &[u8]) -> Result<Vec<u8>> {
    if envelope.is_empty() || envelope.len() > MAX_ENVELOPE {
        return Err(Error::UsrSigBlock {
            reason: format!("envelope of {} bytes (1..={MAX_ENVELOPE})", envelope.len()),
        });
    }
    let mut b = Vec::with_capacity(HEADER + envelope.len());
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&(envelope.len() as u32).to_le_bytes());
    b.extend_from_slice(envelope);
    b.resize(b.len().div_ceil(4096) * 4096, 0);
    Ok(b)
}

/// Put the statement block for `envelope` into a verity hash image file (the output of
/// `veritysetup format`), right after its tree, replacing any block already there. Returns
/// the block's offset.
pub fn write_to_hash_image(path: &std::path::Path, envelope: &[u8]) -> Result<u64> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let io_err = |source| Error::Fs {
        operation: "writing the usr-hash statement into",
        path: path.to_owned(),
        source,
    };
    let block = encode_block(envelope)?;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err)?;
    let mut head = [0u8; 512];
    f.read_exact(&mut head).map_err(io_err)?;
    let sb = Superblock::parse(&head).map_err(|e| Error::SuperblockInvalid {
        device: path.to_owned(),
        reason: e.to_string(),
    })?;
    let offset = statement_offset(&sb);
    let len = f.metadata().map_err(io_err)?.len();
    if len < offset {
        return Err(Error::UsrSigBlock {
            reason: format!(
                "{} is {len} bytes, shorter than its hash tree ({offset})",
                path.display()
            ),
        });
    }
    f.set_len(offset).map_err(io_err)?;
    f.seek(SeekFrom::Start(offset)).map_err(io_err)?;
    f.write_all(&block).map_err(io_err)?;
    f.sync_all().map_err(io_err)?;
    Ok(offset)
}

/// The envelope inside a statement block (`buf` starts at the block; it may be longer).
pub fn decode_block(buf: &[u8]) -> Result<&[u8]> {
    let bad = |reason: String| Error::UsrSigBlock { reason };
    if buf.len() < HEADER || &buf[..8] != MAGIC {
        return Err(bad(
            "no statement block after the hash tree (magic missing)".into(),
        ));
    }
    let len = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
    if len == 0 || len > MAX_ENVELOPE {
        return Err(bad(format!("statement length {len} (1..={MAX_ENVELOPE})")));
    }
    buf.get(HEADER..HEADER + len)
        .ok_or_else(|| bad(format!("statement of {len} bytes is truncated")))
}

/// A statement that verified, with the number of keys that signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The statement.
    pub statement: UsrHashStatement,
    /// Distinct keys whose signatures counted.
    pub signers: usize,
}

impl Signed {
    /// "os version, signed by N key(s)", for the log.
    pub fn describe(&self) -> String {
        format!(
            "{} {}, signed by {} key(s)",
            self.statement.os, self.statement.version, self.signers
        )
    }
}

/// Verify the statement block against the trust root, for exactly `usrhash_hex`.
pub fn verify(block: &[u8], trust_root_envelope: &[u8], usrhash_hex: &str) -> Result<Signed> {
    let envelope = decode_block(block)?;
    let root =
        basalt_manifest::TrustRoot::from_initial_envelope(trust_root_envelope).map_err(|e| {
            Error::UsrSigVerify {
                reason: format!("trust root: {e}"),
            }
        })?;
    let v =
        basalt_manifest::verify_usr_hash_detailed(envelope, &root, usrhash_hex).map_err(|e| {
            Error::UsrSigVerify {
                reason: e.to_string(),
            }
        })?;
    Ok(Signed {
        signers: v.signed_by.len(),
        statement: v.statement,
    })
}

/// The dm-verity device basalt-init is about to create must be exactly the signed one: every
/// parameter it takes from the (unsigned) superblock equals the statement's, and the
/// statement describes Basalt's layout (hash area right after the data, superblock first).
/// Without this, a superblock claiming fewer data blocks under the same tree geometry would
/// map a truncated `/usr` that still verifies.
pub fn check_binding(statement: &UsrHashStatement, sb: &Superblock) -> Result<()> {
    let v = &statement.verity;
    let signed_alg = match v.hash_algorithm {
        HashAlgorithm::Sha256 => "sha256",
    };
    let data_end = v.data_blocks.checked_mul(u64::from(v.data_block_size));
    let salt = basalt_identity::hex::encode(&sb.salt);
    let fields: [(&str, String, String); 6] = [
        ("hash algorithm", signed_alg.into(), sb.algorithm.clone()),
        (
            "data block size",
            v.data_block_size.to_string(),
            sb.data_block_size.to_string(),
        ),
        (
            "hash block size",
            v.hash_block_size.to_string(),
            sb.hash_block_size.to_string(),
        ),
        (
            "data blocks",
            v.data_blocks.to_string(),
            sb.data_blocks.to_string(),
        ),
        ("salt", v.salt.clone(), salt),
        (
            "hash offset (the hash area must start right after the data)",
            v.hash_offset.to_string(),
            data_end.map_or_else(|| "overflow".into(), |e| e.to_string()),
        ),
    ];
    for (field, signed, found) in fields {
        if signed != found {
            return Err(Error::VerityNotSigned {
                field,
                signed,
                found,
            });
        }
    }
    Ok(())
}

/// The statement names the OS this initramfs boots (when its policy names one) and a
/// version at or above the floor: the higher of the policy's `min-usr-version` and the
/// machine's `BasaltUsrFloor` (`efi_floor`, when set).
pub fn check_version(
    statement: &UsrHashStatement,
    policy: &BootPolicy,
    efi_floor: Option<&Version>,
) -> Result<()> {
    if let Some(os) = &policy.os {
        if &statement.os != os {
            return Err(Error::UsrWrongOs {
                signed: statement.os.clone(),
                expected: os.clone(),
            });
        }
    }
    let floors = [
        policy
            .min_usr_version
            .as_ref()
            .map(|v| (v, "the initramfs's boot policy")),
        efi_floor.map(|v| (v, "the machine's BasaltUsrFloor EFI variable")),
    ];
    if let Some((floor, source)) = floors
        .into_iter()
        .flatten()
        .filter(|(f, _)| statement.version < **f)
        .max_by(|a, b| a.0.cmp(b.0))
    {
        return Err(Error::UsrBelowFloor {
            version: statement.version.to_string(),
            floor: floor.to_string(),
            set_by: source,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_manifest::{
        sign_trust_root, sign_usr_hash, Digest, SigningKey, TrustRootDocument, Verity,
    };

    const HASH: &str = "4b2f0c3ff1b7d7c6a1d7c0bb53a0f1c2e3d4c5b6a79888776655443322110000";

    fn statement() -> UsrHashStatement {
        UsrHashStatement {
            os: "basalt".into(),
            version: "1.2.3".parse().unwrap(),
            verity: Verity {
                root_hash: Digest::from_hex(HASH).unwrap(),
                salt: "5a".repeat(32),
                data_blocks: 129,
                hash_offset: 129 * 4096,
                hash_algorithm: HashAlgorithm::Sha256,
                data_block_size: 4096,
                hash_block_size: 4096,
            },
        }
    }

    fn superblock() -> Superblock {
        Superblock {
            hash_type: 1,
            uuid: [0; 16],
            algorithm: "sha256".into(),
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks: 129,
            salt: vec![0x5a; 32],
        }
    }

    fn root_and_statement(signer: &SigningKey, trusted: &SigningKey) -> (Vec<u8>, Vec<u8>) {
        let doc = TrustRootDocument::new(1, 1, &[trusted.public_key()], None);
        let root = sign_trust_root(&doc, &[trusted]).unwrap();
        let st = statement();
        let env = sign_usr_hash(&st, &[signer]).unwrap();
        (root, encode_block(&env).unwrap())
    }

    #[test]
    fn signed_statement_verifies_for_its_hash_only() {
        let k = SigningKey::from_seed(&[1; 32]).unwrap();
        let (root, block) = root_and_statement(&k, &k);
        let signed = verify(&block, &root, HASH).unwrap();
        assert_eq!(signed.describe(), "basalt 1.2.3, signed by 1 key(s)");
        assert_eq!(signed.statement, statement());
        assert!(verify(&block, &root, &HASH.to_uppercase()).is_ok());
        let other = format!("{}1", &HASH[..63]);
        assert!(matches!(
            verify(&block, &root, &other),
            Err(Error::UsrSigVerify { .. })
        ));
    }

    #[test]
    fn untrusted_signer_or_tampered_block_is_refused() {
        let trusted = SigningKey::from_seed(&[1; 32]).unwrap();
        let stranger = SigningKey::from_seed(&[2; 32]).unwrap();
        let (root, block) = root_and_statement(&stranger, &trusted);
        assert!(matches!(
            verify(&block, &root, HASH),
            Err(Error::UsrSigVerify { .. })
        ));
        let (root, mut block) = root_and_statement(&trusted, &trusted);
        block[40] ^= 1;
        assert!(verify(&block, &root, HASH).is_err());
        assert!(verify(&[0u8; 4096], &root, HASH).is_err());
        assert!(verify(&block, b"not a trust root", HASH).is_err());
    }

    #[test]
    fn block_round_trip_and_refusals() {
        let b = encode_block(b"{\"x\":1}").unwrap();
        assert_eq!(b.len(), 4096);
        assert_eq!(decode_block(&b).unwrap(), b"{\"x\":1}");
        assert!(encode_block(b"").is_err());
        assert!(encode_block(&vec![b' '; MAX_ENVELOPE + 1]).is_err());
        assert!(decode_block(&[0u8; 4096]).is_err());
        let mut t = b.clone();
        t[8..12].copy_from_slice(&5000u32.to_le_bytes());
        assert!(decode_block(&t[..100]).is_err());
    }

    #[test]
    fn every_mapped_parameter_must_be_the_signed_one() {
        check_binding(&statement(), &superblock()).unwrap();
        let cases: [(&str, Superblock); 5] = [
            (
                "data blocks",
                Superblock {
                    data_blocks: 128,
                    ..superblock()
                },
            ),
            (
                "salt",
                Superblock {
                    salt: vec![0x5b; 32],
                    ..superblock()
                },
            ),
            (
                "salt",
                Superblock {
                    salt: vec![],
                    ..superblock()
                },
            ),
            (
                "hash algorithm",
                Superblock {
                    algorithm: "sha512".into(),
                    ..superblock()
                },
            ),
            (
                "data block size",
                Superblock {
                    data_block_size: 512,
                    ..superblock()
                },
            ),
        ];
        for (field, sb) in cases {
            let err = check_binding(&statement(), &sb).unwrap_err();
            assert!(
                matches!(&err, Error::VerityNotSigned { field: f, .. } if f.starts_with(field)),
                "{field}: {err}"
            );
            assert_eq!(
                crate::reason::Reason::of(&err, crate::reason::Reason::Panic),
                crate::reason::Reason::VerityNotSigned
            );
        }
        let mut gap = statement();
        gap.verity.hash_offset += 4096;
        let err = check_binding(&gap, &superblock()).unwrap_err();
        assert!(err.to_string().contains("right after the data"), "{err}");
    }

    #[test]
    fn os_and_version_floor() {
        let v = |s: &str| s.parse::<Version>().unwrap();
        let policy = BootPolicy {
            os: Some("basalt".into()),
            min_usr_version: Some(v("1.2.0")),
            test_options: false,
        };
        check_version(&statement(), &policy, None).unwrap();
        check_version(&statement(), &policy, Some(&v("1.2.3"))).unwrap();
        check_version(&statement(), &BootPolicy::default(), None).unwrap();
        let err = check_version(&statement(), &policy, Some(&v("1.2.4"))).unwrap_err();
        assert!(
            matches!(&err, Error::UsrBelowFloor { floor, set_by, .. } if floor == "1.2.4" && set_by.contains("EFI")),
            "{err}"
        );
        let strict = BootPolicy {
            min_usr_version: Some(v("2.0.0")),
            ..policy.clone()
        };
        // The higher floor is the one reported.
        let err = check_version(&statement(), &strict, Some(&v("1.3.0"))).unwrap_err();
        assert!(
            matches!(&err, Error::UsrBelowFloor { floor, .. } if floor == "2.0.0"),
            "{err}"
        );
        // Pre-releases sort below their release.
        let mut rc = statement();
        rc.version = v("1.2.0-rc.1");
        assert!(check_version(&rc, &policy, None).is_err());
        let other = BootPolicy {
            os: Some("basalt-edge".into()),
            ..policy
        };
        let err = check_version(&statement(), &other, None).unwrap_err();
        assert!(matches!(err, Error::UsrWrongOs { .. }), "{err}");
        assert_eq!(
            crate::reason::Reason::of(&err, crate::reason::Reason::Panic),
            crate::reason::Reason::UsrWrongOs
        );
    }

    #[test]
    fn offset_is_after_superblock_and_tree() {
        let sb = Superblock {
            hash_type: 1,
            uuid: [0; 16],
            algorithm: "sha256".into(),
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks: 129,
            salt: vec![],
        };
        // 129 blocks: level 0 has 2 hash blocks, level 1 one.
        assert_eq!(statement_offset(&sb), 4096 + 3 * 4096);
    }
}
