//! The bridge from the blocking update pipeline to the async client.
//!
//! The daemon runs a tokio *current-thread* runtime; the pipeline runs on a worker thread and
//! reads artifacts through `Box<dyn Read + Send>`. A `Handle::block_on` on the daemon's
//! runtime would only make progress while the daemon's own thread happens to drive its I/O
//! driver, and would tie the pipeline's liveness to the daemon's. So a [`BlockingClient`] owns
//! a runtime of its own: one worker thread (`basalt-http`) that runs the connection tasks, the
//! DNS lookups and the timers. A blocking call (`send`, `chunk`) runs its future on the calling
//! thread with `Handle::block_on`; it must not be called from inside an async task (use
//! `spawn_blocking` or a plain thread, as the pipeline does).
//!
//! Memory: the body is *pulled*. hyper's connection task reads from the socket only while the
//! body channel has room (a chunk is handed over only when the reader asks for the next one),
//! its buffer is capped (256 KiB), and the reader holds one chunk. A transfer therefore uses a
//! few hundred KiB whatever the file size, and a slow consumer slows the download (TCP
//! backpressure) instead of growing a queue.
//!
//! Dropping the client (or the last response that shares its runtime) shuts the runtime down in
//! the background, which is allowed from any context, including an async task.

use std::sync::Arc;

use bytes::Bytes;
use hyper::header::HeaderMap;
use hyper::StatusCode;

use super::{HttpClient, HttpConfig, HttpError, HttpErrorKind, Request, Response, Url};

/// The private runtime, shut down without blocking when the last user drops it.
#[derive(Debug)]
struct OwnedRuntime {
    handle: tokio::runtime::Handle,
    /// Only `drop` takes it out.
    runtime: Option<tokio::runtime::Runtime>,
}

impl OwnedRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// An [`HttpClient`] with blocking calls.
#[derive(Debug, Clone)]
pub struct BlockingClient {
    client: HttpClient,
    runtime: Arc<OwnedRuntime>,
}

impl BlockingClient {
    /// A client for `config`, with its own one-thread runtime.
    pub fn new(config: HttpConfig) -> Result<Self, HttpError> {
        let setup = |detail: String| HttpError {
            url: String::new(),
            kind: HttpErrorKind::Setup(detail),
        };
        let client = HttpClient::new(config).map_err(|e| setup(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(2)
            .thread_name("basalt-http")
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| setup(format!("starting the HTTP runtime: {e}")))?;
        Ok(BlockingClient {
            client,
            runtime: Arc::new(OwnedRuntime {
                handle: runtime.handle().clone(),
                runtime: Some(runtime),
            }),
        })
    }

    /// The async client inside (same configuration).
    pub fn client(&self) -> &HttpClient {
        &self.client
    }

    /// Send `req` and wait for the response head.
    pub fn send(&self, req: &Request) -> Result<BlockingResponse, HttpError> {
        let response = self.runtime.handle().block_on(self.client.send(req))?;
        Ok(BlockingResponse {
            inner: response,
            runtime: Arc::clone(&self.runtime),
        })
    }
}

/// A response read with blocking calls; keeps the client's runtime alive.
#[derive(Debug)]
pub struct BlockingResponse {
    inner: Response,
    runtime: Arc<OwnedRuntime>,
}

impl BlockingResponse {
    pub fn url(&self) -> &Url {
        self.inner.url()
    }

    pub fn status(&self) -> StatusCode {
        self.inner.status()
    }

    pub fn headers(&self) -> &HeaderMap {
        self.inner.headers()
    }

    pub fn content_length(&self) -> Option<u64> {
        self.inner.content_length()
    }

    pub fn redirects(&self) -> u32 {
        self.inner.redirects()
    }

    /// The next body bytes, `None` at the end; waits at most the read timeout.
    pub fn chunk(&mut self) -> Result<Option<Bytes>, HttpError> {
        let runtime = Arc::clone(&self.runtime);
        runtime.handle().block_on(self.inner.chunk())
    }

    /// The whole body, refused past `cap` bytes.
    pub fn bytes(self, cap: u64) -> Result<Vec<u8>, HttpError> {
        let BlockingResponse { inner, runtime } = self;
        runtime.handle().block_on(inner.bytes(cap))
    }
}
