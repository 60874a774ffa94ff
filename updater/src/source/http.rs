//! A release repository over HTTP(S): the [`Source`] on top of the node's HTTP client
//! ([`crate::http`]).
//!
//! What `open` guarantees, on top of the client's timeouts, redirect and proxy rules:
//! - **Exactly the bytes asked for.** A range is asked with `Range: bytes=OFF-` or
//!   `bytes=OFF-END`. A `206` reply must carry a `Content-Range` that covers exactly that range
//!   (and a `Content-Length` equal to it, when present). A `200` reply to a range request — a
//!   server or proxy that ignores `Range` — is *accepted by skipping*: the first `OFF` bytes
//!   are read and discarded (under the same read timeout), then the asked bytes are yielded.
//!   Refusing it would make resume impossible behind such a server, and the bytes are checked
//!   against the signed manifest above us anyway; the cost is re-downloading the prefix, which
//!   is logged. A `416` is a [`SourceError::Length`] (the file is shorter than the offset),
//!   except for an open range that starts exactly at the end of the file (`bytes */OFF`):
//!   that is an empty body, as the folder source gives.
//! - **Lengths.** `expected_len` is the number of bytes the reader yields (the range's length,
//!   or the rest of the file from the offset). A reply that announces another length
//!   (`Content-Length`, `Content-Range`) is refused before any byte is read; a body without a
//!   length (chunked) is cut off as soon as it would exceed it, and one that ends short — or a
//!   connection closed before the announced length — fails at the end. All as
//!   [`SourceError::Length`] inside the `io::Error` the reader returns.
//! - **Bounded time.** Every read waits at most the read timeout: a stalled server is a
//!   [`SourceError::Timeout`] (inside an `io::Error` of kind `TimedOut`).
//! - **Status.** 404 and 410 are [`SourceError::NotFound`] (the root-chain walk stops there);
//!   any other status than 200/206 is [`SourceError::Status`] (429 and 503 included: retrying
//!   is the daemon's schedule's business, not the source's).
//!
//! Errors name the URL that was asked for; when the failure happened after a redirect, the
//! detail names the hop that failed.

use std::io::{self, Read};

use bytes::{Buf, Bytes};
use hyper::header::{self, HeaderValue};

use super::{ByteRange, Source, SourceError};
use crate::http::blocking::{BlockingClient, BlockingResponse};
use crate::http::range::{self, ContentRange};
use crate::http::{url, HttpConfig, HttpError, HttpErrorKind, Request, Url};

/// A release repository at an `http://` or `https://` base URL.
#[derive(Debug, Clone)]
pub struct HttpSource {
    base: Url,
    client: BlockingClient,
}

impl HttpSource {
    /// A source for the repository at `base` (a trailing `/` is added when missing).
    pub fn new(base: &str, config: HttpConfig) -> Result<Self, HttpError> {
        let mut base = url::parse(base).map_err(|kind| HttpError {
            url: base.to_string(),
            kind: kind.into(),
        })?;
        if base.query().is_some() {
            return Err(HttpError {
                url: base.to_string(),
                kind: HttpErrorKind::Setup("a repository URL has no query".into()),
            });
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let client = BlockingClient::new(config).map_err(|mut e| {
            e.url = base.to_string();
            e
        })?;
        Ok(HttpSource { base, client })
    }

    /// The repository's base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The URL of `path`: its `/`-separated segments appended to the base, each
    /// percent-encoded; empty, `.` and `..` segments are refused so no path leaves the
    /// repository.
    pub fn url(&self, path: &str) -> Result<Url, SourceError> {
        let bad = |reason: &str| SourceError::Transport {
            location: format!("{}{path}", self.base),
            detail: format!("invalid repository path: {reason}"),
        };
        if path.is_empty() {
            return Err(bad("empty"));
        }
        let mut url = self.base.clone();
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|()| bad("the base URL cannot take a path"))?;
            segments.pop_if_empty();
            for segment in path.split('/') {
                if segment.is_empty() || segment == "." || segment == ".." {
                    return Err(bad("empty, `.` or `..` segment"));
                }
                segments.push(segment);
            }
        }
        Ok(url)
    }
}

/// The location used in messages for a failed request, and the source error for it.
fn source_error(location: &str, err: HttpError) -> SourceError {
    let hop = if err.url == location || err.url.is_empty() {
        String::new()
    } else {
        format!(" (at {})", err.url)
    };
    match err.kind {
        HttpErrorKind::Timeout { after, while_ } => SourceError::Timeout {
            location: location.to_string(),
            secs: after.as_secs_f64().ceil() as u64,
            while_,
        },
        kind => SourceError::Transport {
            location: location.to_string(),
            detail: format!("{kind}{hop}"),
        },
    }
}

fn length(location: &str, detail: String) -> SourceError {
    SourceError::Length {
        location: location.to_string(),
        detail,
    }
}

