//! The operator CLI's HTTP client: one request per call over a fresh HTTP/1.1 connection
//! (plain `http://`; put the server behind a TLS-terminating proxy and reach that from
//! here, or run the CLI on the server host). Refusals come back as the server's typed
//! error (kind + message).

use std::time::Duration;

use basalt_rollout_wire::ErrorBody;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Answers above this size are refused (a status of a 10,000-node pool is well below).
const MAX_ANSWER: usize = 64 << 20;
/// Every call's deadline.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("server URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("{url}: {detail}")]
    Transport { url: String, detail: String },
    /// The server refused or failed (the status tells which).
    #[error("{url}: HTTP {status} {kind}: {message}")]
    Refused {
        url: String,
        status: u16,
        kind: String,
        message: String,
    },
}

impl ClientError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client for one server and operator token.
#[derive(Debug, Clone)]
pub struct Client {
    base: url::Url,
    token: String,
}

impl Client {
    /// `base` is `http://host:port[/prefix]`.
    pub fn new(base: &str, token: &str) -> Result<Self, ClientError> {
        let err = |reason: String| ClientError::Url {
            url: base.to_owned(),
            reason,
        };
        let mut url = url::Url::parse(base).map_err(|e| err(e.to_string()))?;
        if url.scheme() != "http" {
            return Err(err(
                "only http:// is supported by the CLI (terminate TLS in front)".into(),
            ));
        }
        if url.host_str().is_none() {
            return Err(err("no host".into()));
        }
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        Ok(Client {
            base: url,
            token: token.to_owned(),
        })
    }

    /// `method` `path` (relative to the base, e.g. `api/v1/pools`) with `body`; the answer's
    /// body on 2xx.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<Vec<u8>, ClientError> {
        let url = self.base.join(path).map_err(|e| ClientError::Url {
            url: path.to_owned(),
            reason: e.to_string(),
        })?;
        let shown = url.to_string();
        let transport = |detail: String| ClientError::Transport {
            url: shown.clone(),
            detail,
        };
        let host = url.host_str().unwrap_or_default().to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let work = async {
            let stream = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| transport(format!("connecting: {e}")))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| transport(format!("handshake: {e}")))?;
            tokio::spawn(conn);
            let mut path_and_query = url.path().to_owned();
            if let Some(q) = url.query() {
                path_and_query = format!("{path_and_query}?{q}");
            }
            let req = Request::builder()
                .method(method)
                .uri(path_and_query)
                .header(header::HOST, format!("{host}:{port}"))
                .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
                .header(
                    header::CONTENT_TYPE,
                    HeaderValue::from_str(content_type)
                        .unwrap_or(HeaderValue::from_static("application/json")),
                )
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| transport(format!("building the request: {e}")))?;
            let response = sender
                .send_request(req)
                .await
                .map_err(|e| transport(format!("request: {e}")))?;
            let status = response.status().as_u16();
            let bytes = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| transport(format!("reading the answer: {e}")))?
                .to_bytes()
                .to_vec();
            Ok::<_, ClientError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(TIMEOUT, work)
            .await
            .map_err(|_| transport(format!("no answer within {} s", TIMEOUT.as_secs())))??;
        if (200..300).contains(&status) {
            return Ok(bytes);
        }
        let (kind, message) = match ErrorBody::from_json(&bytes) {
            Ok(e) => (e.error.kind, e.error.message),
            Err(_) => (
                "unknown".into(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ),
        };
        Err(ClientError::Refused {
            url: shown,
            status,
            kind,
            message,
        })
    }

    /// A JSON call: serialises `body` (if any) and parses the answer.
    pub async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl serde::Serialize>,
    ) -> Result<T, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Url {
                url: path.to_owned(),
                reason: format!("encoding the request: {e}"),
            })?
            .unwrap_or_default();
        let bytes = self.call(method, path, body, "application/json").await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Transport {
            url: path.to_owned(),
            detail: format!("the answer is not the expected JSON: {e}"),
        })
    }
}
