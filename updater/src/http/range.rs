//! Byte ranges on the wire: the `Range` request header we send and the `Content-Range` reply
//! header we check (RFC 9110 §14). Only the single-range `bytes` unit exists here: we never ask
//! for several ranges, so a `multipart/byteranges` reply is refused by the caller (its
//! `Content-Range` is absent).
//!
//! The parser is deliberately strict — exactly `bytes FIRST-LAST/COMPLETE` or
//! `bytes FIRST-LAST/*` with ASCII decimal numbers, no signs, no spaces inside, no overflow —
//! because a reply that is "nearly right" is exactly what a broken or hostile server sends.

use crate::source::ByteRange;

/// Why a range could not be asked for, or a reply does not match what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// The requested range cannot be written as a `Range` header.
    #[error("range of {len} bytes from offset {offset} cannot be requested: {reason}")]
    Unrepresentable {
        offset: u64,
        len: u64,
        reason: &'static str,
    },
    /// The `Content-Range` header is not of the form `bytes FIRST-LAST/(COMPLETE|*)`.
    #[error("malformed Content-Range {value:?}: {reason}")]
    Malformed { value: String, reason: &'static str },
    /// The reply covers other bytes than the ones asked for.
    #[error("Content-Range {got} does not match the requested {asked}")]
    Mismatch { asked: String, got: String },
}

/// A parsed `Content-Range: bytes FIRST-LAST/COMPLETE` (`complete` is `None` for `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub first: u64,
    pub last: u64,
    pub complete: Option<u64>,
}

impl ContentRange {
    /// Number of bytes the reply carries (`last - first + 1`).
    pub fn len(&self) -> u64 {
        // parse() guarantees first <= last; only `bytes 0-18446744073709551615/*` would
        // overflow, and no body can be that long anyway.
        (self.last - self.first).saturating_add(1)
    }

    /// Never true: a satisfiable range holds at least one byte (kept for clippy's `len` rule).
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl std::fmt::Display for ContentRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.complete {
            Some(c) => write!(f, "bytes {}-{}/{c}", self.first, self.last),
            None => write!(f, "bytes {}-{}/*", self.first, self.last),
        }
    }
}

/// The `Range` header value for `range`: `bytes=OFF-` (to the end) or `bytes=OFF-END`
/// (inclusive end). `None` when the whole file is wanted (no header is sent). An empty range
/// (`len == 0`) has no header form; the caller answers it without a request.
pub fn range_header(range: ByteRange) -> Result<Option<String>, RangeError> {
    match range.len {
        None if range.offset == 0 => Ok(None),
        None => Ok(Some(format!("bytes={}-", range.offset))),
        Some(0) => Err(RangeError::Unrepresentable {
            offset: range.offset,
            len: 0,
            reason: "an empty range has no Range header form",
        }),
        Some(len) => {
            let last = range
                .offset
                .checked_add(len - 1)
                .ok_or(RangeError::Unrepresentable {
                    offset: range.offset,
                    len,
                    reason: "the end overflows a 64-bit offset",
                })?;
            Ok(Some(format!("bytes={}-{last}", range.offset)))
        }
    }
}

/// Parse a `Content-Range` header value of a `206 Partial Content` reply.
pub fn parse_content_range(value: &str) -> Result<ContentRange, RangeError> {
    let bad = |reason| RangeError::Malformed {
        value: value.chars().take(128).collect(),
        reason,
    };
    let rest = value
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes "))
        .map(|_| &value[6..])
        .ok_or_else(|| bad("the unit must be `bytes `"))?;
    let (span, complete) = rest
        .split_once('/')
        .ok_or_else(|| bad("missing `/COMPLETE-LENGTH`"))?;
    if span == "*" {
        return Err(bad("`*` (unsatisfied range) is only valid in a 416 reply"));
    }
    let (first, last) = span
        .split_once('-')
        .ok_or_else(|| bad("missing `FIRST-LAST`"))?;
    let first = decimal(first).ok_or_else(|| bad("FIRST is not a decimal number"))?;
    let last = decimal(last).ok_or_else(|| bad("LAST is not a decimal number"))?;
    let complete = match complete {
        "*" => None,
        c => Some(decimal(c).ok_or_else(|| bad("COMPLETE-LENGTH is not a decimal number or `*`"))?),
    };
    if first > last {
        return Err(bad("FIRST is after LAST"));
    }
    if let Some(c) = complete {
        if last >= c {
            return Err(bad("LAST is not inside COMPLETE-LENGTH"));
        }
    }
    Ok(ContentRange {
        first,
        last,
        complete,
    })
}

/// Parse the `Content-Range: bytes */COMPLETE` of a `416 Range Not Satisfiable` reply: the
/// file's length.
pub fn parse_unsatisfied(value: &str) -> Result<u64, RangeError> {
    let bad = |reason| RangeError::Malformed {
        value: value.chars().take(128).collect(),
        reason,
    };
    value
        .get(..8)
        .filter(|head| head.eq_ignore_ascii_case("bytes */"))
        .and_then(|_| decimal(&value[8..]))
        .ok_or_else(|| bad("a 416 reply's Content-Range must be `bytes */COMPLETE-LENGTH`"))
}

