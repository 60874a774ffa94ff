//! The HTTP server: hyper 1 (HTTP/1.1, keep-alive) on tokio. It parses, checks the shape of
//! credentials, and runs the [`Service`] call on a blocking thread (the store is
//! synchronous); it holds no state of its own, so any number of replicas can share a
//! PostgreSQL database behind a load balancer.
//!
//! | path | who | what |
//! |---|---|---|
//! | `POST /v1/enroll` | enrolment token | a node gets its node token |
//! | `POST /v1/check-in` | node token | report, get a directive |
//! | `POST /v1/pre-reboot`, `/v1/steady-state` | node token (header) | FleetLock |
//! | `POST /fleetlock/<node token>/v1/…` | node token (path) | FleetLock for agents that cannot send a header (Zincati's `base_url`) |
//! | `GET, HEAD /repo/<path>` | anyone | the release repository, with `Range` (bytes are verified by nodes, not trusted) |
//! | `/api/v1/…`, `GET /metrics` | operator token | see [`crate::api`] |
//! | `GET /` | anyone | the status page (static; it asks for an operator token and calls the API) |
//! | `GET /healthz` | anyone | `ok` (for load balancers) |
//!
//! Bounds: request heads must arrive within [`HEADER_TIMEOUT`]; bodies are read up to the
//! endpoint's cap and refused with 413 above it; nothing is buffered beyond that. Refusals
//! carry `{"error":{"kind","message"}}` (FleetLock's own `{"kind","value"}` on its paths).

use std::convert::Infallible;
use std::future::Future;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use basalt_rollout_wire::{self as wire, ErrorBody, FleetLockError};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::api;
use crate::error::Error;
use crate::policy::RolloutState;
use crate::service::{Caller, Service};

/// How long a client may take to send a request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// Chunk size when streaming repository files.
const CHUNK: usize = 64 << 10;

type Body = BoxBody<Bytes, std::io::Error>;

/// The status page, a static file with no data in it (it fetches the API with the operator
/// token the user types in, kept in the tab's session storage).
const INDEX_HTML: &str = include_str!("web/index.html");

/// What the server serves.
#[derive(Debug, Clone)]
pub struct Server {
    service: Service,
    repository_dir: Option<Arc<PathBuf>>,
}

impl Server {
    pub fn new(service: Service, repository_dir: Option<PathBuf>) -> Self {
        Server {
            service,
            repository_dir: repository_dir.map(Arc::new),
        }
    }

