//! The dm-verity root hash of a `/usr` image and the partition UUIDs named after it.

use std::fmt;

use crate::error::Error;
use crate::guid::Guid;
use crate::hex;

/// A dm-verity root hash: 32 bytes (SHA-256), never all zero.
///
/// All zero is refused because it names no image (no SHA-256 output is zero in practice)
/// and its partition UUIDs would be the nil GUID, which GPT uses for "unused".
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RootHash(pub [u8; 32]);

/// The two partition UUIDs of a `/usr` slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsrUuids {
    /// The data partition: the hash's first 16 bytes.
    pub data: Guid,
    /// The verity partition: the hash's last 16 bytes.
    pub verity: Guid,
}

impl RootHash {
    /// Parse 64 hex digits (either case).
    pub fn parse(text: &str) -> Result<RootHash, Error> {
        let mut out = [0u8; 32];
        hex::decode_into(text, &mut out).map_err(|reason| Error::ParseRootHash {
            value: text.to_owned(),
            reason,
        })?;
        if out == [0; 32] {
            return Err(Error::ParseRootHash {
                value: text.to_owned(),
                reason: "all zero".into(),
            });
        }
        Ok(RootHash(out))
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex (what `usrhash=` carries).
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    /// The partition UUIDs of the slot holding this image, by systemd's rule
    /// (`src/shared/dissect-image.c`): the data partition's UUID is the first 16 bytes and
    /// the verity partition's the last 16, copied verbatim into the UUID's text byte order —
    /// no version or variant bits are set, since systemd compares the raw bytes.
    pub fn partition_uuids(&self) -> UsrUuids {
        let mut data = [0u8; 16];
        let mut verity = [0u8; 16];
        data.copy_from_slice(&self.0[..16]);
        verity.copy_from_slice(&self.0[16..]);
        UsrUuids {
            data: Guid(data),
            verity: Guid(verity),
        }
    }

    /// UUID of the data partition (the first 128 bits).
    pub fn data_uuid(&self) -> Guid {
        self.partition_uuids().data
    }

    /// UUID of the verity partition (the last 128 bits).
    pub fn verity_uuid(&self) -> Guid {
        self.partition_uuids().verity
    }

    /// The hash back from a slot's two partition UUIDs (the inverse of
    /// [`RootHash::partition_uuids`]). May be all zero for partitions not named this way.
    pub fn from_uuids(data: Guid, verity: Guid) -> RootHash {
        let mut out = [0u8; 32];
        out[..16].copy_from_slice(&data.0);
        out[16..].copy_from_slice(&verity.0);
        RootHash(out)
    }
}

impl fmt::Display for RootHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for RootHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RootHash({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_the_verbatim_halves() {
        let text = "00112233445566778899aabbccddeeff0123456789abcdeffedcba9876543210";
        let h = RootHash::parse(text).unwrap();
        let ids = h.partition_uuids();
        assert_eq!(ids.data.to_string(), "00112233-4455-6677-8899-aabbccddeeff");
        assert_eq!(
            ids.verity.to_string(),
            "01234567-89ab-cdef-fedc-ba9876543210"
        );
        assert_eq!(RootHash::from_uuids(ids.data, ids.verity), h);
        assert_eq!(h.to_hex(), text);
        assert_eq!(RootHash::parse(&text.to_uppercase()).unwrap(), h);
    }

    #[test]
    fn refusals() {
        for bad in [
            "0".repeat(64),
            "abc".to_owned(),
            "g".repeat(64),
            "a".repeat(63),
            "a".repeat(65),
            String::new(),
            format!("{}é", "a".repeat(62)),
        ] {
            let err = RootHash::parse(&bad).unwrap_err();
            assert!(
                matches!(err, Error::ParseRootHash { ref value, .. } if *value == bad),
                "{bad}: {err}"
            );
        }
        assert!(RootHash::parse(&"0".repeat(64))
            .unwrap_err()
            .to_string()
            .contains("all zero"));
    }

    proptest::proptest! {
        #[test]
        fn non_zero_hashes_round_trip(bytes in proptest::array::uniform32(0u8..)) {
            let h = RootHash(bytes);
            match RootHash::parse(&h.to_hex()) {
                Ok(back) => proptest::prop_assert_eq!(back, h),
                Err(_) => proptest::prop_assert_eq!(bytes, [0u8; 32]),
            }
            let ids = h.partition_uuids();
            proptest::prop_assert_eq!(RootHash::from_uuids(ids.data, ids.verity), h);
        }
    }
}
