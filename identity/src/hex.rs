//! Hexadecimal text, both directions: lower-case out, either case in.

/// The value of one hex digit (either case).
pub const fn digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decode exactly `out.len() * 2` hex digits into `out`. On error `out` may be partly
/// written; the message says what is wrong.
pub fn decode_into(text: &str, out: &mut [u8]) -> Result<(), String> {
    let b = text.as_bytes();
    if b.len() != out.len() * 2 {
        return Err(format!(
            "{} characters, need {}",
            text.chars().count(),
            out.len() * 2
        ));
    }
    for (i, pair) in b.chunks_exact(2).enumerate() {
        match (digit(pair[0]), digit(pair[1])) {
            (Some(hi), Some(lo)) => out[i] = (hi << 4) | lo,
            _ => {
                return Err(format!(
                    "not a hex digit at character {}",
                    i * 2 + usize::from(digit(pair[0]).is_some())
                ))
            }
        }
    }
    Ok(())
}

/// Lower-case hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_case() {
        let mut out = [0u8; 4];
        decode_into("00fFa9C1", &mut out).unwrap();
        assert_eq!(out, [0x00, 0xff, 0xa9, 0xc1]);
        assert_eq!(encode(&out), "00ffa9c1");
    }

    #[test]
    fn refusals_say_why() {
        let mut out = [0u8; 2];
        assert_eq!(
            decode_into("abc", &mut out).unwrap_err(),
            "3 characters, need 4"
        );
        assert_eq!(
            decode_into("ab0g", &mut out).unwrap_err(),
            "not a hex digit at character 3"
        );
        assert!(decode_into("é0", &mut [0u8; 1]).is_err());
        assert!(decode_into("+1ab", &mut out).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_round_trip(bytes in proptest::collection::vec(0u8.., 0..64)) {
            let text = encode(&bytes);
            let mut back = vec![0u8; bytes.len()];
            decode_into(&text, &mut back).unwrap();
            proptest::prop_assert_eq!(back, bytes);
        }
    }
}