    /// Serves connections from `listener` until `shutdown` completes; then stops accepting,
    /// lets requests in progress finish (each connection closes after its current request),
    /// and returns.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let flusher = tokio::spawn(flush_last_seen_every(
            self.service.clone(),
            LAST_SEEN_FLUSH,
            stop_rx.clone(),
        ));
        let mut tasks = tokio::task::JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let server = self.clone();
            let mut stop = stop_rx.clone();
            tasks.spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let server = server.clone();
                    async move { Ok::<_, Infallible>(server.handle(req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service);
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(%peer, error = %e, "connection ended");
                        }
                    }
                    _ = stop.changed() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
                    }
                }
            });
            // Reap finished connections so the set does not grow without bound.
            while tasks.try_join_next().is_some() {}
        }
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(15), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
        // The flusher writes what the last requests buffered, then ends.
        let _ = tokio::time::timeout(Duration::from_secs(15), flusher).await;
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let response = match self.route(req).await {
            Ok(response) => response,
            Err(e) => {
                let status = e.status();
                if status >= 500 {
                    tracing::error!(%method, %path, error = %e, "request failed");
                } else {
                    tracing::info!(%method, %path, status, error = %e, "request refused");
                }
                json_error(status, e.kind(), &e.to_string())
            }
        };
        response
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Response<Body>, Error> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (&method, segments.as_slice()) {
            (&Method::GET, [""]) => Ok(respond(
                200,
                "text/html; charset=utf-8",
                INDEX_HTML.as_bytes().to_vec(),
            )),
            (&Method::GET, ["healthz"]) => Ok(respond(200, "text/plain", b"ok\n".to_vec())),
            (&Method::GET | &Method::HEAD, ["repo", rest @ ..]) => {
                self.repository(&req, rest).await
            }
            (&Method::POST, ["v1", "enroll"]) => {
                let (caller, body) = self.authed(req, wire::MAX_SMALL_BYTES).await?;
                let service = self.service.clone();
                let enrolled = self.run(move || service.enroll(&caller, &body)).await?;
                Ok(respond(200, "application/json", enrolled.to_json()))
            }
            (&Method::POST, ["v1", "check-in"]) => {
                let token = bearer(&req).map(str::to_owned);
                let body = read_body(req, wire::MAX_CHECK_IN_BYTES).await?;
                let service = self.service.clone();
                if !service.reads_on_async_worker() {
                    let directive = self
                        .run(move || service.check_in_with_token(token.as_deref(), &body))
                        .await?;
                    return Ok(respond(200, "application/json", directive.to_json()));
                }
                // SQLite: the steady state first, on this worker — a read-only transaction on
                // a reader connection (tens of microseconds of reads from memory, nothing
                // waits for the writer), so the usual answer costs no hand-off to the
                // blocking pool.
                if let Some(directive) = service.check_in_read_only(token.as_deref(), &body)? {
                    return Ok(respond(200, "application/json", directive.to_json()));
                }
                // Anything to write: one write transaction on the blocking pool.
                let directive = self
                    .run(move || service.check_in_writing(token.as_deref(), &body))
                    .await?;
                Ok(respond(200, "application/json", directive.to_json()))
            }
            (&Method::POST, ["v1", step @ ("pre-reboot" | "steady-state")]) => {
                let step = (*step).to_owned();
                let token = bearer(&req).map(str::to_owned);
                self.fleetlock(req, token, &step).await
            }
            (&Method::POST, ["fleetlock", token, "v1", step @ ("pre-reboot" | "steady-state")]) => {
                let step = (*step).to_owned();
                let token = Some((*token).to_owned());
                self.fleetlock(req, token, &step).await
            }
            (_, ["api", "v1", rest @ ..]) => {
                let rest: Vec<String> = rest.iter().map(|s| (*s).to_owned()).collect();
                let query = req.uri().query().unwrap_or("").to_owned();
                let (caller, body) = self.authed(req, api::MAX_API_BODY).await?;
                self.operator(method, rest, query, caller, body).await
            }
            (&Method::GET, ["metrics"]) => {
                let (caller, _) = self.authed(req, 0).await?;
                let service = self.service.clone();
                let text = self.run(move || service.metrics(&caller)).await?;
                Ok(respond(200, "text/plain; version=0.0.4", text.into_bytes()))
            }
            _ => Err(Error::NotFound(format!("no endpoint {method} {path}"))),
        }
    }

    /// Authenticates the bearer token, then reads the body up to `cap` bytes.
    async fn authed(&self, req: Request<Incoming>, cap: usize) -> Result<(Caller, Vec<u8>), Error> {
        let token = bearer(&req).map(str::to_owned);
        let service = self.service.clone();
        let caller = self
            .run(move || service.authenticate(token.as_deref()))
            .await?;
        let body = read_body(req, cap).await?;
        Ok((caller, body))
    }

    async fn fleetlock(
        &self,
        req: Request<Incoming>,
        token: Option<String>,
        step: &str,
    ) -> Result<Response<Body>, Error> {
        let flagged = req
            .headers()
            .get(wire::FLEETLOCK_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let result: Result<Result<(), String>, Error> = async {
            if !flagged {
                return Err(Error::bad(
                    "fleet-lock",
                    format!("the {}: true header is missing", wire::FLEETLOCK_HEADER),
                ));
            }
            let service = self.service.clone();
            let caller = self
                .run(move || service.authenticate(token.as_deref()))
                .await?;
            let body = read_body(req, wire::MAX_SMALL_BYTES).await?;
            let service = self.service.clone();
            if step == "pre-reboot" {
                self.run(move || service.pre_reboot(&caller, &body)).await
            } else {
                self.run(move || service.steady_state(&caller, &body).map(Ok))
                    .await
            }
        }
        .await;
        let (status, kind, value) = match result {
            Ok(Ok(())) => return Ok(respond(200, "application/json", b"{}".to_vec())),
            Ok(Err(full)) => (409, "failed_lock".to_owned(), full),
            Err(e) => (e.status(), e.kind().replace('-', "_"), e.to_string()),
        };
        tracing::info!(step, status, %value, "fleet-lock refused");
        Ok(respond(
            status,
            "application/json",
            FleetLockError { kind, value }.to_json(),
        ))
    }

    async fn operator(
        &self,
        method: Method,
        path: Vec<String>,
        query: String,
        caller: Caller,
        body: Vec<u8>,
    ) -> Result<Response<Body>, Error> {
        let s = self.service.clone();
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        macro_rules! call {
            ($e:expr) => {{
                let value = self.run(move || $e).await?;
                Ok(json(200, &value))
            }};
        }
        match (&method, p.as_slice()) {
            (&Method::GET, ["pools"]) => call!(s.pools(&caller)),
            (&Method::POST, ["pools"]) => call!(s.create_pool(&caller, &body)),
            (&Method::POST, ["pools", pool, "enroll-tokens"]) => {
                let pool = (*pool).to_owned();
                call!(s.enroll_token(&caller, &pool))
            }
            (&Method::POST, ["pools", pool, "nodes"]) => {
                let pool = (*pool).to_owned();
                call!(s.register_node(&caller, &pool, &body))
            }
            (&Method::GET, ["pools", pool, "nodes"]) => {
                let pool = (*pool).to_owned();
                call!(s.nodes(&caller, &pool))
            }
            (&Method::POST, ["pools", pool, "upgrade"]) => {
                let pool = (*pool).to_owned();
                call!(s.upgrade(&caller, &pool, &body))
            }
            (&Method::GET, ["pools", pool, "status"]) => {
                let pool = (*pool).to_owned();
                call!(s.status(&caller, &pool))
            }
            (&Method::GET, ["pools", pool, "history"]) => {
                let pool = (*pool).to_owned();
                call!(s.history(&caller, &pool))
            }
            (&Method::POST, ["pools", pool, action @ ("pause" | "resume" | "abort")]) => {
                let pool = (*pool).to_owned();
                let to = match *action {
                    "pause" => RolloutState::Paused,
                    "resume" => RolloutState::Active,
                    _ => RolloutState::Aborted,
                };
                call!(s.set_state(&caller, &pool, to, &body))
            }
            (&Method::POST, ["pools", pool, "pin"]) => {
                let pool = (*pool).to_owned();
                call!(s.pin(&caller, &pool, &body).map(|()| serde_json::json!({})))
            }
            (&Method::GET, ["channels", channel, arch, "releases"]) => {
                let (channel, arch) = ((*channel).to_owned(), (*arch).to_owned());
                call!(s.releases(&caller, &channel, &arch))
            }
            (&Method::POST, ["channels", channel, arch, "releases"]) => {
                let (channel, arch) = ((*channel).to_owned(), (*arch).to_owned());
                let floor = query.split('&').any(|kv| kv == "floor=true");
                call!(s.publish(&caller, &channel, &arch, &body, floor))
            }
            (&Method::POST, ["channels", channel, arch, "releases", sequence, "floor"]) => {
                let (channel, arch) = ((*channel).to_owned(), (*arch).to_owned());
                let sequence: u64 = sequence.parse().map_err(|_| {
                    Error::bad("floor", format!("{sequence:?} is not a sequence number"))
                })?;
                call!(s.set_floor(&caller, &channel, &arch, sequence, &body))
            }
            _ => Err(Error::NotFound(format!(
                "no operator endpoint {method} /api/v1/{}",
                path.join("/")
            ))),
        }
    }

    /// `GET`/`HEAD /repo/<path>`: a file of the repository folder, with single `Range`s.
    async fn repository(
        &self,
        req: &Request<Incoming>,
        segments: &[&str],
    ) -> Result<Response<Body>, Error> {
        let dir = self.repository_dir.as_ref().ok_or_else(|| {
            Error::NotFound("this server does not serve a repository (nodes use a mirror)".into())
        })?;
        let relative = safe_path(segments)
            .ok_or_else(|| Error::NotFound(format!("no repository file {}", segments.join("/"))))?;
        let path = dir.join(&relative);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(format!("no repository file {relative}")))
            }
            Err(e) => return Err(Error::Internal(format!("opening {}: {e}", path.display()))),
        };
        let meta = file
            .metadata()
            .await
            .map_err(|e| Error::Internal(format!("reading {}: {e}", path.display())))?;
        if !meta.is_file() {
            return Err(Error::NotFound(format!("no repository file {relative}")));
        }
        let size = meta.len();
        let range = req
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(|v| parse_range(v, size));
        let (status, start, len) = match range {
            None | Some(RangeAnswer::Whole) => (200, 0, size),
            Some(RangeAnswer::Part(start, len)) => (206, start, len),
            Some(RangeAnswer::Unsatisfiable) => {
                let mut r = respond(416, "text/plain", b"range not satisfiable\n".to_vec());
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(r);
            }
        };
        let body: Body = if req.method() == Method::HEAD || len == 0 {
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed()
        } else {
            file.seek(SeekFrom::Start(start))
                .await
                .map_err(|e| Error::Internal(format!("seeking {}: {e}", path.display())))?;
            file_body(file, len)
        };
        let mut response = Response::new(body);
        *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if let Ok(v) = HeaderValue::from_str(&len.to_string()) {
            h.insert(header::CONTENT_LENGTH, v);
        }
        if status == 206 {
            if let Ok(v) =
                HeaderValue::from_str(&format!("bytes {start}-{}/{size}", start + len - 1))
            {
                h.insert(header::CONTENT_RANGE, v);
            }
        }
        Ok(response)
    }
}

