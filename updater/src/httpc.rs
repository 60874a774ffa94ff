//! A minimal HTTP/1.1 client for the daemon's small requests: FleetLock POSTs and health-check
//! GETs, plain `http://` only, one request per connection, a hard timeout around the whole
//! exchange, bodies capped.
//!
//! Why it exists and what replaces it: branch `http` builds the project's reusable HTTP(S)
//! client (hyper + rustls, proxies, pinned CA) for the release source. Until it lands this
//! adapter keeps the daemon's two callers working against lock servers and health endpoints on
//! plain HTTP (the common case: a lock server in the cluster, a kubelet `healthz` on
//! 127.0.0.1). An `https://` URL is refused with a clear error rather than sent in clear text.
//! The lead swaps [`request`] for the shared client when both branches are in; the callers
//! only see [`request`]'s signature.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Uri;

/// Response bodies larger than this are refused (FleetLock and health answers are tiny).
pub const MAX_BODY: usize = 64 * 1024;

/// Why a request failed; each variant names the URL.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url}: not a valid http URL ({detail})")]
    Url { url: String, detail: String },
    #[error("{url}: https is not supported by the daemon's interim HTTP client yet (use http:// for lock servers and health endpoints)")]
    HttpsUnsupported { url: String },
    #[error("{url}: connecting: {source}")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: {detail}")]
    Protocol { url: String, detail: String },
    #[error("{url}: no complete answer within {secs} s")]
    Timeout { url: String, secs: u64 },
}

/// A response: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Bytes,
}

/// Send one request. `body` with `content_type` makes it a request with a body.
pub async fn request(
    method: hyper::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, Vec<u8>)>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    match tokio::time::timeout(timeout, request_inner(method, url, headers, body)).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Timeout {
            url: url.to_owned(),
            secs: timeout.as_secs(),
        }),
    }
}

async fn request_inner(
    method: hyper::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, Vec<u8>)>,
) -> Result<Response, HttpError> {
    let bad = |detail: String| HttpError::Url {
        url: url.to_owned(),
        detail,
    };
    let uri: Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| bad(e.to_string()))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(HttpError::HttpsUnsupported {
                url: url.to_owned(),
            })
        }
        other => return Err(bad(format!("scheme {other:?}"))),
    }
    let host = uri.host().ok_or_else(|| bad("no host".into()))?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_else(|| host.clone());
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let connect_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let stream = tokio::net::TcpStream::connect((connect_host.as_str(), port))
        .await
        .map_err(|source| HttpError::Connect {
            url: url.to_owned(),
            source,
        })?;
    let proto = |detail: String| HttpError::Protocol {
        url: url.to_owned(),
        detail,
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| proto(e.to_string()))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority)
        .header(
            hyper::header::USER_AGENT,
            concat!("basalt-updated/", env!("CARGO_PKG_VERSION")),
        );
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let bytes = match body {
        Some((content_type, b)) => {
            builder = builder.header(hyper::header::CONTENT_TYPE, content_type);
            Bytes::from(b)
        }
        None => Bytes::new(),
    };
    let req = builder
        .body(Full::new(bytes))
        .map_err(|e| proto(e.to_string()))?;
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| proto(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| proto(format!("reading the body: {e}")))?
            .to_bytes();
        Ok(Response { status, body })
    }
    .await;
    driver.abort();
    result
}
