//! The node's one HTTP(S) client: hyper 1 (HTTP/1.1) on tokio, TLS by rustls with the ring
//! provider. Users: the release [`Source`](crate::source::Source) over HTTP(S)
//! (`source::http`), the daemon's FleetLock client (POST JSON to a lock server) and its HTTP
//! health checks.
//!
//! Owns: connecting (DNS, TCP, forward proxies, TLS), timeouts, redirects, the headers every
//! request carries, and the parsers of the headers we interpret ourselves (`Content-Range`,
//! `Location`, proxy URLs and `NO_PROXY`). Does not own: what a status code means to a caller
//! (the source maps 404 to `NotFound`, FleetLock reads its own JSON), nor retries and backoff
//! (the daemon's schedule decides when to try again).
//!
//! Behaviour, and why:
//! - **Timeouts.** `connect_timeout` bounds everything up to a usable connection (DNS, TCP,
//!   proxy `CONNECT`, TLS handshake); `read_timeout` bounds the wait for the whole response
//!   head (so a slowloris server that drips header bytes cannot hold us) and, separately, every
//!   wait for the next body chunk (a stalled body fails in bounded time). There is no overall
//!   deadline for a body: a large artifact over a slow but live link is legitimate; the daemon
//!   cancels a download it no longer wants.
//! - **One connection per request, `Connection: close`.** A release check is a handful of
//!   requests and a download is one long ranged request per artifact: a pool would save a
//!   handshake per minute at the price of stale-connection retries. Every request therefore
//!   also runs on a fresh TCP (and TLS) session.
//! - **Redirects** (301, 302, 303, 307, 308) are followed for GET and HEAD only, at most
//!   `max_redirects` hops, with the rules of [`url`]: relative `Location` resolved, other hosts
//!   allowed (CDNs), never https → http, only http(s). Other methods get the 3xx back (a
//!   FleetLock POST must not be silently replayed elsewhere). Headers the caller set (e.g.
//!   `Range`) are sent again on every hop.
//! - **Bytes exactly as stored**: `Accept-Encoding: identity`; a reply with any other
//!   `Content-Encoding` is refused (a release blob is checked against its sha256 as it flows).
//! - **`User-Agent: basalt-updated/<version>`** on every request.
//! - **Proxies** per [`proxy`]; **TLS** per [`tls`].
//!
//! Async first: [`HttpClient`] works on whatever tokio runtime calls it (the daemon's
//! current-thread runtime included; it spawns one connection task per request there). The
//! blocking update pipeline uses [`blocking::BlockingClient`], which owns a small runtime of
//! its own — see that module for the bridge and its memory bound.

pub mod blocking;
pub mod proxy;
pub mod range;
pub mod tls;
pub mod url;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub use self::proxy::{NoProxy, Proxy, ProxyConfig, ProxyError};
pub use self::tls::{CertProblem, Roots};
pub use self::url::{Url, UrlError};

/// The `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("basalt-updated/", env!("CARGO_PKG_VERSION"));

/// hyper's read buffer cap per connection; with one chunk held by the reader this bounds a
/// transfer's memory (hyper does not read from the socket while the body waits to be taken).
const MAX_BUF: usize = 256 << 10;

/// How the client connects. `Default` gives the production values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// DNS + TCP + proxy tunnel + TLS handshake.
    pub connect_timeout: Duration,
    /// The whole response head; then each wait for body bytes.
    pub read_timeout: Duration,
    /// Redirect hops followed (GET/HEAD); one more is an error.
    pub max_redirects: u32,
    /// Trust anchors for https.
    pub roots: Roots,
    /// Forward proxies (usually [`ProxyConfig::from_env`]).
    pub proxy: ProxyConfig,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(30),
            max_redirects: 5,
            roots: Roots::System,
            proxy: ProxyConfig::none(),
        }
    }
}

impl HttpConfig {
    /// The longest timeout accepted (a day): beyond that a value is a unit mistake.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);
    /// The most redirect hops accepted.
    pub const MAX_REDIRECTS: u32 = 20;

