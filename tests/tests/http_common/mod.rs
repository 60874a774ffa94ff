//! Helpers shared by the HTTP test files: test content, a source with short timeouts, and
//! digging the typed `SourceError` out of what a reader returned.

#![allow(dead_code)]

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use basalt_updater::http::{HttpConfig, ProxyConfig, Roots};
use basalt_updater::source::http::HttpSource;
use basalt_updater::source::{ByteRange, Source, SourceError};

/// `len` deterministic pseudo-random bytes (xorshift64*, seeded).
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Write `files` (relative path, bytes) under `root`.
pub fn populate(root: &Path, files: &[(&str, &[u8])]) {
    for (path, bytes) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, bytes).expect("write");
    }
}

/// Test timeouts: short, so faults resolve quickly, and long enough for a loaded machine.
pub fn config() -> HttpConfig {
    HttpConfig {
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(2),
        max_redirects: 5,
        roots: Roots::System,
        proxy: ProxyConfig::none(),
    }
}

pub fn source(base: &str) -> HttpSource {
    HttpSource::new(base, config()).expect("source")
}

/// Open and read to the end; the error of either step as a `SourceError`.
pub fn fetch(
    src: &dyn Source,
    path: &str,
    range: Option<ByteRange>,
    expected: Option<u64>,
) -> Result<Vec<u8>, SourceError> {
    let mut reader = src.open(path, range, expected)?;
    let mut out = Vec::new();
    reader.read_to_end(&mut out).map_err(into_source_error)?;
    Ok(out)
}

/// The `SourceError` inside a reader's `io::Error` (the `Source` contract).
pub fn into_source_error(e: std::io::Error) -> SourceError {
    let kind = e.kind();
    match e.into_inner() {
        Some(inner) => match inner.downcast::<SourceError>() {
            Ok(se) => *se,
            Err(other) => panic!("reader error is not a SourceError: {other} ({kind:?})"),
        },
        None => panic!("reader error without a SourceError ({kind:?})"),
    }
}

pub fn range(offset: u64, len: Option<u64>) -> Option<ByteRange> {
    Some(ByteRange { offset, len })
}