impl Source for HttpSource {
    fn open(
        &self,
        path: &str,
        range: Option<ByteRange>,
        expected_len: Option<u64>,
    ) -> Result<Box<dyn Read + Send>, SourceError> {
        let url = self.url(path)?;
        let location = url.to_string();
        let asked = range.unwrap_or(ByteRange {
            offset: 0,
            len: None,
        });
        if let (Some(len), Some(expected)) = (asked.len, expected_len) {
            if len != expected {
                return Err(length(
                    &location,
                    format!("asked for {len} bytes but expecting {expected}"),
                ));
            }
        }
        if asked.len == Some(0) {
            // Nothing to fetch, and no Range header can express it.
            return Ok(Box::new(io::empty()));
        }
        let header_value =
            range::range_header(asked).map_err(|e| length(&location, e.to_string()))?;
        let mut request = Request::get(url);
        if let Some(value) = &header_value {
            let value = HeaderValue::from_str(value)
                .map_err(|e| length(&location, format!("Range header: {e}")))?;
            request = request.header(header::RANGE, value);
        }
        let response = self
            .client
            .send(&request)
            .map_err(|e| source_error(&location, e))?;
        let plan = plan_body(
            &location,
            &response,
            asked,
            header_value.is_some(),
            expected_len,
        )?;
        if plan.skip > 0 {
            tracing::warn!(
                url = %location,
                skipped = plan.skip,
                "server ignored the Range header; discarding the bytes before the offset"
            );
        }
        Ok(Box::new(BodyReader {
            response,
            location,
            chunk: Bytes::new(),
            skip: plan.skip,
            limit: plan.limit,
            truncate: plan.truncate,
            received: 0,
            state: State::Reading,
        }))
    }

    fn location(&self, path: &str) -> String {
        match self.url(path) {
            Ok(url) => url.to_string(),
            Err(_) => format!("{}{path}", self.base),
        }
    }
}

/// How to read a body: bytes to discard first, then exactly `limit` bytes when it is known
/// (an error as soon as more arrive, and at the end when fewer did); with `truncate`, more
/// may follow and are not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    skip: u64,
    limit: Option<u64>,
    truncate: bool,
}