    /// Refuse settings that would make the client hang or loop: zero or absurd timeouts, too
    /// many redirects.
    pub fn validate(&self) -> Result<(), SetupError> {
        for (name, value) in [
            ("connect timeout", self.connect_timeout),
            ("read timeout", self.read_timeout),
        ] {
            if value.is_zero() || value > Self::MAX_TIMEOUT {
                return Err(SetupError::Setting {
                    name,
                    reason: format!("{value:?} is not between 1 ns and one day"),
                });
            }
        }
        if self.max_redirects > Self::MAX_REDIRECTS {
            return Err(SetupError::Setting {
                name: "max redirects",
                reason: format!("{} is above {}", self.max_redirects, Self::MAX_REDIRECTS),
            });
        }
        Ok(())
    }
}

/// The client cannot be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("HTTP client setting {name}: {reason}")]
    Setting { name: &'static str, reason: String },
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
}

/// A failed request: the URL of the hop that failed, and what went wrong.
#[derive(Debug, thiserror::Error)]
#[error("{url}: {kind}")]
pub struct HttpError {
    pub url: String,
    #[source]
    pub kind: HttpErrorKind,
}

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum HttpErrorKind {
    /// The URL (or a redirect target) is not acceptable.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The client could not be set up (CA file, runtime).
    #[error("client setup: {0}")]
    Setup(String),
    #[error("resolving {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {} while {while_}", secs(*after))]
    Timeout {
        after: Duration,
        while_: &'static str,
    },
    /// The proxy answered the `CONNECT` with something else than 2xx (407: credentials).
    #[error("{proxy} refused the tunnel to {authority}: HTTP {status}")]
    ProxyRefused {
        proxy: String,
        authority: String,
        status: u16,
    },
    #[error("TLS handshake with {host} failed: {}", tls_message(*problem, roots, detail))]
    Tls {
        host: String,
        problem: CertProblem,
        roots: String,
        detail: String,
    },
    /// HTTP framing or connection error (reset, malformed reply, body cut short …).
    #[error("{what}: {source}")]
    Protocol {
        what: &'static str,
        #[source]
        source: hyper::Error,
    },
    #[error("more than {max} redirects")]
    TooManyRedirects { max: u32 },
    #[error("redirect status {status} without a Location header")]
    NoLocation { status: u16 },
    #[error("the reply is encoded ({encoding}); only identity bytes are accepted")]
    Encoded { encoding: String },
    #[error("the body is larger than the {cap}-byte limit")]
    TooLarge { cap: u64 },
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn tls_message(problem: CertProblem, roots: &str, detail: &str) -> String {
    match problem {
        CertProblem::UnknownIssuer => {
            format!("the server certificate is not signed by {roots} ({detail})")
        }
        CertProblem::NameMismatch => {
            format!("the server certificate is not valid for this host name ({detail})")
        }
        CertProblem::Expired => {
            format!("the server certificate is expired or not yet valid ({detail})")
        }
        CertProblem::Other => detail.to_string(),
    }
}

impl HttpError {
    fn new(url: &Url, kind: impl Into<HttpErrorKind>) -> Self {
        HttpError {
            url: url.to_string(),
            kind: kind.into(),
        }
    }

    /// Whether the request timed out (connect, response head or body).
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, HttpErrorKind::Timeout { .. })
    }
}

