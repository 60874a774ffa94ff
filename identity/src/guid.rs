//! GUIDs in their text byte order, and the partition type GUIDs Basalt uses.

use std::fmt;

use crate::error::Error;
use crate::hex;

/// A GUID in its textual byte order (the order of the hex digits in `8-4-4-4-12` form).
///
/// GPT stores the first three fields little-endian ("mixed endian"); use
/// [`Guid::to_gpt_bytes`] / [`Guid::from_gpt_bytes`] at that boundary only.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Parse `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (either case).
    pub fn parse(text: &str) -> Result<Guid, Error> {
        let bad = || Error::ParseGuid {
            value: text.to_owned(),
        };
        let b = text.as_bytes();
        if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
            return Err(bad());
        }
        let digits: String = text.chars().filter(|&c| c != '-').collect();
        let mut out = [0u8; 16];
        hex::decode_into(&digits, &mut out).map_err(|_| bad())?;
        Ok(Guid(out))
    }

    /// The 16 bytes as stored in a GPT entry or header.
    pub const fn to_gpt_bytes(self) -> [u8; 16] {
        let b = self.0;
        [
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
            b[14], b[15],
        ]
    }

    /// Inverse of [`Guid::to_gpt_bytes`].
    pub const fn from_gpt_bytes(b: [u8; 16]) -> Guid {
        // The byte swap is its own inverse.
        Guid(Guid(b).to_gpt_bytes())
    }

    /// The all-zero GUID (an unused entry's type).
    pub fn is_nil(self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode(&self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Compile-time GUID literal; a malformed literal fails the build.
pub const fn guid(text: &str) -> Guid {
    let s = text.as_bytes();
    let mut out = [0u8; 16];
    let mut n = 0;
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'-' {
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (hex::digit(s[i]), hex::digit(s[i + 1])) else {
            panic!("GUID literal must be hex digits and dashes");
        };
        out[n] = (hi << 4) | lo;
        n += 1;
        i += 2;
    }
    assert!(n == 16, "GUID literal must have 32 hex digits");
    Guid(out)
}

/// Partition type GUIDs from the UAPI Discoverable Partitions Specification (x86-64
/// variants), as systemd-repart, systemd-gpt-auto-generator and `basalt-disk` use them.
pub mod types {
    use super::{guid, Guid};
    /// EFI System Partition.
    pub const ESP: Guid = guid("c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    /// `/usr` partition, x86-64.
    pub const USR_X86_64: Guid = guid("8484680c-9521-48c6-9c11-b0720656f69e");
    /// `/usr` dm-verity hash partition, x86-64.
    pub const USR_VERITY_X86_64: Guid = guid("77ff5f63-e7b6-4633-acf4-1565b864c0e6");
    /// Root partition, x86-64 (Basalt's writable root holding `/etc` and `/var`).
    pub const ROOT_X86_64: Guid = guid("4f68bce3-e8cd-4db1-96e7-fbcaf984b709");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_and_mixed_endian() {
        let g = types::ESP;
        assert_eq!(g.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        assert_eq!(Guid::parse(&g.to_string()).unwrap(), g);
        assert_eq!(
            Guid::parse("C12A7328-F81F-11D2-BA4B-00A0C93EC93B").unwrap(),
            g
        );
        // UEFI spec: the ESP type GUID is stored as 28 73 2A C1 1F F8 D2 11 BA 4B ...
        assert_eq!(
            &g.to_gpt_bytes()[..8],
            &[0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11]
        );
        assert_eq!(Guid::from_gpt_bytes(g.to_gpt_bytes()), g);
    }

    #[test]
    fn dps_table() {
        // The spec's table, x86-64 rows.
        for (g, text) in [
            (types::USR_X86_64, "8484680c-9521-48c6-9c11-b0720656f69e"),
            (
                types::USR_VERITY_X86_64,
                "77ff5f63-e7b6-4633-acf4-1565b864c0e6",
            ),
            (types::ROOT_X86_64, "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"),
        ] {
            assert_eq!(g.to_string(), text);
        }
    }

    #[test]
    fn parse_rejects_garbage() {
        for bad in [
            "",
            "c12a7328f81f11d2ba4b00a0c93ec93b",
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93",
            "g12a7328-f81f-11d2-ba4b-00a0c93ec93b",
            "c12a7328-f81f-11d2-ba4b_00a0c93ec93b",
            "c12a7328-f81f-11d2-ba4b-00a0c93ec9é",
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93bb",
            "+12a7328-f81f-11d2-ba4b-00a0c93ec93b",
        ] {
            assert!(Guid::parse(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_guid_round_trips(bytes in proptest::array::uniform16(0u8..)) {
            let g = Guid(bytes);
            proptest::prop_assert_eq!(Guid::parse(&g.to_string()).unwrap(), g);
            proptest::prop_assert_eq!(Guid::parse(&g.to_string().to_uppercase()).unwrap(), g);
            proptest::prop_assert_eq!(Guid::from_gpt_bytes(g.to_gpt_bytes()), g);
        }

        #[test]
        fn any_text_parses_without_panic(text in "\\PC{0,40}") {
            let _ = Guid::parse(&text);
        }
    }
}