/// A repository path: every segment `[A-Za-z0-9._-]`, not empty, not starting with `.`;
/// nothing else can name a file of the layout (`basalt_manifest::repo`), and nothing can
/// leave the folder.
fn safe_path(segments: &[&str]) -> Option<String> {
    let ok = !segments.is_empty()
        && segments.len() <= 8
        && segments.iter().all(|s| {
            !s.is_empty()
                && s.len() <= 255
                && !s.starts_with('.')
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    ok.then(|| segments.join("/"))
}

#[derive(Debug, PartialEq, Eq)]
enum RangeAnswer {
    Whole,
    Part(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range (`a-b`, `a-`, `-n`); anything else (several ranges, other units,
/// garbage) is answered with the whole file, as RFC 9110 allows.
fn parse_range(value: &str, size: u64) -> RangeAnswer {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Whole;
    };
    if spec.contains(',') {
        return RangeAnswer::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAnswer::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(start), Ok(end)) if start <= end => {
            if start >= size {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Part(start, end.min(size - 1) - start + 1)
            }
        }
        (Ok(start), Err(_)) if b.is_empty() => {
            if start >= size {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Part(start, size - start)
            }
        }
        (Err(_), Ok(suffix)) if a.is_empty() => {
            if suffix == 0 || size == 0 {
                RangeAnswer::Unsatisfiable
            } else {
                let len = suffix.min(size);
                RangeAnswer::Part(size - len, len)
            }
        }
        _ => RangeAnswer::Whole,
    }
}

/// A body that streams `len` bytes of `file` from a reader task, a few chunks ahead.
fn file_body(mut file: tokio::fs::File, len: u64) -> Body {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::spawn(async move {
        let mut left = len;
        while left > 0 {
            let mut buf = vec![0u8; CHUNK.min(usize::try_from(left).unwrap_or(CHUNK))];
            match file.read(&mut buf).await {
                Ok(0) => {
                    let _ = tx
                        .send(Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "file shrank while being served",
                        )))
                        .await;
                    return;
                }
                Ok(n) => {
                    buf.truncate(n);
                    left -= n as u64;
                    if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                        return; // the client went away
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    ChannelBody(rx).boxed()
}

struct ChannelBody(mpsc::Receiver<std::io::Result<Bytes>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

fn bearer(req: &Request<Incoming>) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::auth::bearer)
}

async fn read_body(req: Request<Incoming>, cap: usize) -> Result<Vec<u8>, Error> {
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > cap as u64 {
            return Err(Error::BadRequest {
                what: "request body",
                message: format!("{len} bytes, over the {cap}-byte limit of this endpoint"),
            });
        }
    }
    Limited::new(req.into_body(), cap)
        .collect()
        .await
        .map(|c| c.to_bytes().to_vec())
        .map_err(|e| Error::bad("request body", format!("{e} (limit {cap} bytes)")))
}

/// How often buffered last-seen times are written (see [`crate::last_seen`]).
pub const LAST_SEEN_FLUSH: Duration = Duration::from_secs(1);

/// Writes the service's buffered last-seen times every `period` until `stop` turns true,
/// and once more after that.
async fn flush_last_seen_every(
    service: Service,
    period: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = ticks.tick() => false,
            _ = stop.changed() => true,
        };
        let s = service.clone();
        match tokio::task::spawn_blocking(move || s.flush_last_seen()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "writing last-seen times failed; kept for the next try")
            }
            Err(e) => tracing::warn!(error = %e, "the last-seen flush task failed"),
        }
        if stopping || *stop.borrow() {
            return;
        }
    }
}