/// A request: method, URL, extra headers, body (empty for GET).
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Request {
    /// `GET url`.
    pub fn get(url: Url) -> Self {
        Request {
            method: Method::GET,
            url,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    /// `POST url` with `body` and its `Content-Type`.
    pub fn post(url: Url, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        let mut req = Request {
            method: Method::POST,
            url,
            headers: HeaderMap::new(),
            body: body.into(),
        };
        req.headers
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        req
    }

    /// Add a header (replacing one of the same name).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }
}

/// A response whose head has arrived; the body is read with [`Response::chunk`].
#[derive(Debug)]
pub struct Response {
    url: Url,
    status: StatusCode,
    headers: HeaderMap,
    body: Incoming,
    read_timeout: Duration,
    redirects: u32,
}

impl Response {
    /// The URL that answered (after redirects).
    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// How many redirects were followed.
    pub fn redirects(&self) -> u32 {
        self.redirects
    }

    /// `Content-Length`, when present and a plain decimal number.
    pub fn content_length(&self) -> Option<u64> {
        let v = self.headers.get(header::CONTENT_LENGTH)?.to_str().ok()?;
        (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .then(|| v.parse().ok())
            .flatten()
    }

    /// The next body bytes (never empty), `None` at the end. Each call waits at most the read
    /// timeout.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, HttpError> {
        loop {
            let frame = tokio::time::timeout(self.read_timeout, self.body.frame())
                .await
                .map_err(|_| {
                    HttpError::new(
                        &self.url,
                        HttpErrorKind::Timeout {
                            after: self.read_timeout,
                            while_: "reading the body",
                        },
                    )
                })?;
            match frame {
                None => return Ok(None),
                Some(Err(source)) => {
                    return Err(HttpError::new(
                        &self.url,
                        HttpErrorKind::Protocol {
                            what: "reading the body",
                            source,
                        },
                    ))
                }
                Some(Ok(frame)) => {
                    // Trailers carry nothing we use.
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            return Ok(Some(data));
                        }
                    }
                }
            }
        }
    }

    /// The whole body, refused past `cap` bytes (small documents: JSON replies, health pages).
    pub async fn bytes(mut self, cap: u64) -> Result<Vec<u8>, HttpError> {
        let mut out = Vec::new();
        while let Some(data) = self.chunk().await? {
            if out.len() as u64 + data.len() as u64 > cap {
                return Err(HttpError::new(&self.url, HttpErrorKind::TooLarge { cap }));
            }
            out.extend_from_slice(&data);
        }
        Ok(out)
    }
}

/// A byte stream the HTTP connection runs on (TCP, TLS over TCP, TLS over a proxy tunnel).
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The client. Cheap to clone; holds no connections.
#[derive(Clone)]
pub struct HttpClient {
    config: HttpConfig,
    /// Built on the first `https://` request for the system roots (parsing the CA bundle,
    /// ≈ 140 certificates, costs start-up time and memory a node fetching over `http://` or
    /// `file://` never needs); at once for a pinned CA file, so a bad one is refused at start.
    tls: std::sync::OnceLock<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client for `config`; the settings are checked and a pinned CA file is read now.
    pub fn new(config: HttpConfig) -> Result<Self, SetupError> {
        config.validate()?;
        let tls = std::sync::OnceLock::new();
        if matches!(config.roots, Roots::Pinned(_)) {
            let _ = tls.set(Self::connector(&config.roots)?);
        }
        Ok(HttpClient { config, tls })
    }

    fn connector(roots: &Roots) -> Result<tokio_rustls::TlsConnector, tls::TlsSetupError> {
        tls::client_config(roots).map(tokio_rustls::TlsConnector::from)
    }

    /// The TLS connector, built now if this is the first `https://` request.
    fn connector_for(&self, url: &Url) -> Result<&tokio_rustls::TlsConnector, HttpError> {
        if let Some(c) = self.tls.get() {
            return Ok(c);
        }
        let c = Self::connector(&self.config.roots)
            .map_err(|e| HttpError::new(url, HttpErrorKind::Setup(e.to_string())))?;
        Ok(self.tls.get_or_init(|| c))
    }

    pub fn config(&self) -> &HttpConfig {
        &self.config
    }

    /// Send `req`, following redirects for GET/HEAD; returns once the response head arrived.
    /// Any status is returned as is (the caller decides what 404 or 503 means).
    pub async fn send(&self, req: &Request) -> Result<Response, HttpError> {
        let follow = req.method == Method::GET || req.method == Method::HEAD;
        let mut url = url::check(req.url.clone()).map_err(|e| HttpError::new(&req.url, e))?;
        let mut redirects = 0;
        loop {
            let (status, headers, body) = self.send_once(req, &url).await?;
            let is_redirect = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
            if !(follow && is_redirect) {
                return Ok(Response {
                    url,
                    status,
                    headers,
                    body,
                    read_timeout: self.config.read_timeout,
                    redirects,
                });
            }
            drop(body);
            if redirects >= self.config.max_redirects {
                return Err(HttpError::new(
                    &url,
                    HttpErrorKind::TooManyRedirects {
                        max: self.config.max_redirects,
                    },
                ));
            }
            let location = headers.get(header::LOCATION).ok_or_else(|| {
                HttpError::new(
                    &url,
                    HttpErrorKind::NoLocation {
                        status: status.as_u16(),
                    },
                )
            })?;
            let next = url::resolve_location(&url, location.as_bytes())
                .map_err(|e| HttpError::new(&url, e))?;
            tracing::info!(from = %url, to = %next, status = status.as_u16(), "following redirect");
            url = next;
            redirects += 1;
        }
    }