/// Check the status and the length headers against what was asked; decide how to read.
fn plan_body(
    location: &str,
    response: &BlockingResponse,
    asked: ByteRange,
    sent_range: bool,
    expected_len: Option<u64>,
) -> Result<Plan, SourceError> {
    let status = response.status().as_u16();
    let content_length =
        match response.headers().get(header::CONTENT_LENGTH) {
            None => None,
            Some(_) => Some(response.content_length().ok_or_else(|| {
                length(location, "the Content-Length header is not a number".into())
            })?),
        };
    // The number of bytes the reader will yield, when the headers say it.
    let (skip, announced) = match status {
        404 | 410 => {
            return Err(SourceError::NotFound {
                location: location.to_string(),
            })
        }
        416 if sent_range => {
            // An open range starting exactly at the end of the file is empty, not an error
            // (the folder source agrees); anything else asked beyond the end is.
            let complete = response
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| range::parse_unsatisfied(v).ok());
            if asked.len.is_none() && complete == Some(asked.offset) {
                (0, Some(0))
            } else {
                return Err(length(
                    location,
                    format!(
                        "range {} not satisfiable: the file is shorter{}",
                        range::describe(asked),
                        complete
                            .map(|c| format!(" ({c} bytes)"))
                            .unwrap_or_default()
                    ),
                ));
            }
        }
        206 if sent_range => {
            let value = response
                .headers()
                .get(header::CONTENT_RANGE)
                .ok_or_else(|| length(location, "206 reply without Content-Range".into()))?;
            let value = value.to_str().map_err(|_| {
                length(
                    location,
                    "the Content-Range header is not visible ASCII".into(),
                )
            })?;
            let reply: ContentRange =
                range::parse_content_range(value).map_err(|e| length(location, e.to_string()))?;
            let len =
                range::check_reply(asked, reply).map_err(|e| length(location, e.to_string()))?;
            if let Some(cl) = content_length {
                if cl != len {
                    return Err(length(
                        location,
                        format!("Content-Length {cl} does not match Content-Range {reply}"),
                    ));
                }
            }
            (0, Some(len))
        }
        200 => {
            // The whole file; when a range was asked, skip to it (see the module docs).
            let skip = if sent_range { asked.offset } else { 0 };
            let announced = match content_length {
                Some(total) if total < skip => {
                    return Err(length(
                        location,
                        format!("the file has {total} bytes, fewer than the offset {skip}"),
                    ))
                }
                Some(total) => Some(match asked.len {
                    Some(len) if total - skip < len => {
                        return Err(length(
                            location,
                            format!(
                                "the file has {total} bytes, too few for {}",
                                range::describe(asked)
                            ),
                        ))
                    }
                    Some(len) => len,
                    None => total - skip,
                }),
                None => asked.len,
            };
            (skip, announced)
        }
        _ => {
            return Err(SourceError::Status {
                location: location.to_string(),
                status,
            })
        }
    };
    if let (Some(a), Some(e)) = (announced, expected_len) {
        if a != e {
            return Err(length(
                location,
                format!("the server announces {a} bytes, expected {e}"),
            ));
        }
    }
    let limit = announced.or(expected_len);
    // A 200 to a bounded range: the body continues past what we want. A 416 for an empty
    // range at the end: its body is an error page, not ours.
    let truncate = (status == 200 && sent_range && asked.len.is_some()) || status == 416;
    Ok(Plan {
        skip,
        limit,
        truncate,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Reading,
    /// Every byte wanted was yielded or is in `chunk`.
    Done,
    /// An error was returned; later reads fail too.
    Failed,
}

/// The body of one reply, read with blocking calls; see the module docs for what it enforces.
#[derive(Debug)]
struct BodyReader {
    response: BlockingResponse,
    location: String,
    /// Received bytes not yet handed out.
    chunk: Bytes,
    /// Bytes still to discard before the range starts (a 200 reply to a range request).
    skip: u64,
    limit: Option<u64>,
    /// The body is the whole file and we want only `limit` bytes of it: stop there.
    truncate: bool,
    /// Bytes accepted so far (after the skip).
    received: u64,
    state: State,
}

impl BodyReader {
    fn fail(&mut self, kind: io::ErrorKind, err: SourceError) -> io::Error {
        self.state = State::Failed;
        io::Error::new(kind, err)
    }

    fn expected(&self) -> String {
        match self.limit {
            Some(limit) => format!("{limit}"),
            None => "an unknown number of".into(),
        }
    }
    /// Wait for the next chunk and account for it (into `chunk`, or the end into `state`).
    fn fill(&mut self) -> io::Result<()> {
        if self.truncate && self.limit == Some(self.received) {
            // Nothing (more) wanted from this body.
            self.state = State::Done;
            return Ok(());
        }
        loop {
            let mut data = match self.response.chunk() {
                Ok(Some(data)) => data,
                Ok(None) => return self.end(),
                Err(e) => return Err(self.body_error(e)),
            };
            if self.skip > 0 {
                let n = self.skip.min(data.len() as u64);
                data.advance(n as usize);
                self.skip -= n;
                if data.is_empty() {
                    continue;
                }
            }
            let total = self.received + data.len() as u64;
            if let Some(limit) = self.limit {
                if total > limit && !self.truncate {
                    let err = length(
                        &self.location,
                        format!("more bytes than expected: at least {total}, expected {limit}"),
                    );
                    return Err(self.fail(io::ErrorKind::InvalidData, err));
                }
                data.truncate((limit - self.received).min(data.len() as u64) as usize);
            }
            self.received += data.len() as u64;
            self.chunk = data;
            if self.truncate && Some(self.received) == self.limit {
                // The rest of the whole-file body is not ours to read.
                self.state = State::Done;
            }
            return Ok(());
        }
    }

    fn end(&mut self) -> io::Result<()> {
        if self.skip > 0 {
            let err = length(
                &self.location,
                format!(
                    "the body ended {} bytes before the requested offset",
                    self.skip
                ),
            );
            return Err(self.fail(io::ErrorKind::UnexpectedEof, err));
        }
        if let Some(limit) = self.limit {
            if self.received < limit {
                let err = length(
                    &self.location,
                    format!("the body ended after {} of {limit} bytes", self.received),
                );
                return Err(self.fail(io::ErrorKind::UnexpectedEof, err));
            }
        }
        self.state = State::Done;
        Ok(())
    }

    fn body_error(&mut self, err: HttpError) -> io::Error {
        if closed_early(&err) {
            let e = length(
                &self.location,
                format!(
                    "the connection closed after {} of {} bytes",
                    self.received,
                    self.expected()
                ),
            );
            return self.fail(io::ErrorKind::UnexpectedEof, e);
        }
        let kind = if err.is_timeout() {
            io::ErrorKind::TimedOut
        } else {
            io::ErrorKind::Other
        };
        let e = match source_error(&self.location, err) {
            SourceError::Transport { location, detail } => SourceError::Transport {
                location,
                detail: format!("{detail} (after {} body bytes)", self.received),
            },
            other => other,
        };
        self.fail(kind, e)
    }
}

/// Whether the body ended (clean EOF from the peer) before its announced length: hyper
/// reports it as an incomplete message or as an `UnexpectedEof` I/O error in the chain.
fn closed_early(err: &HttpError) -> bool {
    let HttpErrorKind::Protocol { source, .. } = &err.kind else {
        return false;
    };
    if source.is_incomplete_message() {
        return true;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::UnexpectedEof {
                return true;
            }
        }
        cause = c.source();
    }
    false
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.chunk.is_empty() {
                let n = buf.len().min(self.chunk.len());
                buf[..n].copy_from_slice(&self.chunk[..n]);
                self.chunk.advance(n);
                return Ok(n);
            }
            match self.state {
                State::Done => return Ok(0),
                State::Failed => {
                    return Err(io::Error::other(SourceError::Transport {
                        location: self.location.clone(),
                        detail: "read after an earlier error".into(),
                    }))
                }
                State::Reading => self.fill()?,
            }
        }
    }
}