impl Server {
    /// Runs a (blocking) service call on the blocking pool. (`block_in_place` for SQLite was
    /// measured slower here: it hands the worker's queue to another thread on every call.)
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| Error::Internal(format!("request task: {e}")))?
    }
}

fn respond(status: u16, content_type: &'static str, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json<T: serde::Serialize>(status: u16, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => respond(status, "application/json", body),
        Err(e) => json_error(500, "internal", &format!("encoding the answer: {e}")),
    }
}

fn json_error(status: u16, kind: &str, message: &str) -> Response<Body> {
    let mut r = respond(
        status,
        "application/json",
        ErrorBody::new(kind, message).to_json(),
    );
    if status == 401 {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// A server running on a tokio runtime (tests, simulations, benches): stop it with
/// [`Running::stop`].
#[derive(Debug)]
pub struct Running {
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Binds `addr` (port 0: any free port) and serves on the current runtime.
    pub async fn start(server: Server, addr: &str) -> std::io::Result<Running> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(server.serve(listener, async {
            let _ = rx.await;
        }));
        Ok(Running {
            addr,
            stop: Some(tx),
            task,
        })
    }

    /// The base URL (`http://127.0.0.1:PORT/`).
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops accepting, finishes requests in progress, returns when the server is gone.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Binds `addr` (e.g. `127.0.0.1:8080`).
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// The repository folder's path for messages.
pub fn describe_repository(dir: Option<&Path>) -> String {
    dir.map_or_else(
        || "none (nodes use a mirror)".into(),
        |d| d.display().to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeAnswer::Part(0, 10));
        assert_eq!(parse_range("bytes=90-", 100), RangeAnswer::Part(90, 10));
        assert_eq!(parse_range("bytes=-10", 100), RangeAnswer::Part(90, 10));
        assert_eq!(parse_range("bytes=-1000", 100), RangeAnswer::Part(0, 100));
        assert_eq!(parse_range("bytes=50-1000", 100), RangeAnswer::Part(50, 50));
        assert_eq!(parse_range("bytes=100-", 100), RangeAnswer::Unsatisfiable);
        assert_eq!(
            parse_range("bytes=100-200", 100),
            RangeAnswer::Unsatisfiable
        );
        assert_eq!(parse_range("bytes=-0", 100), RangeAnswer::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), RangeAnswer::Whole);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeAnswer::Whole);
        assert_eq!(parse_range("items=0-1", 100), RangeAnswer::Whole);
    }

    #[test]
    fn repository_paths_cannot_escape() {
        assert_eq!(
            safe_path(&["blobs", "sha256", "ab"]).as_deref(),
            Some("blobs/sha256/ab")
        );
        for bad in [
            &["..", "etc"][..],
            &["blobs", ".."],
            &["blobs", ""],
            &[".hidden"],
            &["a%2f"],
            &[],
            &["a b"],
        ] {
            assert_eq!(safe_path(bad), None, "{bad:?}");
        }
    }
}