    /// One request on a fresh connection.
    async fn send_once(
        &self,
        req: &Request,
        url: &Url,
    ) -> Result<(StatusCode, HeaderMap, Incoming), HttpError> {
        let connect_timeout = self.config.connect_timeout;
        let (io, proxy) = tokio::time::timeout(connect_timeout, self.connect(url))
            .await
            .map_err(|_| {
                HttpError::new(
                    url,
                    HttpErrorKind::Timeout {
                        after: connect_timeout,
                        while_: "connecting",
                    },
                )
            })??;
        let absolute_form = proxy.is_some() && url.scheme() == "http";
        let target = if absolute_form {
            url.as_str().to_string()
        } else {
            url::origin_form(url)
        };
        let mut builder = hyper::Request::builder()
            .method(req.method.clone())
            .uri(target)
            .header(header::HOST, url::host_header(url))
            .header(header::USER_AGENT, USER_AGENT)
            .header(header::ACCEPT_ENCODING, "identity")
            .header(header::CONNECTION, "close");
        if absolute_form {
            if let Some(auth) = proxy.as_ref().and_then(|p| p.authorization()) {
                builder = builder.header(header::PROXY_AUTHORIZATION, auth);
            }
        }
        if !req.body.is_empty() || req.method == Method::POST || req.method == Method::PUT {
            builder = builder.header(header::CONTENT_LENGTH, req.body.len());
        }
        let mut request = builder
            .body(Full::new(req.body.clone()))
            .map_err(|e| HttpError::new(url, HttpErrorKind::Setup(format!("request: {e}"))))?;
        for (name, value) in &req.headers {
            request.headers_mut().insert(name, value.clone());
        }

        let read_timeout = self.config.read_timeout;
        let head = async {
            let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
                .max_buf_size(MAX_BUF)
                .handshake::<_, Full<Bytes>>(TokioIo::new(io))
                .await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
            });
            sender.send_request(request).await
        };
        let response = tokio::time::timeout(read_timeout, head)
            .await
            .map_err(|_| {
                HttpError::new(
                    url,
                    HttpErrorKind::Timeout {
                        after: read_timeout,
                        while_: "waiting for the response headers",
                    },
                )
            })?
            .map_err(|source| {
                HttpError::new(
                    url,
                    HttpErrorKind::Protocol {
                        what: "waiting for the response headers",
                        source,
                    },
                )
            })?;
        let (parts, body) = response.into_parts();
        if let Some(enc) = parts.headers.get(header::CONTENT_ENCODING) {
            let enc = String::from_utf8_lossy(enc.as_bytes()).trim().to_string();
            if !enc.eq_ignore_ascii_case("identity") {
                return Err(HttpError::new(
                    url,
                    HttpErrorKind::Encoded { encoding: enc },
                ));
            }
        }
        Ok((parts.status, parts.headers, body))
    }

    /// A connection ready for HTTP to `url`: through the proxy when one applies (returned, so
    /// the request can be written in absolute form for http), TLS-wrapped for https.
    async fn connect<'a>(
        &'a self,
        url: &Url,
    ) -> Result<(Box<dyn Io>, Option<&'a Proxy>), HttpError> {
        let proxy = self.config.proxy.for_url(url);
        let (host, port) = match proxy {
            Some(p) => (p.host.clone(), p.port),
            None => (
                match url.host() {
                    Some(::url::Host::Ipv6(ip)) => ip.to_string(),
                    Some(h) => h.to_string(),
                    None => String::new(),
                },
                url.port_or_known_default().unwrap_or(0),
            ),
        };
        let tcp = tcp_connect(url, &host, port).await?;
        if url.scheme() == "http" {
            return Ok((Box::new(tcp), proxy));
        }
        match proxy {
            None => Ok((Box::new(self.tls(url, tcp).await?), None)),
            Some(p) => {
                let tunnel = tunnel(url, tcp, p).await?;
                Ok((
                    Box::new(self.tls(url, TokioIo::new(tunnel)).await?),
                    Some(p),
                ))
            }
        }
    }

    async fn tls<S: AsyncRead + AsyncWrite + Send + Unpin + 'static>(
        &self,
        url: &Url,
        stream: S,
    ) -> Result<tokio_rustls::client::TlsStream<S>, HttpError> {
        let host = match url.host() {
            Some(::url::Host::Ipv6(ip)) => ip.to_string(),
            Some(h) => h.to_string(),
            None => String::new(),
        };
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| {
            HttpError::new(
                url,
                HttpErrorKind::Setup(format!("TLS server name {host:?}: {e}")),
            )
        })?;
        let connector = self.connector_for(url)?;
        connector.connect(name, stream).await.map_err(|e| {
            HttpError::new(
                url,
                HttpErrorKind::Tls {
                    host,
                    problem: tls::classify(&e),
                    roots: tls::describe(&self.config.roots),
                    detail: e.to_string(),
                },
            )
        })
    }
}

