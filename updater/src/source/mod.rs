//! Where releases come from: a static release repository (see `basalt_manifest::repo` for its
//! layout) reached over HTTP(S) or as a local folder (`file://`, e.g. an air-gapped repository
//! disk). Both implement [`Source`]; everything above this module is the same for both.
//!
//! Nothing a source returns is trusted: callers check every byte against the trust root and the
//! signed manifest. A source's job is to fetch exactly what was asked — a whole file or a byte
//! range — and to fail loudly and in bounded time when it cannot: a missing file is
//! [`SourceError::NotFound`] (the trust-root chain walk stops there), a body longer or shorter
//! than announced or asked for is an error, a stalled transfer times out.

use std::io::Read;

pub mod file;
pub mod http;

pub use file::FileSource;

/// A byte range of a file: from `offset`, `len` bytes (to the end of the file when `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub offset: u64,
    pub len: Option<u64>,
}

/// What went wrong fetching from a source. Each variant names the location (URL or path).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file does not exist (HTTP 404 / 410, or no such file in the folder).
    #[error("{location}: not found")]
    NotFound { location: String },
    /// The server answered with a status we do not accept.
    #[error("{location}: HTTP status {status}")]
    Status { location: String, status: u16 },
    /// The body is shorter or longer than announced (Content-Length / Content-Range) or than
    /// the range or size the caller expects.
    #[error("{location}: body length wrong: {detail}")]
    Length { location: String, detail: String },
    /// No byte arrived within the read timeout, or connecting took too long.
    #[error("{location}: timed out after {secs} s while {while_}")]
    Timeout {
        location: String,
        secs: u64,
        while_: &'static str,
    },
    /// A transport error (connection refused or reset, TLS, proxy, too many redirects …).
    #[error("{location}: {detail}")]
    Transport { location: String, detail: String },
    /// A local file error.
    #[error("{location}: {source}")]
    Io {
        location: String,
        #[source]
        source: std::io::Error,
    },
}

/// A release repository. Implementations: `file` (a folder) and `http` (HTTP(S)).
pub trait Source: Send + Sync + std::fmt::Debug {
    /// Open `path` (relative to the repository, as built by `basalt_manifest::repo`) for
    /// reading, optionally only `range`. `expected_len`, when the caller knows it (from the
    /// signed manifest), is enforced: the returned reader fails with
    /// [`SourceError::Length`] (as the `io::Error`'s inner error) as soon as the body would
    /// exceed it, and at the end when it falls short. The reader also enforces the source's
    /// read timeout on every read.
    fn open(
        &self,
        path: &str,
        range: Option<ByteRange>,
        expected_len: Option<u64>,
    ) -> Result<Box<dyn Read + Send>, SourceError>;

    /// Read a whole small file (a channel head, a trust root, a frame index) of at most `cap`
    /// bytes; a larger file is refused before it is read to the end.
    fn read_small(&self, path: &str, cap: u64) -> Result<Vec<u8>, SourceError> {
        let mut reader = self.open(path, None, None)?;
        let mut out = Vec::new();
        let location = self.location(path);
        let n = (&mut reader)
            .take(cap.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|source| SourceError::Io {
                location: location.clone(),
                source,
            })?;
        if n as u64 > cap {
            return Err(SourceError::Length {
                location,
                detail: format!("larger than the {cap}-byte limit for this file"),
            });
        }
        Ok(out)
    }

    /// The full location of `path`, for messages (a URL or a file path).
    fn location(&self, path: &str) -> String;
}