/// 1 to 19 ASCII digits (no sign, no spaces) that fit in a u64.
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Check that `reply` covers exactly `asked`: it starts at the asked offset and ends at the
/// asked end (or, for an open range, at the end of the file when the server names its length).
/// Returns the number of body bytes the reply must carry.
pub fn check_reply(asked: ByteRange, reply: ContentRange) -> Result<u64, RangeError> {
    let mismatch = || RangeError::Mismatch {
        asked: describe(asked),
        got: reply.to_string(),
    };
    if reply.first != asked.offset {
        return Err(mismatch());
    }
    match asked.len {
        Some(len) => {
            if Some(reply.last) != asked.offset.checked_add(len.saturating_sub(1)) || len == 0 {
                return Err(mismatch());
            }
        }
        None => {
            if let Some(complete) = reply.complete {
                if reply.last + 1 != complete {
                    return Err(mismatch());
                }
            }
        }
    }
    Ok(reply.len())
}

/// `bytes OFF-END` / `bytes OFF-` for messages.
pub fn describe(range: ByteRange) -> String {
    match range.len {
        Some(len) => format!(
            "bytes {}-{}",
            range.offset,
            range.offset.saturating_add(len.saturating_sub(1))
        ),
        None => format!("bytes {}-", range.offset),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(offset: u64, len: Option<u64>) -> ByteRange {
        ByteRange { offset, len }
    }

    #[test]
    fn range_header_forms() {
        assert_eq!(range_header(r(0, None)), Ok(None));
        assert_eq!(range_header(r(5, None)), Ok(Some("bytes=5-".into())));
        assert_eq!(range_header(r(0, Some(1))), Ok(Some("bytes=0-0".into())));
        assert_eq!(range_header(r(10, Some(5))), Ok(Some("bytes=10-14".into())));
        assert!(range_header(r(3, Some(0))).is_err());
        assert!(range_header(r(u64::MAX, Some(2))).is_err());
        assert_eq!(
            range_header(r(u64::MAX, Some(1))),
            Ok(Some(format!("bytes={0}-{0}", u64::MAX)))
        );
    }

    #[test]
    fn parses_good_content_ranges() {
        let cr = parse_content_range("bytes 0-499/1234").unwrap();
        assert_eq!((cr.first, cr.last, cr.complete), (0, 499, Some(1234)));
        assert_eq!(cr.len(), 500);
        let cr = parse_content_range("BYTES 7-7/*").unwrap();
        assert_eq!((cr.first, cr.last, cr.complete), (7, 7, None));
    }

    #[test]
    fn refuses_malformed_content_ranges() {
        for bad in [
            "",
            "bytes",
            "bytes ",
            "bits 0-1/2",
            "bytes=0-1/2",
            "bytes  0-1/2",
            "bytes 0-1",
            "bytes 0-1/",
            "bytes -1/2",
            "bytes 0-/2",
            "bytes +0-1/2",
            "bytes 0--1/2",
            "bytes 0 -1/2",
            "bytes 0-1 /2",
            "bytes 0-1/ 2",
            "bytes 2-1/5",
            "bytes 0-5/5",
            "bytes 0-1/0",
            "bytes */5",
            "bytes 0-18446744073709551616/*",
            "bytes 0x1-2/3",
            "bytes 0-1/2,3-4/5",
            "bytes ０-1/2",
        ] {
            assert!(parse_content_range(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn parses_unsatisfied_ranges() {
        assert_eq!(parse_unsatisfied("bytes */1234"), Ok(1234));
        assert_eq!(parse_unsatisfied("Bytes */0"), Ok(0));
        for bad in [
            "bytes */",
            "bytes */*",
            "bytes 0-1/2",
            "bytes */-1",
            "bytes */ 1",
            "*/1",
            "",
        ] {
            assert!(parse_unsatisfied(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn checks_reply_against_request() {
        let cr = |first, last, complete| ContentRange {
            first,
            last,
            complete,
        };
        assert_eq!(check_reply(r(10, Some(5)), cr(10, 14, Some(100))), Ok(5));
        assert_eq!(check_reply(r(10, Some(5)), cr(10, 14, None)), Ok(5));
        assert_eq!(check_reply(r(10, None), cr(10, 99, Some(100))), Ok(90));
        assert_eq!(check_reply(r(10, None), cr(10, 50, None)), Ok(41));
        // Starts elsewhere, ends early, ends late, stops before the end of the file.
        assert!(check_reply(r(10, Some(5)), cr(0, 14, Some(100))).is_err());
        assert!(check_reply(r(10, Some(5)), cr(10, 13, Some(100))).is_err());
        assert!(check_reply(r(10, Some(5)), cr(10, 15, Some(100))).is_err());
        assert!(check_reply(r(10, None), cr(10, 50, Some(100))).is_err());
        assert!(check_reply(r(10, None), cr(11, 99, Some(100))).is_err());
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(first in 0u64..u64::MAX / 2, len in 1u64..1 << 40,
                                   extra in proptest::option::of(0u64..1 << 40)) {
            let last = first + len - 1;
            let cr = ContentRange { first, last, complete: extra.map(|e| last + 1 + e) };
            prop_assert_eq!(parse_content_range(&cr.to_string()), Ok(cr));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = parse_content_range(&s);
        }

        #[test]
        fn header_and_check_agree(offset in 0u64..1 << 50, len in proptest::option::of(1u64..1 << 30),
                                  size_extra in 0u64..1 << 20) {
            // What a correct server answers to our own header is accepted, with the right length.
            let asked = ByteRange { offset, len };
            let end = match len { Some(l) => offset + l, None => offset + 1 + size_extra };
            let complete = end + if len.is_some() { size_extra } else { 0 };
            let reply = ContentRange { first: offset, last: end - 1, complete: Some(complete) };
            prop_assert_eq!(check_reply(asked, reply), Ok(end - offset));
            if len.is_some() || offset > 0 {
                prop_assert!(range_header(asked).unwrap().is_some());
            }
        }
    }
}