/// Resolve `host` and connect to the first address that answers.
async fn tcp_connect(url: &Url, host: &str, port: u16) -> Result<TcpStream, HttpError> {
    let addrs: Vec<_> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| {
            HttpError::new(
                url,
                HttpErrorKind::Resolve {
                    host: host.to_string(),
                    source,
                },
            )
        })?
        .collect();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for addr in &addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                return Ok(tcp);
            }
            Err(e) => last = e,
        }
    }
    let addr = match addrs.as_slice() {
        [one] => one.to_string(),
        _ => format!("{host}:{port}"),
    };
    Err(HttpError::new(
        url,
        HttpErrorKind::Connect { addr, source: last },
    ))
}

/// `CONNECT host:port` through `proxy` on `tcp`; the tunnel once the proxy said 2xx.
async fn tunnel(
    url: &Url,
    tcp: TcpStream,
    proxy: &Proxy,
) -> Result<hyper::upgrade::Upgraded, HttpError> {
    let authority = url::authority(url);
    let protocol = |what, source| HttpError::new(url, HttpErrorKind::Protocol { what, source });
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
            .await
            .map_err(|e| protocol("starting the proxy tunnel", e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "proxy connection ended with an error");
        }
    });
    let mut builder = hyper::Request::builder()
        .method(Method::CONNECT)
        .uri(authority.as_str())
        .header(header::HOST, authority.as_str())
        .header(header::USER_AGENT, USER_AGENT);
    if let Some(auth) = proxy.authorization() {
        builder = builder.header(header::PROXY_AUTHORIZATION, auth);
    }
    let request = builder
        .body(Full::new(Bytes::new()))
        .map_err(|e| HttpError::new(url, HttpErrorKind::Setup(format!("CONNECT request: {e}"))))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| protocol("asking the proxy for a tunnel", e))?;
    if !response.status().is_success() {
        return Err(HttpError::new(
            url,
            HttpErrorKind::ProxyRefused {
                proxy: proxy.to_string(),
                authority,
                status: response.status().as_u16(),
            },
        ));
    }
    hyper::upgrade::on(response)
        .await
        .map_err(|e| protocol("opening the proxy tunnel", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_settings_that_would_hang_or_loop() {
        let ok = HttpConfig::default();
        HttpClient::new(ok.clone()).unwrap();
        for bad in [
            HttpConfig {
                connect_timeout: Duration::ZERO,
                ..ok.clone()
            },
            HttpConfig {
                read_timeout: Duration::ZERO,
                ..ok.clone()
            },
            HttpConfig {
                read_timeout: Duration::from_secs(86_401),
                ..ok.clone()
            },
            HttpConfig {
                max_redirects: 21,
                ..ok.clone()
            },
        ] {
            let err = HttpClient::new(bad).unwrap_err();
            assert!(matches!(err, SetupError::Setting { .. }), "{err}");
        }
    }
}
